//! Worker threads for requests, kept for the next request once idle.
//!
//! Starting a thread costs a few system calls (its stack is mapped and
//! guarded, then unmapped when it ends): a request as small as a ping would
//! pay that every time. A worker that finishes its job waits for the next
//! one instead, up to [`IDLE_MAX`] of them; beyond that it ends.
//!
//! A worker keeps nothing from one job to the next: no job changes
//! per-thread state (signal mask, credentials, working directory).

use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send>;

/// Idle workers kept.
const IDLE_MAX: usize = 8;

/// One sender per idle worker.
static IDLE: Mutex<Vec<Sender<Job>>> = Mutex::new(Vec::new());

fn idle() -> MutexGuard<'static, Vec<Sender<Job>>> {
    IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on an idle worker, or on a new one with `stack` bytes of
/// stack. Fails only if a thread is needed and cannot be started.
pub fn run(stack: usize, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut job: Job = Box::new(job);
    loop {
        let worker = idle().pop();
        let Some(worker) = worker else { break };
        // A worker only leaves the list to take a job, so it is waiting;
        // the send fails only if it is gone, and the job comes back.
        match worker.send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || work(job))
        .map(drop)
}

fn work(first: Job) {
    let (tx, rx) = mpsc::channel();
    let mut job = first;
    loop {
        job();
        {
            let mut idle = idle();
            if idle.len() >= IDLE_MAX {
                return;
            }
            idle.push(tx.clone());
        }
        match rx.recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::mpsc::channel;

    #[test]
    fn idle_workers_take_later_jobs() {
        let (done, results) = channel();
        let mut rounds = Vec::new();
        for _ in 0..3 {
            for _ in 0..4 {
                let done = done.clone();
                run(64 << 10, move || {
                    done.send(std::thread::current().id()).unwrap();
                })
                .unwrap();
            }
            let threads: HashSet<_> = (0..4).map(|_| results.recv().unwrap()).collect();
            rounds.push(threads);
            // The workers go idle before the next round starts.
            while idle().len() < rounds[0].len() {
                std::thread::yield_now();
            }
        }
        let first: HashSet<_> = rounds[0].clone();
        for later in &rounds[1..] {
            assert!(later.is_subset(&first), "a later job started a thread");
        }
    }
}
