//! A [`Link`] is one running agent: the child process that carries it (ssh
//! or a local shell), a writer task that alone writes its stdin, a reader
//! task that alone reads its stdout, and the table of requests in flight.
//!
//! Theory of operation:
//! 1. [`Link::connect`] starts the transport with the fixed bootstrap
//!    command line and runs the handshake (see `spindle_bootstrap`): stage
//!    lines out, boot line in, agent binary out, hello in.
//! 2. Callers [`Link::start`] requests: each gets a fresh id, a oneshot for
//!    its final reply and, if asked, a bounded channel for streamed frames.
//!    Frames are encoded by the caller and queued to the writer.
//! 3. The reader decodes every frame and routes it by id: replies complete
//!    the waiter, stream frames go to its channel (the consumer acks each
//!    one, which keeps the agent within its window), acks add upload
//!    credit, logs become `tracing` events.
//! 4. When the child's stdout ends or breaks the protocol, the link is dead:
//!    every waiter fails at once with [`Error::Unreachable`], and later
//!    calls fail immediately so the owner reconnects.

use crate::agents::AgentStore;
use crate::error::{Error, Result};
use crate::members::Held;
use crate::transport::{Destination, Transport};
use spindle_bootstrap::{Ahead, BootLine, Codec};
use spindle_protocol::{
    frame, Blob, Call, Code, FromAgent, Hello, LogLevel, Reply, RequestId, StreamKind, ToAgent,
    WireError, HELLO_MAGIC, WINDOW,
};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

/// Frames queued for the writer. Enough to keep the pipe busy; bounded so
/// a stalled link pushes back on callers.
const WRITE_QUEUE: usize = 64;

/// Output printed before the boot line (MOTD, shell noise) we are willing
/// to skip.
const MAX_NOISE: usize = 64 << 10;

/// Bytes asked for per read of the agent's output: a whole chunk frame.
const READ_SIZE: usize = spindle_protocol::CHUNK + 64;

/// Stream frames acknowledged at once: a quarter of the window keeps the
/// agent sending while cutting the acks (each a packet through ssh, sshd
/// and the agent) by four.
const ACK_EVERY: u32 = WINDOW / 4;

/// Bytes of the transport's stderr kept to explain a failure.
const STDERR_TAIL: usize = 4096;

/// One streamed frame: which stream and its bytes.
pub type StreamItem = (StreamKind, Blob);

struct Waiter {
    reply: oneshot::Sender<Result<Reply>>,
    stream: Option<mpsc::Sender<StreamItem>>,
    upload_credit: Option<Arc<Semaphore>>,
}

#[derive(Default)]
struct Table {
    waiters: HashMap<RequestId, Waiter>,
    /// Why the link died, once it has.
    dead: Option<String>,
}

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

struct Shared {
    host: String,
    /// Unique among the run's links (see [`crate::chain`]).
    serial: u64,
    table: Mutex<Table>,
    writer: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    /// Tells the writer to close the agent's stdin.
    close: tokio::sync::Notify,
    /// Child agents reached through this one, by the agent's number.
    children: Mutex<HashMap<u32, Arc<Shared>>>,
    /// For a child agent: signalled once its parent reports its process
    /// gone (or the parent itself dies).
    gone: tokio::sync::Notify,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the link dead and fails every waiter.
    fn die(&self, reason: String) {
        let waiters = {
            let mut t = self.table();
            if t.dead.is_none() {
                tracing::debug!(host = %self.host, %reason, "link closed");
                t.dead = Some(reason.clone());
            }
            std::mem::take(&mut t.waiters)
        };
        for (_, w) in waiters {
            let _ = w
                .reply
                .send(Err(Error::unreachable(&self.host, reason.clone())));
        }
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, child) in children {
            child.die(reason.clone());
            child.gone.notify_one();
        }
    }

    fn child(&self, child: u32) -> Option<Arc<Shared>> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&child)
            .cloned()
    }

    fn forget_child(&self, child: u32) -> Option<Arc<Shared>> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&child)
    }

    fn unreachable(&self) -> Error {
        let reason = self.table().dead.clone().unwrap_or_default();
        Error::unreachable(&self.host, reason)
    }

    async fn send(&self, msg: &ToAgent) -> Result<()> {
        let bytes = frame::encode(msg).map_err(|e| Error::local("encoding a request", e))?;
        self.writer
            .send(bytes)
            .await
            .map_err(|_| self.unreachable())
    }
}

