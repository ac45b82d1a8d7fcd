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
    Code, ErrorKind, Exec, ExecResult, Fetch, FetchResult, MakeTempDir, ModuleEntry, Ping, Put,
    PutResult, RemoveTempDir, RunModule, Stat, StatResult, StreamKind, CHUNK, INLINE_MAX,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
}

impl Controller {
    pub fn new(agents: AgentStore) -> Self {
        Controller {
            agents: Arc::new(agents),
            hosts: Mutex::default(),
            connect_timeout: Duration::from_secs(30),
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
    connect_timeout: Duration,
}

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
    pub rlimit_nofile: u64,
}

impl Module {
    pub fn new(zip: Vec<u8>, entry: ModuleEntry, fqn: String, params: String) -> Module {
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(&zip));
        Module {
            zip: zip.into(),
            hash,
            entry,
            fqn,
            params,
            profile: None,
            extensions: None,
            rlimit_nofile: 0,
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
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| !l.is_dead()) {
            return Ok(link.clone());
        }
        *slot = None;
        let link = Arc::new(
            Link::connect(
                &self.target.transport,
                &self.target.dest,
                self.target.python.as_deref(),
                &self.agents,
                self.connect_timeout,
            )
            .await?,
        );
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Closes the link, failing requests still in flight; the agent ends
    /// and takes the commands it runs with it. The next request reconnects.
    pub async fn disconnect(&self) {
        if let Some(link) = self.link.lock().await.take() {
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
        let link = self.link().await?;
        let first = link.note_code(&module.hash);
        let req = |with_code: bool| RunModule {
            python: python.to_owned(),
            code: Code {
                hash: module.hash.clone(),
                zip: with_code.then(|| module.zip.to_vec().into()),
            },
            entry: module.entry,
            fqn: module.fqn.clone(),
            params: module.params.clone(),
            profile: module.profile.clone(),
            extensions: module.extensions.clone(),
            rlimit_nofile: module.rlimit_nofile,
            env: env.clone(),
            timeout_ms: None,
        };
        match collect(&link, req(first)).await {
            // The agent lost it (or another caller's first send is still in
            // flight and failed): send it along and try once more.
            Err(Error::Remote(e)) if e.kind == ErrorKind::CodeMissing => {
                link.forget_code(&module.hash);
                link.note_code(&module.hash);
                collect(&link, req(true)).await
            }
            other => other,
        }
    }

    /// Writes `size` bytes from `src` to the target atomically (see
    /// [`Put`]); `req.size` and `req.data` are filled in here. Small files
    /// go inline; larger ones stream under the agent's credit, so memory
    /// stays bounded on both ends.
    pub async fn put(
        &self,
        mut src: impl AsyncRead + Unpin,
        size: u64,
        mut req: Put,
    ) -> Result<PutResult> {
        let link = self.link().await?;
        req.size = size;
        let path = req.path.clone();
        let read_err = |e| Error::local(format_args!("reading the source for {path}"), e);
        if size <= INLINE_MAX as u64 {
            let mut data = Vec::with_capacity(size as usize);
            (&mut src)
                .take(size)
                .read_to_end(&mut data)
                .await
                .map_err(read_err)?;
            if data.len() as u64 != size {
                return Err(Error::Local(format!(
                    "source for {path} is shorter than {size} bytes"
                )));
            }
            req.data = Some(data.into());
            return link.call(req).await;
        }
        let mut pending: Pending<Put> = link.start(req, false, true).await?;
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let mut chunk = vec![0u8; want];
            src.read_exact(&mut chunk).await.map_err(read_err)?;
            left -= want as u64;
            pending.send_data(chunk, left == 0).await?;
        }
        pending.finish().await
    }

    /// Uploads a local file; mode defaults to the local file's.
    pub async fn put_file(&self, local: &Path, mut req: Put) -> Result<PutResult> {
        let ctx = || format!("reading {}", local.display());
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| Error::local(ctx(), e))?;
        let meta = file.metadata().await.map_err(|e| Error::local(ctx(), e))?;
        if req.mode.is_none() {
            use std::os::unix::fs::PermissionsExt;
            req.mode = Some(meta.permissions().mode() & 0o7777);
        }
        let reader = tokio::io::BufReader::with_capacity(CHUNK, file);
        self.put(reader, meta.len(), req).await
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
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Error::local(ctx("creating"), e))?;
        let mut w = tokio::io::BufWriter::with_capacity(CHUNK, file);
        let result = self.fetch(path, &mut w).await;
        drop(w);
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
