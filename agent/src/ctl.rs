//! Per-request control shared between the dispatcher and a request's worker
//! thread: stream credit, upload data and cancellation.

use spindle_protocol::{Blob, ErrorKind, WireError};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    credit: u32,
    cancelled: bool,
    /// A process group cancellation kills (see [`Control::guard`]).
    group: Option<u32>,
    finished: bool,
    /// Set as the request's reply goes out: whether it failed.
    ended: Option<bool>,
}

/// Shared by the dispatcher (which grants credit and cancels) and the worker
/// (which spends credit and watches for cancellation).
#[derive(Debug, Default)]
pub struct Control {
    state: Mutex<State>,
    cv: Condvar,
}

pub fn cancelled() -> WireError {
    WireError::new(ErrorKind::Cancelled, "request cancelled")
}

impl Control {
    pub fn new(credit: u32) -> Self {
        Control {
            state: Mutex::new(State {
                credit,
                ..State::default()
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a worker panicked; the agent is built with
        // panic=abort, so this cannot be observed. Recover the data anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn grant(&self, frames: u32) {
        let mut s = self.lock();
        s.credit = s.credit.saturating_add(frames);
        self.cv.notify_all();
    }

    /// Takes one frame of credit, waiting for it. Fails when cancelled.
    pub fn take(&self) -> Result<(), WireError> {
        let mut s = self.lock();
        loop {
            if s.cancelled {
                return Err(cancelled());
            }
            if s.credit > 0 {
                s.credit -= 1;
                return Ok(());
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn cancel(&self) {
        let mut s = self.lock();
        s.cancelled = true;
        if let Some(pgid) = s.group {
            crate::sys::kill_group(pgid);
        }
        self.cv.notify_all();
    }

    /// From now until [`Control::unguard`], cancelling the request kills
    /// process group `pgid` (at once if it is cancelled already).
    pub fn guard(&self, pgid: u32) {
        let mut s = self.lock();
        if s.cancelled {
            crate::sys::kill_group(pgid);
        }
        s.group = Some(pgid);
    }

    /// Ends [`Control::guard`]; whether the request was cancelled.
    pub fn unguard(&self) -> bool {
        let mut s = self.lock();
        s.group = None;
        s.cancelled
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Marks the work finished, waking [`Control::watch`].
    pub fn finish(&self) {
        self.lock().finished = true;
        self.cv.notify_all();
    }

    /// Marks the request ended (its reply is going out), waking
    /// [`Control::wait_end`].
    pub fn end(&self, failed: bool) {
        self.lock().ended = Some(failed);
        self.cv.notify_all();
    }

    /// Waits until the request ends; whether it failed. Gives up when
    /// `waiter` (the request waiting for this one) is cancelled.
    pub fn wait_end(&self, waiter: &Control) -> Result<bool, WireError> {
        let mut s = self.lock();
        loop {
            if let Some(failed) = s.ended {
                return Ok(failed);
            }
            if waiter.is_cancelled() {
                return Err(cancelled());
            }
            // The waiter's cancellation wakes its own condition variable,
            // not ours: look again now and then.
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the work finishes, is cancelled, or `deadline` passes.
    pub fn watch(&self, deadline: Option<Instant>) -> Watch {
        let mut s = self.lock();
        loop {
            if s.finished {
                return Watch::Finished;
            }
            if s.cancelled {
                return Watch::Cancelled;
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Watch::TimedOut,
                },
                None => Duration::from_secs(3600),
            };
            s = self
                .cv
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    Finished,
    Cancelled,
    TimedOut,
}

/// One frame of upload data.
#[derive(Debug)]
pub struct Data {
    pub data: Blob,
    pub eof: bool,
}

pub type DataTx = SyncSender<Data>;
pub type DataRx = Receiver<Data>;
