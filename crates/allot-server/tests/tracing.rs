//! Traces reach an OpenTelemetry collector: a real OTLP/gRPC receiver started by the test gets
//! the span of an RPC whose caller sent a W3C `traceparent`, in the caller's trace, with the RPC's
//! attributes, and the spans of the work done for it (a pooled connection, a row lock) on a
//! detached task in the same trace. Its own test binary: the tracer provider is process-wide.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_server::telemetry::{self, LogFormat};
use allot_server::testkit::TestServer;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// Longest wait for exported spans (the exporter is flushed on every poll).
const EXPORT_WAIT: Duration = Duration::from_secs(30);

/// An OTLP trace receiver that keeps every span it is sent, with its resource's service name.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().expect("spans");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| string(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push((service.clone(), span));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| string(a.value.as_ref().and_then(|v| v.value.as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_reach_an_otlp_receiver_in_the_callers_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let collector = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = telemetry::init(LogFormat::Json, Some(&endpoint)).expect("telemetry");

    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.otlp_endpoint = Some(endpoint.clone())).await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    let mut traced = tonic::Request::new(debit_req("acct", "tokens", 10, "traced", pb::DebitMode::Gate));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    traced.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    assert!(allowed(entitlements.debit(traced).await.expect("traced debit").into_inner().decision));
    // A call without trace context starts a trace of its own.
    debit(&mut entitlements, "acct", "tokens", 10, "untraced").await;

    let deadline = Instant::now() + EXPORT_WAIT;
    let spans = loop {
        tokio::task::block_in_place(|| telemetry.flush());
        let spans = receiver.spans.lock().expect("spans").clone();
        let debits = spans.iter().filter(|(_, s)| s.name == "/allot.v1.Entitlements/Debit").count();
        let children = spans.iter().filter(|(_, s)| hex(&s.trace_id) == TRACE_ID && s.name == "db.lock").count();
        if debits >= 2 && children >= 1 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans did not arrive within {EXPORT_WAIT:?}: {:?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The RPC's span continues the caller's trace, under the caller's span.
    let in_trace: Vec<&Span> = spans.iter().filter(|(_, s)| hex(&s.trace_id) == TRACE_ID).map(|(_, s)| s).collect();
    let rpc = in_trace.iter().find(|s| s.name == "/allot.v1.Entitlements/Debit").expect("the debit's span is in the caller's trace");
    assert_eq!(hex(&rpc.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(attribute(rpc, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(rpc, "rpc.service").as_deref(), Some("allot.v1.Entitlements"));
    assert_eq!(attribute(rpc, "rpc.method").as_deref(), Some("Debit"));
    assert_eq!(attribute(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(attribute(rpc, "allot.decision").as_deref(), Some("allowed"));
    assert!(spans.iter().all(|(service, _)| service == "allot"), "every span names the service");

    // The transaction's work, done on a detached task, hangs under the RPC's span.
    let parent_of = |span: &Span| in_trace.iter().find(|p| p.span_id == span.parent_span_id).copied();
    for name in ["db.checkout", "db.lock"] {
        let child = in_trace.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} span in the trace"));
        let mut ancestor = parent_of(child);
        while let Some(span) = ancestor.filter(|s| s.span_id != rpc.span_id) {
            ancestor = parent_of(span);
        }
        assert!(ancestor.is_some(), "{name} is not under the RPC's span");
    }
    let lock = in_trace.iter().find(|s| s.name == "db.lock").expect("lock span");
    assert_eq!(attribute(lock, "meter").as_deref(), Some("tokens"));

    // The untraced call is a root of another trace.
    let other = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "/allot.v1.Entitlements/Debit" && hex(&s.trace_id) != TRACE_ID)
        .expect("the untraced debit's span");
    assert!(other.parent_span_id.is_empty(), "a call without traceparent starts a new trace");

    // Never a secret: no attribute carries the API key.
    for (_, span) in &spans {
        for a in &span.attributes {
            let value = string(a.value.as_ref().and_then(|v| v.value.as_ref())).unwrap_or_default();
            assert!(!value.contains(&server.tenant.api_key), "span {} attribute {} carries the api key", span.name, a.key);
        }
    }

    server.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.expect("shutdown");
    collector.abort();
}
