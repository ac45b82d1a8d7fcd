//! `cargo xtask ansible-suite`: ansible-core's own integration targets, from
//! the source distribution of the installed release, run by its own
//! `ansible-test` against testbed hosts twice: once with Ansible's ssh
//! and local connections, once with Spindle serving `ssh` and `local` (the
//! `serve_ssh` and `serve_local` plugin directories in the run's
//! ansible.cfg). A target that passes stock and fails under Spindle fails
//! the command.
//!
//! The targets are destructive (they add users, edit files under /etc), so
//! each side gets a freshly built host of its own, removed afterwards.
//! ansible-test logs in as root with its own key (`~/.ansible/test/id_rsa`),
//! which the suite authorizes there.
//!
//! The targets run in two lanes at once, each with hosts, source trees and
//! ssh directories of its own: lane 0 (stock on `sp5`, Spindle on `sp6`)
//! takes the targets whose tasks on this machine (`local` connections,
//! `delegate_to: localhost`) use fixed paths in its /tmp or home, one after
//! another; lane 1 (`sp7`, `sp8`) takes the others, which touch only their
//! host, their own source tree and fresh temporary directories. A target's
//! stock run and its Spindle run never overlap. One `ansible-test` leaves about a core idle (one
//! `ansible-playbook` driving one host), which the second lane uses.
//!
//! Each side runs with an `ssh` first on its PATH (in
//! `target/ansible-suite/<side><lane>/ssh/`) that runs the system's with an
//! ssh config of the side's and notes its command lines. The config sends
//! `localhost` and `127.0.0.*` to the side's host: the targets
//! marked `needs/ssh` log in over ssh to "the controller" (ansible-test
//! checks `ssh localhost id` first), and the host is the controller's file
//! system underneath, so the Python paths they name exist there too. Both
//! sides' ssh (Ansible's and Spindle's controller's) read the same config.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{agents::workspace_root, testbed, Ansible, ANSIBLE, ANSIBLE_NEWEST};

/// The targets the suite runs unless told otherwise: everyday modules,
/// module styles, async, strategies, delegation, timeouts and become; with
/// what each shares with the other lane.
const TARGETS: &[(&str, Footprint)] = &[
    ("ping", Own),
    ("command_shell", Shared),
    ("copy", Shared),
    ("file", Own),
    ("template", Shared),
    ("fetch", Shared),
    ("stat", Own),
    ("lineinfile", Own),
    ("blockinfile", Own),
    ("assemble", Own),
    ("raw", Own),
    ("script", Own),
    ("slurp", Own),
    ("tempfile", Own),
    ("async", Shared),
    ("async_fail", Own),
    ("environment", Own),
    ("remote_tmp", Own),
    ("want_json_modules_posix", Own),
    ("old_style_modules_posix", Own),
    ("binary_modules_posix", Own),
    ("module_utils", Shared),
    ("check_mode", Own),
    ("no_log", Shared),
    ("module_tracebacks", Shared),
    ("strategy_linear", Shared),
    ("strategy_free", Shared),
    ("strategy_host_pinned", Shared),
    ("delegate_to", Shared),
    ("loop-connection", Shared),
    ("task-timeout", Own),
    ("become", Own),
    ("become_su", Own),
    ("become_sudo", Own),
    ("become_unprivileged", Own),
    ("shell", Shared),
    ("interpreter_discovery_python", Shared),
    ("ansiballz_python", Own),
    ("module_utils_common.respawn", Own),
    ("module-serialization-profiles", Own),
    ("async_extra_data", Own),
    ("embedded_module", Own),
    ("wait_for_connection", Shared),
];

/// What a target touches beyond its hosts, which decides its lane.
#[derive(Clone, Copy, PartialEq)]
enum Footprint {
    /// Its own source tree and fresh temporary directories at most. (Some
    /// run tasks on this machine, such as `check_mode` and
    /// `want_json_modules_posix` through ansible-test's controller
    /// inventory, but only there.)
    Own,
    /// Fixed paths in this machine's /tmp or home, from tasks run here (a
    /// `local` connection or `delegate_to: localhost`).
    Shared,
}
use Footprint::{Own, Shared};

