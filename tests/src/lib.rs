//! Support for Spindle's end-to-end tests: the testbed's description, a
//! controller wired to it, exclusive host locks, and looks into a target
//! host from outside (its processes, its overlay's upper directory, its
//! sshd log).
//!
//! Tests that need the testbed fail with a clear message when it is not up
//! (`cargo xtask testbed up`); `cargo xtask test` brings it up first.

pub mod dns;
pub mod playbook;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spindle_controller::{
    AgentStore, Controller, Destination, Host, SshOptions, Target, Transport,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const STATE: &str = "/var/lib/spindle-testbed/testbed.json";

#[derive(Debug, Deserialize)]
pub struct Testbed {
    pub rtt_ms: u64,
    pub key: PathBuf,
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub inventory: PathBuf,
    pub login_user: String,
    pub passwords: HashMap<String, String>,
    pub pythons: BTreeMap<String, String>,
    pub hosts: Vec<TestHost>,
}

#[derive(Debug, Deserialize)]
pub struct TestHost {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub netns: String,
    pub veth: String,
    pub python: bool,
    pub upper: PathBuf,
    pub sshd_log: PathBuf,
    pub sshd_pid: u32,
    pub lock: PathBuf,
}

impl Testbed {
    pub fn load() -> Result<Testbed> {
        let text = std::fs::read(STATE).with_context(|| {
            format!("reading {STATE}: is the testbed up? run `cargo xtask testbed up`")
        })?;
        serde_json::from_slice(&text).context("parsing the testbed state")
    }

    pub fn host(&self, name: &str) -> Result<&TestHost> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("the testbed has no host {name}"))
    }

    /// The SSH options a user of this testbed would pass.
    pub fn ssh_options(&self) -> SshOptions {
        SshOptions {
            config: Some(self.ssh_config.clone()),
            ..SshOptions::default()
        }
    }

    pub fn target(&self, name: &str, python: Option<&str>) -> Target {
        Target {
            transport: Transport::Ssh(self.ssh_options()),
            dest: Destination {
                user: None,
                host: name.into(),
                port: None,
            },
            python: python.map(str::to_owned),
        }
    }

    /// A fresh controller (no shared connections with other tests).
    pub fn controller(&self) -> Result<Controller> {
        Ok(Controller::new(agents()?))
    }

    /// A host on a fresh controller.
    pub fn connect(&self, name: &str) -> Result<Arc<Host>> {
        Ok(self.controller()?.host(self.target(name, None)))
    }
}

/// The built agents (`cargo xtask build-agents`).
pub fn agents() -> Result<AgentStore> {
    AgentStore::open(Some(&agents_dir())).context("run `cargo xtask build-agents` first")
}

pub fn agents_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agents")
}

/// The `spindle` binary built alongside the tests.
pub fn spindle_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/spindle")
}

impl TestHost {
    /// Holds the host exclusively (across test processes) until dropped,
    /// for tests that count logins or files on it.
    pub fn lock(&self) -> Result<File> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .with_context(|| format!("opening {}", self.lock.display()))?;
        f.lock().context("locking the host")?;
        Ok(f)
    }

    /// Logins sshd has accepted so far (its "Accepted publickey for" or
    /// "Accepted password for" lines; VERBOSE logging adds other
    /// "Accepted key" lines per attempt).
    pub fn auth_count(&self) -> Result<usize> {
        let log = std::fs::read_to_string(&self.sshd_log)?;
        let login = |l: &&str| {
            l.contains("Accepted publickey for ") || l.contains("Accepted password for ")
        };
        Ok(log.lines().filter(login).count())
    }

    /// Commands sudo ran on this host so far (its log file, which the
    /// testbed's sudoers sets up).
    pub fn sudo_count(&self) -> Result<usize> {
        let log = std::fs::read_to_string(self.root_path("/var/log/sudo.log")).unwrap_or_default();
        Ok(log.matches("COMMAND=").count())
    }

    /// Processes running inside this host (sharing its sshd's mount
    /// namespace) owned by `uid`, as (pid, command line).
    pub fn processes_of(&self, uid: u32) -> Result<Vec<(u32, String)>> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", self.sshd_pid))
            .context("reading sshd's mount namespace: is the testbed up?")?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(their_ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
                continue;
            };
            if their_ns != ns {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let owner = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            if owner == Some(uid) {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                found.push((pid, cmd.trim().to_owned()));
            }
        }
        Ok(found)
    }

    /// Waits up to `limit` for `uid` to have no processes on the host;
    /// returns those still there.
    pub fn wait_no_processes(&self, uid: u32, limit: Duration) -> Result<Vec<(u32, String)>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = self.processes_of(uid)?;
            if left.is_empty() || std::time::Instant::now() > deadline {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every path in the overlay's upper directory (what the target wrote
    /// to its disk), with sizes.
    pub fn upper_files(&self) -> Result<BTreeMap<PathBuf, u64>> {
        let mut out = BTreeMap::new();
        walk(&self.upper, &self.upper, &mut out)?;
        Ok(out)
    }

    /// `path` inside the host's root filesystem, as root on this machine
    /// sees it (through sshd's root directory): for editing system files
    /// of the host from a test.
    pub fn root_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.sshd_pid))
    }

    /// Runs ssh (not Spindle) to the host.
    pub fn ssh(&self, tb: &Testbed, command: &str) -> Result<std::process::Output> {
        let out = std::process::Command::new("ssh")
            .arg("-F")
            .arg(&tb.ssh_config)
            .arg(&self.name)
            .arg(command)
            .output()
            .context("running ssh")?;
        if !out.status.success() {
            bail!(
                "ssh {} {command:?} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if meta.is_dir() {
            walk(root, &path, out)?;
        }
        out.insert(rel, if meta.is_dir() { 0 } else { meta.len() });
    }
    Ok(())
}

/// sha256 of a byte slice, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Runs a command to completion, sampling its peak resident memory
/// (`VmHWM`) while it runs; returns its status and the peak in KiB.
///
/// Sampled rather than taken from `wait4`'s rusage: a child's `ru_maxrss`
/// includes the forking parent's memory from before `exec`, which would
/// charge the test process's own footprint to the child.
pub fn run_measuring_rss(
    cmd: &mut std::process::Command,
) -> Result<(std::process::ExitStatus, u64)> {
    let mut child = cmd.spawn()?;
    let mut peak = 0;
    loop {
        if let Ok(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Peak resident memory of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Bytes this machine has sent to a host: its veth end's counter.
pub fn tx_bytes(veth: &str) -> Result<u64> {
    let v = std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/tx_bytes"))?;
    Ok(v.trim().parse()?)
}
