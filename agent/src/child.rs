//! Child agents under other accounts: `become` without one sudo per task.
//!
//! Theory of operation:
//! 1. [`start`] runs `sudo FLAGS -u USER <bootstrap command line>` with the
//!    fixed command line of `spindle_bootstrap` (so a sudoers rule can name
//!    it) and plays the controller's part of the bootstrap: stage lines,
//!    boot line, this agent's own binary, hello.
//! 2. The first try is non-interactive (`-n`). Only when sudo says it needs
//!    a password and the request carries one is there a second try, with
//!    `-S` and a prompt of our own: the password is written when that prompt
//!    appears on sudo's stderr; a second prompt means it was wrong.
//! 3. su has no non-interactive mode, so its command first prints a marker
//!    line: the bootstrap's stage lines are written only once the marker
//!    shows that the account switch is done. Until then a prompt on su's
//!    stderr (a line left open, ending in a colon, in whatever language) is
//!    answered with the password; su reading our stage lines as a password
//!    cannot happen.
//! 4. Once started, a writer thread alone feeds the child's stdin (frames
//!    the controller routed to it, passed on unread) and a reader thread
//!    splits its stdout into frames and sends each up as
//!    [`FromAgent::Routed`]. When the child's stdout ends, the controller
//!    gets [`FromAgent::ChildGone`].
//! 5. Dropping the writer's channel (the agent shutting down) closes the
//!    child's stdin, which ends it.

