//! Reports dependency health through `grpc.health.v1.Health`: `allot.v1.Entitlements` and
//! `allot.v1.Admin` are SERVING while PostgreSQL answers a probe within the interval and
//! NOT_SERVING otherwise (readiness). The whole server ("") stays SERVING while the process runs
//! (liveness: a database outage must not restart every replica), until shutdown.

use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The services whose status follows PostgreSQL.
pub const SERVICES: [&str; 3] = ["allot.v1.Entitlements", "allot.v1.Admin", "allot.v1.FairUse"];

/// Probes PostgreSQL every `interval` and updates `reporter` on each change until `shutdown`.
pub async fn run(pool: deadpool_postgres::Pool, reporter: HealthReporter, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut last = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        let healthy = probe(&pool, interval).await;
        if last != Some(healthy) {
            let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            if healthy {
                tracing::info!("database reachable, serving");
            } else {
                tracing::warn!("database unreachable, not serving");
            }
            last = Some(healthy);
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {
                for service in std::iter::once("").chain(SERVICES) {
                    reporter.set_service_status(service, ServingStatus::NotServing).await;
                }
                return;
            }
        }
    }
}

async fn probe(pool: &deadpool_postgres::Pool, timeout: Duration) -> bool {
    let attempt = async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(_)))
}
