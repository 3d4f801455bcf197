//! Scale-out: Allot's replicas are stateless, so several of them against one PostgreSQL (and one
//! Redis) must keep every concurrency invariant. Each replica here is a server of its own (`App`
//! and `serve`: its own pool, Redis connection, listener, health probe and hold sweeper) on the
//! same database URL, as separate processes would be; calls are spread over them. Then the same
//! with Redis Cluster: a local 3-master cluster (started here, stopped by its PIDs) holds the
//! rate counters and the classifier cooldown locks, through fred's cluster mode.

mod common;

use allot_proto::v1 as pb;
use allot_server::localstack::LocalRedisCluster;
use allot_server::testkit::{Admin, Entitlements, FairUse, TestServer};
use common::*;
use time::macros::datetime;

const REPLICAS: usize = 3;

/// The primary and `REPLICAS - 1` replicas of it, each `tweak`ed.
async fn replicas(primary: TestServer, tweak: impl Fn(&mut allot_server::config::Config)) -> Vec<TestServer> {
    let mut servers = vec![primary];
    for _ in 1..REPLICAS {
        let replica = servers[0].replica(&tweak).await;
        servers.push(replica);
    }
    servers
}

async fn entitlements_of(servers: &[TestServer]) -> Vec<Entitlements> {
    let mut clients = Vec::new();
    for server in servers {
        clients.push(server.clients().await.0);
    }
    clients
}

async fn rated_plan(admin: &mut Admin, per_minute: i64) {
    let rated = |name: &str| pb::MeterAllowance {
        meter: name.into(),
        rate_limit_per_minute: Some(per_minute),
        rate_failure_policy: pb::RateFailurePolicy::FailClosed as i32,
        ..Default::default()
    };
    admin
        .upsert_plan(pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: "free".into(),
                tier: "free".into(),
                name: "Free".into(),
                meters: vec![rated("requests"), rated("tokens")],
                is_free_default: true,
                ..Default::default()
            }),
        })
        .await
        .expect("plan");
}

fn two_meters(account: &str, key: &str) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: account.into(),
        usage: vec![
            pb::MeterAmount { meter: "requests".into(), amount_credits: 1, ..Default::default() },
            pb::MeterAmount { meter: "tokens".into(), amount_credits: 1, ..Default::default() },
        ],
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// 100 concurrent two-meter debits of one account spread over `clients`: how many got through
/// through each client (every refusal must be a rate limit).
async fn burst(clients: &[Entitlements], account: &str) -> Vec<usize> {
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut client = clients[i % clients.len()].clone();
        let request = two_meters(account, &format!("{account}-{i}"));
        tasks.push(tokio::spawn(async move { client.debit(request).await.expect("debit").into_inner() }));
    }
    let mut admitted = vec![0; clients.len()];
    for (i, task) in tasks.into_iter().enumerate() {
        let response = task.await.expect("task");
        if allowed(response.decision) {
            admitted[i % clients.len()] += 1;
        } else {
            assert_eq!(response.reason, pb::DenialReason::RateLimited as i32, "{response:?}");
        }
    }
    admitted
}

