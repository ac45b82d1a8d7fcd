//! Running commands: argv or shell string, environment, working directory,
//! stdin bytes, optional pseudo-terminal, timeout and cancellation.
//!
//! Theory of operation:
//! 1. The command starts as the leader of a new session, so its whole
//!    process group can be killed at once, and with PDEATHSIG so it dies
//!    with the agent.
//! 2. The request's own thread reads stdout and stderr, whichever has
//!    data. Output accumulates up to [`CHUNK`]; a full chunk is streamed to
//!    the controller under credit, so a command that prints gigabytes only
//!    ever holds a window's worth.
//! 3. Cancelling the request kills the process group (the dispatcher does
//!    it, see [`Control::guard`]); a timeout takes a timer thread that does
//!    the same when it passes.
//! 4. The reply carries the exit status and whatever output was not yet
//!    streamed.

use crate::ctl::{self, Control, Watch};
use crate::{io_error, login_env, out, shortcut, sys};
use spindle_protocol::{
    Blob, Command, ErrorKind, Exec, ExecResult, FromAgent, RequestId, StreamKind, WireError, CHUNK,
};
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// First read buffer for a command's output stream.
const FIRST_READ: usize = 16 << 10;

/// Stack of the small helper threads (readers, writer, watchdog).
const HELPER_STACK: usize = 64 << 10;

/// Process groups of everything running for a request (commands, module
/// children, interpreters): killed when the agent shuts down.
pub fn running() -> MutexGuard<'static, HashSet<u32>> {
    static RUNNING: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    RUNNING
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Kills the process group of every command still running.
pub fn kill_all() {
    for &pgid in running().iter() {
        sys::kill_group(pgid);
    }
}

pub fn run(id: RequestId, req: Exec, control: &Control) -> Result<ExecResult, WireError> {
    if let Some(shortcut) = &req.shortcut {
        match shortcut::apply(shortcut) {
            Ok(()) => {
                return Ok(ExecResult {
                    code: Some(0),
                    signal: None,
                    timed_out: false,
                    stdout: Blob::default(),
                    stderr: Blob::default(),
                })
            }
            // The command itself runs (and fails with its own words).
            Err(e) => out::log(
                spindle_protocol::LogLevel::Debug,
                format!("request {id}: shortcut not taken ({e}); running the command"),
            ),
        }
    }
    let shell;
    let argv: Vec<&OsStr> = match &req.command {
        Command::Argv(argv) => {
            if argv.is_empty() {
                return Err(WireError::new(ErrorKind::InvalidInput, "empty argv"));
            }
            argv.iter().map(OsStr::new).collect()
        }
        Command::Shell(script) => {
            shell = ["/bin/sh", "-c", script.as_str()];
            shell.iter().map(OsStr::new).collect()
        }
    };
    // As a fresh login would see it, then the request's own variables.
    let login = login_env::delta();
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for k in &login.unset {
        env.remove(OsStr::new(k));
    }
    let strings = login.set.into_iter().chain(req.env);
    env.extend(strings.map(|(k, v)| (k.into(), v.into())));
    // A directory the account may not enter is no reason to fail: the
    // command starts where the agent is, as sudo leaves a command in a
    // directory its account cannot enter. (A missing one fails the spawn.)
    let cwd = req.cwd.as_deref().filter(|d| !sys::denied(d));
    let what = describe(&req.command);
    let failed = |e| io_error(format_args!("running {what}"), e);
    let prepared = sys::Prepared::new(&argv, env, cwd).map_err(failed)?;
    let stdin_bytes = req.stdin.map(Blob::into_inner);

    // With a pty, the child's three standard streams are the terminal and
    // we talk to its master side; otherwise plain pipes. The child's ends
    // are closed here once it has started.
    let mut pty_master = None;
    let (mut stdin, mut stdout, mut stderr) = (None, None, None);
    let pgid = if req.pty {
        let (master, slave) =
            sys::openpty().map_err(|e| io_error("opening a pseudo-terminal", e))?;
        let master = File::from(master);
        if stdin_bytes.is_some() {
            // Input is typed in between reads, never waiting (`PtyOutput`).
            sys::set_nonblocking(&master).map_err(|e| io_error("opening a pseudo-terminal", e))?;
        }
        pty_master = Some(master);
        let s = slave.as_raw_fd();
        sys::spawn(&prepared, [s, s, s], true)
    } else {
        let pipe = || sys::pipe().map_err(|e| io_error("making a pipe", e));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        stdout = Some(File::from(out_r));
        stderr = Some(File::from(err_r));
        let input_r;
        let input = match stdin_bytes {
            Some(_) => {
                let (r, w) = pipe()?;
                stdin = Some(File::from(w));
                input_r = r;
                input_r.as_raw_fd()
            }
            None => sys::dev_null()
                .map_err(|e| io_error("opening /dev/null", e))?
                .as_raw_fd(),
        };
        sys::spawn(
            &prepared,
            [input, out_w.as_raw_fd(), err_w.as_raw_fd()],
            false,
        )
    }
    .map_err(failed)?;
    running().insert(pgid);

    let deadline = req
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let exited = AtomicBool::new(false);
    let outcome = thread::scope(|s| {
        guarded(s, control, pgid, deadline, || {
            let exited = &exited;
            let what = &what;
            match pty_master {
                Some(master) => {
                    let input = stdin_bytes.as_deref().unwrap_or_default();
                    on_terminal(s, id, master, input, exited, control, move || {
                        wait(pgid, what)
                    })
                }
                None => {
                    // Present: both were made pipes above.
                    let stdout = stdout.take().expect("piped stdout");
                    let stderr = stderr.take().expect("piped stderr");
                    if let (Some(mut dst), Some(bytes)) = (stdin.take(), stdin_bytes.as_deref()) {
                        spawn_in(s, move || {
                            // A command that exits without reading its
                            // stdin is normal.
                            let _ = dst.write_all(bytes);
                        });
                    }
                    let output = collect(id, stdout, stderr, control);
                    (output, wait(pgid, what))
                }
            }
        })
    });
    running().remove(&pgid);
    let ((output, status), watch) = outcome;
    result(output, watch, status)
}

