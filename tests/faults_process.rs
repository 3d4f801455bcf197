//! Process faults on the real `allot` binary (built by `cargo test` with the `failpoints`
//! feature), against the shared throwaway PostgreSQL and Redis:
//!
//! - `a_crash_after_commit_before_the_reply_replays_the_original_result`: for each mutation
//!   (debit, reserve, commit, release, refund) the process kills itself (`SIGKILL`) right after
//!   the transaction committed and before replying; the client sees a transport error; restarted,
//!   the same request returns the stored result: the one the ledger holds, identical on every
//!   retry.
//! - `kill_9_under_load_loses_and_duplicates_nothing`: 16 clients with retries (same keys) while
//!   the process is `kill -9`ed every 1.5–3 s and restarted at once: serving again within 3 s of
//!   each kill, and the history check finds no lost, duplicated or overspent operation.
//! - `sigterm_with_hundreds_of_calls_in_flight_completes_them_all`: 300 debits in flight (queued
//!   behind a row lock held by the test) when SIGTERM arrives: all 300 complete OK, then the
//!   process exits 0.
//!
//! Every child is stopped by its own PID (also when a test fails: `AllotProcess` kills on drop).

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_server::clock::{Clock, SystemClock};
use allot_server::faults::history::{self, Expect, History};
use allot_server::faults::workload::{self, Options, Stop};
use rand::Rng;
use support::*;

const METER: &str = "tokens";

fn debit(key: &str, amount: i64) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: "acct".into(),
        meter: METER.into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        mode: pb::DebitMode::Gate as i32,
        ..Default::default()
    }
}

