//! What clients see when things go wrong: deadlines shorter than a lock wait, and a database
//! that cannot be reached. Nothing is half-written and no connection is left inside a
//! transaction.

mod common;

use std::sync::Arc;
use std::time::Duration;

use allot_proto::v1 as pb;
use allot_server::clock::SystemClock;
use allot_server::config::Config;
use allot_server::server::{serve, App};
use allot_server::testkit::TestServer;
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shorter_than_a_lock_wait_never_half_writes() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    debit(&mut entitlements, "acct", "tokens", 10, "k0").await;

    // Someone else holds the meter's row lock.
    let mut blocker = server.sql().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.execute("SELECT 1 FROM meter_balances WHERE account_id = 'acct' FOR UPDATE", &[]).await.expect("lock");

    let mut request = tonic::Request::new(debit_req("acct", "tokens", 5, "k1", pb::DebitMode::Gate));
    request.set_timeout(Duration::from_millis(200));
    let err = entitlements.debit(request).await.expect_err("deadline");
    assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "got {err:?}");

    lock.rollback().await.expect("unlock");
    // The detached call finishes on its own; the retry gets its outcome exactly once.
    let retried = debit(&mut entitlements, "acct", "tokens", 5, "k1").await;
    assert!(allowed(retried.decision));
    let db = server.sql().await;
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE idempotency_key = 'k1'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 1);
    let used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances", &[]).await.expect("used").get(0);
    assert_eq!(used, 15);

    // No session of this database is left idle inside a transaction.
    let database = server.database_url.rsplit('/').next().expect("db name").to_owned();
    let mut stuck: i64 = -1;
    for _ in 0..50 {
        stuck = db
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .expect("activity")
            .get(0);
        if stuck == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stuck, 0);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_means_unavailable_and_not_serving() {
    let closed_port = allot_server::localstack::free_port().expect("port");
    let mut config = Config::with_database(format!("postgresql://allot@127.0.0.1:{closed_port}/allot"), None);
    config.db_pool_wait_ms = 200;
    config.health_interval_ms = 100;
    let app = App::connect(config, Arc::new(SystemClock)).await.expect("connect is lazy");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(app, listener, async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
    let mut health = HealthClient::new(channel.clone());
    let mut status = ServingStatus::Unknown;
    for _ in 0..100 {
        status = health
            .check(HealthCheckRequest { service: "allot.v1.Entitlements".into() })
            .await
            .map(|r| r.into_inner().status())
            .unwrap_or(ServingStatus::Unknown);
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);

    let mut client = allot_proto::v1::entitlements_client::EntitlementsClient::new(channel);
    let mut request = tonic::Request::new(pb::CheckRequest { account_id: "a".into(), meter: "m".into(), amount_credits: 1, ..Default::default() });
    request.metadata_mut().insert("authorization", "Bearer allot_abc".parse().expect("ascii"));
    let err = client.check(request).await.expect_err("no database");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "DEPENDENCY_UNAVAILABLE");
    // So does a debit.
    let mut request = tonic::Request::new(debit_req("a", "m", 1, "no-database", pb::DebitMode::Gate));
    request.metadata_mut().insert("authorization", "Bearer allot_abc".parse().expect("ascii"));
    let err = client.debit(request).await.expect_err("no database");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "DEPENDENCY_UNAVAILABLE");

    let _ = stop.send(());
    task.await.expect("task").expect("serve");
}
