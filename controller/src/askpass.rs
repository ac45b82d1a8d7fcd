//! Passwords for ssh without a terminal, a command line or an environment
//! variable holding them.
//!
//! ssh runs `$SSH_ASKPASS <prompt>` (forced with `SSH_ASKPASS_REQUIRE`) and
//! reads the password from its output. Here that program is `spindle
//! askpass`, and all its environment carries is the path of a UNIX socket
//! the controller opened for this one connection attempt, in a directory
//! only its user can enter. The controller checks that whoever connects runs
//! as the same user, answers with the password, and removes the socket when
//! the attempt is over.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

/// The environment variable naming the socket.
pub const SOCKET_VAR: &str = "SPINDLE_ASKPASS_SOCKET";

/// A served password; the socket goes away on drop.
#[derive(Debug)]
pub struct Server {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts answering on a fresh socket.
    pub fn start(password: &str) -> std::io::Result<Server> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spindle-askpass-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let listener = tokio::net::UnixListener::bind(dir.join("sock"))?;
        let password = format!("{password}\n");
        // We just made the directory: its owner is who we run as.
        let me = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&dir)?.uid()
        };
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let same_user = stream.peer_cred().map(|c| c.uid() == me).unwrap_or(false);
                if same_user {
                    let _ = stream.write_all(password.as_bytes()).await;
                }
            }
        });
        Ok(Server { dir, task })
    }

    /// What to add to ssh's environment.
    pub fn env(&self, program: &std::path::Path) -> Vec<(String, String)> {
        vec![
            ("SSH_ASKPASS".into(), program.display().to_string()),
            ("SSH_ASKPASS_REQUIRE".into(), "force".into()),
            // Older clients only use askpass with a display set.
            (
                "DISPLAY".into(),
                std::env::var("DISPLAY").unwrap_or_else(|_| ":0".into()),
            ),
            (
                SOCKET_VAR.into(),
                self.dir.join("sock").display().to_string(),
            ),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `spindle askpass <prompt>`: prints the password for a password prompt;
/// refuses anything else (a host key question must not get a password).
pub fn client(prompt: &str) -> i32 {
    if !prompt.to_ascii_lowercase().contains("password") {
        eprintln!("spindle: not answering ssh's question: {}", prompt.trim());
        return 1;
    }
    let Some(path) = std::env::var_os(SOCKET_VAR) else {
        eprintln!("spindle askpass: {SOCKET_VAR} is not set");
        return 1;
    };
    let mut answer = Vec::new();
    let got =
        std::os::unix::net::UnixStream::connect(&path).and_then(|mut s| s.read_to_end(&mut answer));
    if let Err(e) = got {
        eprintln!("spindle askpass: {e}");
        return 1;
    }
    let mut out = std::io::stdout();
    if out.write_all(&answer).and_then(|_| out.flush()).is_err() {
        return 1;
    }
    0
}
