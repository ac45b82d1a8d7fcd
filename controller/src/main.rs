//! `spindle`: try the transport by hand.
//!
//! ```text
//! spindle exec [user@]host[:port] -- uname -a
//! spindle put ./big.iso host:/srv/big.iso
//! spindle fetch host:/etc/os-release ./os-release
//! spindle ping host
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use spindle_controller::protocol::{Command as RemoteCommand, Exec, Put, StreamKind};
use spindle_controller::{
    AgentStore, Controller, Destination, Host, SshOptions, Target, Transport,
};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "spindle",
    version,
    about = "Run commands and move files through Spindle's in-memory agent"
)]
struct Cli {
    /// More logs (-v: debug, -vv: trace). SPINDLE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(flatten)]
    ssh: SshArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct SshArgs {
    /// Identity file for ssh.
    #[arg(short = 'i', long, global = true)]
    identity: Option<PathBuf>,
    /// An ssh option (as `ssh -o`); repeatable.
    #[arg(short = 'o', global = true)]
    option: Vec<String>,
    /// An ssh config file (as `ssh -F`).
    #[arg(short = 'F', global = true)]
    config: Option<PathBuf>,
    /// An extra ssh argument; repeatable.
    #[arg(long = "ssh-arg", global = true, allow_hyphen_values = true)]
    ssh_arg: Vec<String>,
    /// The ssh program.
    #[arg(long, global = true, default_value = "ssh")]
    ssh_program: String,
    /// Seconds allowed for connecting and for a silent link before it counts as dead.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    /// Python on the target to bootstrap with (default: the target picks).
    #[arg(long, global = true)]
    python: Option<String>,
    /// Directory with the agents and their manifest.
    #[arg(long, global = true)]
    agent_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command: `spindle exec host -- argv...`, or one argument as a shell command.
    Exec {
        host: String,
        /// Run on a pseudo-terminal.
        #[arg(long)]
        pty: bool,
        /// Kill the command after this many seconds.
        #[arg(long)]
        kill_after: Option<u64>,
        /// Print timings to stderr.
        #[arg(long)]
        time: bool,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Copy a local file to `host:path`, atomically.
    Put {
        local: PathBuf,
        remote: String,
        /// Permission bits for the new file, in octal (default: the local file's).
        #[arg(long, value_parser = parse_octal)]
        mode: Option<u32>,
    },
    /// Copy `host:path` to a local file, atomically.
    Fetch { remote: String, local: PathBuf },
    /// Run a pipelined Ansible module payload (as Ansible would send it) in
    /// the target's warm interpreter; prints the module's raw output.
    Module {
        host: String,
        /// The payload file (an AnsiballZ wrapper).
        payload: PathBuf,
        /// Python on the target that runs the module.
        #[arg(long = "interpreter", default_value = "/usr/bin/python3")]
        interpreter: String,
        /// Run it this many times (the code travels once).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Answer ssh's password prompt for a connection the controller makes
    /// (ssh runs this as its SSH_ASKPASS program).
    #[command(hide = true)]
    Askpass {
        #[arg(default_value = "")]
        prompt: String,
    },
    /// Serve the Ansible plugin on a UNIX socket until `--parent-pid` exits.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        parent_pid: Option<u32>,
        /// Keep the agents' log records (debug ones too) and return each
        /// host's with its next reply (the plugin shows them at -vvv).
        #[arg(long)]
        agent_log: bool,
    },
    /// Connect, start the agent, and measure round trips.
    Ping {
        host: String,
        /// Round trips to time after connecting (pings, then `true` execs).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Print the measurements as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> std::process::ExitCode {
    // ssh runs its SSH_ASKPASS program with the prompt as the only
    // argument; the controller sets that up with the socket in the
    // environment (see `spindle_controller::askpass`).
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 2 && std::env::var_os(spindle_controller::askpass::SOCKET_VAR).is_some() {
        let code = spindle_controller::askpass::client(&args[1]);
        return std::process::ExitCode::from(code as u8);
    }
    let cli = Cli::parse();
    if let Command::Askpass { prompt } = &cli.command {
        let code = spindle_controller::askpass::client(prompt);
        return std::process::ExitCode::from(code as u8);
    }
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spindle: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("spindle: {e:#}");
            // Like ssh: 255 when the host could not be reached.
            let unreachable = e
                .downcast_ref::<spindle_controller::Error>()
                .is_some_and(|e| e.is_unreachable());
            std::process::ExitCode::from(if unreachable { 255 } else { 1 })
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<u8> {
    let agents = AgentStore::open(cli.ssh.agent_dir.as_deref())?;
    let ssh = &cli.ssh;
    let timeout = Duration::from_secs(ssh.timeout.max(1));
    let transport = Transport::Ssh(SshOptions {
        program: ssh.ssh_program.clone(),
        config: ssh.config.clone(),
        identity: ssh.identity.clone(),
        options: ssh.option.clone(),
        extra_args: ssh.ssh_arg.clone(),
        connect_timeout: timeout,
        dead_after: Some(timeout),
        password: None,
    });
    let mut controller = Controller::new(agents);
    controller.connect_timeout = timeout;
    // Child agents (become accounts) kept per host.
    if let Some(n) = std::env::var("SPINDLE_MAX_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        controller.max_accounts = n;
    }
    let host = |spec: &str| -> Result<Arc<Host>> {
        let dest: Destination = spec.parse().map_err(anyhow::Error::msg)?;
        Ok(controller.host(Target {
            transport: transport.clone(),
            dest,
            python: ssh.python.clone(),
        }))
    };
    match cli.command {
        Command::Exec {
            host: h,
            pty,
            kill_after,
            time,
            argv,
        } => {
            let host = host(&h)?;
            let t0 = Instant::now();
            host.link().await?;
            let connected = t0.elapsed();
            let command = match argv.as_slice() {
                [one] => RemoteCommand::Shell(one.clone()),
                _ => RemoteCommand::Argv(argv),
            };
            let req = Exec {
                pty,
                timeout_ms: kill_after.map(|s| s * 1000),
                ..Exec::new(command)
            };
            let t1 = Instant::now();
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
            let r = host
                .exec_with(req, |kind, data| {
                    let res = match kind {
                        StreamKind::Stderr => err.write_all(data),
                        _ => out.write_all(data),
                    };
                    res.map_err(|e| spindle_controller::Error::local("writing output", e))
                })
                .await?;
            out.flush()?;
            if time {
                eprintln!(
                    "spindle: connect+bootstrap {:.1} ms, exec {:.1} ms",
                    connected.as_secs_f64() * 1e3,
                    t1.elapsed().as_secs_f64() * 1e3
                );
            }
            if r.timed_out {
                eprintln!("spindle: command killed after {}s", kill_after.unwrap_or(0));
            }
            Ok(match (r.code, r.signal) {
                (Some(c), _) => c as u8,
                (None, Some(s)) => 128u8.wrapping_add(s as u8),
                _ => 1,
            })
        }
        Command::Put {
            local,
            remote,
            mode,
        } => {
            let (h, path) = split_remote(&remote)?;
            let host = host(h)?;
            let t0 = Instant::now();
            let req = Put {
                mode,
                ..Put::new(path)
            };
            let r = host
                .put_file(&local, req)
                .await
                .with_context(|| format!("copying {} to {remote}", local.display()))?;
            report_transfer(r.size, t0);
            Ok(0)
        }
        Command::Fetch { remote, local } => {
            let (h, path) = split_remote(&remote)?;
            let host = host(h)?;
            let t0 = Instant::now();
            let r = host
                .fetch_file(path, &local)
                .await
                .with_context(|| format!("copying {remote} to {}", local.display()))?;
            report_transfer(r.size, t0);
            Ok(0)
        }
        Command::Askpass { .. } => unreachable!("answered before the runtime starts"),
        Command::Serve {
            socket,
            parent_pid,
            agent_log,
        } => {
            if agent_log {
                spindle_controller::agent_log::enable();
            }
            spindle_controller::serve::serve(&socket, parent_pid, controller).await?;
            Ok(0)
        }
        Command::Module {
            host: h,
            payload,
            interpreter,
            repeat,
        } => {
            let host = host(&h)?;
            let module = split_payload(&payload)?;
            let mut code = 0;
            for i in 0..repeat.max(1) {
                let t = Instant::now();
                let out = host.run_module(&interpreter, &module, Vec::new()).await?;
                std::io::stdout().write_all(&out.stdout)?;
                std::io::stderr().write_all(&out.stderr)?;
                eprintln!(
                    "spindle: run {} took {:.1} ms",
                    i + 1,
                    t.elapsed().as_secs_f64() * 1e3
                );
                code = out.code.unwrap_or(1);
            }
            Ok(code as u8)
        }
        Command::Ping {
            host: h,
            count,
            json,
        } => {
            let host = host(&h)?;
            let t0 = Instant::now();
            let link = host.link().await?;
            let boot = t0.elapsed();
            let hello = link.hello().clone();
            let count = count.max(1);
            let mut pings = Vec::new();
            for _ in 0..count {
                let t = Instant::now();
                host.ping().await?;
                pings.push(t.elapsed());
            }
            let mut execs = Vec::new();
            for _ in 0..count {
                let t = Instant::now();
                let req = Exec::argv(["true"]);
                host.exec(req).await?;
                execs.push(t.elapsed());
            }
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let (ping, exec) = (ms(median(&mut pings)), ms(median(&mut execs)));
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "bootstrap_ms": ms(boot),
                        "ping_median_ms": ping,
                        "exec_median_ms": exec,
                        "count": count,
                        "arch": hello.arch,
                    })
                );
            } else {
                println!(
                    "{h}: agent pid {} as {} ({}), pythons: {}",
                    hello.pid,
                    hello.user,
                    hello.arch,
                    hello.pythons.join(" ")
                );
                println!(
                    "bootstrap {:.1} ms; medians over {count}: ping {ping:.3} ms, exec true {exec:.3} ms",
                    ms(boot)
                );
            }
            Ok(0)
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Splits a payload with the plugin's `spindle_ansible.payload` (Python's
/// own literal parser reads the wrapper) into a runnable [`Module`].
fn split_payload(path: &std::path::Path) -> Result<spindle_controller::Module> {
    use base64::Engine;
    let plugin = std::env::var_os("SPINDLE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../ansible-plugin"))
        });
    let python = std::env::var("SPINDLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-m", "spindle_ansible.payload", "split"])
        .arg(path)
        .env("PYTHONPATH", &plugin)
        .output()
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        bail!(
            "splitting {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    #[derive(serde::Deserialize)]
    struct Split {
        zip_b64: String,
        entry: spindle_controller::protocol::ModuleEntry,
        fqn: String,
        params: String,
        profile: Option<String>,
        extensions: Option<String>,
        #[serde(default)]
        secrets: Option<String>,
        rlimit_nofile: u64,
    }
    let s: Split = serde_json::from_slice(&out.stdout).context("reading the split payload")?;
    let zip = base64::engine::general_purpose::STANDARD
        .decode(s.zip_b64)
        .context("decoding the module zip")?;
    let mut m = spindle_controller::Module::new(zip, s.entry, s.fqn, s.params);
    m.profile = s.profile;
    m.extensions = s.extensions;
    m.secrets = s.secrets;
    m.rlimit_nofile = s.rlimit_nofile;
    Ok(m)
}

/// Splits scp-style `host:path` at the first ':' outside brackets
/// (`user@host:/p`, `[::1]:/p`). A port goes in `-o Port=N` or ssh config.
fn split_remote(s: &str) -> Result<(&str, &str)> {
    let search_from = if s.starts_with('[') || s.contains("@[") {
        s.find(']').map_or(0, |i| i + 1)
    } else {
        0
    };
    let Some(colon) = s[search_from..].find(':').map(|i| i + search_from) else {
        bail!("{s:?}: expected host:path");
    };
    let (h, p) = (&s[..colon], &s[colon + 1..]);
    if h.is_empty() || p.is_empty() {
        bail!("{s:?}: expected host:path");
    }
    Ok((h, p))
}

fn report_transfer(size: u64, t0: Instant) {
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "spindle: {size} bytes in {:.2} s ({:.1} MB/s)",
        secs,
        size as f64 / secs.max(1e-9) / 1e6
    );
}
