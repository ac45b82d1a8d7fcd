//! Golden encodings of every wire message shape.
//!
//! Each case below builds one representative message (every `ToAgent` and
//! `FromAgent` variant, every `Request` and `Reply` variant, `Hello`, a
//! `WireError` reply, `Blob` payloads, and `Option` fields both set and unset),
//! encodes it with `frame::encode` and compares the bytes with the checked-in
//! file `tests/golden/<name>.hex`. It also decodes each file and checks that it
//! yields the same value, so encodings written by older peers keep decoding.
//!
//! Why: the golden files pin the wire format. A change to one of them means the
//! protocol changed, and the protocol may only change by addition (new fields
//! with defaults, new variants); an existing file must never need rewriting.
//! After a deliberate addition, add new cases and create their files with
//! `UPDATE_GOLDEN=1 cargo test -p spindle-protocol --test golden`, then review
//! the diff: only new files should appear.

use serde::{de::DeserializeOwned, Serialize};
use spindle_protocol::{frame, *};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

/// Hex digits per line in a golden file.
const WRAP: usize = 64;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn to_golden_text(bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    let mut text = String::new();
    for line in hex.as_bytes().chunks(WRAP) {
        text.push_str(std::str::from_utf8(line).expect("hex is ascii"));
        text.push('\n');
    }
    text
}

fn from_golden_text(text: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let digits: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    hex::decode(digits)
}

/// Every case's name, kept so that stray golden files can be reported.
#[derive(Default)]
struct Golden {
    names: BTreeSet<String>,
    failures: Vec<String>,
}

impl Golden {
    fn check<T>(&mut self, name: &str, msg: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        assert!(self.names.insert(name.to_owned()), "duplicate case {name}");
        let path = golden_dir().join(format!("{name}.hex"));
        let bytes = frame::encode(&msg).unwrap_or_else(|e| panic!("{name}: encode: {e}"));

        if updating() {
            std::fs::write(&path, to_golden_text(&bytes))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }

        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.failures.push(format!(
                    "{name}: cannot read {} ({e}); run with UPDATE_GOLDEN=1 to create it",
                    path.display()
                ));
                return;
            }
        };
        let golden = match from_golden_text(&text) {
            Ok(golden) => golden,
            Err(e) => {
                self.failures
                    .push(format!("{name}: bad hex in golden file: {e}"));
                return;
            }
        };

        if bytes != golden {
            self.failures.push(format!(
                "{name}: encoding changed\n  golden: {}\n  now:    {}",
                hex::encode(&golden),
                hex::encode(&bytes)
            ));
        }

        match frame::decode::<T>(&golden) {
            Ok(Some((back, used))) => {
                if used != golden.len() {
                    self.failures.push(format!(
                        "{name}: golden frame used {used} of {} bytes",
                        golden.len()
                    ));
                }
                if back != msg {
                    self.failures.push(format!(
                        "{name}: golden file decodes to\n  {back:?}\nexpected\n  {msg:?}"
                    ));
                }
            }
            Ok(None) => self
                .failures
                .push(format!("{name}: golden frame is truncated")),
            Err(e) => self
                .failures
                .push(format!("{name}: golden frame no longer decodes: {e}")),
        }
    }

    /// A controller-to-agent message.
    fn downstream(&mut self, name: &str, msg: ToAgent) {
        self.check(name, msg);
    }

    /// An agent-to-controller message.
    fn upstream(&mut self, name: &str, msg: FromAgent) {
        self.check(name, msg);
    }

    fn call(&mut self, name: &str, id: RequestId, req: impl Into<Request>) {
        self.downstream(
            name,
            ToAgent::Call {
                id,
                req: req.into(),
                after: None,
            },
        );
    }

    fn reply(&mut self, name: &str, id: RequestId, reply: Reply) {
        self.upstream(
            name,
            FromAgent::Reply {
                id,
                result: Ok(reply),
            },
        );
    }
}

fn ts(secs: i64, nanos: u32) -> Timestamp {
    Timestamp { secs, nanos }
}

/// Bytes that are not UTF-8, so a `Blob` that became a string would show.
fn binary() -> Blob {
    Blob(vec![0x00, 0xff, 0xfe, 0x80, b'\n', 0xc1])
}

