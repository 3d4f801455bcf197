//! PostgreSQL faults under load, each checked against the history of every call:
//!
//! - `postgres_stopped_for_5_s_means_unavailable_then_recovery_without_a_restart`: PostgreSQL (a
//!   server of this test's own) is stopped by its PID for 5 s under 8 clients and started again
//!   on the same port and data. Every failed call says UNAVAILABLE (never INTERNAL), the same
//!   server serves again (its time to do so is printed), the history check is clean, and no
//!   session is left idle inside a transaction. (`lifecycle.rs` covers health during the outage.)
//! - `slow_postgres_every_call_ends_by_its_deadline`: every packet to and from PostgreSQL is
//!   delayed (a TCP proxy) for 4 s. Calls with a 500 ms client deadline end by it; calls without
//!   one end by the server's `request_timeout_ms`, answered DEADLINE_EXCEEDED; afterwards the
//!   history check is clean and no session is idle in a transaction.

mod common;

use std::time::{Duration, Instant};

use allot_server::clock::Clock;
use allot_server::faults::history::{self, Expect, History, Report};
use allot_server::faults::proxy::{FaultProxy, Mode};
use allot_server::faults::workload::{self, Options, Stop};
use allot_server::localstack::LocalPostgres;
use allot_server::testkit::TestServer;

const ALLOWANCE_CREDITS: i64 = 50_000;
const DEBT_LIMIT_CREDITS: i64 = 1_000;
/// Longest wait for anything without a bound of its own.
const PATIENCE: Duration = Duration::from_secs(60);

async fn own_postgres() -> (LocalPostgres, tempfile::TempDir) {
    let root = tempfile::Builder::new().prefix("allot-faults-").tempdir().expect("temp dir");
    let path = root.path().to_owned();
    let postgres = tokio::task::spawn_blocking(move || LocalPostgres::start(&path)).await.expect("join").expect("start postgres");
    allot_server::dev::create_database(&postgres.dsn("postgres"), "allot").await.expect("create database");
    (postgres, root)
}

async fn check(server: &TestServer, history: &History) -> Report {
    let db = server.sql().await;
    let report = history::check(history, &db, &Expect { debt_limit_credits: DEBT_LIMIT_CREDITS, now: server.clock.now() }).await.expect("check");
    println!("{report}");
    report
}

