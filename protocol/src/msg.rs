//! The messages: envelopes ([`ToAgent`], [`FromAgent`]), the agent's
//! [`Hello`], and each request type paired with its reply type through
//! [`Call`].

use crate::{Blob, WireError};
use serde::{Deserialize, Serialize};

/// Identifies one request for its whole life: its reply, its streams, its
/// acks and its cancellation. Chosen by the controller, unique per link.
pub type RequestId = u64;

/// Everything the controller sends to an agent.
// A `Call` is built once per request and encoded or dispatched at once;
// boxing it would only add an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Start a request. Answered by exactly one [`FromAgent::Reply`].
    Call {
        id: RequestId,
        req: Request,
        /// Start it only once request `after` (sent earlier on this link)
        /// has ended, and only if that one succeeded: a reply that is not
        /// an error and, for [`Exec`] and [`RunModule`], exit status 0.
        /// Otherwise it does not run and fails as [`ErrorKind::Skipped`].
        /// An `after` the agent no longer knows counts as succeeded
        /// (the agent remembers recent failures only). This lets the
        /// controller send a chain of steps without waiting for each.
        ///
        /// [`ErrorKind::Skipped`]: crate::ErrorKind::Skipped
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<RequestId>,
    },
    /// Payload of a streamed upload ([`Put`] without inline data). The
    /// controller sends at most [`crate::WINDOW`] frames beyond those the
    /// agent has acknowledged. `eof` marks the last frame.
    Data {
        id: RequestId,
        data: Blob,
        eof: bool,
    },
    /// Grants `frames` more credit for the agent's [`FromAgent::Stream`]
    /// frames of request `id`.
    Ack { id: RequestId, frames: u32 },
    /// Abandon request `id`: a running command's process group is killed and
    /// the request still gets its one reply (usually `cancelled`).
    Cancel { id: RequestId },
    /// One whole frame (length prefix included) for child agent `child`
    /// (see [`Become`]), passed on unread.
    Route { child: u32, frame: Blob },
    /// End child agent `child` (its stdin closes); a
    /// [`FromAgent::ChildGone`] follows.
    EndChild { child: u32 },
    /// Hand the module bundle `hash` this agent holds to child agent
    /// `child`, as a [`ToAgent::Keep`] ahead of the frames routed to it
    /// after this one: a bundle crosses the link once for all accounts.
    /// No reply; an agent without the bundle, or without the child, does
    /// nothing (the child then answers `code_missing` as usual).
    Share { child: u32, hash: String },
    /// Keep module bundle `code` (which carries it): sent by a parent agent
    /// for [`ToAgent::Share`]. No reply.
    Keep { code: Code },
}

/// Everything an agent sends to the controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    /// The first frame, right after [`crate::HELLO_MAGIC`].
    Hello(Hello),
    /// The final answer to request `id`.
    Reply {
        id: RequestId,
        result: Result<Reply, WireError>,
    },
    /// Streamed output of request `id`; sent under the controller's credit
    /// (see [`ToAgent::Ack`]) and always before that request's reply.
    Stream {
        id: RequestId,
        kind: StreamKind,
        data: Blob,
    },
    /// Grants `frames` more credit for the controller's [`ToAgent::Data`].
    Ack { id: RequestId, frames: u32 },
    /// A log record from the agent; the agent writes nothing to stderr.
    Log { level: LogLevel, message: String },
    /// One whole frame (length prefix included) from child agent `child`.
    Routed { child: u32, frame: Blob },
    /// Child agent `child` ended (or broke its protocol): everything in
    /// flight on it has failed.
    ChildGone { child: u32, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdout,
    Stderr,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What the agent says about itself and its host when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::VERSION`] the agent was built with.
    pub version: u32,
    /// Identifies the exact agent build; a controller that expects another
    /// build pushes its own agent instead of reusing this one.
    pub build_id: String,
    /// Machine architecture as `uname -m` names it (`x86_64`, `aarch64`).
    pub arch: String,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: String,
    /// Python interpreters found on the host, best first.
    pub pythons: Vec<String>,
    /// The account's login shell (what sshd runs commands with); empty if
    /// unknown.
    #[serde(default)]
    pub shell: String,
    /// Every interpreter name the agent looked up, with what `command -v`
    /// would print for it: answers Ansible's interpreter discovery without
    /// another round trip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<Probe>,
}

/// One interpreter lookup: a name as Ansible's discovery lists it, and the
/// path it resolves to on the account's `PATH` (absolute names: themselves,
/// if executable), or `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub path: Option<String>,
}