#[test]
fn golden_encodings() {
    let mut g = Golden::default();

    // ToAgent::Call, one per Request variant (Option fields set and unset).
    g.call("call_ping", 1, Ping {});
    g.call(
        "call_configure",
        1,
        Configure {
            log_level: Some(LogLevel::Debug),
            shared_login: false,
        },
    );
    g.call(
        "call_configure_shared_login",
        1,
        Configure {
            log_level: None,
            shared_login: true,
        },
    );
    g.call(
        "call_exec_argv_minimal",
        2,
        Exec {
            command: Command::Argv(vec!["true".into()]),
            env: vec![],
            cwd: None,
            stdin: None,
            pty: false,
            timeout_ms: None,
            shortcut: None,
        },
    );
    g.call(
        "call_exec_shell_full",
        3,
        Exec {
            command: Command::Shell("echo \"$GREETING\" >&2; cat".into()),
            env: vec![
                ("GREETING".into(), "héllo".into()),
                ("LC_ALL".into(), "C".into()),
            ],
            cwd: Some("/srv/app".into()),
            stdin: Some(binary()),
            pty: true,
            timeout_ms: Some(90_000),
            shortcut: None,
        },
    );
    let tmp = "/home/u/.ansible/tmp";
    let task = "/home/u/.ansible/tmp/ansible-tmp-1-2-3";
    let shortcuts = [
        (
            "call_exec_shortcut_make_dir",
            Shortcut::MakeDir {
                base: tmp.into(),
                path: task.into(),
            },
        ),
        (
            "call_exec_shortcut_add_mode_bits",
            Shortcut::AddModeBits {
                paths: vec![task.into(), format!("{task}/AnsiballZ_copy.py")],
                bits: 0o700,
            },
        ),
        (
            "call_exec_shortcut_remove",
            Shortcut::Remove {
                paths: vec![task.into()],
            },
        ),
    ];
    for (name, shortcut) in shortcuts {
        let req = Exec {
            shortcut: Some(shortcut),
            ..Exec::shell(format!("the command for {name}"))
        };
        g.call(name, 3, req);
    }
    g.call(
        "call_put_inline",
        4,
        Put {
            path: "/etc/motd".into(),
            mode: Some(0o644),
            uid: Some(0),
            gid: Some(0),
            mtime: Some(ts(1_700_000_000, 123_456_789)),
            atime: Some(ts(-1, 999_999_999)),
            size: 6,
            data: Some(binary()),
            scratch: false,
            splice: None,
        },
    );
    g.call(
        "call_put_module_file",
        4,
        Put {
            path: "/home/u/.ansible/tmp/ansible-tmp-1-2-3/AnsiballZ_ping.py".into(),
            size: 9,
            data: Some(Blob(b"z='';".to_vec())),
            scratch: true,
            splice: Some(Splice {
                at: 3,
                code: Code {
                    hash: "ab".repeat(32),
                    zip: Some(Blob(b"PK\x05".to_vec())),
                    ..Code::default()
                },
            }),
            ..Put::default()
        },
    );
    g.call(
        "call_put_scratch",
        4,
        Put {
            path: "/home/u/.ansible/tmp/ansible-tmp-1-2-3/source".into(),
            size: 1,
            data: Some(Blob(b"x".to_vec())),
            scratch: true,
            ..Put::default()
        },
    );
    g.call(
        "call_put_streamed",
        5,
        Put {
            path: "/var/lib/big.img".into(),
            mode: None,
            uid: None,
            gid: None,
            mtime: None,
            atime: None,
            size: 5 << 30,
            data: None,
            scratch: false,
            splice: None,
        },
    );
    g.call(
        "call_fetch",
        6,
        Fetch {
            path: "/var/log/syslog".into(),
        },
    );
    g.call(
        "call_stat_lstat",
        7,
        Stat {
            path: "/etc/localtime".into(),
            follow: false,
        },
    );
    g.call(
        "call_stat_follow",
        8,
        Stat {
            path: "/etc/localtime".into(),
            follow: true,
        },
    );
    g.call(
        "call_make_temp_dir_default",
        9,
        MakeTempDir { parent: None },
    );
    g.call(
        "call_make_temp_dir_parent",
        10,
        MakeTempDir {
            parent: Some("/dev/shm".into()),
        },
    );
    g.call(
        "call_remove_temp_dir",
        11,
        RemoveTempDir {
            path: "/tmp/spindle.Xy12".into(),
        },
    );
    g.call(
        "call_run_module_with_code",
        12,
        RunModule {
            python: "/usr/bin/python3".into(),
            code: Code {
                hash: "ab".repeat(32),
                zip: Some(Blob::from(&b"PK\x03\x04"[..])),
                ..Code::default()
            },
            entry: ModuleEntry::Loader,
            fqn: "ansible.modules.ping".into(),
            params: r#"{"ANSIBLE_MODULE_ARGS": {"data": "pong"}}"#.into(),
            profile: Some("legacy".into()),
            extensions: None,
            secrets: None,
            rlimit_nofile: 0,
            env: vec![("LANG".into(), "C".into())],
            timeout_ms: None,
            cwd: None,
            pty: false,
        },
    );
    g.call(
        "call_run_module_cached",
        13,
        RunModule {
            python: "/usr/bin/python3".into(),
            code: Code {
                hash: "ab".repeat(32),
                zip: None,
                ..Code::default()
            },
            entry: ModuleEntry::Runpy,
            fqn: "ansible.modules.command".into(),
            params: "{}".into(),
            profile: None,
            extensions: Some(r#"{"_coverage": {}}"#.into()),
            secrets: Some(r#"["hunter2"]"#.into()),
            rlimit_nofile: 1024,
            env: vec![],
            timeout_ms: Some(5000),
            cwd: None,
            pty: false,
        },
    );
    g.call(
        "call_run_module_in_dir",
        14,
        RunModule {
            python: "/usr/bin/python3".into(),
            code: Code {
                hash: "cd".repeat(32),
                zip: None,
                members: vec![
                    Member {
                        name: "ansible/__init__.py".into(),
                        key: Blob(vec![0x11; 16]),
                        size: 0,
                        crc: 0,
                        time: 0x5b7b_0000,
                        attrs: 0o100644 << 16,
                        packed: false,
                    },
                    Member {
                        name: "ansible/modules/stat.py".into(),
                        key: Blob(vec![0x22; 16]),
                        size: 10,
                        crc: 0x1234_5678,
                        time: 0x5b7b_6e3c,
                        attrs: 0o100644 << 16,
                        packed: true,
                    },
                ],
                packed: Some(Blob(vec![0x5d, 0, 0, 0x80, 0])),
            },
            entry: ModuleEntry::Loader,
            fqn: "ansible.modules.stat".into(),
            params: "{}".into(),
            profile: None,
            extensions: None,
            secrets: None,
            rlimit_nofile: 0,
            env: vec![],
            timeout_ms: None,
            cwd: Some("/srv/site".into()),
            pty: false,
        },
    );
    g.call(
        "call_run_module_on_a_terminal",
        15,
        RunModule {
            python: "/usr/bin/python3".into(),
            code: Code {
                hash: "ef".repeat(32),
                zip: None,
                ..Code::default()
            },
            entry: ModuleEntry::Loader,
            fqn: "ansible.modules.command".into(),
            params: "{}".into(),
            profile: None,
            extensions: None,
            secrets: None,
            rlimit_nofile: 0,
            env: vec![("TERM".into(), "xterm".into())],
            timeout_ms: None,
            cwd: Some("/root".into()),
            pty: true,
        },
    );
    // Largest id: pins the u64 width.
    g.call("call_ping_max_id", u64::MAX, Ping {});

    // The other ToAgent variants.
    g.downstream(
        "data",
        ToAgent::Data {
            id: 5,
            data: binary(),
            eof: false,
        },
    );
    g.downstream(
        "data_eof_empty",
        ToAgent::Data {
            id: 5,
            data: Blob::default(),
            eof: true,
        },
    );
    g.downstream(
        "to_agent_ack",
        ToAgent::Ack {
            id: 6,
            frames: WINDOW,
        },
    );
    g.downstream(
        "call_ping_after",
        ToAgent::Call {
            id: 9,
            req: Ping {}.into(),
            after: Some(8),
        },
    );
    g.downstream("cancel", ToAgent::Cancel { id: 3 });

    // FromAgent::Hello.
    g.upstream(
        "hello",
        FromAgent::Hello(Hello {
            version: VERSION,
            build_id: "0123456789abcdef".into(),
            arch: "x86_64".into(),
            pid: 4242,
            uid: 1000,
            gid: 1000,
            user: "deploy".into(),
            home: "/home/deploy".into(),
            pythons: vec!["/usr/bin/python3".into(), "/usr/bin/python3.11".into()],
            shell: "/bin/bash".into(),
            probes: vec![],
        }),
    );
    g.upstream(
        "hello_no_python",
        FromAgent::Hello(Hello {
            version: VERSION,
            build_id: "x".into(),
            arch: "aarch64".into(),
            pid: 1,
            uid: 0,
            gid: 0,
            user: "root".into(),
            home: "/root".into(),
            pythons: vec![],
            shell: String::new(),
            probes: vec![],
        }),
    );
    g.upstream(
        "hello_with_probes",
        FromAgent::Hello(Hello {
            version: VERSION,
            build_id: "0123456789abcdef".into(),
            arch: "x86_64".into(),
            pid: 4244,
            uid: 1000,
            gid: 1000,
            user: "deploy".into(),
            home: "/home/deploy".into(),
            pythons: vec!["/usr/bin/python3.11".into(), "/usr/bin/python3".into()],
            shell: "/bin/bash".into(),
            probes: vec![
                Probe {
                    name: "python3.12".into(),
                    path: None,
                },
                Probe {
                    name: "python3.11".into(),
                    path: Some("/usr/bin/python3.11".into()),
                },
                Probe {
                    name: "python3".into(),
                    path: Some("/usr/bin/python3".into()),
                },
            ],
        }),
    );

    // FromAgent::Reply, one per Reply variant (Option fields set and unset).
    g.reply("reply_pong", 1, Reply::Pong(Pong {}));
    g.reply(
        "reply_exec_exited",
        2,
        Reply::Exec(ExecResult {
            code: Some(0),
            signal: None,
            timed_out: false,
            stdout: Blob(b"ok\n".to_vec()),
            stderr: Blob::default(),
        }),
    );
    g.reply(
        "reply_exec_killed",
        3,
        Reply::Exec(ExecResult {
            code: None,
            signal: Some(9),
            timed_out: true,
            stdout: Blob::default(),
            stderr: binary(),
        }),
    );
    g.reply("reply_put", 4, Reply::Put(PutResult { size: 6 }));
    g.reply(
        "reply_fetch",
        6,
        Reply::Fetch(FetchResult {
            size: 1 << 20,
            mode: 0o100640,
            mtime: ts(1_700_000_000, 0),
        }),
    );
    g.reply(
        "reply_stat_symlink",
        7,
        Reply::Stat(StatResult {
            stat: Some(FileStat {
                kind: FileKind::Symlink,
                mode: 0o120777,
                uid: 0,
                gid: 0,
                size: 33,
                nlink: 1,
                dev: 0xfd01,
                ino: 1_234_567,
                atime: ts(1_700_000_001, 1),
                mtime: ts(1_600_000_000, 500_000_000),
                ctime: ts(0, 0),
                link_target: Some("/usr/share/zoneinfo/Etc/UTC".into()),
            }),
        }),
    );
    g.reply(
        "reply_stat_file",
        8,
        Reply::Stat(StatResult {
            stat: Some(FileStat {
                kind: FileKind::File,
                mode: 0o104755,
                uid: 1000,
                gid: 100,
                size: u64::MAX,
                nlink: 2,
                dev: u64::MAX,
                ino: u64::MAX,
                atime: ts(i64::MIN, 0),
                mtime: ts(i64::MAX, 999_999_999),
                ctime: ts(-86_400, 7),
                link_target: None,
            }),
        }),
    );
    g.reply(
        "reply_stat_missing",
        9,
        Reply::Stat(StatResult { stat: None }),
    );
    g.reply(
        "reply_temp_dir",
        10,
        Reply::TempDir(TempDir {
            path: "/tmp/spindle.Xy12".into(),
        }),
    );
    g.reply("reply_removed", 11, Reply::Removed(Removed {}));
    g.upstream(
        "reply_err",
        FromAgent::Reply {
            id: 12,
            result: Err(WireError::new(ErrorKind::NotFound, "/nope: no such file")),
        },
    );

    // The other FromAgent variants.
    g.upstream(
        "stream_stdout",
        FromAgent::Stream {
            id: 2,
            kind: StreamKind::Stdout,
            data: Blob(b"hello\n".to_vec()),
        },
    );
    g.upstream(
        "stream_stderr",
        FromAgent::Stream {
            id: 2,
            kind: StreamKind::Stderr,
            data: binary(),
        },
    );
    g.upstream(
        "stream_file_empty",
        FromAgent::Stream {
            id: 6,
            kind: StreamKind::File,
            data: Blob::default(),
        },
    );
    g.upstream("from_agent_ack", FromAgent::Ack { id: 5, frames: 1 });
    g.upstream(
        "log",
        FromAgent::Log {
            level: LogLevel::Warn,
            message: "reaped stray child 77".into(),
        },
    );

    // Child agents under other accounts.
    g.call(
        "call_become",
        13,
        Become {
            method: "sudo".into(),
            exe: "sudo".into(),
            flags: vec!["-H".into(), "-S".into(), "-n".into()],
            user: "root".into(),
            python: Some("/usr/bin/python3".into()),
            password: Some(Blob(b"secret".to_vec())),
            prompts: vec![],
            timeout_ms: 10_000,
        },
    );
    g.call(
        "call_become_su",
        14,
        Become {
            method: "su".into(),
            exe: "/bin/su".into(),
            flags: vec!["-".into()],
            user: "alice".into(),
            python: None,
            password: None,
            prompts: vec!["Password".into(), "Passwort".into()],
            timeout_ms: 10_000,
        },
    );
    g.reply(
        "reply_child",
        13,
        Reply::Child(Child {
            child: 1,
            hello: Box::new(Hello {
                version: VERSION,
                build_id: "0123456789abcdef".into(),
                arch: "x86_64".into(),
                pid: 4243,
                uid: 0,
                gid: 0,
                user: "root".into(),
                home: "/root".into(),
                pythons: vec!["/usr/bin/python3".into()],
                shell: "/bin/bash".into(),
                probes: vec![],
            }),
        }),
    );
    g.downstream(
        "route",
        ToAgent::Route {
            child: 1,
            frame: Blob(vec![0, 0, 0, 1, 0xc0]),
        },
    );
    g.downstream("end_child", ToAgent::EndChild { child: 1 });
    g.downstream(
        "share",
        ToAgent::Share {
            child: 1,
            hash: "ab".repeat(32),
        },
    );
    g.downstream(
        "keep",
        ToAgent::Keep {
            code: Code {
                hash: "ab".repeat(32),
                zip: Some(Blob(b"PK\x05\x06".to_vec())),
                ..Code::default()
            },
        },
    );
    g.upstream(
        "routed",
        FromAgent::Routed {
            child: 1,
            frame: Blob(vec![0, 0, 0, 1, 0xc0]),
        },
    );
    g.upstream(
        "child_gone",
        FromAgent::ChildGone {
            child: 1,
            reason: "child agent exited".into(),
        },
    );

    // Stray files mean a case was renamed or removed: a removed message shape
    // is a protocol change too.
    let mut stray = Vec::new();
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir") {
        let path = entry.expect("dir entry").path();
        let known = path.extension().is_some_and(|e| e == "hex")
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| g.names.contains(s));
        if !known {
            stray.push(path.display().to_string());
        }
    }
    if !stray.is_empty() {
        g.failures
            .push(format!("golden files without a case: {}", stray.join(", ")));
    }

    assert!(
        g.failures.is_empty(),
        "{} golden mismatch(es); if the change is a deliberate addition, add \
         new cases rather than rewriting old files:\n\n{}",
        g.failures.len(),
        g.failures.join("\n\n")
    );
}