/// Waits for command `pid`.
fn wait(pid: u32, what: &str) -> Result<(Option<i32>, Option<i32>), WireError> {
    sys::wait(pid).map_err(|e| io_error(format_args!("waiting for {what}"), e))
}

/// Reads a command's terminal through its `master` side while `wait`
/// waits for the command's end, which (not the terminal's) ends the output
/// (see `PtyOutput`); `exited` notes it. The master stays open until then:
/// a command that closed its output but has not yet exited would be hung
/// up (SIGHUP) by its terminal closing. Everything arrives as stdout.
/// `input` is typed into the terminal meanwhile (the master must then be
/// non-blocking), as far as the command takes it before it ends: written
/// between reads, never waiting, so a command that stops reading (and
/// whatever it left on the terminal) cannot hold the reply.
pub fn on_terminal<'scope, T: Send + 'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    id: RequestId,
    master: File,
    input: &[u8],
    exited: &'scope AtomicBool,
    control: &Control,
    wait: impl FnOnce() -> Result<T, WireError> + Send + 'scope,
) -> (Output, Result<T, WireError>) {
    let waiter = spawn_in(s, move || {
        let status = wait();
        exited.store(true, Ordering::SeqCst);
        status
    });
    let stream = PtyOutput::new(&master, input, exited);
    let output = (
        pump(id, StreamKind::Stdout, stream, control),
        Ok(Vec::new()),
    );
    let status = waiter
        .join()
        .unwrap_or_else(|_| Err(WireError::new(ErrorKind::Io, "waiting for the command")));
    // Now what the command left in the background is hung up, as sshd
    // hangs up a session's terminal.
    drop(master);
    (output, status)
}

/// Output of a finished command: (stdout, stderr) not yet streamed.
pub type Output = (Result<Vec<u8>, WireError>, Result<Vec<u8>, WireError>);

/// Runs `work`, which ends once process group `pgid`'s command has, while
/// cancelling the request, or `deadline` passing, kills that group. Only a
/// deadline takes a thread (a timer); cancellation is the dispatcher's.
pub fn guarded<'scope, T>(
    s: &'scope thread::Scope<'scope, '_>,
    control: &'scope Control,
    pgid: u32,
    deadline: Option<Instant>,
    work: impl FnOnce() -> T,
) -> (T, Watch) {
    control.guard(pgid);
    let timer = deadline.map(|d| {
        spawn_in(s, move || {
            let w = control.watch(Some(d));
            if w == Watch::TimedOut {
                sys::kill_group(pgid);
            }
            w
        })
    });
    let done = work();
    let cancelled = control.unguard();
    control.finish();
    let timed_out = timer.is_some_and(|t| t.join().ok() == Some(Watch::TimedOut));
    let watch = if cancelled {
        Watch::Cancelled
    } else if timed_out {
        Watch::TimedOut
    } else {
        Watch::Finished
    };
    (done, watch)
}

