//! How Spindle starts its agent on a target: the fixed command line run over
//! SSH (or sudo, su, doas), the stage lines sent on stdin behind it, and the
//! line by which the stage names the agent it needs. No IO: the controller
//! does the talking.
//!
//! Theory of operation (the full story is docs/bootstrap.md):
//! 1. The controller runs [`command_line`]. It is the same string for every
//!    build, so a sudoers rule can name it exactly; all code that changes
//!    between builds travels on stdin.
//! 2. Right away it writes [`stdin_preamble`]: the shell stage (only when no
//!    Python path is known) and the Python stage, one line each; the
//!    controller may send an xz-compressed agent right behind them
//!    ([`Ahead`]), for the architecture it expects.
//! 3. The stage prints a [`BootLine`]: architecture, codec, and whether it
//!    takes the agent sent ahead (a Python stage with `lzma` on a host of
//!    that architecture). If not, it reads past it, and the controller,
//!    which waits for the line and sends nothing else meanwhile, writes
//!    [`blob_header`] and the agent binary for that architecture and codec.
//! 4. The stage reads exactly that many bytes, execs the agent from memory,
//!    and the agent writes its hello behind `spindle_protocol::HELLO_MAGIC`.
//!    Until then the controller sends nothing more, so no stage ever reads
//!    past what is meant for it.

#![forbid(unsafe_code)]

use std::fmt;

/// The fixed command line. With a Python path, that interpreter runs the
/// Python stage directly; without one, `/bin/sh` picks a Python 3 or falls
/// back to running the agent from a private temporary file.
pub fn command_line(python: Option<&str>) -> String {
    match python {
        Some(py) => format!("{} -c {}", sh_quote(py), sh_quote(PY_ONE_LINER)),
        None => format!("/bin/sh -c {}", sh_quote(SH_ONE_LINER)),
    }
}

/// [`command_line`] as an argument vector, for running it without a shell
/// (behind sudo, by an agent starting a child agent).
pub fn command_argv(python: Option<&str>) -> Vec<String> {
    match python {
        Some(py) => vec![py.to_owned(), "-c".into(), PY_ONE_LINER.into()],
        None => vec!["/bin/sh".into(), "-c".into(), SH_ONE_LINER.into()],
    }
}

/// An xz-compressed agent written right behind the stage lines, before
/// the stage has said what it needs: a host of that architecture whose
/// Python has `lzma` runs it without waiting a round trip for the
/// announcement (and says so: [`BootLine::ahead`]); any other stage reads
/// past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ahead<'a> {
    /// Its architecture, as a [`BootLine`] names it (`aarch64`, not
    /// `arm64`).
    pub arch: &'a str,
    /// Its length in bytes.
    pub len: usize,
}

/// The lines to write on stdin immediately after starting [`command_line`]
/// with the same `python` argument; with `ahead`, that agent must follow
/// them.
///
/// # Panics
/// If `ahead` names an architecture that is not a plain word
/// (`[a-z0-9_]`): it is written into the stages' code.
pub fn stdin_preamble(python: Option<&str>, ahead: Option<Ahead<'_>>) -> Vec<u8> {
    if let Some(a) = ahead {
        assert!(
            !a.arch.is_empty()
                && a.arch
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "architecture {:?}",
            a.arch
        );
    }
    let mut out = Vec::new();
    if python.is_none() {
        out.extend_from_slice(shell_stage(ahead.map_or(0, |a| a.len)).as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(python_stage(ahead).as_bytes());
    out.push(b'\n');
    out
}

/// The header that precedes the agent binary on stdin: its length, for a
/// binary encoded as the stage announced.
pub fn blob_header(len: usize) -> Vec<u8> {
    format!("{len}\n").into_bytes()
}

/// The header for an uncompressed binary whatever the stage announced: an
/// agent starting a child agent on its own host hands over the binary it
/// runs, which never crosses the network. Only the Python stage reads this
/// form; the shell stage always announces [`Codec::Raw`] and gets
/// [`blob_header`].
pub fn raw_blob_header(len: usize) -> Vec<u8> {
    format!("{len} raw\n").into_bytes()
}

/// Environment variable the controller sets when it starts an agent on its
/// own machine, without a login: the agent then emulates no login
/// environment (it removes the variable first, so its commands never see
/// it).
pub const LOCAL_SESSION: &str = "SPINDLE_LOCAL_SESSION";

/// Marker at the start of the stage's announcement line.
pub const BOOT_MARKER: &str = "SPINDLE-BOOT1";

/// How the stage wants the agent encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// xz (LZMA2) container: the Python stage has `lzma`.
    Xz,
    /// Uncompressed: no `lzma` module, or no Python at all.
    Raw,
}

/// What the stage announced: the target's architecture and the codec it can
/// decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLine {
    /// Normalised architecture: `x86_64` or `aarch64` (`arm64` is mapped).
    pub arch: String,
    pub codec: Codec,
    /// The stage runs the agent sent ahead ([`Ahead`]): send it nothing more.
    pub ahead: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadBootLine(pub String);

impl fmt::Display for BadBootLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected bootstrap announcement {:?}", self.0)
    }
}

impl std::error::Error for BadBootLine {}

