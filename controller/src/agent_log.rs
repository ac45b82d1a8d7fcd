//! Agents' log records kept for the Ansible plugin, which shows them at
//! `-vvv` beside the task they belong to: each reply to the plugin carries
//! the records its host's agents (and their child agents) sent since the
//! last reply for that host. Off unless the run asked for it
//! (`spindle serve --agent-log`); agents then send debug records too.
//!
//! Records are told apart by the agent's destination only: inventory hosts
//! sharing one agent (Ansible's `local` connection, aliases of one address)
//! see each other's, and a step sent without waiting shows its records with
//! the next reply. Each record names its request.

use spindle_protocol::LogLevel;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Records kept at most, over all hosts: a host nobody asks about does not
/// grow the controller without bound.
const KEEP: usize = 4096;

/// Bytes of a record's message kept (an interpreter's stderr may come in
/// large pieces).
const MESSAGE_BYTES: usize = 4096;

static LOG: OnceLock<Mutex<VecDeque<(String, String)>>> = OnceLock::new();

/// Keeps agents' records from now on.
pub fn enable() {
    LOG.get_or_init(Mutex::default);
}

/// Whether records are kept (and agents are asked for debug records).
pub fn enabled() -> bool {
    LOG.get().is_some()
}

fn records() -> Option<std::sync::MutexGuard<'static, VecDeque<(String, String)>>> {
    LOG.get()
        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Keeps a record from the agent of link `host` (a [`crate::Destination`]
/// as text, with " (as user)" for a child agent).
pub(crate) fn record(host: &str, level: LogLevel, message: &str) {
    if let Some(mut log) = records() {
        if log.len() == KEEP {
            log.pop_front();
        }
        let level = format!("{level:?}").to_lowercase();
        let mut cut = message.len().min(MESSAGE_BYTES);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = if cut < message.len() { "…" } else { "" };
        let line = format!("{level}: {}{more}", &message[..cut]);
        log.push_back((host.to_owned(), line));
    }
}

/// Takes the records of `host`'s agents, oldest first; a child agent's are
/// marked with its account.
pub fn take(host: &str) -> Vec<String> {
    let Some(mut log) = records() else {
        return Vec::new();
    };
    let mut mine = Vec::new();
    log.retain(|(h, line)| match h.strip_prefix(host) {
        Some(rest) if rest.is_empty() || rest.starts_with(" (as ") => {
            let who = rest.trim_start();
            mine.push(if who.is_empty() {
                line.clone()
            } else {
                format!("{who} {line}")
            });
            false
        }
        _ => true,
    });
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_to_their_host_once() {
        enable();
        record("u@a", LogLevel::Debug, "one");
        record("u@ab", LogLevel::Debug, "other host");
        record("u@a (as root)", LogLevel::Warn, "two");
        assert_eq!(take("u@a"), ["debug: one", "(as root) warn: two"]);
        assert!(take("u@a").is_empty());
        assert_eq!(take("u@ab"), ["debug: other host"]);
    }
}
