//! Logs, traces and metrics.
//!
//! - Logs: structured JSON in production, compact text in `dev`; the level comes from
//!   `RUST_LOG` (default `info`). Messages are lowercase, fields dotted (`holds.voided`). Logs
//!   carry their own fields, not those of the spans around them (see [`init`]).
//! - Traces: when an OTLP endpoint is configured, every span at INFO or above goes to the
//!   collector over OTLP/gRPC (batched). W3C trace context comes in with each call and is taken
//!   from the gRPC metadata in one place, the tower layer of [`rpc`].
//! - Metrics: the names Allot records are all in this file; served in Prometheus format on the
//!   metrics address. The recorder is process-global and installed once.
//!
//! Nothing here may record a secret: no API key, no connection string, no request payload.

pub mod rpc;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Longest wait for the collector on one export.
const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the last spans to leave at shutdown.
const OTLP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Spans whose wall time is a metric (see [`SpanTimer`]): name → histogram.
const TIMED_SPANS: [(&str, &str); 2] = [("db.checkout", "allot_db_pool_wait_seconds"), ("db.lock", "allot_db_lock_wait_seconds")];

/// The installed telemetry; keep it alive while serving and [`Telemetry::shutdown`] it on the
/// way out so the last spans are exported.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now (blocking; call it off the async workers).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(err) = provider.force_flush() {
                tracing::warn!(error = %err, "span export failed");
            }
        }
    }

    /// Flushes and stops the exporter (blocking; call it off the async workers).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.shutdown_with_timeout(OTLP_SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %err, "span exporter did not shut down cleanly");
            }
        }
    }
}

/// Installs the global subscriber once (later calls change nothing and return an inert
/// [`Telemetry`]): logs in `format`, span timings as metrics, and, with `otlp_endpoint`, spans
/// exported over OTLP/gRPC with W3C trace-context propagation. Call it inside the Tokio runtime
/// when exporting (the exporter's gRPC channel lives there).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    // Logs are events with their own fields. Spans are not formatted into them: doing so for
    // every span of every call cost 25–50 µs of CPU a call (docs/benchmarks.md, finding 13);
    // a call's context is in its trace.
    //
    // The events-only filter states that it passes every level, so that the combination keeps
    // the level filter's hint: without a hint the global maximum level is TRACE, and every
    // `log::trace!` of a dependency (fred logs each command) was built and offered to the
    // subscriber only to be dropped (docs/benchmarks.md, finding 20).
    let events = filter_fn(|meta| meta.is_event()).with_max_level_hint(LevelFilter::TRACE);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")).and(events);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).with_filter(filter).boxed(),
        LogFormat::Pretty => fmt.compact().with_filter(filter).boxed(),
    };
    let timed = filter_fn(|meta| meta.is_span() && TIMED_SPANS.iter().any(|(name, _)| *name == meta.name())).with_max_level_hint(LevelFilter::INFO);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![fmt, SpanTimer.with_filter(timed).boxed()];
    let mut provider = None;
    if let Some(endpoint) = otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).with_timeout(OTLP_EXPORT_TIMEOUT).build()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("allot").build();
        let sdk = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = sdk.tracer("allot");
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(LevelFilter::INFO).boxed());
        provider = Some(sdk);
    }
    if tracing_subscriber::registry().with(layers).try_init().is_err() {
        tracing::debug!("telemetry already installed");
        return Ok(Telemetry::default());
    }
    if let Some(sdk) = &provider {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(sdk.clone());
        tracing::info!(otlp.endpoint = otlp_endpoint.unwrap_or_default(), "exporting traces");
    }
    Ok(Telemetry { provider })
}

/// Records the wall time of the spans in [`TIMED_SPANS`] (from creation to close) as histograms:
/// a pool checkout is the wait for a connection, a `db.lock` the `SELECT … FOR UPDATE` of a
/// meter's row (its lock wait plus one round trip).
struct SpanTimer;

