//! `cargo xtask bench transport`: Spindle's transport against OpenSSH, side
//! by side in one run, at each requested RTT on the testbed.
//!
//! Measured per RTT: the exec round trip (Spindle `exec true` on a live
//! link vs `ssh host true` over a ControlMaster), time to the first reply
//! on a fresh connection (Spindle connect+bootstrap+ping vs a fresh
//! `ssh host true`), and put/fetch throughput of one file (Spindle vs
//! scp). Every figure is a median of several runs. The release `spindle`
//! binary is driven as a user would; nothing is timed inside tests.

use crate::{agents, release_build, testbed};
use anyhow::{bail, ensure, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    suite: Suite,
    /// RTTs to emulate on the testbed, in ms.
    #[arg(long, value_delimiter = ',', default_value = "0,30")]
    rtt_ms: Vec<u32>,
    /// Size of the transfer file in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Write the result table here (Markdown) as well as printing it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `bench ansible`: only these playbooks (comma separated: hostname100,
    /// loop200, files, become30, become30su, become30doas, hostname100x10,
    /// localhost100); all of them otherwise.
    #[arg(long, value_delimiter = ',')]
    playbooks: Vec<String>,
    /// `bench ansible`: draw the wall times as a bar chart (PNG) here.
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Suite {
    Transport,
    /// Per-task time of Ansible modules: stock pipelining over a
    /// ControlMaster vs Spindle's warm interpreters.
    Modules,
    /// Whole playbooks: stock ssh with pipelining, Mitogen, Spindle's
    /// connection plugin and Spindle's strategy.
    Ansible,
}

const HOST: &str = "sp1";
const STATE_DIR: &str = "/var/lib/spindle-testbed";

pub fn run(args: Args) -> Result<()> {
    match args.suite {
        Suite::Modules => return modules(&args),
        Suite::Ansible => return ansible(&args),
        Suite::Transport => {}
    }
    let spindle = release_build()?;
    let file = PathBuf::from(format!("/var/tmp/spindle-bench-{}.bin", args.size_mib));
    make_file(&file, args.size_mib)?;

    let mut table = String::new();
    writeln!(table, "| RTT | measurement | Spindle | OpenSSH | ratio |")?;
    writeln!(table, "|---|---|---|---|---|")?;
    for &rtt in &args.rtt_ms {
        testbed::run(testbed::Command::Up {
            hosts: 4,
            rtt_ms: rtt,
        })?;
        let b = Bench {
            spindle: &spindle,
            cfg: format!("{STATE_DIR}/ssh_config"),
            runs: args.runs.max(1),
        };
        let rows = b.all(&file, args.size_mib)?;
        for (what, ours, theirs, unit) in rows {
            let ratio = if unit == "MB/s" {
                ours / theirs
            } else {
                theirs / ours
            };
            writeln!(
                table,
                "| {rtt} ms | {what} | {ours:.2} {unit} | {theirs:.2} {unit} | {ratio:.2}x |"
            )?;
        }
    }
    let _ = std::fs::remove_file(&file);
    report(&args, &table)?;
    println!("ratio: how many times better Spindle is (time: OpenSSH/Spindle, throughput: Spindle/OpenSSH)");
    Ok(())
}

struct Bench<'a> {
    spindle: &'a Path,
    cfg: String,
    runs: usize,
}

type Row = (&'static str, f64, f64, &'static str);

