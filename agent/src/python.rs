//! Persistent Python interpreters ("zygotes") and running Ansible modules
//! in them.
//!
//! Theory of operation:
//! 1. Module bundles (AnsiballZ zips) arrive once per agent, keyed by hash,
//!    and live in anonymous memory files: never on disk.
//! 2. One zygote per Python path runs `python/runner.py`, reached over a
//!    SOCK_SEQPACKET socket carrying JSON messages and descriptors. A bundle
//!    is handed to a zygote (as its memfd) before its first use there.
//! 3. To run a module the agent makes the task's stdin/stdout/stderr pipes
//!    (or one pseudo-terminal, see `RunModule::pty`), passes their far ends
//!    with the request, and the zygote runs the module on them in a child of
//!    its own (forked ahead of the task when it can). The agent pumps the
//!    output exactly as for `Exec`, and the zygote reports the child's pid
//!    and, once the task has ended, its exit status.
//! 4. At most [`MAX_INTERPRETERS`] zygotes live at once; a new one replaces
//!    the least recently used idle one, waiting if all are busy. A zygote
//!    that dies is replaced on next use; tasks it was running fail.

use crate::ctl::Control;
use crate::{exec, io_error, login_env, out, sys};
use spindle_protocol::{
    bundle, lzma, Code, ErrorKind, ExecResult, LogLevel, Member, ModuleEntry, RequestId, RunModule,
    WireError,
};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Zygotes alive at once per agent. Each holds a warm interpreter (tens of
/// MiB); twenty covers every realistic mix of Python paths on one host.
pub const MAX_INTERPRETERS: usize = 20;

/// `python/runner.py` with its comment lines blanked (see `build.rs`).
const RUNNER: &str = include_str!(concat!(env!("OUT_DIR"), "/runner.py"));

/// Largest module arguments sent inside the run message: a packet to the
/// interpreter may not exceed the socket's send buffer (about 200 KiB by
/// default).
const PARAMS_INLINE_MAX: usize = 64 << 10;
/// The same for the secrets among them.
const SECRETS_INLINE_MAX: usize = 16 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bundles by hash, each in a memfd, and where each member content they
/// hold lies: (bundle, offset, length) by key.
#[derive(Default)]
struct CodeStore {
    /// Each with whether it was rebuilt from members (so laid out as
    /// [`note_contents`] expects).
    bundles: HashMap<String, (Arc<File>, bool)>,
    contents: HashMap<Vec<u8>, (Arc<File>, u64, usize)>,
}

/// Largest bundle an agent rebuilds from members: module code, plain.
const MAX_BUNDLE: usize = 64 << 20;

fn code_store() -> MutexGuard<'static, CodeStore> {
    static STORE: OnceLock<Mutex<CodeStore>> = OnceLock::new();
    lock(STORE.get_or_init(Default::default))
}

/// What a zygote reports about one run.
#[derive(Debug)]
enum Event {
    Started(u32),
    Exit(Exit),
    Failed(String),
}

/// One line from the runner: `op id pid code signal wall_us cpu_us
/// message`, `-` for a code or signal it has not, the free text last (as
/// bytes: a path keeps the bytes it has).
#[derive(Debug, Default, PartialEq)]
struct Message {
    op: String,
    id: u64,
    pid: u32,
    code: Option<i32>,
    signal: Option<i32>,
    message: Vec<u8>,
    /// For "exit": the time from handing the task to its child until it
    /// ended, and the CPU time that child (and its children) used.
    wall_us: u64,
    cpu_us: u64,
}

impl Message {
    fn parse(bytes: &[u8]) -> Option<Message> {
        let mut fields = bytes.splitn(8, |&b| b == b' ');
        let mut next = || std::str::from_utf8(fields.next()?).ok();
        fn opt(s: &str) -> Option<Option<i32>> {
            match s {
                "-" => Some(None),
                n => n.parse().ok().map(Some),
            }
        }
        let mut m = Message {
            op: next()?.to_owned(),
            id: next()?.parse().ok()?,
            pid: next()?.parse().ok()?,
            code: opt(next()?)?,
            signal: opt(next()?)?,
            wall_us: next()?.parse().ok()?,
            cpu_us: next()?.parse().ok()?,
            message: Vec::new(),
        };
        m.message = fields.next()?.to_vec();
        Some(m)
    }
}

