//! The Prometheus endpoint: a server started with `metrics_listen` on a free port serves
//! `/metrics` with decision counts that move with each decision, RPC latency by method and code,
//! pool gauges, lock and pool wait, Redis errors and fail-open decisions, and the hold sweeper's
//! lag. Its own test binary: the recorder and the subscriber are process-wide.

mod common;

use std::net::SocketAddr;

use allot_proto::v1 as pb;
use allot_server::service::{sweeper, Ctx};
use allot_server::telemetry::{self, LogFormat};
use allot_server::testkit::TestServer;
use common::*;
use time::macros::datetime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(addr: SocketAddr) -> String {
    let mut last_error = None;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut stream) => {
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: allot\r\nConnection: close\r\n\r\n").await.expect("send");
                let mut response = String::new();
                stream.read_to_string(&mut response).await.expect("read");
                assert!(response.starts_with("HTTP/1.1 200"), "unexpected answer: {}", response.lines().next().unwrap_or_default());
                return response;
            }
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("metrics endpoint {addr} unreachable: {last_error:?}");
}

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad sample line {line:?}"));
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_counts_decisions_latency_pool_locks_redis_and_sweeper_lag() {
    let _telemetry = telemetry::init(LogFormat::Json, None).expect("telemetry");
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", allot_server::localstack::free_port().expect("port")).parse().expect("addr");
    let start = datetime!(2026-04-01 12:00 UTC);
    let server = TestServer::start_with(start, |c| {
        c.metrics_listen = Some(metrics_addr);
        c.hold_sweep_interval_ms = 3_600_000; // this test sweeps by hand
    })
    .await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;

    let before = scrape(metrics_addr).await;
    let allowed_before = sample(&before, "allot_decisions_total", &[("rpc", "debit"), ("outcome", "allowed")]).unwrap_or(0.0);
    let denied_before = sample(&before, "allot_decisions_total", &[("rpc", "debit"), ("outcome", "denied")]).unwrap_or(0.0);
    let refusals_before = sample(&before, "allot_price_refusals_total", &[("reason", "unknown")]).unwrap_or(0.0);
    let checks_before = sample(&before, "allot_decisions_total", &[("rpc", "check")]).unwrap_or(0.0);

    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 60, "m1").await.decision));
    assert!(!allowed(debit(&mut entitlements, "acct", "tokens", 60, "m2").await.decision));
    // Usage of an unpriced SKU: denied, and its refusal counted once (it is looked at before it
    // could be batched, and rated for real on the ordinary path).
    let quantities = Some(pb::UsageQuantities { input_tokens: 1, ..Default::default() });
    let usage = vec![pb::MeterAmount { meter: "tokens".into(), sku: "acme/mystery".into(), quantities, ..Default::default() }];
    let unpriced = entitlements
        .debit(pb::DebitRequest { account_id: "acct".into(), usage, idempotency_key: "m3".into(), ..Default::default() })
        .await
        .expect("debit")
        .into_inner();
    assert_eq!(unpriced.reason, pb::DenialReason::PriceUnknown as i32);
    let mut anonymous = allot_proto::v1::entitlements_client::EntitlementsClient::new(server.channel().await);
    let refused =
        anonymous.check(pb::CheckRequest { account_id: "acct".into(), meter: "tokens".into(), amount_credits: 1, ..Default::default() }).await;
    assert_eq!(refused.expect_err("no credential").code(), tonic::Code::Unauthenticated);

    // A replica whose Redis is gone: a fail-open rate cap decides, and is counted. (Its sweeper
    // waits an hour before its first sweep, so only this test's sweep by hand voids the hold.)
    let closed = allot_server::localstack::free_port().expect("port");
    let lost_redis = server
        .replica(|c| {
            c.redis_url = Some(format!("redis://127.0.0.1:{closed}"));
            c.redis_timeout_ms = 50;
        })
        .await;
    let (mut via_replica, mut replica_admin) = lost_redis.clients().await;
    replica_admin
        .upsert_plan(pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: "free".into(),
                tier: "free".into(),
                name: "Free".into(),
                meters: vec![
                    pb::MeterAllowance {
                        meter: "calls".into(),
                        allowance_credits: None,
                        rate_limit_per_minute: Some(10),
                        rate_failure_policy: pb::RateFailurePolicy::FailOpen as i32,
                        ..Default::default()
                    },
                    pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(100), ..Default::default() },
                ],
                is_free_default: true,
                ..Default::default()
            }),
        })
        .await
        .expect("plan");
    assert!(allowed(debit(&mut via_replica, "acct", "calls", 1, "open").await.decision), "fail open");

    // A hold that expired 9 s ago and has not been swept: the sweeper's lag.
    let hold = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            ttl_ms: 1_000,
            idempotency_key: "h1".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    assert!(allowed(hold.decision));
    server.clock.advance(time::Duration::seconds(10));
    let ctx = Ctx::new(server.pool.clone(), server.clock.clone());
    assert_eq!(sweeper::sweep_once(&ctx).await.expect("sweep"), 1);

    // Concurrent checks share snapshots: batches form, and each check is counted once.
    let checks: Vec<_> = (0..32)
        .map(|i| {
            let mut client = entitlements.clone();
            tokio::spawn(async move { check(&mut client, &format!("c{i}"), "tokens", 1).await })
        })
        .collect();
    for task in checks {
        assert!(allowed(task.await.expect("check").decision));
    }

    // Requests on a stream of calls: counted one by one, and their decisions like any other.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = entitlements.clone().check_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    for sequence in 0..3 {
        let check = pb::CheckRequest { account_id: "streamed".into(), meter: "tokens".into(), amount_credits: 1, ..Default::default() };
        tx.send(pb::CheckStreamRequest { sequence, check: Some(check) }).await.expect("send");
    }
    tx.send(pb::CheckStreamRequest { sequence: 3, check: None }).await.expect("send");
    drop(tx);
    let mut streamed = 0;
    while answers.message().await.expect("stream ends with OK").is_some() {
        streamed += 1;
    }
    assert_eq!(streamed, 4);

    let after = scrape(metrics_addr).await;
    let count = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{after}"));
    assert_eq!(count("allot_decisions_total", &[("rpc", "debit"), ("outcome", "allowed")]) - allowed_before, 2.0, "m1 and the fail-open debit");
    assert_eq!(count("allot_decisions_total", &[("rpc", "debit"), ("outcome", "denied")]) - denied_before, 2.0, "m2 and m3");
    assert_eq!(count("allot_price_refusals_total", &[("reason", "unknown")]) - refusals_before, 1.0, "m3's refusal, once");

    assert_eq!(count("allot_decisions_total", &[("rpc", "check")]) - checks_before, 35.0, "every check once, streamed ones too");
    // Every batch is counted, a batch of one too: some held more than one check.
    let (batches, batched) = (count("allot_check_batch_size_count", &[]), count("allot_check_batch_size_sum", &[]));
    assert!(batches >= 1.0 && batched > batches, "32 concurrent checks formed no batch ({batched} checks in {batches} batches)");

    // RPC latency by service, method and code.
    assert!(count("allot_rpc_duration_seconds_count", &[("service", "allot.v1.Entitlements"), ("method", "Debit"), ("code", "OK")]) >= 3.0);
    assert!(count("allot_rpc_duration_seconds_count", &[("method", "Check"), ("code", "UNAUTHENTICATED")]) >= 1.0);
    assert!(after.contains("allot_rpc_duration_seconds_bucket{"), "a histogram, not a summary");
    let streamed =
        |code| count("allot_rpc_duration_seconds_count", &[("service", "allot.v1.Entitlements"), ("method", "CheckStream.request"), ("code", code)]);
    assert_eq!((streamed("OK"), streamed("INVALID_ARGUMENT")), (3.0, 1.0), "each request of a stream, with its code");

    // Pool use and wait, lock wait.
    assert!(count("allot_db_pool_max", &[]) >= 1.0);
    for gauge in ["allot_db_pool_size", "allot_db_pool_available", "allot_db_pool_waiting"] {
        count(gauge, &[]);
    }
    assert_eq!(count("allot_db_up", &[]), 1.0);
    assert!(count("allot_db_pool_wait_seconds_count", &[]) >= 3.0);
    assert!(count("allot_db_lock_wait_seconds_count", &[]) >= 3.0);

    // Redis errors and the fail-open decision they caused.
    assert!(count("allot_rate_store_failures_total", &[("policy", "open")]) >= 1.0);
    assert!(count("allot_redis_errors_total", &[("kind", "rate")]) >= 1.0);

    // The hold sweeper: 9 s behind when it ran, one hold voided.
    assert_eq!(count("allot_hold_sweeper_lag_seconds", &[]), 9.0);
    assert!(count("allot_holds_swept_total", &[]) >= 1.0);

    // Waves of many concurrent debits make batches large enough to spread the tenant's debits
    // over both lanes (counted once per spread), and every debit is still charged exactly once.
    let widened = |text: &str| sample(text, "allot_batch_lanes_widened_total", &[("kind", "debit")]).unwrap_or(0.0);
    let widened_before = widened(&after);
    let mut waves = 0;
    while waves < 5 && widened(&scrape(metrics_addr).await) == widened_before {
        let mut tasks = Vec::new();
        for i in 0..192 {
            let mut client = entitlements.clone();
            let key = format!("wave{waves}-{i}");
            tasks.push(tokio::spawn(async move { debit(&mut client, &format!("wide-{}", i % 64), "tokens", 1, &key).await }));
        }
        for task in tasks {
            assert!(allowed(task.await.expect("task").decision));
        }
        waves += 1;
    }
    assert!(widened(&scrape(metrics_addr).await) > widened_before, "{waves} waves of 192 concurrent debits never spread over two lanes");
    let entries: i64 = server
        .sql()
        .await
        .query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit' AND account_id LIKE 'wide-%'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(entries, 192 * waves, "one entry per debit");

    // Check lanes spread only for a backlog: the 32 concurrent checks above kept one lane (their
    // batches stayed below 128); waves of many more make a batch of 128 or more, which spreads.
    let check_widened = |text: &str| sample(text, "allot_batch_lanes_widened_total", &[("kind", "check")]).unwrap_or(0.0);
    assert_eq!(check_widened(&after), 0.0, "batches of at most 32 checks spread the check lanes");
    let mut check_waves = 0;
    while check_waves < 5 && check_widened(&scrape(metrics_addr).await) == 0.0 {
        let mut tasks = Vec::new();
        for i in 0..400 {
            let mut client = entitlements.clone();
            tasks.push(tokio::spawn(async move { check(&mut client, &format!("wide-{}", i % 64), "tokens", 1).await }));
        }
        for task in tasks {
            assert!(allowed(task.await.expect("task").decision), "every check of a wave is answered, and allowed");
        }
        check_waves += 1;
    }
    assert!(check_widened(&scrape(metrics_addr).await) > 0.0, "{check_waves} waves of 400 concurrent checks never spread over two check lanes");

    lost_redis.stop().await;
    server.stop().await;
}
