//! The testbed's packet delayer: `cargo xtask delayer --queue Q --delay-ms D`.
//!
//! The kernel of the development VM has no `netem`, so `testbed up --rtt-ms R`
//! emulates latency in user space instead: an iptables rule sends every packet
//! that arrives on a testbed link to an NFQUEUE, and this process holds each
//! queued packet for `D` milliseconds before accepting it. One delayer runs on
//! each end of every link (the receiving side, see `testbed.rs`), each adding
//! half of the round trip.
//!
//! The delay is constant, so packets leave in the order they arrived: a FIFO
//! of (deadline, packet) is all the scheduling needed. The loop receives
//! without blocking until the socket is empty, releases every packet whose
//! deadline has passed, then sleeps in `ppoll(2)` until either the socket is
//! readable or the oldest held packet is due. Nothing is ever dropped: the
//! queues are configured fail-open, so if this process falls behind (kernel
//! queue or socket buffer full) the kernel lets packets through undelayed
//! rather than discarding them.
//!
//! To stop a delayer without losing the packets it holds (the kernel drops a
//! queue's pending packets when its listener goes away), first remove the
//! iptables rule, wait for the delay to pass, then kill it. The testbed does
//! exactly that.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nfq::{Message, Queue, Verdict};

/// Packets the kernel may hold per queue waiting for our verdict. Large, so a
/// bulk transfer over a delayed link (a bandwidth-delay product worth of
/// packets in flight) never overflows it.
const QUEUE_MAX_LEN: u32 = 8192;

/// Receive buffer for the netlink socket. Generous, because a burst that
/// overflows it makes the kernel fail open (let packets pass undelayed).
const SOCKET_RCVBUF: usize = 32 << 20;

/// SCHED_FIFO priority of the delayer: above every normal process, below
/// the kernel's own realtime threads.
const REALTIME_PRIORITY: i32 = 10;

/// Arguments of the hidden `delayer` subcommand.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NFQUEUE number to serve; repeat to serve several queues with one process.
    #[arg(long = "queue", required = true)]
    pub queues: Vec<u16>,
    /// How long to hold each packet, in milliseconds (fractions allowed).
    #[arg(long)]
    pub delay_ms: f64,
    /// Write our pid here once the queues are bound (a readiness signal).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

/// Runs the delayer until killed.
pub fn run(args: Args) -> Result<()> {
    if !(args.delay_ms.is_finite() && args.delay_ms >= 0.0) {
        bail!(
            "--delay-ms must be a non-negative number, got {}",
            args.delay_ms
        );
    }
    let delay = Duration::from_secs_f64(args.delay_ms / 1000.0);

    // The nfq crate does not expose its socket, but we need it to poll and to
    // size the receive buffer. Opening it is the only thing that creates a
    // socket here, so the new socket in /proc/self/fd is it.
    let before = open_sockets()?;
    let mut queue = Queue::open().context("opening the netfilter queue socket (are we root?)")?;
    let fd = single_new_socket(&before, &open_sockets()?)?;

    for &num in &args.queues {
        configure(&mut queue, num).with_context(|| format!("configuring nfqueue {num}"))?;
    }
    queue.set_nonblocking(true);
    if let Err(e) = sys::set_rcvbuf_force(fd, SOCKET_RCVBUF) {
        eprintln!("delayer: could not enlarge the socket receive buffer: {e}");
    }

    // The delay should not grow when the machine is busy (sshd, compression
    // and the tests all compete for two cores): run ahead of ordinary
    // processes. The loop sleeps between packets, so this costs nobody much.
    if let Err(e) = sys::set_realtime(REALTIME_PRIORITY) {
        eprintln!("delayer: running without realtime priority: {e}");
    }

    if let Some(path) = &args.pid_file {
        write_pid_file(path)?;
    }
    eprintln!(
        "delayer: holding packets of queue(s) {:?} for {:?}",
        args.queues, delay
    );
    serve(&mut queue, fd, delay)
}

/// Binds one queue and sets it up for delaying: metadata only (we never look
/// at payloads), whole GSO packets (so a 64 KiB super-packet is one entry, not
/// forty), a deep kernel queue, and fail-open.
fn configure(queue: &mut Queue, num: u16) -> Result<()> {
    queue
        .bind(num)
        .context("binding (is another delayer using it?)")?;
    queue.set_copy_range(num, 0).context("setting copy range")?;
    queue.set_recv_gso(num, true).context("enabling gso")?;
    queue
        .set_queue_max_len(num, QUEUE_MAX_LEN)
        .context("setting queue length")?;
    queue
        .set_fail_open(num, true)
        .context("enabling fail-open")?;
    Ok(())
}

/// The delay loop. Returns only on an unexpected socket error.
fn serve(queue: &mut Queue, fd: RawFd, delay: Duration) -> Result<()> {
    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    loop {
        // Take everything the kernel has for us.
        loop {
            match queue.recv() {
                Ok(msg) => held.push_back((Instant::now() + delay, msg)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiving from nfqueue"),
            }
        }

        // Release what is due, oldest first.
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, mut msg)) = held.pop_front() else {
                break;
            };
            msg.set_verdict(Verdict::Accept);
            if let Err(e) = queue.verdict(msg) {
                // The packet is gone from the kernel's side (e.g. its
                // interface vanished); nothing to do but carry on.
                eprintln!("delayer: verdict failed: {e}");
            }
        }

        let timeout = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()));
        sys::wait_readable(fd, timeout).context("waiting for packets")?;
    }
}

/// Our open sockets, as (descriptor, "socket:[inode]") pairs. Listing
/// /proc/self/fd itself opens a directory descriptor, so only sockets count.
fn open_sockets() -> Result<Vec<(RawFd, String)>> {
    let mut sockets = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let entry = entry.context("reading /proc/self/fd")?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // The directory's own descriptor is gone by the time we look.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with("socket:") {
            sockets.push((fd, target));
        }
    }
    Ok(sockets)
}

fn single_new_socket(before: &[(RawFd, String)], after: &[(RawFd, String)]) -> Result<RawFd> {
    let new: Vec<RawFd> = after
        .iter()
        .filter(|s| !before.contains(s))
        .map(|(fd, _)| *fd)
        .collect();
    match new.as_slice() {
        [fd] => Ok(*fd),
        _ => bail!("cannot identify the nfqueue socket among new sockets {new:?}"),
    }
}

fn write_pid_file(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The system calls std has no wrapper for.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::RawFd;
    use std::time::Duration;

    /// Sleeps until `fd` is readable or `timeout` (None: forever) elapses.
    pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
        // SAFETY: `pfd` and `ts` are live locals for the duration of the call,
        // the count matches the single pollfd, and a null sigmask is allowed.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        if pfd.revents & libc::POLLNVAL != 0 {
            // Never spin on a descriptor that is not open.
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(())
    }

    /// Switches this process to SCHED_FIFO at `priority`.
    pub fn set_realtime(priority: i32) -> io::Result<()> {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: pid 0 is this process; `param` is a live local.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SO_RCVBUFFORCE: like SO_RCVBUF but may exceed rmem_max (needs root).
    pub fn set_rcvbuf_force(fd: RawFd, bytes: usize) -> io::Result<()> {
        let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: passes a pointer to a live c_int with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
