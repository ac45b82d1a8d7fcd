//! `spindle serve`: the controller as a per-run daemon for the Ansible
//! plugin.
//!
//! Theory of operation:
//! 1. The plugin (in an Ansible worker process) starts `spindle serve` on a
//!    UNIX socket in a private 0700 directory, once per `ansible-playbook`
//!    run, and names that process as `--parent-pid`.
//! 2. Each worker connects and sends requests: a `u32` big-endian length and
//!    a JSON object (bytes as base64). Requests on one connection are
//!    answered in order; connections are served concurrently.
//! 3. Every request names its target; the daemon keeps one [`Host`] (one
//!    SSH connection, one agent) per target for the whole run, whichever
//!    worker asks.
//! 4. Peers must run as our own user (checked with `SO_PEERCRED`). The
//!    daemon exits when its parent process is gone, taking every SSH
//!    connection (and so every agent) with it.
//! 5. A request marked `"defer": "<step>"` (a step whose outcome the
//!    plugin can predict: making or removing a task's temp dir, a chmod, a
//!    small file put into it with its bytes in the request) is
//!    answered at once with status 0 and run in the background, after the
//!    connection's earlier deferred steps. The connection's next ordinary
//!    request waits for them first; if one failed, that request is not run
//!    and its reply carries `"deferred": {"step", "cmd", "rc", "stdout",
//!    "stderr"}` (or `"error"` for a step that could not run), so the plugin
//!    raises what Ansible would have raised for the step. Steps still
//!    running when the run ends are finished before the daemon exits.

use crate::host::{BecomeSpec, Controller, Module, Target};
use crate::transport::{Destination, Password, SshOptions, Transport};
use crate::{Chain, Error, Host};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use spindle_protocol::{Exec, ModuleEntry, Put};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Largest request accepted from the plugin: module bundles travel inline.
const MAX_REQUEST: usize = 64 << 20;

/// How long the daemon, its parent gone, waits for deferred steps.
const DEFERRED_GRACE: Duration = Duration::from_secs(30);

/// A deferred step's outcome: `None` if it succeeded, else the reply that
/// describes its failure.
type Deferred = tokio::task::JoinHandle<Option<Value>>;

/// Deferred steps of every connection that have not finished yet.
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// One deferred step counted in [`InFlight`] until dropped (a panicking
/// step included).
struct Counted(Arc<InFlight>);

impl InFlight {
    fn enter(me: Arc<InFlight>) -> Counted {
        me.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(me)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.done.notify_waiters();
    }
}

/// How the plugin describes a target: the ssh settings Ansible resolved,
/// or `"local": true` for the controller's own machine (Ansible's `local`
/// connection: an agent started without ssh, as the run's user, shared by
/// every host using that connection).
#[derive(Deserialize)]
struct TargetSpec {
    #[serde(default)]
    local: bool,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    identity: Option<PathBuf>,
    /// Extra ssh arguments (common args, extra args), already split.
    #[serde(default)]
    ssh_args: Vec<String>,
    #[serde(default)]
    ssh_executable: Option<String>,
    /// Seconds for connecting (Ansible's `timeout`).
    #[serde(default)]
    timeout: Option<u64>,
    /// Login password (`ansible_password`), answered to ssh by askpass.
    #[serde(default)]
    password: Option<String>,
}

impl TargetSpec {
    fn target(&self) -> Target {
        if self.local {
            return Target {
                transport: Transport::Spawn,
                dest: Destination {
                    user: None,
                    host: "localhost".into(),
                    port: None,
                },
                python: None,
            };
        }
        let timeout = Duration::from_secs(self.timeout.unwrap_or(10).max(1));
        Target {
            transport: Transport::Ssh(SshOptions {
                program: self.ssh_executable.clone().unwrap_or_else(|| "ssh".into()),
                identity: self.identity.clone(),
                extra_args: self.ssh_args.clone(),
                connect_timeout: timeout,
                password: self.password.clone().map(Password),
                ..SshOptions::default()
            }),
            dest: Destination {
                user: self.user.clone(),
                host: self.host.clone(),
                port: self.port,
            },
            python: None,
        }
    }
}