/// Restarts `served` with the failpoint armed for `rpc`, runs `call` (which must fail: the
/// process dies before replying), checks the process was killed by SIGKILL, and restarts it
/// without the failpoint.
async fn crash_during<T: std::fmt::Debug, F>(served: &mut Served, rpc: &str, call: F)
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    served.process.kill9();
    served.process.restart(&[("ALLOT_FAILPOINT_CRASH_AFTER_COMMIT", rpc)]);
    assert!(served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.is_some(), "{}", served.process.stderr());
    let result = call.await;
    assert!(result.is_err(), "{rpc} answered although the process was to die first: {result:?}");
    let status = served.process.wait_exit(PATIENCE).await.expect("the process died");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL at the failpoint: {status}; stderr:\n{}", served.process.stderr());
    assert!(served.process.stderr().contains(&format!("fired after {rpc} committed")), "{}", served.process.stderr());
    served.process.restart(&[]);
    assert!(served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.is_some(), "{}", served.process.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_before_the_reply_replays_the_original_result() {
    let mut served = serve("crash-after-commit", &[], METER, 10_000, 0).await;
    let db = served.pool.get().await.expect("db");
    let mut client = served.client.clone();
    let entries = |key: &'static str| {
        let db = &db;
        async move {
            db.query("SELECT id::text, delta_credits FROM ledger_entries WHERE idempotency_key = $1", &[&key])
                .await
                .expect("entries")
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>()
        }
    };

    // Debit: committed, not answered; the retry gets the committed entry.
    crash_during(&mut served, "debit", client.clone().debit(debit("d1", 100))).await;
    let stored = entries("d1").await;
    assert_eq!(stored.len(), 1, "the crashed debit committed exactly once");
    let retry = client.debit(debit("d1", 100)).await.expect("retry").into_inner();
    assert_eq!(retry.decision, pb::Decision::Allowed as i32);
    assert_eq!((retry.entry_id.clone(), retry.breakdown.iter().map(|b| b.amount_credits).sum::<i64>()), stored[0]);
    assert_eq!(client.debit(debit("d1", 100)).await.expect("again").into_inner(), retry, "every retry repeats the stored result");
    assert_eq!(entries("d1").await.len(), 1);

    // Reserve: the hold exists once and the retry names it.
    let reserve = pb::ReserveRequest {
        account_id: "acct".into(),
        meter: METER.into(),
        amount_credits: 300,
        ttl_ms: 3_600_000,
        idempotency_key: "h1".into(),
        ..Default::default()
    };
    crash_during(&mut served, "reserve", client.clone().reserve(reserve.clone())).await;
    let holds: Vec<String> = db.query("SELECT id::text FROM holds", &[]).await.expect("holds").iter().map(|r| r.get(0)).collect();
    assert_eq!(holds.len(), 1);
    let retry = client.reserve(reserve.clone()).await.expect("retry").into_inner();
    assert_eq!(retry.hold_id, holds[0]);
    assert_eq!(client.reserve(reserve).await.expect("again").into_inner(), retry);

    // Commit of that hold: one commit entry; the retry returns it.
    let commit = pb::CommitRequest { hold_id: holds[0].clone(), actual_credits: 250, ..Default::default() };
    crash_during(&mut served, "commit", client.clone().commit(commit.clone())).await;
    let commits: Vec<String> =
        db.query("SELECT id::text FROM ledger_entries WHERE kind = 'commit'", &[]).await.expect("commits").iter().map(|r| r.get(0)).collect();
    assert_eq!(commits.len(), 1);
    let retry = client.commit(commit.clone()).await.expect("retry").into_inner();
    assert_eq!((retry.decision, retry.entry_id.clone()), (pb::Decision::Allowed as i32, commits[0].clone()));
    assert_eq!(client.commit(commit).await.expect("again").into_inner(), retry);

    // Release of a second hold.
    let second = client
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: METER.into(),
            amount_credits: 50,
            ttl_ms: 3_600_000,
            idempotency_key: "h2".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    let release = pb::ReleaseRequest { hold_id: second.hold_id.clone() };
    crash_during(&mut served, "release", client.clone().release(release.clone())).await;
    let status: String = db.query_one("SELECT status FROM holds WHERE id::text = $1", &[&second.hold_id]).await.expect("hold").get(0);
    assert_eq!(status, "released");
    let retry = client.release(release.clone()).await.expect("retry").into_inner();
    assert_eq!(retry.status, pb::HoldStatus::Released as i32);
    assert_eq!(client.release(release).await.expect("again").into_inner(), retry);

    // Refund of part of the debit.
    let refund = pb::RefundRequest { entry_id: stored[0].0.clone(), amount_credits: 40, idempotency_key: "r1".into() };
    crash_during(&mut served, "refund", client.clone().refund(refund.clone())).await;
    let refunds = entries("r1").await;
    assert_eq!(refunds.len(), 1);
    let retry = client.refund(refund.clone()).await.expect("retry").into_inner();
    assert_eq!((retry.entry_id.clone(), retry.refunded_total_credits), (refunds[0].0.clone(), 40));
    assert_eq!(client.refund(refund).await.expect("again").into_inner(), retry);

    // 10,000 − 100 + 40 − 250 (committed) − 0 (released).
    let used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances", &[]).await.expect("used").get(0);
    assert_eq!(used, 100 - 40 + 250);
    assert_eq!(served.process.starts, 11, "five crashes, each with two restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_nothing() {
    const KILLS: usize = 4;
    const SERVING_WITHIN: Duration = Duration::from_secs(3);
    let mut served = serve("kill-9", &[], METER, 20_000, 1_000).await;
    let history = History::new();
    let stop = Stop::new();
    let options = Options { clients: 16, accounts: 4, operations_per_client: None, prefix: "k9".into(), ..Options::default() };
    let load = tokio::spawn(workload::run(served.client.clone(), options, history.clone(), stop.clone()));

    let mut rng = rand::rng();
    let mut recoveries = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..3_000))).await;
        let killed_at = Instant::now();
        let status = served.process.kill9().expect("killed");
        assert_eq!(status.signal(), Some(9));
        served.process.restart(&[]);
        served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.expect("serving again");
        recoveries.push(killed_at.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.stop();
    tokio::time::timeout(PATIENCE, load).await.expect("the workload stopped").expect("workload");

    let db = served.pool.get().await.expect("db");
    let report = history::check(&history, &db, &Expect { debt_limit_credits: 1_000, now: SystemClock.now() }).await.expect("check");
    println!("{report}");
    println!("serving again after each kill -9: {recoveries:?}");
    report.assert_clean();
    let failed_attempts = report.attempts - report.codes.get("ok").copied().unwrap_or(0) - report.codes.get("denied").copied().unwrap_or(0);
    assert!(failed_attempts > 0, "the kills hit calls in flight");
    for took in &recoveries {
        assert!(*took <= SERVING_WITHIN, "serving again only {took:?} after a kill -9 (bound {SERVING_WITHIN:?})");
    }
    assert_eq!(idle_in_transaction(&db, &served.database_url, Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_hundreds_of_calls_in_flight_completes_them_all() {
    const CALLS: usize = 300;
    const CHANNELS: usize = 4; // HTTP/2 allows a limited number of streams per connection
    let env = [
        ("ALLOT_SHUTDOWN_GRACE_MS", "60000"),
        ("ALLOT_DB_POOL_WAIT_MS", "60000"),
        ("ALLOT_DB_LOCK_TIMEOUT_MS", "60000"),
        ("ALLOT_DB_STATEMENT_TIMEOUT_MS", "60000"),
        ("ALLOT_REQUEST_TIMEOUT_MS", "60000"),
        // One tenant sends all of them: no per-tenant limit may refuse any.
        ("ALLOT_TENANT_CONCURRENCY_MAX", "1000"),
        ("ALLOT_TENANT_QUEUE_WAIT_MS", "60000"),
    ];
    let mut served = serve("sigterm", &env, METER, 1_000_000, 0).await;
    let mut client = served.client.clone();
    client.debit(debit("first", 1)).await.expect("first debit");

    // Every call will queue behind this lock (some on it, the rest for a pooled connection).
    let blocker = served.pool.get().await.expect("db");
    blocker.batch_execute("BEGIN; SELECT 1 FROM meter_balances WHERE account_id = 'acct' FOR UPDATE").await.expect("lock");
    let mut calls = Vec::new();
    for c in 0..CHANNELS {
        let channel = workload::lazy_channel(served.process.listen);
        let client = workload::client(channel, &served.api_key);
        for i in (c..CALLS).step_by(CHANNELS) {
            let mut client = client.clone();
            calls.push(tokio::spawn(async move { client.debit(debit(&format!("t{i}"), 1)).await.map(|r| r.into_inner()) }));
        }
    }
    let database = served.database_url.rsplit('/').next().expect("db").to_owned();
    let started = Instant::now();
    loop {
        let waiting: i64 = blocker
            .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", &[&database])
            .await
            .expect("activity")
            .get(0);
        if waiting >= 1 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "no call reached the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the rest reach the server (they wait for a pooled connection or for the lock). Any
    // call the server had not accepted before SIGTERM would be refused, failing the test below.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(calls.iter().all(|c| !c.is_finished()), "all calls are in flight");

    served.process.sigterm();
    let drain_started = Instant::now();
    while !served.process.stderr().contains("draining in-flight calls") {
        assert!(drain_started.elapsed() < PATIENCE, "no drain; stderr:\n{}", served.process.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections are refused while the calls in flight drain.
    while tokio::net::TcpStream::connect(served.process.listen).await.is_ok() {
        assert!(drain_started.elapsed() < PATIENCE, "still accepting connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.process.exited().is_none(), "the process waits for its calls");
    blocker.batch_execute("ROLLBACK").await.expect("unlock");

    let mut completed = 0;
    for call in calls {
        let response = call.await.expect("task").expect("an in-flight call completes after SIGTERM");
        assert_eq!(response.decision, pb::Decision::Allowed as i32);
        completed += 1;
    }
    let status = served.process.wait_exit(PATIENCE).await.expect("exited after draining");
    println!("{completed} calls in flight at SIGTERM completed; exit {status} {:?} after SIGTERM", drain_started.elapsed());
    assert!(status.success(), "exit {status}; stderr:\n{}", served.process.stderr());
    let entries: i64 =
        blocker.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit' AND idempotency_key LIKE 't%'", &[]).await.expect("count").get(0);
    assert_eq!(entries, CALLS as i64);
}
