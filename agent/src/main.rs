//! Spindle's agent: a small static binary that runs from memory on a target
//! host, reads request frames on stdin and writes reply frames on stdout.
//!
//! Threads, not an async runtime: every dependency ships to every host, and
//! blocking IO on one thread per request keeps the binary small and the code
//! plain. Structure:
//! - the main thread reads frames ([`dispatch`]) and never blocks on work;
//! - one writer thread alone owns stdout ([`out`]);
//! - each request runs on a worker thread of its own ([`pool`]), at most
//!   [`MAX_REQUESTS`] at once, with a [`ctl::Control`] the dispatcher uses to grant stream
//!   credit and cancel it.
//!
//! When stdin closes (the controller went away) or a malformed frame arrives,
//! the agent kills every command it started, removes its temporary
//! directories and exits.

mod alloc;
mod child;
mod ctl;
mod exec;
mod files;
mod hello;
mod login_env;
mod out;
mod pool;
mod python;
mod shortcut;
mod sys;

use ctl::{Control, Data, DataTx};
use spindle_protocol::{
    frame, ErrorKind, FromAgent, LogLevel, Reply, Request, RequestId, ToAgent, WireError, WINDOW,
};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Requests running at once before new ones are refused as `busy`. Far above
/// what a controller sends to one host, low enough to bound threads.
const MAX_REQUESTS: usize = 1024;

/// Set by the controller when it starts the agent on its own machine
/// without a login (see `spindle_bootstrap::LOCAL_SESSION`).
const LOCAL_SESSION: &str = spindle_bootstrap::LOCAL_SESSION;

/// Pipe buffer asked for on stdin and stdout: a few frames' worth.
const PIPE_SIZE: i32 = 1 << 20;

/// Stack of a worker thread: workers keep their buffers on the heap.
const WORKER_STACK: usize = 256 << 10;

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        // The shell bootstrap checks that its directory allows exec.
        Some("--probe") => return,
        // The shell bootstrap ran us from a private temporary directory:
        // remove it before anything else so nothing stays on disk.
        Some("--unlink") => {
            if let Some(dir) = args.next() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        _ => {}
    }
    sys::close_extra_fds();
    let _ = UMASK.set(sys::umask());
    for fd in [0, 1] {
        sys::grow_pipe(fd, PIPE_SIZE);
    }
    let (stdin, stdout) = sys::stdio_files();
    out::start(stdout);
    let hello = hello::hello();
    // Started by the controller on its own machine (`ansible_connection=
    // local`): no login took place, so none is emulated; commands see the
    // environment we were started with, as Ansible's local connection's do.
    if std::env::var_os(LOCAL_SESSION).is_some() {
        std::env::remove_var(LOCAL_SESSION);
    } else {
        login_env::capture(&hello.home, &hello.shell);
    }
    out::out().send(FromAgent::Hello(hello));
    let result = dispatch(BufReader::with_capacity(1 << 18, stdin));
    if let Err(e) = &result {
        out::log(LogLevel::Error, format!("closing: {e}"));
    }
    shutdown(if result.is_ok() { 0 } else { 1 });
}

/// The process umask, read once at start-up while single-threaded.
pub static UMASK: OnceLock<u32> = OnceLock::new();

/// Failed requests remembered for a later request's `after`.
const RECENT_FAILURES: usize = 256;

/// A running request as the dispatcher sees it.
struct Entry {
    control: Arc<Control>,
    /// Where upload data for this request goes, if it takes any.
    data: Option<DataTx>,
}

fn registry() -> MutexGuard<'static, HashMap<RequestId, Entry>> {
    static REGISTRY: OnceLock<Mutex<HashMap<RequestId, Entry>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The most recent failed requests, oldest first. Locked only while the
/// registry is, so that a request leaves the registry and, if it failed,
/// enters this list in one step.
fn recent_failures() -> MutexGuard<'static, VecDeque<RequestId>> {
    static FAILED: OnceLock<Mutex<VecDeque<RequestId>>> = OnceLock::new();
    FAILED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// What a request started with `after` waits for.
enum Earlier {
    /// Nothing: no `after`, or one that ended well (or long ago).
    Done,
    Failed(RequestId),
    Running(RequestId, Arc<Control>),
}

