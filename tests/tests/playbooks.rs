//! Spindle's own playbook suites (`tests/ansible/<area>/*.yml`), each run
//! with stock Ansible (`-c ssh`) and with Spindle's connection plugin
//! (`-c spindle`) on the testbed: both must pass their asserts with the
//! same recap.

use anyhow::{bail, Context, Result};
use spindle_tests::Testbed;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `playbook` with `connection` (and a strategy, if given); returns
/// the PLAY RECAP lines.
fn play(
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
        &spindle_tests::spindle_bin(),
    )
}

fn play_with(
    tb: &Testbed,
    playbook: &str,
    connection: &str,
    strategy: Option<&str>,
    spindle_bin: &Path,
) -> Result<Vec<String>> {
    let venv = std::env::var_os("SPINDLE_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ansible-venv"));
    // Unique per run: the tests of this file run in parallel.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fetch_dir = std::env::temp_dir().join(format!("spindle-fetch-{}-{n}", std::process::id()));
    let mut cmd = Command::new(venv.join("bin/ansible-playbook"));
    if let Some(strategy) = strategy {
        cmd.env("ANSIBLE_STRATEGY", strategy);
    }
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
        .arg(root().join("tests/ansible").join(playbook))
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            root().join("ansible-plugin/connection_plugins"),
        )
        .env(
            "ANSIBLE_STRATEGY_PLUGINS",
            root().join("ansible-plugin/strategy_plugins"),
        )
        .env("SPINDLE_BIN", spindle_bin)
        .env("ANSIBLE_LIBRARY", library()?)
        .env("ANSIBLE_NOCOLOR", "1")
        // No ControlPersist master outliving the run: other suites count
        // the processes on these hosts.
        .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
        .output()
        .context("running ansible-playbook")?;
    let _ = std::fs::remove_dir_all(&fetch_dir);
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

fn same_under_stock_and_spindle(playbook: &str) -> Result<()> {
    let tb = Testbed::load()?;
    let stock = play(&tb, playbook, "ssh", None)?;
    let spindle = play(&tb, playbook, "spindle", None)?;
    assert_eq!(spindle, stock, "{playbook}: recaps differ");
    Ok(())
}

#[test]
fn connection_async() -> Result<()> {
    same_under_stock_and_spindle("connection/async.yml")
}

/// The strategies serve ssh hosts with Spindle (its controller starts:
/// a wrapper around the binary notes it) and playbooks behave as with the
/// builtin strategy of the same name.
#[test]
fn spindle_strategies() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tb = Testbed::load()?;
    let dir = std::env::temp_dir().join(format!("spindle-strategies-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let marker = dir.join("started");
    let wrapper = dir.join("spindle");
    let script = format!(
        "#!/bin/sh\necho started >> '{}'\nexec '{}' \"$@\"\n",
        marker.display(),
        spindle_tests::spindle_bin().display()
    );
    std::fs::write(&wrapper, script)?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    for (builtin, ours) in [
        ("linear", "spindle_linear"),
        ("free", "spindle_free"),
        ("host_pinned", "spindle_host_pinned"),
    ] {
        let _ = std::fs::remove_file(&marker);
        let stock = play(&tb, "connection/basic.yml", "ssh", Some(builtin))?;
        let spindle = play_with(&tb, "connection/basic.yml", "ssh", Some(ours), &wrapper)?;
        assert_eq!(spindle, stock, "{ours}: recaps differ");
        assert!(
            marker.exists(),
            "{ours} did not route ssh hosts through Spindle"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn connection_basics() -> Result<()> {
    same_under_stock_and_spindle("connection/basic.yml")
}

#[test]
fn module_styles() -> Result<()> {
    same_under_stock_and_spindle("modules/styles.yml")
}

/// Killing the controller under a running task makes that host unreachable
/// promptly: no hang, no orphaned controller.
#[test]
fn killed_controller_makes_the_host_unreachable() -> Result<()> {
    let tb = Testbed::load()?;
    let venv = std::env::var_os("SPINDLE_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ansible-venv"));
    let started = std::time::Instant::now();
    let run = Command::new(venv.join("bin/ansible-playbook"))
        .arg("-i")
        .arg(&tb.inventory)
        .args(["-c", "spindle"])
        .arg(root().join("tests/ansible/lifecycle/long_task.yml"))
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            root().join("ansible-plugin/connection_plugins"),
        )
        .env("SPINDLE_BIN", spindle_tests::spindle_bin())
        .env("ANSIBLE_NOCOLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // The controller for this run is `spindle serve --parent-pid <run>`;
    // wait until the long task is under way, then kill it.
    let needle = format!("--parent-pid\0{}\0", run.id());
    let controller = loop {
        anyhow::ensure!(started.elapsed().as_secs() < 60, "no controller appeared");
        let found = std::fs::read_dir("/proc")?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd);
                (cmd.contains("serve\0") && cmd.contains(&needle)).then(|| e.file_name())
            });
        if let Some(pid) = found {
            break pid.to_string_lossy().into_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    Command::new("kill").args(["-9", &controller]).status()?;
    let killed = std::time::Instant::now();
    let out = run.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "ansible-playbook ended {:?} after the kill",
        killed.elapsed()
    );
    // A hang guard, not a performance assertion: the task sleeps for 30 s.
    assert!(
        killed.elapsed().as_secs() < 25,
        "the run waited for the task:\n{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "expected ansible-playbook's unreachable status:\n{text}"
    );
    assert!(text.contains("unreachable=1"), "{text}");
    Ok(())
}
