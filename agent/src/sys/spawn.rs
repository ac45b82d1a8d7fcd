//! Starting a command the way `vfork` does: the child shares the agent's
//! memory and runs on a small stack of its own until it executes the
//! program, while the calling thread waits. Nothing is copied, so a start
//! costs the kernel's work for the new program and little else; a `fork`
//! would first copy the agent's page tables and then fault on every page
//! either side touches.
//!
//! The child must not allocate, lock or touch anything another thread may
//! hold: every string and pointer array it needs is built by [`Prepared`]
//! before it exists, and it makes only plain system calls. It reports a
//! failure by writing the error number to a close-on-exec pipe, then
//! exits; the caller reads that pipe to its end (nothing: the program
//! started). Where `vfork` is only a `fork` (qemu-user, valgrind) this
//! still holds, and the caller still waits until the child has executed
//! the program (and so leads its own process group) or ended.

use std::ffi::{c_char, c_int, c_void, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::ptr;

/// The child's stack: enough for the handful of libc wrappers it calls.
/// It has no guard page: keep the child to plain system calls.
const CHILD_STACK: usize = 32 << 10;

/// Where a program without a slash is looked for when its environment has
/// no `PATH` (musl's `execvp` default).
const DEFAULT_PATH: &[u8] = b"/usr/local/bin:/bin:/usr/bin";

/// A command ready to start: program paths to try, argv, environment and
/// working directory, all as C strings.
pub struct Prepared {
    /// The program itself if it names a path, else it joined to each
    /// directory of the command's `PATH`, tried in turn as `execvp` does.
    paths: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
}

impl Prepared {
    /// `argv[0]` is the program; `env` is the command's whole environment.
    pub fn new(
        argv: &[&OsStr],
        env: impl IntoIterator<Item = (OsString, OsString)>,
        cwd: Option<&str>,
    ) -> io::Result<Self> {
        let c = |s: &[u8]| {
            CString::new(s).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nul byte in a command's string",
                )
            })
        };
        let program = argv.first().map_or(&[][..], |p| p.as_bytes());
        let mut search = None;
        let env = env
            .into_iter()
            .map(|(k, v)| {
                if k == "PATH" {
                    search = Some(v.clone());
                }
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.as_bytes());
                c(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let paths = if program.contains(&b'/') || program.is_empty() {
            vec![c(program)?]
        } else {
            let search = search.as_ref().map_or(DEFAULT_PATH, |p| p.as_bytes());
            search
                .split(|&b| b == b':')
                .map(|dir| {
                    // An empty entry is the working directory.
                    let dir = if dir.is_empty() { &b"."[..] } else { dir };
                    let mut p = dir.to_vec();
                    p.push(b'/');
                    p.extend(program);
                    c(&p)
                })
                .collect::<io::Result<_>>()?
        };
        Ok(Prepared {
            paths,
            argv: argv
                .iter()
                .map(|a| c(a.as_bytes()))
                .collect::<io::Result<_>>()?,
            env,
            cwd: cwd.map(|d| c(d.as_bytes())).transpose()?,
        })
    }
}

/// What the child reads, and where it leaves its error.
struct Shared {
    paths: *const *const c_char,
    argv: *const *const c_char,
    env: *const *const c_char,
    /// Null for none.
    cwd: *const c_char,
    stdio: [RawFd; 3],
    pty: bool,
    parent: libc::pid_t,
    /// Write end of the pipe the child reports a failure on.
    report: RawFd,
}