/// Every request the agent understands. Each variant's payload type
/// implements [`Call`], which names the reply it gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping(Ping),
    Exec(Exec),
    Put(Put),
    Fetch(Fetch),
    Stat(Stat),
    MakeTempDir(MakeTempDir),
    RemoveTempDir(RemoveTempDir),
    RunModule(RunModule),
    Become(Become),
    Configure(Configure),
}

/// Every reply, one variant per request type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Pong(Pong),
    Exec(ExecResult),
    Put(PutResult),
    Fetch(FetchResult),
    Stat(StatResult),
    TempDir(TempDir),
    Removed(Removed),
    Child(Child),
}

/// A request type and the reply type it gets, tied together so callers get
/// a typed answer: `link.call(Stat { .. })` yields a [`StatResult`].
pub trait Call: Into<Request> {
    type Reply;
    /// Extracts this request's reply; `Err` gives back a reply of the wrong
    /// type, which is a protocol violation by the peer.
    fn reply(reply: Reply) -> Result<Self::Reply, Reply>;
}

macro_rules! pair {
    ($($req:ident => $variant:ident($reply:ident);)*) => {$(
        impl From<$req> for Request {
            fn from(r: $req) -> Self {
                Request::$req(r)
            }
        }
        impl Call for $req {
            type Reply = $reply;
            fn reply(reply: Reply) -> Result<$reply, Reply> {
                match reply {
                    Reply::$variant(r) => Ok(r),
                    other => Err(other),
                }
            }
        }
    )*};
}

pair! {
    Ping => Pong(Pong);
    Exec => Exec(ExecResult);
    Put => Put(PutResult);
    Fetch => Fetch(FetchResult);
    Stat => Stat(StatResult);
    MakeTempDir => TempDir(TempDir);
    RemoveTempDir => Removed(Removed);
    RunModule => Exec(ExecResult);
    Become => Child(Child);
    Configure => Pong(Pong);
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {}

/// Settings for the rest of the agent's life; a field left out changes
/// nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configure {
    /// Records above this level are not sent. An agent starts at
    /// [`LogLevel::Info`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// The agent's login is shared by every session on its connection
    /// (ssh's ControlMaster with ControlPersist): commands and interpreters
    /// get the environment that login gave, as each session of such a
    /// connection does, rather than what a fresh login would read from the
    /// environment files now. An agent starts without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_login: bool,
}

/// Run a command. Output up to [`crate::CHUNK`] per stream comes back in the
/// reply; more is streamed as [`FromAgent::Stream`] frames first, and the
/// reply carries the remainder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub command: Command,
    /// Variables set on top of the agent's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes written to the command's stdin, which is then closed. Without
    /// it stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: Option<Blob>,
    /// Run on a new pseudo-terminal: stdout and stderr arrive merged as
    /// `stdout`, as a terminal shows them.
    #[serde(default)]
    pub pty: bool,
    /// Kill the command's process group after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// What the command does, for the agent to do itself when it can do
    /// exactly that: then the reply is exit status 0 with no output, and
    /// the command does not run. Otherwise (or if it fails) the command
    /// runs as usual. Only for commands whose output on success is not
    /// read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<Shortcut>,
}

/// A command's effect the agent can have without starting it (see
/// [`Exec::shortcut`]): the steps Ansible takes for a task's temp dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// `( umask 77 && mkdir -p BASE && mkdir BASE/NAME )`, taken only when
    /// `base` exists: `path` (inside it) made with mode 0700.
    MakeDir { base: String, path: String },
    /// `chmod u+BITS PATHS`: `bits` (within 0o700) added to each path's
    /// mode, symlinks followed.
    AddModeBits { paths: Vec<String>, bits: u32 },
    /// `rm -f -r PATHS`: each removed with everything under it (a symlink
    /// itself, not what it points to); a missing one is no error.
    Remove { paths: Vec<String> },
}

impl Exec {
    /// `/bin/sh -c script`, everything else default.
    pub fn shell(script: impl Into<String>) -> Exec {
        Exec::new(Command::Shell(script.into()))
    }

