//! Files: atomic put, streamed fetch, stat, and private temporary
//! directories.
//!
//! A put never exposes partial content: data goes to a hidden temporary
//! file in the destination directory (same file system, so the final rename
//! is atomic), which gets its mode and owner on the open descriptor, is
//! synced, renamed over the destination, and the directory synced. Any
//! failure, including cancellation or the controller going away, removes
//! the temporary file.

use crate::ctl::{self, Control, DataRx};
use crate::{io_error, out, python, sys, UMASK};
use spindle_protocol::{
    ErrorKind, Fetch, FetchResult, FileKind, FileStat, FromAgent, MakeTempDir, Put, PutResult,
    RemoveTempDir, Removed, RequestId, Stat, StatResult, StreamKind, TempDir, Timestamp, WireError,
    CHUNK,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{fchown, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// A process-wide counter making temporary names unique within this agent;
/// the pid makes them unique among agents.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

pub fn put(
    id: RequestId,
    mut req: Put,
    control: &Control,
    data: Option<DataRx>,
) -> Result<PutResult, WireError> {
    let inline = req.data.take();
    // What the agent adds itself (see `Splice`), made before anything is
    // written: a bundle it lacks fails the put at once.
    let spliced = match req.splice.take() {
        None => None,
        Some(mut splice) => {
            let len = inline.as_ref().map_or(0, |d| d.len() as u64);
            if inline.is_none() || splice.at > len {
                return Err(WireError::new(
                    ErrorKind::InvalidInput,
                    format!("{}: a splice needs inline data around it", req.path),
                ));
            }
            let bundle = python::bundle(&mut splice.code)?;
            let text = bundle_base64(&bundle)
                .map_err(|e| io_error("reading a cached module bundle", e))?;
            Some((splice.at as usize, text))
        }
    };
    let dest = PathBuf::from(&req.path);
    let name = dest.file_name().ok_or_else(|| {
        WireError::new(
            ErrorKind::InvalidInput,
            format!("{}: not a file path", req.path),
        )
    })?;
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.spindle-{}", name.to_string_lossy(), unique()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| {
            io_error(
                format_args!("creating a temporary file in {}", dir.display()),
                e,
            )
        })?;
    let guard = TempFile::new(tmp);
    let result = (|| {
        let written = match inline {
            Some(inline) => {
                let inline = inline.as_ref();
                let parts: [&[u8]; 3] = match &spliced {
                    Some((at, text)) => [&inline[..*at], text, &inline[*at..]],
                    None => [inline, &[], &[]],
                };
                for part in parts {
                    file.write_all(part)
                        .map_err(|e| io_error(format_args!("writing {}", req.path), e))?;
                }
                parts.iter().map(|p| p.len() as u64).sum()
            }
            None => receive(id, &req, &mut file, control, data)?,
        };
        // A splice's text is the agent's own: `size` counts the rest.
        let expected = req
            .size
            .saturating_add(spliced.as_ref().map_or(0, |(_, t)| t.len() as u64));
        if written != expected {
            return Err(WireError::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: expected {expected} bytes, received {written}",
                    req.path
                ),
            ));
        }
        let existing = fs::metadata(&dest).ok();
        let mode = req
            .mode
            .or(existing.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(0o666 & !UMASK.get().copied().unwrap_or(0o022));
        if req.uid.is_some() || req.gid.is_some() {
            fchown(&file, req.uid, req.gid)
                .map_err(|e| io_error(format_args!("changing the owner of {}", req.path), e))?;
        }
        // After chown, which clears setuid/setgid bits.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(format_args!("setting the mode of {}", req.path), e))?;
        if !req.scratch {
            file.sync_all()
                .map_err(|e| io_error(format_args!("syncing {}", req.path), e))?;
        }
        if req.atime.is_some() || req.mtime.is_some() {
            let t = |t: Option<Timestamp>| t.map(|t| (t.secs, t.nanos));
            sys::futimens(&file, t(req.atime), t(req.mtime))
                .map_err(|e| io_error(format_args!("setting the times of {}", req.path), e))?;
        }
        Ok(written)
    })();
    let written = result?;
    guard
        .commit(&dest)
        .map_err(|e| io_error(format_args!("renaming into {}", req.path), e))?;
    // Make the rename itself durable. Best effort: some file systems refuse
    // to sync a directory.
    if !req.scratch {
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(PutResult { size: written })
}