impl Bench<'_> {
    fn all(&self, file: &Path, size_mib: u64) -> Result<Vec<Row>> {
        let ping = self.spindle_ping(200, &[])?;
        let exec_ssh = self.ssh_master_exec(50)?;
        let first = |ssh_opts: &[&str]| -> Result<(f64, f64)> {
            let ours =
                median((0..self.runs.max(5)).map(|_| Ok(self.spindle_ping(1, ssh_opts)?.0)))?;
            let ssh = median((0..self.runs.max(5)).map(|_| {
                time(|| {
                    quiet(
                        Command::new("ssh")
                            .args(["-F", &self.cfg])
                            .args(ssh_opts)
                            .args([HOST, "true"]),
                    )
                })
            }))?;
            Ok((ours, ssh))
        };
        let (first_ours, first_ssh) = first(&[])?;
        // OpenSSH 9's default key exchange (sntrup761x25519) takes most of
        // a fresh login here; the elliptic curve one alone shows what the
        // bootstrap itself costs.
        let (first_ours_ec, first_ssh_ec) = first(&["-oKexAlgorithms=curve25519-sha256"])?;
        let bytes = (size_mib << 20) as f64;
        let mbps = |secs: f64| bytes / secs / 1e6;
        let remote = "/var/tmp/spindle-bench.bin";
        let local_back = PathBuf::from("/var/tmp/spindle-bench-back.bin");
        // Each run writes a fresh destination: replacing the previous 1 GiB
        // copy would time the filesystem freeing it (and, for a rename over
        // it, ext4 flushing the new data early), not the transfer.
        let put_ours = median((0..self.runs).map(|_| {
            self.ssh(&["rm", "-f", remote])?;
            time(|| {
                self.spindle_cmd(&[
                    "put",
                    &file.display().to_string(),
                    &format!("{HOST}:{remote}"),
                ])
            })
        }))?;
        let put_scp = median((0..self.runs).map(|_| {
            self.ssh(&["rm", "-f", remote])?;
            time(|| self.scp(&file.display().to_string(), &format!("{HOST}:{remote}")))
        }))?;
        let get_ours = median((0..self.runs).map(|_| {
            let _ = std::fs::remove_file(&local_back);
            time(|| {
                self.spindle_cmd(&[
                    "fetch",
                    &format!("{HOST}:{remote}"),
                    &local_back.display().to_string(),
                ])
            })
        }))?;
        let get_scp = median((0..self.runs).map(|_| {
            let _ = std::fs::remove_file(&local_back);
            time(|| {
                self.scp(
                    &format!("{HOST}:{remote}"),
                    &local_back.display().to_string(),
                )
            })
        }))?;
        let _ = std::fs::remove_file(&local_back);
        self.ssh(&["rm", "-f", remote])?;
        Ok(vec![
            ("exec round trip (median)", ping.2, exec_ssh, "ms"),
            ("ping round trip (median)", ping.1, exec_ssh, "ms"),
            (
                "time to first reply, fresh connection",
                first_ours,
                first_ssh,
                "ms",
            ),
            (
                "the same, both with curve25519-sha256 key exchange",
                first_ours_ec,
                first_ssh_ec,
                "ms",
            ),
            (
                "put throughput",
                mbps(put_ours / 1e3),
                mbps(put_scp / 1e3),
                "MB/s",
            ),
            (
                "fetch throughput",
                mbps(get_ours / 1e3),
                mbps(get_scp / 1e3),
                "MB/s",
            ),
        ])
    }

    /// (bootstrap, ping median, exec median) in ms from `spindle ping --json`,
    /// with ssh options `ssh_opts` (`-oName=value`).
    fn spindle_ping(&self, count: u32, ssh_opts: &[&str]) -> Result<(f64, f64, f64)> {
        let out = Command::new(self.spindle)
            .args(["-F", &self.cfg])
            .args(
                ssh_opts
                    .iter()
                    .flat_map(|o| ["-o", o.trim_start_matches("-o")]),
            )
            .args(["ping", HOST, "--json", "--count", &count.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "spindle ping failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let f = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        Ok((
            f("bootstrap_ms")?,
            f("ping_median_ms")?,
            f("exec_median_ms")?,
        ))
    }

    /// Median of `n` `ssh host true` over one ControlMaster, in ms.
    fn ssh_master_exec(&self, n: usize) -> Result<f64> {
        self.with_master(|cp| {
            median((0..n).map(|_| {
                time(|| quiet(Command::new("ssh").args(["-F", &self.cfg, cp, HOST, "true"])))
            }))
        })
    }

    /// Runs `f` with a ControlMaster to the host up; `f` gets the
    /// `-oControlPath=…` argument that reaches it.
    fn with_master<T>(&self, f: impl FnOnce(&str) -> Result<T>) -> Result<T> {
        let sock = format!("/tmp/spindle-bench-cm-{}", std::process::id());
        let cp = format!("-oControlPath={sock}");
        let status = Command::new("ssh")
            .args([
                "-F",
                &self.cfg,
                "-oControlMaster=yes",
                &cp,
                "-oControlPersist=120",
                "-fN",
                HOST,
            ])
            .status()?;
        if !status.success() {
            bail!("could not start an ssh ControlMaster");
        }
        let result = f(&cp);
        let _ = Command::new("ssh")
            .args(["-F", &self.cfg, &cp, "-Oexit", HOST])
            .stderr(Stdio::null())
            .status();
        result
    }

    fn ssh(&self, cmd: &[&str]) -> Result<()> {
        quiet(Command::new("ssh").args(["-F", &self.cfg, HOST]).args(cmd))
    }

    fn scp(&self, from: &str, to: &str) -> Result<()> {
        quiet(Command::new("scp").args(["-q", "-F", &self.cfg, from, to]))
    }

    fn spindle_cmd(&self, args: &[&str]) -> Result<()> {
        quiet(
            Command::new(self.spindle)
                .args(["-F", &self.cfg])
                .args(args)
                .stderr(Stdio::null()),
        )
    }
}