/// Starts `cmd` with `stdio` as its standard streams, leading a session of
/// its own (so its whole process group can be killed at once) and with
/// PDEATHSIG, so it dies with the agent. With `pty`, the terminal on its
/// stdin becomes its controlling terminal. Returns its pid.
///
/// The descriptors in `stdio` may be close-on-exec: the child's copies are
/// not.
pub fn spawn(cmd: &Prepared, stdio: [RawFd; 3], pty: bool) -> io::Result<u32> {
    let pointers = |v: &[CString]| -> Vec<*const c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect()
    };
    let (paths, argv, env) = (
        pointers(&cmd.paths),
        pointers(&cmd.argv),
        pointers(&cmd.env),
    );
    let (report_r, report_w) = super::pipe()?;
    let mut stack = vec![0u8; CHILD_STACK];
    let mut shared = Shared {
        paths: paths.as_ptr(),
        argv: argv.as_ptr(),
        env: env.as_ptr(),
        cwd: cmd.cwd.as_ref().map_or(ptr::null(), |d| d.as_ptr()),
        stdio,
        pty,
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        report: report_w.as_raw_fd(),
    };
    // SAFETY: the stack grows down from its end, which is aligned to 16
    // bytes as both architectures require; the child only uses it until it
    // executes the program or exits, and this thread is suspended until
    // then (CLONE_VFORK), so `stack`, `shared` and the pointer arrays all
    // outlive its use of them. All signals are blocked around the clone so
    // that no handler of the agent's runs on the child's stack; the child
    // resets the dispositions before it unblocks them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let end = stack.as_mut_ptr().add(CHILD_STACK);
        let top = end.sub(end as usize % 16);
        let pid = libc::clone(
            child,
            top.cast::<c_void>(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            ptr::addr_of_mut!(shared).cast::<c_void>(),
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(report_w);
    // Four bytes of error number, or nothing once the program started.
    let mut report = std::fs::File::from(report_r);
    let mut error = [0u8; 4];
    let mut got = 0;
    while got < error.len() {
        match std::io::Read::read(&mut report, &mut error[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                super::kill_group(pid as u32);
                super::reap(pid as u32);
                return Err(e);
            }
        }
    }
    if got > 0 {
        super::reap(pid as u32);
        let errno = if got == 4 {
            c_int::from_ne_bytes(error)
        } else {
            libc::EIO
        };
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(pid as u32)
}

/// The child's side: from the clone to the program, or to `_exit`.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Shared` of `spawn`, which outlives our use of
    // it (its thread waits for us, or we have a copy of its memory).
    let shared = unsafe { &*arg.cast::<Shared>() };
    // SAFETY: every step is a plain system call on values `spawn` prepared.
    let error = match unsafe { start(shared) } {
        // Not expected: a step failed without saying why.
        0 => libc::EIO,
        e => e,
    };
    let bytes = error.to_ne_bytes();
    // SAFETY: write and _exit are plain system calls; four bytes fit in an
    // empty pipe at once.
    unsafe {
        libc::write(shared.report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Sets the child up and executes the program; returns the error number
/// of the step that failed.
unsafe fn start(s: &Shared) -> c_int {
    let errno = || *libc::__errno_location();
    // Every disposition back to its default, as sshd starts a session:
    // handlers are the agent's and must not run here, and the agent
    // ignores SIGPIPE (the Rust runtime) and SIGXFSZ (inherited from the
    // Python that started it). SIGABRT is left alone: musl takes a lock to
    // change it, and nothing on the way sets it. (musl refuses 32-34, its
    // own.)
    let default: libc::sigaction = std::mem::zeroed();
    for sig in (1..32).chain(35..=libc::SIGRTMAX()) {
        if !matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGABRT) {
            libc::sigaction(sig, &default, ptr::null_mut());
        }
    }
    for (target, &fd) in s.stdio.iter().enumerate() {
        let target = target as c_int;
        // dup2 onto itself would keep close-on-exec set.
        let rc = if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        };
        if rc < 0 {
            return errno();
        }
    }
    if libc::setsid() < 0 {
        return errno();
    }
    if s.pty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
        return errno();
    }
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    // The agent died before PDEATHSIG was set: nobody would kill us.
    if libc::getppid() != s.parent {
        return libc::ESRCH;
    }
    if !s.cwd.is_null() && libc::chdir(s.cwd) < 0 {
        return errno();
    }
    // No signal blocked, as sshd starts a session.
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
    // As execvp: a missing or unsearchable candidate moves on to the next;
    // if any existed but was not executable, that is the error.
    let mut error = libc::ENOENT;
    let mut denied = false;
    let mut path = s.paths;
    while !(*path).is_null() {
        libc::execve(*path, s.argv, s.env);
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            e => return e,
        }
        error = errno();
        path = path.add(1);
    }
    if denied {
        libc::EACCES
    } else {
        error
    }
}