/// The base64 text of a cached module bundle, as a [`Splice`] inserts it.
///
/// [`Splice`]: spindle_protocol::Splice
fn bundle_base64(bundle: &File) -> io::Result<Vec<u8>> {
    Ok(base64(&python::read_bundle(bundle)?))
}

/// Standard base64 with padding, on one line.
fn base64(data: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// Writes streamed upload frames to `file`, acknowledging each so the
/// controller may send the next.
fn receive(
    id: RequestId,
    req: &Put,
    file: &mut File,
    control: &Control,
    data: Option<DataRx>,
) -> Result<u64, WireError> {
    let data =
        data.ok_or_else(|| WireError::new(ErrorKind::Protocol, "upload without a data channel"))?;
    let mut written = 0u64;
    let mut flushed = 0u64;
    let mut unacked = 0;
    loop {
        if control.is_cancelled() {
            return Err(ctl::cancelled());
        }
        // The sender lives in the registry until this request ends, so the
        // channel closes only when the agent shuts down.
        let frame = data.recv().map_err(|_| ctl::cancelled())?;
        file.write_all(frame.data.as_ref())
            .map_err(|e| io_error(format_args!("writing {}", req.path), e))?;
        written += frame.data.len() as u64;
        // A file that will be synced goes to disk while the rest arrives,
        // not all at once in the final fsync.
        if !req.scratch && written - flushed >= WRITEBACK_EVERY {
            sys::start_writeback(file, flushed, written - flushed);
            flushed = written;
        }
        if written > req.size {
            return Err(WireError::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: more data than the announced {} bytes",
                    req.path, req.size
                ),
            ));
        }
        if frame.eof {
            return Ok(written);
        }
        // Credit back in batches: fewer packets on the link. The reply
        // ends the upload, so the last few are never acknowledged.
        unacked += 1;
        if unacked == ACK_EVERY {
            out::out().send(FromAgent::Ack {
                id,
                frames: std::mem::take(&mut unacked),
            });
        }
    }
}

/// How much of a durable upload is written before its writeback starts.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Upload frames acknowledged at once (see the controller's stream acks).
const ACK_EVERY: u32 = spindle_protocol::WINDOW / 4;

/// A put's temporary file: removed unless it was renamed into place, and
/// listed so that an agent shutting down mid-put removes it too.
struct TempFile(Option<PathBuf>);

fn partial_files() -> MutexGuard<'static, Vec<PathBuf>> {
    static FILES: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        partial_files().push(path.clone());
        TempFile(Some(path))
    }

    fn commit(mut self, dest: &Path) -> io::Result<()> {
        if let Some(tmp) = &self.0 {
            fs::rename(tmp, dest)?;
        }
        self.forget();
        Ok(())
    }

    fn forget(&mut self) {
        if let Some(tmp) = self.0.take() {
            partial_files().retain(|p| *p != tmp);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.clone() {
            let _ = fs::remove_file(&tmp);
            self.forget();
        }
    }
}

pub fn fetch(id: RequestId, req: Fetch, control: &Control) -> Result<FetchResult, WireError> {
    let ctx = || format!("reading {}", req.path);
    let mut file = File::open(&req.path).map_err(|e| io_error(ctx(), e))?;
    let meta = file.metadata().map_err(|e| io_error(ctx(), e))?;
    if !meta.is_file() {
        return Err(WireError::new(
            ErrorKind::InvalidInput,
            format!("{}: not a regular file", req.path),
        ));
    }
    let mut size = 0u64;
    loop {
        let mut buf = Vec::with_capacity(CHUNK);
        let n = (&mut file)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(ctx(), e))?;
        if n == 0 {
            break;
        }
        control.take()?;
        size += n as u64;
        out::out().send(FromAgent::Stream {
            id,
            kind: StreamKind::File,
            data: buf.into(),
        });
    }
    Ok(FetchResult {
        size,
        mode: meta.mode() & 0o7777,
        mtime: Timestamp {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec() as u32,
        },
    })
}

