//! Become through child agents, measured from the target's own logs. A
//! binary of its own: no other suite runs against the host meanwhile.

use anyhow::Result;
use spindle_tests::playbook::{play, play_vars};
use spindle_tests::Testbed;

/// 30 tasks alternating become on and off: under Spindle one SSH login and
/// one sudo for the whole run (the stock run needs one of each per task).
#[test]
fn alternating_become_logs_in_and_sudoes_once() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp2")?;
    let _lock = th.lock()?;
    let counts = || -> Result<(usize, usize)> { Ok((th.auth_count()?, th.sudo_count()?)) };
    let before = counts()?;
    let stock = play(&tb, "become/alternating.yml", "ssh", None)?;
    let middle = counts()?;
    let spindle = play(&tb, "become/alternating.yml", "spindle", None)?;
    let after = counts()?;
    assert_eq!(spindle, stock, "recaps differ");
    assert!(
        middle.1 - before.1 >= 15,
        "stock ran sudo {} times",
        middle.1 - before.1
    );
    assert_eq!(
        (after.0 - middle.0, after.1 - middle.1),
        (1, 1),
        "(SSH logins, sudo runs) under Spindle"
    );
    Ok(())
}

/// The same with `become_method: su` (to root, with root's password): one
/// su for the whole run under Spindle, one per become task in a stock run.
/// su writes no log of its own here, so `become_exe` is a wrapper on the
/// host that notes each run; so is the Python interpreter, which notes its
/// account. Ansible never pipelines su: it puts each module as a file and
/// runs that with a new interpreter, where Spindle runs the file's content
/// in a warm one.
#[test]
fn alternating_su_runs_su_once() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tb = Testbed::load()?;
    let th = tb.host("sp2")?;
    let _lock = th.lock()?;
    let (su, su_runs) = (
        "/usr/local/bin/spindle-test-su",
        "/tmp/spindle-test-su.runs",
    );
    let (python, python_runs) = (
        "/usr/local/bin/spindle-test-python",
        "/tmp/spindle-test-python.runs",
    );
    for (wrapper, runs, script) in [
        (
            su,
            su_runs,
            format!("echo \"$$\" >> {su_runs}\nexec /bin/su \"$@\""),
        ),
        (
            python,
            python_runs,
            format!("id -un >> {python_runs}\nexec /usr/bin/python3 \"$@\""),
        ),
    ] {
        std::fs::write(th.root_path(wrapper), format!("#!/bin/sh\n{script}\n"))?;
        std::fs::set_permissions(th.root_path(wrapper), PermissionsExt::from_mode(0o755))?;
        std::fs::write(th.root_path(runs), "")?;
        std::fs::set_permissions(th.root_path(runs), PermissionsExt::from_mode(0o666))?;
    }
    let lines = |runs: &str| -> Vec<String> {
        std::fs::read_to_string(th.root_path(runs))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let vars = [
        "ansible_become_method=su",
        &format!("ansible_become_exe={su}"),
        "ansible_become_password=root-pw",
        &format!("ansible_python_interpreter={python}"),
    ];
    let logins = th.auth_count()?;
    let stock = play_vars(&tb, "become/alternating.yml", "ssh", &vars)?;
    let (stock_su, stock_pythons, middle) = (
        lines(su_runs).len(),
        lines(python_runs).len(),
        th.auth_count()?,
    );
    let spindle = play_vars(&tb, "become/alternating.yml", "spindle", &vars)?;
    let spindle_su = lines(su_runs).len() - stock_su;
    let spindle_root_pythons = lines(python_runs)[stock_pythons..]
        .iter()
        .filter(|u| *u == "root")
        .count();
    let after = th.auth_count()?;
    for path in [su, su_runs, python, python_runs] {
        let _ = std::fs::remove_file(th.root_path(path));
    }
    assert_eq!(spindle, stock, "recaps differ");
    assert!(
        stock_su >= 15 && stock_pythons >= 30 && middle > logins,
        "stock ran su {stock_su} times, Python {stock_pythons} times"
    );
    assert_eq!(
        (after - middle, spindle_su, spindle_root_pythons),
        (1, 1, 1),
        "(SSH logins, su runs, Pythons started as root) under Spindle"
    );
    Ok(())
}

