//! [`Controller`] keeps one [`Host`] per target (transport, destination,
//! Python); a [`Host`] keeps at most one live [`Link`] and offers the
//! operations callers use: exec, put, fetch, stat, temporary directories.
//!
//! Connecting is lazy and shared: the first caller connects while holding
//! the host's link slot, concurrent callers wait for that same attempt, and
//! a dead link is replaced by the next caller.

use crate::agents::AgentStore;
use crate::error::{Error, Result};
use crate::link::{Link, Pending};
use crate::transport::{Destination, Transport};
use spindle_protocol::{
    Become, Code, Configure, ErrorKind, Exec, ExecResult, Fetch, FetchResult, LogLevel,
    MakeTempDir, ModuleEntry, Ping, Put, PutResult, RemoveTempDir, RunModule, Splice, Stat,
    StatResult, StreamKind, CHUNK, INLINE_MAX,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Chunks read ahead of an upload, or queued for writing during a fetch.
const READ_AHEAD: usize = 4;

/// Everything that identifies one agent connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub transport: Transport,
    pub dest: Destination,
    /// Python to bootstrap with; `None` lets the target pick.
    pub python: Option<String>,
}

/// The per-run registry of hosts.
#[derive(Debug)]
pub struct Controller {
    agents: Arc<AgentStore>,
    hosts: Mutex<HashMap<Target, Arc<Host>>>,
    /// Time allowed for connecting and bootstrapping.
    pub connect_timeout: Duration,
    /// Child agents (become accounts) kept per host; the least recently
    /// used idle one makes room for a new one.
    pub max_accounts: usize,
}

/// How long [`Host::retire_user`] waits for a child agent to end.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Default for [`Controller::max_accounts`].
pub const MAX_ACCOUNTS: usize = 8;

impl Controller {
    pub fn new(agents: AgentStore) -> Self {
        Controller {
            agents: Arc::new(agents),
            hosts: Mutex::default(),
            connect_timeout: Duration::from_secs(30),
            max_accounts: MAX_ACCOUNTS,
        }
    }

    /// The host for `target`, created on first use. Cheap; does not connect.
    pub fn host(&self, target: Target) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(Host {
                    target,
                    agents: self.agents.clone(),
                    link: tokio::sync::Mutex::new(None),
                    linked: Default::default(),
                    accounts: tokio::sync::Mutex::default(),
                    max_accounts: self.max_accounts,
                    connect_timeout: self.connect_timeout,
                })
            })
            .clone()
    }
}

/// One target and its (lazily connected) agent.
#[derive(Debug)]
pub struct Host {
    target: Target,
    agents: Arc<AgentStore>,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// Set while `link` holds a link that was up when last looked at.
    linked: std::sync::atomic::AtomicBool,
    /// Child agents under other accounts, by how they were reached, with
    /// when each was last handed out.
    accounts: tokio::sync::Mutex<HashMap<AccountKey, (Arc<Link>, std::time::Instant)>>,
    max_accounts: usize,
    connect_timeout: Duration,
}

/// How to switch to another account on the target (Ansible's `become`).
#[derive(Clone, PartialEq, Eq)]
pub struct BecomeSpec {
    /// `sudo` or `su`.
    pub method: String,
    /// The program: `sudo`, `su` or a path to one.
    pub exe: String,
    /// `become_flags`, split into words.
    pub flags: Vec<String>,
    pub user: String,
    pub password: Option<String>,
    /// For su: the words its password prompt may hold.
    pub prompts: Vec<String>,
    /// How long the switch may take (the connection's `timeout`, which a
    /// task may set, as for the ssh plugin's become prompt);
    /// the host's connect timeout if `None`.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for BecomeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password itself.
        f.debug_struct("BecomeSpec")
            .field("method", &self.method)
            .field("exe", &self.exe)
            .field("flags", &self.flags)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// How an account was reached: method, program, flags, user and a digest
/// of the password (a task with another password gets its own child agent,
/// checked by sudo or su as a stock run would).
type AccountKey = (String, String, Vec<String>, String, Option<String>);

/// A command's whole result with its output collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A module ready to run: its cacheable bundle and this task's arguments.
#[derive(Clone, Debug)]
pub struct Module {
    /// The AnsiballZ zip: module and module_utils.
    pub zip: Arc<[u8]>,
    /// Hex SHA-256 of `zip`.
    pub hash: String,
    pub entry: ModuleEntry,
    pub fqn: String,
    /// JSON text of the task's arguments.
    pub params: String,
    pub profile: Option<String>,
    pub extensions: Option<String>,
    /// JSON array of the secret strings in the arguments.
    pub secrets: Option<String>,
    pub rlimit_nofile: u64,
    /// Directory to run in; `None` leaves the agent's own.
    pub cwd: Option<String>,
    /// On a terminal of its own (stdout and stderr merged), as a module
    /// file run through `ssh -tt`.
    pub pty: bool,
}

impl Module {
    pub fn new(zip: Vec<u8>, entry: ModuleEntry, fqn: String, params: String) -> Module {
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(&zip));
        Module::with_bundle(zip.into(), hash, entry, fqn, params)
    }

