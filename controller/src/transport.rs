//! How the controller reaches a target: the system OpenSSH client (so users
//! keep their ssh config, keys, agent and ProxyJump), or a local shell for
//! the controller's own machine. Both run the fixed bootstrap command line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A target as the user names it: `[user@]host[:port]`; IPv6 addresses go
/// in brackets (`[::1]:2222`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_owned()), r),
            Some(_) => return Err(format!("{s:?}: empty user name")),
            None => (None, s),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: unexpected {after:?} after ']'")),
            };
            (host, port)
        } else if rest.matches(':').count() == 1 {
            let (h, p) = rest.split_once(':').unwrap_or((rest, ""));
            (h, Some(p))
        } else {
            (rest, None)
        };
        if host.is_empty() {
            return Err(format!("{s:?}: empty host name"));
        }
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))
            })
            .transpose()?;
        Ok(Destination {
            user,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// OpenSSH client settings, applied to every connection made with them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SshOptions {
    /// The client program.
    pub program: String,
    /// `-F`: an ssh config file instead of the user's.
    pub config: Option<PathBuf>,
    /// `-i`: an identity file.
    pub identity: Option<PathBuf>,
    /// `-o` options, in order.
    pub options: Vec<String>,
    /// Further arguments placed before the destination.
    pub extra_args: Vec<String>,
    /// Time allowed for the TCP connection (`ConnectTimeout`).
    pub connect_timeout: Duration,
    /// How long an established link may stay silent before it counts as
    /// dead: ssh's `ServerAliveInterval` is a third of it, with
    /// `ServerAliveCountMax=3`. `None` leaves both to the user's config.
    pub dead_after: Option<Duration>,
    /// A login password. ssh asks for it through `SSH_ASKPASS`, which
    /// fetches it from the controller (see `crate::askpass`): it is never on
    /// a command line or in an environment.
    pub password: Option<Password>,
}

/// A password: compared and hashed like a string (it is part of what
/// identifies a connection), never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            program: "ssh".into(),
            config: None,
            identity: None,
            options: Vec::new(),
            extra_args: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            dead_after: Some(Duration::from_secs(30)),
            password: None,
        }
    }
}

/// How an agent is started.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The bootstrap command line over ssh.
    Ssh(SshOptions),
    /// The bootstrap command line through `/bin/sh -c` on the controller's
    /// machine, as the controller's user: the same stages as over ssh.
    Local,
    /// The controller's own agent binary run directly on its machine, with
    /// the controller's environment and directory and no login emulated
    /// (Ansible's `local` connection). No bootstrap stage: a stage's Python
    /// could change the environment it passes on (a pyenv shim does).
    Spawn,
}

impl Transport {
    /// The full argv that runs `remote_command` on `dest` (`Spawn` runs
    /// no command line: see [`Link::connect`](crate::Link::connect)).
    pub fn argv(&self, dest: &Destination, remote_command: &str) -> Vec<String> {
        match self {
            Transport::Local | Transport::Spawn => {
                vec!["/bin/sh".into(), "-c".into(), remote_command.into()]
            }
            Transport::Ssh(o) => ssh_argv(o, dest, remote_command),
        }
    }

    /// Whether every session to `dest` shares one login: ssh's effective
    /// configuration (`ssh -G`, so the user's config files count too) has
    /// a ControlMaster that persists, at a ControlPath. Each stock task
    /// over such a connection gets the environment that login read. Only
    /// ssh logs in; an ssh that cannot tell within the connect timeout (a
    /// `Match exec` may run a command) counts as no.
    pub async fn shares_login(&self, dest: &Destination) -> bool {
        let Transport::Ssh(o) = self else {
            return false;
        };
        let mut argv = ssh_argv(o, dest, "");
        // The destination and the (empty) command, after `--`.
        argv.truncate(argv.len() - 3);
        ssh_config(&argv[0], &argv[1..], &dest.host, o.connect_timeout)
            .await
            .is_some_and(|config| persistent_master(&config))
    }
}

/// What `SSH ARGS -G -- HOST` prints: the configuration `ssh` would connect
/// to `host` with, the user's config files included. `None` if it fails
/// or takes longer than `timeout` (a `Match exec` may run a command).
pub async fn ssh_config(
    ssh: &str,
    args: &[String],
    host: &str,
    timeout: Duration,
) -> Option<String> {
    let run = tokio::process::Command::new(ssh)
        .args(args)
        .args(["-G", "--", host])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(out)) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        _ => None,
    }
}

/// Whether `ssh -G` output configures a master that outlives its first
/// session (without a ControlPath there is no master at all).
fn persistent_master(config: &str) -> bool {
    let value = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .unwrap_or("")
    };
    !matches!(value("controlmaster"), "" | "false" | "no")
        && !matches!(value("controlpersist"), "" | "no")
        && !matches!(value("controlpath"), "" | "none")
}

