//! Module bundles in pieces, so that what bundles share crosses a link once.
//!
//! Every AnsiballZ zip carries its module with the module_utils it imports:
//! `basic.py` and its helpers are most of each bundle and the same in all
//! of them. [`split`] cuts a zip where its members start (each piece: one
//! member's local header and data; the last: the central directory and end
//! record) and keys each piece by its hash. A link sends a piece's bytes the
//! first time only; the agent joins the pieces in order, which gives back
//! the zip byte for byte, whatever the zip holds: the cut points only decide
//! how much is shared.

use sha2::{Digest, Sha256};
use spindle_protocol::{Blob, Code, Piece};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes of SHA-256 that key a piece.
pub const KEY_LEN: usize = 16;

pub type Key = [u8; KEY_LEN];

/// A bundle cut into consecutive byte ranges with their keys.
pub type Split = Arc<[(Range<usize>, Key)]>;

/// The end of central directory record: signature, then (little endian)
/// disk numbers, entry counts, directory size and offset, comment length.
const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";

/// Where `zip`'s members start, in order, and where its central directory
/// does; `None` for anything that is not a plain (non-zip64) zip with at
/// least one member.
fn layout(zip: &[u8]) -> Option<(Vec<usize>, usize)> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(zip.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(zip.get(at..at + 4)?.try_into().ok()?));
    // The end record is last but for a comment of at most 64 KiB.
    let lowest = zip.len().checked_sub(EOCD_LEN)?;
    let eocd = (lowest.saturating_sub(u16::MAX as usize)..=lowest)
        .rev()
        .find(|&at| &zip[at..at + 4] == EOCD_SIG)?;
    let entries = u16_at(eocd + 10)? as usize;
    let dir_size = u32_at(eocd + 12)? as usize;
    let dir_at = u32_at(eocd + 16)? as usize;
    if entries == 0 || entries == u16::MAX as usize || dir_at.checked_add(dir_size)? > eocd {
        return None;
    }
    let mut offsets = Vec::with_capacity(entries);
    let mut at = dir_at;
    for _ in 0..entries {
        if zip.get(at..at + 4)? != CENTRAL_SIG {
            return None;
        }
        let name = u16_at(at + 28)? as usize;
        let extra = u16_at(at + 30)? as usize;
        let comment = u16_at(at + 32)? as usize;
        let local = u32_at(at + 42)? as usize;
        if local >= dir_at || zip.get(local..local + 4)? != LOCAL_SIG {
            return None;
        }
        offsets.push(local);
        at += CENTRAL_LEN + name + extra + comment;
    }
    offsets.sort_unstable();
    offsets.dedup();
    Some((offsets, dir_at))
}

/// `zip` cut before each member and before its central directory, each
/// piece with its key; `None` when it does not read as a zip.
pub fn split(zip: &[u8]) -> Option<Split> {
    let (offsets, dir_at) = layout(zip)?;
    let mut cuts = Vec::with_capacity(offsets.len() + 3);
    cuts.push(0);
    cuts.extend(offsets);
    cuts.push(dir_at);
    cuts.push(zip.len());
    cuts.dedup();
    Some(
        cuts.windows(2)
            .map(|w| {
                let range = w[0]..w[1];
                (range.clone(), key(&zip[range]))
            })
            .collect(),
    )
}

fn key(bytes: &[u8]) -> Key {
    let mut key = [0; KEY_LEN];
    key.copy_from_slice(&Sha256::digest(bytes)[..KEY_LEN]);
    key
}

/// [`split`] of the bundle with hex SHA-256 `hash`, made once per run.
pub fn split_of(hash: &str, zip: &[u8]) -> Option<Split> {
    static SPLITS: OnceLock<Mutex<HashMap<String, Option<Split>>>> = OnceLock::new();
    let splits = SPLITS.get_or_init(Default::default);
    if let Some(s) = splits.lock().unwrap_or_else(|e| e.into_inner()).get(hash) {
        return s.clone();
    }
    let s = split(zip);
    splits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(hash.to_owned(), s.clone());
    s
}

/// The pieces one agent is known to hold.
#[derive(Default)]
pub struct Held(Mutex<HashSet<Key>>);

