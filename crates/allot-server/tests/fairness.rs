//! Fairness between tenants: one tenant flooding far beyond its concurrency limit is refused
//! with RESOURCE_EXHAUSTED (and a RetryInfo) while another tenant keeps being served. The
//! outcome test holds the flooding tenant's calls inside the database with a row lock, so which
//! calls are admitted is decided by the limiter alone, not by timing. The ignored test prints
//! the latency figures of docs/security.md (run with `--ignored --nocapture`).

mod common;

use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_server::testkit::TestServer;
use common::*;
use tonic::Code;
use tonic_types::StatusExt as _;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_held_to_its_limit_and_another_is_still_served() {
    const LIMIT: usize = 2;
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.tenant_concurrency_max = LIMIT as u32;
        c.tenant_queue_max = 0;
        c.tenant_queue_wait_ms = 0;
    })
    .await;
    let (mut a, mut a_admin) = server.clients().await;
    free_plan(&mut a_admin, "tokens", Some(1_000_000), 0, 0).await;
    assert!(allowed(debit(&mut a, "acct", "tokens", 1, "warm").await.decision));
    let other = allot_server::seed::tenant(&server.pool, "b").await.expect("tenant");
    let (mut b, mut b_admin) = server.clients_for(&other.api_key).await;
    free_plan(&mut b_admin, "tokens", Some(1_000_000), 0, 0).await;

    // A's account row is locked: admitted calls of A wait inside the database, holding slots.
    let mut blocker = server.sql().await;
    let lock = blocker.transaction().await.expect("tx");
    lock.execute("SELECT 1 FROM meter_balances WHERE tenant_id = $1 FOR UPDATE", &[&server.tenant.tenant.0]).await.expect("lock");
    let flood: Vec<_> = (0..10 * LIMIT)
        .map(|i| {
            let mut a = a.clone();
            tokio::spawn(async move { a.debit(debit_req("acct", "tokens", 1, &format!("flood-{i}"), pb::DebitMode::Gate)).await })
        })
        .collect();
    // Every call beyond the limit is refused at once; the admitted ones wait on the lock.
    let started = Instant::now();
    while flood.iter().filter(|t| t.is_finished()).count() < flood.len() - LIMIT {
        assert!(started.elapsed() < PATIENCE, "the calls over the limit were not refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile B is served, every time.
    for i in 0..20 {
        let decision = debit(&mut b, "acct", "tokens", 1, &format!("b-{i}")).await;
        assert!(allowed(decision.decision), "B's call {i} was served while A floods");
    }
    lock.rollback().await.expect("unlock");
    let mut admitted = 0;
    let mut refused = 0;
    for task in flood {
        match task.await.expect("task") {
            Ok(response) => {
                assert!(allowed(response.into_inner().decision));
                admitted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "TENANT_CONCURRENCY_LIMIT");
                assert!(status.get_error_details().retry_info().is_some(), "a RetryInfo says when to come back");
                refused += 1;
            }
        }
    }
    assert_eq!((admitted, refused), (LIMIT, 9 * LIMIT), "exactly the limit was admitted");
    assert_ledger_explains_balances(&server).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// B's `Check` latency alone, then while A keeps 10× its limit of debits outstanding (each of
/// A's callers waits in the tenant's short queue, and honours RetryInfo when refused, as a
/// well-behaved client does). `ALLOT_FAIRNESS_LIMIT` sets A's limit (default 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "prints latency figures; run with --ignored --nocapture"]
async fn fairness_latency_figures() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const SAMPLES: usize = 400;
    let limit: u32 = std::env::var("ALLOT_FAIRNESS_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.tenant_concurrency_max = limit;
        c.tenant_queue_max = 10 * limit;
        c.tenant_queue_wait_ms = 10_000;
    })
    .await;
    let (a, mut a_admin) = server.clients().await;
    free_plan(&mut a_admin, "tokens", None, 0, 0).await;
    let other = allot_server::seed::tenant(&server.pool, "b").await.expect("tenant");
    let (mut b, mut b_admin) = server.clients_for(&other.api_key).await;
    free_plan(&mut b_admin, "tokens", None, 0, 0).await;
    let measure = |mut b: allot_server::testkit::Entitlements| async move {
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let started = Instant::now();
            check(&mut b, "acct", "tokens", 1).await;
            samples.push(started.elapsed());
        }
        samples.sort();
        samples
    };
    check(&mut b, "acct", "tokens", 1).await;
    let alone = measure(b.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood: Vec<_> = (0..10 * limit)
        .map(|w| {
            let (mut a, stop, ok, busy) = (a.clone(), stop.clone(), ok.clone(), busy.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match a.debit(debit_req(&format!("acct-{w}"), "tokens", 1, &format!("f-{w}-{i}"), pb::DebitMode::Gate)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            let wait = status.get_error_details().retry_info().and_then(|r| r.retry_delay).unwrap_or(Duration::from_millis(100));
                            tokio::time::sleep(wait).await;
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = measure(b.clone()).await;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.expect("flood");
    }
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!("| B's Check latency | p50 (ms) | p99 (ms) |");
    println!("| --- | ---: | ---: |");
    println!("| B alone | {:.2} | {:.2} |", ms(percentile(&alone, 0.5)), ms(percentile(&alone, 0.99)));
    println!(
        "| while A keeps {} debits outstanding (limit {limit}) | {:.2} | {:.2} |",
        10 * limit,
        ms(percentile(&flooded, 0.5)),
        ms(percentile(&flooded, 0.99))
    );
    println!("A during the flood: {} debits served, {} refused RESOURCE_EXHAUSTED", ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
}

/// The cost of row-level security on the debit path: the same sequential debits against a
/// server acting as `allot_app` (RLS applies) and one acting as the login role (a superuser
/// here, so RLS is bypassed), interleaved to share the machine's noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints latency figures; run with --ignored --nocapture"]
async fn row_level_security_overhead_figures() {
    const SAMPLES: usize = 1_000;
    let with_rls = TestServer::start().await;
    let without_rls = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.db_role = String::new()).await;
    let mut clients = Vec::new();
    for server in [&with_rls, &without_rls] {
        let (mut entitlements, mut admin) = server.clients().await;
        free_plan(&mut admin, "tokens", None, 0, 0).await;
        debit(&mut entitlements, "acct", "tokens", 1, "warm").await;
        clients.push(entitlements);
    }
    let mut samples = [Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES)];
    for i in 0..SAMPLES {
        for (which, client) in clients.iter_mut().enumerate() {
            let started = Instant::now();
            assert!(allowed(debit(client, "acct", "tokens", 1, &format!("d-{i}")).await.decision));
            samples[which].push(started.elapsed());
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!("| sequential debits | p50 (ms) | p99 (ms) |");
    println!("| --- | ---: | ---: |");
    for (name, mut s) in ["as allot_app (RLS applies)", "as the superuser (RLS bypassed)"].into_iter().zip(samples) {
        s.sort();
        println!("| {name} | {:.2} | {:.2} |", ms(percentile(&s, 0.5)), ms(percentile(&s, 0.99)));
    }
}
