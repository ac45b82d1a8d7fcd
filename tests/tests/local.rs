//! The agent end to end without SSH: the controller bootstraps it through a
//! local shell (the same command line and stages as over SSH) and every
//! operation runs for real on this machine.

use spindle_controller::protocol::{Exec, Put, Shortcut, StreamKind};
use spindle_controller::{Controller, Destination, Host, Target, Transport};
use spindle_tests::{agents, sha256};
use std::sync::Arc;

fn local(python: Option<&str>) -> Arc<Host> {
    let controller = Controller::new(agents().expect("agents built"));
    controller.host(Target {
        transport: Transport::Local,
        dest: Destination {
            user: None,
            host: "localhost".into(),
            port: None,
        },
        python: python.map(str::to_owned),
    })
}

#[tokio::test]
async fn exec_output_status_env_cwd_stdin() {
    let host = local(None);
    let mut req = Exec::shell("cat; echo \"$FOO\" >&2; pwd; exit 3");
    req.env = vec![("FOO".into(), "bar".into())];
    req.cwd = Some("/usr".into());
    req.stdin = Some(b"from stdin\n".to_vec().into());
    let out = host.exec(req).await.unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout, b"from stdin\n/usr\n");
    assert_eq!(out.stderr, b"bar\n");

    let argv = Exec::argv(["printf", "%s-%s", "a b", "c"]);
    assert_eq!(host.exec(argv).await.unwrap().stdout, b"a b-c");

    let killed = host.exec(Exec::shell("kill -9 $$")).await.unwrap();
    assert_eq!((killed.code, killed.signal), (None, Some(9)));

    let missing = Exec::argv(["/nonexistent/prog"]);
    let err = host.exec(missing).await.unwrap_err();
    assert!(!err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");
}

/// Both streams, each several chunks long and written in turns: all of
/// each arrives, in order, on its own stream (one thread reads both).
#[tokio::test]
async fn large_interleaved_stdout_and_stderr() {
    let host = local(None);
    let script = "i=0; while [ $i -lt 150 ]; do \
        printf '%07d' $i | head -c 7; head -c 9993 /dev/zero | tr '\\0' o; \
        printf '%07d' $i >&2; head -c 9993 /dev/zero | tr '\\0' e >&2; \
        i=$((i+1)); done";
    let out = host.exec(Exec::shell(script)).await.unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr[..200.min(out.stderr.len())])
    );
    for (stream, fill) in [(&out.stdout, b'o'), (&out.stderr, b'e')] {
        assert_eq!(stream.len(), 150 * 10_000);
        for (i, block) in stream.chunks(10_000).enumerate() {
            assert_eq!(&block[..7], format!("{i:07}").as_bytes());
            assert!(block[7..].iter().all(|&b| b == fill));
        }
    }
}