/// How a child agent got a bundle from its parent agent.
#[derive(Debug)]
pub enum FromParent {
    /// The parent held it already.
    Held,
    /// The parent was sent it first (as these members, without contents).
    Sent(Code),
}

/// A connected agent. Cheap to share behind an `Arc`; dropping the last
/// reference kills the transport, which ends the agent.
pub struct Link {
    shared: Arc<Shared>,
    hello: Hello,
    /// Module bundles (by hash) this agent has been sent, and whether a
    /// request that carried or used one has succeeded (so it holds it).
    codes: Mutex<HashMap<String, bool>>,
    /// The bundle members' contents the agent holds (see [`crate::members`]).
    contents: Held,
    _child: Option<Child>,
    /// For a child agent: the link it travels on (kept alive with it) and
    /// the number the parent agent knows it by.
    parent: Option<(Arc<Link>, u32)>,
    /// Set once a command ran through this link (see [`Link::note_command`]).
    commands: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("host", &self.shared.host)
            .field("pid", &self.hello.pid)
            .finish()
    }
}

impl Link {
    /// Starts the transport to `dest`, pushes the agent and waits for its
    /// hello. Any failure is [`Error::Unreachable`].
    pub async fn connect(
        transport: &Transport,
        dest: &Destination,
        python: Option<&str>,
        agents: &AgentStore,
        timeout: Duration,
    ) -> Result<Link> {
        let host = dest.to_string();
        let span = tracing::info_span!("conn", host = %host);
        async {
            let argv = match transport {
                Transport::Spawn => {
                    let path = agents
                        .raw_path(std::env::consts::ARCH)
                        .map_err(|e| Error::unreachable(&host, e.to_string()))?;
                    vec![path.display().to_string()]
                }
                _ => transport.argv(dest, &spindle_bootstrap::command_line(python)),
            };
            tracing::debug!(?argv, "starting transport");
            let mut cmd = tokio::process::Command::new(&argv[0]);
            // Kept until the handshake is over: ssh asks during login only.
            let _askpass = match transport {
                Transport::Ssh(o) => match &o.password {
                    Some(pw) => {
                        let server = crate::askpass::Server::start(&pw.0).map_err(|e| {
                            Error::unreachable(&host, format!("serving the password to ssh: {e}"))
                        })?;
                        let me = std::env::current_exe().map_err(|e| {
                            Error::unreachable(&host, format!("finding the spindle binary: {e}"))
                        })?;
                        cmd.envs(server.env(&me));
                        Some(server)
                    }
                    None => None,
                },
                Transport::Spawn => {
                    cmd.env(spindle_bootstrap::LOCAL_SESSION, "1");
                    None
                }
                Transport::Local => None,
            };
            let mut child = cmd
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::unreachable(&host, format!("cannot run {}: {e}", argv[0])))?;
            let stderr_tail = Arc::new(StderrTail::default());
            if let Some(err) = child.stderr.take() {
                tokio::spawn(collect_stderr(err, stderr_tail.clone()).in_current_span());
            }
            // Both were configured as pipes just above.
            let mut stdin = child.stdin.take().expect("piped stdin");
            let mut stdout = child.stdout.take().expect("piped stdout");
            grow_pipe(&stdin);
            grow_pipe(&stdout);
            let handshake = async {
                let buf = match transport {
                    Transport::Spawn => Vec::new(),
                    _ => bootstrap(&mut stdin, &mut stdout, python, agents).await?,
                };
                read_hello(&mut stdout, buf).await
            };
            let outcome = tokio::time::timeout(timeout, handshake).await;
            let (hello, rest) = match outcome {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    return Err(Error::unreachable(&host, stderr_tail.explain(&e).await));
                }
                Err(_) => {
                    let what = format!("no answer within {timeout:?}");
                    return Err(Error::unreachable(&host, stderr_tail.explain(&what).await));
                }
            };
            if hello.version != spindle_protocol::VERSION || hello.build_id != agents.build_id() {
                return Err(Error::unreachable(
                    &host,
                    format!(
                        "agent speaks protocol {} build {}, expected {} build {}",
                        hello.version,
                        hello.build_id,
                        spindle_protocol::VERSION,
                        agents.build_id()
                    ),
                ));
            }
            let how = match transport {
                Transport::Ssh(_) => "ssh",
                Transport::Local => "shell",
                Transport::Spawn => "spawned",
            };
            tracing::debug!(pid = hello.pid, arch = %hello.arch, user = %hello.user, how, "agent ready");
            Ok(Link::over(
                host,
                stdin,
                stdout,
                rest,
                hello,
                Some(child),
                stderr_tail,
            ))
        }
        .instrument(span)
        .await
    }

    /// Runs the link over already-connected streams whose hello has been
    /// read; `rest` holds bytes read past the hello.
    fn over(
        host: String,
        stdin: impl AsyncWrite + Send + Unpin + 'static,
        stdout: impl AsyncRead + Send + Unpin + 'static,
        rest: Vec<u8>,
        hello: Hello,
        child: Option<Child>,
        stderr_tail: Arc<StderrTail>,
    ) -> Link {
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let shared = Arc::new(Shared {
            host,
            serial: next_serial(),
            table: Mutex::default(),
            writer,
            next_id: AtomicU64::new(1),
            close: tokio::sync::Notify::new(),
            children: Mutex::default(),
            gone: tokio::sync::Notify::new(),
        });
        tokio::spawn(write_loop(stdin, queue, shared.clone()).in_current_span());
        tokio::spawn(read_loop(stdout, rest, shared.clone(), stderr_tail).in_current_span());
        Link {
            shared,
            hello,
            codes: Mutex::default(),
            contents: Held::default(),
            _child: child,
            parent: None,
            commands: Default::default(),
        }
    }

    /// The link to child agent `child` of `parent` (see
    /// [`spindle_protocol::Become`]): its frames travel inside the
    /// parent's, and it dies with the parent.
    pub fn child(parent: &Arc<Link>, child: u32, hello: Hello) -> Link {
        let (writer, mut queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let shared = Arc::new(Shared {
            host: format!("{} (as {})", parent.shared.host, hello.user),
            serial: next_serial(),
            table: Mutex::default(),
            writer,
            next_id: AtomicU64::new(1),
            close: tokio::sync::Notify::new(),
            children: Mutex::default(),
            gone: tokio::sync::Notify::new(),
        });
        parent
            .shared
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(child, shared.clone());
        if parent.is_dead() {
            shared.die(parent.shared.unreachable().to_string());
        }
        let up = parent.shared.clone();
        let me = shared.clone();
        tokio::spawn(
            async move {
                loop {
                    let frame = tokio::select! {
                        f = queue.recv() => match f {
                            Some(f) => f,
                            None => return,
                        },
                        () = me.close.notified() => return,
                    };
                    let routed = ToAgent::Route {
                        child,
                        frame: frame.into(),
                    };
                    if up.send(&routed).await.is_err() {
                        me.die(up.unreachable().to_string());
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        Link {
            shared,
            hello,
            codes: Mutex::default(),
            contents: Held::default(),
            _child: None,
            parent: Some((parent.clone(), child)),
            commands: Default::default(),
        }
    }

    /// Records that the agent is being sent bundle `hash`; false if it was
    /// sent before.
    pub fn note_code(&self, hash: &str) -> bool {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        if codes.contains_key(hash) {
            return false;
        }
        codes.insert(hash.to_owned(), false);
        true
    }

    /// Records that the agent holds bundle `hash`: a request that carried
    /// or used it succeeded.
    pub fn confirm_code(&self, hash: &str) {
        self.codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_owned(), true);
    }

    /// Whether the agent is known to hold bundle `hash` (see
    /// [`Link::confirm_code`]); one merely being sent does not count.
    pub fn holds_code(&self, hash: &str) -> bool {
        self.codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .copied()
            .unwrap_or(false)
    }

    /// `Code` that carries bundle `zip` (hex SHA-256 `hash`) to this agent:
    /// for a child agent, through its parent on the host (named only; see
    /// [`Link::share_through_parent`], and pass the second value to
    /// [`Link::confirm_shared`] once a request with it succeeded);
    /// otherwise its members, with the contents it does not hold yet.
    pub async fn code_to_send(&self, hash: &str, zip: &[u8]) -> (Code, Option<FromParent>) {
        match self.share_through_parent(hash, zip).await {
            Some(shared) => (Code::named(hash), Some(shared)),
            None => (self.contents.code(hash, zip).await, None),
        }
    }

    /// For a child agent: has its parent agent hand bundle `zip` (hex
    /// SHA-256 `hash`) over (see [`ToAgent::Share`]), so that a bundle
    /// crosses the link once for all accounts. A parent not known to hold
    /// it is sent it first, as a [`ToAgent::Keep`] with the contents it
    /// lacks. Either arrives ahead of any request sent to this link after
    /// the call. `None` for a link of its own.
    async fn share_through_parent(&self, hash: &str, zip: &[u8]) -> Option<FromParent> {
        let (parent, child) = self.parent.as_ref()?;
        let shared = if parent.holds_code(hash) {
            FromParent::Held
        } else {
            parent.note_code(hash);
            let code = parent.contents.code(hash, zip).await;
            let receipt = code.without_bytes();
            parent.shared.send(&ToAgent::Keep { code }).await.ok()?;
            FromParent::Sent(receipt)
        };
        let share = ToAgent::Share {
            child: *child,
            hash: hash.to_owned(),
        };
        parent.shared.send(&share).await.ok()?;
        Some(shared)
    }

    /// Records that a request with a bundle shared through the parent
    /// succeeded: the parent holds what it was sent for it.
    pub fn confirm_shared(&self, shared: &FromParent) {
        if let (Some((parent, _)), FromParent::Sent(receipt)) = (&self.parent, shared) {
            parent.confirm_sent(receipt);
        }
    }

    /// Records that a request with `code` succeeded: the agent holds the
    /// bundle and the content of every member `code` named.
    pub fn confirm_sent(&self, code: &Code) {
        self.confirm_code(&code.hash);
        self.contents.confirm(code);
    }

    /// Forgets bundle `hash` (the agent said it does not hold it, or the
    /// content of one of its members: the contents it holds are forgotten
    /// too).
    pub fn forget_code(&self, hash: &str) {
        self.contents.forget();
        self.codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// Closes the link: requests in flight fail as unreachable at once, and
    /// the agent's stdin is closed, which ends it and every command it
    /// still runs.
    pub fn close(&self) {
        self.shared.die("disconnected".into());
        self.shared.close.notify_one();
    }

    /// Records that a command ran on this agent's host: what the hello
    /// says about installed interpreters may no longer hold.
    pub fn note_command(&self) {
        self.commands.store(true, Ordering::Relaxed);
    }

    pub fn ran_commands(&self) -> bool {
        self.commands.load(Ordering::Relaxed)
    }

    /// True while requests are in flight.
    pub fn is_busy(&self) -> bool {
        !self.shared.table().waiters.is_empty()
    }

    /// Ends a child agent (see [`Link::child`]): requests still in flight
    /// fail, and the parent agent closes the child's stdin. No-op for a
    /// link of its own.
    pub async fn end_child(&self) {
        if let Some((parent, child)) = &self.parent {
            self.shared.die("child agent ended".into());
            let _ = parent
                .shared
                .send(&ToAgent::EndChild { child: *child })
                .await;
        }
    }

    /// As [`Link::end_child`], then waits (at most `wait`) until the parent
    /// agent reports the child gone: by then the child agent and the
    /// interpreters it ran have ended.
    pub async fn end_child_and_wait(&self, wait: std::time::Duration) {
        if self.parent.is_some() {
            self.end_child().await;
            let _ = tokio::time::timeout(wait, self.shared.gone.notified()).await;
        }
    }

    /// True once the agent or its transport is gone.
    pub fn is_dead(&self) -> bool {
        self.shared.table().dead.is_some()
    }

    /// Sends a request and waits for its reply. Streamed frames, if the
    /// request produces any, are dropped (but acknowledged).
    pub async fn call<C: Call>(&self, req: C) -> Result<C::Reply> {
        let mut pending = self.start(req, true, false).await?;
        while pending.next().await.is_some() {}
        pending.finish().await
    }

    /// Sends a request and returns it in flight, with its stream and upload
    /// credit when asked for.
    pub async fn start<C: Call>(&self, req: C, stream: bool, upload: bool) -> Result<Pending<C>> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        // One more than the window: the agent never exceeds it, so a full
        // channel is a protocol violation we can detect with try_send.
        let (stream_tx, stream_rx) = if stream {
            let (tx, rx) = mpsc::channel(WINDOW as usize + 1);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let credit = upload.then(|| Arc::new(Semaphore::new(WINDOW as usize)));
        {
            let mut t = self.shared.table();
            if t.dead.is_some() {
                drop(t);
                return Err(self.shared.unreachable());
            }
            t.waiters.insert(
                id,
                Waiter {
                    reply: reply_tx,
                    stream: stream_tx,
                    upload_credit: credit.clone(),
                },
            );
        }
        let pending = Pending {
            shared: self.shared.clone(),
            id,
            reply: reply_rx,
            stream: stream_rx,
            credit,
            unacked: 0,
            done: false,
            _call: std::marker::PhantomData,
        };
        let req = req.into();
        crate::chain::send_in_order(self.shared.serial, id, |after| async move {
            self.shared.send(&ToAgent::Call { id, req, after }).await
        })
        .await?;
        Ok(pending)
    }
}

/// A request in flight. Dropping it before its reply cancels it on the
/// agent.
pub struct Pending<C: Call> {
    shared: Arc<Shared>,
    id: RequestId,
    reply: oneshot::Receiver<Result<Reply>>,
    stream: Option<mpsc::Receiver<StreamItem>>,
    credit: Option<Arc<Semaphore>>,
    /// Stream frames taken but not yet acknowledged.
    unacked: u32,
    done: bool,
    _call: std::marker::PhantomData<fn() -> C>,
}

impl<C: Call> std::fmt::Debug for Pending<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("id", &self.id).finish()
    }
}

impl<C: Call> Pending<C> {
    /// The next streamed frame, acknowledged to the agent as it is taken.
    /// `None` once the stream is over (the reply has arrived).
    pub async fn next(&mut self) -> Option<StreamItem> {
        let item = self.stream.as_mut()?.recv().await?;
        self.unacked += 1;
        if self.unacked >= ACK_EVERY {
            let ack = ToAgent::Ack {
                id: self.id,
                frames: std::mem::take(&mut self.unacked),
            };
            // If the link died, finish() reports it.
            let _ = self.shared.send(&ack).await;
        }
        Some(item)
    }

    /// Sends one frame of upload data, waiting for credit first. Fails with
    /// the request's own error if the agent already answered.
    pub async fn send_data(&mut self, data: Vec<u8>, eof: bool) -> Result<()> {
        let credit = self
            .credit
            .clone()
            .ok_or_else(|| Error::Local("request was not started for upload".into()))?;
        tokio::select! {
            permit = credit.acquire() => {
                // The semaphore is never closed.
                permit.map_err(|_| self.shared.unreachable())?.forget();
            }
            reply = &mut self.reply => {
                self.done = true;
                return Err(match reply {
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => Error::Local("agent answered before the upload ended".into()),
                    Err(_) => self.shared.unreachable(),
                });
            }
        }
        let msg = ToAgent::Data {
            id: self.id,
            data: data.into(),
            eof,
        };
        self.shared.send(&msg).await
    }

    /// Waits for the final reply.
    pub async fn finish(mut self) -> Result<C::Reply> {
        let reply = (&mut self.reply).await;
        self.done = true;
        let reply = reply.map_err(|_| self.shared.unreachable())??;
        C::reply(reply).map_err(|other| {
            Error::Remote(WireError::new(
                spindle_protocol::ErrorKind::Protocol,
                format!("agent sent a mismatched reply: {other:?}"),
            ))
        })
    }
}

impl<C: Call> Drop for Pending<C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let removed = self.shared.table().waiters.remove(&self.id).is_some();
        if removed {
            // Best effort: if the queue is full the link is congested or
            // dying; the agent's reply for this id is then ignored.
            if let Ok(bytes) = frame::encode(&ToAgent::Cancel { id: self.id }) {
                let _ = self.shared.writer.try_send(bytes);
            }
        }
    }
}