/// Reads a command's stdout and stderr to their ends, both on this thread
/// (whichever has data). Full chunks are streamed as they fill; what
/// remains is returned for the reply. After cancellation output is read
/// and dropped, so the command is never blocked on a full pipe.
pub fn collect(id: RequestId, stdout: File, stderr: File, control: &Control) -> Output {
    use std::os::fd::AsRawFd;
    let mut streams = [
        Stream::new(StreamKind::Stdout, stdout),
        Stream::new(StreamKind::Stderr, stderr),
    ];
    loop {
        let open: Vec<i32> = streams
            .iter()
            .filter_map(|s| s.src.as_ref().map(|f| f.as_raw_fd()))
            .collect();
        if open.is_empty() {
            break;
        }
        let ready = match sys::poll_readable(&open, Duration::from_secs(3600)) {
            Ok(ready) => ready,
            Err(e) => {
                for s in &mut streams {
                    s.fail(io_error("waiting for command output", e.kind().into()));
                }
                break;
            }
        };
        for s in &mut streams {
            if s.src
                .as_ref()
                .is_some_and(|f| ready.contains(&f.as_raw_fd()))
            {
                s.read(id, control);
            }
        }
    }
    let [out, err] = streams.map(Stream::into_rest);
    (out, err)
}

/// One output stream of a command, read by [`collect`].
struct Stream {
    kind: StreamKind,
    /// Open until its end or an error.
    src: Option<File>,
    buf: Vec<u8>,
    error: Option<WireError>,
}

impl Stream {
    fn new(kind: StreamKind, src: File) -> Self {
        Stream {
            kind,
            src: Some(src),
            buf: Vec::new(),
            error: None,
        }
    }

    /// One read, as the stream is ready; streams the chunk once full.
    fn read(&mut self, id: RequestId, control: &Control) {
        let Some(src) = self.src.as_mut() else { return };
        // Most commands print little: reads start small and grow with the
        // output, up to a chunk.
        let start = self.buf.len();
        let room = (CHUNK - start).min(start.max(FIRST_READ));
        self.buf.resize(start + room, 0);
        let got = src.read(&mut self.buf[start..]);
        self.buf.truncate(start + *got.as_ref().unwrap_or(&0));
        match got {
            Ok(0) => self.src = None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => self.fail(io_error("reading command output", e)),
        }
        if self.buf.len() == CHUNK {
            let data = std::mem::take(&mut self.buf);
            if control.take().is_ok() {
                out::out().send(FromAgent::Stream {
                    id,
                    kind: self.kind,
                    data: data.into(),
                });
            }
        }
    }

    fn fail(&mut self, e: WireError) {
        self.src = None;
        self.error.get_or_insert(e);
    }

    fn into_rest(self) -> Result<Vec<u8>, WireError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.buf),
        }
    }
}

/// Builds the reply from what [`collect`] read, the watchdog's verdict and
/// the exit status (code, signal).
pub fn result(
    output: Output,
    watch: Watch,
    status: Result<(Option<i32>, Option<i32>), WireError>,
) -> Result<ExecResult, WireError> {
    if watch == Watch::Cancelled {
        return Err(ctl::cancelled());
    }
    let (code, signal) = status?;
    Ok(ExecResult {
        code,
        signal,
        timed_out: watch == Watch::TimedOut,
        stdout: output.0?.into(),
        stderr: output.1?.into(),
    })
}

fn spawn_in<'scope, T: Send + 'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> thread::ScopedJoinHandle<'scope, T> {
    thread::Builder::new()
        .stack_size(HELPER_STACK)
        .spawn_scoped(s, f)
        // Thread creation fails only when the process is out of resources;
        // the agent cannot do anything useful then.
        .expect("spawning a helper thread")
}