fn ssh_argv(o: &SshOptions, dest: &Destination, remote_command: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![o.program.clone()];
    if let Some(f) = &o.config {
        v.extend(["-F".into(), f.display().to_string()]);
    }
    if let Some(i) = &o.identity {
        v.extend(["-i".into(), i.display().to_string()]);
    }
    // ssh keeps the first value it sees for an option: the user's -o come
    // before our defaults so they win.
    for opt in &o.options {
        v.extend(["-o".into(), opt.clone()]);
    }
    let user_sets = |name: &str| {
        o.options.iter().any(|opt| {
            opt.to_ascii_lowercase()
                .starts_with(&name.to_ascii_lowercase())
        })
    };
    // No pseudo-terminal: a tty would mangle the binary stream.
    v.push("-T".into());
    if !user_sets("ConnectTimeout") {
        v.push(format!(
            "-oConnectTimeout={}",
            o.connect_timeout.as_secs().max(1)
        ));
    }
    if let Some(dead) = o.dead_after {
        if !user_sets("ServerAliveInterval") {
            let interval = (dead.as_secs() / 3).max(1);
            v.push(format!("-oServerAliveInterval={interval}"));
            v.push("-oServerAliveCountMax=3".into());
        }
    }
    if o.password.is_some() {
        // The one prompt askpass answers; a wrong password fails at once.
        if !user_sets("NumberOfPasswordPrompts") {
            v.push("-oNumberOfPasswordPrompts=1".into());
        }
    } else if !user_sets("BatchMode") {
        // Nobody can answer a prompt on this channel.
        v.push("-oBatchMode=yes".into());
    }
    if let Some(p) = dest.port {
        v.extend(["-p".into(), p.to_string()]);
    }
    if let Some(u) = &dest.user {
        v.extend(["-l".into(), u.clone()]);
    }
    v.extend(o.extra_args.iter().cloned());
    v.push("--".into());
    v.push(dest.host.clone());
    v.push(remote_command.into());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let d = |s: &str| s.parse::<Destination>();
        let cases: &[(&str, Option<&str>, &str, Option<u16>)] = &[
            ("host", None, "host", None),
            ("u@host", Some("u"), "host", None),
            ("u@host:2222", Some("u"), "host", Some(2222)),
            ("10.0.0.1:22", None, "10.0.0.1", Some(22)),
            ("[::1]:2222", None, "::1", Some(2222)),
            ("[::1]", None, "::1", None),
            ("fe80::1", None, "fe80::1", None),
            ("a@b@host", Some("a@b"), "host", None),
        ];
        for (s, user, host, port) in cases {
            let got = d(s).unwrap();
            assert_eq!(got.user.as_deref(), *user, "{s}");
            assert_eq!(got.host, *host, "{s}");
            assert_eq!(got.port, *port, "{s}");
            assert_eq!(d(&got.to_string()).unwrap(), got, "{s} round trip");
        }
        for bad in ["", "@host", "host:x", "[::1", "host:99999", "[::1]x"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn persistent_masters() {
        let g = |m: &str, p: &str| {
            format!("user me\ncontrolmaster {m}\ncontrolpath /cp/%C\ncontrolpersist {p}\n")
        };
        assert!(persistent_master(&g("auto", "60")));
        assert!(persistent_master(&g("true", "yes")));
        assert!(persistent_master(&g("autoask", "600")));
        assert!(!persistent_master(&g("false", "60")));
        assert!(!persistent_master(&g("auto", "no")));
        assert!(!persistent_master("user me\n"));
        // ssh prints no controlpath for none or an unset one.
        assert!(!persistent_master(
            "controlmaster auto\ncontrolpersist 60\n"
        ));
    }

    #[test]
    fn ssh_command_line() {
        let o = SshOptions {
            config: Some("/etc/cfg".into()),
            identity: Some("/k".into()),
            options: vec!["ServerAliveInterval=7".into()],
            extra_args: vec!["-v".into()],
            ..SshOptions::default()
        };
        let dest: Destination = "me@h:2200".parse().unwrap();
        assert_eq!(
            Transport::Ssh(o).argv(&dest, "CMD"),
            [
                "ssh",
                "-F",
                "/etc/cfg",
                "-i",
                "/k",
                "-o",
                "ServerAliveInterval=7",
                "-T",
                "-oConnectTimeout=10",
                "-oBatchMode=yes",
                "-p",
                "2200",
                "-l",
                "me",
                "-v",
                "--",
                "h",
                "CMD"
            ]
        );
        let plain = Transport::Ssh(SshOptions::default()).argv(&"h".parse().unwrap(), "C");
        assert_eq!(
            plain,
            [
                "ssh",
                "-T",
                "-oConnectTimeout=10",
                "-oServerAliveInterval=10",
                "-oServerAliveCountMax=3",
                "-oBatchMode=yes",
                "--",
                "h",
                "C"
            ]
        );
    }
}
