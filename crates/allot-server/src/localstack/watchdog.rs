//! Owns one running server process: its child handle, stopping it by its
//! own PID (signal, bounded wait, then SIGKILL), and the `sh` watchdog that,
//! when the owning process dies without stopping it (statics are never
//! dropped), stops the server by PID and removes its directory.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Error;

/// The watchdog, run as `sh -c SCRIPT allot-watchdog OWNER SERVER SIGNAL POLLS DIR`.
/// Processes are identified by pid plus start time (from /proc) so that a
/// reused pid is never signalled; zombies count as gone. Polls every 0.5 s.
const SCRIPT: &str = r#"
trap '' INT HUP
owner=$1 srv=$2 sig=$3 polls=$4 dir=$5
rp=') '
ID=
ident() {
  if [ -r /proc/self/stat ]; then
    { read -r l < "/proc/$1/stat"; } 2>/dev/null || return 1
    set -- ${l##*"$rp"}
    case $1 in Z|X|x) return 1;; esac
    shift 19
    ID=$1
  else
    kill -0 "$1" 2>/dev/null && ID=any
  fi
}
alive() { ident "$1" && [ "$ID" = "$2" ]; }
ident "$owner" || exit 0; owner_id=$ID
ident "$srv" || exit 0; srv_id=$ID
while :; do
  if ! alive "$owner" "$owner_id"; then
    if alive "$srv" "$srv_id"; then
      kill -s "$sig" "$srv" 2>/dev/null
      i=0
      while alive "$srv" "$srv_id" && [ "$i" -lt $((polls + 20)) ]; do
        i=$((i + 1))
        [ "$i" -gt "$polls" ] && kill -s KILL "$srv" 2>/dev/null
        sleep 0.5
      done
    fi
    rm -rf -- "$dir"
    exit 0
  fi
  if ! alive "$srv" "$srv_id"; then
    n=0
    while [ "$n" -lt 4 ]; do
      alive "$owner" "$owner_id" || { rm -rf -- "$dir"; exit 0; }
      n=$((n + 1))
      sleep 0.5
    done
    exit 0
  fi
  sleep 0.5
done
"#;

/// A spawned server plus its watchdog. Dropping it stops both (by pid); the
/// directory is left to the owner, which removes it after a final stop.
#[derive(Debug)]
pub(crate) struct Supervised {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    watchdog: Option<Child>,
    signal: &'static str,
    grace: Duration,
}

impl Supervised {
    /// Spawn `cmd`, then a watchdog that, if this process dies, sends
    /// `signal` to the server's pid, SIGKILLs it after `grace`, and removes `dir`.
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, dir: &Path, signal: &'static str, grace: Duration) -> Result<Supervised, Error> {
        let child = cmd.spawn().map_err(Error::io(format!("spawning {name}")))?;
        let pid = child.id();
        let mut server = Supervised { name, child: Some(child), pid, watchdog: None, signal, grace };
        let polls = (grace.as_millis() / 500).max(1);
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("allot-watchdog")
            .arg(std::process::id().to_string())
            .arg(pid.to_string())
            .arg(signal)
            .arg(polls.to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C meant for the owner must not kill it.
            .process_group(0)
            .spawn()
            .map_err(Error::io(format!("spawning the {name} watchdog")))?;
        tracing::debug!(server = name, pid, watchdog = watchdog.id(), "watchdog started");
        server.watchdog = Some(watchdog);
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the server has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stop the server by its own pid (signal, wait up to `grace`, SIGKILL),
    /// then the watchdog by its own pid. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(self.name, &mut child, self.signal, self.grace);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Err(e) = watchdog.kill() {
                tracing::debug!(error = %e, "watchdog already gone");
            }
            if let Err(e) = watchdog.wait() {
                tracing::warn!(error = %e, "could not reap the watchdog");
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_child(name: &'static str, child: &mut Child, signal: &str, grace: Duration) {
    let pid = child.id();
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    match Command::new("kill").args(["-s", signal, &pid.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(server = name, pid, status = %s, "kill failed"),
        Err(e) => tracing::warn!(server = name, pid, error = %e, "could not run kill"),
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!(server = name, pid, "server did not stop in time, sending sigkill");
    if let Err(e) = child.kill() {
        tracing::warn!(server = name, pid, error = %e, "sigkill failed");
    }
    if let Err(e) = child.wait() {
        tracing::warn!(server = name, pid, error = %e, "could not reap the server");
    }
}
