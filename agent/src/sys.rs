//! The agent's only `unsafe` code: thin wrappers over libc calls that std
//! does not offer. Each wrapper keeps its `// SAFETY:` reasoning here so the
//! rest of the agent stays safe Rust.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

mod spawn;
pub use spawn::{spawn, Prepared};

/// Takes ownership of stdin and stdout as files, bypassing std's line
/// buffering of stdout (frames are binary).
pub fn stdio_files() -> (File, File) {
    // SAFETY: fds 0 and 1 are open for the life of the process (the SSH
    // channel); nothing else in the agent uses them through std's handles.
    unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) }
}

/// Closes every descriptor above stderr: the bootstrap leaves the memfd the
/// agent was executed from open, and sshd or sudo may leak others.
pub fn close_extra_fds() {
    // SAFETY: close_range only closes descriptors; at start-up nothing in the
    // process holds one above 2.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        for fd in 3..1024 {
            // SAFETY: as above, closing unused descriptors is harmless.
            unsafe { libc::close(fd) };
        }
    }
}

/// Waits for child `pid` to end (it must be ours, and nobody else may reap
/// it).
pub fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
}

/// Waits for child `pid` to end: (exit code, signal), as
/// `ExitStatus::code` and `signal` give them.
pub fn wait(pid: u32) -> io::Result<(Option<i32>, Option<i32>)> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) } >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    })
}

/// `/dev/null`, opened once, close-on-exec (children get their own copy).
pub fn dev_null() -> io::Result<&'static File> {
    static NULL: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(NULL.get_or_init(|| f))
}

/// Sends SIGKILL to process group `pgid`.
pub fn kill_group(pgid: u32) {
    if pgid > 1 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
    }
}

/// Makes `tty` (a pseudo-terminal's slave end) the controlling terminal of
/// `cmd`, in a session of its own; its standard streams are left alone.
pub fn controlling_tty(cmd: &mut Command, tty: std::os::fd::RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (setsid, ioctl); `tty` stays open in the
    // parent until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(tty, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// Opens a pseudo-terminal pair: (master, slave), both close-on-exec from
/// the start, so a command another thread starts meanwhile inherits
/// neither.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt only opens /dev/ptmx with `flags`.
    let m = unsafe { libc::posix_openpt(flags) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we now own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: unlockpt and the ioctl act on the master we own; the slave
    // they give is a fresh descriptor.
    if unsafe { libc::unlockpt(m) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut s = unsafe { libc::ioctl(m, libc::TIOCGPTPEER as _, flags) };
    if s < 0 {
        // Kernels before 4.13: by name.
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `name` is a writable buffer of the length given; the
        // path it receives is NUL-terminated.
        s = unsafe {
            if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::open(name.as_ptr(), flags)
        };
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a fresh descriptor we now own.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// Whether this process is denied `dir` as its working directory (it
/// exists, or may, but this account may not search it).
pub fn denied(dir: &str) -> bool {
    let Ok(path) = std::ffi::CString::new(dir) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    let rc = unsafe { libc::access(path.as_ptr(), libc::X_OK) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EACCES)
}

pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

pub fn gid() -> u32 {
    // SAFETY: getgid cannot fail.
    unsafe { libc::getgid() }
}

/// The process umask (read by setting and restoring it: the only way).
pub fn umask() -> u32 {
    // SAFETY: umask cannot fail; it is restored at once. Called while no
    // other thread creates files (see files::put's use).
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

/// Starts writing `len` bytes of `file` from `offset` to its disk without
/// waiting for them, so that a later `fsync` finds little left to write.
/// `posix_fadvise(POSIX_FADV_DONTNEED)` does that (and lets the kernel drop
/// those pages once they are on disk); unlike `sync_file_range`, overlayfs
/// passes it on to the file beneath. Best effort: without it, `fsync` does
/// all the work.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers; the fd is open.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Sets access and modification times on an open file.
pub fn futimens(
    file: &File,
    atime: Option<(i64, u32)>,
    mtime: Option<(i64, u32)>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let spec = |t: Option<(i64, u32)>| match t {
        Some((secs, nanos)) => libc::timespec {
            tv_sec: secs as _,
            tv_nsec: nanos as _,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let times = [spec(atime), spec(mtime)];
    // SAFETY: times points to two valid timespecs; the fd is open.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec):
/// message boundaries are kept, and descriptors can travel with messages.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds points to two ints for socketpair to fill.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded; both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(sock: &OwnedFd, data: &[u8], fds: &[std::os::fd::RawFd]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes, enough for one
        // header carrying `fds`; CMSG_FIRSTHDR is therefore non-null.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    loop {
        // SAFETY: msg and everything it points to outlive the call.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message (no descriptors expected); empty at end of stream.
pub fn recv_packet(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let rc = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An anonymous in-memory file (close-on-exec).
pub fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: name is a valid C string.
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Makes memory file `file` read-only for good: no writes, no resizing, by
/// anyone, through any descriptor or path (a module may reach its bundle
/// through `/proc`).
pub fn seal(file: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe whose ends are both close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds points to two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `fd` the child's descriptor `target`, open across exec.
pub fn child_fd(cmd: &mut Command, fd: std::os::fd::RawFd, target: std::os::fd::RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe; fd stays open in the
    // parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let rc = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// Asks for a larger pipe buffer on `fd` so a whole frame fits and the
/// writer and sshd wake each other less often. Not a pipe (a socket, a
/// terminal) or over the system's limit: left as it is.
pub fn grow_pipe(fd: i32, size: i32) {
    // SAFETY: F_SETPIPE_SZ only resizes a pipe's buffer; any other kind of
    // descriptor makes it fail with no effect.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) };
}

/// Waits up to `timeout` until some of `fds` can be read (or hit end of
/// file); returns those.
pub fn poll_readable(fds: &[i32], timeout: std::time::Duration) -> io::Result<Vec<i32>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    poll(&mut polls, timeout)?;
    Ok(polls
        .iter()
        .filter(|p| p.revents != 0)
        .map(|p| p.fd)
        .collect())
}

/// Waits up to `timeout` for terminal master `fd` to have something to
/// read (or be hung up), or, with `write`, room to write: (readable,
/// writable).
pub fn poll_terminal(
    fd: i32,
    write: bool,
    timeout: std::time::Duration,
) -> io::Result<(bool, bool)> {
    let events = if write {
        libc::POLLIN | libc::POLLOUT
    } else {
        libc::POLLIN
    };
    let mut polls = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    poll(&mut polls, timeout)?;
    let revents = polls[0].revents;
    Ok((revents & !libc::POLLOUT != 0, revents & libc::POLLOUT != 0))
}

/// `poll(2)` on `polls`, filling in their `revents`; an interrupted wait
/// leaves them all empty.
fn poll(polls: &mut [libc::pollfd], timeout: std::time::Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs that
    // outlives the call.
    let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        polls.iter_mut().for_each(|p| p.revents = 0);
    }
    Ok(())
}

/// Makes reads and writes on `file` (its open file description, shared by
/// its duplicates) return `WouldBlock` instead of waiting.
pub fn set_nonblocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on an open fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `dir` carries a default ACL (which, not the umask, then decides
/// the mode of what is made in it). Unknown counts as yes.
pub fn has_default_acl(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true;
    };
    let name = c"system.posix_acl_default";
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 only
    // asks for the attribute's size.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if n >= 0 {
        return true;
    }
    // No such attribute, or a file system without ACLs: no default ACL.
    !matches!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA | libc::ENOTSUP)
    )
}