/// Runs the bootstrap stage and sends it the agent it asks for; returns
/// what was read past the boot line.
///
/// The compressed agent the next stage most likely runs
/// ([`AgentStore::expected_arch`]) goes right behind the stage lines: a
/// stage that can run it does so without waiting a round trip for its
/// announcement, and it travels while ssh and the stage start.
async fn bootstrap(
    stdin: &mut ChildStdin,
    stdout: &mut ChildStdout,
    python: Option<&str>,
    agents: &AgentStore,
) -> std::result::Result<Vec<u8>, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let arch = agents.expected_arch();
    let sent = arch
        .as_deref()
        .and_then(|arch| Some((arch, agents.binary(arch, Codec::Xz).ok()?)));
    let ahead = sent.as_ref().map(|(arch, blob)| Ahead {
        arch,
        len: blob.len(),
    });
    let (boot, buf) = {
        let send = async {
            stdin
                .write_all(&spindle_bootstrap::stdin_preamble(python, ahead))
                .await?;
            if let Some((_, blob)) = &sent {
                stdin.write_all(blob).await?;
            }
            stdin.flush().await
        };
        // Read while writing: a stage that prints much before it reads
        // must not stall both sides. The stage's words decide: a bad boot
        // line or its end is the error even while the agent is still on its
        // way, and a failed write only once the stage has answered.
        let scan = boot_line(stdout);
        tokio::pin!(send, scan);
        let mut sending = None;
        let scanned = loop {
            tokio::select! {
                scanned = &mut scan => break scanned?,
                done = &mut send, if sending.is_none() => sending = Some(done),
            }
        };
        match sending {
            Some(done) => done,
            None => send.await,
        }
        .map_err(|e| io("sending the bootstrap stage", e))?;
        scanned
    };
    tracing::debug!(arch = %boot.arch, codec = ?boot.codec, ahead = boot.ahead, "stage ready");
    agents.announced(&boot.arch, boot.codec);
    if boot.ahead {
        if ahead.is_none() {
            return Err("the bootstrap stage took an agent that was not sent".into());
        }
        return Ok(buf);
    }

    // Send the agent it asked for.
    let blob = agents
        .binary(&boot.arch, boot.codec)
        .map_err(|e| e.to_string())?;
    stdin
        .write_all(&spindle_bootstrap::blob_header(blob.len()))
        .await
        .map_err(|e| io("sending the agent", e))?;
    stdin
        .write_all(&blob)
        .await
        .map_err(|e| io("sending the agent", e))?;
    stdin
        .flush()
        .await
        .map_err(|e| io("sending the agent", e))?;
    Ok(buf)
}

