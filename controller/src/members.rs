//! Module bundles as their members, so that what bundles share crosses a
//! link once and what crosses is compressed well.
//!
//! Every AnsiballZ zip carries its module with the module_utils it imports:
//! `basic.py` and its helpers are most of each bundle and the same in all
//! of them, but for the time Ansible built the bundle, which each member's
//! header records. Ansible deflates each file on its own; deflated data
//! does not compress further, and files deflated one by one share nothing.
//! So [`Held::code`] sends a bundle as its members' directory entries
//! ([`Member`]), each keyed by its content's hash, with the contents the
//! agent lacks inflated and packed into one LZMA stream: about two thirds
//! of the zip's size for a first bundle, a few kilobytes for later ones.
//! The agent rebuilds a zip of stored members from them
//! ([`spindle_protocol::bundle`]). A bundle that does not read as a plain
//! zip of stored or deflated members travels whole.

use sha2::{Digest, Sha256};
use spindle_protocol::{bundle, Blob, Code, Member};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::OnceCell;

/// Bytes of SHA-256 that key a member's content.
pub const KEY_LEN: usize = 16;

pub type Key = [u8; KEY_LEN];

/// The end of central directory record: signature, then (little endian)
/// disk numbers, entry counts, directory size and offset, comment length.
const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
const LOCAL_LEN: usize = 30;

/// Members' contents larger than this, together, make a bundle travel
/// whole (the agent refuses to rebuild larger ones).
const MAX_PLAIN: usize = 48 << 20;

/// LZMA settings for packing: liblzma's preset 6 with no position bits, as
/// suits text (about as small as preset 9, faster).
const PRESET: u32 = 6;

/// A bundle read as its members, each with its key and plain content.
#[derive(Debug)]
pub struct Unpacked {
    members: Vec<Member>,
    contents: Vec<Vec<u8>>,
}

impl Unpacked {
    /// The members and contents of `zip`; `None` for anything that is not
    /// a plain (non-zip64, unencrypted) zip of stored or deflated members
    /// whose contents match their checksums, or is too large.
    pub fn read(zip: &[u8]) -> Option<Unpacked> {
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
        if entries == u16::MAX as usize || dir_at.checked_add(dir_size)? > eocd {
            return None;
        }
        let mut members = Vec::with_capacity(entries);
        let mut contents = Vec::with_capacity(entries);
        let mut total = 0usize;
        let mut at = dir_at;
        for _ in 0..entries {
            if zip.get(at..at + 4)? != CENTRAL_SIG {
                return None;
            }
            let flags = u16_at(at + 8)?;
            let method = u16_at(at + 10)?;
            let time = u32_at(at + 12)?;
            let crc = u32_at(at + 16)?;
            let packed_size = u32_at(at + 20)? as usize;
            let size = u32_at(at + 24)?;
            let name_len = u16_at(at + 28)? as usize;
            let extra = u16_at(at + 30)? as usize;
            let comment = u16_at(at + 32)? as usize;
            let attrs = u32_at(at + 38)?;
            let local = u32_at(at + 42)? as usize;
            let name = zip.get(at + CENTRAL_LEN..at + CENTRAL_LEN + name_len)?;
            // Encrypted, or sizes in a zip64 record.
            if flags & 1 != 0 || size == u32::MAX || packed_size == u32::MAX as usize {
                return None;
            }
            if zip.get(local..local + 4)? != LOCAL_SIG {
                return None;
            }
            // The local header's own name and extra lengths place the data.
            let start =
                local + LOCAL_LEN + u16_at(local + 26)? as usize + u16_at(local + 28)? as usize;
            let data = zip.get(start..start.checked_add(packed_size)?)?;
            total += size as usize;
            if total > MAX_PLAIN {
                return None;
            }
            let content = match method {
                0 => data.to_vec(),
                8 => {
                    miniz_oxide::inflate::decompress_to_vec_with_limit(data, size as usize).ok()?
                }
                _ => return None,
            };
            if content.len() != size as usize || bundle::crc32(&content) != crc {
                return None;
            }
            members.push(Member {
                name: String::from_utf8(name.to_vec()).ok()?,
                key: Blob(key(&content).to_vec()),
                size,
                crc,
                time,
                attrs,
                packed: false,
            });
            contents.push(content);
            at += CENTRAL_LEN + name_len + extra + comment;
        }
        Some(Unpacked { members, contents })
    }