    /// `argv` executed directly, everything else default.
    pub fn argv<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Exec {
        Exec::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    pub fn new(command: Command) -> Exec {
        Exec {
            command,
            env: Vec::new(),
            cwd: None,
            stdin: None,
            pty: false,
            timeout_ms: None,
            shortcut: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Executed directly, `argv[0]` looked up in `PATH`.
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`.
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, when the command exited.
    pub code: Option<i32>,
    /// Terminating signal, when it was killed.
    pub signal: Option<i32>,
    /// True when `timeout_ms` ran out and the agent killed it.
    pub timed_out: bool,
    /// Output not already streamed.
    pub stdout: Blob,
    pub stderr: Blob,
}

/// Write a file atomically: a hidden temporary file in the destination
/// directory receives the data, gets its mode and owner on the open file,
/// is synced (unless `scratch`) and renamed over `path`; then times are set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub path: String,
    /// Permission bits. Without them an existing file keeps its mode and a
    /// new one gets `0666 & !umask`.
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub mtime: Option<Timestamp>,
    #[serde(default)]
    pub atime: Option<Timestamp>,
    /// Total length; the agent refuses a stream that ends short or long.
    pub size: u64,
    /// The whole content when it is small; otherwise `None` and the content
    /// follows as [`ToAgent::Data`] frames.
    #[serde(default)]
    pub data: Option<Blob>,
    /// A scratch file (Ansible's task temp files, which the task itself
    /// moves into place or removes): written and renamed the same way but
    /// not synced to disk, as Ansible's own transfers are not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub scratch: bool,
    /// Content the agent makes itself, inserted into `data` (which must be
    /// inline); `size` does not count it (the agent knows its length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splice: Option<Splice>,
}

/// The base64 (standard alphabet, padded, one line) of module bundle
/// `code` as the agent keeps it, inserted into a [`Put`]'s `data` at byte
/// `at`. A module Ansible puts as a file (`AnsiballZ_*.py`) carries its
/// bundle so, and the agent usually holds that bundle already: only the
/// rest of the file travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splice {
    pub at: u64,
    pub code: Code,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub size: u64,
}

/// Read a file; its content comes back as [`StreamKind::File`] frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResult {
    /// Bytes streamed.
    pub size: u64,
    pub mode: u32,
    pub mtime: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub path: String,
    /// Follow a final symbolic link (`stat`) instead of describing it
    /// (`lstat`).
    #[serde(default)]
    pub follow: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatResult {
    /// `None` when nothing exists at the path.
    pub stat: Option<FileStat>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Target of a symbolic link.
    pub link_target: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Put {
    /// A put to `path` with default mode, owner and times; the controller
    /// fills in the size and data.
    pub fn new(path: impl Into<String>) -> Put {
        Put {
            path: path.into(),
            ..Put::default()
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// Create a private (0700) temporary directory that the agent removes when
/// it exits. Without `parent`, the first usable of `$TMPDIR`, `/tmp`,
/// `/var/tmp`, `/usr/tmp` and the home directory is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeTempDir {
    #[serde(default)]
    pub parent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempDir {
    pub path: String,
}

/// Remove a directory made by [`MakeTempDir`] and everything in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveTempDir {
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {}

/// Run a new-style Python Ansible module (AnsiballZ) in the warm
/// interpreter the agent keeps for `python`, in a child forked for this task
/// alone. The reply is the module's raw stdout, stderr and exit status, as a
/// stock run would produce them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunModule {
    /// Interpreter path on the target.
    pub python: String,
    /// The module and its module_utils: the same for every task using that
    /// module, so the agent caches it by hash.
    pub code: Code,
    /// How the bundle's wrapper starts the module.
    pub entry: ModuleEntry,
    /// Fully qualified module name inside the bundle
    /// (`ansible.modules.ping`).
    pub fqn: String,
    /// The task's arguments: JSON text exactly as the wrapper would embed it.
    pub params: String,
    /// Serialization profile (`ModuleEntry::Loader` only).
    #[serde(default)]
    pub profile: Option<String>,
    /// Wrapper extensions as a JSON object (`ModuleEntry::Loader` only).
    #[serde(default)]
    pub extensions: Option<String>,
    /// Secret strings found in the arguments, as a JSON array, which the
    /// module masks in what it reports (ansible-core 2.22's wrapper has
    /// them; `ModuleEntry::Loader` only).
    #[serde(default)]
    pub secrets: Option<String>,
    /// Soft limit on open files the wrapper would set; 0 leaves it alone.
    #[serde(default)]
    pub rlimit_nofile: u64,
    /// Variables set on top of the interpreter's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Directory the module runs in; without it, the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run on a new pseudo-terminal, the module's controlling terminal:
    /// stdout and stderr arrive merged as `stdout`, as with a module file
    /// run through `ssh -tt`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pty: bool,
}

/// A module bundle by content hash. The bundle travels only when the
/// controller believes the agent does not hold it yet, either whole (`zip`)
/// or as `members`; an agent missing it, or a member's content, answers
/// [`crate::ErrorKind::CodeMissing`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Code {
    /// Hex SHA-256 of the bundle as Ansible built it.
    pub hash: String,
    /// The bundle whole, kept as it comes.
    #[serde(default)]
    pub zip: Option<Blob>,
    /// The bundle as its files, in order: the agent keeps them as a zip of
    /// its own ([`crate::bundle`]). A member's content comes from `packed`
    /// when the member says so, otherwise from what the agent holds under
    /// its key, from an earlier bundle or an earlier member of this one:
    /// the module_utils that bundles share cross the link once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// The contents of the members marked `packed`, one after another, as
    /// one `.lzma` stream ([`crate::lzma`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<Blob>,
}

impl Code {
    /// The bundle with hex SHA-256 `hash`, named only: for an agent that
    /// holds it.
    pub fn named(hash: &str) -> Code {
        Code {
            hash: hash.to_owned(),
            ..Code::default()
        }
    }

    /// The same bundle named by its hash and members, without contents.
    pub fn without_bytes(&self) -> Code {
        Code {
            hash: self.hash.clone(),
            zip: None,
            members: self.members.clone(),
            packed: None,
        }
    }
}

/// One file of a [`Code`]: what a zip's directory says of it, and the key
/// its content is known by (the first 16 bytes of the content's SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub key: Blob,
    pub size: u32,
    /// CRC-32 of the content, as the zip records it.
    pub crc: u32,
    /// Modification time as a zip records it: DOS date << 16 | DOS time.
    pub time: u32,
    /// A zip's external attributes: the Unix mode in the high 16 bits.
    pub attrs: u32,
    /// The content is next in [`Code::packed`]. The controller says so
    /// rather than the agent inferring it from what it holds: the two may
    /// know of different contents (a request that failed after its bundle
    /// was kept, say).
    #[serde(default, skip_serializing_if = "is_false")]
    pub packed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleEntry {
    /// ansible-core up to 2.18: `basic._ANSIBLE_ARGS` and `runpy`.
    Runpy,
    /// ansible-core 2.19 and later: `_ansiballz._loader.run_module`.
    Loader,
}

/// Start a child agent under another account and keep it: later frames for
/// it travel as [`ToAgent::Route`]. With sudo, as `exe flags... -u user
/// <bootstrap command line>`, first non-interactively (`-n`); only if sudo
/// asks for a password and one is given does it try again, typing it at the
/// prompt. With su, as `exe flags... user -c '<marker>; exec <bootstrap>'`,
/// typing the password if su prompts for one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Become {
    /// `sudo` or `su`: how `exe` is driven.
    #[serde(default = "sudo", skip_serializing_if = "is_sudo")]
    pub method: String,
    /// The program: `sudo`, `su` or a path to one.
    pub exe: String,
    /// Options as Ansible's `become_flags` gives them, split into words.
    pub flags: Vec<String>,
    pub user: String,
    /// Python for the child's bootstrap; `None` uses the shell stage.
    #[serde(default)]
    pub python: Option<String>,
    #[serde(default)]
    pub password: Option<Blob>,
    /// For su: the words its password prompt may hold (the localised
    /// "Password", as Ansible's su plugin lists them); empty means
    /// `Password`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Limit for the whole start, password prompt included.
    pub timeout_ms: u64,
}

fn sudo() -> String {
    "sudo".into()
}

fn is_sudo(method: &str) -> bool {
    method == "sudo"
}

/// A started child agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Child {
    /// Names the child in [`ToAgent::Route`] and [`FromAgent::Routed`].
    pub child: u32,
    /// Boxed: it dwarfs every other reply (encoded the same).
    pub hello: Box<Hello>,
}