/// An account whose sudoers allows nothing but Spindle's bootstrap command
/// line (the rule README.md documents) becomes root; one whose rule is a
/// character off gets a failure that names the exact command to allow.
#[test]
fn restricted_sudoers_rule_allows_only_the_bootstrap() -> Result<()> {
    let tb = Testbed::load()?;
    let _lock = tb.host("sp2")?.lock()?;
    let ok = play_as(&tb, "carol")?;
    assert!(ok.status.success(), "carol:\n{}", text(&ok));
    assert!(text(&ok).contains("rc=0 >>\nroot"), "carol:\n{}", text(&ok));
    let log = std::fs::read_to_string(tb.host("sp2")?.root_path("/var/log/sudo.log"))?;
    assert!(log.contains(" : carol : "), "no sudo by carol in:\n{log}");

    let off = play_as(&tb, "dave")?;
    let out = text(&off);
    assert!(!off.status.success(), "dave:\n{out}");
    assert!(
        out.contains("a sudoers rule must name exactly this command: /usr/bin/python3 -c import sys;exec(sys.stdin.buffer.readline())"),
        "dave:\n{out}"
    );
    Ok(())
}

/// `become_flags` are read with sudo's grammar: environment and home flags
/// are honoured, a flag Spindle cannot honour fails the task naming it.
#[test]
fn sudo_flags_are_checked() -> Result<()> {
    let tb = Testbed::load()?;
    let _lock = tb.host("sp2")?.lock()?;
    let ok = become_id(
        &tb,
        "spindle",
        &[
            "-e",
            "ansible_become_flags='-H -S -n -E'",
            "-e",
            "ansible_become_user=bob",
        ],
    )?;
    assert!(ok.status.success(), "-E:\n{}", text(&ok));
    assert!(text(&ok).contains("rc=0 >>\nbob"), "-E:\n{}", text(&ok));

    let bad = become_id(&tb, "spindle", &["-e", "ansible_become_flags=-HSnb"])?;
    let out = text(&bad);
    assert!(!bad.status.success(), "-b:\n{out}");
    assert!(
        out.contains("Spindle cannot honour sudo's -b: it runs the command in the background"),
        "-b:\n{out}"
    );
    Ok(())
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ansible -m command -a 'id -un' --become` on sp2 as `user`, through
/// Spindle (a stock run cannot pass such a rule: it runs a shell).
fn play_as(tb: &Testbed, user: &str) -> Result<std::process::Output> {
    become_id(tb, user, &[])
}

/// `ansible -m command -a 'id -un' --become` on sp2 as `user` through
/// Spindle, with more arguments for `ansible`.
fn become_id(tb: &Testbed, user: &str, args: &[&str]) -> Result<std::process::Output> {
    use spindle_tests::playbook::{root, venv};
    Ok(std::process::Command::new(venv().join("bin/ansible"))
        .args(["-i"])
        .arg(&tb.inventory)
        .args(["sp2", "-c", "spindle", "--become"])
        .args(args)
        // Extra vars: the inventory's ansible_user would beat `-u`.
        .args(["-e", &format!("ansible_user={user}")])
        .args(["-m", "command", "-a", "id -un"])
        .args(["-e", "ansible_python_interpreter=/usr/bin/python3"])
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            root().join("ansible-plugin/connection_plugins"),
        )
        .env("SPINDLE_BIN", spindle_tests::spindle_bin())
        .env("ANSIBLE_NOCOLOR", "1")
        // No ControlPersist master outliving the run (as in the suites).
        .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
        .output()?)
}

/// 25 accounts in one loop with at most 4 child agents kept: every task
/// runs as its account, and the host never holds more agents than that.
#[test]
fn child_agents_are_recycled_beyond_the_limit() -> Result<()> {
    let tb = Testbed::load()?;
    let _lock = tb.host("sp2")?.lock()?;
    // The run's controller inherits the limit from the environment.
    std::env::set_var("SPINDLE_MAX_ACCOUNTS", "4");
    let stock = play(&tb, "become/many_users.yml", "ssh", None)?;
    let spindle = play(&tb, "become/many_users.yml", "spindle", None)?;
    assert_eq!(spindle, stock, "recaps differ");
    Ok(())
}
