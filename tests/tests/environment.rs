//! The environment of each request is what a fresh SSH login would see at
//! that moment: edits of /etc/environment (pam_env's rules) reach commands
//! and modules run later over the same long-lived connection.

use anyhow::Result;
use spindle_protocol::Exec;
use spindle_tests::Testbed;
use std::collections::BTreeMap;

/// The `SPINDLE_ENV_*` variables in `env` output.
fn ours(env_output: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(env_output)
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("SPINDLE_ENV_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Puts /etc/environment back however the test ends.
struct Restore(std::path::PathBuf, Option<Vec<u8>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = match &self.1 {
            Some(old) => std::fs::write(&self.0, old),
            None => std::fs::remove_file(&self.0),
        };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etc_environment_edits_reach_later_requests() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp3")?;
    let _lock = th.lock()?;
    let path = th.root_path("/etc/environment");
    let _restore = Restore(path.clone(), std::fs::read(&path).ok());
    let original = String::from_utf8(std::fs::read(&path).unwrap_or_default())?;

    std::fs::write(
        &path,
        format!(
            "{original}\nSPINDLE_ENV_KEEP=same\nSPINDLE_ENV_CHANGE=old\nSPINDLE_ENV_DROP=gone\n"
        ),
    )?;
    let host = tb.connect("sp3")?;
    let env = |host: std::sync::Arc<spindle_controller::Host>| async move {
        let out = host.exec(Exec::argv(["env"])).await?;
        anyhow::Ok(ours(&out.stdout))
    };
    let first = env(host.clone()).await?;
    assert_eq!(
        first.get("SPINDLE_ENV_CHANGE").map(String::as_str),
        Some("old")
    );

    std::fs::write(
        &path,
        format!(
            "{original}\nSPINDLE_ENV_KEEP=same\nSPINDLE_ENV_CHANGE=\"new value\"\nexport SPINDLE_ENV_ADDED=1\n"
        ),
    )?;
    let later = env(host.clone()).await?;
    // What a fresh login sees now, through plain ssh.
    let fresh = ours(&th.ssh(&tb, "env")?.stdout);
    let expected: BTreeMap<String, String> = [
        ("SPINDLE_ENV_ADDED", "1"),
        ("SPINDLE_ENV_CHANGE", "new value"),
        ("SPINDLE_ENV_KEEP", "same"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(fresh, expected, "a fresh login");
    assert_eq!(later, expected, "the same Spindle connection");

    // A task's own variables still win over the files.
    let mut req = Exec::argv(["env"]);
    req.env = vec![("SPINDLE_ENV_CHANGE".into(), "task".into())];
    let out = host.exec(req).await?;
    assert_eq!(
        ours(&out.stdout)
            .get("SPINDLE_ENV_CHANGE")
            .map(String::as_str),
        Some("task")
    );
    Ok(())
}