/// Sessions of `database` idle inside a transaction, after up to `within` for them to finish;
/// read through `dsn` (a direct connection, not the server's pool).
async fn idle_in_transaction(dsn: &str, database: &str, within: Duration) -> i64 {
    let (db, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let started = Instant::now();
    let stuck = loop {
        let stuck: i64 = db
            .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'", &[&database])
            .await
            .expect("pg_stat_activity")
            .get(0);
        if stuck == 0 || started.elapsed() >= within {
            break stuck;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    driver.abort();
    stuck
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_5_s_means_unavailable_then_recovery_without_a_restart() {
    const OUTAGE: Duration = Duration::from_secs(5);
    let (mut postgres, _root) = own_postgres().await;
    let server = TestServer::start_on(postgres.dsn("allot"), time::OffsetDateTime::now_utc(), |c| {
        c.migrate = true;
        c.db_pool_wait_ms = 500;
    })
    .await;
    let (_, mut admin) = server.clients().await;
    admin.upsert_plan(workload::plan_request("tokens", ALLOWANCE_CREDITS, DEBT_LIMIT_CREDITS)).await.expect("plan");
    let client = workload::client(server.channel().await, &server.tenant.api_key);
    let history = History::new();
    let stop = Stop::new();
    // Retries outlast the outage: 300 attempts 100 ms apart.
    let options = Options { clients: 8, operations_per_client: None, attempts_max: 300, prefix: "pg".into(), ..Options::default() };
    let load = tokio::spawn(workload::run(client.clone(), options, history.clone(), stop.clone()));

    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| postgres.halt());
    tokio::time::sleep(OUTAGE).await;
    tokio::task::block_in_place(|| postgres.restart()).expect("restart postgres");
    let back = Instant::now();
    let mut probe = client.clone();
    loop {
        let check = allot_proto::v1::CheckRequest { account_id: "probe".into(), meter: "tokens".into(), amount_credits: 1, ..Default::default() };
        if probe.check(check).await.is_ok() {
            break;
        }
        assert!(back.elapsed() < PATIENCE, "the server never recovered from the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("serving {:?} after postgres was back (same server, no restart)", back.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.stop();
    tokio::time::timeout(PATIENCE, load).await.expect("workload stopped").expect("workload");

    let report = check(&server, &history).await;
    report.assert_clean();
    let failures: Vec<&String> = report.codes.keys().filter(|k| !matches!(k.as_str(), "ok" | "denied")).collect();
    assert_eq!(failures, vec!["Unavailable"], "every failed call says UNAVAILABLE: {:?}", report.codes);
    assert!(report.codes["Unavailable"] > 0, "the outage was seen");
    println!("slowest UNAVAILABLE: {:?}", history.slowest("Unavailable"));
    assert_eq!(idle_in_transaction(&postgres.dsn("postgres"), "allot", Duration::from_secs(10)).await, 0);
    server.stop().await;
    tokio::task::block_in_place(|| postgres.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_postgres_every_call_ends_by_its_deadline() {
    const CLIENT_DEADLINE: Duration = Duration::from_millis(500);
    const SERVER_TIMEOUT_MS: u64 = 1_500;
    // Scheduling slack on a loaded 2-core machine, on top of each deadline.
    const SLACK: Duration = Duration::from_millis(1_000);
    let stack = allot_server::testkit::stack();
    let direct = allot_server::testkit::fresh_database().await;
    let database = direct.rsplit('/').next().expect("db name").to_owned();
    let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], stack.postgres.port()))).await.expect("proxy");
    let via_proxy = direct.replace(&format!(":{}/", stack.postgres.port()), &format!(":{}/", proxy.addr().port()));
    let server = TestServer::start_on(via_proxy, time::OffsetDateTime::now_utc(), |c| c.request_timeout_ms = SERVER_TIMEOUT_MS).await;
    let (_, mut admin) = server.clients().await;
    admin.upsert_plan(workload::plan_request("tokens", ALLOWANCE_CREDITS, DEBT_LIMIT_CREDITS)).await.expect("plan");
    let client = workload::client(server.channel().await, &server.tenant.api_key);
    let history = History::new();
    let stop = Stop::new();
    let short = Options {
        clients: 4,
        operations_per_client: None,
        attempt_timeout: CLIENT_DEADLINE,
        attempts_max: 300,
        prefix: "short".into(),
        ..Options::default()
    };
    // No useful client deadline: the server's request timeout must end these calls.
    let long = Options { attempt_timeout: Duration::from_secs(30), prefix: "long".into(), seed: 2, ..short.clone() };
    let loads = [
        tokio::spawn(workload::run(client.clone(), short, history.clone(), stop.clone())),
        tokio::spawn(workload::run(client.clone(), long, history.clone(), stop.clone())),
    ];
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Mode::Delay(Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Mode::Pass);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.stop();
    for load in loads {
        tokio::time::timeout(PATIENCE, load).await.expect("workload stopped").expect("workload");
    }

    // The two workloads share one history (one database); their keys tell them apart.
    let operations = history.operations();
    let of = |prefix: &'static str| operations.iter().filter(move |op| op.account.starts_with(prefix));
    let slowest = |prefix: &'static str| of(prefix).flat_map(|op| op.attempts.iter().map(|a| a.elapsed)).max().unwrap_or_default();
    let codes = |prefix: &'static str| {
        let mut codes = std::collections::BTreeMap::new();
        for a in of(prefix).flat_map(|op| &op.attempts) {
            *codes.entry(a.attempt.label()).or_insert(0) += 1;
        }
        codes
    };
    let (short_max, long_max) = (slowest("short"), slowest("long"));
    println!("slowest call: {short_max:?} with a {CLIENT_DEADLINE:?} client deadline, {long_max:?} under a {SERVER_TIMEOUT_MS} ms server timeout");
    println!("client-deadline calls: {:?}\nserver-timeout calls: {:?}", codes("short"), codes("long"));
    assert!(short_max <= CLIENT_DEADLINE + SLACK, "a call outlived its deadline: {short_max:?}");
    assert!(long_max <= Duration::from_millis(SERVER_TIMEOUT_MS) + SLACK, "a call outlived the server's request timeout: {long_max:?}");
    // A client deadline ends by tonic's own timer, which says CANCELLED ("Timeout expired") on the
    // client and the server alike (docs/reliability.md); other gRPC clients say DEADLINE_EXCEEDED.
    let short_codes = codes("short");
    assert!(short_codes.contains_key("Cancelled") || short_codes.contains_key("DeadlineExceeded"), "{short_codes:?}");
    let other: Vec<&String> = short_codes.keys().filter(|k| !matches!(k.as_str(), "ok" | "denied" | "Cancelled" | "DeadlineExceeded")).collect();
    assert!(other.is_empty(), "only deadlines expire: {short_codes:?}");
    // The server's own bound answers DEADLINE_EXCEEDED with its reason, never CANCELLED.
    let long_codes = codes("long");
    let other: Vec<&String> = long_codes.keys().filter(|k| !matches!(k.as_str(), "ok" | "denied" | "DeadlineExceeded")).collect();
    assert!(long_codes.contains_key("DeadlineExceeded") && other.is_empty(), "the server's timeout is DEADLINE_EXCEEDED: {long_codes:?}");
    let reasons: std::collections::BTreeSet<String> = of("long")
        .flat_map(|op| &op.attempts)
        .filter_map(|a| match &a.attempt {
            history::Attempt::Unknown { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.into_iter().collect::<Vec<_>>(), vec!["DEADLINE_EXCEEDED".to_owned()]);

    check(&server, &history).await.assert_clean();
    assert_eq!(idle_in_transaction(&stack.postgres.dsn("postgres"), &database, Duration::from_secs(10)).await, 0);
}
