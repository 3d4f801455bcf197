//! A TCP proxy on 127.0.0.1 that injects network faults between a client (the server under test)
//! and its upstream (PostgreSQL or Redis). `tc netem` does not exist on this kernel and iptables
//! rules would touch the whole machine, so faults are made here, per test:
//!
//! - [`Mode::Pass`]: bytes flow both ways.
//! - [`Mode::Delay`]: every chunk waits this long before it is forwarded (a slow link or server).
//! - [`Mode::Blackhole`]: packets vanish: connections are accepted but nothing is forwarded
//!   either way; bytes in flight are held, as TCP retransmission would, and flow again when the
//!   mode changes back.
//! - [`Mode::Reject`]: every connection is reset (RST) at once, new ones too.
//!
//! The proxy runs on the caller's runtime and stops when dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Reject,
}

/// A running proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

/// Largest chunk forwarded at once.
const CHUNK_BYTES: usize = 16 * 1024;

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, watcher) = watch::channel(Mode::Pass);
        let task = tokio::spawn(accept(listener, upstream, watcher));
        Ok(FaultProxy { addr, mode, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what happens to traffic, for existing connections and new ones.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if *mode.borrow() == Mode::Reject {
            reset(client);
            continue;
        }
        connections.spawn(relay(client, upstream, mode.clone()));
        // Reap finished relays so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// Closes with RST (linger 0) rather than FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let rejected = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        // When either direction ends (EOF, error or reject), the whole connection goes.
        tokio::select! {
            rejected = pump(client_read, server_write, mode.clone()) => rejected,
            rejected = pump(server_read, client_write, mode) => rejected,
        }
    };
    if rejected {
        reset(client);
        reset(server);
    }
}

/// Moves bytes one way under the current mode; `true` when the connection is to be reset.
async fn pump(mut from: tokio::net::tcp::ReadHalf<'_>, mut to: tokio::net::tcp::WriteHalf<'_>, mut mode: watch::Receiver<Mode>) -> bool {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Reject {
                    return true;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        // Hold the chunk while blackholed; reset the connection on reject.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Mode::Reject => return true,
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return true;
                    }
                }
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return false;
        }
    }
}
