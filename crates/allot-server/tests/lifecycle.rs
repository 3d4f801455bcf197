//! Life cycle: start-up refuses a PostgreSQL that could lose acknowledged commits unless allowed;
//! health follows PostgreSQL going away and coming back without a restart (NOT_SERVING within
//! 2 s, SERVING within 5 s); shutdown drains in-flight calls and is bounded by its grace window.
//! Servers that need their own PostgreSQL start one (`LocalPostgres`, stopped by its PID).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_server::clock::SystemClock;
use allot_server::config::Config;
use allot_server::localstack::LocalPostgres;
use allot_server::server::App;
use allot_server::testkit::TestServer;
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The bounds for health to follow PostgreSQL.
const DOWN_WITHIN: Duration = Duration::from_secs(2);
const UP_WITHIN: Duration = Duration::from_secs(5);
/// Longest wait for things that have no bound of their own (a guard against hanging).
const PATIENCE: Duration = Duration::from_secs(30);

/// A throwaway PostgreSQL of this test's own (not the shared stack) with `settings`, and a
/// database `allot` on it.
async fn own_postgres(settings: Vec<(&'static str, &'static str)>) -> (LocalPostgres, tempfile::TempDir) {
    let root = tempfile::Builder::new().prefix("allot-lifecycle-").tempdir().expect("temp dir");
    let path = root.path().to_owned();
    let postgres = tokio::task::spawn_blocking(move || LocalPostgres::start_with(&path, &settings)).await.expect("join").expect("start postgres");
    allot_server::dev::create_database(&postgres.dsn("postgres"), "allot").await.expect("create database");
    (postgres, root)
}

fn own_config(postgres: &LocalPostgres) -> Config {
    let mut config = Config::with_database(postgres.dsn("allot"), None);
    config.migrate = true;
    config
}

async fn health(channel: tonic::transport::Channel) -> ServingStatus {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: "allot.v1.Entitlements".into() })
        .await
        .map(|r| r.into_inner().status())
        .unwrap_or(ServingStatus::Unknown)
}

/// Polls health every 20 ms until it reports `wanted`; returns how long that took.
async fn until_health(channel: &tonic::transport::Channel, wanted: ServingStatus, give_up: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = health(channel.clone()).await;
        if status == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < give_up, "health still {status:?}, not {wanted:?}, after {give_up:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_durability_is_refused_unless_allowed() {
    for setting in [("fsync", "off"), ("synchronous_commit", "off")] {
        let (mut postgres, _root) = own_postgres(vec![setting]).await;
        let wanted = format!("{}={}", setting.0, setting.1);
        match App::connect(own_config(&postgres), Arc::new(SystemClock)).await {
            Ok(_) => panic!("started on a PostgreSQL with {wanted}"),
            Err(err) => {
                let message = format!("{err:#}");
                assert!(message.contains(&wanted) && message.contains("ALLOT_ALLOW_UNSAFE_DURABILITY"), "unclear refusal: {message}");
            }
        }
        // Explicitly allowed: it serves.
        let server = TestServer::start_on(postgres.dsn("allot"), time::OffsetDateTime::now_utc(), |c| {
            c.migrate = true;
            c.redis_url = None;
            c.allow_unsafe_durability = true;
        })
        .await;
        let (mut entitlements, mut admin) = server.clients().await;
        free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
        assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "k").await.decision));
        server.stop().await;
        tokio::task::block_in_place(|| postgres.stop());
    }

    // `synchronous_commit` set for one database on a safe server: refused too (checked per
    // connection, as a role or database setting applies there).
    let url = allot_server::testkit::fresh_database().await;
    let name = url.rsplit('/').next().expect("database name").to_owned();
    // As the login role (a superuser here), not the server's restricted role: ALTER DATABASE.
    let admin_config = Config { db_role: String::new(), ..Config::with_database(allot_server::testkit::stack().postgres.dsn("postgres"), None) };
    let admin = allot_server::db::pool(&admin_config).expect("pool");
    admin.get().await.expect("connect").batch_execute(&format!("ALTER DATABASE {name} SET synchronous_commit = off")).await.expect("alter");
    let refused = App::connect(Config::with_database(url, None), Arc::new(SystemClock)).await;
    assert!(refused.is_err_and(|e| format!("{e:#}").contains("synchronous_commit=off")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_postgres_away_and_back_without_a_restart() {
    let (mut postgres, _root) = own_postgres(Vec::new()).await;
    // Default health interval (1 s): the bounds must hold as shipped.
    let server = TestServer::start_on(postgres.dsn("allot"), time::OffsetDateTime::now_utc(), |c| {
        c.migrate = true;
        c.redis_url = None;
        c.db_pool_wait_ms = 500;
    })
    .await;
    assert_eq!(server.config.health_interval_ms, 1_000);
    let channel = server.channel().await;
    until_health(&channel, ServingStatus::Serving, PATIENCE).await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "before").await.decision));

    // PostgreSQL goes away (stopped by its PID).
    tokio::task::block_in_place(|| postgres.halt());
    let took = until_health(&channel, ServingStatus::NotServing, PATIENCE).await;
    println!("not serving {took:?} after postgres stopped");
    assert!(took <= DOWN_WITHIN, "NOT_SERVING only after {took:?}");
    let err = entitlements.debit(debit_req("acct", "tokens", 10, "during", pb::DebitMode::Gate)).await.expect_err("database down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // It comes back on the same port and data: the same server serves again.
    tokio::task::block_in_place(|| postgres.restart()).expect("restart postgres");
    let took = until_health(&channel, ServingStatus::Serving, PATIENCE).await;
    println!("serving {took:?} after postgres was back");
    assert!(took <= UP_WITHIN, "SERVING only after {took:?}");
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "after").await.decision));
    let used: i64 = server.sql().await.query_one("SELECT allowance_used_credits FROM meter_balances", &[]).await.expect("used").get(0);
    assert_eq!(used, 20, "the call made while PostgreSQL was down changed nothing");

    server.stop().await;
    tokio::task::block_in_place(|| postgres.stop());
}