use crate::ctl::{self, Control};
use crate::{io_error, out, sys};
use spindle_bootstrap::{BootLine, Codec};
use spindle_protocol::{
    frame, Become, Blob, Child, Code, ErrorKind, FromAgent, Hello, LogLevel, ToAgent, WireError,
    HELLO_MAGIC,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The error for a wrong password, in Ansible's words.
fn incorrect(method: &str) -> WireError {
    WireError::new(
        ErrorKind::PermissionDenied,
        format!("Incorrect {method} password"),
    )
}

/// The error when sudo wants a password and none was given, in Ansible's
/// words.
const MISSING: &str = "Missing sudo password";

/// Frames queued for one child before the dispatcher waits for it.
const QUEUE: usize = 64;

/// Output tolerated before the boot line and around the hello.
const MAX_NOISE: usize = 64 << 10;

/// Bytes of sudo's stderr kept to explain a failure.
const STDERR_KEEP: usize = 4096;

struct Entry {
    tx: SyncSender<Vec<u8>>,
}

fn children() -> MutexGuard<'static, HashMap<u32, Entry>> {
    static CHILDREN: OnceLock<Mutex<HashMap<u32, Entry>>> = OnceLock::new();
    CHILDREN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Passes a routed frame to child `child`.
pub fn route(child: u32, frame: Vec<u8>) {
    let tx = children().get(&child).map(|e| e.tx.clone());
    match tx {
        // Blocks only while the child has a full queue.
        Some(tx) if tx.send(frame).is_ok() => {}
        _ => out::out().send(FromAgent::ChildGone {
            child,
            reason: format!("no child agent {child}"),
        }),
    }
}

/// Sends child `child` the bundle `hash` this agent holds, as a frame of
/// its own ahead of whatever is routed to it next; nothing if either is
/// missing (the child then asks for the bundle as usual).
pub fn share(child: u32, hash: &str) {
    let Some(zip) = crate::python::stored_bundle(hash) else {
        out::log(LogLevel::Debug, format!("no bundle {hash} to share"));
        return;
    };
    let keep = ToAgent::Keep {
        code: Code {
            hash: hash.to_owned(),
            zip: Some(zip.into()),
            ..Code::default()
        },
    };
    match frame::encode(&keep) {
        Ok(frame) => route(child, frame),
        Err(e) => out::log(LogLevel::Warn, format!("sharing bundle {hash}: {e}")),
    }
}

/// Ends child `child`: its stdin closes, it exits, and its reader reports
/// it gone.
pub fn end(child: u32) {
    children().remove(&child);
}

/// Ends every child (their stdin closes).
pub fn stop_all() {
    children().clear();
    // Let them shut down cleanly (temp dirs, their own commands) before
    // this agent exits and, for doas, closes their terminal.
    let t0 = Instant::now();
    while LIVE.load(Ordering::Relaxed) > 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Child agents whose output is still being forwarded.
static LIVE: AtomicU32 = AtomicU32::new(0);

/// Why one try failed.
enum Failure {
    /// sudo wants a password and we did not give one.
    NeedsPassword(String),
    Error(WireError),
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        Failure::Error(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Error(io_error("typing the password", e))
    }
}

pub fn start(req: Become, control: &Control) -> Result<Child, WireError> {
    let deadline = Instant::now() + Duration::from_millis(req.timeout_ms.max(1));
    match req.method.as_str() {
        "sudo" => sudo(&req, deadline, control),
        "su" => su(&req, deadline, control),
        "doas" => doas(&req, deadline, control),
        other => Err(WireError::new(
            ErrorKind::Unsupported,
            format!("become method {other:?} is not one the agent drives (sudo, su, doas)"),
        )),
    }
}

fn sudo(req: &Become, deadline: Instant, control: &Control) -> Result<Child, WireError> {
    let interactive = |f: &str| f == "-n" || f == "--non-interactive";
    // `-k`: never use credentials sudo cached for this agent, as a stock
    // run's fresh session has none.
    let mut quiet: Vec<String> = req.flags.clone();
    quiet.push("-k".into());
    if !quiet.iter().any(|f| interactive(f)) {
        quiet.push("-n".into());
    }
    // Under sudoers' `requiretty` sudo refuses to run without a terminal:
    // then every try gets a pseudo-terminal of ours as its controlling
    // terminal (stdin, stdout and stderr stay pipes).
    let mut terminal = false;
    let run = |flags: &[String], prompt: &Prompt, terminal: bool| {
        let mut cmd = as_user(req, flags);
        let tty = if terminal {
            Some(with_terminal(&mut cmd, false)?)
        } else {
            None
        };
        attempt(req, cmd, prompt, None, tty, deadline, control)
    };
    let need = loop {
        match run(&quiet, &Prompt::None, terminal) {
            Ok(c) => return Ok(c),
            Err(Failure::Error(e)) if !terminal && e.message.contains(NO_TTY) => terminal = true,
            Err(Failure::Error(e)) => return Err(e),
            Err(Failure::NeedsPassword(why)) => break why,
        }
    };
    let Some(password) = req.password.as_ref() else {
        out::log(LogLevel::Debug, format!("sudo: {}", need.trim()));
        let msg = format!("{MISSING}\n{}", hint(req));
        return Err(WireError::new(ErrorKind::PermissionDenied, msg));
    };
    let mut asking: Vec<String> = req
        .flags
        .iter()
        .filter(|f| !interactive(f) && f.as_str() != "-S")
        .cloned()
        .collect();
    let prompt = prompt();
    asking.extend(["-k".into(), "-S".into(), "-p".into(), prompt.clone()]);
    let typed = Prompt::Exact(prompt, password.as_ref());
    match run(&asking, &typed, terminal) {
        Ok(c) => Ok(c),
        Err(Failure::Error(e)) => Err(e),
        // Asked again although we answered: the password was not taken.
        Err(Failure::NeedsPassword(_)) => Err(incorrect("sudo")),
    }
}

/// What sudo says under `requiretty` without a terminal.
const NO_TTY: &str = "you must have a tty to run sudo";

fn su(req: &Become, deadline: Instant, control: &Control) -> Result<Child, WireError> {
    let marker = format!("spindle-su-{}-ready", std::process::id());
    let bootstrap: Vec<String> = spindle_bootstrap::command_argv(req.python.as_deref())
        .iter()
        .map(|w| spindle_bootstrap::sh_quote(w))
        .collect();
    let mut cmd = Command::new(&req.exe);
    cmd.args(&req.flags)
        .arg(&req.user)
        .arg("-c")
        .arg(format!("echo {marker}; exec {}", bootstrap.join(" ")));
    let default = ["Password".to_owned()];
    let words = if req.prompts.is_empty() {
        &default[..]
    } else {
        &req.prompts[..]
    };
    let typed = Prompt::Words(words, req.password.as_ref().map(|p| p.as_ref()));
    match attempt(req, cmd, &typed, Some(&marker), None, deadline, control) {
        Ok(c) => Ok(c),
        Err(Failure::Error(e)) => Err(e),
        // A prompt without a password to type, a second prompt, or su
        // giving up after the password: all "incorrect" in a stock run.
        Err(Failure::NeedsPassword(why)) => {
            out::log(LogLevel::Debug, format!("su: {}", why.trim()));
            Err(incorrect("su"))
        }
    }
}

/// What to tell a user whose sudo refused the child's bootstrap: the
/// exact command, as a sudoers rule must name it.
fn hint(req: &Become) -> String {
    format!(
        "Spindle becomes {} by running its bootstrap through sudo; to allow \
         that without a password, a sudoers rule must name exactly this \
         command: {}",
        req.user,
        spindle_bootstrap::command_argv(req.python.as_deref()).join(" ")
    )
}

/// A prompt nobody else prints.
fn prompt() -> String {
    format!("[spindle sudo {}] password:", std::process::id())
}

/// `exe flags… -u USER <bootstrap command line>`, as sudo and doas take it.
fn as_user(req: &Become, flags: &[String]) -> Command {
    let mut cmd = Command::new(&req.exe);
    cmd.args(flags)
        .arg("-u")
        .arg(&req.user)
        .args(spindle_bootstrap::command_argv(req.python.as_deref()));
    cmd
}

/// A non-interactive try (`-n`): stage lines at once, no prompt expected.
fn quietly(
    req: &Become,
    cmd: Command,
    deadline: Instant,
    control: &Control,
) -> Result<Child, Failure> {
    attempt(req, cmd, &Prompt::None, None, None, deadline, control)
}

fn doas(req: &Become, deadline: Instant, control: &Control) -> Result<Child, WireError> {
    let command = |flags: &[String]| as_user(req, flags);
    let mut quiet = req.flags.clone();
    if !quiet.iter().any(|f| f == "-n") {
        quiet.push("-n".into());
    }
    match quietly(req, command(&quiet), deadline, control) {
        Ok(c) => return Ok(c),
        Err(Failure::Error(e)) => return Err(e),
        // As in a stock run: Ansible's doas plugin does not recognise
        // opendoas's "Authentication required", so the task fails with
        // doas's own words.
        Err(Failure::NeedsPassword(why)) if req.password.is_none() => {
            return Err(WireError::new(ErrorKind::PermissionDenied, why));
        }
        Err(Failure::NeedsPassword(_)) => {}
    }
    // doas reads a password from its controlling terminal only: a
    // pseudo-terminal of ours, while its standard streams stay pipes.
    let flags: Vec<String> = req.flags.iter().filter(|f| *f != "-n").cloned().collect();
    let mut cmd = command(&flags);
    let tty = with_terminal(&mut cmd, true)?;
    let default = ["password".to_owned()];
    let words = if req.prompts.is_empty() {
        &default[..]
    } else {
        &req.prompts[..]
    };
    let typed = Prompt::Words(words, req.password.as_ref().map(|p| p.as_ref()));
    match attempt(req, cmd, &typed, None, Some(tty), deadline, control) {
        Ok(c) => Ok(c),
        Err(Failure::Error(e)) => Err(e),
        // Nor does it recognise "Authentication failed".
        Err(Failure::NeedsPassword(why)) => Err(WireError::new(ErrorKind::PermissionDenied, why)),
    }
}

/// A pseudo-terminal that is the account switch's controlling terminal.
/// The master stays open as long as the child agent lives (closing it
/// would hang up the child's session).
struct Tty {
    master: File,
    /// Held while the switch starts: with no slave end open (before the
    /// switch opens its terminal) the master would only read EIO.
    _slave: std::os::fd::OwnedFd,
    /// Whether the switch prompts there (doas). sudo under `requiretty`
    /// only wants a terminal to exist; with `-S` it still prompts on
    /// stderr and reads stdin.
    prompts: bool,
}

/// `cmd` with a new pseudo-terminal as its controlling terminal.
fn with_terminal(cmd: &mut Command, prompts: bool) -> Result<Tty, WireError> {
    let (master, slave) = sys::openpty().map_err(|e| io_error("opening a pseudo-terminal", e))?;
    sys::controlling_tty(cmd, slave.as_raw_fd());
    Ok(Tty {
        master: File::from(master),
        _slave: slave,
        prompts,
    })
}

/// What the account switch may ask, and the answer.
enum Prompt<'a> {
    /// Never a prompt: it fails instead (`sudo -n`).
    None,
    /// Our own prompt (`sudo -p`), answered with the password.
    Exact(String, &'a [u8]),
    /// su's prompt: a line left open that holds one of these words (the
    /// localised "Password") and a colon, as Ansible's su plugin matches
    /// it (ASCII case folding: Unicode's tables would grow the agent);
    /// answered with the password if there is one.
    Words(&'a [String], Option<&'a [u8]>),
}

impl Prompt<'_> {
    /// `Some(answer)` when `text` (what came since the last answer) ends in
    /// this prompt; the answer is `None` when there is no password to give.
    fn seen(&self, text: &[u8]) -> Option<Option<&[u8]>> {
        match self {
            Prompt::None => None,
            Prompt::Exact(prompt, pw) => {
                let found = text.windows(prompt.len()).any(|w| w == prompt.as_bytes());
                found.then_some(Some(*pw))
            }
            Prompt::Words(words, pw) => {
                let line = text.rsplit(|&b| b == b'\n').next().unwrap_or_default();
                let line = String::from_utf8_lossy(line).to_ascii_lowercase();
                let found = words.iter().any(|w| {
                    let w = w.to_ascii_lowercase();
                    !w.is_empty()
                        && line.match_indices(&w).any(|(i, _)| {
                            let rest = line[i + w.len()..].trim_start();
                            rest.starts_with(':') || rest.starts_with('\u{ff1a}')
                        })
                });
                found.then_some(*pw)
            }
        }
    }
}

/// What sudo and su say when they did not take a typed password (Ansible's
/// `fail` strings, and sudo's last word before giving up).
const REJECTED: [&str; 4] = [
    "Authentication failure",
    "Authentication failed",
    "Sorry, try again.",
    "incorrect password attempt",
];

/// One run of the account switch `cmd` up to the child agent's hello.
/// Stage lines go at once, with the typed password (`Prompt::Exact`), or,
/// given a `marker`, once that line shows on stdout.
fn attempt(
    req: &Become,
    mut cmd: Command,
    prompt: &Prompt,
    marker: Option<&str>,
    mut tty: Option<Tty>,
    deadline: Instant,
    control: &Control,
) -> Result<Child, Failure> {
    let what = format!("becoming {} with {}", req.user, req.exe);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = cmd.spawn().map_err(|e| io_error(&what, e))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (proc.stdin.take(), proc.stdout.take(), proc.stderr.take())
    else {
        unreachable!("all three were configured as pipes")
    };
    let mut stdin = File::from(std::os::fd::OwnedFd::from(stdin));
    let mut stdout = File::from(std::os::fd::OwnedFd::from(stdout));
    let mut stderr = File::from(std::os::fd::OwnedFd::from(stderr));
    let preamble = spindle_bootstrap::stdin_preamble(req.python.as_deref(), None);
    let fail = |proc: &mut std::process::Child, f: Failure| {
        abandon(proc);
        Err(f)
    };
    // The password goes to the terminal if there is one, else to stdin
    // ahead of the stage lines.
    let prompts_on_tty = tty.as_ref().is_some_and(|t| t.prompts);
    let stage_first = marker.is_none() && (matches!(prompt, Prompt::None) || prompts_on_tty);
    if stage_first {
        if let Err(e) = stdin.write_all(&preamble) {
            // A switch that already gave up (sudo under requiretty, say)
            // closed its stdin: what it said on stderr tells why.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return fail(&mut proc, io_error(&what, e).into());
            }
        }
    }

    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut said = Vec::new(); // on the terminal
                               // Where the output since the last answer starts, in `err` and `out`.
    let (mut err_from, mut out_from) = (0, 0);
    let mut tty_open = prompts_on_tty;
    let mut answered = false;
    let mut switched = marker.is_none();
    let mut boot: Option<BootLine> = None;
    let mut stdout_open = true;
    let mut stderr_open = true;
    loop {
        if control.is_cancelled() {
            return fail(&mut proc, ctl::cancelled().into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let e = WireError::new(
                ErrorKind::TimedOut,
                format!(
                    "Timeout ({}s) waiting for privilege escalation prompt: {}",
                    req.timeout_ms / 1000,
                    text(&err)
                ),
            );
            return fail(&mut proc, e.into());
        }
        let master = tty.as_ref().map(|t| t.master.as_raw_fd());
        let mut fds: Vec<i32> = [(stdout_open, &stdout), (stderr_open, &stderr)]
            .iter()
            .filter(|(open, _)| *open)
            .map(|(_, f)| f.as_raw_fd())
            .collect();
        if fds.is_empty() {
            // What the account switch said is the error, as a stock run
            // shows it. It closed both pipes; should it linger anyway, it
            // gets until the deadline.
            while proc.try_wait().map_err(|e| io_error(&what, e))?.is_none() {
                if Instant::now() >= deadline || control.is_cancelled() {
                    abandon(&mut proc);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut why = String::from_utf8_lossy(&err).into_owned();
            if why.contains("is not allowed to execute") {
                why.push_str(&hint(req));
                why.push('\n');
            }
            // Given up after the password was typed: it was not taken.
            let since = text(&err[err_from.min(err.len())..]);
            let rejected = answered && boot.is_none() && REJECTED.iter().any(|r| since.contains(r));
            let f = if rejected || needs_password(&err) {
                Failure::NeedsPassword(why)
            } else {
                Failure::Error(WireError::new(ErrorKind::PermissionDenied, why))
            };
            return Err(f);
        }
        if let (true, Some(m)) = (tty_open, master) {
            fds.push(m);
        }
        let ready = sys::poll_readable(&fds, left.min(Duration::from_millis(200)))
            .map_err(|e| io_error(&what, e))?;
        for fd in ready {
            let mut buf = [0u8; 8192];
            if Some(fd) == master {
                let Some(t) = tty.as_mut() else { continue };
                let n = t.master.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    tty_open = false;
                    continue;
                }
                said.extend_from_slice(&buf[..n]);
                if let Some(answer) = prompt.seen(&said) {
                    let typed = typed(answer, &mut answered, false, &preamble);
                    match typed.and_then(|t| Ok(tty_write(&mut tty, &t)?)) {
                        Ok(()) => {
                            said.clear();
                            err_from = err.len();
                        }
                        Err(f) => return fail(&mut proc, f),
                    }
                }
                if said.len() > STDERR_KEEP {
                    said.drain(..said.len() - STDERR_KEEP);
                }
            } else if fd == stderr.as_raw_fd() {
                let n = stderr.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    stderr_open = false;
                    continue;
                }
                err.extend_from_slice(&buf[..n]);
                // After su's marker, its stderr is the child's; with a
                // terminal, prompts come there.
                if (!switched || marker.is_none()) && !prompts_on_tty {
                    if let Some(answer) = prompt.seen(&err[err_from..]) {
                        let typed = typed(answer, &mut answered, marker.is_none(), &preamble);
                        match typed.and_then(|t| Ok(stdin.write_all(&t)?)) {
                            Ok(()) => (err_from, out_from) = (err.len(), out.len()),
                            Err(f) => return fail(&mut proc, f),
                        }
                    }
                }
                if matches!(prompt, Prompt::None) && needs_password(&err) {
                    let why = String::from_utf8_lossy(&err).into_owned();
                    return fail(&mut proc, Failure::NeedsPassword(why));
                }
                if err.len() > STDERR_KEEP {
                    let cut = err.len() - STDERR_KEEP;
                    err.drain(..cut);
                    err_from = err_from.saturating_sub(cut);
                }
            } else {
                let n = stdout.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    stdout_open = false;
                    continue;
                }
                out.extend_from_slice(&buf[..n]);
                if let (false, Some(m)) = (switched, marker) {
                    // Some su builds prompt on stdout.
                    if let Some(answer) = prompt.seen(&out[out_from..]) {
                        let typed = typed(answer, &mut answered, false, &preamble);
                        match typed.and_then(|t| Ok(stdin.write_all(&t)?)) {
                            Ok(()) => (err_from, out_from) = (err.len(), out.len()),
                            Err(f) => return fail(&mut proc, f),
                        }
                    }
                    if let Some(end) = line_end(&out, m) {
                        out.drain(..end);
                        switched = true;
                        if let Err(e) = stdin.write_all(&preamble) {
                            return fail(&mut proc, io_error(&what, e).into());
                        }
                    }
                }
                if switched && boot.is_none() {
                    match take_boot_line(&mut out) {
                        Ok(Some(b)) => {
                            if let Err(e) = send_agent(&mut stdin, &b) {
                                return fail(&mut proc, e.into());
                            }
                            boot = Some(b);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return fail(
                                &mut proc,
                                WireError::new(ErrorKind::Protocol, format!("{what}: {e}")).into(),
                            )
                        }
                    }
                }
                if boot.is_some() {
                    match take_hello(&mut out) {
                        Ok(Some(hello)) => {
                            let switch = Switch {
                                proc,
                                stdin,
                                stdout,
                                stderr,
                                tty: tty.take().map(|t| t.master),
                            };
                            return Ok(adopt(switch, out, hello, err));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return fail(
                                &mut proc,
                                WireError::new(ErrorKind::Protocol, format!("{what}: {e}")).into(),
                            )
                        }
                    }
                }
                if out.len() > MAX_NOISE {
                    let e = WireError::new(
                        ErrorKind::Protocol,
                        format!("{what}: too much output before the child agent started"),
                    );
                    return fail(&mut proc, e.into());
                }
            }
        }
    }
}

