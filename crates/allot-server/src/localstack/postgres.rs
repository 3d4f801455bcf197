//! Owns a throwaway PostgreSQL server: finds the server binaries, runs
//! initdb into `<root>/pg/data` (superuser `allot`, trust auth; the server
//! listens on loopback only), starts `postgres` on a free 127.0.0.1 port,
//! waits for readiness, and on stop shuts it down by its own pid and
//! removes `<root>/pg`. As root, every PostgreSQL binary runs as the
//! `postgres` user through `setpriv`. Extra server settings (`-c name=value`)
//! can be given at start; [`LocalPostgres::halt`] and
//! [`LocalPostgres::restart`] stop and start the same server (same data, same
//! port) to test outages.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::watchdog::Supervised;
use super::{claim_dir, create_dir_0755, find_in_path, is_root, log_tail, remove_dir, with_free_port, Error};

const SUPERUSER: &str = "allot";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(10);
const TAIL_LINES: usize = 20;
/// Longest Unix socket path (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A running throwaway PostgreSQL server; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    server: Supervised,
    port: u16,
    bin_dir: PathBuf,
    dir: PathBuf,
    settings: Vec<(String, String)>,
    stopped: bool,
}

impl LocalPostgres {
    /// initdb into `<root>/pg` (root is a caller-owned directory, created if
    /// missing), start postgres on 127.0.0.1:<free port>, and wait until it
    /// accepts connections. Superuser `allot`, trust auth, loopback only.
    pub fn start(root: &Path) -> Result<LocalPostgres, Error> {
        Self::start_with(root, &[])
    }

