//! `cargo xtask build-agents`: builds the static musl agents for every
//! supported architecture, xz-compresses them, checks the size budget and
//! writes them with a manifest into `target/agents/`, where the controller
//! finds them.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (architecture as `uname -m` says it, Rust target).
pub const TARGETS: &[(&str, &str)] = &[
    ("x86_64", "x86_64-unknown-linux-musl"),
    ("aarch64", "aarch64-unknown-linux-musl"),
];

/// Compressed size budget per agent: it crosses every link on every run.
const BUDGET_XZ: u64 = 300_000;

/// The agent is built against a standard library compiled for size, whose
/// panics abort at once. The prebuilt std carries the machinery to print
/// panic messages with symbolised backtraces (DWARF parsing, demangling,
/// decompression): about 40% of the agent, for output the agent could never
/// show anyway (it writes nothing to stderr). Measured on x86_64: 331 KB
/// compressed with the prebuilt std, 179 KB with this one. Nothing unwinds
/// either, so no unwind tables are emitted (another 9% of the binary).
const SMALL_STD_ARGS: &[&str] = &["-Z", "build-std=std,panic_abort"];
const SMALL_STD_RUSTFLAGS: &str = "-Zunstable-options -Cpanic=immediate-abort \
     -Crelocation-model=static -Cforce-unwind-tables=no";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub fn agents_dir() -> PathBuf {
    workspace_root().join("target").join("agents")
}

/// Builds all agents; returns the directory holding them.
pub fn build() -> Result<PathBuf> {
    let root = workspace_root();
    ensure_targets()?;
    let build_id = build_id(&root)?;
    let out = agents_dir();
    std::fs::create_dir_all(&out)?;
    let mut manifest = serde_json::Map::new();
    println!("{:<8} {:>10} {:>10}  sha256 (xz)", "arch", "raw", "xz");
    for (arch, target) in TARGETS {
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--package",
                "spindle-agent",
                "--profile",
                "agent",
            ])
            .args(["--target", target])
            .args(SMALL_STD_ARGS)
            .env("RUSTFLAGS", SMALL_STD_RUSTFLAGS)
            // The pinned stable toolchain accepts the unstable flags above.
            .env("RUSTC_BOOTSTRAP", "1")
            .env("SPINDLE_BUILD_ID", &build_id)
            .status()
            .context("running cargo build for the agent")?;
        if !status.success() {
            bail!("building the agent for {target} failed");
        }
        let bin = root
            .join("target")
            .join(target)
            .join("agent")
            .join("spindle-agent");
        let raw = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
        let xz = compress(&raw, arch)?;
        let raw_name = format!("spindle-agent-{arch}");
        let xz_name = format!("{raw_name}.xz");
        std::fs::write(out.join(&raw_name), &raw)?;
        // Executable, so tests can run the agents directly.
        std::fs::set_permissions(out.join(&raw_name), std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(out.join(&xz_name), &xz)?;
        let sha_xz = hex::encode(Sha256::digest(&xz));
        println!("{arch:<8} {:>10} {:>10}  {sha_xz}", raw.len(), xz.len());
        manifest.insert(
            arch.to_string(),
            serde_json::json!({
                "target": target,
                "raw": raw_name,
                "xz": xz_name,
                "raw_size": raw.len(),
                "xz_size": xz.len(),
                "sha256_raw": hex::encode(Sha256::digest(&raw)),
                "sha256_xz": sha_xz,
            }),
        );
        if xz.len() as u64 > BUDGET_XZ {
            bail!(
                "the {arch} agent is {} bytes compressed, over the {BUDGET_XZ} byte budget",
                xz.len()
            );
        }
    }
    let manifest = serde_json::json!({ "build_id": build_id, "agents": manifest });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    println!("build id {build_id}; agents in {}", out.display());
    Ok(out)
}

/// Adds the musl targets and the standard library's source (for the size
/// build of std) through rustup when they are missing.
fn ensure_targets() -> Result<()> {
    let components = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.trim() == "rust-src")
    {
        let status = Command::new("rustup")
            .args(["component", "add", "rust-src"])
            .status()?;
        if !status.success() {
            bail!("rustup component add rust-src failed");
        }
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (the agents need its musl targets)")?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = TARGETS
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if !missing.is_empty() {
        let status = Command::new("rustup")
            .args(["target", "add"])
            .args(&missing)
            .status()?;
        if !status.success() {
            bail!("rustup target add {} failed", missing.join(" "));
        }
    }
    Ok(())
}

/// xz at the highest preset. For x86_64 the x86 branch filter runs first:
/// it rewrites relative call and jump targets as absolute ones, which repeat
/// more, and takes about 6% off. Every liblzma since 5.0 (2010) decodes it;
/// the ARM64 filter would need liblzma 5.4 on the target, so aarch64 gets
/// LZMA2 alone.
fn compress(raw: &[u8], arch: &str) -> Result<Vec<u8>> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream, PRESET_EXTREME};
    let mut filters = Filters::new();
    if arch == "x86_64" {
        filters.x86();
    }
    filters.lzma2(&LzmaOptions::new_preset(9 | PRESET_EXTREME)?);
    let stream = Stream::new_stream_encoder(&filters, Check::Crc64)?;
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(raw)?;
    Ok(enc.finish()?)
}

/// Identifies an agent build by the sources it is made of: the agent and
/// protocol crates and the lock file. Same sources, same id.
fn build_id(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    for dir in ["agent", "protocol/src"] {
        collect(&root.join(dir), &mut files)?;
    }
    files.push(root.join("Cargo.lock"));
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(
            f.strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
    }
    let digest = hex::encode(h.finalize());
    Ok(format!("{}-{}", env!("CARGO_PKG_VERSION"), &digest[..16]))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
