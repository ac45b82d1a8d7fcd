//! `cargo xtask testbed`: a local fleet of real SSH target hosts for the
//! integration tests and benchmarks (`up`, `down`, `status`, `exec`, `link`).
//!
//! # Theory of operation
//!
//! Every target host is a set of namespaces on this machine, not a container
//! image: it shares the controller's kernel and installed software but has
//! its own network, its own disk and its own accounts.
//!
//! * **Network.** Host `spN` lives in network namespace `spindle-spN`, joined
//!   to the controller's namespace by a veth pair: `spvN` (10.213.N.1/24) on
//!   the controller side, `eth0` (10.213.N.2/24, default route via .1) inside.
//!   `spnopy` uses index 99. `link <host> down` cuts a host off by taking
//!   `spvN` down; a guard route then swallows its packets so connections
//!   time out (see [`ensure_guard_route`]).
//!
//! * **Disk.** The host's root is an overlayfs with the controller's `/` as
//!   the read-only lower layer and a per-host upper layer that receives every
//!   write. It is mounted in a private mount namespace, so the controller never
//!   sees it, and the upper directory (recorded in the state file) is plain
//!   files on the controller: a test can list it to see what a run wrote to
//!   the target's disk. The kernel normally accepts an upper layer below the
//!   lower layer's root (`/var/lib/spindle-testbed/<host>/upper`); `up` probes
//!   that once and falls back to a per-host tmpfs if it is refused. Inside
//!   the root we mount proc, sysfs, the controller's `/dev` with a private
//!   devpts instance (so PTYs and sudo work), tmpfs on `/run`, `/tmp` and
//!   `/dev/shm`, read-only binds of the pyenv Pythons at `/opt/python/<v>`, and
//!   an empty tmpfs over the testbed state directory so targets cannot read
//!   the controller's private key or each other's layers.
//!
//! * **Life cycle.** A detached `setsid ip netns exec … unshare --mount --uts
//!   -- sh -c …` builds those mounts, chroots, and then *stops itself* with
//!   SIGSTOP. While it is stopped, `up` provisions the host from outside by
//!   entering its namespaces with `nsenter --root` (fresh SSH host keys,
//!   accounts, sudoers, sshd config), then sends SIGCONT, and the stopped
//!   shell execs `sshd -D`. From then on sshd is the process that keeps the
//!   namespaces alive, and its pid is how everything later finds the host.
//!   `down` kills every process in the host's network and mount namespaces,
//!   which drops the mounts with them, then deletes the netns, the veth and
//!   the files.
//!
//! * **Latency.** The kernel has no netem, so `--rtt-ms R` queues packets
//!   with iptables NFQUEUE rules and a user-space delayer (`delay.rs`) holds
//!   each one R/2 ms. It delays on the *receiving* side of each link end (the
//!   controller's INPUT from `spvN`, the host's INPUT from `eth0`). A packet
//!   held on the sending side (OUTPUT) still belongs to its socket, and TCP
//!   Small Queues caps how much a socket may have queued below it
//!   (`tcp_limit_output_bytes`), so a send-side delay throttles a bulk
//!   transfer to that limit per delay period. The rules live in a dedicated
//!   `SPINDLE-DELAY` chain, so they can be removed without touching anyone
//!   else's, and use `--queue-bypass`: a missing delayer means no delay
//!   rather than a dead link.
//!
//! * **State.** `up` writes `/var/lib/spindle-testbed/testbed.json` (the schema
//!   the tests read), an ssh client config, a known_hosts file with the hosts'
//!   real keys and an Ansible inventory. `up` is idempotent: hosts whose sshd
//!   is alive and provisioned by this version are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Cmd, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Everything the testbed keeps on the controller lives here.
const BASE: &str = "/var/lib/spindle-testbed";
/// Largest N for `--hosts`: index 99 belongs to `spnopy`.
const MAX_HOSTS: u8 = 98;
const NOPY_NAME: &str = "spnopy";
const NOPY_INDEX: u8 = 99;
const SSH_PORT: u16 = 22;
const LOGIN_USER: &str = "spindle";
const ROOT_PASSWORD: &str = "root-pw";
/// Accounts created inside every host: (name, uid, password). The login
/// account gets no password, only the testbed key.
const ACCOUNTS: [(&str, u32, Option<&str>); 7] = [
    (LOGIN_USER, 2001, None),
    ("alice", 2002, Some("alice-pw")),
    ("bob", 2003, Some("bob-pw")),
    // Restricted deploy accounts: sudo allows carol only Spindle's
    // bootstrap command line, and dave a rule one character off it.
    ("carol", 2004, None),
    ("dave", 2005, None),
    // sudo with a password and `requiretty` (erin), and with `targetpw`:
    // the target account's password, not frank's own.
    ("erin", 2006, Some("erin-pw")),
    ("frank", 2007, Some("frank-pw")),
];
/// The sudoers command for Spindle's bootstrap with the system Python, as
/// README.md documents it.
const BOOTSTRAP_RULE: &str = "/usr/bin/python3 -c import sys;exec(sys.stdin.buffer.readline())";
const PYENV_VERSIONS: &str = "/root/.pyenv/versions";
const DELAY_CHAIN: &str = "SPINDLE-DELAY";
/// A veth end that swallows packets, routed for the whole testbed range
/// behind the hosts' own routes; see [`ensure_guard_route`].
const GUARD_LINK: &str = "spnull0";
const GUARD_PEER: &str = "spnull1";
const TESTBED_NET: &str = "10.213.0.0/16";
/// Bump when provisioning changes, so `up` rebuilds hosts made by older code.
const PROVISION_VERSION: u32 = 6;
/// sudo-rs, the Rust sudo (Debian 12 has no package): built from crates.io
/// once, and installed on each target as `/usr/local/bin/sudo-rs`.
const SUDO_RS_VERSION: &str = "0.2.15";
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Packages providing every tool used here (nsenter, unshare, setsid and
/// findmnt come from util-linux; useradd from passwd; kill from procps),
/// plus qemu-user-static, with which the tests run the aarch64 agent, and
/// acl, whose getfacl/setfacl ansible-core's integration targets use.
const PACKAGES: &[&str] = &[
    "acl",
    "qemu-user-static",
    "iproute2",
    "iptables",
    "openssh-server",
    "openssh-client",
    "sudo",
    "opendoas",
    // sudo-rs links against libpam.
    "libpam0g-dev",
    "util-linux",
    "mount",
    "passwd",
    "procps",
];

/// The `testbed` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create the testbed, or bring a running one in line with the options.
    Up {
        /// Number of hosts with Python (sp1..spN); `spnopy` is always added.
        #[arg(long, default_value_t = 4,
              value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_HOSTS)))]
        hosts: u8,
        /// Emulated round-trip time between the controller and every host.
        #[arg(long, default_value_t = 0)]
        rtt_ms: u32,
    },
    /// Remove every host, delayer, rule and state file (safe to repeat).
    Down,
    /// Show the hosts, whether their sshd is alive and the measured RTT.
    Status,
    /// Run a command as root inside a host: `exec sp1 -- id`.
    Exec {
        /// The host, e.g. `sp1`.
        host: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Cut (`down`) or restore (`up`) a host's network link.
    Link {
        /// The host, e.g. `sp1`.
        host: String,
        /// `down` to cut the link, `up` to restore it.
        state: LinkState,
    },
}

/// Target state of `testbed link`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LinkState {
    Up,
    Down,
}

/// Entry point for `cargo xtask testbed …`.
pub fn run(command: Command) -> Result<()> {
    require_root()?;
    match command {
        Command::Up { hosts, rtt_ms } => up(hosts, rtt_ms),
        Command::Down => down(),
        Command::Status => status(),
        Command::Exec { host, command } => exec(&host, &command),
        Command::Link { host, state } => link(&host, state),
    }
}

// ---------------------------------------------------------------------------
// State file (read by the tests: keep the field names).

