//! Running Spindle's playbook suites (`tests/ansible/<area>/*.yml`) with
//! stock Ansible and with Spindle on the testbed.

use crate::Testbed;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python environment with ansible-core: `$SPINDLE_ANSIBLE_VENV`, or
/// the one `cargo xtask test` installs.
pub fn venv() -> PathBuf {
    std::env::var_os("SPINDLE_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ansible-venv"))
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `playbook` with `connection` (and a strategy, if given); returns
/// the PLAY RECAP lines.
pub fn play(
    tb: &Testbed,
    playbook: &str,
    connection: &str,
    strategy: Option<&str>,
) -> Result<Vec<String>> {
    play_with(
        tb,
        playbook,
        connection,
        strategy,
        &crate::spindle_bin(),
        &[],
    )
}

/// [`play`] with another `spindle` binary and extra variables
/// (`-e NAME=VALUE` each).
pub fn play_with(
    tb: &Testbed,
    playbook: &str,
    connection: &str,
    strategy: Option<&str>,
    spindle_bin: &Path,
    vars: &[&str],
) -> Result<Vec<String>> {
    run(tb, playbook, connection, strategy, spindle_bin, vars, &[])
}

/// [`play`] with extra variables (`-e NAME=VALUE` each).
pub fn play_vars(
    tb: &Testbed,
    playbook: &str,
    connection: &str,
    vars: &[&str],
) -> Result<Vec<String>> {
    play_env(tb, playbook, connection, vars, &[])
}

/// [`play_vars`] with more environment for `ansible-playbook` (set after
/// the suite's own, so it can override them).
pub fn play_env(
    tb: &Testbed,
    playbook: &str,
    connection: &str,
    vars: &[&str],
    env: &[(&str, &str)],
) -> Result<Vec<String>> {
    run(
        tb,
        playbook,
        connection,
        None,
        &crate::spindle_bin(),
        vars,
        env,
    )
}

fn run(
    tb: &Testbed,
    playbook: &str,
    connection: &str,
    strategy: Option<&str>,
    spindle_bin: &Path,
    vars: &[&str],
    env: &[(&str, &str)],
) -> Result<Vec<String>> {
    let venv = venv();
    // Unique per run: the tests of this file run in parallel.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fetch_dir = std::env::temp_dir().join(format!("spindle-fetch-{}-{n}", std::process::id()));
    // Ansible's default ssh_args (ControlPersist masters, as most users
    // run), with the run's own control_path_dir: its masters are stopped
    // when it ends, so none outlives it (other suites count the processes
    // on these hosts) and no two runs share one.
    let control_dir = std::env::temp_dir().join(format!("spindle-cp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&control_dir)?;
    let mut cmd = Command::new(venv.join("bin/ansible-playbook"));
    if let Some(strategy) = strategy {
        cmd.env("ANSIBLE_STRATEGY", strategy);
    }
    let started = std::time::Instant::now();
    let out = cmd
        .arg("-i")
        .arg(&tb.inventory)
        .args([
            "-c",
            connection,
            "-e",
            &format!("conn={connection}{}", strategy.unwrap_or("")),
        ])
        .arg("-e")
        .arg(format!("fetch_dir={}", fetch_dir.display()))
        // A fresh work directory on the targets too, so what an earlier
        // (perhaps failed) run left behind cannot change this run's recap.
        .arg("-e")
        .arg(format!(
            "work=/tmp/spindle-suite-{}-{n}",
            std::process::id()
        ))
        .args(vars.iter().flat_map(|v| ["-e", v]))
        .arg(root().join("tests/ansible").join(playbook))
        .env("ANSIBLE_CONNECTION_PLUGINS", connection_plugins(connection))
        .env(
            "ANSIBLE_STRATEGY_PLUGINS",
            root().join("ansible-plugin/strategy_plugins"),
        )
        .env("SPINDLE_BIN", spindle_bin)
        .env("ANSIBLE_LIBRARY", library()?)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_SSH_ARGS", DEFAULT_SSH_ARGS)
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control_dir)
        .envs(env.iter().copied())
        .output()
        .context("running ansible-playbook");
    stop_masters(&control_dir);
    let _ = std::fs::remove_dir_all(&control_dir);
    let _ = std::fs::remove_dir_all(&fetch_dir);
    let out = out?;
    eprintln!(
        "{playbook} with -c {connection}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{playbook} failed with -c {connection}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let recap: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    anyhow::ensure!(!recap.is_empty(), "no recap in:\n{text}");
    Ok(recap)
}

/// The ssh plugin's default `ssh_args`.
pub const DEFAULT_SSH_ARGS: &str = "-C -o ControlMaster=auto -o ControlPersist=60s";

/// Stops the ssh masters whose sockets are in `dir`.
pub fn stop_masters(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", entry.path().display()))
            .args(["-O", "exit", "master"])
            .output();
    }
}

/// Spindle's connection plugins; with `-c spindle`, Spindle also serves
/// the hosts whose connection is `local` (`delegate_to: localhost`), as
/// the README's setup does.
fn connection_plugins(connection: &str) -> std::ffi::OsString {
    let plugins = root().join("ansible-plugin");
    let mut dirs = vec![plugins.join("connection_plugins")];
    if connection == "spindle" {
        dirs.push(plugins.join("serve_local"));
    }
    std::env::join_paths(dirs).expect("paths without ':'")
}

/// Module directories for the suites: the checked-in ones plus a binary
/// module compiled here (a binary has no place in the source tree).
fn library() -> Result<String> {
    static ONCE: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| build_library().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_library() -> Result<String> {
    let dir = root().join("target/test-library");
    std::fs::create_dir_all(&dir)?;
    let status = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(dir.join("style_binary"))
        .arg(root().join("tests/ansible/modules/style_binary.c"))
        .status()
        .context("compiling the binary test module")?;
    anyhow::ensure!(status.success(), "cc failed");
    Ok(format!(
        "{}:{}",
        root().join("tests/ansible/modules/library").display(),
        dir.display()
    ))
}

/// Runs `playbook` with `-c ssh` and with `-c spindle`: both must pass and
/// give the same recap.
pub fn same_under_stock_and_spindle(playbook: &str) -> Result<()> {
    let tb = Testbed::load()?;
    let stock = play(&tb, playbook, "ssh", None)?;
    let spindle = play(&tb, playbook, "spindle", None)?;
    assert_eq!(spindle, stock, "{playbook}: recaps differ");
    Ok(())
}