async fn stop_all(servers: Vec<TestServer>) {
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_one_database_never_overdraw() {
    let servers = replicas(TestServer::start().await, |_| {}).await;
    let clients = entitlements_of(&servers).await;
    let (_, mut admin) = servers[0].clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    // 64 debits of 30 against 1,000, spread over the replicas: exactly 33 fit.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut client = clients[i % REPLICAS].clone();
        tasks.push(tokio::spawn(async move { debit(&mut client, "acct", "tokens", 30, &format!("k{i}")).await }));
    }
    let mut admitted = 0;
    for task in tasks {
        let response = task.await.expect("task");
        if allowed(response.decision) {
            admitted += 1;
        } else {
            assert_eq!(response.reason, pb::DenialReason::InsufficientCredit as i32);
        }
    }
    assert_eq!(admitted, 33);
    for client in &clients {
        let status = check(&mut client.clone(), "acct", "tokens", 0).await.meter.expect("meter");
        assert_eq!((status.used_credits, status.available_credits), (990, Some(10)), "every replica sees the same balance");
    }
    let db = servers[0].sql().await;
    let debits: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(debits, 33, "one entry per admitted debit");
    assert_eq!(assert_ledger_explains_balances(&servers[0]).await, 1);
    stop_all(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_replaying_one_key_write_one_entry() {
    let servers = replicas(TestServer::start().await, |_| {}).await;
    let clients = entitlements_of(&servers).await;
    let (_, mut admin) = servers[0].clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = clients[i % REPLICAS].clone();
        tasks.push(tokio::spawn(async move { debit(&mut client, "acct", "tokens", 7, "same-key").await }));
    }
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.expect("task"));
    }
    assert!(allowed(responses[0].decision));
    assert!(responses.iter().all(|r| *r == responses[0]), "every replica answers every replay identically");
    let db = servers[0].sql().await;
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 1);
    let used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances", &[]).await.expect("used").get(0);
    assert_eq!(used, 7);
    assert_ledger_explains_balances(&servers[0]).await;
    stop_all(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_rate_cap_through_redis() {
    let servers = replicas(TestServer::start_at(datetime!(2026-03-10 12:00 UTC)).await, |_| {}).await;
    let clients = entitlements_of(&servers).await;
    let (_, mut admin) = servers[0].clients().await;
    rated_plan(&mut admin, 30).await;
    let admitted = burst(&clients, "acct").await;
    assert_eq!(admitted.iter().sum::<usize>(), 30, "one burst for the account, however many replicas: {admitted:?}");
    stop_all(servers).await;
}

async fn classification(fair: &mut FairUse, account: &str) -> i32 {
    fair.request_classification(pb::RequestClassificationRequest { account_id: account.into() }).await.expect("request").into_inner().verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_holds_rate_caps_and_cooldowns() {
    let root = tempfile::Builder::new().prefix("allot-cluster-").tempdir().expect("temp dir");
    let path = root.path().to_owned();
    let mut cluster = tokio::task::spawn_blocking(move || LocalRedisCluster::start(&path, 3)).await.expect("join").expect("start redis cluster");

    // One replica with a `redis-cluster://` URL, one with a seed node and ALLOT_REDIS_CLUSTER.
    let cluster_url = cluster.url();
    let primary = TestServer::start_with(datetime!(2026-03-10 12:00 UTC), |c| c.redis_url = Some(cluster_url)).await;
    let seed_url = cluster.seed_url();
    let replica = primary
        .replica(|c| {
            c.redis_url = Some(seed_url);
            c.redis_cluster = true;
        })
        .await;
    let servers = vec![primary, replica];
    let clients = entitlements_of(&servers).await;
    let (_, mut admin) = servers[0].clients().await;
    rated_plan(&mut admin, 30).await;

    // Rate caps: both meters in one script (their keys share the account's hash tag), fail
    // closed, so a cross-slot or misrouted call would refuse everything.
    let admitted = burst(&clients, "acct").await;
    assert_eq!(admitted.iter().sum::<usize>(), 30, "{admitted:?}");
    assert!(admitted.iter().all(|n| *n > 0), "both replicas reach the cluster: {admitted:?}");
    // Many accounts spread their counters over the cluster's nodes.
    for i in 0..24 {
        let response = clients[i % 2].clone().debit(two_meters(&format!("spread-{i}"), &format!("s{i}"))).await.expect("debit").into_inner();
        assert!(allowed(response.decision), "{response:?}");
    }
    let keys = cluster.keys_per_node();
    assert!(keys.iter().all(Option::is_some), "every node answers: {keys:?}");
    assert!(keys.iter().filter(|k| k.unwrap_or(0) > 0).count() >= 2, "keys on several nodes: {keys:?}");

    // Classifier cooldowns: 60 concurrent requests over both replicas get exactly one run.
    let fair: Vec<FairUse> =
        vec![servers[0].fair_use_for(&servers[0].tenant.api_key).await, servers[1].fair_use_for(&servers[1].tenant.api_key).await];
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut client = fair[i % 2].clone();
        tasks.push(tokio::spawn(async move { classification(&mut client, "acct").await }));
    }
    let mut runs = 0;
    for task in tasks {
        let verdict = task.await.expect("task");
        if verdict == pb::ClassificationVerdict::Run as i32 {
            runs += 1;
        } else {
            assert_eq!(verdict, pb::ClassificationVerdict::Cooldown as i32);
        }
    }
    assert_eq!(runs, 1);

    stop_all(servers).await;
    tokio::task::block_in_place(|| cluster.stop());
}

/// Checks of `accounts` sent all at once (so that they share batches): each one's limit and
/// whether a soft cap was triggered, in order.
async fn checks_at_once(client: &Entitlements, accounts: &[String], amount: i64) -> Vec<(bool, Option<i64>, bool)> {
    let mut tasks = Vec::new();
    for account in accounts {
        let (mut client, account) = (client.clone(), account.clone());
        tasks.push(tokio::spawn(async move { check(&mut client, &account, "tokens", amount).await }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        let answer = task.await.expect("task");
        let limit = answer.meters.first().and_then(|m| m.meter.as_ref()).and_then(|m| m.limit_credits);
        let capped = !answer.fair_use.as_ref().expect("fair use").soft_caps_triggered.is_empty();
        answers.push((allowed(answer.decision), limit, capped));
    }
    answers
}

fn fresh(prefix: &str) -> Vec<String> {
    (0..32).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configuration_change_governs_the_next_batch_on_every_replica() {
    let primary = TestServer::start_at(datetime!(2026-11-10 12:00 UTC)).await;
    let replica = primary.replica(|_| {}).await;
    let tenant = primary.tenant.tenant;
    let (_, mut admin) = primary.clients().await;
    let mut fair = primary.fair_use_for(&primary.tenant.api_key).await;
    let (on_replica, _) = replica.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    // The replica's batches fill its plan book.
    assert!(checks_at_once(&on_replica, &fresh("first"), 300).await.iter().all(|a| *a == (true, Some(1_000), false)));
    let first = replica.plan_book.version_of(tenant).expect("the replica's batches read through its plan book");

    // Through the primary's API: a smaller allowance and a soft cap. The replica's very next
    // batches decide by them: fresh meters open with 100, the cap's usage is counted.
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    fair.set_soft_caps(pb::SetSoftCapsRequest {
        plan_id: "free".into(),
        caps: vec![pb::SoftCap { meter: "tokens".into(), window_ms: 3_600_000, threshold_credits: 50 }],
    })
    .await
    .expect("caps");
    assert!(checks_at_once(&on_replica, &fresh("second"), 300).await.iter().all(|a| *a == (false, Some(100), false)));
    let mut debits = Vec::new();
    for account in fresh("second") {
        let mut client = on_replica.clone();
        debits.push(tokio::spawn(async move { debit(&mut client, &account, "tokens", 60, &format!("{account}-60")).await }));
    }
    for task in debits {
        assert!(allowed(task.await.expect("task").decision), "60 of 100 fit");
    }
    assert!(
        checks_at_once(&on_replica, &fresh("second"), 10).await.iter().all(|a| *a == (true, Some(100), true)),
        "the debits counted toward the new soft cap"
    );
    let second = replica.plan_book.version_of(tenant).expect("book");
    assert!(second > first, "the book moved to the new version: {first} → {second}");

    // Written by hand, outside Allot: the version moves all the same.
    let sql = primary.sql().await;
    let changed = sql.execute("UPDATE plan_meters SET allowance_credits = 5000 WHERE plan_id = 'free'", &[]).await.expect("update");
    assert_eq!(changed, 1);
    sql.execute("DELETE FROM soft_caps WHERE plan_id = 'free'", &[]).await.expect("delete");
    assert!(checks_at_once(&on_replica, &fresh("third"), 300).await.iter().all(|a| *a == (true, Some(5_000), false)));
    assert!(checks_at_once(&on_replica, &fresh("second"), 10).await.iter().all(|a| !a.2), "the removed soft cap no longer triggers");
    stop_all(vec![primary, replica]).await;
}

#[tokio::test]
async fn the_configuration_version_moves_with_every_write_and_refuses_blind_ones() {
    let server = TestServer::start().await;
    let tenant = server.tenant.tenant.0;
    let sql = server.sql().await;
    let version = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    let read = "SELECT config_version FROM tenants WHERE id = $1";
    let before = version(sql.query_one(read, &[&tenant]).await.expect("version"));
    let (_, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    let after_plan = version(sql.query_one(read, &[&tenant]).await.expect("version"));
    assert!(after_plan > before, "a plan written through the API moves the version: {before} → {after_plan}");

    // A job across tenants does not see the tenant's row: its write to the configuration is refused.
    let mut app = server.app_pool.get().await.expect("app connection");
    let tx = app.transaction().await.expect("begin");
    tx.batch_execute("SET LOCAL allot.all_tenants = 'on'").await.expect("across tenants");
    let refused = tx.execute("DELETE FROM plans WHERE tenant_id = $1", &[&tenant]).await.expect_err("refused");
    assert!(refused.as_db_error().is_some_and(|e| e.message().contains("not visible")), "{refused}");
    drop(tx);

    // By hand, a TRUNCATE too.
    sql.batch_execute("TRUNCATE soft_caps").await.expect("truncate");
    let after_truncate = version(sql.query_one(read, &[&tenant]).await.expect("version"));
    assert!(after_truncate > after_plan, "{after_plan} → {after_truncate}");
    stop_all(vec![server]).await;
}
