//! Assembles and runs the gRPC server: Entitlements and Admin, health, reflection (v1 and
//! v1alpha), message-size and time limits, and the background tasks (health probe, hold sweeper).
//! `serve` takes a bound listener, so tests start it on `127.0.0.1:0`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use allot_proto::v1::admin_server::AdminServer;
use allot_proto::v1::entitlements_server::EntitlementsServer;
use allot_proto::v1::fair_use_server::FairUseServer;
use allot_proto::v1::pricing_server::PricingServer;
use allot_proto::v1::subsidy_server::SubsidyServer;
use tokio::net::TcpListener;

use crate::auth::fairness::TenantLimiter;
use crate::auth::layer::{AuthLayer, Gate};
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Config;
use crate::grpc::admin::AdminApi;
use crate::grpc::entitlements::EntitlementsApi;
use crate::grpc::fair_use::FairUseApi;
use crate::grpc::pricing::PricingApi;
use crate::grpc::streams::Streams;
use crate::grpc::subsidy::SubsidyApi;
use crate::service::admin::Admin;
use crate::service::classification::Classifier;
use crate::service::credits::Credits;
use crate::service::pools::Pools;
use crate::service::pricing::Pricing;
use crate::service::rate::RateLimiter;
use crate::service::summary::Reports;
use crate::service::trials::Trials;
use crate::service::{health, sweeper, Ctx};

/// A connected server, ready to serve.
pub struct App {
    pub config: Config,
    pub ctx: Ctx,
    /// Authentication, the authorization table and per-tenant limits, in front of every service.
    pub gate: Arc<Gate>,
    /// TLS (and mTLS) with reloadable certificates, when configured.
    pub tls: Option<Arc<crate::tls::Reloadable>>,
    /// Cooldown locks and rate counters live here; never money.
    pub redis: Option<fred::prelude::Client>,
}

impl App {
    /// Validates the configuration, builds the pool (lazily connecting), refuses a database that
    /// could lose acknowledged commits (see `db::check_durability`), migrates when configured,
    /// and connects Redis.
    pub async fn connect(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
        config.validate()?;
        let (pool, lanes) = crate::db::pools(&config)?;
        // Probed as the login role: the server's own role may not exist before migrating.
        let probe = crate::db::pool(&Config { db_role: String::new(), db_pool_size_max: 1, ..config.clone() })?;
        crate::db::check_durability(&probe, config.allow_unsafe_durability).await?;
        drop(probe);
        if config.migrate {
            let applied = crate::db::migrate(&config.database_url).await?;
            tracing::info!(migrations.applied = applied.len(), "database migrated");
        }
        let redis = match &config.redis_url {
            Some(url) => Some(connect_redis(url, config.redis_cluster).await?),
            None => None,
        };
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::Reloadable::load(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca_file.clone(),
                client_cert_optional: config.tls_client_cert_optional,
                identities: config.tls_identities_file.clone(),
            })?),
            _ => None,
        };
        let certs = tls.as_ref().filter(|_| config.tls_client_ca_file.is_some()).map(|t| t.identities.clone());
        let authenticator = Authenticator::from_config(&config, pool.clone(), certs)?;
        let limiter = TenantLimiter::new(
            usize::try_from(config.tenant_concurrency_max)?,
            usize::try_from(config.tenant_queue_max)?,
            Duration::from_millis(config.tenant_queue_wait_ms),
        );
        let gate = Arc::new(Gate { authenticator, limiter });
        let ctx = Ctx { lanes: lanes.map(|pool| Arc::new(crate::db::driven::Lanes::new(pool))), ..Ctx::new(pool, clock) };
        Ok(App { config, ctx, gate, tls, redis })
    }
}

/// The Redis client configuration of `url`: a cluster when `cluster` is set or the scheme says so
/// (`redis-cluster://host:port?node=host2:port2`), one server otherwise.
pub fn redis_config(url: &str, cluster: bool) -> Result<fred::prelude::Config, fred::error::Error> {
    if cluster {
        fred::prelude::Config::from_url_clustered(url)
    } else {
        fred::prelude::Config::from_url(url)
    }
}

/// The oldest Redis major version whose `SET` takes `NX` and `GET` together.
const REDIS_MAJOR_MIN: u64 = 7;

/// Connects Redis in the background. Start-up does not wait for it: until it answers, rate caps
/// follow their failure policy (money never depends on Redis). Connection errors are counted.
async fn connect_redis(url: &str, cluster: bool) -> anyhow::Result<fred::prelude::Client> {
    use fred::prelude::*;
    let client = Builder::from_config(redis_config(url, cluster)?)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_millis(500);
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(250))
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build()?;
    let _errors = client.on_error(|(error, server)| async move {
        crate::telemetry::count_redis_error("connection");
        tracing::debug!(error = %error, redis.server = ?server.map(|s| s.to_string()), "redis connection error");
        Ok(())
    });
    let _connection = client.connect();
    match tokio::time::timeout(Duration::from_secs(2), client.wait_for_connect()).await {
        Ok(Ok(())) => match client.server_version() {
            // The classifier's cooldown lock is one `SET … NX GET` (service/classification.rs).
            Some(version) if version.major < REDIS_MAJOR_MIN => tracing::warn!(
                redis.version = %version,
                "redis is older than {REDIS_MAJOR_MIN}.0: classifier requests will answer COOLDOWN (SET with NX and GET is refused)"
            ),
            version => tracing::info!(redis.version = ?version.map(|v| v.to_string()), "redis connected"),
        },
        Ok(Err(err)) => tracing::warn!(error = %err, "redis unreachable, rate caps follow their failure policy"),
        Err(_) => tracing::warn!("redis not connected after 2 s, rate caps follow their failure policy"),
    }
    Ok(client)
}

