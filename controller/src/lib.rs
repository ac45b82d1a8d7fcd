//! Spindle's controller: reaches targets over the system OpenSSH client,
//! pushes the agent into their memory and runs requests on it, one
//! connection per target shared by every caller.
//!
//! Entry points: [`Controller`] holds the run's hosts; [`Host`] offers the
//! operations; [`Link`] is one live agent connection underneath.

pub mod agent_log;
pub mod agents;
pub mod askpass;
pub mod become_flags;
pub mod chain;
mod error;
mod host;
mod link;
mod members;
pub mod serve;
pub mod transport;

pub use agents::AgentStore;
pub use chain::Chain;
pub use error::{Error, Result};
pub use host::{BecomeSpec, Controller, ExecOutput, Host, Module, Target};
pub use link::{Link, Pending, StreamItem};
pub use spindle_protocol as protocol;
pub use transport::{Destination, SshOptions, Transport};
