//! The agent binaries driven directly through their protocol, without SSH:
//! how they treat malformed input, and proof that the aarch64 build runs
//! (under `qemu-aarch64-static`), child agents included.

use spindle_controller::protocol::{
    frame, ErrorKind, Exec, FromAgent, Ping, Reply, Request, ToAgent, WireError, HELLO_MAGIC,
};
use spindle_tests::agents_dir;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, ChildStdout, Command as Cmd, Stdio};
use std::time::Duration;

fn spawn(arch: &str) -> Child {
    let bin = agents_dir().join(format!("spindle-agent-{arch}"));
    let mut cmd = if arch == "x86_64" {
        Cmd::new(&bin)
    } else {
        let mut c = Cmd::new("qemu-aarch64-static");
        c.arg(&bin);
        c
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running the {arch} agent ({}): {e}", bin.display()))
}

fn read_frame(out: &mut ChildStdout) -> Option<FromAgent> {
    let mut header = [0u8; 4];
    out.read_exact(&mut header).ok()?;
    let mut body = vec![0; frame::body_len(header).expect("agent frame within limits")];
    out.read_exact(&mut body).ok()?;
    Some(frame::decode_body(&body).expect("agent frame decodes"))
}

fn hello(child: &mut Child) -> spindle_controller::protocol::Hello {
    let out = child.stdout.as_mut().unwrap();
    let mut magic = vec![0u8; HELLO_MAGIC.len()];
    out.read_exact(&mut magic).unwrap();
    assert_eq!(magic, HELLO_MAGIC);
    match read_frame(out) {
        Some(FromAgent::Hello(h)) => h,
        other => panic!("expected hello, got {other:?}"),
    }
}

fn send(child: &mut Child, msg: &ToAgent) {
    let bytes = frame::encode(msg).unwrap();
    child.stdin.as_mut().unwrap().write_all(&bytes).unwrap();
}

/// Reads frames until the reply to `id`, skipping logs.
fn reply(child: &mut Child, id: u64) -> Reply {
    outcome(child, id).unwrap()
}

/// Reads frames until the reply to `id`, skipping logs and other replies.
fn outcome(child: &mut Child, id: u64) -> Result<Reply, WireError> {
    outcomes(child, &[id]).remove(&id).unwrap()
}

/// Reads frames until the replies to all of `ids` (in any order) arrived,
/// skipping logs and other replies.
fn outcomes(child: &mut Child, ids: &[u64]) -> HashMap<u64, Result<Reply, WireError>> {
    let mut got = HashMap::new();
    while got.len() < ids.len() {
        match read_frame(child.stdout.as_mut().unwrap()) {
            Some(FromAgent::Reply { id, result }) if ids.contains(&id) => {
                got.insert(id, result);
            }
            Some(FromAgent::Reply { .. } | FromAgent::Log { .. }) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("agent did not exit");
}

fn expect_closing_log(child: &mut Child, needle: &str) {
    let mut saw = Vec::new();
    while let Some(msg) = read_frame(child.stdout.as_mut().unwrap()) {
        if let FromAgent::Log { message, .. } = &msg {
            if message.contains(needle) {
                return;
            }
        }
        saw.push(msg);
    }
    panic!("no log containing {needle:?}; saw {saw:?}");
}

#[test]
fn malformed_frame_closes_the_agent_with_a_clear_log() {
    let mut child = spawn("x86_64");
    hello(&mut child);
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        .unwrap();
    expect_closing_log(&mut child, "malformed frame");
    assert_eq!(wait_exit(&mut child).code(), Some(1));
}

#[test]
fn oversized_frame_is_refused_without_reading_it() {
    let mut child = spawn("x86_64");
    hello(&mut child);
    // Announce 4 GiB and then keep the pipe open: the agent must not wait
    // for (or allocate) the body.
    child.stdin.as_mut().unwrap().write_all(&[0xff; 4]).unwrap();
    expect_closing_log(&mut child, "exceeds");
    assert_eq!(wait_exit(&mut child).code(), Some(1));
}

#[test]
fn eof_ends_the_agent_and_its_commands() {
    let mut child = spawn("x86_64");
    hello(&mut child);
    let marker = std::env::temp_dir().join(format!("spindle-eof-{}", std::process::id()));
    let req = Exec::shell(format!("sleep 2; touch {}", marker.display()));
    send(
        &mut child,
        &ToAgent::Call {
            id: 1,
            req: Request::Exec(req),
            after: None,
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(child.stdin.take());
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!marker.exists(), "a command outlived the agent");
}

#[test]
fn unknown_request_id_traffic_is_ignored() {
    let mut child = spawn("x86_64");
    hello(&mut child);
    send(&mut child, &ToAgent::Ack { id: 99, frames: 3 });
    send(&mut child, &ToAgent::Cancel { id: 98 });
    send(
        &mut child,
        &ToAgent::Call {
            id: 1,
            req: Request::Ping(Ping {}),
            after: None,
        },
    );
    assert!(matches!(reply(&mut child, 1), Reply::Pong(_)));
}

fn call_after(child: &mut Child, id: u64, after: Option<u64>, script: &str) {
    let req = Request::Exec(Exec::shell(script));
    send(child, &ToAgent::Call { id, req, after });
}

/// A request sent with `after` starts once that request ended, and only if
/// it succeeded; a chain stops at its first failure.
#[test]
fn after_orders_requests_and_stops_at_a_failure() {
    let mut child = spawn("x86_64");
    hello(&mut child);
    let dir = std::env::temp_dir().join(format!("spindle-after-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    // Without `after` the second would find no file.
    call_after(&mut child, 1, None, &format!("sleep 0.3; echo one > {d}/a"));
    call_after(&mut child, 2, Some(1), &format!("cat {d}/a"));
    match reply(&mut child, 2) {
        Reply::Exec(r) => assert_eq!(r.stdout.as_ref(), b"one\n"),
        other => panic!("{other:?}"),
    }
    // A command that exits with 1 fails the chain: the next two never run.
    call_after(&mut child, 3, Some(2), "sleep 0.2; exit 1");
    call_after(&mut child, 4, Some(3), &format!("touch {d}/b"));
    call_after(&mut child, 5, Some(4), &format!("touch {d}/c"));
    for (_, outcome) in outcomes(&mut child, &[4, 5]) {
        let e = outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Skipped, "{e}");
    }
    // Also once the failed request has ended: it is remembered.
    call_after(&mut child, 6, Some(3), &format!("touch {d}/d"));
    assert_eq!(outcome(&mut child, 6).unwrap_err().kind, ErrorKind::Skipped);
    for f in ["b", "c", "d"] {
        assert!(!dir.join(f).exists(), "{f} was made");
    }
    // An `after` that ended well long ago, or that the agent never saw,
    // holds nothing up.
    call_after(&mut child, 7, Some(2), "true");
    call_after(&mut child, 8, Some(1000), "true");
    for (_, outcome) in outcomes(&mut child, &[7, 8]) {
        assert!(matches!(outcome, Ok(Reply::Exec(r)) if r.code == Some(0)));
    }
    // Cancelling a request that waits for another ends the wait.
    call_after(&mut child, 9, None, "sleep 5");
    call_after(&mut child, 10, Some(9), "true");
    send(&mut child, &ToAgent::Cancel { id: 10 });
    assert_eq!(
        outcome(&mut child, 10).unwrap_err().kind,
        ErrorKind::Cancelled
    );
    std::fs::remove_dir_all(&dir).unwrap();
    drop(child.stdin.take());
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

/// The aarch64 agent really runs: hello, ping, a command and one that
/// cannot start, under qemu.
#[test]
fn aarch64_agent_runs_under_qemu() {
    let mut child = spawn("aarch64");
    let h = hello(&mut child);
    assert_eq!(h.arch, "aarch64");
    send(
        &mut child,
        &ToAgent::Call {
            id: 1,
            req: Request::Ping(Ping {}),
            after: None,
        },
    );
    assert!(matches!(reply(&mut child, 1), Reply::Pong(_)));
    let req = Exec::argv(["echo", "from-aarch64"]);
    send(
        &mut child,
        &ToAgent::Call {
            id: 2,
            req: Request::Exec(req),
            after: None,
        },
    );
    match reply(&mut child, 2) {
        Reply::Exec(r) => assert_eq!(r.stdout.as_ref(), b"from-aarch64\n"),
        other => panic!("{other:?}"),
    }
    // Under qemu a vfork is a plain fork: a program that cannot start is
    // still an error, not a command that exits 127.
    let missing = Exec::argv(["/nonexistent/spindle-prog"]);
    send(
        &mut child,
        &ToAgent::Call {
            id: 3,
            req: Request::Exec(missing),
            after: None,
        },
    );
    let err = outcome(&mut child, 3).expect_err("a missing program fails the request");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err:?}");
    drop(child.stdin.take());
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

/// The aarch64 agent starts a child agent through sudo, as for `become`:
/// the child is its own binary, exec'd from a memfd (which the kernel hands
/// to qemu: `testbed up` registers qemu-user-static for aarch64), and
/// commands routed to it run as the other account.
#[test]
fn aarch64_agent_starts_a_child_agent_through_sudo() {
    use spindle_controller::protocol::Become;
    let handler = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    assert!(
        handler.is_ok_and(|h| h.starts_with("enabled")),
        "the kernel has no enabled binfmt_misc handler for aarch64 binaries \
         (`cargo xtask testbed up` registers qemu-user-static's)"
    );
    let mut child = spawn("aarch64");
    hello(&mut child);
    let become_ = Become {
        method: "sudo".into(),
        exe: "sudo".into(),
        flags: vec![],
        user: "nobody".into(),
        python: Some("/usr/bin/python3".into()),
        password: None,
        prompts: vec![],
        timeout_ms: 60_000,
    };
    send(
        &mut child,
        &ToAgent::Call {
            id: 1,
            req: Request::Become(become_),
            after: None,
        },
    );
    let started = match reply(&mut child, 1) {
        Reply::Child(c) => c,
        other => panic!("expected a child agent, got {other:?}"),
    };
    assert_eq!(started.hello.arch, "aarch64");
    assert_eq!(started.hello.user, "nobody");
    let call = ToAgent::Call {
        id: 7,
        req: Request::Exec(Exec::argv(["id", "-un"])),
        after: None,
    };
    send(
        &mut child,
        &ToAgent::Route {
            child: started.child,
            frame: frame::encode(&call).unwrap().into(),
        },
    );
    let routed = loop {
        match read_frame(child.stdout.as_mut().unwrap()) {
            Some(FromAgent::Routed { child: c, frame: f }) if c == started.child => {
                let body = &f.as_ref()[frame::HEADER_LEN..];
                match frame::decode_body::<FromAgent>(body).unwrap() {
                    FromAgent::Reply { id: 7, result } => break result,
                    _ => continue,
                }
            }
            Some(FromAgent::Log { .. }) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    match routed {
        Ok(Reply::Exec(r)) => assert_eq!(r.stdout.as_ref(), b"nobody\n"),
        other => panic!("{other:?}"),
    }
    drop(child.stdin.take());
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

/// A command on a terminal that exits without reading the stdin it was
/// given, leaving a background process that ignores the hangup and holds
/// the terminal open: the reply comes once the command has ended (the
/// stdin not yet written is dropped).
#[test]
fn terminal_stdin_never_read_does_not_hold_the_reply() {
    let mut child = spawn("x86_64");
    hello(&mut child);
    let dir = std::env::temp_dir().join(format!("spindle-ptyin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let script = format!(
        "(trap '' HUP; exec sleep 3600) & echo $! > {}; echo started",
        pid_file.display()
    );
    let req = Request::Exec(Exec {
        pty: true,
        stdin: Some(b"a line nobody reads\n".repeat(1 << 16).into()),
        ..Exec::shell(&script)
    });
    send(
        &mut child,
        &ToAgent::Call {
            id: 1,
            req,
            after: None,
        },
    );
    // A hang shows as no reply at all: wait for it on another thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = child.stdout.take().unwrap();
    std::thread::spawn(move || loop {
        match read_frame(&mut reader) {
            Some(FromAgent::Reply { id: 1, result }) => {
                let _ = tx.send(result);
                return;
            }
            Some(_) => continue,
            None => return,
        }
    });
    let result = rx.recv_timeout(Duration::from_secs(60));
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = Cmd::new("kill").args(["-KILL", pid.trim()]).status();
    }
    if result.is_err() {
        let _ = child.kill();
    }
    let reply = result.expect("no reply to a terminal command whose stdin was not read");
    match reply {
        Ok(Reply::Exec(r)) => {
            assert_eq!(r.code, Some(0), "{r:?}");
            assert!(
                String::from_utf8_lossy(r.stdout.as_ref()).contains("started"),
                "{r:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
    drop(child.stdin.take());
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}