#[derive(Serialize, Deserialize, Debug)]
struct State {
    rtt_ms: u32,
    key: String,
    ssh_config: String,
    known_hosts: String,
    inventory: String,
    login_user: String,
    passwords: BTreeMap<String, String>,
    pythons: BTreeMap<String, String>,
    hosts: Vec<HostState>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct HostState {
    name: String,
    addr: String,
    port: u16,
    netns: String,
    veth: String,
    python: bool,
    upper: String,
    sshd_log: String,
    sshd_pid: u32,
    lock: String,
}

fn base() -> PathBuf {
    PathBuf::from(BASE)
}
fn state_path() -> PathBuf {
    base().join("testbed.json")
}
fn key_path() -> PathBuf {
    base().join("id_ed25519")
}
fn ssh_config_path() -> PathBuf {
    base().join("ssh_config")
}
fn known_hosts_path() -> PathBuf {
    base().join("known_hosts")
}
fn inventory_path() -> PathBuf {
    base().join("inventory.ini")
}
/// Records the delay configuration that is in place (ours, not for tests).
fn delay_stamp_path() -> PathBuf {
    base().join("delay.stamp")
}
fn root_delayer_pid_path() -> PathBuf {
    base().join("delayer.pid")
}

fn load_state() -> Result<Option<State>> {
    let path = state_path();
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

// ---------------------------------------------------------------------------
// Hosts.

/// One target host, identified by its index (the third octet of its
/// addresses, the veth suffix and the NFQUEUE number).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Host {
    index: u8,
    name: String,
    python: bool,
}

impl Host {
    fn wanted(count: u8) -> Vec<Host> {
        let mut hosts: Vec<Host> = (1..=count).map(Host::numbered).collect();
        hosts.push(Host::nopy());
        hosts
    }

    fn numbered(index: u8) -> Host {
        Host {
            index,
            name: format!("sp{index}"),
            python: true,
        }
    }

    fn nopy() -> Host {
        Host {
            index: NOPY_INDEX,
            name: NOPY_NAME.to_string(),
            python: false,
        }
    }

    fn from_name(name: &str) -> Option<Host> {
        if name == NOPY_NAME {
            return Some(Host::nopy());
        }
        let index: u8 = name.strip_prefix("sp")?.parse().ok()?;
        let host = Host::numbered(index);
        ((1..=MAX_HOSTS).contains(&index) && host.name == name).then_some(host)
    }

    fn from_index(index: u8) -> Option<Host> {
        match index {
            NOPY_INDEX => Some(Host::nopy()),
            1..=MAX_HOSTS => Some(Host::numbered(index)),
            _ => None,
        }
    }

    fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 2)
    }
    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 1)
    }
    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr(), SSH_PORT))
    }
    fn netns(&self) -> String {
        format!("spindle-{}", self.name)
    }
    fn veth(&self) -> String {
        format!("spv{}", self.index)
    }
    fn queue(&self) -> u16 {
        u16::from(self.index)
    }
    fn dir(&self) -> PathBuf {
        base().join(&self.name)
    }
    /// Where the merged root is mounted (inside the host's mount ns only).
    fn root(&self) -> PathBuf {
        self.dir().join("root")
    }
    /// Mount point of the tmpfs holding upper+work in the fallback layout.
    fn layer_fs(&self) -> PathBuf {
        self.dir().join("fs")
    }
    fn layer_dir(&self) -> PathBuf {
        if self.layer_fs().is_dir() {
            self.layer_fs()
        } else {
            self.dir()
        }
    }
    fn upper(&self) -> PathBuf {
        self.layer_dir().join("upper")
    }
    fn work(&self) -> PathBuf {
        self.layer_dir().join("work")
    }
    fn sshd_log(&self) -> PathBuf {
        self.dir().join("sshd.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir().join("sshd.pid")
    }
    fn provision_log(&self) -> PathBuf {
        self.dir().join("provision.log")
    }
    /// Written after successful provisioning; see [`Host::stamp`].
    fn stamp_path(&self) -> PathBuf {
        self.dir().join("provisioned")
    }
    fn delayer_pid_path(&self) -> PathBuf {
        self.dir().join("delayer.pid")
    }
    fn delayer_log(&self) -> PathBuf {
        self.dir().join("delayer.log")
    }
    fn lock(&self) -> PathBuf {
        base().join(format!("{}.lock", self.name))
    }

    /// What a correctly provisioned host records in its stamp file.
    fn stamp(&self, pythons: &[Python]) -> String {
        let versions: Vec<&str> = if self.python {
            pythons.iter().map(|p| p.version.as_str()).collect()
        } else {
            Vec::new()
        };
        format!(
            "v{PROVISION_VERSION} python={} pythons={}\n",
            self.python,
            versions.join(",")
        )
    }

    /// The pid of this host's sshd, if it is running.
    fn sshd_pid(&self) -> Option<u32> {
        let pid = read_pid(&self.pid_file())?;
        (alive(pid) && comm(pid).as_deref() == Some("sshd")).then_some(pid)
    }

    fn to_state(&self, pid: u32) -> HostState {
        HostState {
            name: self.name.clone(),
            addr: self.addr().to_string(),
            port: SSH_PORT,
            netns: self.netns(),
            veth: self.veth(),
            python: self.python,
            upper: path_str(&self.upper()),
            sshd_log: path_str(&self.sshd_log()),
            sshd_pid: pid,
            lock: path_str(&self.lock()),
        }
    }
}

/// A pyenv Python made available to the hosts at /opt/python/<version>.
#[derive(Debug, Clone)]
struct Python {
    /// Full version, e.g. "3.8.18".
    version: String,
    /// Major.minor, e.g. "3.8" (the key in the state file).
    short: String,
}

impl Python {
    fn dir(&self) -> String {
        format!("/opt/python/{}", self.version)
    }
    fn bin(&self) -> String {
        format!("{}/bin/python{}", self.dir(), self.short)
    }
    /// A module whose import proves the interpreter and its C extensions
    /// load (lzma is absent from 2.7).
    fn probe_module(&self) -> &'static str {
        if self.short.starts_with("2.") {
            "zlib"
        } else {
            "lzma"
        }
    }
}

/// Lists the pyenv Pythons on the controller, newest patch per minor.
fn discover_pythons() -> Result<Vec<Python>> {
    let mut found: BTreeMap<(u32, u32), (u32, Python)> = BTreeMap::new();
    let entries = match fs::read_dir(PYENV_VERSIONS) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("warning: {PYENV_VERSIONS} not found; hosts get no extra Pythons");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e).with_context(|| format!("listing {PYENV_VERSIONS}")),
    };
    for entry in entries {
        let name = entry
            .with_context(|| format!("listing {PYENV_VERSIONS}"))?
            .file_name();
        let Some(version) = name.to_str() else {
            continue;
        };
        let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
        let [major, minor, patch] = parts[..] else {
            continue;
        };
        let short = format!("{major}.{minor}");
        let bin = Path::new(PYENV_VERSIONS)
            .join(version)
            .join(format!("bin/python{short}"));
        if !bin.is_file() || version != format!("{major}.{minor}.{patch}") {
            continue;
        }
        let python = Python {
            version: version.to_string(),
            short,
        };
        let newer = found.get(&(major, minor)).is_none_or(|(p, _)| *p < patch);
        if newer {
            found.insert((major, minor), (patch, python));
        }
    }
    Ok(found.into_values().map(|(_, p)| p).collect())
}

// ---------------------------------------------------------------------------
// up

