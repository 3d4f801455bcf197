//! A child `allot serve` process for crash tests: started with its configuration in `ALLOT_*`
//! variables (every inherited `ALLOT_*` variable removed), killed with `SIGKILL` or terminated
//! with `SIGTERM` by its own PID, and restarted on the same address. Each incarnation writes
//! stderr to a file of its own under `logs`; the files stay for post-mortems. Dropping the handle
//! kills a still-running child (by its PID) and reaps it, so a failed test leaves no orphan.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;

use super::workload::Client;

/// One `allot serve` child at a time, on a fixed address.
pub struct AllotProcess {
    binary: PathBuf,
    label: String,
    logs: PathBuf,
    env: Vec<(String, String)>,
    pub listen: SocketAddr,
    child: Option<Child>,
    stderr: PathBuf,
    /// Incarnations started so far.
    pub starts: u32,
}

impl AllotProcess {
    /// Starts `binary serve` listening on `listen`, with `env` (e.g. `ALLOT_DATABASE_URL`).
    pub fn start(binary: &Path, label: &str, logs: &Path, listen: SocketAddr, env: &[(&str, &str)]) -> AllotProcess {
        std::fs::create_dir_all(logs).expect("create log dir");
        let mut process = AllotProcess {
            binary: binary.to_owned(),
            label: label.to_owned(),
            logs: logs.to_owned(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            listen,
            child: None,
            stderr: PathBuf::new(),
            starts: 0,
        };
        process.spawn(&[]);
        process
    }

    /// Starts a new incarnation with `extra` variables added for it alone.
    fn spawn(&mut self, extra: &[(&str, &str)]) {
        assert!(self.child.is_none(), "allot is still running");
        self.starts += 1;
        self.stderr = self.logs.join(format!("{}-{}-{}.stderr", self.label, std::process::id(), self.starts));
        let mut command = Command::new(&self.binary);
        command.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(File::create(&self.stderr).expect("stderr file"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ALLOT_") {
                command.env_remove(name);
            }
        }
        command.env("ALLOT_LISTEN", self.listen.to_string()).env("ALLOT_LOG_FORMAT", "json");
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.envs(extra.iter().copied());
        self.child = Some(command.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display())));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `SIGKILL` to its own PID, then reaps it.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// `SIGTERM` to its own PID (the child keeps running until it has drained).
    pub fn sigterm(&self) {
        let pid = self.pid().expect("allot is running");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Starts again on the same address (after a kill or an exit), with `extra` variables.
    pub fn restart(&mut self, extra: &[(&str, &str)]) {
        if let Some(status) = self.exited() {
            tracing::debug!(?status, "allot exited before restart");
        }
        assert!(self.child.is_none(), "allot is still running: kill it first");
        self.spawn(extra);
    }

    /// The exit status if the current child has exited (then it is forgotten).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Waits up to `within` for the child to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The current incarnation's stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Where the current incarnation's stderr goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Polls a read-only `Check` every 10 ms until one succeeds; how long that took, or `None`
    /// after `within` (or when the child exits).
    pub async fn until_serving(&mut self, client: &Client, account: &str, meter: &str, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let mut request =
                tonic::Request::new(pb::CheckRequest { account_id: account.into(), meter: meter.into(), amount_credits: 1, ..Default::default() });
            request.set_timeout(Duration::from_millis(500));
            if client.clone().check(request).await.is_ok() {
                return Some(started.elapsed());
            }
            if started.elapsed() >= within || self.exited().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for AllotProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
