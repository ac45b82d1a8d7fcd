//! ssh's ControlPersist, as the ssh plugin's settings ask for it (Ansible's
//! default ssh_args do): a run leaves the master behind, the next run logs
//! in through it, and `meta: reset_connection` stops it. A binary of its
//! own: logins on the host are counted.

use anyhow::{Context, Result};
use spindle_tests::playbook::{play_env, stop_masters, DEFAULT_SSH_ARGS};
use spindle_tests::Testbed;

/// Logins of three runs with `connection`: `connection/persist.yml` twice,
/// then `connection/persist_reset.yml` (a reset between its two tasks).
fn logins(tb: &Testbed, connection: &str) -> Result<[usize; 3]> {
    let th = tb.host("sp2")?;
    let dir = std::env::temp_dir().join(format!("spindle-cp-{connection}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let dir_text = dir.display().to_string();
    let env = [
        ("ANSIBLE_SSH_ARGS", DEFAULT_SSH_ARGS),
        ("ANSIBLE_SSH_CONTROL_PATH_DIR", dir_text.as_str()),
    ];
    let counted = (|| -> Result<[usize; 3]> {
        let mut counts = [0; 3];
        let mut last = th.auth_count()?;
        let runs = ["persist.yml", "persist.yml", "persist_reset.yml"];
        for (i, playbook) in runs.iter().enumerate() {
            let result = play_env(tb, &format!("connection/{playbook}"), connection, &[], &env);
            let now = th.auth_count()?;
            counts[i] = now - last;
            last = now;
            result?;
            let sockets = std::fs::read_dir(&dir)?.count();
            anyhow::ensure!(sockets == 1, "{sockets} control sockets after run {i}");
        }
        Ok(counts)
    })();
    stop_masters(&dir);
    counted
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn control_persist_is_shared_across_runs_and_reset() -> Result<()> {
    let tb = Testbed::load()?;
    let _lock = tb.host("sp2")?.lock()?;
    let stock = logins(&tb, "ssh").context("stock")?;
    let spindle = logins(&tb, "spindle").context("Spindle")?;
    assert_eq!(stock, [1, 0, 1], "stock logins per run");
    assert_eq!(spindle, stock, "Spindle logins per run");
    Ok(())
}
