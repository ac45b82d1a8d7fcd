//! Developer tasks: `cargo xtask <command>`. Everything the README, CI and the
//! benchmarks run goes through here.

mod agents;
mod bench;
mod delay;
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
    }
}

/// Runs `cargo` with `args` in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(agents::workspace_root())
        .args(args)
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

/// ansible-core for the module tests, in `target/ansible-venv`.
const ANSIBLE_CORE: &str = "ansible-core>=2.19,<2.20";

pub fn ansible_venv() -> Result<()> {
    let venv = agents::workspace_root().join("target/ansible-venv");
    if venv.join("bin/ansible-playbook").exists() {
        return Ok(());
    }
    let run = |cmd: &mut std::process::Command| -> Result<()> {
        let status = cmd.status()?;
        anyhow::ensure!(status.success(), "{cmd:?} failed");
        Ok(())
    };
    run(std::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv))?;
    run(std::process::Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        ANSIBLE_CORE,
    ]))
}

fn test(extra: &[String]) -> Result<()> {
    agents::build()?;
    testbed_up()?;
    ansible_venv()?;
    // The end-to-end tests drive the `spindle` binary too.
    cargo(&["build", "--quiet", "--package", "spindle-controller"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
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