fn up(count: u8, rtt_ms: u32) -> Result<()> {
    let started = Instant::now();
    ensure_packages()?;
    ensure_sudo_rs()?;
    ensure_local_doas()?;
    load_kernel_modules();
    ensure_aarch64_binfmt();
    fs::create_dir_all(BASE).with_context(|| format!("creating {BASE}"))?;
    fs::set_permissions(BASE, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting permissions of {BASE}"))?;
    let pubkey = ensure_key()?;
    let pythons = discover_pythons()?;
    let layout = probe_layout()?;
    ensure_guard_route()?;
    let sshd_config = sshd_config(openssh_has_penalties());

    let wanted = Host::wanted(count);
    let old_state = load_state().unwrap_or_else(|e| {
        eprintln!("warning: ignoring unreadable state: {e:#}");
        None
    });
    let extras: Vec<Host> = existing_hosts(old_state.as_ref())
        .into_iter()
        .filter(|h| !wanted.contains(h))
        .collect();

    // Which hosts can stay as they are?
    let healthy: Vec<Option<u32>> = wanted
        .iter()
        .map(|h| host_is_healthy(h, &pythons))
        .collect();
    for host in &extras {
        eprintln!("{}: not wanted any more, removing", host.name);
        destroy_host(host)?;
    }

    // Create or repair the hosts in parallel; they are independent.
    let results: Vec<Result<(u32, bool)>> = thread::scope(|scope| {
        let handles: Vec<_> = wanted
            .iter()
            .zip(&healthy)
            .map(|(host, healthy)| {
                let (pythons, pubkey, sshd_config) = (&pythons, &pubkey, &sshd_config);
                scope.spawn(move || -> Result<(u32, bool)> {
                    if let Some(pid) = healthy {
                        if revive_link(host, *pid).is_ok() {
                            return Ok((*pid, false));
                        }
                        eprintln!("{}: sshd alive but unreachable, recreating", host.name);
                    }
                    let t = Instant::now();
                    destroy_host(host)?;
                    let pid = create_host(host, layout, pythons, pubkey, sshd_config)?;
                    eprintln!(
                        "{}: created in {:.1}s",
                        host.name,
                        t.elapsed().as_secs_f64()
                    );
                    Ok((pid, true))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("host setup thread panicked")))
            })
            .collect()
    });
    let mut pids = Vec::new();
    let mut created = Vec::new();
    let mut errors = Vec::new();
    for (host, result) in wanted.iter().zip(results) {
        match result {
            Ok((pid, new)) => {
                pids.push(pid);
                if new {
                    created.push(host.clone());
                }
            }
            Err(e) => errors.push(format!("{}: {e:#}", host.name)),
        }
    }
    if !errors.is_empty() {
        bail!("testbed up failed:\n  {}", errors.join("\n  "));
    }

    let state = State {
        rtt_ms,
        key: path_str(&key_path()),
        ssh_config: path_str(&ssh_config_path()),
        known_hosts: path_str(&known_hosts_path()),
        inventory: path_str(&inventory_path()),
        login_user: LOGIN_USER.to_string(),
        passwords: passwords(),
        pythons: pythons.iter().map(|p| (p.short.clone(), p.bin())).collect(),
        hosts: wanted
            .iter()
            .zip(&pids)
            .map(|(h, pid)| h.to_state(*pid))
            .collect(),
    };
    write_client_files(&wanted, &pids)?;
    verify_logins(&created)?;

    // Checked only now, since a host rebuilt above lost its delayer.
    if !delay_in_place(&wanted, rtt_ms) {
        teardown_delay()?;
        if rtt_ms > 0 {
            setup_delay(&wanted, rtt_ms)?;
        }
    }
    write_atomic(
        &state_path(),
        &format!("{}\n", serde_json::to_string_pretty(&state)?),
    )?;

    println!(
        "testbed up in {:.1}s (rtt {} ms requested)",
        started.elapsed().as_secs_f64(),
        rtt_ms
    );
    print_table(&wanted);
    println!();
    let inventory = fs::read_to_string(inventory_path()).context("reading the inventory")?;
    print!("{inventory}");
    Ok(())
}

fn passwords() -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = ACCOUNTS
        .iter()
        .filter_map(|(name, _, pw)| pw.map(|pw| (name.to_string(), pw.to_string())))
        .collect();
    map.insert("root".to_string(), ROOT_PASSWORD.to_string());
    map
}

/// Installs whatever tool packages are missing (CI starts from a bare image).
fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !package_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    run_checked(
        Cmd::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_checked(
        Cmd::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// The first line of the `/etc/doas.conf` this machine gets when it has
/// none: the `spindle_doas` connection is tested here, from root to
/// `nobody`, and doas asks for a rule even for root.
const LOCAL_DOAS_MARK: &str = "# Written by `cargo xtask testbed up`";

fn ensure_local_doas() -> Result<()> {
    let path = Path::new("/etc/doas.conf");
    if path.exists() {
        return Ok(());
    }
    fs::write(
        path,
        format!("{LOCAL_DOAS_MARK}: the tests of spindle_doas.\npermit nopass root as nobody\n"),
    )
    .context("writing /etc/doas.conf")?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).context("chmod /etc/doas.conf")
}

/// Removes the `/etc/doas.conf` that [`ensure_local_doas`] wrote.
fn remove_local_doas() {
    let path = Path::new("/etc/doas.conf");
    if fs::read_to_string(path).is_ok_and(|t| t.starts_with(LOCAL_DOAS_MARK)) {
        let _ = fs::remove_file(path);
    }
}

/// The sudo-rs binary the targets get.
fn sudo_rs_path() -> PathBuf {
    base().join(format!("sudo-rs-{SUDO_RS_VERSION}/bin/sudo"))
}

/// Builds sudo-rs unless it is there (about 20 s).
fn ensure_sudo_rs() -> Result<()> {
    let bin = sudo_rs_path();
    if bin.exists() {
        return Ok(());
    }
    eprintln!("building sudo-rs {SUDO_RS_VERSION}");
    let root = bin
        .parent()
        .and_then(Path::parent)
        .context("sudo-rs path")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_checked(
        Cmd::new(cargo)
            .args(["install", "--quiet", "--locked", "sudo-rs", "--version"])
            .arg(format!("={SUDO_RS_VERSION}"))
            .arg("--root")
            .arg(root),
    )?;
    Ok(())
}

fn package_installed(pkg: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"ii"))
}

/// Best effort: on kernels where these are modules rather than built in.
fn load_kernel_modules() {
    let _ = Cmd::new("modprobe")
        .args(["-qa", "overlay", "veth", "nfnetlink_queue", "xt_NFQUEUE"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Where the kernel keeps its handlers for foreign binaries.
const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// Has the kernel run aarch64 binaries through qemu-user-static, as Debian
/// sets up at boot where systemd runs (`/usr/lib/binfmt.d`): an aarch64
/// agent under qemu starts child agents (become) from a memfd, which only
/// the kernel can hand to qemu. The handler stays after `down`: it changes
/// nothing for this machine's own binaries. Where it cannot be set up,
/// only that test fails, saying why: the testbed itself does not need it.
fn ensure_aarch64_binfmt() {
    if let Err(e) = register_aarch64_binfmt() {
        eprintln!("warning: aarch64 binaries will not run through qemu here: {e:#}");
    }
}

fn register_aarch64_binfmt() -> Result<()> {
    let handler = Path::new(BINFMT).join("qemu-aarch64");
    if fs::read_to_string(&handler).is_ok_and(|h| h.starts_with("enabled")) {
        return Ok(());
    }
    if handler.exists() {
        // Registered but disabled.
        return fs::write(&handler, "1").context("enabling the aarch64 binfmt handler");
    }
    if !Path::new(BINFMT).join("register").exists() {
        run_checked(Cmd::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT]))
            .context("mounting binfmt_misc")?;
    }
    let rule = fs::read("/usr/lib/binfmt.d/qemu-aarch64.conf")
        .context("reading qemu-user-static's aarch64 binfmt rule")?;
    fs::write(Path::new(BINFMT).join("register"), rule.trim_ascii_end())
        .context("registering qemu-user-static for aarch64 binaries")?;
    Ok(())
}

/// Generates the testbed's login key once; returns the public key line.
fn ensure_key() -> Result<String> {
    let key = key_path();
    let public = key.with_extension("pub");
    if !key.is_file() || !public.is_file() {
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(&public);
        run_checked(
            Cmd::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "spindle-testbed",
                    "-f",
                ])
                .arg(&key),
        )?;
    }
    // ssh refuses private keys that others can read.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {}", key.display()))?;
    let line =
        fs::read_to_string(&public).with_context(|| format!("reading {}", public.display()))?;
    Ok(line.trim().to_string())
}