impl Earlier {
    fn find(reg: &HashMap<RequestId, Entry>, after: Option<RequestId>) -> Earlier {
        let Some(after) = after else {
            return Earlier::Done;
        };
        if let Some(e) = reg.get(&after) {
            return Earlier::Running(after, e.control.clone());
        }
        if recent_failures().contains(&after) {
            return Earlier::Failed(after);
        }
        Earlier::Done
    }

    /// Waits for the earlier request; an error if it failed.
    fn wait(self, control: &Control) -> Result<(), WireError> {
        let id = match self {
            Earlier::Done => return Ok(()),
            Earlier::Failed(id) => id,
            Earlier::Running(id, earlier) => match earlier.wait_end(control)? {
                false => return Ok(()),
                true => id,
            },
        };
        Err(WireError::new(
            ErrorKind::Skipped,
            format!("not run: request {id} before it failed"),
        ))
    }
}

/// Whether a request's outcome counts as a failure for those ordered
/// after it: an error, or a command or module that did not exit with 0.
fn failed(result: &Result<Reply, WireError>) -> bool {
    match result {
        Err(_) => true,
        Ok(Reply::Exec(r)) => r.code != Some(0),
        Ok(_) => false,
    }
}

/// Takes a request that ended out of the registry, remembering a failure.
fn ended(id: RequestId, failed: bool) {
    let mut reg = registry();
    reg.remove(&id);
    if failed {
        let mut recent = recent_failures();
        if recent.len() == RECENT_FAILURES {
            recent.pop_front();
        }
        recent.push_back(id);
    }
}

/// Reads frames until EOF. Returns an error for a malformed frame, after
/// which the connection must be dropped.
fn dispatch(mut input: impl Read) -> io::Result<()> {
    let mut header = [0u8; frame::HEADER_LEN];
    // Reused across frames: no allocation per frame.
    let mut body = Vec::new();
    loop {
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = frame::body_len(header).map_err(invalid)?;
        // Read into spare capacity: no zeroing of the buffer first.
        body.clear();
        (&mut input).take(len as u64).read_to_end(&mut body)?;
        if body.len() != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let msg: ToAgent = frame::decode_body(&body).map_err(invalid)?;
        handle(msg);
    }
}