/// Finds the stage's boot line, skipping whatever the shell printed first;
/// returns it with what was read past it.
async fn boot_line(stdout: &mut ChildStdout) -> std::result::Result<(BootLine, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(8192);
    let boot = loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match BootLine::parse(&line).map_err(|e| e.to_string())? {
                Some(b) => break b,
                None => {
                    if !line.trim().is_empty() {
                        tracing::debug!(%line, "output before the boot line");
                    }
                    continue;
                }
            }
        }
        if buf.len() > MAX_NOISE {
            return Err("too much output before the bootstrap started".into());
        }
        read_more(stdout, &mut buf)
            .await
            .map_err(|e| format!("bootstrap stage ended: {e}"))?;
    };
    Ok((boot, buf))
}

/// Finds the hello magic (after whatever `buf` and the stream hold first),
/// then decodes the hello frame behind it; returns it with the bytes read
/// past it.
async fn read_hello(
    stdout: &mut ChildStdout,
    mut buf: Vec<u8>,
) -> std::result::Result<(Hello, Vec<u8>), String> {
    let start = loop {
        if let Some(pos) = find(&buf, HELLO_MAGIC) {
            break pos + HELLO_MAGIC.len();
        }
        if buf.len() > MAX_NOISE {
            return Err("no agent hello in the output".into());
        }
        read_more(stdout, &mut buf)
            .await
            .map_err(|e| format!("agent did not start: {e}"))?;
    };
    buf.drain(..start);
    loop {
        match frame::decode::<FromAgent>(&buf).map_err(|e| format!("bad hello: {e}"))? {
            Some((FromAgent::Hello(h), used)) => {
                buf.drain(..used);
                return Ok((h, buf));
            }
            Some((other, _)) => return Err(format!("expected a hello, got {other:?}")),
            None => read_more(stdout, &mut buf)
                .await
                .map_err(|e| format!("agent hello cut short: {e}"))?,
        }
    }
}