/// How upper/work directories are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Directly under /var/lib/spindle-testbed/<host>, on the root disk.
    Disk,
    /// In a tmpfs at /var/lib/spindle-testbed/<host>/fs, for kernels whose
    /// overlayfs rejects an upper layer nested inside the lower one.
    Tmpfs,
}

/// Mounts a throwaway overlay like the hosts' in a scratch mount namespace
/// and checks that a write lands in the upper directory.
fn probe_layout() -> Result<Layout> {
    let dir = base().join(".overlay-probe");
    let _ = fs::remove_dir_all(&dir);
    for sub in ["upper", "work", "merged"] {
        fs::create_dir_all(dir.join(sub)).context("creating the overlay probe")?;
    }
    let d = path_str(&dir);
    let script = format!(
        "mount -t overlay overlay -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {d}/merged \
         && echo probe > {d}/merged/spindle-probe"
    );
    let mounted = Cmd::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let works = mounted && dir.join("upper/spindle-probe").is_file();
    fs::remove_dir_all(&dir).context("removing the overlay probe")?;
    if works {
        Ok(Layout::Disk)
    } else {
        eprintln!("overlayfs refuses an upper layer on the root disk; using tmpfs layers");
        Ok(Layout::Tmpfs)
    }
}

/// OpenSSH 9.8 added per-source penalties, which would lock the controller
/// out after the tests' deliberate failures and the RTT probes.
fn openssh_has_penalties() -> bool {
    let Ok(out) = Cmd::new("ssh").arg("-V").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(version) = text
        .trim()
        .strip_prefix("OpenSSH_")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit() && c != '.').next())
    else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (9, 8)
}

fn sshd_config(penalties: bool) -> String {
    let mut config = String::from(
        "# Written by `cargo xtask testbed up`.\n\
         Port 22\n\
         ListenAddress 0.0.0.0\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         HostKey /etc/ssh/ssh_host_ecdsa_key\n\
         HostKey /etc/ssh/ssh_host_rsa_key\n\
         UsePAM yes\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication yes\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         AuthorizedKeysFile .ssh/authorized_keys\n\
         LogLevel VERBOSE\n\
         MaxSessions 100\n\
         MaxStartups 200:30:400\n\
         PidFile none\n\
         UseDNS no\n\
         PrintMotd no\n\
         AcceptEnv LANG LC_*\n\
         Subsystem sftp internal-sftp\n",
    );
    if penalties {
        config.push_str("PerSourcePenalties no\n");
    }
    config
}

/// Without its own route, a host whose link is cut (`link down`) would be
/// reached through the controller's default route instead: a connect might
/// then fail fast, or even be answered by some proxy. A low-priority route
/// for the whole range into a veth whose peer is down (and with ARP off, so
/// there is no neighbour resolution to fail) silently eats those packets, so
/// a cut link behaves like a cut cable: connections time out.
fn ensure_guard_route() -> Result<()> {
    if !Path::new("/sys/class/net").join(GUARD_LINK).exists() {
        run_checked(Cmd::new("ip").args([
            "link", "add", GUARD_LINK, "type", "veth", "peer", "name", GUARD_PEER,
        ]))?;
    }
    run_checked(Cmd::new("ip").args(["link", "set", GUARD_LINK, "arp", "off", "up"]))?;
    run_checked(Cmd::new("ip").args([
        "route",
        "replace",
        TESTBED_NET,
        "dev",
        GUARD_LINK,
        "metric",
        "4096",
    ]))?;
    Ok(())
}

/// Names of testbed hosts that exist in any form: in the state file, as a
/// netns, as a state directory or as a veth.
fn existing_hosts(state: Option<&State>) -> Vec<Host> {
    let mut hosts = BTreeSet::new();
    if let Some(state) = state {
        hosts.extend(state.hosts.iter().filter_map(|h| Host::from_name(&h.name)));
    }
    for ns in spindle_netns() {
        if let Some(host) = ns.strip_prefix("spindle-").and_then(Host::from_name) {
            hosts.insert(host);
        }
    }
    if let Ok(entries) = fs::read_dir(BASE) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                if let Some(host) = entry.file_name().to_str().and_then(Host::from_name) {
                    hosts.insert(host);
                }
            }
        }
    }
    for index in spindle_veths() {
        hosts.extend(Host::from_index(index));
    }
    hosts.into_iter().collect()
}

/// Network namespaces whose names start with `spindle-`.
fn spindle_netns() -> Vec<String> {
    let Ok(out) = run_checked(Cmd::new("ip").args(["netns", "list"])) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("spindle-"))
        .map(str::to_string)
        .collect()
}

/// Indices of the `spv<i>` links in the controller's namespace.
fn spindle_veths() -> Vec<u8> {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("spv")?
                .parse::<u8>()
                .ok()
        })
        .collect()
}

/// Some(pid) if the host's sshd runs in the host's netns and the host was
/// provisioned by this version of the code.
fn host_is_healthy(host: &Host, pythons: &[Python]) -> Option<u32> {
    let pid = host.sshd_pid()?;
    let in_netns =
        ns_id(&format!("/proc/{pid}/ns/net"))? == ns_id(&format!("/run/netns/{}", host.netns()))?;
    let stamp = fs::read_to_string(host.stamp_path()).ok()?;
    let veth = Path::new("/sys/class/net").join(host.veth()).exists();
    (in_netns && veth && stamp == host.stamp(pythons)).then_some(pid)
}

/// Brings a healthy host's link back up (after `link down`) and checks that
/// its sshd answers.
fn revive_link(host: &Host, pid: u32) -> Result<()> {
    run_checked(Cmd::new("ip").args(["link", "set", &host.veth(), "up"]))?;
    wait_for_port(host, pid, Duration::from_secs(5))
}

fn create_host(
    host: &Host,
    layout: Layout,
    pythons: &[Python],
    pubkey: &str,
    sshd_config: &str,
) -> Result<u32> {
    fs::create_dir_all(host.root()).context("creating the host directory")?;
    if layout == Layout::Tmpfs {
        fs::create_dir_all(host.layer_fs()).context("creating the layer mount point")?;
        run_checked(
            Cmd::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs"])
                .arg(host.layer_fs()),
        )?;
    }
    fs::create_dir_all(host.upper()).context("creating the upper directory")?;
    fs::create_dir_all(host.work()).context("creating the work directory")?;
    create_network(host).context("creating the network")?;

    let pid = launch(host, pythons).context("starting the host")?;
    if let Err(e) = provision(host, pid, pythons, pubkey, sshd_config) {
        let _ = signal(pid, "KILL");
        return Err(e.context(format!(
            "provisioning failed (log: {})",
            host.provision_log().display()
        )));
    }
    signal(pid, "CONT").context("resuming the host")?;
    wait_for_port(host, pid, Duration::from_secs(10))?;
    fs::write(host.stamp_path(), host.stamp(pythons)).context("writing the host stamp")?;
    Ok(pid)
}

fn create_network(host: &Host) -> Result<()> {
    let (ns, veth) = (host.netns(), host.veth());
    let inner = |args: &[&str]| run_checked(Cmd::new("ip").args(["-n", &ns]).args(args));
    run_checked(Cmd::new("ip").args(["netns", "add", &ns]))?;
    run_checked(Cmd::new("ip").args([
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]))?;
    run_checked(Cmd::new("ip").args([
        "addr",
        "add",
        &format!("{}/24", host.gateway()),
        "dev",
        &veth,
    ]))?;
    run_checked(Cmd::new("ip").args(["link", "set", &veth, "up"]))?;
    inner(&["link", "set", "lo", "up"])?;
    inner(&["addr", "add", &format!("{}/24", host.addr()), "dev", "eth0"])?;
    inner(&["link", "set", "eth0", "up"])?;
    inner(&[
        "route",
        "add",
        "default",
        "via",
        &host.gateway().to_string(),
    ])?;
    Ok(())
}

