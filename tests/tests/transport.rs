//! The transport against real hosts: the testbed's sshd, accounts and
//! network namespaces (`cargo xtask testbed up`). Each test that counts
//! logins, files or processes on a host holds that host's lock.

use anyhow::Result;
use spindle_controller::protocol::{Exec, Put};
use spindle_controller::Host;
use spindle_tests::{peak_rss_kib, run_measuring_rss, sha256, tx_bytes, Testbed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The login account's uid on every testbed host.
const LOGIN_UID: u32 = 2001;

async fn stdout(host: &Host, script: &str) -> String {
    let out = host.exec(Exec::shell(script)).await.expect("exec");
    assert_eq!(
        out.code,
        Some(0),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[tokio::test]
async fn hello_describes_the_target() -> Result<()> {
    let tb = Testbed::load()?;
    let host = tb.connect("sp2")?;
    let link = host.link().await?;
    let hello = link.hello();
    assert_eq!(hello.user, tb.login_user);
    assert_eq!(hello.uid, LOGIN_UID);
    assert_eq!(hello.arch, "x86_64");
    assert_eq!(hello.home, "/home/spindle");
    assert!(
        hello.pythons.iter().any(|p| p == "/usr/bin/python3"),
        "{:?}",
        hello.pythons
    );
    Ok(())
}

/// Bootstrapping must leave no trace on the target's disk: the overlay's
/// upper directory (everything the host wrote) is the same before and after,
/// apart from what any ssh login writes.
#[tokio::test]
async fn bootstrap_writes_nothing_to_disk() -> Result<()> {
    let tb = Testbed::load()?;
    for name in ["sp1", "spnopy"] {
        let th = tb.host(name)?;
        let _lock = th.lock()?;
        // A plain login first, so login bookkeeping files exist already.
        th.ssh(&tb, "true")?;
        let before = th.upper_files()?;
        let host = tb.connect(name)?;
        host.ping().await?;
        assert_eq!(stdout(&host, "echo hi").await, "hi\n");
        host.disconnect().await;
        assert!(th
            .wait_no_processes(LOGIN_UID, Duration::from_secs(5))?
            .is_empty());
        let after = th.upper_files()?;
        let changed: Vec<_> = after
            .iter()
            .filter(|(p, size)| before.get(*p) != Some(size) && !is_login_log(p))
            .collect();
        assert!(changed.is_empty(), "{name}: bootstrap wrote {changed:?}");
    }
    Ok(())
}

fn is_login_log(p: &std::path::Path) -> bool {
    ["var/log/wtmp", "var/log/btmp", "var/log/lastlog"]
        .iter()
        .any(|l| p == std::path::Path::new(l))
}

#[tokio::test]
async fn thousand_sequential_and_two_hundred_concurrent_execs_one_login() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp3")?;
    let _lock = th.lock()?;
    let logins = th.auth_count()?;
    let host = tb.connect("sp3")?;
    // Concurrent first requests share one connection attempt.
    let mut first = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let host = host.clone();
        first.spawn(async move { host.ping().await });
    }
    while let Some(r) = first.join_next().await {
        r??;
    }
    for i in 0..1000 {
        let req = Exec::argv(["echo".to_owned(), format!("seq-{i}")]);
        let out = host.exec(req).await?;
        assert_eq!(out.stdout, format!("seq-{i}\n").into_bytes());
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let host = host.clone();
        set.spawn(async move {
            let out = host
                .exec(Exec::shell(format!("sleep 0.2; echo con-{i}")))
                .await?;
            anyhow::ensure!(
                out.stdout == format!("con-{i}\n").into_bytes(),
                "request {i} got {:?}",
                out
            );
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    host.disconnect().await;
    // sshd logs the login as it happens; allow the log line to land.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        th.auth_count()? - logins,
        1,
        "expected exactly one ssh login"
    );
    Ok(())
}

const RSS_LIMIT_KIB: u64 = 64 << 10;

/// 64 MiB of stdout from one command, streamed through the `spindle` CLI:
/// intact, and neither end holds it all in memory.
#[tokio::test]
async fn large_stdout_streams_with_bounded_memory() -> Result<()> {
    let tb = Testbed::load()?;
    let host = tb.connect("sp4")?;
    let dir = host.make_temp_dir(Some("/var/tmp".into())).await?;
    let file = format!("{dir}/out.bin");
    let remote_sum = stdout(
        &host,
        &format!("head -c 67108864 /dev/urandom >{file}; sha256sum <{file}"),
    )
    .await;
    let agent_pid = host.link().await?.hello().pid;

    let local = std::env::temp_dir().join(format!("spindle-stdout-{}", std::process::id()));
    let out = std::fs::File::create(&local)?;
    let (status, rss) = run_measuring_rss(
        std::process::Command::new(spindle_tests::spindle_bin())
            .args([
                "-F",
                &tb.ssh_config.display().to_string(),
                "exec",
                "sp4",
                "--",
                &format!("cat {file}"),
            ])
            .stdout(out),
    )?;
    assert!(status.success());
    let data = std::fs::read(&local)?;
    std::fs::remove_file(&local)?;
    assert_eq!(data.len(), 64 << 20);
    assert_eq!(
        sha256(&data),
        remote_sum.split_whitespace().next().unwrap_or("")
    );
    assert!(rss < RSS_LIMIT_KIB, "controller peak RSS {rss} KiB");
    assert!(peak_rss_kib(agent_pid)? < RSS_LIMIT_KIB);
    host.remove_temp_dir(&dir).await?;
    Ok(())
}

/// 1 GiB up and down through the CLI: identical bytes, bounded memory on
/// both ends.
#[tokio::test]
async fn one_gib_put_and_fetch() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp4")?;
    let _lock = th.lock()?;
    let dir = std::env::temp_dir().join(format!("spindle-gib-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("src.bin");
    let back = dir.join("back.bin");
    let expected = write_pseudo_random(&src, 1 << 30)?;
    let cfg = tb.ssh_config.display().to_string();

    let (status, put_rss) = run_measuring_rss(
        std::process::Command::new(spindle_tests::spindle_bin()).args([
            "-F",
            &cfg,
            "put",
            &src.display().to_string(),
            "sp4:/var/tmp/gib.bin",
        ]),
    )?;
    assert!(status.success());
    let host = tb.connect("sp4")?;
    let remote_sum = stdout(&host, "sha256sum </var/tmp/gib.bin").await;
    assert_eq!(
        remote_sum.split_whitespace().next(),
        Some(expected.as_str())
    );

    let (status, fetch_rss) = run_measuring_rss(
        std::process::Command::new(spindle_tests::spindle_bin()).args([
            "-F",
            &cfg,
            "fetch",
            "sp4:/var/tmp/gib.bin",
            &back.display().to_string(),
        ]),
    )?;
    assert!(status.success());
    assert_eq!(file_sha256(&back)?, expected);
    assert!(
        put_rss < RSS_LIMIT_KIB,
        "controller peak RSS during put: {put_rss} KiB"
    );
    assert!(
        fetch_rss < RSS_LIMIT_KIB,
        "controller peak RSS during fetch: {fetch_rss} KiB"
    );

    // The agent's memory across a put and a fetch of 1 GiB on one link.
    let link = host.link().await?;
    let req = Put::new("/var/tmp/gib2.bin");
    host.put_file(&src, req).await?;
    host.fetch("/var/tmp/gib2.bin", tokio::io::sink()).await?;
    let agent_rss = peak_rss_kib(link.hello().pid)?;
    assert!(agent_rss < RSS_LIMIT_KIB, "agent peak RSS {agent_rss} KiB");
    stdout(&host, "rm -f /var/tmp/gib.bin /var/tmp/gib2.bin").await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Writes `len` bytes of cheap pseudo-random data; returns their sha256.
fn write_pseudo_random(path: &std::path::Path, len: usize) -> Result<String> {
    use sha2::Digest;
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut h = sha2::Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..len / block.len() {
        for w in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        h.update(&block);
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(hex::encode(h.finalize()))
}

fn file_sha256(path: &std::path::Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A reader looping on the destination while puts replace it only ever
/// sees one whole version or the other.
#[tokio::test]
async fn readers_never_see_partial_puts() -> Result<()> {
    let tb = Testbed::load()?;
    let host = tb.connect("sp2")?;
    let dir = host.make_temp_dir(None).await?;
    let path = format!("{dir}/f");
    let a = vec![b'a'; 3 << 20];
    let b = vec![b'b'; 3 << 20];
    host.put(&a[..], a.len() as u64, Put::new(&path)).await?;
    let (sum_a, sum_b) = (sha256(&a), sha256(&b));

    let reader = {
        let host = host.clone();
        let script = format!("for i in $(seq 400); do sha256sum <{path}; done");
        tokio::spawn(async move { host.exec(Exec::shell(&script)).await })
    };
    for i in 0..30 {
        let data = if i % 2 == 0 { &b } else { &a };
        host.put(&data[..], data.len() as u64, Put::new(&path))
            .await?;
    }
    let out = reader.await??;
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count(), 400);
    for line in text.lines() {
        let sum = line.split_whitespace().next().unwrap_or("");
        assert!(
            sum == sum_a || sum == sum_b,
            "reader saw partial content: {sum}"
        );
    }
    host.remove_temp_dir(&dir).await?;
    Ok(())
}

/// SIGKILL the agent mid-request: the request fails promptly as
/// unreachable, the command it ran dies with it, and the next request
/// reconnects.
#[tokio::test]
async fn killed_agent_fails_in_flight_requests_and_reconnects() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp1")?;
    let _lock = th.lock()?;
    let host = tb.connect("sp1")?;
    let pid = host.link().await?.hello().pid;
    let slow = {
        let host = host.clone();
        let req = Exec::argv(["sleep", "31"]);
        tokio::spawn(async move { host.exec(req).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sleeping = |procs: Vec<(u32, String)>| procs.into_iter().any(|(_, cmd)| cmd == "sleep 31");
    assert!(sleeping(th.processes_of(LOGIN_UID)?));
    let t0 = Instant::now();
    // The testbed shares our pid namespace, so the hello's pid is killable.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    // A hang guard, not a performance assertion.
    let err = tokio::time::timeout(Duration::from_secs(20), slow)
        .await??
        .unwrap_err();
    eprintln!("in-flight request failed after {:?}: {err}", t0.elapsed());
    assert!(err.is_unreachable(), "{err}");
    // The agent's direct child dies with it (parent-death signal).
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !sleeping(th.processes_of(LOGIN_UID)?),
        "the command outlived its agent"
    );
    host.ping().await?;
    assert_ne!(host.link().await?.hello().pid, pid);
    host.disconnect().await;
    Ok(())
}

/// Cutting the network mid-request fails it within the configured
/// dead-link time instead of hanging.
#[tokio::test]
async fn cut_link_fails_within_timeout() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp3")?;
    let _lock = th.lock()?;
    let mut opts = tb.ssh_options();
    opts.dead_after = Some(Duration::from_secs(3));
    let controller = tb.controller()?;
    let mut target = tb.target("sp3", None);
    target.transport = spindle_controller::Transport::Ssh(opts);
    let host: Arc<Host> = controller.host(target);
    host.ping().await?;
    let slow = {
        let host = host.clone();
        tokio::spawn(async move { host.exec(Exec::shell("sleep 60")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let link = |state: &str| {
        std::process::Command::new("ip")
            .args(["link", "set", &th.veth, state])
            .status()
    };
    link("down")?;
    let result = tokio::time::timeout(Duration::from_secs(30), slow).await;
    link("up")?;
    let err = result??.unwrap_err();
    eprintln!("request failed {:?} after the cut: {err}", t0.elapsed());
    assert!(err.is_unreachable(), "{err}");
    // ip link up restores the route; the next request reconnects.
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.ping().await?;
    Ok(())
}

/// After a disconnect, nothing of ours runs on the target: not the agent,
/// not a command that was still running.
#[tokio::test]
async fn disconnect_leaves_no_process() -> Result<()> {
    let tb = Testbed::load()?;
    let th = tb.host("sp1")?;
    let _lock = th.lock()?;
    let host = tb.connect("sp1")?;
    host.ping().await?;
    let running = {
        let host = host.clone();
        tokio::spawn(async move { host.exec(Exec::shell("sleep 300 & sleep 200")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!th.processes_of(LOGIN_UID)?.is_empty());
    host.disconnect().await;
    drop(host);
    let err = tokio::time::timeout(Duration::from_secs(20), running)
        .await??
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    let left = th.wait_no_processes(LOGIN_UID, Duration::from_secs(10))?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

/// Every Python from 3.6 to 3.13 bootstraps the agent (3.6 and 3.7 through
/// ctypes), and a host without Python gets it through /bin/sh.
#[tokio::test]
async fn bootstrap_with_each_python_and_without() -> Result<()> {
    let tb = Testbed::load()?;
    let controller = tb.controller()?;
    let mut tried = Vec::new();
    for (version, path) in &tb.pythons {
        if version.starts_with('2') {
            continue;
        }
        let host = controller.host(tb.target("sp2", Some(path)));
        let out = stdout(&host, "echo ok").await;
        assert_eq!(out, "ok\n", "python {version}");
        tried.push(version.clone());
    }
    for v in ["3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"] {
        assert!(tried.iter().any(|t| t == v), "testbed lacks python {v}");
    }
    let nopy = controller.host(tb.target("spnopy", None));
    let link = nopy.link().await?;
    assert!(
        link.hello().pythons.is_empty(),
        "{:?}",
        link.hello().pythons
    );
    assert_eq!(stdout(&nopy, "echo ok").await, "ok\n");
    Ok(())
}

/// The compressed agent sent right behind the stage lines: a host of its
/// architecture runs it, so one agent crosses the link; a stage expecting
/// another reads past it and gets the one it announces, and the next
/// bootstrap sends that architecture's ahead. (Holds sp3's lock: it counts
/// the bytes sent to the host. Every test of this file that reaches sp3
/// holds it; test binaries run one at a time.)
#[tokio::test]
async fn agent_sent_ahead_is_run_or_read_past() -> Result<()> {
    use spindle_bootstrap::Codec;
    let tb = Testbed::load()?;
    let th = tb.host("sp3")?;
    let _lock = th.lock()?;
    let arch = std::env::consts::ARCH;
    let other = if arch == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    };
    let store = spindle_tests::agents()?;
    let own_len = store.binary(arch, Codec::Xz)?.len() as u64;
    let other_len = store.binary(other, Codec::Xz)?.len() as u64;
    // What else a bootstrap sends: ssh's handshake, the stage lines, TCP's
    // own bytes; well under a third of an agent.
    let slack = own_len / 3;

    // Expecting this machine's architecture, as a fresh controller does.
    assert_eq!(store.expected_arch().as_deref(), Some(arch));
    let controller = spindle_controller::Controller::new(store);
    let before = tx_bytes(&th.veth)?;
    let host = controller.host(tb.target("sp3", None));
    assert_eq!(stdout(&host, "echo ok").await, "ok\n");
    let sent = tx_bytes(&th.veth)? - before;
    assert!(
        (own_len..own_len + slack).contains(&sent),
        "{sent} bytes sent for a {own_len}-byte agent"
    );

    // Expecting another architecture: both agents cross the link.
    let store = spindle_tests::agents()?;
    store.announced(other, Codec::Xz);
    let controller = spindle_controller::Controller::new(store);
    let before = tx_bytes(&th.veth)?;
    let host = controller.host(tb.target("sp3", None));
    assert_eq!(stdout(&host, "echo ok").await, "ok\n");
    assert_eq!(host.link().await?.hello().arch, arch);
    let sent = tx_bytes(&th.veth)? - before;
    let both = own_len + other_len;
    assert!(
        (both..both + slack).contains(&sent),
        "{sent} bytes sent for agents of {other_len} and {own_len} bytes"
    );

    // The same controller now expects the architecture it was told (here
    // through the Python stage alone: the interpreter is named).
    let before = tx_bytes(&th.veth)?;
    let host = controller.host(tb.target("sp3", Some("/usr/bin/python3")));
    assert_eq!(stdout(&host, "echo ok").await, "ok\n");
    let sent = tx_bytes(&th.veth)? - before;
    assert!(
        (own_len..own_len + slack).contains(&sent),
        "{sent} bytes sent for a {own_len}-byte agent after a stage announced {arch}"
    );

    // After a stage that could not decompress, nothing is sent ahead; an
    // architecture without an agent is not remembered.
    let store = spindle_tests::agents()?;
    store.announced(arch, Codec::Raw);
    assert_eq!(store.expected_arch(), None);
    store.announced("armv7l", Codec::Xz);
    assert_eq!(store.expected_arch(), None);
    store.announced(other, Codec::Xz);
    assert_eq!(store.expected_arch().as_deref(), Some(other));
    Ok(())
}

#[tokio::test]
async fn unreachable_hosts_are_reported_as_such() -> Result<()> {
    let tb = Testbed::load()?;
    let controller = tb.controller()?;
    let mut target = tb.target("sp1", None);
    target.dest.port = Some(2); // nothing listens there
    let err = controller.host(target).ping().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");

    let mut target = tb.target("sp1", None);
    target.dest.user = Some("nosuchuser".into());
    let err = controller.host(target).ping().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("Permission denied"), "{err}");
    Ok(())
}