/// A command starts as `execvp` would start it: looked up in its own
/// `PATH` (a non-executable match is passed over), in a session of its own,
/// with no signal blocked and neither SIGPIPE nor SIGXFSZ ignored (the
/// agent ignores both).
#[tokio::test]
async fn commands_start_as_execvp_starts_them() {
    use std::os::unix::fs::PermissionsExt;
    let host = local(None);
    let dir = tempdir();
    let (first, second) = (format!("{dir}/a"), format!("{dir}/b"));
    for (d, mode, text) in [(&first, 0o644, "first"), (&second, 0o755, "second")] {
        std::fs::create_dir(d).unwrap();
        let prog = format!("{d}/spindle-hello");
        std::fs::write(&prog, format!("#!/bin/sh\necho {text} \"$@\"\n")).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut req = Exec::argv(["spindle-hello", "there"]);
    req.env = vec![("PATH".into(), format!("/nonexistent:{first}:{second}"))];
    let out = host.exec(req).await.unwrap();
    assert_eq!(out.stdout, b"second there\n");

    // Only a file that may not be executed: that is the error.
    let mut req = Exec::argv(["spindle-hello"]);
    req.env = vec![("PATH".into(), first.clone())];
    let err = host.exec(req).await.unwrap_err().to_string();
    assert!(
        err.contains("spindle-hello") && err.contains("denied"),
        "{err}"
    );

    let mut req = Exec::argv(["true"]);
    req.cwd = Some(format!("{dir}/missing"));
    let err = host.exec(req).await.unwrap_err().to_string();
    assert!(
        err.contains("not found") || err.contains("No such file"),
        "{err}"
    );

    // Fields of /proc/self/stat after the command name: state ppid pgrp
    // session; then the signal masks from /proc/self/status, read by the
    // shell itself (while it waits for a child of its own, such as grep,
    // dash blocks every signal).
    let script = "read -r pid rest < /proc/self/stat; \
        set -- ${rest##*) }; echo \"$$ $3 $4\"; \
        while read -r key value; do case $key in \
        SigBlk:|SigIgn:) printf '%s\\t%s\\n' \"$key\" \"$value\";; esac; \
        done < /proc/$$/status";
    let out = host.exec(Exec::argv(["sh", "-c", script])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(ids[0], ids[1], "the process group is the command's: {text}");
    assert_eq!(ids[0], ids[2], "the session is the command's: {text}");
    let mask = |name: &str| {
        let line = lines.clone().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.rsplit('\t').next().unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk"), 0, "{text}");
    let (pipe, xfsz) = (1 << (13 - 1), 1 << (25 - 1));
    assert_eq!(mask("SigIgn") & (pipe | xfsz), 0, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn pty_merges_output_and_is_a_terminal() {
    let host = local(None);
    let mut req = Exec::shell("tty >/dev/null && echo tty-yes; echo err >&2");
    req.pty = true;
    let out = host.exec(req).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty-yes"), "{text}");
    assert!(text.contains("err"), "{text}");
    assert!(out.stderr.is_empty());
}

/// Input for a command on a terminal is typed into it: the command reads
/// all of it, more than the terminal holds at once, and the terminal
/// echoes it (under pressure a terminal may drop echoes, or show them late,
/// in the middle of the command's own output: they are not counted, and
/// the count is found by its marker, not by its place).
#[tokio::test]
async fn pty_input_is_typed_into_the_terminal() {
    let host = local(None);
    let lines = 5000;
    let mut req = Exec::shell("echo \"count=$(wc -l)\"");
    req.pty = true;
    let mut input = b"a line typed in\n".repeat(lines);
    input.extend_from_slice(&[4]); // ^D: the end of the input
    req.stdin = Some(input.into());
    let out = host.exec(req).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let tail = &text[text.len().saturating_sub(40)..];
    assert!(text.contains(&format!("count={lines}\r\n")), "{tail}");
    assert!(text.starts_with("a line typed in\r\n"), "{}", &text[..40]);
    assert_eq!(out.code, Some(0));
}

/// On a terminal the command's end ends the output, as with sshd: a
/// process it leaves in the background holding the terminal does not hold
/// the reply; everything the command itself wrote arrives.
#[tokio::test]
async fn pty_output_ends_with_the_command() {
    let host = local(None);
    let mut req = Exec::shell("(trap '' HUP; sleep 5; echo late) & echo started");
    req.pty = true;
    let out = host.exec(req).await.unwrap();
    assert_eq!(out.stdout, b"started\r\n");
    assert_eq!(out.code, Some(0));

    let mut req = Exec::shell("seq 20000");
    req.pty = true;
    let out = host.exec(req).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 20000, "{}", &text[text.len() - 40..]);
    assert!(text.ends_with("20000\r\n"), "{}", &text[text.len() - 40..]);
}

/// A command that closes its terminal before it exits (coreutils close
/// their output at exit, a moment before they end) is not hung up: the
/// terminal stays open until the command is reaped, as sshd keeps it.
#[tokio::test]
async fn pty_stays_open_until_the_command_ends() {
    let host = local(None);
    let dir = tempdir();
    let marker = format!("{dir}/finished");
    let mut req = Exec::shell(format!(
        "echo closing; exec </dev/null >/dev/null 2>&1; sleep 0.3; touch {marker}"
    ));
    req.pty = true;
    let out = host.exec(req).await.unwrap();
    assert_eq!(out.stdout, b"closing\r\n");
    assert_eq!((out.code, out.signal), (Some(0), None));
    assert!(std::path::Path::new(&marker).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let host = local(None);
    let dir = tempdir();
    let marker = format!("{dir}/survivor");
    let mut req = Exec::shell(format!("(sleep 2; touch {marker}) & sleep 30"));
    req.timeout_ms = Some(300);
    let out = host.exec(req).await.unwrap();
    assert!(out.timed_out);
    assert_eq!(out.signal, Some(9));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(
        !std::path::Path::new(&marker).exists(),
        "background child survived the kill"
    );
}

#[tokio::test]
async fn cancel_by_dropping_the_request_kills_it() {
    let host = local(None);
    let dir = tempdir();
    let marker = format!("{dir}/survivor");
    let req = Exec::shell(format!("sleep 2; touch {marker}"));
    let run = host.exec(req);
    let cancelled = tokio::time::timeout(std::time::Duration::from_millis(500), run).await;
    assert!(cancelled.is_err());
    // The link stays usable and the command is gone.
    host.ping().await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(
        !std::path::Path::new(&marker).exists(),
        "cancelled command ran on"
    );
}

#[tokio::test]
async fn large_output_streams_in_order() {
    let host = local(None);
    // 5 MiB of numbered lines: more than the window, so credit must flow.
    let script = "i=0; while [ $i -lt 400000 ]; do echo line-$i; i=$((i+1)); done";
    let mut chunks = 0;
    let mut hash_input = Vec::new();
    host.exec_with(Exec::shell(script), |kind, data| {
        assert_eq!(kind, StreamKind::Stdout);
        chunks += 1;
        hash_input.extend_from_slice(data);
        Ok(())
    })
    .await
    .unwrap();
    let expected: String = (0..400000).map(|i| format!("line-{i}\n")).collect();
    assert!(chunks > 2);
    assert_eq!(sha256(&hash_input), sha256(expected.as_bytes()));
}

#[tokio::test]
async fn put_fetch_stat_tempdir() {
    let host = local(None);
    let dir = host.make_temp_dir(None).await.unwrap();
    let st = host.stat(&dir, false).await.unwrap().stat.unwrap();
    assert_eq!(st.mode, 0o700);

    for size in [0usize, 10, 128 << 10, (128 << 10) + 1, 3 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let path = format!("{dir}/f{size}");
        let req = Put {
            mode: Some(0o640),
            mtime: Some(spindle_controller::protocol::Timestamp {
                secs: 1_000_000_000,
                nanos: 5,
            }),
            ..Put::new(path.clone())
        };
        let r = host.put(&data[..], size as u64, req).await.unwrap();
        assert_eq!(r.size, size as u64);
        let st = host.stat(&path, true).await.unwrap().stat.unwrap();
        assert_eq!(
            (st.size, st.mode, st.mtime.secs),
            (size as u64, 0o640, 1_000_000_000)
        );
        let mut back = Vec::new();
        let f = host.fetch(&path, &mut back).await.unwrap();
        assert_eq!(f.size, size as u64);
        assert_eq!(sha256(&back), sha256(&data), "size {size}");
    }
    // Nothing but the files themselves: no temporary leftovers.
    let ls = host
        .exec(Exec::shell(format!("ls -A {dir}")))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 5);

    let short = Put::new(format!("{dir}/short"));
    // A source that ends before its announced size fails and leaves nothing.
    let err = host.put(&b"abc"[..], 1 << 20, short).await.unwrap_err();
    assert!(err.to_string().contains("source"), "{err}");
    assert!(host
        .stat(&format!("{dir}/short"), false)
        .await
        .unwrap()
        .stat
        .is_none());
    let ls = host
        .exec(Exec::shell(format!("ls -A {dir}")))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).lines().count(),
        5,
        "leftover temp file"
    );

    let missing = host
        .fetch(&format!("{dir}/nope"), Vec::new())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
    assert!(host
        .stat(&format!("{dir}/nope"), false)
        .await
        .unwrap()
        .stat
        .is_none());

    host.remove_temp_dir(&dir).await.unwrap();
    assert!(host.stat(&dir, false).await.unwrap().stat.is_none());
}

/// A module file's put: the agent inserts its bundle's base64, carried the
/// first time and taken from its cache after that; a splice outside the
/// data is refused and leaves nothing.
#[tokio::test]
async fn spliced_put_inserts_the_bundle_base64() {
    use base64::Engine;
    use spindle_controller::protocol::{Code, Splice};
    let host = local(None);
    let dir = host.make_temp_dir(None).await.unwrap();
    let (head, tail) = (&b"zip_data='"[..], &b"',\nmore\n"[..]);
    let data = [head, tail].concat();
    // Three lengths: every padding the encoding has.
    for len in [3000usize, 3001, 3002] {
        let zip: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        let hash = sha256(&zip);
        let text = base64::engine::general_purpose::STANDARD.encode(&zip);
        let want = [head, text.as_bytes(), tail].concat();
        // The first put carries the bundle; the second finds it cached.
        for round in 0..2 {
            let path = format!("{dir}/AnsiballZ_{len}_{round}.py");
            let r = host
                .put_spliced_as(
                    None,
                    data.clone(),
                    head.len() as u64,
                    (&zip, &hash),
                    Put::new(path.clone()),
                )
                .await
                .unwrap();
            assert_eq!(r.size, want.len() as u64);
            let mut back = Vec::new();
            host.fetch(&path, &mut back).await.unwrap();
            assert_eq!(back, want, "length {len}, round {round}");
        }
    }
    let link = host.link().await.unwrap();
    let path = format!("{dir}/beyond");
    let err = link
        .call(Put {
            size: 3,
            data: Some(b"abc".to_vec().into()),
            splice: Some(Splice {
                at: 4,
                code: Code {
                    hash: "00".repeat(32),
                    zip: Some(b"x".to_vec().into()),
                    ..Default::default()
                },
            }),
            ..Put::new(path.clone())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("splice"), "{err}");
    assert!(host.stat(&path, false).await.unwrap().stat.is_none());
    host.remove_temp_dir(&dir).await.unwrap();
}

#[tokio::test]
async fn put_into_missing_directory_is_a_clear_error() {
    let host = local(None);
    let req = Put::new("/nonexistent-dir/file");
    let err = host.put(&b"x"[..], 1, req).await.unwrap_err();
    assert!(!err.is_unreachable());
    assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
}

/// A put that fills its file system fails with the system's own words and
/// leaves the destination as it was: no partial file, no hidden temporary
/// file, an existing file untouched. The connection stays usable. A fetch
/// onto a full file system here does the same.
#[tokio::test]
async fn full_file_system_fails_puts_and_fetches_cleanly() {
    let host = local(None);
    let dir = tempdir();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "spindle-full", &dir])
        .status()
        .expect("mount runs");
    assert!(mount.success(), "mounting a small tmpfs (needs root)");
    struct Unmount<'a>(&'a str);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _unmount = Unmount(&dir);
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let big = vec![7u8; 1 << 20];
    let fresh = format!("{dir}/fresh");
    let err = host
        .put(&big[..], big.len() as u64, Put::new(fresh.clone()))
        .await
        .unwrap_err();
    assert!(!err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(listing().is_empty(), "{:?}", listing());

    let kept = format!("{dir}/kept");
    std::fs::write(&kept, b"old contents\n").unwrap();
    let err = host
        .put(&big[..], big.len() as u64, Put::new(kept.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(listing(), ["kept"]);
    assert_eq!(std::fs::read(&kept).unwrap(), b"old contents\n");

    // The same host goes on serving: a small put fits.
    host.put(&b"small\n"[..], 6, Put::new(kept.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&kept).unwrap(), b"small\n");
    assert_eq!(listing(), ["kept"]);

    // The same on this side: a fetch into the full file system.
    let source = tempdir();
    std::fs::write(format!("{source}/big"), &big).unwrap();
    let err = host
        .fetch_file(&format!("{source}/big"), std::path::Path::new(&kept))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(listing(), ["kept"]);
    assert_eq!(std::fs::read(&kept).unwrap(), b"small\n");
    std::fs::remove_dir_all(&source).unwrap();
}

/// A shortcut has its command's effect without running it; where it
/// cannot be sure of that, the command runs instead.
#[tokio::test]
async fn shortcuts_do_what_the_commands_do() {
    use std::os::unix::fs::PermissionsExt;
    let host = local(None);
    let dir = tempdir();
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // Each command only says it ran: an empty reply means the shortcut was
    // taken.
    let run = |shortcut: Shortcut, command: &str| {
        let req = Exec {
            shortcut: Some(shortcut),
            ..Exec::shell(command)
        };
        let host = host.clone();
        async move { host.exec(req).await.unwrap() }
    };
    let task = format!("{dir}/ansible-tmp-1");
    let make = |path: &str| Shortcut::MakeDir {
        base: dir.clone(),
        path: path.to_owned(),
    };
    let out = run(make(&task), "echo ran").await;
    assert_eq!((out.code, &out.stdout[..]), (Some(0), &b""[..]));
    assert_eq!(mode(&task), 0o700);
    // It exists now: mkdir itself runs, and fails in its own words.
    let out = run(make(&task), &format!("mkdir {task}")).await;
    assert_eq!(out.code, Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("File exists"));
    // A base that does not exist yet, a path outside the base, a relative
    // path: the command runs.
    let missing = Shortcut::MakeDir {
        base: format!("{dir}/missing"),
        path: format!("{dir}/missing/t"),
    };
    let outside = make("/elsewhere/t");
    let relative = Shortcut::Remove {
        paths: vec!["relative".into()],
    };
    for shortcut in [missing, outside, relative] {
        let out = run(shortcut, "echo ran").await;
        assert_eq!(out.stdout, b"ran\n");
    }

    let file = format!("{task}/AnsiballZ_x.py");
    std::fs::write(&file, "x").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4600)).unwrap();
    let add = Shortcut::AddModeBits {
        paths: vec![task.clone(), file.clone()],
        bits: 0o100,
    };
    assert!(run(add, "echo ran").await.stdout.is_empty());
    assert_eq!((mode(&task), mode(&file)), (0o700, 0o4700));
    let beyond = Shortcut::AddModeBits {
        paths: vec![file.clone()],
        bits: 0o070,
    };
    assert_eq!(run(beyond, "echo ran").await.stdout, b"ran\n");

    let link = format!("{dir}/link");
    std::os::unix::fs::symlink(&task, &link).unwrap();
    let remove = |paths: Vec<String>| Shortcut::Remove { paths };
    let out = run(
        remove(vec![link.clone(), format!("{dir}/never")]),
        "echo ran",
    )
    .await;
    assert!(out.stdout.is_empty());
    assert!(std::fs::symlink_metadata(&link).is_err());
    // The link went, not what it pointed to.
    assert!(std::path::Path::new(&file).exists());
    assert!(run(remove(vec![task.clone()]), "echo ran")
        .await
        .stdout
        .is_empty());
    assert!(std::fs::symlink_metadata(&task).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> String {
    let d = std::env::temp_dir().join(format!(
        "spindle-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d.display().to_string()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
