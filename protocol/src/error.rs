//! [`WireError`]: how a failed request is described on the wire.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a request failed, as a stable kind plus a human message. Deliberately
/// not a serialized Rust error: peers built from different sources must agree
/// on it, and unknown kinds from a newer peer decode as [`ErrorKind::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    InvalidInput,
    /// The file system is full (ENOSPC, EDQUOT).
    NoSpace,
    Io,
    TimedOut,
    Cancelled,
    Unsupported,
    /// The agent refuses more concurrent work; retry later.
    Busy,
    /// The peer broke the protocol (unexpected frame, bad sequence).
    Protocol,
    /// A request named cached code the agent does not hold; resend it with
    /// the code attached.
    CodeMissing,
    /// The request was ordered after another (`ToAgent::Call`'s `after`)
    /// that failed, so it did not run.
    Skipped,
    #[serde(other)]
    Other,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::Io => "i/o error",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Busy => "busy",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::CodeMissing => "code missing",
            ErrorKind::Skipped => "skipped",
            ErrorKind::Other => "error",
        };
        f.write_str(s)
    }
}