    /// The `.lzma` stream of the contents of members `fresh` (indexes), one
    /// after another.
    fn pack(&self, fresh: &[usize]) -> Vec<u8> {
        use liblzma::stream::{Action, LzmaOptions, Status, Stream};
        let plain: Vec<u8> = fresh
            .iter()
            .flat_map(|&i| &self.contents[i][..])
            .copied()
            .collect();
        let packed = (|| {
            let mut options = LzmaOptions::new_preset(PRESET)?;
            options.position_bits(0);
            let mut stream = Stream::new_lzma_encoder(&options)?;
            let mut out = Vec::with_capacity(plain.len() / 3 + 4096);
            loop {
                let rest = &plain[stream.total_in() as usize..];
                if stream.process_vec(rest, &mut out, Action::Finish)? == Status::StreamEnd {
                    return Ok::<_, liblzma::stream::Error>(out);
                }
                out.reserve(out.capacity());
            }
        })();
        // liblzma fails only for want of memory, which would end this
        // process anyway.
        packed.unwrap_or_else(|e| panic!("packing module code: {e}"))
    }
}

fn key(bytes: &[u8]) -> Key {
    let mut key = [0; KEY_LEN];
    key.copy_from_slice(&Sha256::digest(bytes)[..KEY_LEN]);
    key
}

/// [`Unpacked::read`] of the bundle with hex SHA-256 `hash`, made once per
/// run however many hosts ask at once, on a blocking thread (inflating and
/// hashing a large bundle takes a while).
pub async fn unpacked_of(hash: &str, zip: &[u8]) -> Option<Arc<Unpacked>> {
    type Cells = HashMap<String, Arc<OnceCell<Option<Arc<Unpacked>>>>>;
    static UNPACKED: OnceLock<Mutex<Cells>> = OnceLock::new();
    let cell = UNPACKED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(hash.to_owned())
        .or_default()
        .clone();
    cell.get_or_init(|| async {
        let zip = zip.to_vec();
        let read = tokio::task::spawn_blocking(move || Unpacked::read(&zip).map(Arc::new));
        // A read that panicked leaves the bundle to travel whole.
        read.await.ok().flatten()
    })
    .await
    .clone()
}

/// Packed contents by bundle and the members packed: agents lacking the
/// same members of the same bundle (the first bundle on every host, say)
/// share one packing, made off the async threads.
async fn packed_of(hash: &str, unpacked: Arc<Unpacked>, fresh: Vec<usize>) -> Blob {
    type Cells = HashMap<(String, Vec<usize>), Arc<OnceCell<Blob>>>;
    static PACKED: OnceLock<Mutex<Cells>> = OnceLock::new();
    let cell = {
        let mut cells = PACKED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded: a run uses a few dozen modules.
        if cells.len() >= 256 {
            cells.clear();
        }
        cells
            .entry((hash.to_owned(), fresh.clone()))
            .or_default()
            .clone()
    };
    cell.get_or_init(|| async move {
        let packed = tokio::task::spawn_blocking(move || unpacked.pack(&fresh)).await;
        Blob(packed.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
    })
    .await
    .clone()
}

/// Starts packing bundle `zip` for an agent that holds none of it, so that
/// it is ready when the agent's link is.
pub fn prepare(hash: &str, zip: &Arc<[u8]>) {
    let (hash, zip) = (hash.to_owned(), zip.clone());
    tokio::spawn(async move {
        if let Some(unpacked) = unpacked_of(&hash, &zip).await {
            let fresh = fresh(&unpacked, &HashSet::new());
            packed_of(&hash, unpacked, fresh).await;
        }
    });
}

/// Indexes of the members whose content an agent holding `held` lacks,
/// first occurrences only.
fn fresh(unpacked: &Unpacked, held: &HashSet<Key>) -> Vec<usize> {
    let mut seen = HashSet::new();
    unpacked
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            let k = m.key.as_ref();
            !Key::try_from(k).is_ok_and(|k| held.contains(&k)) && seen.insert(k)
        })
        .map(|(i, _)| i)
        .collect()
}

/// The member contents one agent is known to hold.
#[derive(Default, Debug)]
pub struct Held(Mutex<HashSet<Key>>);

