//! The one tower layer every RPC passes through (`Server::builder().layer(RpcLayer)`): it takes
//! the W3C trace context (`traceparent`, `tracestate`) from the call's metadata, opens the RPC's
//! span (named after the gRPC path, with `rpc.service`, `rpc.method`, the status code and, for
//! decisions, `allot.decision` and `allot.reason`), and records the call's latency by service,
//! method and code. Handlers and services know nothing about it.
//!
//! The code is read from the response headers (`grpc-status`, where an error of a unary call is
//! sent); a response without one succeeded. For server streams the latency is the time to the
//! response headers. Unknown paths are counted as `unknown`, so a client cannot create series.
//! Health checks and reflection (`grpc.*`) are timed but their spans are DEBUG, so probes every
//! few seconds do not flood the trace store.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opentelemetry::propagation::Extractor;
use tonic::codegen::http;
use tonic::Code;
use tracing::field::Empty;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Adds [`RpcService`] in front of the router.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

/// Traces and times the calls to `inner`.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for RpcService<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let span = span(&path);
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Metadata(request.headers())));
        // Without the OpenTelemetry layer (no OTLP endpoint) there is no parent to set.
        let _ = span.set_parent(parent);
        let future = span.in_scope(|| self.inner.call(request));
        let recorded = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => code_of(response.headers()),
                    Err(_) => Code::Unknown,
                };
                let (service, method) = if code == Code::Unimplemented { ("unknown", "unknown") } else { split(&path) };
                finish(&recorded, service, method, code, started.elapsed());
                result
            }
            .instrument(span),
        )
    }
}

/// The span of a call to `path` (or of one request of a stream of calls, which records its
/// `allot.sequence`). Probes and reflection (`grpc.*`) are timed but not traced: DEBUG, below what
/// is exported.
pub(crate) fn span(path: &str) -> tracing::Span {
    let (service, method) = split(path);
    macro_rules! rpc_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "rpc",
                otel.name = %path,
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
                allot.sequence = Empty,
                allot.decision = Empty,
                allot.reason = Empty,
            )
        };
    }
    if service.starts_with("grpc.") {
        rpc_span!(tracing::Level::DEBUG)
    } else {
        rpc_span!(tracing::Level::INFO)
    }
}

/// Ends a call (or one request of a stream of calls) that took `elapsed`: its code on its span,
/// marked an error when the code is the server's fault, and its latency by service, method and
/// code.
pub(crate) fn finish(span: &tracing::Span, service: &str, method: &str, code: Code, elapsed: Duration) {
    span.record("rpc.grpc.status_code", code as i32);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
    super::record_rpc(service, method, code_name(code), elapsed);
}

/// `/allot.v1.Entitlements/Debit` → (`allot.v1.Entitlements`, `Debit`).
pub(crate) fn split(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

fn code_of(headers: &http::HeaderMap) -> Code {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map_or(Code::Ok, Code::from)
}

/// The codes OpenTelemetry counts as a server's fault.
fn is_server_error(code: Code) -> bool {
    matches!(code, Code::Unknown | Code::DeadlineExceeded | Code::Unimplemented | Code::Internal | Code::Unavailable | Code::DataLoss)
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as Prometheus labels usually carry it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The call's metadata as a carrier for the trace-context propagator.
struct Metadata<'a>(&'a http::HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_codes() {
        assert_eq!(split("/allot.v1.Entitlements/Debit"), ("allot.v1.Entitlements", "Debit"));
        assert_eq!(split("/odd"), ("odd", ""));
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(code_name(code_of(&headers)), "UNAVAILABLE");
        assert!(is_server_error(Code::Unavailable) && !is_server_error(Code::InvalidArgument));
    }
}