/// Runs in the host's fresh network + mount + UTS namespaces (as seen from
/// the controller's root filesystem) and ends as the stopped shell that will
/// exec sshd. `$$` is the pid that becomes sshd: every step execs.
const LAUNCH_SCRIPT: &str = r#"set -eu
mount -t overlay overlay -o "lowerdir=/,upperdir=$UPPER,workdir=$WORK" "$ROOT"
# This namespace started as a copy of the controller's, including the
# /run/netns handles of the other hosts and their layer mounts; holding them
# would keep those alive after they are deleted. Our overlay holds its own
# private reference to its layers, so detaching everything else is safe.
findmnt -rn -o TARGET | grep -E "^(/run/netns|$BASE)/" | grep -vE "^$ROOT(/|\$)" \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$ROOT/dev/pts"
mount --bind "$ROOT/dev/pts/ptmx" "$ROOT/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/tmp"
mount -t tmpfs -o mode=0700,size=64k tmpfs "$ROOT$BASE"
for v in $PYTHONS; do
    mkdir -p "$ROOT/opt/python/$v"
    mount --bind "$PYENV/$v" "$ROOT/opt/python/$v"
    mount -o remount,bind,ro "$ROOT/opt/python/$v"
done
hostname "$HOST"
echo $$ > "$PID_FILE"
exec chroot "$ROOT" /bin/sh -c 'kill -STOP $$ && exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config_spindle'
"#;

