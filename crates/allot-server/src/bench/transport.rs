//! The load generator's HTTP/2 connections: hyper's client connection, called directly.
//!
//! tonic's `Channel` puts every call through a `tower::buffer::Buffer` (a message to a worker
//! task and a oneshot back), a boxed service, an origin, user-agent and timeout layer and a
//! reconnecting service before it reaches the same hyper connection. That is a client's comfort
//! (reconnection, load balancing, back-pressure across tasks) that a load generator on one
//! loopback connection does not need, and on a two-core machine its CPU is taken from the server
//! being measured (`docs/benchmarks.md`, finding 32). Here a call goes from the generated client
//! straight to hyper's `SendRequest`: the same HTTP/2 framing, window sizes and codec, one task
//! hop fewer. The server is not changed by it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;
use tonic::codegen::http;

/// HTTP/2 connections the clients share, unless `ALLOT_BENCH_CONNECTIONS` says otherwise.
pub const CONNECTIONS_DEFAULT: usize = 4;
/// Most HTTP/2 connections the load generator opens.
pub const CONNECTIONS_MAX: usize = 64;

/// How many connections to open, from `ALLOT_BENCH_CONNECTIONS` (`None`: the default).
pub fn connections(setting: Option<&str>) -> anyhow::Result<usize> {
    crate::env_setting::within("ALLOT_BENCH_CONNECTIONS", setting, 1..=CONNECTIONS_MAX, CONNECTIONS_DEFAULT, "a number of connections")
}

/// One HTTP/2 connection to the server; clones share it.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Body>,
}

/// Opens one HTTP/2 connection to `addr` (plain text, `TCP_NODELAY` as tonic's `Endpoint` sets
/// it) and drives it on a task of its own until either side closes it.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "bench connection closed");
        }
    });
    Ok(Connection { send })
}

impl tonic::codegen::Service<http::Request<Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.send.send_request(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_default_to_four_and_take_a_count_within_the_limit() {
        assert_eq!(connections(None).unwrap(), CONNECTIONS_DEFAULT);
        assert_eq!(connections(Some("1")).unwrap(), 1);
        assert_eq!(connections(Some(" 64 ")).unwrap(), CONNECTIONS_MAX);
    }

    #[test]
    fn connections_outside_the_limit_or_not_a_number_are_refused_with_the_setting_named() {
        for bad in ["0", "65", "four", "", "-1"] {
            let err = connections(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("ALLOT_BENCH_CONNECTIONS"), "{bad:?}: {err}");
        }
    }
}