/// A JSON object for the runner, written a field at a time.
struct Json(String);

impl Json {
    fn new(op: &str) -> Json {
        let mut j = Json(String::from("{"));
        j.str("op", op);
        j
    }

    fn key(&mut self, key: &str) -> &mut String {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        quote(&mut self.0, key);
        self.0.push(':');
        &mut self.0
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Json {
        quote(self.key(key), value);
        self
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Json {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key).push_str("null");
                self
            }
        }
    }

    fn num(&mut self, key: &str, value: u64) -> &mut Json {
        self.key(key).push_str(&value.to_string());
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Json {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    fn list<'a>(&mut self, key: &str, items: impl IntoIterator<Item = &'a str>) -> &mut Json {
        let out = self.key(key);
        out.push('[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            quote(out, item);
        }
        out.push(']');
        self
    }

    /// An object of strings; a repeated name counts once, its last value.
    fn map<'a>(
        &mut self,
        key: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> &mut Json {
        let out = self.key(key);
        out.push('{');
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            quote(out, k);
            out.push(':');
            quote(out, v);
        }
        out.push('}');
        self
    }

    fn end(&mut self) -> Vec<u8> {
        self.0.push('}');
        std::mem::take(&mut self.0).into_bytes()
    }
}

/// `s` as a JSON string.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// How a task's process ended.
#[derive(Debug)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    wall_us: u64,
    cpu_us: u64,
}

struct Zygote {
    python: String,
    sock: OwnedFd,
    pid: u32,
    child: Mutex<Child>,
    waiters: Mutex<HashMap<u64, SyncSender<Event>>>,
    loaded: Mutex<HashSet<String>>,
    dead: Mutex<Option<String>>,
    /// The interpreter's private temporary directories (one per remote_tmp).
    tmpdirs: Mutex<Vec<std::path::PathBuf>>,
}

struct Pool {
    zygotes: Mutex<Vec<Slot>>,
    freed: Condvar,
}

struct Slot {
    zygote: Arc<Zygote>,
    busy: usize,
    last_used: Instant,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        zygotes: Mutex::default(),
        freed: Condvar::new(),
    })
}

/// A zygote checked out for one task; returned to the pool on drop.
struct Lease(Arc<Zygote>);

impl Drop for Lease {
    fn drop(&mut self) {
        let p = pool();
        let mut slots = lock(&p.zygotes);
        if let Some(s) = slots.iter_mut().find(|s| Arc::ptr_eq(&s.zygote, &self.0)) {
            s.busy -= 1;
            s.last_used = Instant::now();
        }
        p.freed.notify_all();
    }
}

fn lease(python: &str) -> Result<Lease, WireError> {
    let p = pool();
    let mut slots = lock(&p.zygotes);
    loop {
        slots.retain(|s| s.busy > 0 || !s.zygote.is_dead());
        if let Some(s) = slots
            .iter_mut()
            .find(|s| s.zygote.python == python && !s.zygote.is_dead())
        {
            s.busy += 1;
            return Ok(Lease(s.zygote.clone()));
        }
        if slots.len() >= MAX_INTERPRETERS {
            let idle = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.busy == 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i);
            match idle {
                Some(i) => {
                    let old = slots.remove(i);
                    old.zygote.stop();
                }
                None => {
                    slots = p.freed.wait(slots).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
            }
        }
        // Spawning under the lock keeps the cap exact; it takes a few ms.
        let z = Zygote::spawn(python)?;
        slots.push(Slot {
            zygote: z.clone(),
            busy: 1,
            last_used: Instant::now(),
        });
        return Ok(Lease(z));
    }
}