/// Appends what is available to `buf`; end of stream is an error here.
/// Asks for a pipe buffer of a few frames between us and ssh: fewer
/// wake-ups of both for bulk transfers. Best effort (the system may cap it).
fn grow_pipe(pipe: &impl std::os::fd::AsFd) {
    use std::os::fd::AsRawFd;
    let fd = pipe.as_fd().as_raw_fd();
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
}

async fn read_more(r: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = r.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The last words of the transport's stderr (ssh's reason for failing),
/// and whether it has ended.
#[derive(Default)]
struct StderrTail {
    bytes: Mutex<Vec<u8>>,
    ended: tokio::sync::Notify,
    done: std::sync::atomic::AtomicBool,
}

impl StderrTail {
    /// `what`, followed by what the transport printed. Waits briefly for
    /// its stderr to end first: when the link fails, ssh's explanation is
    /// usually still on its way.
    async fn explain(&self, what: &str) -> String {
        let ended = self.ended.notified();
        if !self.done.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(Duration::from_millis(500), ended).await;
        }
        let tail = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let tail = String::from_utf8_lossy(&tail);
        let tail = tail.trim();
        if tail.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {tail}")
        }
    }
}

async fn collect_stderr(err: impl AsyncRead + Unpin, tail: Arc<StderrTail>) {
    read_stderr(err, &tail.bytes).await;
    tail.done.store(true, Ordering::Release);
    tail.ended.notify_waiters();
}

