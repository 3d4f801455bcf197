//! Owns a throwaway Redis server: `redis-server` in the foreground on a free
//! 127.0.0.1 port with persistence off and its files in `<root>/redis`;
//! waits until PING answers +PONG (from this very process), and on stop
//! terminates it by its own pid and removes `<root>/redis`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::watchdog::Supervised;
use super::{claim_dir, create_dir_0755, find_in_path, log_tail, remove_dir, with_free_port, Error};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const TAIL_LINES: usize = 20;

/// A running throwaway Redis server; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct LocalRedis {
    server: Supervised,
    port: u16,
    dir: PathBuf,
    stopped: bool,
}

impl LocalRedis {
    /// Start redis-server (foreground) on 127.0.0.1:<free port> with
    /// `--save "" --appendonly no --dir <root>/redis`, and wait until PING
    /// answers +PONG.
    pub fn start(root: &Path) -> Result<LocalRedis, Error> {
        let bin = find_redis_server()?;
        let dir = root.join("redis");
        create_dir_0755(root)?;
        claim_dir("redis", &dir, &dir.join("redis.pid"))?;
        create_dir_0755(&dir)?;
        match with_free_port("redis", |port| start_server(&bin, &dir, port, &[])) {
            Ok(server) => {
                let redis = LocalRedis { server: server.0, port: server.1, dir, stopped: false };
                tracing::info!(port = redis.port, pid = redis.pid(), "redis started");
                Ok(redis)
            }
            Err(e) => {
                remove_dir(&dir);
                Err(e)
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGTERM to its own pid, wait, SIGKILL fallback; stop the watchdog and
    /// remove `<root>/redis`. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.server.stop();
        remove_dir(&self.dir);
        tracing::info!(port = self.port, pid = self.pid(), "redis stopped");
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.stop()
    }
}

/// `redis-server` from PATH or /usr/bin.
pub(crate) fn find_redis_server() -> Result<PathBuf, Error> {
    find_in_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .ok_or_else(|| Error::NotFound { what: "redis-server".into(), package: "redis-server" })
}

/// Starts `redis-server` in the foreground on `port` with its files in `dir` (plus `extra`
/// arguments) and waits until it answers PING from this very process.
pub(crate) fn start_server(bin: &Path, dir: &Path, port: u16, extra: &[&str]) -> Result<(Supervised, u16), Error> {
    let log = dir.join("log");
    let out = File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(Error::io(format!("duplicating {}", log.display())))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut server = Supervised::spawn("redis", cmd, dir, "TERM", STOP_GRACE)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = server.exited() {
            return Err(Error::StartFailed {
                server: "redis",
                reason: format!("redis-server exited with {status}"),
                tail: log_tail(&log, TAIL_LINES),
                log,
            });
        }
        if pong(port, server.pid()) {
            return Ok((server, port));
        }
        if Instant::now() >= deadline {
            server.stop();
            return Err(Error::Timeout { server: "redis", waited: READY_TIMEOUT, tail: log_tail(&log, TAIL_LINES), log });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PING answers +PONG, and INFO shows `process_id:<pid>`: the server on the
/// port is ours, not one that took the port in the meantime.
fn pong(port: u16, pid: u32) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(PROBE_TIMEOUT)).is_err()
        || stream.write_all(b"PING\r\nINFO server\r\n").is_err()
    {
        return false;
    }
    let wanted = format!("process_id:{pid}\r\n");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&reply);
        if text.contains("process_id:") && text.split("process_id:").nth(1).is_some_and(|r| r.contains("\r\n")) {
            return text.starts_with("+PONG\r\n") && text.contains(&wanted);
        }
    }
    false
}
