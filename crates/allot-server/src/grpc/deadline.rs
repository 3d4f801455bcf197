//! The server's own bound on a call, `request_timeout_ms`, answered as DEADLINE_EXCEEDED.
//!
//! tonic's `Server::timeout` answers an expired call with CANCELLED ("Timeout expired"), which
//! tells a client that it cancelled, not that the server gave up; this layer replaces it. It
//! bounds the future that produces the response (headers), as tonic's does: a server stream,
//! once started, is not cut. A call whose client deadline (`grpc-timeout`) is shorter still ends
//! by tonic's own layer, outside this one, at the client's deadline. The detached transaction of
//! a call that ran out of time still commits or rolls back whole (`grpc::detached`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;

/// Bounds every call to `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> DeadlineLayer {
        DeadlineLayer { timeout }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, timeout: self.timeout }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for Deadline<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = self.timeout;
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Ok(super::status::request_timeout(timeout).into_http()),
            }
        })
    }
}