fn tty_write(tty: &mut Option<Tty>, data: &[u8]) -> std::io::Result<()> {
    match tty {
        Some(t) => t.master.write_all(data),
        None => Ok(()),
    }
}

/// What to type at a prompt: the password and a newline, then (`with_stage`)
/// the stage lines. No password, or a second prompt, ends the attempt.
fn typed(
    answer: Option<&[u8]>,
    answered: &mut bool,
    with_stage: bool,
    preamble: &[u8],
) -> Result<Vec<u8>, Failure> {
    let Some(pw) = answer.filter(|_| !*answered) else {
        return Err(Failure::NeedsPassword("asked for a password".into()));
    };
    *answered = true;
    let mut typed = pw.to_vec();
    typed.push(b'\n');
    if with_stage {
        typed.extend_from_slice(preamble);
    }
    Ok(typed)
}

/// The end (past its newline) of the first line of `out` that is `line`.
fn line_end(out: &[u8], line: &str) -> Option<usize> {
    let mut start = 0;
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            if out[start..i].strip_suffix(b"\r").unwrap_or(&out[start..i]) == line.as_bytes() {
                return Some(i + 1);
            }
            start = i + 1;
        }
    }
    None
}

fn needs_password(err: &[u8]) -> bool {
    let t = text(err);
    // sudo's, sudo-rs's, then doas's words.
    t.contains("password is required")
        || t.contains("interactive authentication is required")
        || t.contains("a terminal is required")
        || t.contains("Authorization required")
        || t.contains("Authentication required")
}

