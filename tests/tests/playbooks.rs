//! Spindle's own playbook suites (`tests/ansible/<area>/*.yml`), each run
//! with stock Ansible (`-c ssh`) and with Spindle's connection plugin
//! (`-c spindle`) on the testbed: both must pass their asserts with the
//! same recap.

use anyhow::{Context, Result};
use spindle_tests::playbook::{
    play, play_env, play_vars, play_with, root, same_under_stock_and_spindle, venv,
    DEFAULT_SSH_ARGS,
};
use spindle_tests::Testbed;
use std::process::Command;

#[test]
fn connection_async() -> Result<()> {
    same_under_stock_and_spindle("connection/async.yml")
}

/// The strategies serve ssh hosts with Spindle (its controller starts:
/// a wrapper around the binary notes it) and playbooks behave as with the
/// builtin strategy of the same name. Two Python hosts are enough to tell
/// the strategies apart (`connection_basics` runs the playbook on all).
#[test]
fn spindle_strategies() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tb = Testbed::load()?;
    let dir = std::env::temp_dir().join(format!("spindle-strategies-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let marker = dir.join("started");
    let bin = spindle_tests::spindle_bin();
    let wrapper = dir.join("spindle");
    let script = format!(
        "#!/bin/sh\necho started >> '{}'\nexec '{}' \"$@\"\n",
        marker.display(),
        bin.display()
    );
    std::fs::write(&wrapper, script)?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    for (builtin, ours) in [
        ("linear", "spindle_linear"),
        ("free", "spindle_free"),
        ("host_pinned", "spindle_host_pinned"),
    ] {
        let _ = std::fs::remove_file(&marker);
        let (playbook, vars) = ("connection/basic.yml", ["suite_hosts=sp1:sp2"]);
        let stock = play_with(&tb, playbook, "ssh", Some(builtin), &bin, &vars)?;
        let spindle = play_with(&tb, playbook, "ssh", Some(ours), &wrapper, &vars)?;
        assert_eq!(spindle, stock, "{ours}: recaps differ");
        assert!(
            marker.exists(),
            "{ours} did not route ssh hosts through Spindle"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `reboot` (with commands that act like one on a testbed host) and
/// `wait_for_connection`: the connection drops, the actions reconnect.
#[test]
fn reboot_and_wait_for_connection() -> Result<()> {
    same_under_stock_and_spindle("connection/reboot.yml")
}

#[test]
fn connection_basics() -> Result<()> {
    same_under_stock_and_spindle("connection/basic.yml")
}

/// Holds sp1's lock: the suite edits the account's environment there.
/// Run without a ControlMaster, where each stock task is a fresh login
/// whose PAM reads the environment files anew, and with the default
/// ssh_args, where every task is a session of one login.
#[test]
fn connection_environment() -> Result<()> {
    let tb = Testbed::load()?;
    let _lock = tb.host("sp1")?.lock()?;
    let playbook = "connection/environment.yml";
    for ssh_args in ["-o ControlMaster=no", DEFAULT_SSH_ARGS] {
        let env = [("ANSIBLE_SSH_ARGS", ssh_args)];
        let stock = play_env(&tb, playbook, "ssh", &[], &env)?;
        let spindle = play_env(&tb, playbook, "spindle", &[], &env)?;
        assert_eq!(spindle, stock, "{playbook} with {ssh_args}: recaps differ");
    }
    Ok(())
}

/// Edits of /etc/resolv.conf reach the next task's resolver. Holds sp3's
/// lock: the suite rewrites that host's /etc/resolv.conf (restored here).
#[test]
fn connection_resolver() -> Result<()> {
    use std::net::Ipv4Addr;
    let tb = Testbed::load()?;
    let th = tb.host("sp3")?;
    let _lock = th.lock()?;
    let conf = th.root_path("/etc/resolv.conf");
    let saved = std::fs::read(&conf)?;
    let restore = scopeguard(|| {
        let _ = std::fs::write(&conf, &saved);
    });
    let mut gateway: Ipv4Addr = th.addr.parse()?;
    gateway = Ipv4Addr::from(u32::from(gateway) & !0xff | 1);
    let names = [
        ("probe.one.spindle.test", Ipv4Addr::new(10, 99, 0, 1)),
        ("probe.two.spindle.test", Ipv4Addr::new(10, 99, 0, 2)),
    ];
    let _dns = spindle_tests::dns::Responder::start(
        (gateway, 53).into(),
        names
            .into_iter()
            .map(|(n, ip)| (n.to_owned(), ip))
            .collect(),
    )?;
    let result = same_under_stock_and_spindle("connection/resolver.yml");
    drop(restore);
    result
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}

#[test]
fn become_sudo() -> Result<()> {
    same_under_stock_and_spindle("become/sudo.yml")
}

/// su with the target account's password: root, another user, a wrong
/// password.
#[test]
fn become_su() -> Result<()> {
    same_under_stock_and_spindle("become/su.yml")
}

/// doas (community.general's become plugin, Debian's opendoas): without a
/// password, and with one typed at doas's terminal prompt.
#[test]
fn become_doas() -> Result<()> {
    same_under_stock_and_spindle("become/doas.yml")
}

/// sudo with a password: right, wrong and missing.
#[test]
fn become_sudo_password() -> Result<()> {
    same_under_stock_and_spindle("become/password.yml")
}

/// sudoers with requiretty (erin) and targetpw (frank).
#[test]
fn become_sudo_requiretty_targetpw() -> Result<()> {
    same_under_stock_and_spindle("become/tty_targetpw.yml")
}

/// sudo-rs as `become_exe`: its wrapped prompt, its warnings and its own
/// words for a missing password. Spindle only (see the playbook).
#[test]
fn become_sudo_rs() -> Result<()> {
    let tb = Testbed::load()?;
    play(&tb, "become/sudo_rs.yml", "spindle", None)?;
    Ok(())
}

#[test]
fn password_login() -> Result<()> {
    same_under_stock_and_spindle("connection/password.yml")
}

#[test]
fn interpreter_discovery() -> Result<()> {
    same_under_stock_and_spindle("connection/discovery.yml")
}

#[test]
fn module_styles() -> Result<()> {
    same_under_stock_and_spindle("modules/styles.yml")
}

/// A module masks the run's secrets in its own output as in a stock run
/// (ansible-core 2.22's wrapper hands them over).
#[test]
fn modules_know_the_runs_secrets() -> Result<()> {
    same_under_stock_and_spindle("modules/secrets.yml")
}

/// A select() on one of the selectors `run_command` uses returns at once
/// when nothing is registered (the loop's last select when a command ends
/// between its two checks; stock sleeps a second there). Spindle only: a
/// stock run blocks.
#[test]
fn empty_select_returns_at_once() -> Result<()> {
    let tb = Testbed::load()?;
    play(&tb, "modules/empty_select.yml", "spindle", None)?;
    Ok(())
}

/// run_command applies a umask only when given one, its commands' signals
/// are a forked start's however they are started, and a module's own
/// preexec_fn and fork hooks run: on the system Python and on 3.10 to 3.13
/// (where subprocess can vfork, and 3.13 also posix_spawn with descriptors
/// closed).
#[test]
fn module_commands_start_as_stock() -> Result<()> {
    let tb = Testbed::load()?;
    let vars = spawn_pythons(&tb)?;
    let stock = play_vars(&tb, "modules/spawn.yml", "ssh", &[&vars])?;
    let spindle = play_vars(&tb, "modules/spawn.yml", "spindle", &[&vars])?;
    assert_eq!(spindle, stock, "recaps differ");
    Ok(())
}

/// run_command's idle preexec_fn (no umask to set) is left out of its
/// commands' starts unless the task registered fork hooks, so they start
/// by vfork, on the same Pythons. Spindle only: stock counts nothing.
#[test]
fn idle_preexec_is_left_out() -> Result<()> {
    let tb = Testbed::load()?;
    let vars = spawn_pythons(&tb)?;
    play_vars(&tb, "modules/spawn_vfork.yml", "spindle", &[&vars])?;
    Ok(())
}

/// `spawn_pythons` for the spawn playbooks: the system Python and the
/// testbed's 3.10 and later.
fn spawn_pythons(tb: &Testbed) -> Result<String> {
    let mut pythons = vec!["/usr/bin/python3".to_owned()];
    for (version, path) in &tb.pythons {
        let minor = version
            .strip_prefix("3.")
            .and_then(|m| m.parse::<u32>().ok());
        if minor.is_some_and(|m| m >= 10) {
            pythons.push(path.clone());
        }
    }
    anyhow::ensure!(
        pythons.len() >= 5,
        "expected Pythons 3.10 to 3.13 on the testbed"
    );
    Ok(serde_json::json!({ "spawn_pythons": pythons }).to_string())
}

/// Loading the connection plugin (in the process that forks Ansible's
/// workers) imports the JSON profiles each module task's worker would
/// otherwise import for itself (ansible-core 2.19 on).
#[test]
fn module_profiles_are_imported_with_the_plugin() -> Result<()> {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, spindle_ansible.connection\n\
             from ansible.release import __version__\n\
             if tuple(map(int, __version__.split('.')[:2])) >= (2, 19):\n\
             \x20   p = 'ansible.module_utils._internal._json._profiles._module_'\n\
             \x20   missing = [n for n in ('legacy_c2m', 'legacy_m2c', 'modern_c2m', 'modern_m2c') if p + n not in sys.modules]\n\
             \x20   assert not missing, missing\n",
        ])
        .env("PYTHONPATH", root().join("ansible-plugin"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `ansible` (ad hoc) with `args` against the testbed, Spindle
/// serving its ssh hosts, the system Python on the targets.
fn adhoc(tb: &Testbed, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(venv().join("bin/ansible"))
        .arg("-i")
        .arg(&tb.inventory)
        .args(args)
        .args(["-e", "ansible_python_interpreter=/usr/bin/python3"])
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            root().join("ansible-plugin/serve_ssh"),
        )
        .env("SPINDLE_BIN", spindle_tests::spindle_bin())
        .env("ANSIBLE_NOCOLOR", "1")
        // No ControlPersist master outliving the run (as in the suites).
        .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
        .output()?)
}

/// With the installed ansible-core (the suite runs twice: 2.19 and 2.21,
/// whose commands differ), Spindle takes its fast paths: modules run in the
/// agent's warm interpreters, `echo ~` is answered from the agent's hello
/// and a copy's temp dir steps and small put go without waiting. Its -vvv
/// lines say which path each step took.
#[test]
fn fast_paths_are_taken() -> Result<()> {
    let tb = Testbed::load()?;
    let src = std::env::temp_dir().join(format!("spindle-fast-{}", std::process::id()));
    std::fs::write(&src, "fast\n")?;
    let dest = format!(
        "src={} dest=/tmp/spindle-fast-{}",
        src.display(),
        std::process::id()
    );
    let out = adhoc(&tb, &["sp2", "-vvv", "-m", "copy", "-a", &dest])?;
    let _ = std::fs::remove_file(&src);
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "copy failed:\n{text}");
    for (what, needle) in [
        (
            "stat in a warm interpreter",
            "SPINDLE: MODULE ansible.modules.stat ",
        ),
        (
            "copy in a warm interpreter",
            "SPINDLE: MODULE ansible.modules.copy ",
        ),
        ("echo ~ from the hello", "(from the agent's hello)"),
        ("the temp dir made without waiting", "mkdir -p"),
    ] {
        anyhow::ensure!(text.contains(needle), "no {what} in:\n{text}");
    }
    // A module's EXEC line is followed by its MODULE line: it runs in a
    // warm interpreter, one round trip as it must.
    let lines: Vec<&str> = text.lines().collect();
    let waiting: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("SPINDLE: EXEC") || l.contains("SPINDLE: PUT"))
        .filter(|(_, l)| !l.ends_with("(not waiting)"))
        .filter(|(i, _)| {
            !lines
                .get(i + 1)
                .is_some_and(|n| n.contains("SPINDLE: MODULE"))
        })
        .map(|(_, l)| *l)
        .collect();
    // Each module's line follows the command Ansible asked for, as the ssh
    // plugin shows it: its interpreter run by the shell.
    for (i, line) in lines.iter().enumerate() {
        let Some((_, python)) = line.split_once("SPINDLE: MODULE ") else {
            continue;
        };
        let python = python.split(" WITH ").nth(1).unwrap_or_default();
        let exec = i.checked_sub(1).map(|p| lines[p]).unwrap_or_default();
        anyhow::ensure!(
            exec.contains("SPINDLE: EXEC /bin/sh -c ") && exec.contains(python),
            "no EXEC line with {python} before {line:?}"
        );
    }
    // Interpreter discovery is answered from the hello, without a line.
    anyhow::ensure!(
        waiting.is_empty(),
        "steps that waited for a round trip: {waiting:#?}"
    );
    Ok(())
}

/// At -vvv each task's output carries the target's log records: the
/// agent's (and a become child agent's) requests with their outcomes and
/// times, as they happened on the host. Below -vvv there are none.
#[test]
fn vvv_shows_the_targets_log() -> Result<()> {
    let tb = Testbed::load()?;
    let run = |verbosity: &str| -> Result<String> {
        let out = adhoc(
            &tb,
            &["sp2", verbosity, "-b", "-m", "command", "-a", "id -u"],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "id failed:\n{text}");
        Ok(text)
    };
    let text = run("-vvv")?;
    let addr = &tb.host("sp2")?.addr;
    for needle in [
        format!("<{addr}> SPINDLE AGENT: debug: request "),
        " sudo as root: done".into(),
        "(as root) debug: started interpreter /usr/bin/python3".into(),
        "(as root) debug: module ansible.modules.command: ".into(),
    ] {
        anyhow::ensure!(text.contains(&needle), "no {needle:?} in:\n{text}");
    }
    let text = run("-vv")?;
    anyhow::ensure!(!text.contains("SPINDLE AGENT"), "at -vv:\n{text}");
    Ok(())
}

/// Tasks on the controller's own machine (`hosts: localhost`, `delegate_to:
/// localhost` for every host at once) behave as with Ansible's `local`
/// connection: directory, environment, interpreter, files.
#[test]
fn local_connection() -> Result<()> {
    same_under_stock_and_spindle("connection/local.yml")
}

/// With `serve_local` among the connection plugins, Spindle serves local
/// tasks: a module runs in the local agent's warm interpreter, and a
/// command's output is the stock one.
#[test]
fn local_connection_is_served() -> Result<()> {
    let run = |plugins: &str| -> Result<String> {
        let out = Command::new(venv().join("bin/ansible"))
            .args(["localhost", "-vvv", "-m", "command", "-a", "printenv HOME"])
            .env("ANSIBLE_CONNECTION_PLUGINS", root().join(plugins))
            .env("SPINDLE_BIN", spindle_tests::spindle_bin())
            .env("ANSIBLE_NOCOLOR", "1")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "failed with {plugins}:\n{text}");
        Ok(text)
    };
    let served = run("ansible-plugin/serve_local")?;
    let stock = run("ansible-plugin/connection_plugins")?;
    for (what, text, needle) in [
        ("served", &served, "ESTABLISH SPINDLE LOCAL CONNECTION"),
        (
            "served",
            &served,
            "SPINDLE: MODULE ansible.modules.command ",
        ),
        ("stock", &stock, "ESTABLISH LOCAL CONNECTION"),
    ] {
        anyhow::ensure!(text.contains(needle), "{what}: no {needle:?} in:\n{text}");
    }
    let home = std::env::var("HOME")?;
    for text in [&served, &stock] {
        anyhow::ensure!(
            text.lines().any(|l| l == home),
            "no {home} line in:\n{text}"
        );
    }
    Ok(())
}