/// Serves until the parent process is gone.
pub async fn serve(
    socket: &Path,
    parent_pid: Option<u32>,
    controller: Controller,
) -> anyhow::Result<()> {
    let listener = UnixListener::bind(socket)?;
    let daemon = Arc::new(Daemon {
        controller,
        bundles: Mutex::default(),
        ssh_settings: Mutex::default(),
    });
    let in_flight = Arc::new(InFlight::default());
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    tracing::info!(socket = %socket.display(), ?parent_pid, "serving");
    let parent_gone = async {
        match parent_pid {
            Some(pid) => {
                let proc = PathBuf::from(format!("/proc/{pid}"));
                while proc.exists() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(parent_gone);
    loop {
        tokio::select! {
            () = &mut parent_gone => break,
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                match stream.peer_cred() {
                    Ok(cred) if cred.uid() == me => {}
                    _ => {
                        tracing::warn!("refused a connection from another user");
                        continue;
                    }
                }
                let daemon = daemon.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, daemon, in_flight).await {
                        tracing::debug!("plugin connection ended: {e}");
                    }
                });
            }
        }
    }
    // Finish the deferred steps (a last task's temp dir removal, say).
    let _ = tokio::time::timeout(DEFERRED_GRACE, async {
        loop {
            // Registered before the check, so a step ending in between
            // still wakes us.
            let done = in_flight.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if in_flight.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                break;
            }
            done.await;
        }
    })
    .await;
    // The lock file the plugin used to start us, and our log if empty.
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(socket.with_extension("sock.lock"));
    let log = socket.with_extension("log");
    if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(log);
    }
    Ok(())
}

async fn client(
    mut stream: UnixStream,
    daemon: Arc<Daemon>,
    in_flight: Arc<InFlight>,
) -> anyhow::Result<()> {
    // The last deferred step of this connection (it reports the failures
    // of the ones before it), and the chain that keeps them in order on
    // the agent.
    let mut deferred: Option<Deferred> = None;
    let chain = Arc::new(Chain::default());
    loop {
        let mut header = [0u8; 4];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(header) as usize;
        anyhow::ensure!(len <= MAX_REQUEST, "request of {len} bytes is too large");
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let request = serde_json::from_slice::<Value>(&body);
        // Whose agents' records go with the reply (see `agent_log`).
        let log_host = match &request {
            Ok(req) if crate::agent_log::enabled() => {
                serde_json::from_value::<TargetSpec>(req["target"].clone())
                    .ok()
                    .map(|spec| spec.target().dest.to_string())
            }
            _ => None,
        };
        let reply = match request {
            Ok(req) if req["op"] == "ssh_settings" => daemon
                .ssh_settings(&req)
                .await
                .unwrap_or_else(|e| error_reply(&e)),
            Ok(req) if req["defer"] == "rm" => {
                // Removing a task's temp dir: nothing waits for it, and its
                // failure is never reported (Ansible only warns, after the
                // task). It runs once the steps before it have ended.
                tracing::debug!("sent without waiting: {}", describe(&req));
                let daemon = daemon.clone();
                let counted = InFlight::enter(in_flight.clone());
                let chain = chain.clone();
                tokio::spawn(async move {
                    let _counted = counted;
                    // After the steps that made what it removes.
                    let _ = chain.after_all(handle(&daemon, req)).await;
                });
                json!({"rc": 0, "stdout": "", "stderr": ""})
            }
            Ok(req) if req["defer"].is_string() => {
                tracing::debug!("sent without waiting: {}", describe(&req));
                let earlier = deferred.take();
                let daemon = daemon.clone();
                let counted = InFlight::enter(in_flight.clone());
                let chain = chain.clone();
                let (sent, on_sent) = tokio::sync::oneshot::channel();
                deferred = Some(tokio::spawn(async move {
                    let _counted = counted;
                    let step = deferred_step(&daemon, req);
                    let outcome = chain.step(sent, step, Option::is_some).await;
                    // After a failure the agent skipped this step: report
                    // the failure.
                    settle(earlier).await.or(outcome)
                }));
                // The next step may go once this one is queued.
                let _ = on_sent.await;
                json!({"rc": 0, "stdout": "", "stderr": ""})
            }
            Ok(req) => {
                let started = std::time::Instant::now();
                let op = describe(&req);
                let earlier = deferred.take();
                let reply = if earlier.is_some() && on_login_link(&req) {
                    // Sent at once, ordered after the deferred steps.
                    let run = chain.follow(handle(&daemon, req));
                    let (failure, reply) = tokio::join!(settle(earlier), run);
                    failure.unwrap_or_else(|| reply.unwrap_or_else(|e| error_reply(&e)))
                } else {
                    match settle(earlier).await {
                        Some(failure) => failure,
                        None => handle(&daemon, req)
                            .await
                            .unwrap_or_else(|e| error_reply(&e)),
                    }
                };
                chain.settled().await;
                tracing::debug!(elapsed = ?started.elapsed(), "{op}");
                reply
            }
            Err(e) => json!({"error": format!("malformed request: {e}"), "unreachable": false}),
        };
        let mut reply = reply;
        if let (Some(host), Some(fields)) = (log_host, reply.as_object_mut()) {
            let lines = crate::agent_log::take(&host);
            if !lines.is_empty() {
                fields.insert("agent_log".into(), json!(lines));
            }
        }
        let bytes = serde_json::to_vec(&reply)?;
        stream
            .write_all(&(bytes.len() as u32).to_be_bytes())
            .await?;
        stream.write_all(&bytes).await?;
    }
}