    /// Like [`LocalPostgres::start`], with extra server settings passed as
    /// `-c name=value` (e.g. `("fsync", "off")`), kept across [`LocalPostgres::restart`].
    pub fn start_with(root: &Path, settings: &[(&str, &str)]) -> Result<LocalPostgres, Error> {
        let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let bin_dir = find_bin_dir()?;
        let runner = Runner::new()?;
        let dir = root.join("pg");
        let data = dir.join("data");
        claim_dir("postgres", &dir, &data.join("postmaster.pid"))?;
        let started = prepare(root, &dir, &data, &runner)
            .and_then(|()| initdb(&bin_dir, &dir, &data, &runner))
            .and_then(|()| with_free_port("postgres", |port| start_server(&bin_dir, &dir, &data, &runner, port, &settings)));
        match started {
            Ok(server) => {
                let pg = LocalPostgres { port: server.1, server: server.0, bin_dir, dir, settings, stopped: false };
                tracing::info!(port = pg.port, pid = pg.pid(), "postgres started");
                Ok(pg)
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

    /// `postgresql://allot@127.0.0.1:PORT/DATABASE`
    pub fn dsn(&self, database: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Where initdb, postgres, pg_isready and pgbench live.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Stops the server (fast shutdown by its own pid, as [`LocalPostgres::stop`])
    /// but keeps its data directory and port, for [`LocalPostgres::restart`].
    pub fn halt(&mut self) {
        if self.stopped {
            return;
        }
        self.server.stop();
        tracing::info!(port = self.port, pid = self.pid(), "postgres halted");
    }

    /// Starts the server again on the same data directory and port (halting it
    /// first if it runs) and waits until it accepts connections.
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.stopped {
            return Err(start_failed("the server was stopped and its data removed".into(), &self.dir));
        }
        self.server.stop();
        let runner = Runner::new()?;
        let (server, _) = start_server(&self.bin_dir, &self.dir, &self.dir.join("data"), &runner, self.port, &self.settings)?;
        self.server = server;
        tracing::info!(port = self.port, pid = self.pid(), "postgres restarted");
        Ok(())
    }

    /// Fast shutdown (SIGINT to its own pid), wait up to 10 s, then SIGKILL
    /// that pid; stop the watchdog and remove `<root>/pg`. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.server.stop();
        remove_dir(&self.dir);
        tracing::info!(port = self.port, pid = self.pid(), "postgres stopped");
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop()
    }
}

/// Runs PostgreSQL binaries directly, or as `postgres` through setpriv when we are root.
#[derive(Debug)]
struct Runner {
    setpriv: Option<PathBuf>,
}

impl Runner {
    fn new() -> Result<Runner, Error> {
        if !is_root()? {
            return Ok(Runner { setpriv: None });
        }
        let setpriv = find_in_path("setpriv")
            .or_else(|| Some(PathBuf::from("/usr/bin/setpriv")).filter(|p| p.is_file()))
            .ok_or_else(|| Error::NotFound { what: "setpriv".into(), package: "util-linux" })?;
        let user = Command::new("id").arg("-u").arg("postgres").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !user.is_ok_and(|s| s.success()) {
            return Err(Error::NotFound { what: "system user `postgres`".into(), package: "postgresql" });
        }
        Ok(Runner { setpriv: Some(setpriv) })
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut cmd = Command::new(setpriv);
                cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin`, else PATH.
fn find_bin_dir() -> Result<PathBuf, Error> {
    let has_server = |dir: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|b| dir.join(b).is_file());
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_server(d)) {
        return Ok(dir);
    }
    let version = |name: &str| name.split('.').map(|p| p.parse::<u32>().ok()).collect::<Option<Vec<u32>>>();
    let highest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((version(e.file_name().to_str()?)?, e.path().join("bin"))))
        .filter(|(_, bin)| has_server(bin))
        .max_by(|a, b| a.0.cmp(&b.0));
    if let Some((_, bin)) = highest {
        return Ok(bin);
    }
    find_in_path("postgres")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| has_server(d))
        .ok_or_else(|| Error::NotFound { what: "PostgreSQL server binaries (initdb, postgres, pg_isready)".into(), package: "postgresql" })
}

/// Create `<root>/pg` (0755) and an empty data directory the server user owns.
fn prepare(root: &Path, dir: &Path, data: &Path, runner: &Runner) -> Result<(), Error> {
    create_dir_0755(root)?;
    create_dir_0755(dir)?;
    std::fs::create_dir(data).map_err(Error::io(format!("creating {}", data.display())))?;
    if runner.setpriv.is_none() {
        return Ok(());
    }
    // A caller's 0700 temp dir must be traversable by `postgres`: add o+x.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root).map_err(Error::io(format!("reading {}", root.display())))?.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o001))
            .map_err(Error::io(format!("making {} traversable", root.display())))?;
    }
    let chown = Command::new("chown").arg("postgres:postgres").arg(data).stdin(Stdio::null()).status();
    if !chown.as_ref().is_ok_and(|s| s.success()) {
        return Err(start_failed(format!("could not chown {} to postgres ({chown:?})", data.display()), dir));
    }
    let reachable = runner.command(Path::new("test")).arg("-w").arg(data).status();
    if !reachable.is_ok_and(|s| s.success()) {
        return Err(start_failed(format!("user postgres cannot reach {}: make its parent directories traversable (chmod o+x)", data.display()), dir));
    }
    Ok(())
}

fn start_failed(reason: String, dir: &Path) -> Error {
    let log = dir.join("log");
    Error::StartFailed { server: "postgres", reason, tail: log_tail(&log, TAIL_LINES), log }
}

fn log_file(path: &Path) -> Result<(File, File), Error> {
    let file = File::create(path).map_err(Error::io(format!("creating {}", path.display())))?;
    let clone = file.try_clone().map_err(Error::io(format!("duplicating {}", path.display())))?;
    Ok((file, clone))
}

fn initdb(bin_dir: &Path, dir: &Path, data: &Path, runner: &Runner) -> Result<(), Error> {
    let log = dir.join("initdb.log");
    let (out, err) = log_file(&log)?;
    let mut child = runner
        .command(&bin_dir.join("initdb"))
        .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-locale", "-D"])
        .arg(data)
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(Error::io("spawning initdb"))?;
    let deadline = Instant::now() + INITDB_TIMEOUT;
    loop {
        match child.try_wait().map_err(Error::io("waiting for initdb"))? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                return Err(Error::StartFailed {
                    server: "initdb",
                    reason: format!("initdb exited with {status}"),
                    tail: log_tail(&log, TAIL_LINES),
                    log,
                })
            }
            None if Instant::now() >= deadline => {
                if let Err(e) = child.kill() {
                    tracing::warn!(error = %e, "could not kill initdb");
                }
                let _reaped = child.wait();
                return Err(Error::Timeout { server: "initdb", waited: INITDB_TIMEOUT, tail: log_tail(&log, TAIL_LINES), log });
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn start_server(
    bin_dir: &Path,
    dir: &Path,
    data: &Path,
    runner: &Runner,
    port: u16,
    settings: &[(String, String)],
) -> Result<(Supervised, u16), Error> {
    let log = dir.join("log");
    let (out, err) = log_file(&log)?;
    // Unix socket in the data dir, or none if that path would be too long.
    let socket_dir = if data.as_os_str().len() + ".s.PGSQL.65535".len() < MAX_SOCKET_PATH { data } else { Path::new("") };
    let mut cmd = runner.command(&bin_dir.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(socket_dir)
        .args(["-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "log_min_messages=warning"])
        .args(settings.iter().flat_map(|(name, value)| ["-c".to_owned(), format!("{name}={value}")]))
        .stdout(out)
        .stderr(err);
    let mut server = Supervised::spawn("postgres", cmd, dir, "INT", STOP_GRACE)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = server.exited() {
            return Err(start_failed(format!("postgres exited with {status}"), dir));
        }
        if ready(bin_dir, data, runner, port, server.pid()) {
            return Ok((server, port));
        }
        if Instant::now() >= deadline {
            server.stop();
            return Err(Error::Timeout { server: "postgres", waited: READY_TIMEOUT, tail: log_tail(&log, TAIL_LINES), log });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ready when OUR postmaster (pid in postmaster.pid) reports "ready" and
/// pg_isready accepts the port: another server that took the port cannot pass.
fn ready(bin_dir: &Path, data: &Path, runner: &Runner, port: u16, pid: u32) -> bool {
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
    let lines: Vec<&str> = pid_file.lines().map(str::trim).collect();
    if lines.first() != Some(&pid.to_string().as_str()) || lines.get(7) != Some(&"ready") {
        return false;
    }
    runner
        .command(&bin_dir.join("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER, "-d", "postgres", "-t", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