async fn read_stderr(mut err: impl AsyncRead + Unpin, tail: &Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = err.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&chunk[..n]);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(target: "spindle::transport", "{line}");
        }
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        t.extend_from_slice(&chunk[..n]);
        if t.len() > STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            t.drain(..cut);
        }
    }
}

async fn write_loop(
    mut stdin: impl AsyncWrite + Unpin,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    loop {
        let first = tokio::select! {
            msg = queue.recv() => match msg {
                Some(m) => m,
                None => return,
            },
            // Dropping stdin is the agent's signal to end.
            () = shared.close.notified() => return,
        };
        let mut res = stdin.write_all(&first).await;
        // Batch what else is queued before flushing.
        while res.is_ok() {
            match queue.try_recv() {
                Ok(more) => res = stdin.write_all(&more).await,
                Err(_) => break,
            }
        }
        if let Err(e) = res.and(stdin.flush().await) {
            shared.die(format!("writing to the agent: {e}"));
            return;
        }
    }
}

async fn read_loop(
    mut stdout: impl AsyncRead + Unpin,
    mut buf: Vec<u8>,
    shared: Arc<Shared>,
    stderr: Arc<StderrTail>,
) {
    // `buf[start..]` holds bytes not yet decoded; consumed bytes are dropped
    // in one move before the next read instead of after every frame.
    let mut start = 0;
    let reason = loop {
        match frame::decode::<FromAgent>(&buf[start..]) {
            Ok(Some((msg, used))) => {
                start += used;
                if let Err(e) = route(&shared, msg) {
                    break e;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break format!("agent sent a bad frame: {e}"),
        }
        buf.drain(..start);
        start = 0;
        // Reads land in spare capacity: nothing is zeroed first.
        buf.reserve(READ_SIZE);
        match stdout.read_buf(&mut buf).await {
            Ok(0) => break stderr.explain("agent gone (connection closed)").await,
            Ok(_) => {}
            Err(e) => break format!("agent gone: {e}"),
        }
    };
    shared.die(reason);
}

/// An agent's log record, as this process's own.
fn log(level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(target: "spindle::agent", "{message}"),
        LogLevel::Warn => tracing::warn!(target: "spindle::agent", "{message}"),
        LogLevel::Info => tracing::info!(target: "spindle::agent", "{message}"),
        LogLevel::Debug => tracing::debug!(target: "spindle::agent", "{message}"),
        LogLevel::Trace => tracing::trace!(target: "spindle::agent", "{message}"),
    }
}

/// Delivers one message to its waiter. An error means the agent broke the
/// protocol and the link must go.
fn route(shared: &Shared, msg: FromAgent) -> std::result::Result<(), String> {
    match msg {
        FromAgent::Reply { id, result } => {
            let waiter = shared.table().waiters.remove(&id);
            if let Some(w) = waiter {
                let _ = w.reply.send(result.map_err(Error::Remote));
            }
        }
        FromAgent::Stream { id, kind, data } => {
            let t = shared.table();
            if let Some(tx) = t.waiters.get(&id).and_then(|w| w.stream.as_ref()) {
                if tx.try_send((kind, data)).is_err() {
                    return Err(format!("agent overran the stream window of request {id}"));
                }
            } else if t.waiters.contains_key(&id) {
                // The caller did not ask for the stream: grant the credit
                // back so the agent is not stalled.
                let ack =
                    frame::encode(&ToAgent::Ack { id, frames: 1 }).map_err(|e| e.to_string())?;
                let _ = shared.writer.try_send(ack);
            }
        }
        FromAgent::Ack { id, frames } => {
            if let Some(c) = shared
                .table()
                .waiters
                .get(&id)
                .and_then(|w| w.upload_credit.as_ref())
            {
                c.add_permits(frames.min(WINDOW) as usize);
            }
        }
        FromAgent::Log { level, message } => {
            crate::agent_log::record(&shared.host, level, &message);
            log(level, &message);
        }
        FromAgent::Routed { child, frame } => {
            let target = shared.child(child);
            if let Some(c) = target {
                // A child breaking the protocol ends that child only.
                let outcome = match frame::decode::<FromAgent>(frame.as_ref()) {
                    Ok(Some((msg, used))) if used == frame.len() => route(&c, msg),
                    Ok(_) => Err("child agent sent a partial frame".into()),
                    Err(e) => Err(format!("child agent sent a bad frame: {e}")),
                };
                if let Err(reason) = outcome {
                    shared.forget_child(child);
                    c.die(reason);
                    c.close.notify_one();
                }
            }
        }
        FromAgent::ChildGone { child, reason } => {
            if let Some(c) = shared.forget_child(child) {
                c.die(reason);
                c.close.notify_one();
                c.gone.notify_one();
            }
        }
        FromAgent::Hello(_) => return Err("agent sent a second hello".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::Ping;
    use tokio::io::duplex;

    fn hello() -> Hello {
        Hello {
            version: spindle_protocol::VERSION,
            build_id: "test".into(),
            arch: "x86_64".into(),
            pid: 1,
            uid: 0,
            gid: 0,
            user: "root".into(),
            home: "/root".into(),
            pythons: vec![],
            shell: "/bin/sh".into(),
            probes: vec![],
        }
    }

    /// A fake agent on the other end of an in-memory pipe: it reads the
    /// controller's first frame, then answers with `answer` (raw bytes).
    async fn link_answering(answer: Vec<u8>) -> (Link, tokio::task::JoinHandle<Vec<u8>>) {
        let (ctl_out, mut agent_in) = duplex(1 << 20);
        let (mut agent_out, ctl_in) = duplex(1 << 20);
        let fake = tokio::spawn(async move {
            let mut header = [0u8; 4];
            agent_in.read_exact(&mut header).await.unwrap();
            let mut body = vec![0; frame::body_len(header).unwrap()];
            agent_in.read_exact(&mut body).await.unwrap();
            agent_out.write_all(&answer).await.unwrap();
            // Keep the pipe open until the test is done with it.
            let mut rest = Vec::new();
            let _ = agent_in.read_to_end(&mut rest).await;
            body
        });
        let link = Link::over(
            "fake".into(),
            ctl_out,
            ctl_in,
            Vec::new(),
            hello(),
            None,
            Arc::default(),
        );
        (link, fake)
    }

    #[tokio::test]
    async fn reply_is_routed_by_id() {
        let reply = frame::encode(&FromAgent::Reply {
            id: 1,
            result: Ok(Reply::Pong(Default::default())),
        })
        .unwrap();
        let (link, _fake) = link_answering(reply).await;
        link.call(Ping {}).await.unwrap();
        assert!(!link.is_dead());
    }

    #[tokio::test]
    async fn malformed_frame_fails_waiters_and_kills_link() {
        let garbage = vec![0, 0, 0, 3, 0xc1, 0xc1, 0xc1];
        let (link, _fake) = link_answering(garbage).await;
        let err = link.call(Ping {}).await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("bad frame"), "{err}");
        assert!(link.is_dead());
        assert!(link.call(Ping {}).await.unwrap_err().is_unreachable());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        // Announces 4 GiB; nothing else follows.
        let (link, _fake) = link_answering(vec![0xff, 0xff, 0xff, 0xff]).await;
        let err = link.call(Ping {}).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[tokio::test]
    async fn mismatched_reply_type_is_a_protocol_error() {
        let reply = frame::encode(&FromAgent::Reply {
            id: 1,
            result: Ok(Reply::Removed(Default::default())),
        })
        .unwrap();
        let (link, _fake) = link_answering(reply).await;
        let err = link.call(Ping {}).await.unwrap_err();
        assert!(err.to_string().contains("mismatched"), "{err}");
    }

    #[tokio::test]
    async fn stream_overrun_is_a_protocol_error() {
        let mut flood = Vec::new();
        for _ in 0..WINDOW + 2 {
            frame::encode_into(
                &FromAgent::Stream {
                    id: 1,
                    kind: StreamKind::Stdout,
                    data: vec![b'x'; 10].into(),
                },
                &mut flood,
            )
            .unwrap();
        }
        let (link, _fake) = link_answering(flood).await;
        // Start without consuming the stream: the window must not be exceeded.
        let pending = link.start(Ping {}, true, false).await.unwrap();
        let err = pending.finish().await.unwrap_err();
        assert!(err.to_string().contains("overran"), "{err}");
    }

    #[tokio::test]
    async fn closed_pipe_is_unreachable() {
        let (link, fake) = link_answering(Vec::new()).await;
        fake.abort();
        let err = link.call(Ping {}).await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
    }
}
