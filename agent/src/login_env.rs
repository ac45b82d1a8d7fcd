//! The environment a fresh login would see now, not the one the agent was
//! started with.
//!
//! Stock Ansible without a ControlMaster logs in anew for each task, so
//! PAM's `pam_env` re-reads `/etc/environment`, `/etc/default/locale` and
//! `~/.pam_environment` every time: a task that edits them is seen by the
//! next. The agent's session is long-lived, so it emulates that, the way
//! pam_env's rules work out for a session that started at the agent's start:
//! - a key that appears in the files is set;
//! - a key whose value in the files changed is updated, unless the login
//!   environment no longer holds the value the files gave at login (someone
//!   overrode it since; a fresh login would too, through the same override);
//! - a key removed from the files is dropped if its value is still the one
//!   the files gave.
//!
//! A file whose variables did not reach the login (sshd without PAM, or a
//! PAM stack without pam_env for it) is left out: a fresh login would not
//! see it either. A file that defined nothing at login gives no such
//! evidence and is followed, as the common PAM setup reads it.
//!
//! Files are only re-read when their size, inode or modification time
//! changed, so an unchanged system costs three `stat` calls per request.
//!
//! Over a connection whose login every session shares (ssh's ControlMaster
//! with ControlPersist, as Ansible's default ssh_args ask for), stock's
//! tasks get the environment that one login read, so the controller turns
//! the emulation off ([`share_login`]).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, OnceLock};

/// What to change in the agent's own environment for a child process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    pub set: Vec<(String, String)>,
    pub unset: Vec<String>,
}

type Vars = BTreeMap<String, String>;
type Stamp = Option<(u64, u64, i64, i64)>;

struct State {
    /// The agent's environment at start: what the login gave it.
    login: Vars,
    /// What the files said at start.
    at_login: Vars,
    files: Vec<String>,
    home: String,
    shell: String,
    /// File stamps and the delta computed for them.
    last: (Vec<Stamp>, Delta),
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

/// Reads the files once; call at start-up before the environment can
/// change.
pub fn capture(home: &str, shell: &str) {
    let files = vec![
        "/etc/environment".to_owned(),
        "/etc/default/locale".to_owned(),
        format!("{home}/.pam_environment"),
    ];
    let login: Vars = std::env::vars().collect();
    let files: Vec<String> = files
        .into_iter()
        .filter(|f| {
            let mut defined = Vars::new();
            read_into(&mut defined, f, &login, home, shell);
            defined.is_empty() || defined.iter().any(|(k, v)| login.get(k) == Some(v))
        })
        .collect();
    let stamps = stamps(&files);
    let at_login = read_all(&files, &login, home, shell);
    let _ = STATE.set(Mutex::new(State {
        login,
        at_login,
        files,
        home: home.to_owned(),
        shell: shell.to_owned(),
        last: (stamps, Delta::default()),
    }));
}

/// From now on, no changes: the agent's login is shared by every session
/// of its connection (ssh's ControlPersist), and such a session gets the
/// environment that login read, not what the files say now.
pub fn share_login() {
    if let Some(state) = STATE.get() {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.files.clear();
        s.last = (Vec::new(), Delta::default());
    }
}

/// The changes a fresh login would see compared to the agent's own
/// environment.
pub fn delta() -> Delta {
    let Some(state) = STATE.get() else {
        return Delta::default();
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let now = stamps(&s.files);
    if now != s.last.0 {
        let current = read_all(&s.files, &s.login, &s.home, &s.shell);
        let d = compare(&s.login, &s.at_login, &current);
        s.last = (now, d);
    }
    s.last.1.clone()
}

fn stamps(files: &[String]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// The variables the files define, later files overriding earlier ones.
fn read_all(files: &[String], login: &Vars, home: &str, shell: &str) -> Vars {
    let mut vars = Vars::new();
    for f in files {
        read_into(&mut vars, f, login, home, shell);
    }
    vars
}

/// Adds what `file` defines to `vars`. The user's file has pam_env.conf's
/// syntax (its values may refer to what is defined so far); the others are
/// plain KEY=VALUE lists.
fn read_into(vars: &mut Vars, file: &str, login: &Vars, home: &str, shell: &str) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let user_file = file.ends_with("/.pam_environment");
    for line in text.lines() {
        let parsed = if user_file {
            parse_conf_line(line, login, vars, home, shell)
        } else {
            parse_env_line(line)
        };
        if let Some((k, v)) = parsed {
            vars.insert(k, v);
        }
    }
}

/// Applies pam_env's rules (see the module documentation).
fn compare(login: &Vars, at_login: &Vars, current: &Vars) -> Delta {
    let mut d = Delta::default();
    for (k, v) in current {
        let untouched = match at_login.get(k) {
            None => true,
            Some(old) => login.get(k) == Some(old),
        };
        if login.get(k) != Some(v) && untouched {
            d.set.push((k.clone(), v.clone()));
        }
    }
    for (k, old) in at_login {
        if !current.contains_key(k) && login.get(k) == Some(old) {
            d.unset.push(k.clone());
        }
    }
    d
}

/// One `KEY=VALUE` line of /etc/environment: comments, blank lines and
/// lines without `=` are skipped, a leading `export` is ignored and one
/// pair of surrounding quotes is removed.
fn parse_env_line(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
    let (key, value) = line.split_once('=')?;
    if !valid_key(key) {
        return None;
    }
    Some((key.to_owned(), unquote(value.trim_end()).to_owned()))
}

/// One line of pam_env.conf's syntax:
/// `VAR [DEFAULT=[value]] [OVERRIDE=[value]]`. OVERRIDE wins over DEFAULT;
/// `${VAR}` expands from the environment, `@{HOME}` and `@{SHELL}` from the
/// account. A variable with neither value is skipped.
fn parse_conf_line(
    line: &str,
    login: &Vars,
    so_far: &Vars,
    home: &str,
    shell: &str,
) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (key, rest) = match line.split_once(char::is_whitespace) {
        Some((k, r)) => (k, r.trim_start()),
        None => (line, ""),
    };
    if !valid_key(key) {
        // Also tolerate the KEY=VALUE form some users write.
        return parse_env_line(line);
    }
    let mut default = None;
    let mut over = None;
    for (name, slot) in [("DEFAULT=", &mut default), ("OVERRIDE=", &mut over)] {
        if let Some(start) = rest.find(name) {
            let value = &rest[start + name.len()..];
            let value = match value.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or(""),
                None => value.split_whitespace().next().unwrap_or(""),
            };
            *slot = Some(value.to_owned());
        }
    }
    let raw = over.filter(|v| !v.is_empty()).or(default)?;
    let lookup = |name: &str| {
        so_far
            .get(name)
            .or_else(|| login.get(name))
            .cloned()
            .unwrap_or_default()
    };
    Some((key.to_owned(), expand(&raw, &lookup, home, shell)))
}