fn text(err: &[u8]) -> String {
    String::from_utf8_lossy(err).trim().to_owned()
}

/// The boot line, once a whole one is in `out` (noise before it dropped).
fn take_boot_line(out: &mut Vec<u8>) -> Result<Option<BootLine>, String> {
    while let Some(nl) = out.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = out.drain(..=nl).collect();
        let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        if let Some(b) = BootLine::parse(&line).map_err(|e| e.to_string())? {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// This agent's binary, uncompressed: it only crosses a pipe, and the child
/// skips decompressing it. Sent whatever architecture the stage reports: it
/// can differ only where this agent runs emulated (qemu-user), and there a
/// binfmt_misc handler may hand the child to the same emulator (without
/// one, the stage's exec fails and says so).
fn send_agent(stdin: &mut File, boot: &BootLine) -> Result<(), WireError> {
    if boot.arch != std::env::consts::ARCH {
        out::log(
            LogLevel::Warn,
            format!(
                "the child's stage reports {}, this agent is {}: sending it all the same \
                 (it runs if a binfmt_misc handler emulates it)",
                boot.arch,
                std::env::consts::ARCH
            ),
        );
    }
    let blob = std::fs::read("/proc/self/exe").map_err(|e| io_error("reading this agent", e))?;
    let header = match boot.codec {
        Codec::Xz => spindle_bootstrap::raw_blob_header(blob.len()),
        Codec::Raw => spindle_bootstrap::blob_header(blob.len()),
    };
    stdin
        .write_all(&header)
        .and_then(|_| stdin.write_all(&blob))
        .map_err(|e| io_error("sending the child agent", e))
}

/// The hello behind its magic, once whole; what follows stays in `out`.
fn take_hello(out: &mut Vec<u8>) -> Result<Option<Hello>, String> {
    let Some(pos) = out
        .windows(HELLO_MAGIC.len())
        .position(|w| w == HELLO_MAGIC)
    else {
        return Ok(None);
    };
    let start = pos + HELLO_MAGIC.len();
    // Only the hello can come first: decoding just that keeps every other
    // message's decoder out of the agent.
    #[derive(serde::Deserialize)]
    enum First {
        Hello(Hello),
    }
    match frame::decode::<First>(&out[start..]).map_err(|e| e.to_string())? {
        Some((First::Hello(h), used)) => {
            out.drain(..start + used);
            Ok(Some(h))
        }
        None => Ok(None),
    }
}

/// Kills a failed account switch and leaves reaping it to a thread: once
/// it runs as another user the kill may be refused, and it ends only when
/// its stdin closes (when the caller returns).
fn abandon(proc: &mut std::process::Child) {
    let _ = proc.kill();
    if let Ok(None) = proc.try_wait() {
        let pid = proc.id();
        spawn(move || sys::reap(pid));
    }
}

/// A started account switch whose child agent said hello.
struct Switch {
    proc: std::process::Child,
    stdin: File,
    stdout: File,
    stderr: File,
    /// The master of its controlling terminal, if it has one of ours.
    tty: Option<File>,
}

/// Registers a started child and starts its threads.
fn adopt(switch: Switch, mut pending: Vec<u8>, hello: Hello, mut err: Vec<u8>) -> Child {
    let Switch {
        mut proc,
        mut stdin,
        mut stdout,
        mut stderr,
        tty,
    } = switch;
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    children().insert(id, Entry { tx });
    spawn(move || {
        while let Ok(frame) = rx.recv() {
            if stdin.write_all(&frame).is_err() {
                break;
            }
        }
        // Dropping stdin ends the child.
    });
    let tail = Arc::new(Mutex::new(Vec::new()));
    let tail_w = tail.clone();
    spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            err.extend_from_slice(&buf[..n]);
            if err.len() > STDERR_KEEP {
                err.drain(..err.len() - STDERR_KEEP);
            }
            *tail_w.lock().unwrap_or_else(|e| e.into_inner()) = err.clone();
        }
    });
    LIVE.fetch_add(1, Ordering::Relaxed);
    spawn(move || {
        let reason = forward(id, &mut stdout, &mut pending);
        children().remove(&id);
        let _ = proc.wait();
        drop(tty);
        LIVE.fetch_sub(1, Ordering::Relaxed);
        let said = text(&tail.lock().unwrap_or_else(|e| e.into_inner()));
        let reason = if said.is_empty() {
            reason
        } else {
            format!("{reason}: {said}")
        };
        out::log(LogLevel::Debug, format!("child agent {id} ended: {reason}"));
        out::out().send(FromAgent::ChildGone { child: id, reason });
    });
    Child {
        child: id,
        hello: Box::new(hello),
    }
}

