//! The writer: one thread that alone owns stdout and turns messages into
//! frames. Everyone else holds an [`Out`] and queues messages; the queue is
//! bounded, so a controller that stops reading slows the agent down instead of
//! growing its memory.

use spindle_protocol::{frame, FromAgent, LogLevel};
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::OnceLock;
use std::thread::JoinHandle;

/// Messages queued for the writer. Each streamed frame may be a full
/// [`spindle_protocol::CHUNK`], so this bounds the queue at a few MiB.
const QUEUE: usize = 32;

/// Streamed data above this size is written straight from its buffer.
const DIRECT: usize = 16 << 10;

#[derive(Debug)]
enum Item {
    Frame(FromAgent),
    /// Everything queued before this is written and flushed; then the
    /// sender is answered.
    Flush(SyncSender<()>),
}

#[derive(Clone, Debug)]
pub struct Out(SyncSender<Item>);

static OUT: OnceLock<Out> = OnceLock::new();

impl Out {
    /// Queues a message. Fails only once the writer is gone (stdout closed),
    /// which means the agent is shutting down anyway.
    pub fn send(&self, msg: FromAgent) {
        let _ = self.0.send(Item::Frame(msg));
    }

    /// Waits (up to `limit`) until everything queued so far is written.
    pub fn flush(&self, limit: std::time::Duration) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.0.send(Item::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(limit);
        }
    }
}

/// Starts the writer thread; it first writes the hello magic. Returns the
/// handle to join on shutdown.
pub fn start(stdout: File) -> JoinHandle<()> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    // First call: start() runs once, from main.
    let _ = OUT.set(Out(tx));
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            if let Err(e) = write_loop(stdout, rx) {
                // stdout is gone: nobody to tell. Stop reading stdin too.
                if e.kind() != io::ErrorKind::BrokenPipe {
                    eprintln_quiet(&e);
                }
                crate::shutdown(1);
            }
        })
        .expect("spawning the writer thread at start-up")
}

fn eprintln_quiet(_e: &io::Error) {
    // The agent never writes to stderr: under sudo or ssh it may be shared
    // with a terminal or logged. The controller notices the closed channel.
}

fn write_loop(stdout: File, rx: Receiver<Item>) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout);
    out.write_all(spindle_protocol::HELLO_MAGIC)?;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut flushed = Vec::new();
    while let Ok(first) = rx.recv() {
        // Batch whatever else is already queued into the same write.
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                // Big chunks go out from their own buffer, not copied into
                // a frame first.
                Item::Frame(FromAgent::Stream { id, kind, data }) if data.len() > DIRECT => {
                    match frame::stream_prefix(id, kind, data.len()) {
                        Ok(prefix) => {
                            out.write_all(&prefix)?;
                            out.write_all(data.as_ref())?;
                        }
                        Err(_) => {
                            let msg = FromAgent::Stream { id, kind, data };
                            encode(&msg, &mut buf);
                            out.write_all(&buf)?;
                        }
                    }
                }
                Item::Frame(msg) => {
                    encode(&msg, &mut buf);
                    out.write_all(&buf)?;
                }
                Item::Flush(done) => flushed.push(done),
            }
            next = rx.try_recv().ok();
        }
        out.flush()?;
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
    out.flush()
}

fn encode(msg: &FromAgent, buf: &mut Vec<u8>) {
    buf.clear();
    if let Err(e) = frame::encode_into(msg, buf) {
        // Only an oversized message can fail; report that instead.
        let note = FromAgent::Log {
            level: LogLevel::Error,
            message: format!("dropped an unencodable message: {e}"),
        };
        buf.clear();
        // A short log message always encodes.
        let _ = frame::encode_into(&note, buf);
    }
}

/// The process-wide writer handle.
pub fn out() -> &'static Out {
    OUT.get().expect("out::start runs before any request")
}

/// The most detailed level sent (a [`LogLevel`] as its rank).
static LOG_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the most detailed level of log records sent from now on.
pub fn set_log_level(level: LogLevel) {
    LOG_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether records at `level` are sent; callers check it before building
/// a costly message.
pub fn logs(level: LogLevel) -> bool {
    level as u8 <= LOG_LEVEL.load(Ordering::Relaxed)
}

/// Sends a log record to the controller, if its level is sent.
pub fn log(level: LogLevel, message: impl Into<String>) {
    if !logs(level) {
        return;
    }
    if let Some(out) = OUT.get() {
        out.send(FromAgent::Log {
            level,
            message: message.into(),
        });
    }
}