/// Stops every zygote (agent shutdown).
pub fn stop_all() {
    for s in lock(&pool().zygotes).iter() {
        s.zygote.stop();
    }
}

impl Zygote {
    fn spawn(python: &str) -> Result<Arc<Zygote>, WireError> {
        let ctx = || format!("starting {python}");
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| io_error(ctx(), e))?;
        let mut cmd = std::process::Command::new(python);
        cmd.args(["-c", "import sys;exec(sys.stdin.read())"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        sys::child_fd(&mut cmd, theirs.as_raw_fd(), 3);
        let mut child = cmd.spawn().map_err(|e| io_error(ctx(), e))?;
        drop(theirs);
        if let Some(mut stdin) = child.stdin.take() {
            // The runner is small; a failure shows up as the socket closing.
            let _ = stdin.write_all(RUNNER.as_bytes());
        }
        let mut stderr = child.stderr.take();
        let mut buf = vec![0u8; 1 << 16];
        let n = sys::recv_packet(&ours, &mut buf).map_err(|e| io_error(ctx(), e))?;
        let ready = Message::parse(&buf[..n]);
        let Some(ready) = ready.filter(|m| m.op == "ready") else {
            let _ = child.kill();
            let _ = child.wait();
            let mut why = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut why);
            }
            return Err(WireError::new(
                ErrorKind::Unsupported,
                format!("{python} cannot run the module runner: {}", why.trim()),
            ));
        };
        let z = Arc::new(Zygote {
            python: python.to_owned(),
            sock: ours,
            pid: ready.pid,
            child: Mutex::new(child),
            waiters: Mutex::default(),
            loaded: Mutex::default(),
            dead: Mutex::default(),
            tmpdirs: Mutex::default(),
        });
        exec::running().insert(z.pid);
        let reader = z.clone();
        spawn_helper(move || reader.read_loop());
        if let Some(err) = stderr {
            let python = python.to_owned();
            spawn_helper(move || forward_stderr(&python, err));
        }
        out::log(
            LogLevel::Debug,
            format!("started interpreter {python} (pid {})", ready.pid),
        );
        Ok(z)
    }

    fn is_dead(&self) -> bool {
        lock(&self.dead).is_some()
    }

    fn stop(&self) {
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
        exec::running().remove(&self.pid);
        for dir in lock(&self.tmpdirs).drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn read_loop(&self) {
        let mut buf = vec![0u8; 1 << 16];
        let reason = loop {
            match sys::recv_packet(&self.sock, &mut buf) {
                Ok(0) => break "interpreter exited".to_owned(),
                Ok(n) => match Message::parse(&buf[..n]) {
                    Some(m) => self.deliver(m),
                    None => {
                        let text = String::from_utf8_lossy(&buf[..n.min(200)]).into_owned();
                        break format!("bad message from the interpreter: {text:?}");
                    }
                },
                Err(e) => break format!("reading from the interpreter: {e}"),
            }
        };
        *lock(&self.dead) = Some(reason.clone());
        self.stop();
        for (_, w) in lock(&self.waiters).drain() {
            let _ = w.send(Event::Failed(format!("{}: {reason}", self.python)));
        }
        pool().freed.notify_all();
    }

    fn deliver(&self, m: Message) {
        let event = match m.op.as_str() {
            "started" => Event::Started(m.pid),
            "exit" => Event::Exit(Exit {
                code: m.code,
                signal: m.signal,
                wall_us: m.wall_us,
                cpu_us: m.cpu_us,
            }),
            "error" => Event::Failed(String::from_utf8_lossy(&m.message).into_owned()),
            "tmpdir" => {
                use std::os::unix::ffi::OsStringExt;
                let path = std::ffi::OsString::from_vec(m.message);
                lock(&self.tmpdirs).push(path.into());
                return;
            }
            _ => return,
        };
        let done = !matches!(event, Event::Started(_));
        let mut waiters = lock(&self.waiters);
        let tx = if done {
            waiters.remove(&m.id)
        } else {
            waiters.get(&m.id).cloned()
        };
        if let Some(tx) = tx {
            let _ = tx.send(event);
        }
    }

    fn send(&self, msg: &[u8], fds: &[std::os::fd::RawFd]) -> Result<(), WireError> {
        sys::send_with_fds(&self.sock, msg, fds)
            .map_err(|e| io_error(format_args!("talking to {}", self.python), e))
    }

    /// Hands a bundle to the zygote unless it has it already.
    fn ensure_code(&self, hash: &str, file: &File) -> Result<(), WireError> {
        let mut loaded = lock(&self.loaded);
        if loaded.contains(hash) {
            return Ok(());
        }
        self.send(
            &Json::new("code").str("hash", hash).end(),
            &[file.as_raw_fd()],
        )?;
        loaded.insert(hash.to_owned());
        Ok(())
    }
}