impl Held {
    /// `Code` carrying bundle `zip` (hex SHA-256 `hash`) for an agent that
    /// holds what this records: as pieces, with the bytes of those it
    /// lacks, when the bundle reads as a zip and shares a piece with one
    /// sent before; otherwise whole, as pieces all with their bytes (so
    /// that later bundles can share them).
    pub fn code(&self, hash: &str, zip: &[u8]) -> Code {
        let Some(split) = split_of(hash, zip) else {
            return Code {
                hash: hash.to_owned(),
                zip: Some(zip.to_vec().into()),
                pieces: Vec::new(),
            };
        };
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Code {
            hash: hash.to_owned(),
            zip: None,
            pieces: split
                .iter()
                .map(|(range, key)| Piece {
                    key: Blob(key.to_vec()),
                    data: (!held.contains(key)).then(|| Blob(zip[range.clone()].to_vec())),
                })
                .collect(),
        }
    }

    /// Records the pieces `code` carried or named: a request with it
    /// succeeded, so the agent holds them all.
    pub fn confirm(&self, code: &Code) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for p in &code.pieces {
            if let Ok(key) = Key::try_from(p.key.as_ref()) {
                held.insert(key);
            }
        }
    }

    /// Forgets everything: the agent said it lacks a piece it was thought
    /// to hold.
    pub fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip with stored members, as `zipfile` writes one, by hand.
    fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dir = Vec::new();
        for (name, data) in members {
            let at = out.len() as u32;
            out.extend_from_slice(LOCAL_SIG);
            out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&0u32.to_le_bytes()); // crc, not checked here
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            dir.extend_from_slice(CENTRAL_SIG);
            dir.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            dir.extend_from_slice(&0u32.to_le_bytes());
            dir.extend_from_slice(&(data.len() as u32).to_le_bytes());
            dir.extend_from_slice(&(data.len() as u32).to_le_bytes());
            dir.extend_from_slice(&(name.len() as u16).to_le_bytes());
            dir.extend_from_slice(&[0; 12]);
            dir.extend_from_slice(&at.to_le_bytes());
            dir.extend_from_slice(name.as_bytes());
        }
        let dir_at = out.len() as u32;
        out.extend_from_slice(&dir);
        out.extend_from_slice(EOCD_SIG);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(members.len() as u16).to_le_bytes());
        out.extend_from_slice(&(members.len() as u16).to_le_bytes());
        out.extend_from_slice(&(dir.len() as u32).to_le_bytes());
        out.extend_from_slice(&dir_at.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn join(code: &Code, held: &HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
        code.pieces
            .iter()
            .flat_map(|p| match &p.data {
                Some(d) => d.as_ref().to_vec(),
                None => held[p.key.as_ref()].clone(),
            })
            .collect()
    }

    #[test]
    fn pieces_join_into_the_zip_and_shared_members_travel_once() {
        let basic = vec![b'b'; 5000];
        let a = zip(&[
            ("ansible/module_utils/basic.py", &basic),
            ("ping.py", b"pong"),
        ]);
        let b = zip(&[
            ("ansible/module_utils/basic.py", &basic),
            ("stat.py", b"st"),
        ]);
        assert_eq!(layout(&a).unwrap().0.len(), 2);

        let held = Held::default();
        let mut agent = HashMap::new();
        let first = held.code("a", &a);
        assert!(first.zip.is_none());
        assert_eq!(first.pieces.len(), 3, "two members and the directory");
        assert!(first.pieces.iter().all(|p| p.data.is_some()));
        assert_eq!(join(&first, &agent), a);
        for p in &first.pieces {
            agent.insert(
                p.key.as_ref().to_vec(),
                p.data.clone().unwrap().as_ref().to_vec(),
            );
        }
        held.confirm(&first);

        let second = held.code("b", &b);
        assert_eq!(join(&second, &agent), b);
        let sent: usize = second
            .pieces
            .iter()
            .filter_map(|p| p.data.as_ref())
            .map(|d| d.as_ref().len())
            .sum();
        assert!(sent < 200, "basic.py went again: {sent} bytes");

        held.forget();
        assert!(held.code("b", &b).pieces.iter().all(|p| p.data.is_some()));
    }

    #[test]
    fn what_is_not_a_zip_travels_whole() {
        let held = Held::default();
        for junk in [
            &b""[..],
            b"PK\x05\x06",
            b"#!/bin/sh\necho hi\n",
            &[0xff; 100],
        ] {
            let code = held.code(&hex::encode(Sha256::digest(junk)), junk);
            assert_eq!(code.zip.as_ref().map(|z| z.as_ref()), Some(junk));
            assert!(code.pieces.is_empty());
        }
        // A directory pointing outside the file, or at no local header.
        let mut bad = zip(&[("a.py", b"x")]);
        let n = bad.len();
        bad[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(split(&bad).is_none());
    }
}
