//! Exec shortcuts: the effect of a few fixed commands (Ansible's steps for a
//! task's temp dir) carried out by the agent itself, without starting a
//! shell. Each is taken only where its result is certain to be the
//! command's; anything unusual is an error, and the command then runs.

use crate::{sys, UMASK};
use spindle_protocol::Shortcut;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Carries out `shortcut`; an error means the command must run instead.
pub fn apply(shortcut: &Shortcut) -> io::Result<()> {
    match shortcut {
        Shortcut::MakeDir { base, path } => make_dir(Path::new(base), Path::new(path)),
        Shortcut::AddModeBits { paths, bits } => {
            if bits & !0o700 != 0 {
                return Err(unusual("mode bits beyond the owner's"));
            }
            for path in paths {
                let path = absolute(path)?;
                let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
                fs::set_permissions(path, fs::Permissions::from_mode(mode | bits))?;
            }
            Ok(())
        }
        Shortcut::Remove { paths } => {
            for path in paths {
                let path = absolute(path)?;
                match fs::symlink_metadata(path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                    Ok(m) if m.is_dir() => fs::remove_dir_all(path)?,
                    Ok(_) => fs::remove_file(path)?,
                }
            }
            Ok(())
        }
    }
}

/// `( umask 77 && mkdir -p BASE && mkdir PATH )` where BASE exists: PATH
/// made with mode 0700. Not taken where mkdir(1)'s umask of 077 would give
/// another mode than ours (a umask touching the owner's bits) or where a
/// default ACL on BASE, not a umask, decides the mode.
fn make_dir(base: &Path, path: &Path) -> io::Result<()> {
    let (base, path) = (absolute_path(base)?, absolute_path(path)?);
    if path.parent() != Some(base) {
        return Err(unusual("a directory not directly inside its base"));
    }
    if UMASK.get().is_none_or(|umask| umask & 0o700 != 0) {
        return Err(unusual("a umask that touches the owner's bits"));
    }
    if !fs::metadata(base)?.is_dir() {
        return Err(unusual("a base that is not a directory"));
    }
    if sys::has_default_acl(base) {
        return Err(unusual("a default ACL on the base"));
    }
    fs::DirBuilder::new().mode(0o700).create(path)
}

fn absolute(path: &str) -> io::Result<&Path> {
    absolute_path(Path::new(path))
}

/// An absolute path without `.` or `..` components (which `rm` refuses
/// or resolves otherwise).
fn absolute_path(path: &Path) -> io::Result<&Path> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err(unusual("a relative path"));
    }
    let odd = path.as_os_str().as_encoded_bytes().ends_with(b"/.")
        || path
            .components()
            .any(|c| matches!(c, Component::CurDir | Component::ParentDir));
    if odd {
        return Err(unusual("a path with . or .."));
    }
    Ok(path)
}

fn unusual(what: &str) -> io::Error {
    io::Error::other(format!("not taken for {what}"))
}