fn invalid(e: frame::FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn handle(msg: ToAgent) {
    match msg {
        ToAgent::Call { id, req, after } => start(id, req, after),
        ToAgent::Data { id, data, eof } => {
            let reg = registry();
            if let Some(tx) = reg.get(&id).and_then(|e| e.data.as_ref()) {
                // The controller may not exceed the window, so the channel
                // (sized to it) never fills; if it does, the upload fails.
                if tx.try_send(Data { data, eof }).is_err() {
                    reg[&id].control.cancel();
                    out::log(
                        LogLevel::Error,
                        format!("request {id}: upload exceeded its window"),
                    );
                }
            }
        }
        ToAgent::Ack { id, frames } => {
            if let Some(e) = registry().get(&id) {
                e.control.grant(frames);
            }
        }
        ToAgent::Route { child, frame } => child::route(child, frame.into_inner()),
        ToAgent::EndChild { child } => child::end(child),
        ToAgent::Share { child, hash } => child::share(child, &hash),
        ToAgent::Keep { mut code } => {
            if let Err(e) = python::bundle(&mut code) {
                out::log(LogLevel::Warn, format!("keeping a shared bundle: {e}"));
            }
        }
        ToAgent::Cancel { id } => {
            if let Some(e) = registry().get_mut(&id) {
                e.control.cancel();
                // Wakes an upload waiting for data.
                e.data = None;
            }
        }
    }
}

fn start(id: RequestId, req: Request, after: Option<RequestId>) {
    let control = Arc::new(Control::new(WINDOW));
    let (data, data_rx) = match req {
        Request::Put(ref p) if p.data.is_none() => {
            let (tx, rx) = std::sync::mpsc::sync_channel(WINDOW as usize);
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let earlier = {
        let mut reg = registry();
        if reg.contains_key(&id) {
            drop(reg);
            let dup = WireError::new(ErrorKind::Protocol, format!("request id {id} is in use"));
            return finish(id, Err(dup));
        }
        if reg.len() >= MAX_REQUESTS {
            drop(reg);
            let busy = WireError::new(ErrorKind::Busy, "too many requests in flight");
            // Requests ordered after it must not run.
            ended(id, true);
            return finish(id, Err(busy));
        }
        let earlier = Earlier::find(&reg, after);
        reg.insert(
            id,
            Entry {
                control: control.clone(),
                data,
            },
        );
        earlier
    };
    // Requests ordered after this one wait on it.
    let watched = control.clone();
    let spawned = pool::run(WORKER_STACK, move || {
        let what = out::logs(LogLevel::Debug).then(|| summary(&req));
        let t0 = std::time::Instant::now();
        let result = earlier
            .wait(&control)
            .and_then(|()| run(id, req, &control, data_rx));
        if let Some(what) = what {
            let outcome = match &result {
                Ok(Reply::Exec(r)) => match (r.code, r.signal) {
                    (Some(code), _) => format!("exit {code}"),
                    (_, Some(sig)) => format!("signal {sig}"),
                    _ => "ended".into(),
                },
                Ok(_) => "done".into(),
                Err(e) => format!("failed: {}", e.message),
            };
            let us = t0.elapsed().as_micros();
            out::log(
                LogLevel::Debug,
                format!("request {id} {what}: {outcome}, {us} us"),
            );
        }
        let failed = failed(&result);
        ended(id, failed);
        // Its reply goes out before those of requests ordered after it.
        finish(id, result);
        control.end(failed);
    });
    if let Err(e) = spawned {
        ended(id, true);
        finish(
            id,
            Err(WireError::new(
                ErrorKind::Busy,
                format!("cannot start a thread: {e}"),
            )),
        );
        watched.end(true);
    }
}

fn run(
    id: RequestId,
    req: Request,
    control: &Control,
    data: Option<ctl::DataRx>,
) -> Result<Reply, WireError> {
    match req {
        Request::Ping(_) => Ok(Reply::Pong(Default::default())),
        Request::Exec(e) => exec::run(id, e, control).map(Reply::Exec),
        Request::Put(p) => files::put(id, p, control, data).map(Reply::Put),
        Request::Fetch(f) => files::fetch(id, f, control).map(Reply::Fetch),
        Request::Stat(s) => files::stat(s).map(Reply::Stat),
        Request::MakeTempDir(t) => files::make_temp_dir(t).map(Reply::TempDir),
        Request::RemoveTempDir(t) => files::remove_temp_dir(t).map(Reply::Removed),
        Request::RunModule(m) => python::run(id, m, control).map(Reply::Exec),
        Request::Become(b) => child::start(b, control).map(Reply::Child),
        Request::Configure(c) => {
            if let Some(level) = c.log_level {
                out::set_log_level(level);
            }
            if c.shared_login {
                login_env::share_login();
            }
            Ok(Reply::Pong(Default::default()))
        }
    }
}

/// A request in a few words, for its debug record.
fn summary(req: &Request) -> String {
    match req {
        Request::Ping(_) => "ping".into(),
        Request::Exec(e) => format!("exec {}", exec::describe(&e.command)),
        Request::Put(p) => format!("put {:?}", p.path),
        Request::Fetch(f) => format!("fetch {:?}", f.path),
        Request::Stat(s) => format!("stat {:?}", s.path),
        Request::MakeTempDir(_) => "temp dir".into(),
        Request::RemoveTempDir(t) => format!("remove temp dir {:?}", t.path),
        Request::RunModule(m) => format!("module {} with {}", m.fqn, m.python),
        Request::Become(b) => format!("{} as {}", b.method, b.user),
        Request::Configure(_) => "configure".into(),
    }
}

fn finish(id: RequestId, result: Result<Reply, WireError>) {
    out::out().send(FromAgent::Reply { id, result });
}

/// Stops everything the agent started and exits: running commands are
/// killed (cancelling a request kills its process group), temporary
/// directories removed.
pub fn shutdown(code: i32) -> ! {
    for entry in registry().values() {
        entry.control.cancel();
    }
    exec::kill_all();
    python::stop_all();
    child::stop_all();
    files::remove_leftovers();
    // Let queued frames (a closing log, say) reach the controller, but do
    // not wait on a controller that stopped reading.
    out::out().flush(std::time::Duration::from_secs(1));
    std::process::exit(code)
}

/// Maps an IO error onto the wire's error kinds, naming what failed.
pub fn io_error(context: impl std::fmt::Display, e: io::Error) -> WireError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
        io::ErrorKind::TimedOut => ErrorKind::TimedOut,
        _ if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => ErrorKind::NoSpace,
        _ => ErrorKind::Io,
    };
    WireError::new(kind, format!("{context}: {e}"))
}
