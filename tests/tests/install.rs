//! `pip install ./ansible-plugin` builds one wheel with the plugins, the
//! controller and the agents; Ansible then runs through Spindle from that
//! installation alone (no `SPINDLE_BIN`, no checkout paths).

use anyhow::{ensure, Result};
use spindle_tests::playbook::{root, venv};
use spindle_tests::Testbed;
use std::process::Command;

#[test]
fn pip_installs_a_working_spindle() -> Result<()> {
    let tb = Testbed::load()?;
    let dir = std::env::temp_dir().join(format!("spindle-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(venv().join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .arg("--target")
        .arg(&dir)
        .arg(root().join("ansible-plugin"))
        .output()?;
    ensure!(
        out.status.success(),
        "pip install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pkg = dir.join("spindle_ansible");
    for shipped in [
        "bin/spindle",
        "agents/manifest.json",
        "connection_plugins/spindle.py",
        "serve_ssh/ssh.py",
        "serve_local/local.py",
        "connection_plugins/spindle_local.py",
    ] {
        ensure!(pkg.join(shipped).is_file(), "the wheel lacks {shipped}");
    }

    // The lines `python -m spindle_ansible` suggests for ansible.cfg.
    let cfg = Command::new(venv().join("bin/python"))
        .args(["-m", "spindle_ansible"])
        .env("PYTHONPATH", &dir)
        .output()?;
    let cfg = String::from_utf8(cfg.stdout)?;
    let plugins = format!(
        "{}:{}",
        pkg.join("serve_ssh").display(),
        pkg.join("serve_local").display()
    );
    ensure!(
        cfg.contains(&format!("connection_plugins = {plugins}\n")),
        "python -m spindle_ansible said:\n{cfg}"
    );

    // With those directories as the connection plugins, Spindle serves the
    // inventory's ssh hosts and localhost (the stock plugins would log
    // their own `ESTABLISH SSH CONNECTION` and `ESTABLISH LOCAL
    // CONNECTION` at -vvv).
    for (host, command, said, served) in [
        ("sp1", "hostname", "sp1", "ESTABLISH SPINDLE CONNECTION"),
        (
            "localhost",
            "printf local",
            "local",
            "ESTABLISH SPINDLE LOCAL CONNECTION",
        ),
    ] {
        let run = Command::new(venv().join("bin/ansible"))
            .arg("-i")
            .arg(&tb.inventory)
            .args([host, "-vvv", "-m", "command", "-a", command])
            .args(["-e", "ansible_python_interpreter=/usr/bin/python3"])
            // The plugin finds its package from where it lies: no PYTHONPATH.
            .env("ANSIBLE_CONNECTION_PLUGINS", &plugins)
            .env_remove("SPINDLE_BIN")
            .env_remove("SPINDLE_AGENT_DIR")
            .env("ANSIBLE_NOCOLOR", "1")
            // No ControlPersist master outliving the run (as in the suites).
            .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
            .output()?;
        let text = String::from_utf8_lossy(&run.stdout);
        ensure!(
            run.status.success()
                && text.contains(&format!("CHANGED | rc=0 >>\n{said}"))
                && text.contains(served),
            "ansible {host} through the installed Spindle:\n{text}{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