/// Unit enums travel as their snake_case names. These names are part of the
/// wire format like the golden files; a rename is a protocol change.
#[test]
fn unit_enum_names() {
    fn name<T: Serialize>(v: T) -> String {
        let bytes = rmp_serde::to_vec_named(&v).expect("encode");
        rmp_serde::from_slice::<String>(&bytes).expect("unit variant encodes as a string")
    }
    let kinds = [
        (ErrorKind::NotFound, "not_found"),
        (ErrorKind::PermissionDenied, "permission_denied"),
        (ErrorKind::AlreadyExists, "already_exists"),
        (ErrorKind::InvalidInput, "invalid_input"),
        (ErrorKind::NoSpace, "no_space"),
        (ErrorKind::Io, "io"),
        (ErrorKind::TimedOut, "timed_out"),
        (ErrorKind::Cancelled, "cancelled"),
        (ErrorKind::Unsupported, "unsupported"),
        (ErrorKind::Busy, "busy"),
        (ErrorKind::Protocol, "protocol"),
        (ErrorKind::CodeMissing, "code_missing"),
        (ErrorKind::Skipped, "skipped"),
        (ErrorKind::Other, "other"),
    ];
    for (kind, expected) in kinds {
        assert_eq!(name(kind), expected);
        let bytes = rmp_serde::to_vec(expected).expect("encode");
        let back: ErrorKind = rmp_serde::from_slice(&bytes).expect("known kind decodes");
        assert_eq!(back, kind);
    }
    let levels = [
        (LogLevel::Error, "error"),
        (LogLevel::Warn, "warn"),
        (LogLevel::Info, "info"),
        (LogLevel::Debug, "debug"),
        (LogLevel::Trace, "trace"),
    ];
    for (level, expected) in levels {
        assert_eq!(name(level), expected);
    }
    let streams = [
        (StreamKind::Stdout, "stdout"),
        (StreamKind::Stderr, "stderr"),
        (StreamKind::File, "file"),
    ];
    for (kind, expected) in streams {
        assert_eq!(name(kind), expected);
    }
    let files = [
        (FileKind::File, "file"),
        (FileKind::Dir, "dir"),
        (FileKind::Symlink, "symlink"),
        (FileKind::CharDevice, "char_device"),
        (FileKind::BlockDevice, "block_device"),
        (FileKind::Fifo, "fifo"),
        (FileKind::Socket, "socket"),
    ];
    for (kind, expected) in files {
        assert_eq!(name(kind), expected);
    }
}

