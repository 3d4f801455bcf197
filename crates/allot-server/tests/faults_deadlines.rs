//! Deadlines against a held row lock (the test holds `SELECT … FOR UPDATE` on the account's
//! balance row from its own connection), for every kind of mutation at once:
//!
//! - `deadlines_shorter_than_a_held_lock_end_promptly_and_retries_apply_once`: 40 calls (debits,
//!   reserves, a commit, a release, refunds) with a 300 ms deadline end with the deadline
//!   (within 300 ms + slack, the slowest printed), so do retries while the lock is still held;
//!   once it is released, retries with the same keys and holds get definite answers, and the
//!   history check finds each operation applied once (acknowledged) and nothing twice.
//! - `a_lock_held_past_lock_timeout_means_unavailable_and_nothing_applied`: without a client
//!   deadline, calls give up after the server's `db_lock_timeout_ms` with UNAVAILABLE (never
//!   INTERNAL) and write nothing; retries after the lock is gone apply once.
//!
//! `failures.rs` covers the single-debit case; this adds concurrency, every mutation and the
//! history check.

use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_server::clock::Clock;
use allot_server::faults::history::{self, Attempt, Expect, History, Kind, Operation};
use allot_server::faults::workload::{self, Call, Client};
use allot_server::testkit::TestServer;

const DEADLINE: Duration = Duration::from_millis(300);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1_000);

struct Setup {
    server: TestServer,
    client: Client,
    /// Operations to run against the locked account, with their requests.
    calls: Vec<(Operation, Call)>,
}

fn operation(kind: Kind, key: Option<String>, hold_id: Option<String>, refunds: Option<String>, amount: i64) -> Operation {
    Operation { kind, account: "acct".into(), key, hold_id, refunds, amount_credits: amount, attempts: Vec::new() }
}

/// A server, the plan, two holds and a charge on `acct`, and the 40 calls to race the lock.
async fn setup(tweak: impl FnOnce(&mut allot_server::config::Config)) -> Setup {
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), tweak).await;
    let (_, mut admin) = server.clients().await;
    admin.upsert_plan(workload::plan_request("tokens", 100_000, 0)).await.expect("plan");
    let mut client = workload::client(server.channel().await, &server.tenant.api_key);
    let debit = |key: &str, amount: i64| pb::DebitRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        mode: pb::DebitMode::Gate as i32,
        ..Default::default()
    };
    let reserve = |key: &str, amount: i64| pb::ReserveRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        ttl_ms: 3_600_000,
        idempotency_key: key.into(),
        ..Default::default()
    };
    let charge = client.debit(debit("charge", 1_000)).await.expect("charge").into_inner().entry_id;
    let hold_a = client.reserve(reserve("hold-a", 500)).await.expect("hold a").into_inner().hold_id;
    let hold_b = client.reserve(reserve("hold-b", 500)).await.expect("hold b").into_inner().hold_id;

    let mut calls = Vec::new();
    for i in 0..25 {
        let key = format!("d{i}");
        calls.push((operation(Kind::Debit, Some(key.clone()), None, None, 10), Call::Debit(debit(&key, 10))));
    }
    for i in 0..8 {
        let key = format!("r{i}");
        calls.push((operation(Kind::Reserve, Some(key.clone()), None, None, 20), Call::Reserve(reserve(&key, 20))));
    }
    for i in 0..5 {
        let key = format!("f{i}");
        let request = pb::RefundRequest { entry_id: charge.clone(), amount_credits: 30, idempotency_key: key.clone() };
        calls.push((operation(Kind::Refund, Some(key), None, Some(charge.clone()), 30), Call::Refund(request)));
    }
    let commit = pb::CommitRequest { hold_id: hold_a.clone(), actual_credits: 400, ..Default::default() };
    calls.push((operation(Kind::Commit, None, Some(hold_a), None, 400), Call::Commit(commit)));
    calls.push((operation(Kind::Release, None, Some(hold_b.clone()), None, 500), Call::Release(pb::ReleaseRequest { hold_id: hold_b })));
    Setup { server, client, calls }
}

/// The setup's own calls, as the history's first operations (all acknowledged).
fn record_setup(history: &History, db_rows: &[(String, String, Option<String>)]) {
    for (kind, id, key) in db_rows {
        let kind = if kind == "debit" { Kind::Debit } else { Kind::Reserve };
        let mut op = operation(kind, key.clone(), None, None, 0);
        op.attempts.push(history::AttemptRecord { attempt: Attempt::Ok { id: Some(id.clone()) }, elapsed: Duration::ZERO });
        history.record(op);
    }
}

async fn setup_rows(server: &TestServer) -> Vec<(String, String, Option<String>)> {
    let db = server.sql().await;
    let mut rows: Vec<(String, String, Option<String>)> = db
        .query("SELECT 'debit', id::text, idempotency_key FROM ledger_entries WHERE idempotency_key = 'charge'", &[])
        .await
        .expect("charge")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let holds = db.query("SELECT id::text FROM holds ORDER BY created_at, id", &[]).await.expect("holds");
    for (row, key) in holds.iter().zip(["hold-a", "hold-b"]) {
        rows.push(("reserve".into(), row.get(0), Some(key.into())));
    }
    rows
}