impl BootLine {
    /// Parses one line of stage output (without its newline). `Ok(None)` for
    /// lines that are not an announcement: shell noise printed before it.
    pub fn parse(line: &str) -> Result<Option<BootLine>, BadBootLine> {
        let line = line.trim_end_matches('\r');
        let Some(rest) = line.strip_prefix(BOOT_MARKER) else {
            return Ok(None);
        };
        let bad = || BadBootLine(line.to_owned());
        let mut words = rest.split_whitespace();
        let arch = match words.next().ok_or_else(bad)? {
            "arm64" => "aarch64",
            other => other,
        };
        let codec = match words.next().ok_or_else(bad)? {
            "xz" => Codec::Xz,
            "raw" => Codec::Raw,
            _ => return Err(bad()),
        };
        let ahead = match words.next() {
            None => false,
            Some("ahead") => true,
            Some(_) => return Err(bad()),
        };
        Ok(Some(BootLine {
            arch: arch.to_owned(),
            codec,
            ahead,
        }))
    }
}

/// Reads one line from stdin with a buffered reader, which may take in the
/// start of an agent sent ahead too: the Python stage reads on through the
/// same reader.
const PY_ONE_LINER: &str = "import sys;exec(sys.stdin.buffer.readline())";

/// Reads one line byte by byte (as every POSIX shell's `read` does on a pipe)
/// and evaluates it.
const SH_ONE_LINER: &str = "read -r l;eval \"$l\"";

const PY_STAGE: &str = include_str!("stage.py");
const SH_STAGE: &str = include_str!("stage.sh");

/// The Python stage as one line: `exec("...")` with the source escaped,
/// behind the assignment of `ahead`.
fn python_stage(ahead: Option<Ahead<'_>>) -> String {
    let ahead = match ahead {
        Some(a) => format!("ahead = ({}, \"{}\")", a.len, a.arch),
        None => "ahead = None".to_owned(),
    };
    let mut out = String::from("exec(\"");
    for line in std::iter::once(ahead.as_str()).chain(PY_STAGE.lines()) {
        let code = line.trim_end();
        if code.trim_start().starts_with('#') || code.is_empty() {
            continue;
        }
        for c in code.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push_str("\\n");
    }
    out.push_str("\")");
    out
}

/// The shell stage as one line, behind the assignment of `ahead` (the
/// length of the agent sent ahead, 0 for none): comments dropped, lines
/// joined (every line of the source ends in `;`, `do`, `then` or similar,
/// so joining is safe).
fn shell_stage(ahead: usize) -> String {
    std::iter::once(format!("ahead={ahead};"))
        .chain(
            SH_STAGE
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a word for a POSIX shell: bare when it is plainly safe, otherwise
/// in single quotes.
pub fn sh_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_the_command_line_unquoted() {
        for py in [Some("/usr/bin/python3"), None] {
            let quoted: Vec<String> = command_argv(py).iter().map(|w| sh_quote(w)).collect();
            assert_eq!(quoted.join(" "), command_line(py));
        }
    }

    /// The command lines are a public contract: sudoers rules name them
    /// byte for byte. Changing them breaks every deployed rule.
    #[test]
    fn command_lines_are_fixed() {
        assert_eq!(
            command_line(Some("/usr/bin/python3")),
            "/usr/bin/python3 -c 'import sys;exec(sys.stdin.buffer.readline())'"
        );
        assert_eq!(command_line(None), r#"/bin/sh -c 'read -r l;eval "$l"'"#);
    }

    #[test]
    fn stages_are_single_lines() {
        let ahead = Ahead {
            arch: "x86_64",
            len: 1234,
        };
        for a in [None, Some(ahead)] {
            let pre = stdin_preamble(None, a);
            assert_eq!(pre.iter().filter(|&&b| b == b'\n').count(), 2);
            assert_eq!(
                stdin_preamble(Some("python3"), a),
                format!("{}\n", python_stage(a)).into_bytes()
            );
        }
        assert!(!shell_stage(0).contains('#'));
        assert!(shell_stage(1234).starts_with("ahead=1234; "));
        assert!(python_stage(Some(ahead)).starts_with(r#"exec("ahead = (1234, \"x86_64\")\n"#));
    }

    #[test]
    #[should_panic(expected = "architecture")]
    fn ahead_architecture_must_be_a_word() {
        stdin_preamble(
            None,
            Some(Ahead {
                arch: "x86\"; rm",
                len: 1,
            }),
        );
    }

    #[test]
    fn boot_line_parsing() {
        assert_eq!(BootLine::parse("Welcome to host"), Ok(None));
        assert_eq!(
            BootLine::parse("SPINDLE-BOOT1 x86_64 xz\r"),
            Ok(Some(BootLine {
                arch: "x86_64".into(),
                codec: Codec::Xz,
                ahead: false,
            }))
        );
        assert!(
            BootLine::parse("SPINDLE-BOOT1 x86_64 xz ahead")
                .unwrap()
                .unwrap()
                .ahead
        );
        assert!(BootLine::parse("SPINDLE-BOOT1 x86_64 xz later").is_err());
        assert_eq!(
            BootLine::parse("SPINDLE-BOOT1 arm64 raw")
                .unwrap()
                .unwrap()
                .arch,
            "aarch64"
        );
        assert!(BootLine::parse("SPINDLE-BOOT1 x86_64 zstd").is_err());
        assert!(BootLine::parse("SPINDLE-BOOT1").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    /// The Python stage must be valid Python once unescaped: compile it with
    /// the local interpreter (without running it).
    #[test]
    fn python_stage_compiles() {
        use std::io::Write;
        let check = "import ast,sys;l=sys.stdin.readline();assert l.startswith('exec(');compile(ast.literal_eval(l[5:-2]),'stage','exec')";
        let mut child = std::process::Command::new("python3")
            .args(["-c", check])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed to check the stage");
        let mut stdin = child.stdin.take().unwrap();
        let ahead = Ahead {
            arch: "x86_64",
            len: 1,
        };
        stdin
            .write_all(&stdin_preamble(Some("python3"), Some(ahead)))
            .unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }
}