/// Serves until `shutdown` completes, then drains: health turns NOT_SERVING, no new calls are
/// accepted, in-flight calls get up to `shutdown_grace_ms` to finish (calls still running then are
/// cut off; their detached transactions commit or roll back as a whole), then background tasks
/// stop.
pub async fn serve(app: App, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let config = &app.config;
    if let Some(listen) = config.metrics_listen {
        crate::telemetry::serve_metrics(listen)?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // The probe's own connection: a queue of requests behind a hot row must not fail readiness.
    let probe_pool = crate::db::pool(&Config { db_pool_size_max: 1, ..config.clone() })?;
    let health_interval = Duration::from_millis(config.health_interval_ms);
    let health_task = tokio::spawn(health::run(app.ctx.pool.clone(), probe_pool, reporter, health_interval, draining_rx.clone()));
    let pricing = Pricing::new(app.ctx.clone());
    let pricing_task = tokio::spawn(crate::service::pricing::listen(pricing.clone(), config.database_url.clone(), stop_rx.clone()));
    let sweeper_task = tokio::spawn(sweeper::run(app.ctx.clone(), Duration::from_millis(config.hold_sweep_interval_ms), stop_rx.clone()));

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let max_message_bytes = usize::try_from(config.max_message_bytes)?;
    let rate = RateLimiter::new(app.redis.clone(), Duration::from_millis(config.redis_timeout_ms));
    let streams = Streams::new(app.gate.clone(), Duration::from_millis(config.request_timeout_ms), draining_rx.clone());
    let check_batch_workers = config.check_batching.then(|| usize::try_from(config.check_batch_workers)).transpose()?;
    let entitlements = EntitlementsServer::new(EntitlementsApi {
        credits: Credits::new(app.ctx.clone(), rate, pricing.clone(), usize::try_from(config.debit_batch_workers)?, check_batch_workers),
        reports: Reports::new(app.ctx.clone()),
        streams: streams.clone(),
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let classifier = Classifier::new(app.ctx.clone(), app.redis.clone(), Duration::from_millis(config.redis_timeout_ms));
    let fair_use = FairUseServer::new(FairUseApi { classifier, ctx: app.ctx.clone(), streams })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let admin = AdminServer::new(AdminApi { admin: Admin::new(app.ctx.clone()), trials: Trials::new(app.ctx.clone()) })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let pricing_api = PricingServer::new(PricingApi { pricing: pricing.clone() })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let subsidy_api = SubsidyServer::new(SubsidyApi { pools: Pools::new(app.ctx.clone()) })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);

    tracing::info!(listen = %listener.local_addr()?, "serving grpc");
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let signalled = async move {
        shutdown.await;
        tracing::info!(shutdown.grace_ms = grace.as_millis() as u64, "draining in-flight calls");
        let _ = draining_tx.send(true);
    };
    // Probes that cannot speak TLS get the health service alone, in plaintext.
    let health_only = match config.health_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(listen = %listener.local_addr()?, "serving grpc health in plaintext");
            let mut stop = stop_rx.clone();
            let router = tonic::transport::Server::builder().add_service(health_service.clone());
            Some(tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })))
        }
        None => None,
    };
    let tls_task = app.tls.clone().map(|tls| tokio::spawn(tls.watch(Duration::from_millis(config.tls_reload_interval_ms), stop_rx.clone())));
    let router = tonic::transport::Server::builder()
        .layer(crate::telemetry::rpc::RpcLayer)
        .layer(crate::grpc::deadline::DeadlineLayer::new(Duration::from_millis(config.request_timeout_ms)))
        .layer(AuthLayer(app.gate.clone()))
        .concurrency_limit_per_connection(1_024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(entitlements)
        .add_service(admin)
        .add_service(fair_use)
        .add_service(pricing_api)
        .add_service(subsidy_api);
    let tls = app.tls.clone();
    let server = async move {
        match &tls {
            Some(tls) => router.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls.clone()), signalled).await,
            None => router.serve_with_incoming_shutdown(incoming(listener), signalled).await,
        }
    };
    let result = tokio::select! {
        result = server => result,
        () = drain_window(draining_rx, grace) => {
            tracing::warn!(shutdown.grace_ms = grace.as_millis() as u64, "drain window over, stopping with calls still in flight");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let _ = tokio::join!(health_task, sweeper_task);
    let _ = pricing_task.await;
    if let Some(task) = tls_task {
        let _ = task.await;
    }
    if let Some(task) = health_only {
        let _ = task.await;
    }
    if let Some(redis) = &app.redis {
        use fred::interfaces::ClientLike as _;
        let _ = redis.quit().await;
    }
    tracing::info!("server stopped");
    Ok(result?)
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on listeners it binds itself, and
/// without it small replies wait for the client's delayed ACK (~40 ms a call).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Completes `grace` after draining starts.
async fn drain_window(mut draining: tokio::sync::watch::Receiver<bool>, grace: Duration) {
    if draining.wait_for(|draining| *draining).await.is_err() {
        // The server finished without a signal; the other branch wins.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(allot_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