/// Reads the child's frames and sends each up whole. Returns why it ended.
fn forward(id: u32, stdout: &mut File, buf: &mut Vec<u8>) -> String {
    let mut scratch = vec![0u8; 64 << 10];
    loop {
        while let Some(header) = buf.first_chunk::<{ frame::HEADER_LEN }>() {
            let len = match frame::body_len(*header) {
                Ok(len) => len,
                Err(e) => return format!("child agent sent a bad frame: {e}"),
            };
            let whole = frame::HEADER_LEN + len;
            if buf.len() < whole {
                break;
            }
            let rest = buf.split_off(whole);
            let frame = std::mem::replace(buf, rest);
            out::out().send(FromAgent::Routed {
                child: id,
                frame: Blob::from(frame),
            });
        }
        match stdout.read(&mut scratch) {
            Ok(0) => return "child agent exited".into(),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return format!("reading from the child agent: {e}"),
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    // Thread creation fails only when the process is out of resources.
    std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(f)
        .expect("spawning a child agent thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn su_prompts_in_the_listed_languages_only() {
        let words = [
            "Password".to_owned(),
            "Passwort".to_owned(),
            "密码".to_owned(),
        ];
        let p = Prompt::Words(&words, Some(b"pw"));
        for said in ["Password: ", "passwort:", "密码：", "motd\nPassword:"] {
            assert_eq!(p.seen(said.as_bytes()), Some(Some(&b"pw"[..])), "{said:?}");
        }
        for said in [
            "su: ",
            "su: warning: cannot change directory to /home/x: ",
            "su: Authentication failure\n",
            "Password: \n",
            "Mot de passe : ",
            "",
        ] {
            assert_eq!(p.seen(said.as_bytes()), None, "{said:?}");
        }
        assert_eq!(Prompt::Words(&words, None).seen(b"Password: "), Some(None));
    }

    #[test]
    fn sudo_prompt_is_ours_only() {
        let p = Prompt::Exact("[spindle sudo 1] password:".into(), b"pw");
        assert!(p.seen(b"Password: ").is_none());
        assert!(p.seen(b"x\n[spindle sudo 1] password:").is_some());
    }

    #[test]
    fn marker_must_be_a_whole_line() {
        assert_eq!(line_end(b"motd\nready\nrest", "ready"), Some(11));
        assert_eq!(line_end(b"ready\r\n", "ready"), Some(7));
        assert_eq!(line_end(b"not ready\n", "ready"), None);
        assert_eq!(line_end(b"ready", "ready"), None);
    }
}
