//! Reports dependency health through `grpc.health.v1.Health`: every service is SERVING while
//! PostgreSQL answers a probe within the interval, NOT_SERVING otherwise.

use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The names reported: the whole server ("") and each gRPC service.
pub const SERVICES: [&str; 3] = ["", "allot.v1.Entitlements", "allot.v1.Admin"];

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
                for service in SERVICES {
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
