//! Spindle's wire protocol between the controller and its agents.
//!
//! This crate does no IO and has no runtime: it defines the messages that cross
//! the SSH channel and the frame codec that delimits them, with the two
//! formats module code crosses in ([`bundle`], [`lzma`]). It is the only
//! crate whose types cross a process boundary: fields and variants are
//! added, never changed. A controller talks only to agents of its own build,
//! so a field nothing sends any more can go.
//!
//! A frame is a big-endian `u32` body length followed by a MessagePack body
//! encoded with named fields ([`frame`]). The controller sends [`ToAgent`]
//! messages; the agent answers with [`FromAgent`] messages. Every
//! [`ToAgent::Call`] gets exactly one final [`FromAgent::Reply`] with the same
//! id; streamed data ([`FromAgent::Stream`], [`ToAgent::Data`]) flows under a
//! per-request credit window counted in frames ([`WINDOW`]).

mod blob;
pub mod bundle;
mod de;
mod error;
pub mod frame;
pub mod lzma;
mod msg;

pub use blob::Blob;
pub use error::{ErrorKind, WireError};
pub use frame::FrameError;
pub use msg::*;

/// Protocol version carried in the agent's hello. Bumped only when a change
/// cannot be expressed by adding fields or variants.
pub const VERSION: u32 = 1;

/// Written by the agent before its first frame. Anything the target prints
/// before it (MOTD, `.bashrc` noise, over-reads by the bootstrap stage) is
/// skipped by the controller, which scans for this exact sequence. The NUL
/// bytes make an accidental match in shell output implausible.
pub const HELLO_MAGIC: &[u8] = b"\0\0SPINDLE-AGENT-HELLO\0\0";

/// Largest frame body either side accepts. Checked against the length prefix
/// before a buffer is allocated. File data travels in [`CHUNK`]-sized frames,
/// so this only bounds control messages and inline payloads; 8 MiB leaves room
/// for a large module bundle while keeping a hostile peer from making us
/// allocate gigabytes.
pub const MAX_FRAME: usize = 8 << 20;

/// Size of one streamed data frame (file contents, command output). Large
/// enough that per-frame overhead is negligible, small enough that a window of
/// them stays cheap.
pub const CHUNK: usize = 256 << 10;

/// Frames of one stream that may be in flight before the receiver grants more
/// credit with an `Ack`. 16 x 256 KiB = 4 MiB per stream: above OpenSSH's own
/// 2 MiB channel window, so the SSH channel, not us, limits throughput, and
/// memory per transfer stays bounded on both ends whatever the file size.
pub const WINDOW: u32 = 16;

/// Files up to this size travel inside the request itself: no extra frames and
/// no extra round trip.
pub const INLINE_MAX: usize = 128 << 10;
