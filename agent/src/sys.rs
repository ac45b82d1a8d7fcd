//! The agent's only `unsafe` code: thin wrappers over libc calls that std
//! does not offer. Each wrapper keeps its `// SAFETY:` reasoning here so the
//! rest of the agent stays safe Rust.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

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

/// Makes the child of `cmd` lead a new session (so the whole process group
/// can be killed at once) and die if the agent dies. With `pty`, the
/// terminal on the child's stdin becomes its controlling terminal.
pub fn own_session(cmd: &mut Command, pty: bool) {
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (setsid, ioctl, prctl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if pty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        })
    };
}

/// Sends SIGKILL to process group `pgid`.
pub fn kill_group(pgid: u32) {
    if pgid > 1 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
    }
}

/// Opens a pseudo-terminal pair: (master, slave).
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    // SAFETY: the out-pointers are valid; name, termios and winsize may be
    // null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are fresh descriptors we now own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&m, &s] {
        set_cloexec(fd)?;
    }
    Ok((m, s))
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