fn spawn_helper(f: impl FnOnce() + Send + 'static) {
    // Thread creation fails only when the process is out of resources.
    std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(f)
        .expect("spawning an interpreter thread");
}

/// The runner's own errors (not a module's: those go to the task's pipes).
fn forward_stderr(python: &str, mut err: impl Read) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = err.read(&mut buf) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        out::log(LogLevel::Warn, format!("{python}: {}", text.trim_end()));
    }
}

/// Bundle `code`: the one this agent keeps under its hash, or the one it
/// carries, whole or as members (kept from now on, sealed).
pub fn bundle(code: &mut Code) -> Result<Arc<File>, WireError> {
    let mut store = code_store();
    if let Some((f, rebuilt)) = store.bundles.get(&code.hash).cloned() {
        // Kept from another request: when that one was rebuilt from
        // members, the members this one names lie in it too, and the
        // controller will count on them from now on.
        if rebuilt {
            note_contents(&mut store, &f, &code.members);
        }
        return Ok(f);
    }
    let rebuilt = code.zip.is_none();
    let zip = match code.zip.take() {
        Some(zip) => zip.0,
        None if !code.members.is_empty() => rebuild(&store, code)?,
        None => {
            return Err(WireError::new(
                ErrorKind::CodeMissing,
                format!("module code {} is not cached", code.hash),
            ))
        }
    };
    let store_error = |e| io_error("storing module code", e);
    let mut file =
        sys::memfd(c"spindle-module").map_err(|e| io_error("creating a memory file", e))?;
    file.write_all(&zip).map_err(store_error)?;
    // A module may reach its bundle through the interpreter's /proc entry:
    // it must not change what later tasks, and bundles sharing its
    // contents, are made of.
    sys::seal(&file).map_err(|e| io_error("sealing module code", e))?;
    let file = Arc::new(file);
    if rebuilt {
        note_contents(&mut store, &file, &code.members);
    }
    code.members.clear();
    code.packed = None;
    store
        .bundles
        .insert(code.hash.clone(), (file.clone(), rebuilt));
    Ok(file)
}