/// A newer peer may send an error kind this build does not know. It must
/// decode as `ErrorKind::Other` (keeping the message), not fail the frame.
#[test]
fn unknown_error_kind_decodes_as_other() {
    // Look-alikes of WireError and FromAgent whose kind is a free string.
    #[derive(Serialize)]
    struct FutureWireError {
        kind: String,
        message: String,
    }
    #[derive(Serialize)]
    #[allow(dead_code)]
    enum FutureFromAgent {
        Hello(()),
        Reply {
            id: u64,
            result: Result<(), FutureWireError>,
        },
    }
    let future = || FutureWireError {
        kind: "future_kind".into(),
        message: "something new went wrong".into(),
    };

    // The bare error body.
    let body = rmp_serde::to_vec_named(&future()).expect("encode");
    let err: WireError = frame::decode_body(&body).expect("unknown kind must decode");
    assert_eq!(
        err,
        WireError::new(ErrorKind::Other, "something new went wrong")
    );

    // A whole reply frame carrying it.
    let bytes = frame::encode(&FutureFromAgent::Reply {
        id: 42,
        result: Err(future()),
    })
    .expect("encode");
    let (msg, used) = frame::decode::<FromAgent>(&bytes)
        .expect("unknown kind must decode")
        .expect("whole frame");
    assert_eq!(used, bytes.len());
    assert_eq!(
        msg,
        FromAgent::Reply {
            id: 42,
            result: Err(WireError::new(ErrorKind::Other, "something new went wrong")),
        }
    );

    // The same bytes built by hand, independent of rmp-serde's encoder:
    // {"kind": "future_kind", "message": "m"}.
    let mut body = vec![0x82, 0xa4];
    body.extend_from_slice(b"kind");
    body.push(0xa0 | 11);
    body.extend_from_slice(b"future_kind");
    body.push(0xa7);
    body.extend_from_slice(b"message");
    body.push(0xa1);
    body.extend_from_slice(b"m");
    let err: WireError = frame::decode_body(&body).expect("unknown kind must decode");
    assert_eq!(err, WireError::new(ErrorKind::Other, "m"));
}