/// Holds `acct`'s row lock on `tokens` and starts a debit that waits for it; returns the
/// connection holding the lock (inside its transaction) and the pending call.
async fn debit_waiting_on_a_lock(
    server: &TestServer,
) -> (deadpool_postgres::Client, tokio::task::JoinHandle<Result<pb::DebitResponse, tonic::Status>>) {
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "k0").await.decision));
    let blocker = server.sql().await;
    blocker.batch_execute("BEGIN; SELECT 1 FROM meter_balances WHERE account_id = 'acct' FOR UPDATE").await.expect("lock");
    let call =
        tokio::spawn(async move { entitlements.debit(debit_req("acct", "tokens", 5, "k1", pb::DebitMode::Gate)).await.map(|r| r.into_inner()) });
    let database = server.database_url.rsplit('/').next().expect("db name").to_owned();
    let started = Instant::now();
    loop {
        let waiting: i64 = blocker
            .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", &[&database])
            .await
            .expect("activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the debit never waited on the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (blocker, call)
}

/// Waits until the server's listener is closed (draining has begun).
async fn until_refusing(addr: std::net::SocketAddr) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(started.elapsed() < PATIENCE, "still accepting connections after the shutdown signal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_call_finish() {
    let mut server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.shutdown_grace_ms = 60_000;
        c.db_lock_timeout_ms = 60_000;
    })
    .await;
    let (blocker, call) = debit_waiting_on_a_lock(&server).await;
    let check = server.sql().await;

    server.begin_shutdown();
    until_refusing(server.addr).await;
    assert!(!call.is_finished(), "the call is still waiting for the lock");
    blocker.batch_execute("ROLLBACK").await.expect("unlock");

    let response = call.await.expect("task").expect("the in-flight call completes");
    assert!(allowed(response.decision));
    tokio::time::timeout(PATIENCE, server.stopped()).await.expect("serve returned").expect("serve ok");
    let entries: i64 = check.query_one("SELECT COUNT(*) FROM ledger_entries WHERE idempotency_key = 'k1'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_after_the_grace_window_even_with_calls_in_flight() {
    let mut server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.shutdown_grace_ms = 300;
        c.db_lock_timeout_ms = 60_000;
    })
    .await;
    let (blocker, call) = debit_waiting_on_a_lock(&server).await;

    server.begin_shutdown();
    tokio::time::timeout(PATIENCE, server.stopped()).await.expect("serve returned after its grace window").expect("serve ok");
    assert!(!call.is_finished(), "serve returned although the call was still running");
    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    let _ = call.await;
}