/// The zip of `code`'s members (see [`spindle_protocol::bundle`]): each
/// content held under its key, or an earlier member's, or next in the
/// unpacked `packed` stream; every one checked against its CRC.
fn rebuild(store: &CodeStore, code: &Code) -> Result<Vec<u8>, WireError> {
    let hash = &code.hash;
    let protocol =
        |what: String| WireError::new(ErrorKind::Protocol, format!("module code {hash}: {what}"));
    if bundle::stored_len(&code.members) > MAX_BUNDLE {
        return Err(protocol(format!("larger than {MAX_BUNDLE} bytes")));
    }
    let members = &code.members;
    let fresh: usize = members
        .iter()
        .filter(|m| m.packed)
        .map(|m| m.size as usize)
        .sum();
    let unpacked = match &code.packed {
        Some(packed) => {
            lzma::decode(packed.as_ref(), fresh).map_err(|e| protocol(e.to_string()))?
        }
        None => Vec::new(),
    };
    if unpacked.len() != fresh {
        return Err(protocol(format!(
            "{} bytes unpacked, {fresh} expected",
            unpacked.len()
        )));
    }
    // An earlier member with the same content (a bundle has a few dozen
    // members: a linear search will do).
    let earlier = |i: usize| members[..i].iter().position(|e| e.key == members[i].key);
    let mut starts = Vec::with_capacity(members.len());
    let mut next = 0;
    let zip = bundle::write_stored(members, |start, m, zip| {
        use std::os::unix::fs::FileExt;
        let size = m.size as usize;
        if m.packed {
            zip.extend_from_slice(&unpacked[next..next + size]);
            next += size;
        } else if let Some((held, offset, len)) = store.contents.get(m.key.as_ref()) {
            let mut bytes = vec![0; *len];
            // At an offset: the bundle's descriptor is shared.
            held.read_exact_at(&mut bytes, *offset)
                .map_err(|e| io_error("reading kept module code", e))?;
            zip.extend_from_slice(&bytes);
        } else if let Some(e) = earlier(starts.len()) {
            let at: usize = starts[e];
            zip.extend_from_within(at..at + size.min(zip.len() - at));
        } else {
            return Err(WireError::new(
                ErrorKind::CodeMissing,
                format!("module code {hash} is not cached (nor member {})", m.name),
            ));
        }
        if zip.len() - start != size || bundle::crc32(&zip[start..]) != m.crc {
            return Err(protocol(format!(
                "member {} does not match its checksum",
                m.name
            )));
        }
        starts.push(start);
        Ok(())
    })?;
    zip.ok_or_else(|| protocol("does not fit a zip".into()))
}

/// Records where in `bundle`, the zip the agent wrote of `members` (or of
/// members with the same names and sizes: a bundle's hash fixes them),
/// each member's content lies, unless it is known already.
fn note_contents(store: &mut CodeStore, bundle: &Arc<File>, members: &[Member]) {
    if bundle.metadata().map(|m| m.len()).ok() != Some(bundle::stored_len(members) as u64) {
        return;
    }
    for (m, at) in members.iter().zip(bundle::data_offsets(members)) {
        store
            .contents
            .entry(m.key.as_ref().to_vec())
            .or_insert_with(|| (bundle.clone(), at as u64, m.size as usize));
    }
}

/// The bytes of the bundle kept under `hash`, if any.
pub fn stored_bundle(hash: &str) -> Option<Vec<u8>> {
    let (file, _) = code_store().bundles.get(hash)?.clone();
    read_bundle(&file).ok()
}

/// All of a kept bundle's bytes.
pub fn read_bundle(bundle: &File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut zip = vec![0; bundle.metadata()?.len() as usize];
    // At an offset: the bundle's descriptor is shared.
    bundle.read_exact_at(&mut zip, 0)?;
    Ok(zip)
}

