//! The agent binaries as build assets: `cargo xtask build-agents` writes
//! them with a manifest; the controller reads them from that directory and
//! never links the agent crate.

use crate::error::{Error, Result};
use serde::Deserialize;
use spindle_bootstrap::Codec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Deserialize)]
struct Manifest {
    build_id: String,
    agents: HashMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    raw: String,
    xz: String,
}

/// (architecture, compressed?)
type CacheKey = (String, bool);

/// Where the agents are and which build they are. Binaries are read on
/// first use and kept in memory.
#[derive(Debug)]
pub struct AgentStore {
    dir: PathBuf,
    manifest: Manifest,
    cache: Mutex<HashMap<CacheKey, Arc<Vec<u8>>>>,
    /// What the last bootstrap stage announced (of an architecture with an
    /// agent).
    last_stage: Mutex<Option<(String, Codec)>>,
}

impl AgentStore {
    /// Opens the agent directory: `dir` if given, else `$SPINDLE_AGENT_DIR`,
    /// else `agents/` beside the `spindle` executable or one level up (the
    /// layout of a cargo build tree: `target/agents`).
    pub fn open(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => Self::find()?,
        };
        let path = dir.join("manifest.json");
        let text = std::fs::read(&path)
            .map_err(|e| Error::local(format_args!("reading {}", path.display()), e))?;
        let manifest = serde_json::from_slice(&text)
            .map_err(|e| Error::local(format_args!("parsing {}", path.display()), e))?;
        Ok(AgentStore {
            dir,
            manifest,
            cache: Mutex::default(),
            last_stage: Mutex::default(),
        })
    }

    fn find() -> Result<PathBuf> {
        if let Some(d) = std::env::var_os("SPINDLE_AGENT_DIR") {
            return Ok(d.into());
        }
        let exe = std::env::current_exe().map_err(|e| Error::local("locating spindle", e))?;
        let candidates = exe
            .ancestors()
            .skip(1)
            .take(3)
            .map(|d| d.join("agents"))
            .chain(std::iter::once(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agents"),
            ));
        let candidates: Vec<PathBuf> = candidates.collect();
        candidates
            .iter()
            .find(|d| d.join("manifest.json").is_file())
            .cloned()
            .ok_or_else(|| {
                Error::Local(format!(
                    "no agents found (looked in {}); run `cargo xtask build-agents` or set SPINDLE_AGENT_DIR",
                    candidates
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    pub fn build_id(&self) -> &str {
        &self.manifest.build_id
    }

    /// The file holding the uncompressed agent for `arch`.
    pub fn raw_path(&self, arch: &str) -> Result<PathBuf> {
        let entry = self.manifest.agents.get(arch).ok_or_else(|| {
            Error::Local(format!("no agent is built for the {arch} architecture"))
        })?;
        Ok(self.dir.join(&entry.raw))
    }

    /// The architecture whose compressed agent the next bootstrap stage
    /// most likely runs: the last stage's (fleets are mostly of one kind),
    /// this machine's before any; none after a stage that could not
    /// decompress (no Python or no `lzma`: the next one likely cannot
    /// either).
    pub fn expected_arch(&self) -> Option<String> {
        let last = self.last_stage.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            None => Some(std::env::consts::ARCH.to_owned()),
            Some((arch, Codec::Xz)) => Some(arch.clone()),
            Some((_, Codec::Raw)) => None,
        }
    }

    /// Notes what a bootstrap stage announced; an architecture without an
    /// agent is not remembered (that host fails to connect).
    pub fn announced(&self, arch: &str, codec: Codec) {
        if !self.manifest.agents.contains_key(arch) {
            return;
        }
        let mut last = self.last_stage.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some((arch.to_owned(), codec));
    }

    /// The agent for `arch`, encoded as `codec` asks.
    pub fn binary(&self, arch: &str, codec: Codec) -> Result<Arc<Vec<u8>>> {
        let xz = codec == Codec::Xz;
        let key = (arch.to_owned(), xz);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.get(&key) {
            return Ok(b.clone());
        }
        let entry = self.manifest.agents.get(arch).ok_or_else(|| {
            Error::Local(format!("no agent is built for the {arch} architecture"))
        })?;
        let path = self.dir.join(if xz { &entry.xz } else { &entry.raw });
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::local(format_args!("reading {}", path.display()), e))?;
        let bytes = Arc::new(bytes);
        cache.insert(key, bytes.clone());
        Ok(bytes)
    }
}