fn quiet(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Wall time of `f` in ms.
fn time(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn median(samples: impl Iterator<Item = Result<f64>>) -> Result<f64> {
    let mut v = samples.collect::<Result<Vec<f64>>>()?;
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().context("no samples")
}

/// A file of incompressible bytes (ssh may compress), made once.
fn make_file(path: &Path, size_mib: u64) -> Result<()> {
    if path
        .metadata()
        .map(|m| m.len() == size_mib << 20)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let status = Command::new("head")
        .args(["-c", &(size_mib << 20).to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(path)?)
        .status()?;
    if !status.success() {
        bail!("writing {}", path.display());
    }
    Ok(())
}

/// `bench modules`: records the pipelined payloads of a stock run (ping and
/// `command: echo`), then times each as stock Ansible runs it per task
/// (`/bin/sh -c 'python3 && sleep 0'` with the payload on stdin, over a
/// ControlMaster) and as Spindle runs it (one request to a warm
/// interpreter, code already cached). Medians of 30.
fn modules(args: &Args) -> Result<()> {
    let spindle = release_build()?;
    crate::ansible_venv()?;
    let root = agents::workspace_root();
    let mut table = String::new();
    writeln!(
        table,
        "| RTT | module | Spindle (warm) | stock pipelining | ratio | target CPU per task, Spindle | target CPU per task, stock |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|")?;
    let mut on_target = String::new();
    for &rtt in &args.rtt_ms {
        testbed::run(testbed::Command::Up {
            hosts: 4,
            rtt_ms: rtt,
        })?;
        let records = record_payloads(&root)?;
        let b = Bench {
            spindle: &spindle,
            cfg: format!("{STATE_DIR}/ssh_config"),
            runs: 30,
        };
        for (name, payload) in records.iter().take(2) {
            // Target CPU per task: the difference between a full batch and
            // a batch of one cancels connecting and starting up.
            let per_task_cpu = |batch: &dyn Fn(&Bench) -> Result<f64>| -> Result<(f64, f64)> {
                let one = Bench {
                    spindle: b.spindle,
                    cfg: b.cfg.clone(),
                    runs: 1,
                };
                let c0 = testbed::cpu_ms(HOST)?;
                batch(&one)?;
                settle();
                let c1 = testbed::cpu_ms(HOST)?;
                let wall = batch(&b)?;
                settle();
                let c2 = testbed::cpu_ms(HOST)?;
                // The two batches differ by `runs - 1` warm tasks.
                Ok((wall, ((c2 - c1) - (c1 - c0)) / (b.runs - 1) as f64))
            };
            let (ours, ours_cpu) = per_task_cpu(&|b| b.spindle_module(payload))?;
            let (stock, stock_cpu) = per_task_cpu(&|b| b.stock_module(payload))?;
            writeln!(
                table,
                "| {rtt} ms | {name} | {ours:.1} ms | {stock:.1} ms | {:.2}x | {ours_cpu:.1} ms | {stock_cpu:.1} ms |",
                stock / ours
            )?;
            if rtt == args.rtt_ms[0] {
                let t = b.target_timings(payload)?;
                writeln!(
                    on_target,
                    "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                    t[0], t[1], t[2], t[3]
                )?;
            }
        }
    }
    writeln!(
        table,
        "\nOn the target, per warm task (medians of {} runs, from the agent's debug log):\n",
        30
    )?;
    writeln!(
        table,
        "| module | in the agent (request to reply) | task's process (task handed over to its end) | its CPU | overhead (agent minus process) |"
    )?;
    writeln!(table, "|---|---|---|---|---|")?;
    table.push_str(&on_target);
    report(args, &table)
}

/// Ends the ssh masters whose sockets lie in `dir` (each given 10 s), and
/// removes it.
fn end_masters(dir: &Path) {
    for socket in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = Command::new("timeout")
            .args(["10", "ssh", "-F", "none"])
            .arg("-oControlPath=".to_owned() + &socket.path().to_string_lossy())
            .args(["-Oexit", "master"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Lets the target reap what just finished, so its CPU is counted.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// Runs the recording playbook on the bench host; returns (module, payload).
fn record_payloads(root: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let dir = PathBuf::from(format!("/tmp/spindle-bench-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let plays = root.join("tests/ansible/record");
    quiet(
        Command::new(crate::ANSIBLE.venv().join("bin/ansible-playbook"))
            .args([
                "-i",
                &format!("{STATE_DIR}/inventory.ini"),
                "-c",
                "spindle_record",
            ])
            .args(["-e", &format!("target={HOST}")])
            .arg(plays.join("modules.yml"))
            .env(
                "ANSIBLE_CONNECTION_PLUGINS",
                plays.join("connection_plugins"),
            )
            .env("ANSIBLE_LIBRARY", plays.join("library"))
            .env("ANSIBLE_PIPELINING", "True")
            // No ControlPersist master outliving the run (and the host lock).
            .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
            .env("SPINDLE_RECORD_DIR", &dir),
    )?;
    Ok(vec![
        ("ping", dir.join("000.payload")),
        ("command: echo there", dir.join("001.payload")),
    ])
}

impl Bench<'_> {
    /// Median per-run time reported by `spindle module --repeat`, after the
    /// first run (which starts the interpreter and sends the code).
    fn spindle_module(&self, payload: &Path) -> Result<f64> {
        let log = self.repeat_module(payload, false)?;
        let times = log
            .lines()
            .filter_map(|l| l.split(" took ").nth(1))
            .filter_map(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
            .skip(1)
            .map(Ok)
            .collect::<Vec<_>>();
        median(times.into_iter())
    }

    /// Medians, in ms, of what the agent logs per warm task at debug level:
    /// its time from request to reply, the task process's life (fork to
    /// reaping), that process's CPU, and the difference (the overhead).
    fn target_timings(&self, payload: &Path) -> Result<[f64; 4]> {
        let log = self.repeat_module(payload, true)?;
        let mut columns: [Vec<f64>; 4] = Default::default();
        let records = log
            .lines()
            .filter(|l| l.contains(" us in the agent, "))
            .skip(1); // the first run starts the interpreter
        for line in records {
            let (_, figures) = line
                .rsplit_once("module ")
                .and_then(|(_, r)| r.split_once(": "))
                .with_context(|| format!("unexpected timing record: {line}"))?;
            let numbers: Vec<f64> = figures
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .map(|n| n.parse::<f64>().map(|us| us / 1e3))
                .collect::<Result<_, _>>()?;
            ensure!(numbers.len() == 4, "unexpected timing record: {line}");
            for (column, n) in columns.iter_mut().zip(numbers) {
                column.push(n);
            }
        }
        ensure!(
            columns[0].len() == self.runs,
            "expected {} timing records from the agent, found {}",
            self.runs,
            columns[0].len()
        );
        let mut medians = [0.0; 4];
        for (m, column) in medians.iter_mut().zip(columns) {
            *m = median(column.into_iter().map(Ok))?;
        }
        Ok(medians)
    }

    /// `spindle module --repeat` (runs + 1 times); returns its stderr.
    fn repeat_module(&self, payload: &Path, verbose: bool) -> Result<String> {
        let out = Command::new(self.spindle)
            .args(verbose.then_some("-v"))
            .args(["-F", &self.cfg, "module", HOST])
            .arg(payload)
            .args(["--repeat", &(self.runs + 1).to_string()])
            .output()?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "spindle module failed: {log}");
        Ok(log)
    }

    /// Median wall time of stock Ansible's pipelined module command.
    fn stock_module(&self, payload: &Path) -> Result<f64> {
        self.with_master(|cp| {
            median((0..self.runs).map(|_| {
                time(|| {
                    quiet(
                        Command::new("ssh")
                            .args([
                                "-F",
                                &self.cfg,
                                cp,
                                HOST,
                                "/bin/sh -c '/usr/bin/python3 && sleep 0'",
                            ])
                            .stdin(std::fs::File::open(payload)?),
                    )
                })
            }))
        })
    }
}

/// `bench ansible`: wall time and bytes on the link for whole playbooks,
/// stock (ssh, pipelining, ControlPersist as shipped) against Spindle's
/// connection plugin, medians of `--runs`. Every run starts cold: it gets
/// a control path directory of its own, and the ssh masters it leaves are
/// ended with it (a master left by an earlier run would spare the next
/// one its login, and the login's bytes).
fn ansible(args: &Args) -> Result<()> {
    let spindle = release_build()?;
    let venv = crate::ANSIBLE_BENCH.install()?;
    let root = agents::workspace_root();
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut playbooks = write_playbooks(&dir)?;
    if !args.playbooks.is_empty() {
        playbooks.retain(|p| {
            args.playbooks
                .iter()
                .any(|name| Some(name.as_str()) == p.file.strip_suffix(".yml"))
        });
        anyhow::ensure!(
            !playbooks.is_empty(),
            "no such playbook: {:?}",
            args.playbooks
        );
    }
    let mitogen = mitogen_strategies(&venv)?;
    let plugins = root.join("ansible-plugin");
    let ours = plugins.join("connection_plugins").into_os_string();
    // The connection plugin run serves local hosts too, as the README
    // sets it up.
    let ours_and_local = std::env::join_paths([
        plugins.join("connection_plugins"),
        plugins.join("serve_local"),
    ])?;
    let runners = [
        Runner {
            name: "stock ssh + pipelining",
            connection: "ssh",
            connection_plugins: ours.clone(),
            strategy: None,
        },
        Runner {
            name: "Mitogen",
            connection: "ssh",
            connection_plugins: ours.clone(),
            strategy: Some(("mitogen_linear", mitogen)),
        },
        Runner {
            name: "Spindle, connection plugin",
            connection: "spindle",
            connection_plugins: ours_and_local,
            strategy: None,
        },
        Runner {
            name: "Spindle, strategy",
            connection: "ssh",
            connection_plugins: ours,
            strategy: Some(("spindle_linear", plugins.join("strategy_plugins"))),
        },
    ];
    let mut walls = String::new();
    writeln!(
        walls,
        "| RTT | playbook | {} | Spindle vs stock | Spindle vs Mitogen |",
        runners
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(walls, "|---|---|{}---|---|", "---|".repeat(runners.len()))?;
    let mut details = String::new();
    writeln!(
        details,
        "| RTT | playbook | run by | wall | controller CPU | target CPU | bytes on the link |"
    )?;
    writeln!(details, "|---|---|---|---|---|---|---|")?;
    let controller_group = PathBuf::from("/sys/fs/cgroup/cpuacct/spindle-bench-controller");
    std::fs::create_dir_all(&controller_group)
        .with_context(|| format!("creating {}", controller_group.display()))?;
    let controller_cpu = || -> Result<f64> {
        let ns: f64 = std::fs::read_to_string(controller_group.join("cpuacct.usage"))?
            .trim()
            .parse()?;
        Ok(ns / 1e6)
    };
    let mut chart = Vec::new();
    for &rtt in &args.rtt_ms {
        let needed = playbooks.iter().map(|p| p.hosts.len()).max().unwrap_or(1);
        testbed::run(testbed::Command::Up {
            hosts: (needed as u8).max(4),
            rtt_ms: rtt,
        })?;
        for Playbook { name, file, hosts } in &playbooks {
            if hosts.len() != 1 && Some(&rtt) != args.rtt_ms.first() {
                // On the controller's own machine the link's RTT is not
                // involved; the 10-host row runs once, at the first RTT,
                // to keep the whole run under an hour.
                continue;
            }
            // Summed over the playbook's hosts.
            let bytes = || -> Result<u64> {
                hosts
                    .iter()
                    .map(|h| link_bytes(&format!("spv{}", &h[2..])))
                    .sum()
            };
            let target_cpu = || -> Result<f64> { hosts.iter().map(|h| testbed::cpu_ms(h)).sum() };
            let run_once = |runner: &Runner| -> Result<Measured> {
                let before = (bytes()?, controller_cpu()?, target_cpu()?);
                // The run and everything it starts (workers, ssh, the
                // Spindle controller) in one accounting group.
                let script = format!(
                    "echo $$ > {}/cgroup.procs && exec \"$@\"",
                    controller_group.display()
                );
                let masters = PathBuf::from(format!(
                    "/tmp/spindle-bench-cp-{}-{}",
                    std::process::id(),
                    runner
                        .name
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
                ));
                let _ = std::fs::remove_dir_all(&masters);
                std::fs::create_dir_all(&masters)?;
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &script, "sh"])
                    .arg(venv.join("bin/ansible-playbook"))
                    .args(["-i", &format!("{STATE_DIR}/inventory.ini")])
                    .args(["-c", runner.connection])
                    .arg(dir.join(file))
                    .current_dir(&dir)
                    .env("ANSIBLE_PIPELINING", "True")
                    .env("ANSIBLE_FORKS", MANY_HOSTS.to_string())
                    .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
                    .env("ANSIBLE_CONNECTION_PLUGINS", &runner.connection_plugins)
                    .env("SPINDLE_BIN", &spindle)
                    .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &masters);
                if let Some((strategy, plugins)) = &runner.strategy {
                    cmd.env("ANSIBLE_STRATEGY", strategy)
                        .env("ANSIBLE_STRATEGY_PLUGINS", plugins);
                }
                let wall = time(|| quiet(&mut cmd));
                end_masters(&masters);
                let wall = wall?;
                settle();
                Ok(Measured {
                    wall,
                    bytes: (bytes()? - before.0) as f64,
                    controller_cpu: controller_cpu()? - before.1,
                    target_cpu: target_cpu()? - before.2,
                })
            };
            // Round by round, every runner once per round: this machine
            // has slow spells lasting a few runs, which would otherwise
            // fall on one runner's runs alone. A runner that fails
            // (Mitogen with an ansible-core it does not support, say) is
            // reported as such and left out of later rounds; the others
            // still run.
            let mut runs: Vec<Option<Vec<Measured>>> =
                runners.iter().map(|_| Some(Vec::new())).collect();
            for _ in 0..args.runs.max(1) {
                for (runner, done) in runners.iter().zip(runs.iter_mut()) {
                    let Some(list) = done else { continue };
                    match run_once(runner) {
                        Ok(m) => list.push(m),
                        Err(e) => {
                            eprintln!("{} on {name} at {rtt} ms failed: {e:#}", runner.name);
                            *done = None;
                        }
                    }
                }
            }
            let results: Vec<Option<Measured>> = runs
                .into_iter()
                .map(|r| r.map(|list| Measured::median(&list)))
                .collect();
            let cell = |m: &Option<Measured>| match m {
                Some(m) => format!("{:.2} s", m.wall / 1e3),
                None => "failed".into(),
            };
            let ratio = |other: &Option<Measured>| match (other, &results[2]) {
                (Some(o), Some(ours)) => format!("{:.2}x", o.wall / ours.wall),
                _ => "–".into(),
            };
            writeln!(
                walls,
                "| {rtt} ms | {name} | {} | {} | {} |",
                results.iter().map(cell).collect::<Vec<_>>().join(" | "),
                ratio(&results[0]),
                ratio(&results[1]),
            )?;
            for (runner, m) in runners.iter().zip(&results) {
                let Some(m) = m else { continue };
                chart.push(serde_json::json!({
                    "rtt_ms": rtt, "playbook": name, "runner": runner.name, "wall_s": m.wall / 1e3,
                }));
                writeln!(
                    details,
                    "| {rtt} ms | {name} | {} | {:.2} s | {:.1} s | {:.1} s | {:.3} MB |",
                    runner.name,
                    m.wall / 1e3,
                    m.controller_cpu / 1e3,
                    m.target_cpu / 1e3,
                    m.bytes / 1e6
                )?;
            }
        }
    }
    // Back to the testbed the tests expect.
    testbed::run(testbed::Command::Up {
        hosts: 4,
        rtt_ms: 0,
    })?;
    let data = dir.join("ansible.json");
    std::fs::write(&data, serde_json::to_vec_pretty(&chart)?)?;
    if let Some(png) = &args.chart {
        let status = Command::new(venv.join("bin/python"))
            .arg(root.join("xtask/bench/chart.py"))
            .arg(&data)
            .arg(png)
            .status()
            .context("running xtask/bench/chart.py")?;
        anyhow::ensure!(status.success(), "drawing the chart failed");
    }
    report(args, &format!("{walls}\n{details}"))
}

/// Who runs a playbook: a connection type and the connection plugin
/// directories, perhaps with a strategy plugin (its name and directory).
struct Runner {
    name: &'static str,
    connection: &'static str,
    connection_plugins: std::ffi::OsString,
    strategy: Option<(&'static str, PathBuf)>,
}

/// Mitogen's strategy plugins in the bench venv.
fn mitogen_strategies(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib)? {
        let dir = entry?
            .path()
            .join("site-packages/ansible_mitogen/plugins/strategy");
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!("no ansible_mitogen in {}", lib.display())
}

/// A benchmark playbook: what it does, its file, and the testbed hosts it
/// runs on (none: the controller's own machine).
struct Playbook {
    name: &'static str,
    file: &'static str,
    hosts: Vec<String>,
}

/// Hosts the testbed has up during `bench ansible`: the 10-host row's.
const MANY_HOSTS: u8 = 10;

/// Writes the benchmark playbooks (and the files they copy) into `dir`.
fn write_playbooks(dir: &Path) -> Result<Vec<Playbook>> {
    let head = "- hosts: sp1\n  gather_facts: false\n  tasks:\n";
    let hundred = "    - command: hostname\n".repeat(100);
    std::fs::write(dir.join("hostname100.yml"), format!("{head}{hundred}"))?;
    let many: Vec<String> = (1..=MANY_HOSTS).map(|i| format!("sp{i}")).collect();
    std::fs::write(
        dir.join("hostname100x10.yml"),
        format!(
            "- hosts: {}\n  gather_facts: false\n  tasks:\n{hundred}",
            many.join(":")
        ),
    )?;
    std::fs::write(
        dir.join("localhost100.yml"),
        format!("- hosts: localhost\n  gather_facts: false\n  tasks:\n{hundred}"),
    )?;

    let looped =
        format!("{head}    - command: /bin/true\n      loop: \"{{{{ range(200) | list }}}}\"\n");
    std::fs::write(dir.join("loop200.yml"), looped)?;

    // 50 small files, 20 templates, one 20 MiB file.
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    for i in 0..50 {
        std::fs::write(
            files.join(format!("small{i}.txt")),
            format!("file {i}\n").repeat(40),
        )?;
    }
    for i in 0..20 {
        std::fs::write(
            files.join(format!("template{i}.j2")),
            format!(
                "template {i} on {{{{ inventory_hostname }}}}\n{}",
                "line\n".repeat(40)
            ),
        )?;
    }
    let big = files.join("big.bin");
    if std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0) != 20 << 20 {
        make_file(&big, 20)?;
    }
    let mut copies = format!(
        "{head}    - file:\n        path: /tmp/spindle-bench-files\n        state: directory\n"
    );
    copies.push_str(
        "    - copy:\n        src: files/small{{ item }}.txt\n        dest: /tmp/spindle-bench-files/\n      loop: \"{{ range(50) | list }}\"\n",
    );
    copies.push_str(
        "    - template:\n        src: files/template{{ item }}.j2\n        dest: /tmp/spindle-bench-files/template{{ item }}\n      loop: \"{{ range(20) | list }}\"\n",
    );
    copies.push_str(
        "    - copy:\n        src: files/big.bin\n        dest: /tmp/spindle-bench-files/big.bin\n",
    );
    // Each run starts from nothing, so every copy transfers.
    copies.push_str("    - file:\n        path: /tmp/spindle-bench-files\n        state: absent\n");
    std::fs::write(dir.join("files.yml"), copies)?;

    let mut switching = String::from(head);
    for i in 0..30 {
        switching.push_str(&format!(
            "    - command: id -un\n      become: {}\n",
            i % 2 == 0
        ));
    }
    std::fs::write(dir.join("become30.yml"), &switching)?;
    // The same with su, which asks for the target account's password.
    let su_head = "- hosts: sp1\n  gather_facts: false\n  vars:\n    \
                   ansible_become_method: su\n    ansible_become_password: root-pw\n  tasks:\n";
    std::fs::write(
        dir.join("become30su.yml"),
        switching.replacen(head, su_head, 1),
    )?;
    // And with doas (community.general's plugin), which lets the login
    // account become root without a password on the testbed.
    let doas_head = "- hosts: sp1\n  gather_facts: false\n  vars:\n    \
                     ansible_become_method: community.general.doas\n  tasks:\n";
    std::fs::write(
        dir.join("become30doas.yml"),
        switching.replacen(head, doas_head, 1),
    )?;
    let one = || vec![HOST.to_owned()];
    let playbook = |name, file, hosts| Playbook { name, file, hosts };
    Ok(vec![
        playbook("100 x command: hostname", "hostname100.yml", one()),
        playbook(
            "1 task looping command: /bin/true x 200",
            "loop200.yml",
            one(),
        ),
        playbook(
            "50 copy + 20 template + one 20 MiB copy",
            "files.yml",
            one(),
        ),
        playbook(
            "30 x command: id -un, become on and off",
            "become30.yml",
            one(),
        ),
        playbook(
            "30 x command: id -un, become (su, password) on and off",
            "become30su.yml",
            one(),
        ),
        playbook(
            "30 x command: id -un, become (doas) on and off",
            "become30doas.yml",
            one(),
        ),
        playbook(
            "100 x command: hostname on 10 hosts (forks 10)",
            "hostname100x10.yml",
            many,
        ),
        playbook(
            "100 x command: hostname on localhost (local connection)",
            "localhost100.yml",
            Vec::new(),
        ),
    ])
}

/// One playbook run: wall time (ms), bytes on the link, controller and
/// target CPU (ms).
#[derive(Clone, Copy)]
struct Measured {
    wall: f64,
    bytes: f64,
    controller_cpu: f64,
    target_cpu: f64,
}

impl Measured {
    /// Each figure's own median over `runs`.
    fn median(runs: &[Measured]) -> Measured {
        let m = |f: fn(&Measured) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Measured {
            wall: m(|r| r.wall),
            bytes: m(|r| r.bytes),
            controller_cpu: m(|r| r.controller_cpu),
            target_cpu: m(|r| r.target_cpu),
        }
    }
}

/// Bytes through a veth (both directions) so far.
fn link_bytes(dev: &str) -> Result<u64> {
    let mut total = 0;
    for dir in ["rx_bytes", "tx_bytes"] {
        let v = std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{dir}"))?;
        total += v.trim().parse::<u64>()?;
    }
    Ok(total)
}

/// Leaves the testbed at 0 ms again, prints the table and writes it to
/// `--out`.
fn report(args: &Args, table: &str) -> Result<()> {
    if args.rtt_ms.iter().any(|&r| r != 0) {
        testbed::run(testbed::Command::Up {
            hosts: 4,
            rtt_ms: 0,
        })?;
    }
    println!("\n{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
