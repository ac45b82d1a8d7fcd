//! Module bundles in pieces, so that what bundles share crosses a link once.
//!
//! Every AnsiballZ zip carries its module with the module_utils it imports:
//! `basic.py` and its helpers are most of each bundle and the same in all
//! of them, but for the time Ansible built the bundle, which each member's
//! header records. [`split`] cuts a zip around its members' compressed
//! data: each member's data is a piece keyed by its hash; what lies between
//! (headers, the central directory) is glue that travels with every
//! bundle. A link sends a keyed piece's bytes the first time only; the agent
//! joins the pieces in order, which gives back the zip byte for byte,
//! whatever the zip holds: the cut points only decide how much is shared.

use sha2::{Digest, Sha256};
use spindle_protocol::{Blob, Code, Piece};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes of SHA-256 that key a piece.
pub const KEY_LEN: usize = 16;

pub type Key = [u8; KEY_LEN];

/// A bundle cut into consecutive byte ranges, the shareable ones keyed.
pub type Split = Arc<[(Range<usize>, Option<Key>)]>;

/// Member data shorter than this travels as glue: naming it would cost
/// about as much as sending it.
const MIN_SHARED: usize = 64;

/// The end of central directory record: signature, then (little endian)
/// disk numbers, entry counts, directory size and offset, comment length.
const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
const LOCAL_LEN: usize = 30;

/// Where each of `zip`'s members has its compressed data, in order of
/// offset; `None` for anything that is not a plain (non-zip64) zip with at
/// least one member.
fn member_data(zip: &[u8]) -> Option<Vec<Range<usize>>> {
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
    let mut data = Vec::with_capacity(entries);
    let mut at = dir_at;
    for _ in 0..entries {
        if zip.get(at..at + 4)? != CENTRAL_SIG {
            return None;
        }
        let size = u32_at(at + 20)? as usize;
        let name = u16_at(at + 28)? as usize;
        let extra = u16_at(at + 30)? as usize;
        let comment = u16_at(at + 32)? as usize;
        let local = u32_at(at + 42)? as usize;
        if zip.get(local..local + 4)? != LOCAL_SIG {
            return None;
        }
        // The local header's own name and extra lengths place the data.
        let start = local + LOCAL_LEN + u16_at(local + 26)? as usize + u16_at(local + 28)? as usize;
        let end = start.checked_add(size)?;
        if end > dir_at {
            return None;
        }
        data.push(start..end);
        at += CENTRAL_LEN + name + extra + comment;
    }
    data.sort_unstable_by_key(|r| r.start);
    // Members' data never overlap in a zip this reads.
    if data.windows(2).any(|w| w[0].end > w[1].start) {
        return None;
    }
    Some(data)
}

/// `zip` cut around each member's data (keyed, when large enough to share)
/// with the glue between as unkeyed pieces; `None` when it does not read
/// as a zip.
pub fn split(zip: &[u8]) -> Option<Split> {
    let mut pieces: Vec<(Range<usize>, Option<Key>)> = Vec::new();
    let mut glue_from = 0;
    for data in member_data(zip)? {
        if data.len() < MIN_SHARED {
            continue;
        }
        if glue_from < data.start {
            pieces.push((glue_from..data.start, None));
        }
        glue_from = data.end;
        let key = key(&zip[data.clone()]);
        pieces.push((data, Some(key)));
    }
    if glue_from < zip.len() {
        pieces.push((glue_from..zip.len(), None));
    }
    Some(pieces.into())
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
    /// holds what this records: as pieces when the bundle reads as a zip,
    /// each keyed piece with its bytes only if the agent lacks it, the glue
    /// always; otherwise whole.
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
                    key: key.map(|k| Blob(k.to_vec())),
                    data: (!key.is_some_and(|k| held.contains(&k)))
                        .then(|| Blob(zip[range.clone()].to_vec())),
                })
                .collect(),
        }
    }

    /// Records the pieces `code` carried or named: a request with it
    /// succeeded, so the agent holds them all.
    pub fn confirm(&self, code: &Code) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for p in &code.pieces {
            if let Some(Ok(key)) = p.key.as_ref().map(|k| Key::try_from(k.as_ref())) {
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

    /// A zip with stored members, as `zipfile` writes one, by hand; every
    /// header carries `time` (as Ansible's carry the bundle's build time).
    fn zip(members: &[(&str, &[u8])], time: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dir = Vec::new();
        for (name, data) in members {
            let at = out.len() as u32;
            let fixed = |out: &mut Vec<u8>| {
                out.extend_from_slice(&[0, 0, 0, 0]); // flags, method
                out.extend_from_slice(&time.to_le_bytes());
                out.extend_from_slice(&0x5b7bu16.to_le_bytes()); // date
                out.extend_from_slice(&0u32.to_le_bytes()); // crc, not checked here
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(&0u16.to_le_bytes()); // extra
            };
            out.extend_from_slice(LOCAL_SIG);
            out.extend_from_slice(&20u16.to_le_bytes());
            fixed(&mut out);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            dir.extend_from_slice(CENTRAL_SIG);
            dir.extend_from_slice(&[20, 0, 20, 0]);
            fixed(&mut dir);
            dir.extend_from_slice(&[0; 10]); // comment, disk, attributes
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

    /// What an agent holding `held` (key -> bytes) makes of `code`.
    fn join(code: &Code, held: &mut HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &code.pieces {
            let bytes = match (&p.data, &p.key) {
                (Some(d), _) => d.as_ref().to_vec(),
                (None, Some(k)) => held[k.as_ref()].clone(),
                (None, None) => panic!("a piece with neither key nor data"),
            };
            if let Some(k) = &p.key {
                held.insert(k.as_ref().to_vec(), bytes.clone());
            }
            out.extend(bytes);
        }
        out
    }

    fn sent(code: &Code) -> usize {
        code.pieces
            .iter()
            .filter_map(|p| p.data.as_ref())
            .map(|d| d.as_ref().len())
            .sum()
    }

    #[test]
    fn pieces_join_into_the_zip_and_shared_members_travel_once() {
        let basic = vec![b'b'; 5000];
        let init: &[u8] = b"";
        let a = zip(
            &[
                ("ansible/__init__.py", init),
                ("ansible/module_utils/basic.py", &basic),
                ("ping.py", &[b'p'; 300]),
            ],
            1,
        );
        // Built two seconds later: every header differs.
        let b = zip(
            &[
                ("ansible/__init__.py", init),
                ("ansible/module_utils/basic.py", &basic),
                ("stat.py", &[b's'; 400]),
            ],
            2,
        );
        let held = Held::default();
        let mut agent = HashMap::new();
        let first = held.code("a", &a);
        assert!(first.zip.is_none());
        let keyed = first.pieces.iter().filter(|p| p.key.is_some()).count();
        assert_eq!(keyed, 2, "basic.py and ping.py; the empty file is glue");
        assert!(first.pieces.iter().all(|p| p.data.is_some()));
        assert_eq!(join(&first, &mut agent), a);
        held.confirm(&first.without_bytes());

        let second = held.code("b", &b);
        assert_eq!(join(&second, &mut agent), b);
        assert!(
            sent(&second) < 1000,
            "basic.py went again: {} bytes",
            sent(&second)
        );

        held.forget();
        assert_eq!(sent(&held.code("b", &b)), b.len());
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
        let mut bad = zip(&[("a.py", &[b'x'; 100])], 1);
        let n = bad.len();
        bad[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(split(&bad).is_none());
        let mut bad = zip(&[("a.py", &[b'x'; 100])], 1);
        bad[0] = b'X';
        assert!(split(&bad).is_none());
    }
}