struct Started(Instant);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanTimer {
    fn on_new_span(&self, _attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Started(Instant::now()));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(Started(started)) = span.extensions_mut().remove::<Started>() else { return };
        if let Some((_, metric)) = TIMED_SPANS.iter().find(|(name, _)| *name == span.name()) {
            metrics::histogram!(*metric).record(started.elapsed().as_secs_f64());
        }
    }
}

/// Serves `/metrics` in Prometheus format on `listen`. The recorder is process-global: the first
/// call installs it; later calls (more servers in one process) share it.
pub fn serve_metrics(listen: SocketAddr) -> anyhow::Result<()> {
    static INSTALLED: Mutex<Option<SocketAddr>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(first) = *installed {
        if first != listen {
            tracing::warn!(%listen, metrics.listen = %first, "metrics are already served on another address");
        }
        return Ok(());
    }
    const SECONDS_BUCKETS: [f64; 14] = [0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .install()?;
    describe();
    *installed = Some(listen);
    tracing::info!(%listen, "serving metrics");
    Ok(())
}

/// Help text for every metric Allot records.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("allot_decisions_total", "Decisions by rpc, outcome (allowed, denied) and reason");
    describe_histogram!("allot_rpc_duration_seconds", Unit::Seconds, "Server time per RPC by service, method and gRPC code");
    describe_histogram!("allot_debit_batch_size", "Debits decided in one group-committed transaction (a batch of one included)");
    describe_counter!(
        "allot_batch_connections_total",
        "Debit batches by where their connection came from: `lane` (polled by the batch, db::driven) or `pool` (a batch of 24 or more, or no lane connection free)"
    );
    describe_histogram!("allot_check_batch_size", "Checks decided by one batch on one shared snapshot (a batch of one included)");
    describe_gauge!("allot_db_pool_size", "PostgreSQL connections open in the pool");
    describe_gauge!("allot_db_pool_available", "Idle PostgreSQL connections in the pool");
    describe_gauge!("allot_db_pool_waiting", "Requests waiting for a PostgreSQL connection");
    describe_gauge!("allot_db_pool_max", "Most PostgreSQL connections the pool opens");
    describe_histogram!("allot_db_pool_wait_seconds", Unit::Seconds, "Wait for a pooled PostgreSQL connection");
    describe_histogram!("allot_db_lock_wait_seconds", Unit::Seconds, "Time to lock a meter's balance row (lock wait plus one round trip)");
    describe_gauge!("allot_db_up", "1 while the last PostgreSQL health probe succeeded");
    describe_counter!("allot_tenant_busy_total", "Calls refused with RESOURCE_EXHAUSTED: their tenant's concurrency limit was full");
    describe_counter!("allot_auth_refused_total", "Calls refused by the auth layer, by kind (unauthenticated, permission_denied)");
    describe_counter!("allot_redis_errors_total", "Redis failures by kind (rate, cooldown, connection)");
    describe_counter!(
        "allot_rate_store_failures_total",
        "Rate decisions made by a meter's failure policy (open, closed) because Redis did not answer"
    );
    describe_counter!("allot_cooldown_store_failures_total", "Classifier requests answered cooldown because Redis did not answer");
    describe_counter!(
        "allot_cooldown_answers_from_memory_total",
        "Classifier requests answered cooldown from a lock this server found held within the last second"
    );
    describe_counter!("allot_exhaustion_lookup_failures_total", "Classifier credit look-ups that failed");
    describe_gauge!("allot_hold_sweeper_lag_seconds", "Age of the oldest expired hold not yet voided, before each sweep");
    describe_counter!("allot_holds_swept_total", "Expired holds voided by the sweeper");
}