/// Takes `acct`'s balance row lock on a connection of its own; ROLLBACK frees it.
async fn lock(server: &TestServer) -> deadpool_postgres::Client {
    let blocker = server.sql().await;
    blocker.batch_execute("BEGIN; SELECT 1 FROM meter_balances WHERE account_id = 'acct' FOR UPDATE").await.expect("lock");
    blocker
}

/// Sends every call once at the same time with `timeout`; adds each attempt to its operation.
async fn round(client: &Client, calls: &mut [(Operation, Call)], timeout: Duration, history: &History) {
    let mut tasks = Vec::new();
    for (_, call) in calls.iter() {
        let (mut client, call, history) = (client.clone(), call.clone(), history.clone());
        tasks.push(tokio::spawn(async move { workload::send(&mut client, &call, timeout, &history).await }));
    }
    for ((op, _), task) in calls.iter_mut().zip(tasks) {
        op.attempts.push(task.await.expect("call"));
    }
}

/// Retries each operation without a definite answer until it gets one.
async fn settle(client: &Client, calls: &mut [(Operation, Call)], history: &History) {
    for (op, call) in calls.iter_mut() {
        for _ in 0..50 {
            if op.attempts.iter().any(|a| !matches!(a.attempt, Attempt::Unknown { .. })) {
                break;
            }
            op.attempts.push(workload::send(&mut client.clone(), call, Duration::from_secs(10), history).await);
        }
    }
}

async fn check_clean(server: &TestServer, history: &History, calls: Vec<(Operation, Call)>) -> history::Report {
    let count = calls.len();
    for (op, _) in calls {
        history.record(op);
    }
    let db = server.sql().await;
    let report = history::check(history, &db, &Expect { debt_limit_credits: 0, now: server.clock.now() }).await.expect("check");
    println!("{report}");
    report.assert_clean();
    assert_eq!(report.unknown, 0);
    assert!(report.acked >= count, "every raced operation got a definite answer: {report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_shorter_than_a_held_lock_end_promptly_and_retries_apply_once() {
    let Setup { server, client, mut calls } = setup(|_| {}).await;
    let history = History::new();
    record_setup(&history, &setup_rows(&server).await);
    let blocker = lock(&server).await;

    round(&client, &mut calls, DEADLINE, &history).await;
    // Half of them again while the lock is still held.
    let half = calls.len() / 2;
    round(&client, &mut calls[..half], DEADLINE, &history).await;
    let attempts: Vec<&history::AttemptRecord> = calls.iter().flat_map(|(op, _)| &op.attempts).collect();
    let slowest = attempts.iter().map(|a| a.elapsed).max().expect("attempts");
    println!("{} attempts against the held lock, slowest ended after {slowest:?} (deadline {DEADLINE:?})", attempts.len());
    for a in &attempts {
        assert!(
            matches!(&a.attempt, Attempt::Unknown { code: tonic::Code::DeadlineExceeded | tonic::Code::Cancelled, .. }),
            "every call against the held lock ends with its deadline: {:?}",
            a.attempt
        );
    }
    assert!(slowest <= DEADLINE + SLACK, "a deadline ended late: {slowest:?}");

    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    settle(&client, &mut calls, &history).await;
    let report = check_clean(&server, &history, calls).await;
    let commits: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'commit'", &[]).await.expect("n").get(0);
    assert_eq!(commits, 1);
    println!("{} operations applied once each", report.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_lock_timeout_means_unavailable_and_nothing_applied() {
    const LOCK_TIMEOUT_MS: u64 = 500;
    let Setup { server, client, mut calls } = setup(|c| c.db_lock_timeout_ms = LOCK_TIMEOUT_MS).await;
    calls.truncate(12);
    let history = History::new();
    record_setup(&history, &setup_rows(&server).await);
    let entries_before: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM ledger_entries", &[]).await.expect("n").get(0);
    let blocker = lock(&server).await;

    let started = Instant::now();
    round(&client, &mut calls, Duration::from_secs(30), &history).await;
    println!("{} calls gave up on the lock after {:?} (lock_timeout {LOCK_TIMEOUT_MS} ms)", calls.len(), started.elapsed());
    for (op, _) in &calls {
        match &op.attempts[0].attempt {
            Attempt::Unknown { code: tonic::Code::Unavailable, .. } => {}
            other => panic!("{} {}: {other:?}, not UNAVAILABLE", op.kind.as_str(), op.name()),
        }
    }
    // Nothing was written while the lock was held (checked through the blocker, inside its
    // own transaction: the entries table is not locked).
    let entries: i64 = blocker.query_one("SELECT COUNT(*) FROM ledger_entries", &[]).await.expect("n").get(0);
    assert_eq!(entries, entries_before);

    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    settle(&client, &mut calls, &history).await;
    check_clean(&server, &history, calls).await;
}