fn expand(raw: &str, lookup: &dyn Fn(&str) -> String, home: &str, shell: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find(['$', '@']) {
        out.push_str(&rest[..i]);
        let sigil = &rest[i..i + 1];
        let tail = &rest[i + 1..];
        match tail.strip_prefix('{').and_then(|t| t.split_once('}')) {
            Some((name, after)) => {
                out.push_str(&match (sigil, name) {
                    ("$", n) => lookup(n),
                    ("@", "HOME") => home.to_owned(),
                    ("@", "SHELL") => shell.to_owned(),
                    _ => String::new(),
                });
                rest = after;
            }
            None => {
                out.push_str(sigil);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit()
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_lines() {
        assert_eq!(
            parse_env_line("export LANG=\"C.UTF-8\""),
            Some(("LANG".into(), "C.UTF-8".into()))
        );
        assert_eq!(parse_env_line("  # FOO=1"), None);
        assert_eq!(parse_env_line("NOEQUALS"), None);
        assert_eq!(parse_env_line("A=b=c"), Some(("A".into(), "b=c".into())));
        assert_eq!(parse_env_line("1X=y"), None);
    }

    #[test]
    fn conf_lines() {
        let login = vars(&[("PATH", "/bin")]);
        let none = Vars::new();
        let p = |l| parse_conf_line(l, &login, &none, "/home/u", "/bin/bash");
        assert_eq!(
            p("EDITOR DEFAULT=vi OVERRIDE=nano"),
            Some(("EDITOR".into(), "nano".into()))
        );
        assert_eq!(
            p("P DEFAULT=\"${PATH}:@{HOME}/bin\""),
            Some(("P".into(), "/bin:/home/u/bin".into()))
        );
        assert_eq!(p("EMPTY"), None);
        assert_eq!(p("X=1"), Some(("X".into(), "1".into())));
    }

    #[test]
    fn pam_env_rules() {
        let login = vars(&[("A", "1"), ("B", "2"), ("C", "overridden"), ("D", "4")]);
        let at_login = vars(&[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")]);
        // A changed, B removed, C changed but overridden since login, D
        // unchanged, E new.
        let current = vars(&[("A", "10"), ("C", "30"), ("D", "4"), ("E", "5")]);
        let d = compare(&login, &at_login, &current);
        assert_eq!(
            d.set,
            vec![("A".into(), "10".into()), ("E".into(), "5".into())]
        );
        assert_eq!(d.unset, vec!["B".to_string()]);
        assert_eq!(compare(&login, &at_login, &at_login), Delta::default());
    }
}