/// Reads `src` to its end. Full chunks are streamed as they fill; the
/// remainder is returned for the reply. After cancellation output is read
/// and dropped so the command is never blocked on a full pipe.
fn pump(
    id: RequestId,
    kind: StreamKind,
    mut src: impl Read,
    control: &Control,
) -> Result<Vec<u8>, WireError> {
    // Output is read straight into the buffer that becomes the chunk (std
    // reads into its spare capacity without zeroing it first). The first
    // starts small: most commands print little.
    let mut capacity = FIRST_READ;
    loop {
        let mut buf = Vec::with_capacity(capacity);
        let got = (&mut src).take(CHUNK as u64).read_to_end(&mut buf);
        match got {
            Ok(_) => {}
            // A pseudo-terminal master reports EIO once every slave closed;
            // what was read before it is kept in `buf`.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(buf),
            Err(e) => return Err(io_error("reading command output", e)),
        }
        if buf.len() < CHUNK {
            return Ok(buf);
        }
        if control.take().is_ok() {
            out::out().send(FromAgent::Stream {
                id,
                kind,
                data: buf.into(),
            });
        }
        capacity = CHUNK;
    }
}

/// How long, in all, reading a terminal may wait for more output once its
/// command has ended (a process it left in the background may keep
/// writing). Time spent waiting for the controller's credit does not count.
const PTY_LINGER: Duration = Duration::from_secs(1);

/// A quiet spell after which a terminal whose command ended counts as
/// drained (what the command wrote reaches the master side a moment later).
const PTY_QUIET: Duration = Duration::from_millis(20);

/// The master side of a command's terminal, read as sshd reads a session's:
/// to its end once every slave is closed, or once the command itself has
/// ended and what it wrote is drained. A process it left in the background
/// may keep the terminal open; it does not hold the reply, and is hung up
/// when the master closes.
struct PtyOutput<'a> {
    master: &'a File,
    /// What is still to be typed into the terminal (the master is
    /// non-blocking then).
    input: &'a [u8],
    /// The terminal reported room, then took nothing: the next wait is for
    /// output alone, so a terminal that keeps doing so is retried at the
    /// poll's pace rather than in a spin.
    refused: bool,
    exited: &'a AtomicBool,
    /// Time spent waiting for output since the command ended.
    lingered: Duration,
}

impl<'a> PtyOutput<'a> {
    fn new(master: &'a File, input: &'a [u8], exited: &'a AtomicBool) -> Self {
        PtyOutput {
            master,
            input,
            refused: false,
            exited,
            lingered: Duration::ZERO,
        }
    }

    /// Types what the terminal has room for; once it is gone, nothing more.
    fn feed(&mut self) {
        let chunk = &self.input[..self.input.len().min(CHUNK)];
        match (&mut &*self.master).write(chunk) {
            Ok(0) => self.refused = true,
            Ok(n) => self.input = &self.input[n..],
            Err(e) if is_transient(&e) => self.refused = true,
            Err(_) => self.input = &[],
        }
    }
}

/// An error a non-blocking descriptor gives when it must be tried again.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, WouldBlock};
    matches!(e.kind(), WouldBlock | Interrupted)
}

impl Read for PtyOutput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            // Noted before polling, so a command that ends during the poll
            // still gets its drain.
            let ended = self.exited.load(Ordering::SeqCst);
            if ended && self.lingered >= PTY_LINGER {
                return Ok(0);
            }
            let wait = if ended {
                PTY_QUIET
            } else {
                Duration::from_millis(50)
            };
            // Input is for the command: none once it has ended.
            let feeding = !ended && !self.input.is_empty() && !std::mem::take(&mut self.refused);
            let started = Instant::now();
            let (readable, writable) = sys::poll_terminal(self.master.as_raw_fd(), feeding, wait)?;
            if ended {
                self.lingered += started.elapsed();
            }
            if feeding && writable {
                self.feed();
            }
            if !readable {
                if ended {
                    return Ok(0);
                }
                continue;
            }
            return match self.master.read(buf) {
                // Every slave closed.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
                Err(e) if is_transient(&e) => continue,
                other => other,
            };
        }
    }
}

pub fn describe(cmd: &Command) -> String {
    let s = match cmd {
        Command::Argv(argv) => argv.join(" "),
        Command::Shell(s) => s.clone(),
    };
    let mut short: String = s.chars().take(60).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    format!("{short:?}")
}
