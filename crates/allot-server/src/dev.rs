//! `allot dev`: a complete throwaway local stack in one command. Starts PostgreSQL and Redis from
//! the system's binaries on free loopback ports, migrates, seeds the demo tenant, serves gRPC and
//! prints ready-to-paste `grpcurl` commands. Ctrl-C stops everything it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::localstack::{LocalPostgres, LocalRedis};
use crate::server::{serve, App};

/// Runs the local stack until Ctrl-C (or SIGTERM).
pub async fn run(listen: SocketAddr, data_root: Option<PathBuf>) -> anyhow::Result<()> {
    let root = data_root.unwrap_or_else(|| std::env::temp_dir().join(format!("allot-dev-{}", std::process::id())));
    std::fs::create_dir_all(&root)?;
    let stack_root = root.clone();
    let (mut postgres, mut redis) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let postgres = LocalPostgres::start(&stack_root)?;
        let redis = LocalRedis::start(&stack_root)?;
        Ok((postgres, redis))
    })
    .await??;
    tracing::info!(postgres.port = postgres.port(), redis.port = redis.port(), "local stack started");

    let result = serve_stack(listen, &postgres, &redis).await;
    postgres.stop();
    redis.stop();
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn serve_stack(listen: SocketAddr, postgres: &LocalPostgres, redis: &LocalRedis) -> anyhow::Result<()> {
    create_database(&postgres.dsn("postgres"), "allot").await?;
    let mut config = Config::with_database(postgres.dsn("allot"), Some(redis.url()));
    config.listen = listen;
    config.migrate = true;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = App::connect(config, clock.clone()).await?;
    let demo = crate::seed::demo(&app.ctx, clock.now()).await?;
    let charge = crate::seed::api_key(&app.ctx.pool, demo.tenant, "demo-charge", crate::auth::Role::Charge).await?;
    let check = crate::seed::api_key(&app.ctx.pool, demo.tenant, "demo-check", crate::auth::Role::Check).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let keys = Keys { admin: &demo.api_key, charge: &charge.key, check: &check.key };
    print_welcome(listener.local_addr()?, &keys, &postgres.dsn("allot"), &redis.url());
    serve(app, listener, shutdown_signal()).await
}

/// Creates a database unless it exists.
pub async fn create_database(admin_dsn: &str, name: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(admin_dsn, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some();
    if !exists {
        client.batch_execute(&format!("CREATE DATABASE \"{}\"", name.replace('"', ""))).await?;
    }
    drop(client);
    driver.abort();
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// The demo tenant's keys, one per role.
struct Keys<'a> {
    admin: &'a str,
    charge: &'a str,
    check: &'a str,
}

fn print_welcome(addr: SocketAddr, keys: &Keys<'_>, database: &str, redis: &str) {
    let auth = format!("-H 'authorization: Bearer {}'", keys.admin);
    let (admin_key, charge_key, check_key) = (keys.admin, keys.charge, keys.check);
    println!(
        r#"
Allot is running on {addr} (Ctrl-C stops it and the local PostgreSQL and Redis).
  database: {database}
  redis:    {redis}
  api key:  {admin_key}   (tenant "demo", role admin: everything)
  api key:  {charge_key}   (role charge: debit, reserve, commit, release, refund, reads)
  api key:  {check_key}   (role check: decisions and reads only)

Try it (grpcurl uses server reflection; no proto files needed):
  grpcurl -plaintext {addr} list
  grpcurl -plaintext {auth} -d '{{"account_id":"demo-free","meter":"tokens","amount_credits":1200}}' {addr} allot.v1.Entitlements/Check
  grpcurl -plaintext {auth} -d '{{"account_id":"demo-free","meter":"tokens","amount_credits":1200,"idempotency_key":"req-1"}}' {addr} allot.v1.Entitlements/Debit
  grpcurl -plaintext {auth} -d '{{"account_id":"demo-pro","meter":"tokens","amount_credits":5000,"ttl_ms":60000,"idempotency_key":"job-1"}}' {addr} allot.v1.Entitlements/Reserve
  grpcurl -plaintext {auth} -d '{{"account_id":"demo-free"}}' {addr} allot.v1.Admin/GetBalance
  grpcurl -plaintext {auth} -d '{{"account_id":"demo-free"}}' {addr} allot.v1.Admin/ListLedgerEntries
  grpcurl -plaintext {addr} grpc.health.v1.Health/Check
"#
    );
}
