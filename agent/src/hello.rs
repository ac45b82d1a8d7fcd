//! The hello: who and where the agent is, and which Pythons the host has.

use crate::sys;
use spindle_protocol::{Hello, Probe, VERSION};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Set by `cargo xtask build-agents` to identify the exact build.
const BUILD_ID: &str = match option_env!("SPINDLE_BUILD_ID") {
    Some(id) => id,
    None => "dev",
};

/// Interpreter names and paths probed, best first: the same order Ansible's
/// interpreter discovery falls back through, so `auto` picks alike.
const PYTHONS: &[&str] = &[
    "python3.15",
    "python3.14",
    "python3.13",
    "python3.12",
    "python3.11",
    "python3.10",
    "python3.9",
    "python3.8",
    "/usr/bin/python3",
    "/usr/libexec/platform-python",
    "python3",
];

pub fn hello() -> Hello {
    let uid = sys::uid();
    let env = |k| std::env::var(k).unwrap_or_default();
    let (user, home, shell) =
        passwd_entry(uid).unwrap_or_else(|| (env("USER"), env("HOME"), env("SHELL")));
    let (pythons, probes) = find_pythons();
    Hello {
        version: VERSION,
        build_id: BUILD_ID.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        pid: std::process::id(),
        uid,
        gid: sys::gid(),
        user,
        home,
        pythons,
        shell,
        probes,
    }
}

/// Name, home directory and login shell of `uid` from /etc/passwd. A
/// static musl binary has no NSS modules, so this is what it could see
/// anyway.
fn passwd_entry(uid: u32) -> Option<(String, String, String)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid))
            .then(|| (f[0].to_owned(), f[5].to_owned(), f[6].to_owned()))
    })
}

/// The Pythons found, best first and without repeats, and what each name
/// looked up resolved to (as `command -v` would print it).
fn find_pythons() -> (Vec<String>, Vec<Probe>) {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut found: Vec<String> = Vec::new();
    let mut probes = Vec::new();
    for name in PYTHONS {
        let hit = if name.contains('/') {
            Some(PathBuf::from(name)).filter(|p| is_executable(p))
        } else {
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(name))
                .find(|p| is_executable(p))
        };
        let hit = hit.map(|p| p.to_string_lossy().into_owned());
        if let Some(p) = &hit {
            if !found.contains(p) {
                found.push(p.clone());
            }
        }
        probes.push(Probe {
            name: (*name).to_owned(),
            path: hit,
        });
    }
    (found, probes)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