/// Starts the host's namespaces, detached from us, and waits until the
/// launcher has stopped itself ready for provisioning. Returns its pid.
fn launch(host: &Host, pythons: &[Python]) -> Result<u32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.sshd_log())
        .with_context(|| format!("opening {}", host.sshd_log().display()))?;
    let versions: Vec<&str> = if host.python {
        pythons.iter().map(|p| p.version.as_str()).collect()
    } else {
        Vec::new()
    };
    let _ = fs::remove_file(host.pid_file());
    let mut child = Cmd::new("setsid")
        .args(["ip", "netns", "exec", &host.netns()])
        .args(["unshare", "--mount", "--uts", "--propagation", "private"])
        .args(["--", "/bin/sh", "-c", LAUNCH_SCRIPT])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("BASE", BASE)
        .env("ROOT", host.root())
        .env("UPPER", host.upper())
        .env("WORK", host.work())
        .env("HOST", &host.name)
        .env("PYENV", PYENV_VERSIONS)
        .env("PYTHONS", versions.join(" "))
        .env("PID_FILE", host.pid_file())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log)
        .spawn()
        .context("spawning the host launcher")?;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = read_pid(&host.pid_file()) {
            match proc_state(pid) {
                Some('T') => return Ok(pid),
                None | Some('Z' | 'X') => {
                    let _ = child.try_wait();
                    bail!("launcher died: {}", tail(&host.sshd_log()));
                }
                _ => {}
            }
        } else if let Some(status) = child.try_wait().context("polling the launcher")? {
            bail!("launcher exited ({status}): {}", tail(&host.sshd_log()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("launcher did not get ready: {}", tail(&host.sshd_log()));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A command run as root inside the host: its mount, UTS and network
/// namespaces and its (overlay) root directory.
fn enter(pid: u32) -> Cmd {
    let mut cmd = Cmd::new("nsenter");
    cmd.args(["--target", &pid.to_string()])
        .args(["--mount", "--uts", "--net", "--root", "--wd", "--"])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8");
    if let Ok(term) = std::env::var("TERM") {
        cmd.env("TERM", term);
    }
    cmd
}

/// Runs inside the (still stopped) host as root. All inputs come from the
/// environment so nothing needs shell quoting.
const PROVISION_SCRIPT: &str = r#"set -eu
printf '%s\n' "$HOST" > /etc/hostname
printf '%s\n' "$HOSTS_FILE" > /etc/hosts

# Host keys of its own: the lower layer carries the controller's.
rm -f /etc/ssh/ssh_host_*
ssh-keygen -A
printf '%s' "$SSHD_CONFIG" > /etc/ssh/sshd_config_spindle
install -d -m 0755 /run/sshd
/usr/sbin/sshd -t -f /etc/ssh/sshd_config_spindle

for account in $ACCOUNTS; do
    useradd --uid "${account#*:}" --user-group --create-home --shell /bin/bash "${account%:*}"
done
# Without PAM, sshd refuses every login to an account whose password is
# locked ("!"), keys included; "*" means "no password" without locking.
# The key logs in as the login account; as alice, erin and frank, whose
# sudo asks for a password; as the restricted carol and dave (no password
# at all); and as root (sshd allows root the key only), which ansible-core's own integration
# targets expect.
for user in "$LOGIN_USER" carol dave; do
    usermod --password '*' "$user"
done
for user in "$LOGIN_USER" alice carol dave erin frank root; do
    home=/home/$user
    [ "$user" = root ] && home=/root
    install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
    printf '%s\n' "$PUBKEY" > "$home/.ssh/authorized_keys"
    chown "$user:$user" "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"
done
printf '%s\n' "$CHPASSWD" | chpasswd
printf '%s' "$SUDOERS" > /etc/sudoers.d/spindle-testbed
chmod 0440 /etc/sudoers.d/spindle-testbed
visudo -cq
printf '%s' "$DOAS_CONF" > /etc/doas.conf
chmod 0600 /etc/doas.conf
# sudo-rs comes on stdin (the directory it was built in is not mounted
# here).
cat > /usr/local/bin/sudo-rs
chown root:root /usr/local/bin/sudo-rs
chmod 4755 /usr/local/bin/sudo-rs

# The controller's root dotfiles set up pyenv, whose init writes below
# /root/.pyenv; give the target's root Debian's stock ones instead.
for f in profile bashrc; do
    if [ -f /usr/share/base-files/dot.$f ]; then
        cp /usr/share/base-files/dot.$f /root/.$f
    fi
done

# Copy the login records up now, so that logins later modify files already
# in the upper layer instead of adding new ones to it.
touch /var/log/wtmp /var/log/btmp /var/log/lastlog

as_login() {
    setpriv --reuid="$LOGIN_USER" --regid="$LOGIN_USER" --init-groups \
        env -i HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin "$@"
}
as_login sudo -n true

if [ "$PYTHON" = 1 ]; then
    # The pyenv builds link libpython through a RUNPATH under /root, which
    # other users cannot traverse; the loader falls back to ld.so.cache.
    printf '%s\n' $PYTHON_LIBS > /etc/ld.so.conf.d/spindle-pythons.conf
    ldconfig
    for check in $PYTHON_CHECKS; do
        as_login "${check%:*}" -c "import ${check#*:}" \
            || { echo "${check%:*} cannot import ${check#*:}" >&2; exit 1; }
    done
else
    rm -f /usr/bin/python* /usr/bin/pydoc* /usr/bin/pdb[0-9]* /usr/bin/pygettext* \
        /usr/bin/py3* /usr/local/bin/python* /usr/local/bin/pydoc* /usr/local/bin/pip*
    for name in python python2 python3; do
        if as_login sh -c "command -v $name"; then
            echo "$name is still on the PATH" >&2
            exit 1
        fi
    done
fi
"#;

fn provision(
    host: &Host,
    pid: u32,
    pythons: &[Python],
    pubkey: &str,
    sshd_config: &str,
) -> Result<()> {
    let accounts: Vec<String> = ACCOUNTS
        .iter()
        .map(|(name, uid, _)| format!("{name}:{uid}"))
        .collect();
    let mut chpasswd: Vec<String> = ACCOUNTS
        .iter()
        .filter_map(|(name, _, pw)| pw.map(|pw| format!("{name}:{pw}")))
        .collect();
    chpasswd.push(format!("root:{ROOT_PASSWORD}"));
    let sudoers = format!(
        "# Written by `cargo xtask testbed up`.\n\
         Defaults lecture=never\n\
         Defaults logfile=/var/log/sudo.log\n\
         {LOGIN_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n\
         alice ALL=(ALL:ALL) ALL\n\
         Defaults:erin requiretty\n\
         erin ALL=(ALL:ALL) ALL\n\
         Defaults:frank targetpw\n\
         frank ALL=(ALL:ALL) ALL\n\
         carol ALL=(root) NOPASSWD: {BOOTSTRAP_RULE}\n\
         dave ALL=(root) NOPASSWD: {}\n",
        BOOTSTRAP_RULE.replace("readline", "readlines")
    );
    // doas: the login account without a password, alice with hers.
    let doas_conf = format!(
        "# Written by `cargo xtask testbed up`.\n\
         permit nopass {LOGIN_USER} as root\n\
         permit nopass {LOGIN_USER} as bob\n\
         permit alice as root\n\
         permit alice as bob\n"
    );
    let hosts_file = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}",
        host.addr(),
        host.name
    );
    let libs: Vec<String> = pythons.iter().map(|p| format!("{}/lib", p.dir())).collect();
    let checks: Vec<String> = pythons
        .iter()
        .map(|p| format!("{}:{}", p.bin(), p.probe_module()))
        .collect();

    let out = enter(pid)
        .args(["/bin/sh", "-c", PROVISION_SCRIPT])
        .env("HOST", &host.name)
        .env("HOSTS_FILE", hosts_file)
        .env("SSHD_CONFIG", sshd_config)
        .env("ACCOUNTS", accounts.join(" "))
        .env("LOGIN_USER", LOGIN_USER)
        .env("PUBKEY", pubkey)
        .env("CHPASSWD", chpasswd.join("\n"))
        .env("SUDOERS", sudoers)
        .env("DOAS_CONF", doas_conf)
        .env("PYTHON", if host.python { "1" } else { "0" })
        .env("PYTHON_LIBS", libs.join(" "))
        .env("PYTHON_CHECKS", checks.join(" "))
        .stdin(File::open(sudo_rs_path()).context("opening sudo-rs")?)
        .output()
        .context("running nsenter")?;
    let mut log = out.stdout.clone();
    log.extend_from_slice(&out.stderr);
    fs::write(host.provision_log(), &log).context("writing the provisioning log")?;
    if !out.status.success() {
        bail!(
            "provisioning script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until the host's sshd accepts TCP connections.
fn wait_for_port(host: &Host, pid: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&host.socket_addr(), Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if !alive(pid) {
            bail!("sshd exited: {}", tail(&host.sshd_log()));
        }
        if Instant::now() > deadline {
            bail!(
                "sshd is not answering on {}: {}",
                host.socket_addr(),
                tail(&host.sshd_log())
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the ssh client config, known_hosts, inventory and lock files.
fn write_client_files(hosts: &[Host], pids: &[u32]) -> Result<()> {
    let key = path_str(&key_path());
    let known_hosts_file = path_str(&known_hosts_path());

    let mut known_hosts = String::new();
    for (host, pid) in hosts.iter().zip(pids) {
        let keys =
            run_checked(enter(*pid).args(["/bin/sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"]))
                .with_context(|| format!("{}: reading host keys", host.name))?;
        for line in keys.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(kind), Some(blob)) = (fields.next(), fields.next()) {
                writeln!(known_hosts, "{},{} {kind} {blob}", host.name, host.addr())?;
            }
        }
    }

    let mut ssh_config = String::from("# Written by `cargo xtask testbed up`.\n");
    let mut inventory = String::from("# Written by `cargo xtask testbed up`.\n[testbed]\n");
    for host in hosts {
        write!(
            ssh_config,
            "\nHost {name}\n    HostName {addr}\n    Port {SSH_PORT}\n    User {LOGIN_USER}\n    \
             IdentityFile {key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {known_hosts_file}\n    \
             GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    BatchMode yes\n    \
             ConnectTimeout 10\n",
            name = host.name,
            addr = host.addr(),
        )?;
        writeln!(
            inventory,
            "{name} ansible_host={addr} ansible_port={SSH_PORT} ansible_user={LOGIN_USER} \
             ansible_ssh_private_key_file={key} ansible_ssh_common_args='-o UserKnownHostsFile={known_hosts_file} \
             -o StrictHostKeyChecking=yes'",
            name = host.name,
            addr = host.addr(),
        )?;
    }
    for (group, python) in [("testbed_python", true), ("testbed_nopython", false)] {
        writeln!(inventory, "\n[{group}]")?;
        for host in hosts.iter().filter(|h| h.python == python) {
            writeln!(inventory, "{}", host.name)?;
        }
    }

    write_atomic(&known_hosts_path(), &known_hosts)?;
    write_atomic(&ssh_config_path(), &ssh_config)?;
    write_atomic(&inventory_path(), &inventory)?;
    for host in hosts {
        // Never truncate: a test may hold a lock on it right now.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(host.lock())
            .with_context(|| format!("creating {}", host.lock().display()))?;
    }
    Ok(())
}

/// Logs in to each new host the way the tests will, through the generated
/// client files.
fn verify_logins(hosts: &[Host]) -> Result<()> {
    let results: Vec<Result<()>> = thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|host| {
                scope.spawn(move || -> Result<()> {
                    let user = run_checked(
                        Cmd::new("ssh")
                            .arg("-F")
                            .arg(ssh_config_path())
                            .args([&host.name, "sudo -n true && id -un"]),
                    )
                    .with_context(|| format!("{}: ssh login check", host.name))?;
                    if user.trim() != LOGIN_USER {
                        bail!("{}: logged in as {:?}", host.name, user.trim());
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("login check thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Latency emulation

/// The per-direction delay as the delayer's `--delay-ms` argument.
fn one_way_ms(rtt_ms: u32) -> String {
    let half = f64::from(rtt_ms) / 2.0;
    format!("{half}")
}

fn delayer_args(queues: &[u16], rtt_ms: u32, pid_file: &Path) -> Vec<String> {
    let mut args = vec!["delayer".to_string()];
    for queue in queues {
        args.extend(["--queue".to_string(), queue.to_string()]);
    }
    args.extend([
        "--delay-ms".to_string(),
        one_way_ms(rtt_ms),
        "--pid-file".to_string(),
        path_str(pid_file),
    ]);
    args
}

/// A running delayer: its pid and its arguments.
struct Delayer {
    pid: u32,
    args: Vec<String>,
}

/// Finds our delayers by their command lines (pid files can go stale).
fn running_delayers() -> Vec<Delayer> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args.get(1).is_some_and(|a| a == "delayer")
            && args
                .windows(2)
                .any(|w| w[0] == "--pid-file" && w[1].starts_with(BASE));
        if ours && alive(pid) {
            found.push(Delayer {
                pid,
                args: args[1..].to_vec(),
            });
        }
    }
    found
}

/// Whether exactly the delay configuration for `hosts` at `rtt_ms` runs.
fn delay_in_place(hosts: &[Host], rtt_ms: u32) -> bool {
    let running = running_delayers();
    let chain = iptables(None, &["-S", DELAY_CHAIN]).is_ok();
    if rtt_ms == 0 {
        return running.is_empty() && !chain;
    }
    let queues: Vec<u16> = hosts.iter().map(Host::queue).collect();
    let mut expected = vec![delayer_args(&queues, rtt_ms, &root_delayer_pid_path())];
    for host in hosts {
        expected.push(delayer_args(
            &[host.queue()],
            rtt_ms,
            &host.delayer_pid_path(),
        ));
    }
    let stamp = fs::read_to_string(delay_stamp_path()).unwrap_or_default();
    chain
        && stamp == delay_stamp(hosts, rtt_ms)
        && running.len() == expected.len()
        && expected
            .iter()
            .all(|args| running.iter().any(|d| &d.args == args))
}

fn delay_stamp(hosts: &[Host], rtt_ms: u32) -> String {
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    format!("rtt_ms={rtt_ms} hosts={}\n", names.join(","))
}

/// Runs iptables in the controller's namespace or in `netns`.
fn iptables(netns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Cmd::new("ip");
            c.args(["netns", "exec", ns, "iptables"]);
            c
        }
        None => Cmd::new("iptables"),
    };
    run_checked(cmd.arg("-w").args(args))
}

/// Removes our chain and the jump to it; returns whether it existed.
fn remove_delay_chain(netns: Option<&str>) -> Result<bool> {
    if iptables(netns, &["-S", DELAY_CHAIN]).is_err() {
        return Ok(false);
    }
    while iptables(netns, &["-D", "INPUT", "-j", DELAY_CHAIN]).is_ok() {}
    iptables(netns, &["-F", DELAY_CHAIN])?;
    iptables(netns, &["-X", DELAY_CHAIN])?;
    Ok(true)
}

fn install_delay_chain(netns: Option<&str>, rules: &[(&str, u16)]) -> Result<()> {
    iptables(netns, &["-N", DELAY_CHAIN])?;
    for (dev, queue) in rules {
        iptables(
            netns,
            &[
                "-A",
                DELAY_CHAIN,
                "-i",
                dev,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue.to_string(),
                "--queue-bypass",
            ],
        )?;
    }
    iptables(netns, &["-I", "INPUT", "1", "-j", DELAY_CHAIN])?;
    Ok(())
}

/// Removes all delay rules and delayers, without dropping packets in flight.
fn teardown_delay() -> Result<()> {
    let mut removed = remove_delay_chain(None)?;
    for ns in spindle_netns() {
        removed |= remove_delay_chain(Some(&ns))
            .with_context(|| format!("removing delay rules in {ns}"))?;
    }
    let delayers = running_delayers();
    if removed && !delayers.is_empty() {
        // Nothing new gets queued now; let the held packets through before
        // killing their holders (the kernel drops a dead queue's packets).
        let longest = delayers
            .iter()
            .filter_map(|d| {
                let i = d.args.iter().position(|a| a == "--delay-ms")?;
                d.args.get(i + 1)?.parse::<f64>().ok()
            })
            .fold(0.0_f64, f64::max);
        thread::sleep(Duration::from_secs_f64(longest / 1000.0) + Duration::from_millis(100));
    }
    kill_and_wait(&delayers.iter().map(|d| d.pid).collect::<Vec<_>>())?;
    let _ = fs::remove_file(root_delayer_pid_path());
    let _ = fs::remove_file(delay_stamp_path());
    Ok(())
}

fn setup_delay(hosts: &[Host], rtt_ms: u32) -> Result<()> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let queues: Vec<u16> = hosts.iter().map(Host::queue).collect();
    let mut pending: Vec<(PathBuf, PathBuf, Child)> = Vec::new();

    let root_pid = root_delayer_pid_path();
    let root_log = base().join("delayer.log");
    let mut cmd = Cmd::new("setsid");
    cmd.arg(&exe).args(delayer_args(&queues, rtt_ms, &root_pid));
    pending.push((
        root_pid.clone(),
        root_log.clone(),
        spawn_detached(cmd, &root_pid, &root_log)?,
    ));
    for host in hosts {
        let pid_file = host.delayer_pid_path();
        let mut cmd = Cmd::new("setsid");
        cmd.args(["ip", "netns", "exec", &host.netns()])
            .arg(&exe)
            .args(delayer_args(&[host.queue()], rtt_ms, &pid_file));
        let child = spawn_detached(cmd, &pid_file, &host.delayer_log())?;
        pending.push((pid_file, host.delayer_log(), child));
    }

    // Each delayer writes its pid file once its queues are bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (pid_file, log, mut child) in pending {
        loop {
            if read_pid(&pid_file).is_some_and(alive) {
                break;
            }
            if let Some(status) = child.try_wait().context("polling a delayer")? {
                bail!("delayer exited ({status}): {}", tail(&log));
            }
            if Instant::now() > deadline {
                bail!("delayer did not start: {}", tail(&log));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    for host in hosts {
        install_delay_chain(Some(&host.netns()), &[("eth0", host.queue())])
            .with_context(|| format!("{}: installing delay rules", host.name))?;
    }
    let veths: Vec<String> = hosts.iter().map(Host::veth).collect();
    let rules: Vec<(&str, u16)> = veths
        .iter()
        .map(String::as_str)
        .zip(queues.iter().copied())
        .collect();
    install_delay_chain(None, &rules).context("installing delay rules")?;
    write_atomic(&delay_stamp_path(), &delay_stamp(hosts, rtt_ms))?;
    Ok(())
}

fn spawn_detached(mut cmd: Cmd, pid_file: &Path, log: &Path) -> Result<Child> {
    let _ = fs::remove_file(pid_file);
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log handle")?)
        .stderr(log_file)
        .spawn()
        .context("spawning a delayer")
}

// ---------------------------------------------------------------------------
// down

fn down() -> Result<()> {
    let state = load_state().unwrap_or_else(|e| {
        eprintln!("warning: ignoring unreadable state: {e:#}");
        None
    });
    teardown_delay()?;
    remove_local_doas();
    let hosts = existing_hosts(state.as_ref());
    let mut errors = Vec::new();
    for host in &hosts {
        if let Err(e) = destroy_host(host) {
            errors.push(format!("{}: {e:#}", host.name));
        }
    }
    // Strays that match no host name.
    for ns in spindle_netns() {
        if let Err(e) = run_checked(Cmd::new("ip").args(["netns", "del", &ns])) {
            errors.push(format!("{ns}: {e:#}"));
        }
    }
    // Stray links, and the guard (which takes its peer and route along).
    let links = spindle_veths().into_iter().map(|i| format!("spv{i}"));
    for link in links.chain([GUARD_LINK.to_string()]) {
        if let Err(e) = delete_link(&link) {
            errors.push(format!("{link}: {e:#}"));
        }
    }
    // `ip netns add` made /run/netns a mount point; once empty, it can go.
    let netns_dir = Path::new("/run/netns");
    let empty = fs::read_dir(netns_dir).is_ok_and(|mut d| d.next().is_none());
    if empty && is_mount_point(netns_dir) {
        let _ = run_checked(Cmd::new("umount").arg(netns_dir));
    }
    if !errors.is_empty() {
        bail!("testbed down failed:\n  {}", errors.join("\n  "));
    }
    for path in [
        state_path(),
        ssh_config_path(),
        known_hosts_path(),
        inventory_path(),
        base().join("delayer.log"),
    ] {
        let _ = fs::remove_file(path);
    }
    let _ = fs::remove_dir_all(base().join(".overlay-probe"));
    println!(
        "testbed down ({} host(s) removed; the key {} is kept)",
        hosts.len(),
        key_path().display()
    );
    Ok(())
}

/// Kills everything in the host's namespaces and removes all its traces.
/// Fine to call for a host that does not exist.
fn destroy_host(host: &Host) -> Result<()> {
    let netns_exists = Path::new("/run/netns").join(host.netns()).exists();
    let mut pids = BTreeSet::new();
    if netns_exists {
        let out = run_checked(Cmd::new("ip").args(["netns", "pids", &host.netns()]))?;
        pids.extend(out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    // Processes that entered only the mount namespace (none of ours do, but
    // anything there would keep the overlay mounted).
    if let Some(pid) = host.sshd_pid() {
        pids.insert(pid);
        if let Some(mnt) = ns_id(&format!("/proc/{pid}/ns/mnt")) {
            pids.extend(pids_in_ns("mnt", mnt));
        }
    }
    kill_and_wait(&pids.into_iter().collect::<Vec<_>>())?;
    if netns_exists {
        run_checked(Cmd::new("ip").args(["netns", "del", &host.netns()]))?;
    }
    // Usually gone with the netns already (taking its peer along), but the
    // kernel finishes that asynchronously.
    delete_link(&host.veth())?;
    if is_mount_point(&host.layer_fs()) {
        run_checked(Cmd::new("umount").arg(host.layer_fs()))?;
    }
    match fs::remove_dir_all(host.dir()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", host.dir().display())),
    }
    let _ = fs::remove_file(host.lock());
    Ok(())
}

// ---------------------------------------------------------------------------
// status, exec, link

fn status() -> Result<()> {
    let Some(state) = load_state()? else {
        println!("testbed is down");
        let leftovers = existing_hosts(None);
        if !leftovers.is_empty() {
            let names: Vec<&str> = leftovers.iter().map(|h| h.name.as_str()).collect();
            println!(
                "leftovers of hosts {}: run `cargo xtask testbed down`",
                names.join(", ")
            );
        }
        return Ok(());
    };
    println!("testbed up, rtt {} ms requested", state.rtt_ms);
    let hosts: Vec<Host> = state
        .hosts
        .iter()
        .filter_map(|h| Host::from_name(&h.name))
        .collect();
    print_table(&hosts);
    Ok(())
}

/// Prints one line per host with a freshly measured connect time.
fn print_table(hosts: &[Host]) {
    // One host at a time: every probe makes sshd fork and re-exec, and doing
    // that on all hosts at once would load the CPU and skew the numbers.
    let rtts: Vec<Option<Duration>> = hosts
        .iter()
        .map(|h| link_is_up(h).then(|| measure_rtt(h)).flatten())
        .collect();
    println!(
        "{:<8} {:<12} {:<14} {:<6} {:<14} {:<5} {:<7} connect-rtt",
        "host", "addr", "netns", "link", "sshd", "python", "upper"
    );
    for (host, rtt) in hosts.iter().zip(rtts) {
        let sshd = match host.sshd_pid() {
            Some(pid) => format!("up ({pid})"),
            None => "DOWN".to_string(),
        };
        let link = if link_is_up(host) { "up" } else { "DOWN" };
        let rtt = match rtt {
            Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            None if link == "DOWN" => "-".to_string(),
            None => "unreachable".to_string(),
        };
        let upper = if host.layer_fs().is_dir() {
            "tmpfs"
        } else {
            "disk"
        };
        println!(
            "{:<8} {:<12} {:<14} {:<6} {:<14} {:<6} {:<7} {rtt}",
            host.name,
            host.addr(),
            host.netns(),
            link,
            sshd,
            if host.python { "yes" } else { "no" },
            upper
        );
    }
}

/// Median of five TCP connects to the host's sshd: one round trip each.
fn measure_rtt(host: &Host) -> Option<Duration> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        TcpStream::connect_timeout(&host.socket_addr(), Duration::from_secs(2)).ok()?;
        samples.push(start.elapsed());
        // Let sshd finish with the probe before the next one.
        thread::sleep(Duration::from_millis(10));
    }
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

fn link_is_up(host: &Host) -> bool {
    let flags = Path::new("/sys/class/net").join(host.veth()).join("flags");
    fs::read_to_string(flags)
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0) // IFF_UP
}

/// CPU time (ms) used so far by everything host `name` ran since its sshd
/// was first measured: sshd is put in a cpuacct control group of its own,
/// which every process it starts inherits, however it ends (orphans
/// included). The difference over a benchmark is what the target spent.
pub fn cpu_ms(name: &str) -> Result<f64> {
    let host = lookup(name)?;
    let sshd = host
        .sshd_pid()
        .ok_or_else(|| anyhow!("{name}: sshd is not running"))?;
    let group = PathBuf::from(format!("/sys/fs/cgroup/cpuacct/spindle-{name}"));
    fs::create_dir_all(&group)
        .with_context(|| format!("creating {} (cgroup v1 cpuacct)", group.display()))?;
    let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
    if !procs.lines().any(|l| l.trim() == sshd.to_string()) {
        fs::write(group.join("cgroup.procs"), sshd.to_string())
            .with_context(|| format!("moving sshd into {}", group.display()))?;
    }
    let ns: f64 = fs::read_to_string(group.join("cpuacct.usage"))?
        .trim()
        .parse()
        .context("reading cpuacct.usage")?;
    Ok(ns / 1e6)
}

/// Host `name`'s address.
pub fn address(name: &str) -> Result<Ipv4Addr> {
    Ok(lookup(name)?.addr())
}

/// The file host `name`'s sshd logs to.
pub fn sshd_log_of(name: &str) -> Result<PathBuf> {
    Ok(lookup(name)?.sshd_log())
}

/// Runs `script` with `sh -c` as root inside host `name`, `input` on its
/// stdin; an error unless it exits 0.
pub fn run_script(name: &str, script: &str, input: &[u8]) -> Result<()> {
    use std::io::Write;
    let host = lookup(name)?;
    let pid = host
        .sshd_pid()
        .ok_or_else(|| anyhow!("{name}: sshd is not running"))?;
    let mut child = enter(pid)
        .args(["sh", "-c", script])
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("running a script on {name}"))?;
    child.stdin.take().expect("piped").write_all(input)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("{name}: `{script}` failed ({status})");
    }
    Ok(())
}

fn lookup(name: &str) -> Result<Host> {
    let host = Host::from_name(name).ok_or_else(|| anyhow!("no such testbed host: {name}"))?;
    if !host.dir().is_dir() {
        bail!("host {name} is not up; run `cargo xtask testbed up`");
    }
    Ok(host)
}

fn exec(name: &str, command: &[String]) -> Result<()> {
    let host = lookup(name)?;
    let pid = host
        .sshd_pid()
        .ok_or_else(|| anyhow!("{name}: sshd is not running; run `cargo xtask testbed up`"))?;
    let status = enter(pid)
        .args(command)
        .status()
        .with_context(|| format!("running {command:?} on {name}"))?;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    std::process::exit(code);
}

fn link(name: &str, state: LinkState) -> Result<()> {
    let host = lookup(name)?;
    let word = match state {
        LinkState::Up => "up",
        LinkState::Down => "down",
    };
    run_checked(Cmd::new("ip").args(["link", "set", &host.veth(), word]))?;
    println!("{name}: link {} {word}", host.veth());
    Ok(())
}

// ---------------------------------------------------------------------------
// Small helpers

/// Runs a command to completion and returns its stdout; a non-zero exit is
/// an error carrying the command line and its stderr.
fn run_checked(cmd: &mut Cmd) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Cmd) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if arg.len() > 60 || arg.contains('\n') {
            line.push_str("<script>");
        } else {
            line.push_str(&arg);
        }
    }
    line
}

fn require_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("the testbed needs root (namespaces, mounts, iptables)");
    }
    Ok(())
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(8);
    format!("{} says:\n{}", path.display(), lines[start..].join("\n"))
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The state letter from /proc/<pid>/stat (R, S, T, Z, …), None if gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; the state is the
    // first field after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn alive(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X'))
}

fn comm(pid: u32) -> Option<String> {
    Some(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

/// Identity (device, inode) of a namespace file.
fn ns_id(path: &str) -> Option<(u64, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

fn pids_in_ns(kind: &str, id: (u64, u64)) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns_id(&format!("/proc/{pid}/ns/{kind}")) == Some(id))
        .collect()
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    run_checked(Cmd::new("kill").args([&format!("-{sig}"), &pid.to_string()]))?;
    Ok(())
}

/// SIGTERM, then SIGKILL after two seconds; fails if anything survives.
fn kill_and_wait(pids: &[u32]) -> Result<()> {
    for sig in ["TERM", "KILL"] {
        let living: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if living.is_empty() {
            return Ok(());
        }
        for pid in &living {
            // Stopped processes (a launcher awaiting provisioning) only see
            // SIGTERM once continued.
            let _ = signal(*pid, sig);
            if sig == "TERM" {
                let _ = signal(*pid, "CONT");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && living.iter().any(|p| alive(*p)) {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let survivors: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    if !survivors.is_empty() {
        bail!("processes {survivors:?} survived SIGKILL");
    }
    Ok(())
}

/// Deletes a network link; fine if it does not exist (any more).
fn delete_link(name: &str) -> Result<()> {
    let exists = || Path::new("/sys/class/net").join(name).exists();
    if !exists() {
        return Ok(());
    }
    match run_checked(Cmd::new("ip").args(["link", "del", name])) {
        Err(e) if exists() => Err(e),
        _ => Ok(()),
    }
}

fn is_mount_point(path: &Path) -> bool {
    let target = path_str(path);
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
        })
        .unwrap_or(false)
}
