//! Owns a throwaway Redis Cluster: N (at least 3) masters, each `redis-server --cluster-enabled
//! yes` in the foreground on free 127.0.0.1 ports (client and bus) with its files in
//! `<root>/redis-cluster/node-<i>`, joined by `redis-cli --cluster create … --cluster-yes` (no
//! replicas) and ready once every node reports `cluster_state:ok`. On stop, every node is
//! terminated by its own pid and `<root>/redis-cluster` is removed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{find_redis_server, start_server};
use super::watchdog::Supervised;
use super::{claim_dir, create_dir_0755, find_in_path, free_port, log_tail, remove_dir, with_free_port, Error};

const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const TAIL_LINES: usize = 20;

/// A running throwaway Redis Cluster; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct LocalRedisCluster {
    nodes: Vec<(Supervised, u16)>,
    dir: PathBuf,
    stopped: bool,
}

impl LocalRedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled nodes, creates the cluster over them and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start(root: &Path, masters: usize) -> Result<LocalRedisCluster, Error> {
        let dir = root.join("redis-cluster");
        if masters < 3 {
            return Err(Error::StartFailed {
                server: "redis-cluster",
                reason: format!("a cluster needs at least 3 masters, not {masters}"),
                log: dir,
                tail: String::new(),
            });
        }
        let bin = find_redis_server()?;
        let cli = find_in_path("redis-cli")
            .or_else(|| Some(PathBuf::from("/usr/bin/redis-cli")).filter(|p| p.is_file()))
            .ok_or_else(|| Error::NotFound { what: "redis-cli".into(), package: "redis-tools" })?;
        create_dir_0755(root)?;
        claim_dir("redis-cluster", &dir, &dir.join("node-0").join("redis.pid"))?;
        create_dir_0755(&dir)?;
        let mut cluster = LocalRedisCluster { nodes: Vec::new(), dir, stopped: false };
        for i in 0..masters {
            let node_dir = cluster.dir.join(format!("node-{i}"));
            create_dir_0755(&node_dir)?;
            let node = with_free_port("redis", |port| {
                // The cluster bus gets a free port of its own (port + 10000 may not exist).
                let bus = free_port().map_err(Error::io("finding a free bus port"))?.to_string();
                let extra =
                    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", &bus, "--cluster-node-timeout", "5000"];
                start_server(&bin, &node_dir, port, &extra)
            })?;
            tracing::info!(port = node.1, pid = node.0.pid(), "redis cluster node started");
            cluster.nodes.push(node);
        }
        cluster.create(&cli)?;
        cluster.wait_until_ok()?;
        tracing::info!(ports = ?cluster.ports(), "redis cluster ready");
        Ok(cluster)
    }

    /// The client ports, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(_, port)| *port).collect()
    }

    /// The server pids, in node order.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|(server, _)| server.pid()).collect()
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=…` (every node as a seed).
    pub fn url(&self) -> String {
        let ports = self.ports();
        let others: Vec<String> = ports.iter().skip(1).map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", ports[0], others.join("&"))
    }

    /// `redis://127.0.0.1:P1`: one seed node, for clients told separately that it is a cluster.
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports()[0])
    }

    /// How many keys each node holds (`DBSIZE`), in node order; `None` for a node that did not answer.
    pub fn keys_per_node(&self) -> Vec<Option<u64>> {
        self.ports().into_iter().map(|port| ask(port, "DBSIZE").and_then(|r| r.strip_prefix(':')?.trim().parse().ok())).collect()
    }

    /// Stops every node by its own pid (SIGTERM, bounded wait, SIGKILL) and removes the files.
    /// Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for (server, port) in &mut self.nodes {
            server.stop();
            tracing::info!(port = *port, pid = server.pid(), "redis cluster node stopped");
        }
        remove_dir(&self.dir);
    }

    fn create(&self, cli: &Path) -> Result<(), Error> {
        let log = self.dir.join("create.log");
        let out = File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(Error::io(format!("duplicating {}", log.display())))?;
        let mut child = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(self.ports().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(Error::io("spawning redis-cli --cluster create"))?;
        let deadline = Instant::now() + CREATE_TIMEOUT;
        loop {
            match child.try_wait().map_err(Error::io("waiting for redis-cli"))? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => {
                    return Err(Error::StartFailed {
                        server: "redis-cluster",
                        reason: format!("redis-cli --cluster create exited with {status}"),
                        tail: log_tail(&log, TAIL_LINES),
                        log,
                    })
                }
                None if Instant::now() >= deadline => {
                    if let Err(e) = child.kill() {
                        tracing::warn!(error = %e, "could not kill redis-cli");
                    }
                    let _reaped = child.wait();
                    return Err(Error::Timeout { server: "redis-cluster", waited: CREATE_TIMEOUT, tail: log_tail(&log, TAIL_LINES), log });
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn wait_until_ok(&self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = self.ports().into_iter().all(|port| ask(port, "CLUSTER INFO").is_some_and(|info| info.contains("cluster_state:ok")));
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.dir.join("node-0").join("log");
                return Err(Error::Timeout { server: "redis-cluster", waited: READY_TIMEOUT, tail: log_tail(&log, TAIL_LINES), log });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LocalRedisCluster {
    fn drop(&mut self) {
        self.stop()
    }
}

/// Sends one inline command and returns the reply's text (one RESP reply: a simple string,
/// an integer, an error or a bulk string, read in full).
fn ask(port: u16, command: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 1024 * 1024 {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, rest)) = text.split_once("\r\n") else { continue };
        if let Some(len) = head.strip_prefix('$') {
            let len: usize = len.parse().ok()?;
            if rest.len() >= len {
                return Some(rest[..len].to_owned());
            }
        } else {
            return Some(head.to_owned());
        }
    }
    None
}