/// Whether `req` runs on the login account's agent, where the deferred
/// steps run (so that it can be ordered after them there).
fn on_login_link(req: &Value) -> bool {
    req["become"].is_null()
        && req["retire_users"]
            .as_array()
            .is_none_or(|users| users.is_empty())
        && matches!(
            req["op"].as_str(),
            Some("exec" | "module" | "put" | "fetch")
        )
}

/// A request in a few words, for the debug log (never its data).
fn describe(req: &Value) -> String {
    let op = req["op"].as_str().unwrap_or("?");
    let what = match op {
        "exec" => req["cmd"].as_str().unwrap_or_default(),
        "module" => req["module"]["fqn"].as_str().unwrap_or_default(),
        "put" => req["dst"].as_str().unwrap_or_default(),
        "fetch" => req["src"].as_str().unwrap_or_default(),
        _ => "",
    };
    let what: String = what.chars().take(80).collect();
    format!("{op} {what}")
}

/// What `spindle serve` keeps for the run.
struct Daemon {
    controller: Controller,
    /// Module bundles the plugin sent, by its key for them: (the zip, its
    /// hash). A run uses a few dozen at most.
    bundles: Mutex<HashMap<String, Bundle>>,
    /// What `ssh ARGS -G -- HOST` printed, by (ssh, ARGS, HOST): how the
    /// user's ssh would connect, asked once per run rather than per task.
    ssh_settings: Mutex<HashMap<SshQuery, Arc<tokio::sync::OnceCell<String>>>>,
}

/// (ssh, its arguments, the host) for `ssh -G`.
type SshQuery = (String, Vec<String>, String);

/// A module bundle: the zip and its hash.
type Bundle = (Arc<[u8]>, String);

