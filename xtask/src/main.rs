//! Developer tasks: `cargo xtask <command>`. Everything the README, CI and the
//! benchmarks run goes through here.

mod agents;
mod bench;
mod delay;
mod suite;
mod testbed;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Spindle's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the static agents (x86_64 and aarch64 musl), xz-compress them and
    /// write them with a manifest into target/agents.
    BuildAgents,
    /// Manage the local testbed of target hosts.
    Testbed {
        #[command(subcommand)]
        command: testbed::Command,
    },
    /// Build the agents, bring the testbed up and run every test.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo: testbed up, bootstrap, a few commands and a transfer, with timings.
    Demo,
    /// Benchmarks (`cargo xtask bench transport`).
    Bench(bench::Args),
    /// ansible-core's own integration targets, with stock ssh and with Spindle.
    AnsibleSuite(suite::Args),
    /// Internal: the NFQUEUE packet delayer the testbed runs for --rtt-ms.
    #[command(hide = true)]
    Delayer(delay::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildAgents => agents::build().map(drop),
        Command::Testbed { command } => testbed::run(command),
        Command::Delayer(args) => delay::run(args),
        Command::Test { args } => test(&args),
        Command::Demo => demo(),
        Command::Bench(args) => bench::run(args),
        Command::AnsibleSuite(args) => suite::run(args),
    }
}

/// Runs `cargo` with `args` in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

/// Runs `cargo` with `args` and extra environment variables.
fn cargo_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(agents::workspace_root())
        .args(args)
        .envs(env.iter().copied())
        .status()?;
    if !status.success() {
        anyhow::bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Builds the agents and the release `spindle`; returns the binary's path.
pub fn release_build() -> Result<std::path::PathBuf> {
    agents::build()?;
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "--package",
        "spindle-controller",
    ])?;
    Ok(agents::workspace_root().join("target/release/spindle"))
}

fn testbed_up() -> Result<()> {
    testbed::run(testbed::Command::Up {
        hosts: 4,
        rtt_ms: 0,
    })
}

/// An ansible-core release the tests run against, in its own venv.
#[derive(Debug)]
pub struct Ansible {
    /// Under `target/`.
    dir: &'static str,
    /// The Python that runs it: a command on PATH or a pyenv version.
    python: &'static str,
    spec: &'static str,
    /// More packages for the venv.
    extra: &'static [&'static str],
    /// Whether to add the collections the `ansible` package ships.
    collections: bool,
}

/// The release every test and benchmark uses (Debian 12's Python 3.11).
pub const ANSIBLE: Ansible = Ansible {
    dir: "ansible-venv",
    python: "python3",
    spec: "ansible-core>=2.19,<2.20",
    extra: &[],
    collections: true,
};

/// The benchmarks' own venv: the same ansible-core, and Mitogen.
pub const ANSIBLE_BENCH: Ansible = Ansible {
    dir: "bench-venv",
    python: "python3",
    spec: "ansible-core>=2.19,<2.20",
    // matplotlib draws `bench ansible --chart`.
    extra: &["mitogen", "matplotlib"],
    // community.general's doas, for the doas row.
    collections: true,
};

/// The newest release; it needs Python 3.12 or later on the controller.
pub const ANSIBLE_NEWEST: Ansible = Ansible {
    dir: "ansible-venv-2.21",
    python: "3.12",
    spec: "ansible-core>=2.21,<2.22",
    extra: &[],
    collections: true,
};

/// The next release, a release candidate as yet; it needs Python 3.13. The
/// tests that cover how its modules reach Spindle run with it too.
pub const ANSIBLE_NEXT: Ansible = Ansible {
    dir: "ansible-venv-2.22",
    python: "3.13",
    spec: "ansible-core>=2.22.0rc1,<2.23",
    extra: &[],
    collections: false,
};

/// Those tests (names as `cargo test` filters them).
const NEXT_TESTS: &[&str] = &[
    "fast_paths_are_taken",
    "modules_know_the_runs_secrets",
    "modules_match_stock_runs",
    "alternating_su_runs_su_once",
];

impl Ansible {
    pub fn venv(&self) -> std::path::PathBuf {
        agents::workspace_root().join("target").join(self.dir)
    }

    /// The interpreter: `python` itself for a command name; for a version,
    /// pyenv's newest `VERSION.*`, else `pythonVERSION` on PATH (either
    /// only if it runs: pyenv's shims exist for versions not activated).
    fn python(&self) -> Result<std::path::PathBuf> {
        if !self.python.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(self.python.into());
        }
        let root = std::env::var_os("PYENV_ROOT")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pyenv")))
            .unwrap_or_default();
        let mut pyenv: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(self.python)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
            .map(|e| e.path().join("bin/python3"))
            .collect();
        pyenv.sort();
        let on_path = format!("python{}", self.python);
        let runs = |p: &std::path::PathBuf| {
            std::process::Command::new(p)
                .args(["-c", "pass"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        pyenv
            .into_iter()
            .rev()
            .chain(which(&on_path).ok())
            .find(runs)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} needs Python {}: no pyenv version under {} and no working {on_path} on PATH",
                    self.spec,
                    self.python,
                    root.display()
                )
            })
    }

    /// Creates the venv with ansible-core unless it is there.
    pub fn install(&self) -> Result<std::path::PathBuf> {
        let venv = self.venv();
        let run = |cmd: &mut std::process::Command| -> Result<()> {
            let status = cmd.status()?;
            anyhow::ensure!(status.success(), "{cmd:?} failed");
            Ok(())
        };
        if !venv.join("bin/ansible-playbook").exists() {
            run(std::process::Command::new(self.python()?)
                .args(["-m", "venv"])
                .arg(&venv))?;
            run(std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(self.spec)
                .args(self.extra))?;
        }
        // Extras added since the venv was made (their import names are
        // their package names).
        if !self.extra.is_empty() {
            let imports = std::process::Command::new(venv.join("bin/python"))
                .arg("-c")
                .arg(format!("import {}", self.extra.join(", ")))
                .stderr(std::process::Stdio::null())
                .status()?;
            if !imports.success() {
                run(std::process::Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(self.extra))?;
            }
        }
        // The collections of the `ansible` package (community.general's
        // doas become plugin, for one), without touching ansible-core.
        if self.collections && !has_collection(&venv, "community/general") {
            run(std::process::Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "ansible",
            ]))?;
        }
        Ok(venv)
    }
}

