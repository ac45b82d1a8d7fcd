//! Ansible modules run by Spindle's warm interpreters, compared with stock
//! Ansible: a recording ssh connection plugin captures the exact pipelined
//! payloads (and raw results) of a stock `ansible-playbook` run on the
//! testbed; each payload is then replayed through Spindle and must give the
//! same result. Needs ansible-core in `target/ansible-venv` (`cargo xtask
//! test` installs it) or `$SPINDLE_ANSIBLE_VENV`.

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::Value;
use spindle_controller::protocol::ModuleEntry;
use spindle_controller::{BecomeSpec, Host, Module};
use spindle_tests::playbook::{root, venv};
use spindle_tests::{tx_bytes, Testbed};
use std::path::{Path, PathBuf};

struct Record {
    payload: PathBuf,
    rc: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs the recording playbook against `host` with stock Ansible.
fn record(tb: &Testbed, host: &str) -> Result<Vec<Record>> {
    let dir = std::env::temp_dir().join(format!("spindle-record-{host}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let plays = root().join("tests/ansible/record");
    let playbook = venv().join("bin/ansible-playbook");
    let out = std::process::Command::new(&playbook)
        .arg("-i")
        .arg(&tb.inventory)
        .args(["-c", "spindle_record", "-e", &format!("target={host}")])
        .arg(plays.join("modules.yml"))
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            plays.join("connection_plugins"),
        )
        .env("ANSIBLE_LIBRARY", plays.join("library"))
        .env("ANSIBLE_PIPELINING", "True")
        // No ControlPersist master outliving the run (and the host lock).
        .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("SPINDLE_RECORD_DIR", &dir)
        .output()
        .with_context(|| {
            format!(
                "running {} (is ansible-core installed?)",
                playbook.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "stock ansible-playbook failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut records = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "payload"))
        .collect();
    names.sort();
    for payload in names {
        let meta: Value = serde_json::from_slice(&std::fs::read(payload.with_extension("json"))?)?;
        let b64 = |k: &str| {
            base64::engine::general_purpose::STANDARD.decode(meta[k].as_str().unwrap_or_default())
        };
        records.push(Record {
            rc: meta["rc"].as_i64().unwrap_or(-1) as i32,
            stdout: b64("stdout")?,
            stderr: b64("stderr")?,
            payload,
        });
    }
    Ok(records)
}

/// Splits a payload with the plugin's splitter.
fn split(payload: &Path) -> Result<Module> {
    let out = std::process::Command::new("python3")
        .args(["-m", "spindle_ansible.payload", "split"])
        .arg(payload)
        .env("PYTHONPATH", root().join("ansible-plugin"))
        .output()?;
    if !out.status.success() {
        bail!("split failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    let zip = base64::engine::general_purpose::STANDARD.decode(s("zip_b64").unwrap_or_default())?;
    let entry = match s("entry").as_deref() {
        Some("loader") => ModuleEntry::Loader,
        _ => ModuleEntry::Runpy,
    };
    let mut m = Module::new(
        zip,
        entry,
        s("fqn").unwrap_or_default(),
        s("params").unwrap_or_default(),
    );
    m.profile = s("profile");
    m.extensions = s("extensions");
    m.secrets = s("secrets");
    m.rlimit_nofile = v["rlimit_nofile"].as_u64().unwrap_or(0);
    Ok(m)
}

/// The module's JSON result with fields that differ between any two runs
/// (timings, access times) removed.
fn normalized(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let start = text
        .find('{')
        .with_context(|| format!("no JSON in {text:?}"))?;
    let mut v: Value = serde_json::from_str(text[start..].trim())
        .with_context(|| format!("module output is not JSON: {text:?}"))?;
    strip(&mut v);
    Ok(v)
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for k in ["start", "end", "delta", "atime"] {
                map.remove(k);
            }
            map.values_mut().for_each(strip);
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

async fn replay(host: &Host, record: &Record) -> Result<(i32, Value, Vec<u8>)> {
    let module = split(&record.payload)?;
    let out = host
        .run_module("/usr/bin/python3", &module, Vec::new())
        .await?;
    Ok((out.code.unwrap_or(-1), normalized(&out.stdout)?, out.stderr))
}

/// Every recorded module gives stock's result under Spindle, run after run
/// in one interpreter; the misbehaving module finds nothing left over by its
/// previous run.
#[tokio::test]
async fn modules_match_stock_runs() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp2")?;
    let _lock = th.lock()?;
    th.ssh(
        &tb,
        "rm -rf /tmp/spindle-record-lines /tmp/spindle-record-copy ~/.ansible",
    )?;
    let records = record(&tb, "sp2")?;
    assert!(
        records.len() >= 14,
        "recorded only {} payloads",
        records.len()
    );
    let host = tb.connect("sp2")?;
    // Restore the state the stock run started from (lineinfile's and
    // copy's files, and the remote_tmp a module creates on first use).
    host.exec(spindle_controller::protocol::Exec::shell(
        "rm -rf /tmp/spindle-record-lines /tmp/spindle-record-copy ~/.ansible",
    ))
    .await?;
    for r in &records {
        let (rc, result, stderr) = replay(&host, r).await?;
        let name = r.payload.display();
        assert_eq!(rc, r.rc, "{name}: rc");
        assert_eq!(result, normalized(&r.stdout)?, "{name}: result");
        assert_eq!(
            String::from_utf8_lossy(&stderr),
            String::from_utf8_lossy(&r.stderr),
            "{name}: stderr"
        );
    }
    // The leaky module ran twice in the same interpreter: its second run
    // must have found nothing of the first.
    let leaky = records.last().context("no records")?;
    let (_, result, _) = replay(&host, leaky).await?;
    assert_eq!(result["found"]["env"], Value::Null, "{result}");
    assert_eq!(result["found"]["patched_getcwd"], Value::Bool(false));
    assert_eq!(result["found"]["imported_leak_module"], Value::Bool(false));
    Ok(())
}

/// The module bundle crosses the link once, packed: a second run of the same
/// module sends only its arguments (counted in bytes on the host's veth), and
/// another module's bundle only what it does not share with the first.
#[tokio::test]
async fn second_run_sends_no_code() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp4")?;
    let _lock = th.lock()?;
    let records = record(&tb, "sp4")?;
    let ping = records.first().context("no ping recorded")?;
    let module = split(&ping.payload)?;
    let host = tb.connect("sp4")?;
    host.ping().await?;
    let agent = host.link().await?.hello().pid;
    let tx = || tx_bytes(&th.veth);
    let t0 = tx()?;
    host.run_module("/usr/bin/python3", &module, Vec::new())
        .await?;
    let first = tx()? - t0;
    let t1 = tx()?;
    host.run_module("/usr/bin/python3", &module, Vec::new())
        .await?;
    let second = tx()? - t1;
    eprintln!(
        "bundle {} bytes; first run sent {first} bytes, second {second}",
        module.zip.len()
    );
    // Packed: its members' contents in one LZMA stream, smaller than
    // Ansible's zip of them.
    assert!(
        first > module.zip.len() as u64 / 2,
        "first run must carry the bundle"
    );
    assert!(
        first < module.zip.len() as u64,
        "the bundle crossed unpacked: {first} bytes"
    );
    assert!(second < 16 << 10, "second run sent {second} bytes");

    // Another module's bundle shares most of ping's (module_utils): only
    // what ping's lacked crosses the link, and the module still runs.
    let (other, command) = records
        .iter()
        .find_map(|r| {
            let m = split(&r.payload).ok()?;
            (m.fqn == "ansible.modules.command").then_some((r, m))
        })
        .context("no command recorded")?;
    let t2 = tx()?;
    let out = host
        .run_module("/usr/bin/python3", &command, Vec::new())
        .await?;
    let third = tx()? - t2;
    assert_eq!(
        host.link().await?.hello().pid,
        agent,
        "the agent was replaced during the test"
    );
    eprintln!(
        "command's bundle {} bytes; its first run sent {third} bytes",
        command.zip.len()
    );
    assert_eq!(
        out.code,
        Some(other.rc),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        third < command.zip.len() as u64 / 2,
        "command's first run sent {third} bytes of a {} byte bundle",
        command.zip.len()
    );
    Ok(())
}

/// An account reached through become gets its child agent, and its module
/// bundles, from the login account's agent on the host: a bundle a become
/// task needs first crosses the link once, for both accounts.
#[tokio::test]
async fn become_account_gets_agent_and_bundles_on_the_host() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp4")?;
    let _lock = th.lock()?;
    let records = record(&tb, "sp4")?;
    let ping = split(&records.first().context("no ping recorded")?.payload)?;
    let host = tb.connect("sp4")?;
    host.ping().await?;
    let root = BecomeSpec {
        method: "sudo".into(),
        exe: "sudo".into(),
        flags: Vec::new(),
        user: "root".into(),
        password: None,
        prompts: Vec::new(),
        timeout: None,
    };
    let tx = || tx_bytes(&th.veth);
    let ran = |out: spindle_controller::ExecOutput| {
        assert_eq!(
            out.code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\"ping\""),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    let t0 = tx()?;
    ran(host
        .run_module_as(Some(&root), "/usr/bin/python3", &ping, Vec::new())
        .await?);
    let as_root = tx()? - t0;
    let t1 = tx()?;
    ran(host
        .run_module("/usr/bin/python3", &ping, Vec::new())
        .await?);
    let as_login = tx()? - t1;
    let bundle = ping.zip.len() as u64;
    eprintln!(
        "bundle {bundle} bytes; root's agent and its first run sent {as_root} bytes, \
         the login account's first run then {as_login}"
    );
    // The bundle once; no agent binary (over 200 KB).
    assert!(
        as_root > bundle / 2,
        "the bundle never crossed: {as_root} bytes"
    );
    assert!(as_root < bundle + (32 << 10), "sent {as_root} bytes");
    assert!(
        as_login < 16 << 10,
        "the bundle crossed again: {as_login} bytes"
    );
    Ok(())
}

/// The oldest target Python the installed ansible-core supports (its
/// `basic._PY_MIN`: 3.8 for 2.19, 3.9 for 2.21), as a minor version.
fn oldest_target_python() -> Result<u32> {
    let out = std::process::Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "from ansible.module_utils.basic import _PY_MIN; print(_PY_MIN[1])",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "reading ansible-core's _PY_MIN failed"
    );
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// The same payloads run on every target Python the installed ansible-core
/// supports (3.8 or 3.9 to 3.13) and give stock's result.
#[tokio::test]
async fn modules_run_on_every_supported_python() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp3")?;
    let _lock = th.lock()?;
    let records = record(&tb, "sp3")?;
    // ping, and a command whose output does not depend on the interpreter.
    let chosen = [&records[0], &records[1]];
    let host = tb.connect("sp3")?;
    let oldest = oldest_target_python()?;
    let mut tried = 0;
    for (version, python) in &tb.pythons {
        let minor: u32 = version
            .strip_prefix("3.")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if minor < oldest {
            continue;
        }
        for r in chosen {
            let module = split(&r.payload)?;
            let out = host.run_module(python, &module, Vec::new()).await?;
            assert_eq!(
                out.code,
                Some(r.rc),
                "python {version}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                normalized(&out.stdout)?,
                normalized(&r.stdout)?,
                "python {version}"
            );
        }
        tried += 1;
    }
    assert_eq!(
        tried,
        14 - oldest,
        "expected Pythons 3.{oldest} to 3.13 on the testbed"
    );
    Ok(())
}

/// More interpreter paths than the cap: at most 20 interpreters live at
/// once, every run still succeeds, and a killed interpreter is replaced.
#[tokio::test]
async fn interpreter_cap_and_replacement() -> Result<()> {
    const LOGIN_UID: u32 = 2001;
    let tb = Testbed::load()?;
    let th = tb.host("sp1")?;
    let _lock = th.lock()?;
    let records = record(&tb, "sp1")?;
    let ping = split(&records[0].payload)?;
    let host = tb.connect("sp1")?;
    // 21 distinct interpreter paths: links to the system Python.
    let links =
        "d=$(mktemp -d); for i in $(seq 21); do ln -s /usr/bin/python3 $d/py$i; done; echo $d";
    let dir = host
        .exec(spindle_controller::protocol::Exec::shell(links))
        .await?;
    let dir = String::from_utf8(dir.stdout)?.trim().to_owned();
    // Interpreters, not the spare children they fork ahead of tasks (which
    // share their command line).
    let zygotes = |th: &spindle_tests::TestHost| -> Result<Vec<(u32, String)>> {
        let pythons: Vec<(u32, String)> = th
            .processes_of(LOGIN_UID)?
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("exec(sys.stdin.read())"))
            .collect();
        let parent = |pid: u32| -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
        };
        Ok(pythons
            .iter()
            .filter(|(pid, _)| {
                parent(*pid).is_none_or(|ppid| !pythons.iter().any(|(p, _)| *p == ppid))
            })
            .cloned()
            .collect())
    };
    for i in 1..=21 {
        let out = host
            .run_module(&format!("{dir}/py{i}"), &ping, Vec::new())
            .await?;
        assert_eq!(
            out.code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            zygotes(th)?.len() <= 20,
            "more than 20 interpreters after {i} paths"
        );
    }
    assert_eq!(zygotes(th)?.len(), 20);

    // Kill one; the next run on that path gets a fresh interpreter.
    let (victim, _) = zygotes(th)?
        .into_iter()
        .find(|(_, c)| c.contains("/py21 "))
        .context("py21 zygote")?;
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = host
        .run_module(&format!("{dir}/py21"), &ping, Vec::new())
        .await?;
    assert_eq!(
        out.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(zygotes(th)?.iter().all(|(pid, _)| *pid != victim));
    host.disconnect().await;
    Ok(())
}
