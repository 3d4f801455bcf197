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