    /// A module whose zip (and its hash) the caller already holds.
    pub fn with_bundle(
        zip: Arc<[u8]>,
        hash: String,
        entry: ModuleEntry,
        fqn: String,
        params: String,
    ) -> Module {
        Module {
            zip,
            hash,
            entry,
            fqn,
            params,
            profile: None,
            extensions: None,
            secrets: None,
            rlimit_nofile: 0,
            cwd: None,
            pty: false,
        }
    }
}

/// Runs a command-like request and collects its streamed output.
async fn collect<C>(link: &Link, req: C) -> Result<ExecOutput>
where
    C: spindle_protocol::Call<Reply = ExecResult>,
{
    let mut pending: Pending<C> = link.start(req, true, false).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some((kind, data)) = pending.next().await {
        match kind {
            StreamKind::Stderr => stderr.extend_from_slice(data.as_ref()),
            _ => stdout.extend_from_slice(data.as_ref()),
        }
    }
    let r = pending.finish().await?;
    stdout.extend_from_slice(r.stdout.as_ref());
    stderr.extend_from_slice(r.stderr.as_ref());
    Ok(ExecOutput {
        code: r.code,
        signal: r.signal,
        timed_out: r.timed_out,
        stdout,
        stderr,
    })
}

impl Host {
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The live link, connecting (or reconnecting) first if needed.
    #[tracing::instrument(level = "debug", skip(self), fields(host = %self.target.dest))]
    pub async fn link(&self) -> Result<Arc<Link>> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| !l.is_dead()) {
            return Ok(link.clone());
        }
        *slot = None;
        self.linked.store(false, Relaxed);
        let (link, shared_login) = tokio::join!(
            Link::connect(
                &self.target.transport,
                &self.target.dest,
                self.target.python.as_deref(),
                &self.agents,
                self.connect_timeout,
            ),
            self.target.transport.shares_login(&self.target.dest)
        );
        let link = Arc::new(link?);
        // Not part of whatever chain of steps the caller is in.
        crate::chain::outside(configure(&link, shared_login)).await?;
        *slot = Some(link.clone());
        self.linked.store(true, Relaxed);
        Ok(link)
    }

    /// Whether the login link is still to be made (or being made, or made
    /// again after a disconnect), so that a request for `account` waits for
    /// it. A link that died unnoticed counts as made: packing ahead of the
    /// reconnect is then skipped, nothing else.
    fn link_pending(&self, account: Option<&BecomeSpec>) -> bool {
        account.is_none() && !self.linked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The link for `account` (the login account's for `None`):
    /// a child agent started through the login agent on first use and
    /// kept, so the account switch happens once per account.
    pub async fn link_as(&self, account: Option<&BecomeSpec>) -> Result<Arc<Link>> {
        let Some(b) = account else {
            return self.link().await;
        };
        // sudo's grammar holds for sudo itself; a program of the user's
        // standing in for it (a wrapper) gets its flags as given.
        if b.method == "sudo" && b.exe.rsplit('/').next() == Some("sudo") {
            crate::become_flags::check_sudo(&b.flags).map_err(Error::Local)?;
        }
        let digest = b.password.as_ref().map(|p| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(p.as_bytes()))
        });
        let key = (
            b.method.clone(),
            b.exe.clone(),
            b.flags.clone(),
            b.user.clone(),
            digest,
        );
        let mut accounts = self.accounts.lock().await;
        accounts.retain(|_, (l, _)| !l.is_dead());
        if let Some((link, used)) = accounts.get_mut(&key) {
            *used = std::time::Instant::now();
            return Ok(link.clone());
        }
        // Make room: end the least recently used child nobody is using. If
        // every one is busy, go over the limit rather than wait.
        while accounts.len() >= self.max_accounts.max(1) {
            let idle = accounts
                .iter()
                .filter(|(_, (l, _))| !l.is_busy() && Arc::strong_count(l) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            let Some(k) = idle else { break };
            if let Some((old, _)) = accounts.remove(&k) {
                old.end_child().await;
            }
        }
        let parent = self.link().await?;
        // The child's bootstrap runs under sudo, where a sudoers rule may
        // name its command line: prefer the stable /usr/bin/python3.
        let pythons = &parent.hello().pythons;
        let python = self.target.python.clone().or_else(|| {
            pythons
                .iter()
                .find(|p| p.as_str() == "/usr/bin/python3")
                .or(pythons.first())
                .cloned()
        });
        let req = Become {
            method: b.method.clone(),
            exe: b.exe.clone(),
            flags: b.flags.clone(),
            user: b.user.clone(),
            python,
            password: b.password.as_ref().map(|p| p.as_bytes().to_vec().into()),
            prompts: b.prompts.clone(),
            timeout_ms: b.timeout.unwrap_or(self.connect_timeout).as_millis() as u64,
        };
        let child = parent.call(req).await?;
        let link = Arc::new(Link::child(&parent, child.child, *child.hello));
        // Not part of whatever chain of steps the caller is in. A child's
        // account is entered afresh by sudo, su or doas, whose PAM stacks
        // read the environment files each time: no shared login.
        crate::chain::outside(configure(&link, false)).await?;
        accounts.insert(key, (link.clone(), std::time::Instant::now()));
        Ok(link)
    }

    /// Ends the idle child agents running as `user` and waits until they
    /// are gone. A task about to remove or change that account (`userdel`,
    /// `usermod`) would otherwise find processes of it still running, which
    /// it never does in a stock run. A busy one is left alone.
    pub async fn retire_user(&self, user: &str) {
        let mut accounts = self.accounts.lock().await;
        let idle: Vec<AccountKey> = accounts
            .iter()
            .filter(|(k, (l, _))| k.3 == user && !l.is_busy() && Arc::strong_count(l) == 1)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            if let Some((link, _)) = accounts.remove(&key) {
                link.end_child_and_wait(RETIRE_WAIT).await;
            }
        }
    }

    /// Runs a command as `account` (the login account for `None`).
    pub async fn exec_as(&self, account: Option<&BecomeSpec>, req: Exec) -> Result<ExecOutput> {
        collect(&*self.link_as(account).await?, req).await
    }

    /// Closes the link, failing requests still in flight; the agent ends
    /// and takes the commands it runs with it. The next request reconnects.
    pub async fn disconnect(&self) {
        let taken = self.link.lock().await.take();
        self.linked
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(link) = taken {
            link.close();
        }
    }

    pub async fn ping(&self) -> Result<()> {
        self.link().await?.call(Ping {}).await.map(drop)
    }

    pub async fn stat(&self, path: &str, follow: bool) -> Result<StatResult> {
        let req = Stat {
            path: path.into(),
            follow,
        };
        self.link().await?.call(req).await
    }

    pub async fn make_temp_dir(&self, parent: Option<String>) -> Result<String> {
        let dir = self.link().await?.call(MakeTempDir { parent }).await?;
        Ok(dir.path)
    }

    pub async fn remove_temp_dir(&self, path: &str) -> Result<()> {
        let req = RemoveTempDir { path: path.into() };
        self.link().await?.call(req).await.map(drop)
    }

    /// Runs a command and collects its output.
    pub async fn exec(&self, req: Exec) -> Result<ExecOutput> {
        collect(&*self.link().await?, req).await
    }

    /// Runs a command, handing its output to `sink` as it arrives (streamed
    /// chunks first, then the reply's remainder). The returned result's
    /// output fields are empty: everything went to `sink`.
    pub async fn exec_with(
        &self,
        req: Exec,
        mut sink: impl FnMut(StreamKind, &[u8]) -> Result<()>,
    ) -> Result<ExecResult> {
        let link = self.link().await?;
        let mut pending: Pending<Exec> = link.start(req, true, false).await?;
        while let Some((kind, data)) = pending.next().await {
            sink(kind, data.as_ref())?;
        }
        let mut r = pending.finish().await?;
        for (kind, tail) in [
            (StreamKind::Stdout, &r.stdout),
            (StreamKind::Stderr, &r.stderr),
        ] {
            if !tail.is_empty() {
                sink(kind, tail.as_ref())?;
            }
        }
        r.stdout = Default::default();
        r.stderr = Default::default();
        Ok(r)
    }

    /// Runs an Ansible module in the agent's warm interpreter for `python`.
    /// The bundle travels only if this agent has not been sent it yet, in
    /// the same request: no extra round trip.
    pub async fn run_module(
        &self,
        python: &str,
        module: &Module,
        env: Vec<(String, String)>,
    ) -> Result<ExecOutput> {
        self.run_module_as(None, python, module, env).await
    }

    /// [`Host::run_module`] as `account`.
    pub async fn run_module_as(
        &self,
        account: Option<&BecomeSpec>,
        python: &str,
        module: &Module,
        env: Vec<(String, String)>,
    ) -> Result<ExecOutput> {
        if self.link_pending(account) {
            // Packing the bundle for the new agent overlaps the connection.
            crate::members::prepare(&module.hash, &module.zip);
        }
        let link = self.link_as(account).await?;
        let first = link.note_code(&module.hash);
        let req = |code: Code| RunModule {
            python: python.to_owned(),
            code,
            entry: module.entry,
            fqn: module.fqn.clone(),
            params: module.params.clone(),
            profile: module.profile.clone(),
            extensions: module.extensions.clone(),
            secrets: module.secrets.clone(),
            rlimit_nofile: module.rlimit_nofile,
            env: env.clone(),
            timeout_ms: None,
            cwd: module.cwd.clone(),
            pty: module.pty,
        };
        let (code, shared) = match first {
            true => link.code_to_send(&module.hash, &module.zip).await,
            false => (Code::named(&module.hash), None),
        };
        let sent = code.without_bytes();
        let (out, sent) = match collect(&link, req(code)).await {
            // The agent lost it (or another caller's first send is still in
            // flight and failed): send it along, whole, and try once more.
            Err(Error::Remote(e)) if e.kind == ErrorKind::CodeMissing => {
                link.forget_code(&module.hash);
                link.note_code(&module.hash);
                let whole = Code {
                    hash: module.hash.clone(),
                    zip: Some(module.zip.to_vec().into()),
                    ..Code::default()
                };
                let sent = whole.without_bytes();
                (collect(&link, req(whole)).await, sent)
            }
            other => {
                if let (Ok(_), Some(shared)) = (&other, &shared) {
                    link.confirm_shared(shared);
                }
                (other, sent)
            }
        };
        if out.is_ok() {
            link.confirm_sent(&sent);
        }
        out
    }

    /// Writes `size` bytes from `src` to the target atomically (see
    /// [`Put`]); `req.size` and `req.data` are filled in here. Small files
    /// go inline; larger ones stream under the agent's credit, so memory
    /// stays bounded on both ends.
    pub async fn put(&self, src: impl AsyncRead + Unpin, size: u64, req: Put) -> Result<PutResult> {
        self.put_as(None, src, size, req).await
    }

    /// [`Host::put`] as `account`.
    pub async fn put_as(
        &self,
        account: Option<&BecomeSpec>,
        mut src: impl AsyncRead + Unpin,
        size: u64,
        req: Put,
    ) -> Result<PutResult> {
        let link = self.link_as(account).await?;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let read = async move {
            let mut left = size;
            while left > 0 {
                let mut chunk = vec![0u8; left.min(CHUNK as u64) as usize];
                let got = src.read_exact(&mut chunk).await.map(|_| chunk);
                let failed = got.is_err();
                left -= if failed {
                    left
                } else {
                    CHUNK.min(left as usize) as u64
                };
                if tx.send(got).await.is_err() || failed {
                    break;
                }
            }
        };
        let (_, r) = tokio::join!(read, put_chunks(&link, size, req, rx));
        r
    }

    /// Writes `data` with the base64 text of `bundle` (a module bundle:
    /// the zip and its hash) inserted at byte `at`, as `account`: the text
    /// is made by the agent, and the bundle travels unless this agent is
    /// known to hold it (see [`Splice`]). One request, never retried: it
    /// may be a step of a chain sent without waiting, whose next step
    /// counts on this one's outcome.
    pub async fn put_spliced_as(
        &self,
        account: Option<&BecomeSpec>,
        data: Vec<u8>,
        at: u64,
        bundle: (&[u8], &str),
        mut req: Put,
    ) -> Result<PutResult> {
        let link = self.link_as(account).await?;
        let (zip, hash) = bundle;
        req.size = data.len() as u64;
        req.data = Some(data.into());
        link.note_code(hash);
        let (code, shared) = match link.holds_code(hash) {
            true => (Code::named(hash), None),
            false => link.code_to_send(hash, zip).await,
        };
        let sent = code.without_bytes();
        req.splice = Some(Splice { at, code });
        let put = link.call(req).await;
        match &put {
            Ok(_) => {
                if let Some(shared) = &shared {
                    link.confirm_shared(shared);
                }
                link.confirm_sent(&sent)
            }
            // Not retried (see above), but the next put sends it all.
            Err(Error::Remote(e)) if e.kind == ErrorKind::CodeMissing => link.forget_code(hash),
            Err(_) => {}
        }
        put
    }

    /// Uploads a local file; mode defaults to the local file's.
    pub async fn put_file(&self, local: &Path, mut req: Put) -> Result<PutResult> {
        if req.mode.is_none() {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(local)
                .map_err(|e| Error::local(format_args!("reading {}", local.display()), e))?;
            req.mode = Some(meta.permissions().mode() & 0o7777);
        }
        self.put_path(local, req).await
    }

    /// Uploads a local file with `req` as given (no mode unless set: the
    /// agent's default, as for a new file). The file is read on a blocking
    /// thread straight into chunk buffers, ahead of the upload.
    pub async fn put_path(&self, local: &Path, req: Put) -> Result<PutResult> {
        self.put_path_as(None, local, req).await
    }

    /// [`Host::put_path`] as `account`.
    pub async fn put_path_as(
        &self,
        account: Option<&BecomeSpec>,
        local: &Path,
        req: Put,
    ) -> Result<PutResult> {
        let link = self.link_as(account).await?;
        let ctx = || format!("reading {}", local.display());
        let file = std::fs::File::open(local).map_err(|e| Error::local(ctx(), e))?;
        let size = file.metadata().map_err(|e| Error::local(ctx(), e))?.len();
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let reader = tokio::task::spawn_blocking(move || read_chunks(file, size, tx));
        let r = put_chunks(&link, size, req, rx).await;
        // The reader ends by itself once the receiver is gone.
        let _ = reader.await;
        r
    }

    /// Streams a remote file into `sink`.
    pub async fn fetch(
        &self,
        path: &str,
        mut sink: impl AsyncWrite + Unpin,
    ) -> Result<FetchResult> {
        let link = self.link().await?;
        let mut pending: Pending<Fetch> =
            link.start(Fetch { path: path.into() }, true, false).await?;
        let write_err = |e| Error::local(format_args!("writing the copy of {path}"), e);
        while let Some((_, data)) = pending.next().await {
            sink.write_all(data.as_ref()).await.map_err(write_err)?;
        }
        let r = pending.finish().await?;
        sink.flush().await.map_err(write_err)?;
        Ok(r)
    }

    /// Fetches a remote file into a local path atomically: a hidden file
    /// beside it receives the data and is renamed over it when complete.
    pub async fn fetch_file(&self, path: &str, local: &Path) -> Result<FetchResult> {
        self.fetch_file_as(None, path, local).await
    }

    /// [`Host::fetch_file`] as `account`.
    pub async fn fetch_file_as(
        &self,
        account: Option<&BecomeSpec>,
        path: &str,
        local: &Path,
    ) -> Result<FetchResult> {
        let dir = match local.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => ".".into(),
        };
        let name = local
            .file_name()
            .ok_or_else(|| Error::Local(format!("{}: not a file path", local.display())))?;
        let tmp = dir.join(format!(
            ".{}.spindle-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let ctx = |what: &str| format!("{what} {}", tmp.display());
        let file = std::fs::File::create(&tmp).map_err(|e| Error::local(ctx("creating"), e))?;
        // Chunks are written on a blocking thread as they arrive, without
        // another copy.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(READ_AHEAD);
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all(&chunk)?;
            }
            Ok::<_, std::io::Error>(())
        });
        let fetched = async {
            let link = self.link_as(account).await?;
            let mut pending: Pending<Fetch> =
                link.start(Fetch { path: path.into() }, true, false).await?;
            while let Some((_, data)) = pending.next().await {
                if tx.send(data.into_inner()).await.is_err() {
                    // The writer failed; its error is reported below.
                    // Dropping the request cancels it on the agent (which
                    // would otherwise wait for credit forever).
                    return Err(Error::Local("the local copy could not be written".into()));
                }
            }
            drop(tx);
            pending.finish().await
        };
        let fetched = fetched.await;
        let written = match writer.await {
            Ok(w) => w.map_err(|e| Error::local(ctx("writing"), e)),
            Err(e) => Err(Error::Local(format!("writing {}: {e}", tmp.display()))),
        };
        let result = written.and(fetched);
        match result {
            Ok(r) => {
                tokio::fs::rename(&tmp, local)
                    .await
                    .map_err(|e| Error::local(ctx("renaming"), e))?;
                Ok(r)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

/// The upload itself: `chunks` yields exactly `size` bytes in pieces of at
/// most [`CHUNK`]; a source error ends the upload (the agent then discards
/// its temporary file).
async fn put_chunks(
    link: &Link,
    size: u64,
    mut req: Put,
    mut chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> Result<PutResult> {
    req.size = size;
    let path = req.path.clone();
    let short = || SourceError::Short(size).on(&path);
    let io = |e| SourceError::Io(e).on(&path);
    if size <= INLINE_MAX as u64 {
        let mut data = Vec::with_capacity(size as usize);
        while (data.len() as u64) < size {
            let chunk = chunks.recv().await.ok_or_else(short)?;
            data.extend_from_slice(&chunk.map_err(io)?);
        }
        req.data = Some(data.into());
        return link.call(req).await;
    }
    let mut pending: Pending<Put> = link.start(req, false, true).await?;
    let mut left = size;
    while left > 0 {
        let chunk = chunks.recv().await.ok_or_else(short)?.map_err(io)?;
        left = left.saturating_sub(chunk.len() as u64);
        pending.send_data(chunk, left == 0).await?;
    }
    pending.finish().await
}

/// Why an upload's source gave out.
#[derive(Debug)]
enum SourceError {
    Io(std::io::Error),
    Short(u64),
}

impl SourceError {
    fn on(self, path: &str) -> Error {
        match self {
            SourceError::Io(e) => Error::local(format_args!("reading the source for {path}"), e),
            SourceError::Short(size) => {
                Error::Local(format!("source for {path} is shorter than {size} bytes"))
            }
        }
    }
}

/// Reads `size` bytes of `file` into chunk buffers for [`Host::put_chunks`];
/// stops early when the upload has ended.
fn read_chunks(mut file: std::fs::File, size: u64, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut left = size;
    while left > 0 {
        let mut chunk = vec![0u8; left.min(CHUNK as u64) as usize];
        let got = file.read_exact(&mut chunk).map(|_| chunk);
        let failed = got.is_err();
        if tx.blocking_send(got).is_err() || failed {
            return;
        }
        left -= CHUNK.min(left as usize) as u64;
    }
}

/// Asks a new agent for the log records this process shows (an agent
/// sends debug records, per-task timings say, only when asked to), and
/// tells it whether its login is shared (see [`Configure::shared_login`]).
async fn configure(link: &Link, shared_login: bool) -> Result<()> {
    let log_level = (tracing::enabled!(target: "spindle::agent", tracing::Level::DEBUG)
        || crate::agent_log::enabled())
    .then(|| {
        if tracing::enabled!(target: "spindle::agent", tracing::Level::TRACE) {
            LogLevel::Trace
        } else {
            LogLevel::Debug
        }
    });
    if log_level.is_some() || shared_login {
        link.call(Configure {
            log_level,
            shared_login,
        })
        .await?;
    }
    Ok(())
}