/// The lane a target runs in (see the module's documentation): a target
/// not in [`TARGETS`] counts as [`Shared`].
fn lane_of(target: &str) -> usize {
    match TARGETS.iter().find(|(name, _)| *name == target) {
        Some((_, Own)) => 1,
        _ => 0,
    }
}

/// Pieces of Spindle's fixed bootstrap command lines (spindle-bootstrap's
/// shell and Python one-liners): an ssh command line holding one started
/// an agent.
const BOOTSTRAP_MARKS: &[&str] = &["read -r l;eval", "exec(sys.stdin.buffer.readline())"];

/// What the controller logs (at debug level, in `spindle.log`) for each
/// agent it starts on its own machine for a `local` connection.
const SPAWN_MARK: &str = "\"spawned\"";

/// Lanes, and the testbed hosts they need (beyond the four the tests use:
/// two per lane).
const LANES: usize = 2;
const HOSTS: u8 = 4 + 2 * LANES as u8;
/// One target's run may take this long before it counts as hung.
const TARGET_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(clap::Args)]
pub struct Args {
    /// Targets to run (comma separated); the default list otherwise.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Use the newest ansible-core the tests cover (2.21, Python 3.12)
    /// instead of the default (2.19, Python 3.11).
    #[arg(long)]
    newest: bool,
    /// Run only Spindle's side; the stock side's outcomes come from the
    /// record checked in for this ansible-core release
    /// (`xtask/ansible-suite/stock-<version>.tsv`); targets it lacks run both
    /// ways. (The two sides cannot run at once: targets that run tasks on
    /// the controller itself share its home and /tmp.)
    #[arg(long)]
    spindle_only: bool,
    /// Write the stock side's outcomes into that record (the targets run
    /// replace their lines; the others are kept).
    #[arg(long, conflicts_with = "spindle_only")]
    record: bool,
}

impl Args {
    /// The default targets and release, Spindle's side only.
    pub fn spindle_only() -> Args {
        Args {
            targets: Vec::new(),
            newest: false,
            spindle_only: true,
            record: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Stock = 0,
    Spindle = 1,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Stock => "stock",
            Side::Spindle => "spindle",
        }
    }
    /// The side's host in `lane`: sp5 and sp6 for lane 0, and so on.
    fn host(self, lane: usize) -> String {
        format!("sp{}", 5 + 2 * lane + self as usize)
    }

    /// Its directory under the suite's work directory in `lane`.
    fn dir(self, work: &Path, lane: usize) -> PathBuf {
        work.join(format!("{}{lane}", self.name()))
    }
}

/// What one side runs with in one lane.
struct Place {
    side: Side,
    lane: usize,
    tree: PathBuf,
    ssh: PathBuf,
}