pub fn run(id: RequestId, mut req: RunModule, control: &Control) -> Result<ExecResult, WireError> {
    let t0 = Instant::now();
    let bundle = bundle(&mut req.code)?;
    let zygote = lease(&req.python)?;
    let z = &zygote.0;
    z.ensure_code(&req.code.hash, &bundle)?;

    // The module's standard streams: pipes, or one terminal (its master
    // side read here); `ends` are what the task's child gets.
    let (streams, ends) = if req.pty {
        let (master, slave) =
            sys::openpty().map_err(|e| io_error("opening a pseudo-terminal", e))?;
        (Streams::Terminal(File::from(master)), vec![slave])
    } else {
        let pipe = || sys::pipe().map_err(|e| io_error("creating pipes", e));
        let (stdin_r, stdin_w) = pipe()?;
        drop(stdin_w); // the module's stdin is at end of file, as when pipelined
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let streams = Streams::Pipes(File::from(stdout_r), File::from(stderr_r));
        (streams, vec![stdin_r, stdout_w, stderr_w])
    };
    let mut fds: Vec<RawFd> = match &ends[..] {
        [tty] => vec![tty.as_raw_fd(); 3],
        _ => ends.iter().map(AsRawFd::as_raw_fd).collect(),
    };
    // Arguments (and the secrets among them, which grow with them) too
    // large for one packet to the interpreter travel in memory files of
    // their own, passed after the task's streams: the arguments' first.
    let in_file = |text: &str, name: &std::ffi::CStr, what: &str| {
        let mut file = sys::memfd(name).map_err(|e| io_error("creating a memory file", e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io_error(what, e))?;
        Ok::<_, WireError>(file)
    };
    let params_file = (req.params.len() > PARAMS_INLINE_MAX)
        .then(|| {
            in_file(
                &req.params,
                c"spindle-params",
                "storing the module's arguments",
            )
        })
        .transpose()?;
    let secrets_file = (req.secrets.as_deref())
        .filter(|s| s.len() > SECRETS_INLINE_MAX)
        .map(|s| in_file(s, c"spindle-secrets", "storing the module's secrets"))
        .transpose()?;
    let params_fd = params_file.as_ref().map(|f| {
        fds.push(f.as_raw_fd());
        fds.len() - 1
    });
    let secrets_fd = secrets_file.as_ref().map(|f| {
        fds.push(f.as_raw_fd());
        fds.len() - 1
    });
    // As a fresh login would see it, then the task's own variables.
    let login = login_env::delta();
    let env: Vec<(&str, &str)> = login
        .set
        .iter()
        .chain(req.env.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let unset = login
        .unset
        .iter()
        .map(String::as_str)
        .filter(|k| !env.iter().any(|(name, _)| name == k));
    let entry = match req.entry {
        ModuleEntry::Runpy => "runpy",
        ModuleEntry::Loader => "loader",
    };
    let mut msg = Json::new("run");
    msg.num("id", id)
        .str("hash", &req.code.hash)
        .str("entry", entry)
        .str("fqn", &req.fqn)
        .str("params", if params_fd.is_some() { "" } else { &req.params });
    if let Some(fd) = params_fd {
        msg.num("params_fd", fd as u64);
    }
    if let Some(fd) = secrets_fd {
        msg.num("secrets_fd", fd as u64);
    }
    // The extensions' and secrets' JSON text, which the runner reads.
    let msg = msg
        .opt_str("profile", req.profile.as_deref())
        .opt_str("extensions", req.extensions.as_deref())
        .opt_str(
            "secrets",
            req.secrets.as_deref().filter(|_| secrets_fd.is_none()),
        )
        .num("rlimit_nofile", req.rlimit_nofile)
        .map("env", env.iter().copied())
        .list("unset", unset)
        .opt_str("cwd", req.cwd.as_deref())
        .bool("tty", req.pty)
        .end();
    let (tx, rx) = mpsc::sync_channel(2);
    lock(&z.waiters).insert(id, tx);
    let sent = z.send(&msg, &fds);
    drop((ends, params_file, secrets_file));
    if let Err(e) = sent {
        lock(&z.waiters).remove(&id);
        return Err(e);
    }
    let pid = match rx.recv() {
        Ok(Event::Started(pid)) => pid,
        Ok(Event::Failed(why)) => return Err(WireError::new(ErrorKind::Io, why)),
        Ok(Event::Exit(..)) | Err(_) => {
            return Err(WireError::new(
                ErrorKind::Io,
                format!("{} stopped unexpectedly", req.python),
            ))
        }
    };
    exec::running().insert(pid);
    let deadline = req
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let exited = &AtomicBool::new(false);
    let ((output, status), watch) = std::thread::scope(|s| {
        exec::guarded(s, control, pid, deadline, move || match streams {
            Streams::Pipes(stdout, stderr) => {
                let output = exec::collect(id, stdout, stderr, control);
                (output, wait_exit(&rx))
            }
            Streams::Terminal(master) => {
                exec::on_terminal(s, id, master, &[], exited, control, move || wait_exit(&rx))
            }
        })
    });
    exec::running().remove(&pid);
    let status = status.map(|exit| {
        if out::logs(LogLevel::Debug) {
            // What the agent and the interpreter add to the module's own run
            // (whole microseconds: float formatting would grow the agent).
            let total = t0.elapsed().as_micros() as u64;
            out::log(
                LogLevel::Debug,
                format!(
                    "module {}: {total} us in the agent, {} us in the task's process \
                     ({} us CPU), overhead {} us",
                    req.fqn,
                    exit.wall_us,
                    exit.cpu_us,
                    total.saturating_sub(exit.wall_us)
                ),
            );
        }
        (exit.code, exit.signal)
    });
    exec::result(output, watch, status)
}

/// Where a task's output is read: its stdout and stderr pipes, or the
/// master side of its terminal.
enum Streams {
    Pipes(File, File),
    Terminal(File),
}

fn wait_exit(rx: &Receiver<Event>) -> Result<Exit, WireError> {
    match rx.recv() {
        Ok(Event::Exit(exit)) => Ok(exit),
        Ok(Event::Failed(why)) => Err(WireError::new(ErrorKind::Io, why)),
        _ => Err(WireError::new(ErrorKind::Io, "interpreter stopped")),
    }
}

#[cfg(test)]
mod tests {
    use super::{quote, Json, Message, RUNNER};

    /// The runner as embedded differs from its source by comments only:
    /// Python parses both to the same tree.
    #[test]
    fn the_runner_loses_only_comments() {
        let script = "import ast, sys\n\
            a, b = (ast.dump(ast.parse(open(p).read())) for p in sys.argv[1:])\n\
            sys.exit(a != b)\n";
        let embedded =
            std::env::temp_dir().join(format!("spindle-runner-{}.py", std::process::id()));
        std::fs::write(&embedded, RUNNER).expect("writes");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/src/python/runner.py");
        let status = std::process::Command::new("python3")
            .args(["-c", script, source])
            .arg(&embedded)
            .status()
            .expect("python3 runs");
        let _ = std::fs::remove_file(&embedded);
        assert!(status.success(), "the embedded runner parses differently");
        assert!(RUNNER.len() < include_str!("python/runner.py").len());
    }

    #[test]
    fn runner_lines() {
        let m = Message::parse(b"exit 7 0 -1 - 1200 800 ").unwrap();
        assert_eq!(
            m,
            Message {
                op: "exit".into(),
                id: 7,
                code: Some(-1),
                wall_us: 1200,
                cpu_us: 800,
                ..Message::default()
            }
        );
        let m = Message::parse(b"tmpdir 0 0 - - 0 0 /tmp/a b\n\xff").unwrap();
        assert_eq!(m.message, b"/tmp/a b\n\xff");
        let m = Message::parse(b"exit 1 0 - 9 0 0 ").unwrap();
        assert_eq!((m.code, m.signal), (None, Some(9)));
        for bad in [
            &b"exit 1 0 - 9 0 0"[..],
            b"exit x 0 - - 0 0 ",
            b"",
            b"exit 1 0 ? - 0 0 ",
        ] {
            assert_eq!(Message::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn json_for_the_runner() {
        let mut s = String::new();
        quote(&mut s, "a\"b\\c\n\u{1}\u{7f}\u{2028}é");
        // Control characters escaped; DEL, U+2028 and the rest as they are.
        assert_eq!(s, "\"a\\\"b\\\\c\\u000a\\u0001\u{7f}\u{2028}é\"");
        let msg = Json::new("run")
            .num("id", 3)
            .opt_str("cwd", None)
            .bool("tty", true)
            .list("unset", ["A", "B"])
            .map("env", [("K", "v"), ("K", "w")])
            .end();
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            r#"{"op":"run","id":3,"cwd":null,"tty":true,"unset":["A","B"],"env":{"K":"v","K":"w"}}"#
        );
    }
}