pub fn stat(req: Stat) -> Result<StatResult, WireError> {
    let meta = if req.follow {
        fs::metadata(&req.path)
    } else {
        fs::symlink_metadata(&req.path)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StatResult { stat: None }),
        Err(e) => return Err(io_error(format_args!("stat {}", req.path), e)),
    };
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    };
    let link_target = match kind {
        FileKind::Symlink => fs::read_link(&req.path)
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        _ => None,
    };
    let ts = |secs: i64, nanos: i64| Timestamp {
        secs,
        nanos: nanos as u32,
    };
    Ok(StatResult {
        stat: Some(FileStat {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            nlink: meta.nlink(),
            dev: meta.dev(),
            ino: meta.ino(),
            atime: ts(meta.atime(), meta.atime_nsec()),
            mtime: ts(meta.mtime(), meta.mtime_nsec()),
            ctime: ts(meta.ctime(), meta.ctime_nsec()),
            link_target,
        }),
    })
}

/// Temporary directories this agent made; removed on exit.
fn temp_dirs() -> MutexGuard<'static, Vec<PathBuf>> {
    static DIRS: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

pub fn make_temp_dir(req: MakeTempDir) -> Result<TempDir, WireError> {
    let candidates: Vec<PathBuf> = match req.parent {
        Some(p) => vec![p.into()],
        None => {
            let env = |k| {
                std::env::var_os(k)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            };
            env("TMPDIR")
                .into_iter()
                .chain(["/tmp", "/var/tmp", "/usr/tmp"].map(PathBuf::from))
                .chain(env("HOME"))
                .collect()
        }
    };
    let mut last = None;
    for parent in candidates {
        let path = parent.join(format!("spindle-tmp-{}", unique()));
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                temp_dirs().push(path.clone());
                return Ok(TempDir {
                    path: path.to_string_lossy().into_owned(),
                });
            }
            Err(e) => {
                last = Some(io_error(
                    format_args!("creating a directory in {}", parent.display()),
                    e,
                ))
            }
        }
    }
    Err(last
        .unwrap_or_else(|| WireError::new(ErrorKind::NotFound, "no usable temporary directory")))
}

pub fn remove_temp_dir(req: RemoveTempDir) -> Result<Removed, WireError> {
    let path = PathBuf::from(&req.path);
    let known = {
        let mut dirs = temp_dirs();
        let before = dirs.len();
        dirs.retain(|d| *d != path);
        dirs.len() != before
    };
    if !known {
        return Err(WireError::new(
            ErrorKind::InvalidInput,
            format!("{}: not a temporary directory made by this agent", req.path),
        ));
    }
    fs::remove_dir_all(&path).map_err(|e| io_error(format_args!("removing {}", req.path), e))?;
    Ok(Removed {})
}

/// Removes every temporary directory and every unfinished put's file.
pub fn remove_leftovers() {
    for file in partial_files().drain(..) {
        let _ = fs::remove_file(file);
    }
    for dir in temp_dirs().drain(..) {
        let _ = fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_the_standard_padded_encoding() {
        for (data, text) in [
            (&b""[..], &b""[..]),
            (b"f", b"Zg=="),
            (b"fo", b"Zm8="),
            (b"foo", b"Zm9v"),
            (b"foob", b"Zm9vYg=="),
            (b"foobar", b"Zm9vYmFy"),
            (b"\xff\xfe\x00", b"//4A"),
        ] {
            assert_eq!(super::base64(data), text);
        }
    }
}