/// `spindle_sudo` and `spindle_su` as connection types: tasks on this
/// machine as another account (what `local` with `become` gives), files
/// owned by it, and a task's own become for a third account refused by
/// name. Spindle only: stock Ansible has no such connection.
#[test]
fn account_connections() -> Result<()> {
    let tb = Testbed::load()?;
    play(&tb, "connection/accounts.yml", "spindle", None)?;
    Ok(())
}

/// Starts `ansible-playbook -c spindle` on `playbook` (below
/// tests/ansible) with `args`, its output piped.
fn start_run(tb: &Testbed, playbook: &str, args: &[&str]) -> Result<std::process::Child> {
    Ok(Command::new(venv().join("bin/ansible-playbook"))
        .arg("-i")
        .arg(&tb.inventory)
        .args(["-c", "spindle"])
        .args(args)
        .arg(root().join("tests/ansible").join(playbook))
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            root().join("ansible-plugin/connection_plugins"),
        )
        .env("SPINDLE_BIN", spindle_tests::spindle_bin())
        .env("ANSIBLE_NOCOLOR", "1")
        // No ControlPersist master outliving the run (as in the suites).
        .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
        .stdout(std::process::Stdio::piped())
        .spawn()?)
}

/// Killing the controller under a running task makes that host unreachable
/// promptly: no hang, no orphaned controller.
#[test]
fn killed_controller_makes_the_host_unreachable() -> Result<()> {
    let tb = Testbed::load()?;
    let started = std::time::Instant::now();
    let run = start_run(&tb, "lifecycle/long_task.yml", &[])?;
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

/// Killing one host's agent and another host's ssh process under a running
/// task makes those two hosts unreachable, promptly; the third host's tasks
/// run on as if nothing happened.
#[test]
fn killed_agent_or_ssh_affects_only_that_host() -> Result<()> {
    let tb = Testbed::load()?;
    let marker = std::process::id();
    let started = std::time::Instant::now();
    let marker_var = format!("marker={marker}");
    let run = start_run(&tb, "lifecycle/three_hosts.yml", &["-e", &marker_var])?;
    let sleep = format!("sleep\012.{marker}\0");
    // pid -> (command line, parent pid)
    let processes = || -> Vec<(u32, String, u32)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat.rsplit(") ").next()?.split(' ').nth(1)?.parse().ok()?;
            Some((pid, String::from_utf8_lossy(&cmd).into_owned(), ppid))
        })
        .collect()
    };
    let netns = |pid: u32| -> String {
        Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    // Wait until the long task runs on all three hosts.
    let sleeps = loop {
        anyhow::ensure!(started.elapsed().as_secs() < 60, "the long task never ran");
        let found: Vec<(u32, u32)> = processes()
            .into_iter()
            .filter(|(_, cmd, _)| *cmd == sleep)
            .map(|(pid, _, ppid)| (pid, ppid))
            .collect();
        if found.len() == 3 {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let all = processes();
    let parent = |pid: u32| all.iter().find(|p| p.0 == pid).map(|p| p.2);
    // sp1: the agent above its sleep (sleep <- module child <- interpreter
    // <- agent).
    let sp1 = tb.host("sp1")?;
    let (mut pid, _) = *sleeps
        .iter()
        .find(|(pid, _)| netns(*pid) == sp1.netns)
        .context("no sleep on sp1")?;
    let agent = loop {
        pid = parent(pid)
            .filter(|&p| p > 1)
            .context("no agent above the sleep")?;
        let cmd = &all.iter().find(|p| p.0 == pid).context("gone")?.1;
        if cmd.starts_with("spindle-agent") {
            break pid;
        }
    };
    // sp2: the run's ssh process to it (a child of the run's controller).
    let needle = format!("--parent-pid\0{}\0", run.id());
    let controller = all
        .iter()
        .find(|(_, cmd, _)| cmd.contains("serve\0") && cmd.contains(&needle))
        .context("no controller")?
        .0;
    let sp2 = tb.host("sp2")?;
    let ssh = all
        .iter()
        .find(|(_, cmd, ppid)| {
            *ppid == controller
                && cmd.split('\0').next().is_some_and(|p| p.ends_with("ssh"))
                && cmd
                    .split('\0')
                    .any(|w| w == sp2.addr || w.ends_with(&format!("@{}", sp2.addr)))
        })
        .context("no ssh process to sp2")?
        .0;
    Command::new("kill")
        .args(["-9", &agent.to_string(), &ssh.to_string()])
        .status()?;
    let out = run.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // A hang guard, not a performance assertion: the long task takes 12 s.
    anyhow::ensure!(
        started.elapsed().as_secs() < 50,
        "the run did not end:\n{text}"
    );
    let recap = |host: &str| {
        text.lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .find(|l| l.starts_with(&format!("{host} ")))
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    for host in ["sp1", "sp2"] {
        anyhow::ensure!(
            recap(host).contains("unreachable=1"),
            "{host}: {}\n{text}",
            recap(host)
        );
    }
    anyhow::ensure!(
        recap("sp3").starts_with("ok=2 changed=2 unreachable=0 failed=0"),
        "sp3: {}\n{text}",
        recap("sp3")
    );
    Ok(())
}
