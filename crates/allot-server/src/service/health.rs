//! Reports dependency health through `grpc.health.v1.Health`: `allot.v1.Entitlements`,
//! `allot.v1.Admin` and `allot.v1.FairUse` are SERVING while PostgreSQL answers a probe and
//! NOT_SERVING otherwise (readiness). The whole server ("") stays SERVING while the process runs
//! (liveness: a database outage must not restart every replica), until shutdown starts: then
//! every name turns NOT_SERVING at once, so load balancers stop sending calls while in-flight
//! ones drain. Redis is not a health dependency: rate caps follow their failure policy and money
//! never depends on it.
//!
//! Bounds: a probe runs every interval and gives up after min(interval, 800 ms), so with the
//! default 1 s interval an outage shows within 2 s and a recovery within 1 s of PostgreSQL
//! accepting connections again (no restart: the pool reconnects on its own). Each probe also
//! samples the request pool's gauges.
//!
//! The probe has a connection of its own (`probe_pool`, one connection): when every request
//! connection is queued behind a hot row lock, PostgreSQL is still healthy, and a probe that
//! waited in that queue would take the replica out of the load balancer for nothing.

use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The services whose status follows PostgreSQL.
pub const SERVICES: [&str; 3] = ["allot.v1.Entitlements", "allot.v1.Admin", "allot.v1.FairUse"];

/// Longest a probe may take before it counts as a failure.
pub const PROBE_TIMEOUT_MAX: Duration = Duration::from_millis(800);

/// Probes PostgreSQL every `interval` and updates `reporter` on each change until `shutdown`.
pub async fn run(
    pool: deadpool_postgres::Pool,
    probe_pool: deadpool_postgres::Pool,
    reporter: HealthReporter,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {
                for service in std::iter::once("").chain(SERVICES) {
                    reporter.set_service_status(service, ServingStatus::NotServing).await;
                }
                return;
            }
        }
        let probed = probe(&probe_pool, interval.min(PROBE_TIMEOUT_MAX)).await;
        let healthy = probed.is_ok();
        crate::telemetry::record_pool(pool.status(), healthy);
        if last != Some(healthy) {
            let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            match probed {
                Ok(()) => tracing::info!("database reachable, serving"),
                Err(reason) => tracing::warn!(error = %reason, "database unreachable, not serving"),
            }
            last = Some(healthy);
        }
    }
}

async fn probe(pool: &deadpool_postgres::Pool, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client.simple_query("SELECT 1").await.map(drop).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}
