//! The controller's error type. Ansible's two failure classes stay apart:
//! [`Error::Unreachable`] means the host, its SSH connection or its agent is
//! gone; [`Error::Remote`] means the agent ran the request and it failed.

use spindle_protocol::WireError;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, bootstrapping or keeping the agent failed. Every request
    /// in flight on that connection gets this at once; the next request
    /// reconnects.
    #[error("{host}: unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    /// The agent ran the request and it failed.
    #[error(transparent)]
    Remote(#[from] WireError),
    /// Something on the controller's side failed (a local file, say).
    #[error("{0}")]
    Local(String),
}

impl Error {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    pub(crate) fn unreachable(host: &str, reason: impl Into<String>) -> Self {
        Error::Unreachable {
            host: host.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn local(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Error::Local(format!("{context}: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