struct Outcome {
    passed: bool,
    seconds: f64,
    /// sshd logins during the run.
    logins: usize,
    /// Agents Spindle's controller started during the run: bootstrapped
    /// over ssh, or run here for `local` connections.
    agents: usize,
    log: PathBuf,
    /// Taken from the checked-in record, not run now.
    recorded: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ansible: &Ansible = if args.newest {
        &ANSIBLE_NEWEST
    } else {
        &ANSIBLE
    };
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|(t, _)| t.to_string()).collect()
    } else {
        args.targets
    };
    // The plugin finds the checkout's release build (ansible-test passes no
    // SPINDLE_BIN through), and the agents next to it.
    crate::release_build()?;
    let venv = ansible.install()?;
    let python = |code: &str| -> Result<String> {
        let out = Command::new(venv.join("bin/python"))
            .args(["-c", code])
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    let version = python("import ansible.release as r; print(r.__version__)")?;
    let controller_python = python("import sys; print('%d.%d' % sys.version_info[:2])")?;

    let work = workspace_root().join("target/ansible-suite");
    let sdist = fetch_sdist(&venv, &version, &work)?;
    let recorded = if args.spindle_only {
        read_record(&version)?
    } else {
        Default::default()
    };

    // Fresh hosts: dropping the suite's hosts first removes what an earlier
    // suite left on them.
    testbed_up(4)?;
    testbed_up(HOSTS)?;
    let key = ansible_test_key()?;
    // Several targets in both lanes install passlib into the venv when it
    // lacks it (`setup_passlib_controller`); two pip runs at once in one
    // venv could trip over each other, so it is there before they start.
    if python("import passlib").is_err() {
        let status = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "passlib",
            ])
            .status()?;
        ensure!(
            status.success(),
            "installing passlib into {}",
            venv.display()
        );
    }
    let controller_python_links = python_links(&venv)?;
    let mut lanes: Vec<Vec<(usize, &str)>> = vec![Vec::new(); LANES];
    for (i, target) in targets.iter().enumerate() {
        lanes[lane_of(target)].push((i, target));
    }
    let mut places: Vec<[Place; 2]> = Vec::new();
    for lane in 0..LANES {
        let place = |side: Side| -> Result<Place> {
            let host = side.host(lane);
            let ssh = ssh_dir(&work, side, lane, &key)?;
            // ansible-test's key for root. And "the controller's" Python, which
            // the `needs/ssh` targets run on the host (as `ansible_playbook_python`,
            // also as unprivileged users): /root traversable (pyenv's lie under
            // it), and the venv's interpreter names where the host cannot see
            // them (a checkout under /tmp, which is the host's own tmpfs).
            testbed::run_script(
                &host,
                &format!(
                    "cat >> /root/.ssh/authorized_keys && chmod o+x /root\n{controller_python_links}"
                ),
                &std::fs::read(key.with_extension("pub"))?,
            )?;
            let tree = unpack(&sdist, &side.dir(&work, lane).join("ansible-core"), side)?;
            Ok(Place {
                side,
                lane,
                tree,
                ssh,
            })
        };
        places.push([place(Side::Stock)?, place(Side::Spindle)?]);
    }

    println!(
        "ansible-core {version} (controller Python {controller_python}), {} targets in {LANES} lanes; \
         stock on {}, Spindle on {}",
        targets.len(),
        (0..LANES).map(|l| Side::Stock.host(l)).collect::<Vec<_>>().join(", "),
        (0..LANES).map(|l| Side::Spindle.host(l)).collect::<Vec<_>>().join(", "),
    );
    // A lane that fails stops the other before its next target.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let run_lane = |lane: usize| -> Result<Vec<(usize, String, Vec<Outcome>)>> {
        let mut rows = Vec::new();
        for &(i, target) in &lanes[lane] {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let run = |side: Side| {
                let place = &places[lane][side as usize];
                run_target(&venv, place, &controller_python, target, &work)
            };
            let stock = match recorded.get(target) {
                Some(&(passed, seconds, logins)) => Outcome {
                    passed,
                    seconds,
                    logins,
                    agents: 0,
                    log: record_file(&version),
                    recorded: true,
                },
                None => run(Side::Stock)?,
            };
            let row = vec![stock, run(Side::Spindle)?];
            println!(
                "{target:<28} stock {:<4} {:>6.1} s{}   spindle {:<4} {:>6.1} s",
                verdict(&row[0]),
                row[0].seconds,
                if row[0].recorded { " (recorded)" } else { "" },
                verdict(&row[1]),
                row[1].seconds
            );
            rows.push((i, target.to_owned(), row));
        }
        Ok(rows)
    };
    let results: Vec<Result<_>> = std::thread::scope(|scope| {
        let running: Vec<_> = (0..LANES)
            .map(|lane| {
                let (run_lane, stop) = (&run_lane, &stop);
                scope.spawn(move || {
                    let result = run_lane(lane);
                    if result.is_err() {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        running
            .into_iter()
            .map(|lane| lane.join().expect("a lane panicked"))
            .collect()
    });
    let mut numbered = Vec::new();
    let mut errors = Vec::new();
    for (lane, result) in results.into_iter().enumerate() {
        match result {
            Ok(rows) => numbered.extend(rows),
            Err(e) => errors.push(format!("lane {lane}: {e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    numbered.sort_by_key(|(i, _, _)| *i);
    let rows: Vec<(String, Vec<Outcome>)> =
        numbered.into_iter().map(|(_, t, row)| (t, row)).collect();
    testbed_up(4)?;

    let table = table(&version, &controller_python, &rows);
    println!("\n{table}");
    std::fs::write(work.join("results.md"), &table)?;
    if args.record {
        let mut text = format!(
            "# Stock ssh outcomes of `cargo xtask ansible-suite` for ansible-core {version}\n\
             # (controller Python {controller_python}), written by its --record.\n\
             # target\tverdict\tseconds\tssh logins\n"
        );
        // The targets run now replace their lines; the others keep theirs.
        let mut lines: Vec<(String, String)> = std::fs::read_to_string(record_file(&version))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| (l.split('\t').next().unwrap_or("").to_owned(), l.to_owned()))
            .collect();
        for (target, r) in &rows {
            let line = format!(
                "{target}\t{}\t{:.1}\t{}",
                verdict(&r[0]),
                r[0].seconds,
                r[0].logins
            );
            match lines.iter_mut().find(|(t, _)| t == target) {
                Some(old) => old.1 = line,
                None => lines.push((target.clone(), line)),
            }
        }
        for (_, line) in &lines {
            let _ = writeln!(text, "{line}");
        }
        std::fs::create_dir_all(record_file(&version).parent().expect("has a parent"))?;
        std::fs::write(record_file(&version), text)?;
        println!("recorded in {}", record_file(&version).display());
    }
    let regressions: Vec<String> = rows
        .iter()
        .filter(|(_, r)| r[0].passed && !r[1].passed)
        .map(|(t, r)| format!("{t} (log: {})", r[1].log.display()))
        .collect();
    if !regressions.is_empty() {
        bail!(
            "passes with stock ssh, fails with Spindle: {}",
            regressions.join(", ")
        );
    }
    Ok(())
}

/// The checked-in stock outcomes for an ansible-core release.
fn record_file(version: &str) -> PathBuf {
    workspace_root().join(format!("xtask/ansible-suite/stock-{version}.tsv"))
}

/// Target → (passed, seconds, ssh logins) from the record, if there is one.
fn read_record(version: &str) -> Result<std::collections::HashMap<String, (bool, f64, usize)>> {
    let file = record_file(version);
    let Ok(text) = std::fs::read_to_string(&file) else {
        println!("no stock record for ansible-core {version}: running both sides");
        return Ok(Default::default());
    };
    let mut out = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        ensure!(f.len() == 4, "{}: malformed line {line:?}", file.display());
        out.insert(
            f[0].to_owned(),
            (f[1] == "pass", f[2].parse()?, f[3].parse()?),
        );
    }
    Ok(out)
}

fn testbed_up(hosts: u8) -> Result<()> {
    testbed::run(testbed::Command::Up { hosts, rtt_ms: 0 })
}

fn verdict(o: &Outcome) -> &'static str {
    if o.passed {
        "pass"
    } else {
        "FAIL"
    }
}

/// The release's source distribution (it carries `test/`), downloaded once.
fn fetch_sdist(venv: &Path, version: &str, work: &Path) -> Result<PathBuf> {
    let file = work.join(format!("ansible_core-{version}.tar.gz"));
    if file.is_file() {
        return Ok(file);
    }
    std::fs::create_dir_all(work)?;
    let status = Command::new(venv.join("bin/pip"))
        .args(["download", "--quiet", "--disable-pip-version-check"])
        .args(["--no-deps", "--no-binary", ":all:", "--dest"])
        .arg(work)
        .arg(format!("ansible-core=={version}"))
        .status()?;
    ensure!(
        status.success() && file.is_file(),
        "downloading ansible-core {version}'s source distribution"
    );
    Ok(file)
}

/// A script that gives a testbed host the venv's interpreter names
/// (`bin/python`, `bin/python3`, …) where it lacks them, as links to the
/// interpreter they stand for.
fn python_links(venv: &Path) -> Result<String> {
    let bin = venv.join("bin");
    let mut script = String::new();
    for entry in std::fs::read_dir(&bin)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !name.starts_with("python") {
            continue;
        }
        let real = std::fs::canonicalize(&path)?;
        let (link, real) = (path.display().to_string(), real.display().to_string());
        ensure!(
            !link.contains('\'') && !real.contains('\''),
            "cannot quote {link} for the shell"
        );
        let _ = writeln!(
            script,
            "[ -e '{link}' ] || {{ mkdir -p '{}' && ln -s '{real}' '{link}'; }}",
            bin.display()
        );
    }
    Ok(script)
}

/// ansible-test's key pair, made as ansible-test makes it if missing.
fn ansible_test_key() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let key = Path::new(&home).join(".ansible/test/id_rsa");
    if !key.is_file() {
        std::fs::create_dir_all(key.parent().expect("has a parent"))?;
        let status = Command::new("ssh-keygen")
            .args(["-m", "PEM", "-q", "-t", "rsa", "-N", "", "-f"])
            .arg(&key)
            .status()?;
        ensure!(status.success(), "ssh-keygen failed");
    }
    Ok(key)
}

/// The side's ssh directory: an ssh config leading "the controller" to the
/// side's host, `bin/ssh`, which runs the system's ssh with that config
/// and notes each command line in `ssh.log`, and `bin/spindle`, which runs
/// the release build logging to `spindle.log`, so that the suite can count
/// the agents Spindle's controller started (bootstrapped over ssh, or run
/// on this machine for `local` connections).
fn ssh_dir(work: &Path, side: Side, lane: usize, key: &Path) -> Result<PathBuf> {
    let dir = side.dir(work, lane).join("ssh");
    let config = dir.join("ssh_config");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::write(
        &config,
        format!(
            "Host localhost 127.0.0.*\n  HostName {}\n  User root\n  IdentityFile {}\n\
             Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
            testbed::address(&side.host(lane))?,
            key.display()
        ),
    )?;
    let system_ssh = crate::which("ssh")?;
    let wrapper = bin.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\nexec {} -F {} \"$@\"\n",
            dir.join("ssh.log").display(),
            system_ssh.display(),
            config.display()
        ),
    )?;
    // The plugin finds `spindle` on PATH first: this one keeps the
    // controller's log of the agents it starts, for the count.
    let spindle = bin.join("spindle");
    std::fs::write(
        &spindle,
        format!(
            "#!/bin/sh\nNO_COLOR=1 SPINDLE_LOG=warn,spindle_controller::link=debug \
             exec {} \"$@\" 2>> {}\n",
            workspace_root().join("target/release/spindle").display(),
            dir.join("spindle.log").display(),
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    for script in [&wrapper, &spindle] {
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// A fresh copy of the source tree for one side; Spindle's gets an
/// integration.cfg (ansible-test's config for every playbook it runs) that
/// adds the `serve_ssh` and `serve_local` plugin directories.
fn unpack(sdist: &Path, dir: &Path, side: Side) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(sdist)
        .arg("-C")
        .arg(dir)
        .arg("--strip-components=1")
        .status()?;
    ensure!(status.success(), "unpacking {}", sdist.display());
    if side == Side::Spindle {
        let plugins = workspace_root().join("ansible-plugin");
        std::fs::write(
            dir.join("test/integration/integration.cfg"),
            format!(
                "[defaults]\nconnection_plugins = {}:{}\n",
                plugins.join("serve_ssh").display(),
                plugins.join("serve_local").display()
            ),
        )?;
    }
    Ok(dir.to_owned())
}

fn run_target(
    venv: &Path,
    place: &Place,
    controller_python: &str,
    target: &str,
    work: &Path,
) -> Result<Outcome> {
    let Place {
        side,
        lane,
        ref tree,
        ref ssh,
    } = *place;
    let logs = work.join("logs").join(side.name());
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{target}.log"));
    let host = side.host(lane);
    let address = testbed::address(&host)?;
    let sshd_log = testbed::sshd_log_of(&host)?;
    let logins = || -> usize {
        std::fs::read_to_string(&sshd_log)
            .map(|l| l.matches("Accepted publickey for ").count())
            .unwrap_or(0)
    };
    let count = |file: &str, marks: &[&str]| -> usize {
        std::fs::read_to_string(ssh.join(file))
            .map(|l| {
                l.lines()
                    .filter(|l| marks.iter().any(|m| l.contains(m)))
                    .count()
            })
            .unwrap_or(0)
    };
    let agents = || count("ssh.log", BOOTSTRAP_MARKS) + count("spindle.log", &[SPAWN_MARK]);
    let before = logins();
    let agents_before = agents();
    let path = format!(
        "{}:{}:{}",
        ssh.join("bin").display(),
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(venv.join("bin/python"))
            .arg("test/lib/ansible_test/_util/target/cli/ansible_test_cli_stub.py")
            .args(["integration", target, "--allow-destructive"])
            .arg(format!("--controller=origin:python={controller_python}"))
            .arg(format!("--target=ssh:root@{address},python=3.11"))
            .current_dir(tree)
            .env("PATH", path)
            .env("VIRTUAL_ENV", venv)
            .env("PYTHONPATH", tree.join("test/lib"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .process_group(0)
            .spawn()
            .context("starting ansible-test")?
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > TARGET_TIMEOUT {
            // The whole process group this child leads.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        use std::io::Write;
        let mut f = std::fs::File::options().append(true).open(&log)?;
        writeln!(f, "\n[ansible-suite: killed after {TARGET_TIMEOUT:?}]")?;
    }
    Ok(Outcome {
        passed: status.is_some_and(|s| s.success()),
        seconds: started.elapsed().as_secs_f64(),
        logins: logins() - before,
        agents: agents() - agents_before,
        log,
        recorded: false,
    })
}

fn table(version: &str, python: &str, rows: &[(String, Vec<Outcome>)]) -> String {
    let mut t = format!(
        "ansible-core {version}, controller Python {python}, target Python 3.11 (Debian 12)\n\n\
         | target | stock ssh | s | ssh logins | Spindle | s | ssh logins | agents started |\n\
         |---|---|---:|---:|---|---:|---:|---:|\n"
    );
    for (target, r) in rows {
        let _ = writeln!(
            t,
            "| {target} | {}{} | {:.1} | {} | {} | {:.1} | {} | {} |",
            verdict(&r[0]),
            if r[0].recorded { " (recorded)" } else { "" },
            r[0].seconds,
            r[0].logins,
            verdict(&r[1]),
            r[1].seconds,
            r[1].logins,
            r[1].agents
        );
    }
    let unserved: Vec<&str> = rows
        .iter()
        .filter(|(_, r)| r[1].agents == 0)
        .map(|(t, _)| t.as_str())
        .collect();
    if !unserved.is_empty() {
        let _ = writeln!(
            t,
            "\nNever reached Spindle (no agent started): {}.",
            unserved.join(", ")
        );
    }
    let both = rows
        .iter()
        .filter(|(_, r)| r[0].passed && r[1].passed)
        .count();
    let served = rows
        .iter()
        .filter(|(_, r)| r[0].passed && r[1].passed && r[1].agents > 0)
        .count();
    let stock = rows.iter().filter(|(_, r)| r[0].passed).count();
    let sum = |i: usize| rows.iter().map(|(_, r)| r[i].seconds).sum::<f64>();
    let _ = writeln!(
        t,
        "\n{} targets: {stock} pass with stock ssh, {both} of those with Spindle too \
         ({served} of them served by Spindle); total {:.0} s stock, {:.0} s Spindle",
        rows.len(),
        sum(0),
        sum(1)
    );
    t
}