/// Whether `venv` has collection `path` (`namespace/name`) installed.
fn has_collection(venv: &std::path::Path, path: &str) -> bool {
    std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.path()
                .join("site-packages/ansible_collections")
                .join(path)
                .is_dir()
        })
}

pub fn which(name: &str) -> Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} not on PATH"))
}

pub fn ansible_venv() -> Result<()> {
    ANSIBLE.install().map(drop)
}

/// Every test with the default ansible-core, then the playbook suites and
/// the module tests again with the newest one, a few with the next one
/// ([`NEXT_TESTS`]), then ansible-core's own integration
/// targets under Spindle (`ansible-suite --spindle-only`).
fn test(extra: &[String]) -> Result<()> {
    agents::build()?;
    // The release controller, which the install test's wheel carries,
    // compiles while the testbed and the venvs are set up.
    let mut release = std::process::Command::new(env!("CARGO"))
        .current_dir(agents::workspace_root())
        .args([
            "build",
            "--release",
            "--quiet",
            "--package",
            "spindle-controller",
        ])
        .spawn()?;
    let setup = (|| {
        testbed_up()?;
        ansible_venv()?;
        ANSIBLE_NEWEST.install()
    })();
    let built = release.wait()?;
    let newest = setup?;
    anyhow::ensure!(built.success(), "building the release controller failed");
    // The end-to-end tests drive the `spindle` binary too.
    cargo(&["build", "--quiet", "--package", "spindle-controller"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;

    println!("\n== with {} ({})", ANSIBLE_NEWEST.spec, newest.display());
    let mut args = vec!["test", "--package", "spindle-tests"];
    for t in ["playbooks", "modules"] {
        args.extend(["--test", t]);
    }
    args.extend(extra.iter().map(String::as_str));
    cargo_with(&args, &[("SPINDLE_ANSIBLE_VENV", newest.as_os_str())])?;

    // Its own test names; a run narrowed by arguments leaves it out.
    if extra.is_empty() {
        let next = ANSIBLE_NEXT.install()?;
        println!("\n== with {} ({})", ANSIBLE_NEXT.spec, next.display());
        let mut args = vec!["test", "--package", "spindle-tests"];
        for t in ["playbooks", "modules", "become"] {
            args.extend(["--test", t]);
        }
        args.push("--");
        args.extend(NEXT_TESTS);
        cargo_with(&args, &[("SPINDLE_ANSIBLE_VENV", next.as_os_str())])?;
    }

    println!("\n== ansible-core's integration targets");
    suite::run(suite::Args::spindle_only())
}

fn demo() -> Result<()> {
    use std::process::Command as Cmd;
    use std::time::Instant;
    let spindle = release_build()?;
    testbed_up()?;
    let cfg = "/var/lib/spindle-testbed/ssh_config";
    let step = |title: &str, args: &[&str]| -> Result<()> {
        println!("\n$ spindle {}", args.join(" "));
        let t = Instant::now();
        let status = Cmd::new(&spindle).args(["-F", cfg]).args(args).status()?;
        println!(
            "[{title}: {:.0} ms, {status}]",
            t.elapsed().as_secs_f64() * 1e3
        );
        if !status.success() {
            anyhow::bail!("{title} failed");
        }
        Ok(())
    };
    step(
        "connect, push the agent, 100 round trips",
        &["ping", "sp1", "--count", "100"],
    )?;
    step("exec", &["exec", "sp1", "--time", "--", "uname", "-a"])?;
    step(
        "exec as a shell string",
        &["exec", "sp2", "--", "id; python3 -V"],
    )?;
    step("host without Python", &["ping", "spnopy"])?;
    let file = "/var/tmp/spindle-demo.bin";
    let status = Cmd::new("head")
        .args(["-c", &(256u64 << 20).to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(file)?)
        .status()?;
    anyhow::ensure!(status.success(), "making the demo file");
    step("put 256 MiB", &["put", file, "sp1:/var/tmp/demo.bin"])?;
    step(
        "fetch it back",
        &[
            "fetch",
            "sp1:/var/tmp/demo.bin",
            "/var/tmp/spindle-demo.back",
        ],
    )?;
    let same = std::fs::read(file)? == std::fs::read("/var/tmp/spindle-demo.back")?;
    println!("\nround trip intact: {same}");
    step(
        "clean up",
        &["exec", "sp1", "--", "rm", "-f", "/var/tmp/demo.bin"],
    )?;
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file("/var/tmp/spindle-demo.back");
    anyhow::ensure!(same, "the fetched copy differs");
    Ok(())
}