/// A decision was made: `outcome` is allowed or denied, `reason` the denial reason or "none".
/// Also noted on the current span (the RPC's), for traces.
pub fn count_decision(rpc: &'static str, outcome: &'static str, reason: &'static str) {
    metrics::counter!("allot_decisions_total", "rpc" => rpc, "outcome" => outcome, "reason" => reason).increment(1);
    let span = tracing::Span::current();
    span.record("allot.decision", outcome);
    span.record("allot.reason", reason);
}

/// The rate store could not answer and a meter's policy decided (`policy`: open or closed).
pub fn count_rate_store_failure(policy: &'static str) {
    metrics::counter!("allot_rate_store_failures_total", "policy" => policy).increment(1);
    count_redis_error("rate");
}

/// A classifier request was answered "cooldown" from a lock this server found held a moment ago.
pub fn count_cooldown_from_memory() {
    metrics::counter!("allot_cooldown_answers_from_memory_total").increment(1);
}

/// The classifier cooldown store could not answer (the request was answered "cooldown").
pub fn count_cooldown_store_failure() {
    metrics::counter!("allot_cooldown_store_failures_total").increment(1);
    count_redis_error("cooldown");
}

/// The credit look-up behind a classifier request failed (the account counted as not exhausted).
pub fn count_exhaustion_lookup_failure() {
    metrics::counter!("allot_exhaustion_lookup_failures_total").increment(1);
}

/// A Redis call or connection failed (`kind`: rate, cooldown, connection).
pub fn count_redis_error(kind: &'static str) {
    metrics::counter!("allot_redis_errors_total", "kind" => kind).increment(1);
}

/// A call refused because its tenant had no concurrency slot free (`auth::fairness`).
pub fn count_tenant_busy() {
    metrics::counter!("allot_tenant_busy_total").increment(1);
}

/// A call refused by the auth layer: `unauthenticated` or `permission_denied`.
pub fn count_auth_refused(kind: &'static str) {
    metrics::counter!("allot_auth_refused_total", "kind" => kind).increment(1);
}

/// The pool's state, sampled with each health probe.
pub fn record_pool(status: deadpool_postgres::Status, up: bool) {
    metrics::gauge!("allot_db_pool_size").set(status.size as f64);
    metrics::gauge!("allot_db_pool_available").set(status.available as f64);
    metrics::gauge!("allot_db_pool_waiting").set(status.waiting as f64);
    metrics::gauge!("allot_db_pool_max").set(status.max_size as f64);
    metrics::gauge!("allot_db_up").set(if up { 1.0 } else { 0.0 });
}

/// Before a sweep: how long the oldest expired hold has waited to be voided (0 when none).
pub fn record_sweeper_lag(lag: Duration, voided: u64) {
    metrics::gauge!("allot_hold_sweeper_lag_seconds").set(lag.as_secs_f64());
    metrics::counter!("allot_holds_swept_total").increment(voided);
}

/// A group-committed batch of debits: how many one transaction decided.
pub fn record_debit_batch(size: usize) {
    metrics::histogram!("allot_debit_batch_size").record(size as f64);
}

/// A tenant's batches of `kind` spread over all its lanes on this server (they were in one).
pub fn record_lanes_widened(kind: &'static str) {
    metrics::counter!("allot_batch_lanes_widened_total", "kind" => kind).increment(1);
}

/// A debit batch took its connection from `source`: `lane` or `pool`.
pub fn count_batch_connection(source: &'static str) {
    metrics::counter!("allot_batch_connections_total", "source" => source).increment(1);
}

/// A batch of checks decided on one snapshot; `size` is how many it decided.
pub fn record_check_batch(size: usize) {
    metrics::histogram!("allot_check_batch_size").record(size as f64);
}

/// One RPC finished (see [`rpc`]).
pub(crate) fn record_rpc(service: &str, method: &str, code: &'static str, elapsed: Duration) {
    metrics::histogram!("allot_rpc_duration_seconds", "service" => service.to_owned(), "method" => method.to_owned(), "code" => code)
        .record(elapsed.as_secs_f64());
}