impl Daemon {
    /// `{"settings": TEXT}`, TEXT being what `ssh ARGS -G -- HOST` prints
    /// (empty if ssh fails), run once per run for each (ssh, ARGS, HOST).
    async fn ssh_settings(&self, req: &Value) -> Result<Value, Error> {
        let ssh = req["ssh"].as_str().unwrap_or("ssh").to_owned();
        let args: Vec<String> = req["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let host = field(req, "host")?.to_owned();
        let key = (ssh, args, host);
        // One lookup per key at a time; lookups of other keys go on.
        let cell = self
            .ssh_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let (ssh, args, host) = &key;
        let looked_up = cell.get_or_try_init(|| async {
            // A failure is not kept: the next task asks again.
            crate::transport::ssh_config(ssh, args, host, Duration::from_secs(10))
                .await
                .ok_or(())
        });
        let text = looked_up.await.map(String::as_str).unwrap_or_default();
        Ok(json!({ "settings": text }))
    }

    /// The bundle of a `module` request: the one it carries (kept under its
    /// `zip_key`), or the one kept under its `zip_key`; `None` if neither
    /// (the plugin then sends it).
    fn bundle(&self, m: &Value) -> Result<Option<Bundle>, Error> {
        let key = m["zip_key"].as_str();
        let bundles = || self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        if m["zip"].is_string() {
            return Ok(Some(self.keep_bundle(key, unb64(&m["zip"], "zip")?)));
        }
        Ok(key.and_then(|key| bundles().get(key).cloned()))
    }

    /// A bundle with its hash, kept under `key` when there is one.
    fn keep_bundle(&self, key: Option<&str>, zip: Vec<u8>) -> Bundle {
        use sha2::Digest;
        let zip: Arc<[u8]> = zip.into();
        let hash = hex::encode(sha2::Sha256::digest(&zip));
        if let Some(key) = key {
            let mut bundles = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
            bundles.insert(key.to_owned(), (zip.clone(), hash.clone()));
        }
        (zip, hash)
    }

    /// For the put of a module file (`splice`: `{"at", "len", "zip_key"}`,
    /// `data[at..at + len]` being its bundle's base64): the data without
    /// that text, `at` and the bundle, which is kept under `zip_key` as a
    /// `module` request's is. `Err(data)` unless the text is exactly what
    /// the agent would make of the bundle and the put fits a frame.
    fn splice(&self, splice: &Value, data: Vec<u8>) -> Result<(Vec<u8>, u64, Bundle), Vec<u8>> {
        let (Some(at), Some(len), Some(key)) = (
            splice["at"].as_u64(),
            splice["len"].as_u64(),
            splice["zip_key"].as_str(),
        ) else {
            return Err(data);
        };
        let Some(end) = at.checked_add(len).filter(|&end| end <= data.len() as u64) else {
            return Err(data);
        };
        let (at, end) = (at as usize, end as usize);
        let known = (self.bundles.lock().unwrap_or_else(|e| e.into_inner()))
            .get(key)
            .cloned();
        let bundle = match known {
            Some(bundle) => bundle,
            None => match base64::engine::general_purpose::STANDARD.decode(&data[at..end]) {
                Ok(zip) => self.keep_bundle(Some(key), zip),
                Err(_) => return Err(data),
            },
        };
        // It must be the exact text the agent will make, and the put (the
        // rest of the file, and the bundle the first time) one frame.
        let frame = data.len() - (end - at) + bundle.0.len();
        if frame > spindle_protocol::MAX_FRAME / 2 || b64(&bundle.0).as_bytes() != &data[at..end] {
            return Err(data);
        }
        let mut rest = data;
        rest.drain(at..end);
        Ok((rest, at as u64, bundle))
    }
}

/// Waits for a connection's last deferred step; the failure it reports, if
/// any.
async fn settle(step: Option<Deferred>) -> Option<Value> {
    match step?.await {
        Ok(outcome) => outcome,
        Err(e) => Some(json!({"error": format!("a step sent without waiting was lost: {e}")})),
    }
}

/// Runs a deferred step; `None` if it succeeded, else the reply that
/// reports it to the connection's next request. Removing a temp dir is
/// never reported: Ansible only warns when that fails, after the task.
async fn deferred_step(daemon: &Daemon, req: Value) -> Option<Value> {
    let step = req["defer"].clone();
    let cmd = req["cmd"].clone();
    match handle(daemon, req).await {
        Ok(out) if out["rc"] == 0 || out["rc"].is_null() => None,
        Ok(out) => Some(json!({"deferred": {
            "step": step,
            "cmd": cmd,
            "rc": out["rc"],
            "stdout": out["stdout"],
            "stderr": out["stderr"],
        }})),
        Err(e) => Some(error_reply(&e)),
    }
}

/// Whether `message` is the agent's word for a wrong or missing become
/// password ("Incorrect su password", Ansible's words); those end the task
/// as errors, as in a stock run.
fn is_password_error(message: &str) -> bool {
    let first = message.lines().next().unwrap_or_default();
    let mut words = first.split(' ');
    matches!(
        (words.next(), words.next(), words.next(), words.next()),
        (
            Some("Incorrect" | "Missing"),
            Some(_),
            Some("password"),
            None
        )
    )
}

fn error_reply(e: &Error) -> Value {
    json!({"error": e.to_string(), "unreachable": e.is_unreachable()})
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(v: &Value, what: &str) -> Result<Vec<u8>, Error> {
    let s = v.as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| Error::Local(format!("{what}: {e}")))
}

/// The `become` part of a request: `{"method", "exe", "flags": [..],
/// "user", "password", "prompts": [..]}`, or null.
fn become_spec(v: &Value, timeout: Option<Duration>) -> Result<Option<BecomeSpec>, Error> {
    if v.is_null() {
        return Ok(None);
    }
    let words = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let flags = words(&v["flags"]);
    Ok(Some(BecomeSpec {
        method: v["method"].as_str().unwrap_or("sudo").to_owned(),
        exe: field(v, "exe")?.to_owned(),
        flags,
        user: field(v, "user")?.to_owned(),
        password: v["password"].as_str().map(str::to_owned),
        prompts: words(&v["prompts"]),
        timeout,
    }))
}

/// A JSON object of strings as (name, value) pairs; anything else as none.
fn string_map(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a str, Error> {
    req[name]
        .as_str()
        .ok_or_else(|| Error::Local(format!("request lacks {name:?}")))
}

async fn handle(daemon: &Daemon, req: Value) -> Result<Value, Error> {
    let spec: TargetSpec = serde_json::from_value(req["target"].clone())
        .map_err(|e| Error::Local(format!("bad target: {e}")))?;
    // A module's bundle: sent once per run, then named by its key.
    let bundle = match req["op"].as_str() {
        Some("module") => match daemon.bundle(&req["module"])? {
            Some(bundle) => Some(bundle),
            None => return Ok(json!({"need_zip": true})),
        },
        _ => None,
    };
    let host: Arc<Host> = daemon.controller.host(spec.target());
    let account = become_spec(&req["become"], spec.timeout.map(Duration::from_secs))?;
    let account = account.as_ref();
    // Accounts the request is about to remove or change: their idle child
    // agents end first (see `Host::retire_user`).
    for user in req["retire_users"].as_array().into_iter().flatten() {
        if let Some(user) = user.as_str() {
            host.retire_user(user).await;
        }
    }
    // The account's link, held for the whole request so that a child agent
    // in use is never the one ended to make room for another.
    let mut _held = None;
    if account.is_some() {
        match host.link_as(account).await {
            Ok(link) => _held = Some(link),
            // An account switch that sudo refuses looks as in a stock run:
            // the command "ran" with sudo's complaint on stderr, status 1.
            // (Not so a file transfer, a hello or a step sent without
            // waiting: their failure carries sudo's words as an error.)
            Err(Error::Remote(e))
                if e.kind == spindle_protocol::ErrorKind::PermissionDenied
                    && !is_password_error(&e.message)
                    && matches!(req["op"].as_str(), Some("exec" | "module"))
                    && req["defer"].is_null() =>
            {
                return Ok(json!({"rc": 1, "stdout": "", "stderr": b64(e.message.as_bytes())}));
            }
            // No prompt in time: the host counts as unreachable, as with
            // the ssh plugin.
            Err(Error::Remote(e)) if e.kind == spindle_protocol::ErrorKind::TimedOut => {
                return Err(Error::unreachable(
                    &host.target().dest.to_string(),
                    e.message,
                ));
            }
            Err(Error::Remote(e)) if e.kind != spindle_protocol::ErrorKind::Io => {
                return Ok(json!({"error": e.message, "plain": true}));
            }
            Err(e) => return Err(e),
        }
    }
    match field(&req, "op")? {
        "exec" => {
            // As sshd runs a command: with the login shell; as another
            // account, with /bin/sh, as sudo runs Ansible's become command
            // (that account's shell may well be nologin).
            let login = host.link().await?;
            // It may install or remove interpreters: discovery must look
            // again (see "hello"), whichever account asks. Not so Ansible's
            // temp dir steps.
            if req["defer"].is_null() {
                login.note_command();
                if let Some(link) = &_held {
                    link.note_command();
                }
            }
            // The local connection names its own (Ansible's executable).
            let shell = match (account, login.hello().shell.as_str()) {
                _ if req["shell"].is_string() => field(&req, "shell")?,
                (Some(_), _) | (None, "") => "/bin/sh",
                (None, s) => s,
            };
            let mut exec = Exec::argv([shell, "-c", field(&req, "cmd")?]);
            exec.cwd = req["cwd"].as_str().map(str::to_owned);
            exec.pty = req["pty"].as_bool().unwrap_or(false);
            // What sshd sets for a session on a terminal (`TERM` from the
            // client's), say.
            exec.env = string_map(&req["env"]);
            // Ansible's temp dir steps: done by the agent itself when it
            // can do exactly what the command would.
            if !req["shortcut"].is_null() {
                exec.shortcut = Some(
                    serde_json::from_value(req["shortcut"].clone())
                        .map_err(|e| Error::Local(format!("bad shortcut: {e}")))?,
                );
            }
            if !req["stdin"].is_null() {
                exec.stdin = Some(unb64(&req["stdin"], "stdin")?.into());
            }
            let out = host.exec_as(account, exec).await?;
            Ok(
                json!({"rc": exit_code(out.code, out.signal), "stdout": b64(&out.stdout), "stderr": b64(&out.stderr)}),
            )
        }
        "module" => {
            let m = &req["module"];
            let entry = match field(m, "entry")? {
                "loader" => ModuleEntry::Loader,
                _ => ModuleEntry::Runpy,
            };
            let (zip, hash) = bundle.ok_or_else(|| Error::Local("no module bundle".into()))?;
            let mut module = Module::with_bundle(
                zip,
                hash,
                entry,
                field(m, "fqn")?.to_owned(),
                field(m, "params")?.to_owned(),
            );
            module.profile = m["profile"].as_str().map(str::to_owned);
            module.extensions = m["extensions"].as_str().map(str::to_owned);
            module.secrets = m["secrets"].as_str().map(str::to_owned);
            module.rlimit_nofile = m["rlimit_nofile"].as_u64().unwrap_or(0);
            module.cwd = req["cwd"].as_str().map(str::to_owned);
            module.pty = req["pty"].as_bool().unwrap_or(false);
            let env = string_map(&req["env"]);
            let out = host
                .run_module_as(account, field(&req, "python")?, &module, env)
                .await?;
            Ok(
                json!({"rc": exit_code(out.code, out.signal), "stdout": b64(&out.stdout), "stderr": b64(&out.stderr)}),
            )
        }
        "put" => {
            let mut put = Put::new(field(&req, "dst")?);
            put.scratch = req["scratch"].as_bool().unwrap_or(false);
            if req["data"].is_string() {
                // A small file the plugin read itself (so that it may be
                // sent without waiting: the local file may be gone by then).
                let data = unb64(&req["data"], "data")?;
                // A module file: the agent makes its bundle's base64 (and
                // usually holds the bundle already).
                let data = if req["splice"].is_object() {
                    daemon.splice(&req["splice"], data)
                } else {
                    Err(data)
                };
                match data {
                    Ok((data, at, (zip, hash))) => {
                        host.put_spliced_as(account, data, at, (&zip, &hash), put)
                            .await?;
                    }
                    Err(data) => {
                        host.put_as(account, &data[..], data.len() as u64, put)
                            .await?;
                    }
                }
            } else {
                host.put_path_as(account, &PathBuf::from(field(&req, "src")?), put)
                    .await?;
            }
            Ok(json!({}))
        }
        "fetch" => {
            host.fetch_file_as(account, field(&req, "src")?, Path::new(field(&req, "dst")?))
                .await?;
            Ok(json!({}))
        }
        "hello" => {
            // Who the agent is and which interpreters it found: answers
            // interpreter discovery without running anything.
            let link = host.link_as(account).await?;
            let h = link.hello();
            // Looked up when the agent started: stale once a command may
            // have changed what is installed; the plugin then runs
            // Ansible's discovery command itself.
            let stale = link.ran_commands() || host.link().await?.ran_commands();
            let probes: Vec<Value> = if stale {
                Vec::new()
            } else {
                h.probes.iter().map(|p| json!([p.name, p.path])).collect()
            };
            Ok(json!({"user": h.user, "home": h.home, "pythons": h.pythons, "probes": probes}))
        }
        "reset" => {
            host.disconnect().await;
            Ok(json!({}))
        }
        other => Err(Error::Local(format!("unknown operation {other:?}"))),
    }
}

/// The exit status as a shell reports it: the code, or 128 + signal.
fn exit_code(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::is_password_error;

    #[test]
    fn password_errors_are_ansibles_words() {
        assert!(is_password_error("Incorrect sudo password"));
        assert!(is_password_error("Incorrect su password"));
        assert!(is_password_error(
            "Missing sudo password\nSpindle becomes root by…"
        ));
        assert!(!is_password_error("sudo: a password is required"));
        assert!(!is_password_error("Incorrect password for the su command"));
    }
}
