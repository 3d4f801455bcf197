//! Local stack: throwaway PostgreSQL and Redis servers (single or a 3-master
//! cluster) started from the system's binaries on free loopback ports, for
//! tests and `allot dev`.
//!
//! This module owns the shared pieces: the [`Error`] type, [`free_port`],
//! and the small process helpers (root detection, binary lookup, log tails).
//! Each server is stopped only by its own PID, and a watchdog (see
//! `watchdog.rs`) cleans up if the owning process dies without stopping it.

mod postgres;
mod redis;
mod redis_cluster;
mod watchdog;

pub use postgres::LocalPostgres;
pub use redis::LocalRedis;
pub use redis_cluster::LocalRedisCluster;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary or system user that the local stack needs is missing.
    #[error("{what} not found: install the Debian package `{package}` (run `scripts/setup`)")]
    NotFound { what: String, package: &'static str },
    /// The server (or initdb) failed or exited before it was ready.
    #[error("{server} failed to start: {reason}\n--- last lines of {} ---\n{tail}", .log.display())]
    StartFailed { server: &'static str, reason: String, log: PathBuf, tail: String },
    /// The server did not become ready in time.
    #[error("{server} was not ready within {} s\n--- last lines of {} ---\n{tail}", .waited.as_secs(), .log.display())]
    Timeout { server: &'static str, waited: Duration, log: PathBuf, tail: String },
    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, drop the socket.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// How many times a start is tried with a fresh port when the port was taken.
pub(crate) const PORT_ATTEMPTS: usize = 3;

/// Whether this process runs with effective uid 0 (`id -u`, cached).
pub(crate) fn is_root() -> Result<bool, Error> {
    static ROOT: OnceLock<bool> = OnceLock::new();
    if let Some(root) = ROOT.get() {
        return Ok(*root);
    }
    let out = Command::new("id").arg("-u").stdin(Stdio::null()).stderr(Stdio::null()).output().map_err(Error::io("running `id -u`"))?;
    let root = String::from_utf8_lossy(&out.stdout).trim() == "0";
    Ok(*ROOT.get_or_init(|| root))
}

/// The first `name` found in the directories of `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a log shows that the server could not bind its port.
pub(crate) fn port_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

/// Create `dir` (and missing parents) with mode 0755 so that another user
/// (postgres, when we run as root) can traverse it.
pub(crate) fn create_dir_0755(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(Error::io(format!("creating {}", dir.display())))
}

/// Remove a directory tree if it exists.
pub(crate) fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove data directory"),
    }
}

/// Whether a process with this pid exists (`kill -0 PID`).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Make `dir` ours: if the pid in `pid_file` (first line) is still running,
/// the directory is in use by another server; otherwise remove what a
/// previous run left there.
pub(crate) fn claim_dir(server: &'static str, dir: &Path, pid_file: &Path) -> Result<(), Error> {
    let pid = std::fs::read_to_string(pid_file).ok().and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
    if let Some(pid) = pid.filter(|p| pid_alive(*p)) {
        return Err(Error::StartFailed {
            server,
            reason: format!("{} is in use by a running server (pid {pid})", dir.display()),
            log: pid_file.to_owned(),
            tail: String::new(),
        });
    }
    remove_dir(dir);
    Ok(())
}

/// Run `start` with a free port, and again with a new port (up to
/// [`PORT_ATTEMPTS`] in all) when the server reports the port was taken.
pub(crate) fn with_free_port<T>(server: &'static str, mut start: impl FnMut(u16) -> Result<T, Error>) -> Result<T, Error> {
    let mut attempt = 1;
    loop {
        let port = free_port().map_err(Error::io("finding a free port"))?;
        match start(port) {
            Err(Error::StartFailed { ref tail, .. }) if port_taken(tail) && attempt < PORT_ATTEMPTS => {
                tracing::warn!(server, port, attempt, "port was taken, retrying with another");
                attempt += 1;
            }
            other => return other,
        }
    }
}
