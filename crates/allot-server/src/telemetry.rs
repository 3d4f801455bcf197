//! Logging set-up (structured JSON in production, human-readable text in `dev`; the level comes
//! from `RUST_LOG`, default `info`) and the metrics Allot counts, served in Prometheus format
//! when a metrics address is configured.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Serves `/metrics` in Prometheus format on `listen`.
pub fn serve_metrics(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(listen).install()?;
    tracing::info!(%listen, "serving metrics");
    Ok(())
}

/// A decision was made: `outcome` is allowed or denied, `reason` the denial reason or "none".
pub fn count_decision(rpc: &'static str, outcome: &'static str, reason: &'static str) {
    metrics::counter!("allot_decisions_total", "rpc" => rpc, "outcome" => outcome, "reason" => reason).increment(1);
}

/// The rate store could not answer and a meter's policy decided (`policy`: open or closed).
pub fn count_rate_store_failure(policy: &'static str) {
    metrics::counter!("allot_rate_store_failures_total", "policy" => policy).increment(1);
}

/// The classifier cooldown store could not answer (the request was answered "cooldown").
pub fn count_cooldown_store_failure() {
    metrics::counter!("allot_cooldown_store_failures_total").increment(1);
}

/// The credit look-up behind a classifier request failed (the account counted as not exhausted).
pub fn count_exhaustion_lookup_failure() {
    metrics::counter!("allot_exhaustion_lookup_failures_total").increment(1);
}