impl Held {
    /// `Code` carrying bundle `zip` (hex SHA-256 `hash`) for an agent that
    /// holds what this records: as members when the bundle reads as a zip,
    /// with the contents it lacks packed; otherwise whole.
    pub async fn code(&self, hash: &str, zip: &[u8]) -> Code {
        let Some(unpacked) = unpacked_of(hash, zip).await else {
            return Code {
                hash: hash.to_owned(),
                zip: Some(zip.to_vec().into()),
                ..Code::default()
            };
        };
        let fresh = fresh(&unpacked, &self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut members = unpacked.members.clone();
        for &i in &fresh {
            members[i].packed = true;
        }
        let packed = match fresh.is_empty() {
            true => None,
            false => Some(packed_of(hash, unpacked, fresh).await),
        };
        Code {
            hash: hash.to_owned(),
            zip: None,
            members,
            packed,
        }
    }

    /// Records the members `code` carried or named: a request with it
    /// succeeded, so the agent holds them all.
    pub fn confirm(&self, code: &Code) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for m in &code.members {
            if let Ok(key) = Key::try_from(m.key.as_ref()) {
                held.insert(key);
            }
        }
    }

    /// Forgets everything: the agent said it lacks content it was thought
    /// to hold.
    pub fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip as `zipfile` writes one, by hand: members deflated (or stored
    /// when `deflate` is false), every header carrying `time` (as
    /// Ansible's carry the bundle's build time).
    fn zip(members: &[(&str, &[u8])], time: u16, deflate: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dir = Vec::new();
        for (name, content) in members {
            let at = out.len() as u32;
            let data = match deflate {
                true => miniz_oxide::deflate::compress_to_vec(content, 6),
                false => content.to_vec(),
            };
            let fixed = |out: &mut Vec<u8>| {
                out.extend_from_slice(&[0, 0, 8 * deflate as u8, 0]); // flags, method
                out.extend_from_slice(&time.to_le_bytes());
                out.extend_from_slice(&0x5b7bu16.to_le_bytes()); // date
                out.extend_from_slice(&bundle::crc32(content).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(content.len() as u32).to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(&0u16.to_le_bytes()); // extra
            };
            out.extend_from_slice(LOCAL_SIG);
            out.extend_from_slice(&20u16.to_le_bytes());
            fixed(&mut out);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&data);
            dir.extend_from_slice(CENTRAL_SIG);
            dir.extend_from_slice(&[20, 3, 20, 0]);
            fixed(&mut dir);
            dir.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
            dir.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
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

    /// What an agent holding `held` (key -> content) makes of `code`, as
    /// the agent does it: unpack, then write the stored zip.
    fn rebuild(code: &Code, held: &mut HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
        let fresh: usize = code
            .members
            .iter()
            .filter(|m| m.packed)
            .map(|m| m.size as usize)
            .sum();
        let plain = match &code.packed {
            Some(p) => spindle_protocol::lzma::decode(p.as_ref(), fresh).expect("unpacks"),
            None => Vec::new(),
        };
        assert_eq!(plain.len(), fresh);
        let mut next = 0;
        let zip = bundle::write_stored(&code.members, |start, m, zip| {
            let k = m.key.as_ref().to_vec();
            match (m.packed, held.get(&k)) {
                (false, Some(content)) => zip.extend_from_slice(content),
                (false, None) => panic!("{} neither packed nor held", m.name),
                (true, _) => {
                    zip.extend_from_slice(&plain[next..next + m.size as usize]);
                    next += m.size as usize;
                }
            }
            held.insert(k, zip[start..].to_vec());
            Ok::<_, ()>(())
        });
        zip.expect("writes").expect("fits")
    }

    fn contents(zip: &[u8]) -> Vec<(String, Vec<u8>, u32, u32)> {
        let u = Unpacked::read(zip).expect("reads as a zip");
        u.members
            .iter()
            .zip(u.contents)
            .map(|(m, c)| (m.name.clone(), c, m.time, m.attrs))
            .collect()
    }

    /// The bundle's hash, which keys the caches this module keeps.
    fn hash(zip: &[u8]) -> String {
        hex::encode(Sha256::digest(zip))
    }

    fn sent(code: &Code) -> usize {
        code.packed.as_ref().map_or(0, |p| p.as_ref().len())
    }

    #[tokio::test]
    async fn members_rebuild_the_files_and_shared_ones_travel_once() {
        let basic: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("def f{i}(): return {}\n", i % 7).into_bytes())
            .collect();
        let init: &[u8] = b"";
        let a = zip(
            &[
                ("ansible/__init__.py", init),
                ("ansible/module_utils/__init__.py", init),
                ("ansible/module_utils/basic.py", &basic),
                ("ping.py", &[b'p'; 300]),
            ],
            1,
            true,
        );
        // Built two seconds later: every header differs.
        let b = zip(
            &[
                ("ansible/__init__.py", init),
                ("ansible/module_utils/basic.py", &basic),
                ("stat.py", &[b's'; 400]),
            ],
            2,
            false,
        );
        let held = Held::default();
        let mut agent = HashMap::new();
        let first = held.code(&hash(&a), &a).await;
        assert!(first.zip.is_none());
        assert_eq!(first.members.len(), 4);
        assert!(
            sent(&first) < a.len() / 2,
            "packed {} bytes of a {}-byte zip",
            sent(&first),
            a.len()
        );
        let rebuilt = rebuild(&first, &mut agent);
        assert_eq!(contents(&rebuilt), contents(&a));
        assert_eq!(rebuilt.len(), bundle::stored_len(&first.members));
        held.confirm(&first.without_bytes());

        let second = held.code(&hash(&b), &b).await;
        assert!(
            sent(&second) < 100,
            "basic.py went again: {} bytes",
            sent(&second)
        );
        assert_eq!(contents(&rebuild(&second, &mut agent)), contents(&b));

        // The agent may hold more than the controller knows of (here all
        // of it, after the controller forgot): packed contents are taken
        // from the stream all the same.
        held.forget();
        let again = held.code(&hash(&b), &b).await;
        assert!(sent(&again) > 1000);
        assert_eq!(contents(&rebuild(&again, &mut agent)), contents(&b));
    }

    /// Python reads a rebuilt zip as it reads the original: same files,
    /// checksums verified, importable.
    #[tokio::test]
    async fn python_reads_the_rebuilt_zip() {
        let a = zip(
            &[
                ("pkg/__init__.py", b""),
                ("pkg/mod.py", b"VALUE = 'from the zip'\n"),
                ("pkg/caf\u{e9}.txt", "\u{e9}t\u{e9}".as_bytes()),
            ],
            1,
            true,
        );
        let code = Held::default().code(&hash(&a), &a).await;
        let rebuilt = rebuild(&code, &mut HashMap::new());
        let dir = std::env::temp_dir().join(format!("spindle-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bundle.zip");
        std::fs::write(&path, &rebuilt).expect("writes");
        let script = "import sys, zipfile\n\
            z = zipfile.ZipFile(sys.argv[1])\n\
            assert z.testzip() is None\n\
            assert z.read('pkg/caf\\u00e9.txt').decode() == '\\u00e9t\\u00e9'\n\
            sys.path.insert(0, sys.argv[1])\n\
            import pkg.mod\n\
            print(pkg.mod.VALUE)\n";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .output()
            .expect("python3 runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from the zip\n");
    }

    #[tokio::test]
    async fn what_is_not_a_plain_zip_travels_whole() {
        let held = Held::default();
        for junk in [
            &b""[..],
            b"PK\x05\x06",
            b"#!/bin/sh\necho hi\n",
            &[0xff; 100],
        ] {
            let code = held.code(&hash(junk), junk).await;
            assert_eq!(code.zip.as_ref().map(|z| z.as_ref()), Some(junk));
            assert!(code.members.is_empty());
        }
        // A directory pointing outside the file, or at no local header.
        let mut bad = zip(&[("a.py", &[b'x'; 100])], 1, true);
        let n = bad.len();
        bad[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Unpacked::read(&bad).is_none());
        let mut bad = zip(&[("a.py", &[b'x'; 100])], 1, true);
        bad[0] = b'X';
        assert!(Unpacked::read(&bad).is_none());
        // Content that does not match its checksum.
        let mut bad = zip(&[("a.py", &[b'x'; 100])], 1, false);
        bad[LOCAL_LEN + 4] = b'y';
        assert!(Unpacked::read(&bad).is_none());
    }
}
