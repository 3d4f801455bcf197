//! Group commit: concurrent debits of one hot meter are decided together in shared transactions
//! (visible as shared `xmin`s of their ledger entries) and stay exact — the same admissions,
//! one entry and one idempotency record per debit — and a debit that fails inside a batch (a key
//! reused for another request) fails alone without failing or duplicating its neighbours.

mod common;

use allot_proto::v1 as pb;
use allot_server::testkit::TestServer;
use common::*;
use tonic::Code;

/// Ledger entries of `account`'s debits and the number of transactions that wrote them.
async fn debits_and_transactions(server: &TestServer, account: &str) -> (i64, i64) {
    let row = server
        .sql()
        .await
        .query_one("SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM ledger_entries WHERE account_id = $1 AND kind = 'debit'", &[&account])
        .await
        .expect("count");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_of_one_meter_share_transactions_and_stay_exact() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(3_010), 0, 0).await;

    // 128 debits of 30 against 3,010: exactly 100 fit, whatever the batches.
    let mut tasks = Vec::new();
    for i in 0..128 {
        let mut client = entitlements.clone();
        tasks.push(tokio::spawn(async move { debit(&mut client, "hot", "tokens", 30, &format!("k{i}")).await }));
    }
    let mut admitted = 0;
    for task in tasks {
        let response = task.await.expect("task");
        if allowed(response.decision) {
            admitted += 1;
            assert!(!response.entry_id.is_empty());
        } else {
            assert_eq!(response.reason, pb::DenialReason::InsufficientCredit as i32);
        }
    }
    assert_eq!(admitted, 100);
    let (entries, transactions) = debits_and_transactions(&server, "hot").await;
    assert_eq!(entries, 100, "one entry per admitted debit");
    assert!(transactions < entries, "{entries} debits in {transactions} transactions: no batch formed");
    let db = server.sql().await;
    let records: i64 = db.query_one("SELECT COUNT(*) FROM idempotency_records", &[]).await.expect("count").get(0);
    assert_eq!(records, 128, "each debit keeps its own idempotency record, denials too");
    assert_eq!(assert_ledger_explains_balances(&server).await, 1);

    // Every retry replays its own answer.
    let mut client = entitlements.clone();
    for i in [0, 64, 127] {
        let replay = debit(&mut client, "hot", "tokens", 30, &format!("k{i}")).await;
        let stored: serde_json::Value =
            db.query_one("SELECT response FROM idempotency_records WHERE key = $1", &[&format!("k{i}")]).await.expect("record").get(0);
        let allowed_then = stored["meters"][0]["denial"].is_null();
        assert_eq!(allowed(replay.decision), allowed_then, "k{i}");
    }
    assert_eq!(debits_and_transactions(&server, "hot").await.0, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_that_fails_in_a_batch_fails_alone() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100_000), 0, 0).await;
    // A key already used by another account's debit.
    let mut client = entitlements.clone();
    assert!(allowed(debit(&mut client, "other", "tokens", 7, "taken").await.decision));

    // 48 concurrent debits on one meter: one reuses `taken`, a pair shares `twin` with the same
    // request (a retry), a pair shares `clash` with different amounts.
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (key, amount) = match i {
            0 => ("taken".to_owned(), 5),
            1 | 2 => ("twin".to_owned(), 11),
            3 => ("clash".to_owned(), 13),
            4 => ("clash".to_owned(), 17),
            _ => (format!("n{i}"), 10),
        };
        let mut client = entitlements.clone();
        tasks.push(tokio::spawn(async move { (i, client.debit(debit_req("hot", "tokens", amount, &key, pb::DebitMode::Gate)).await) }));
    }
    let mut twin_entries = Vec::new();
    let mut clash = Vec::new();
    for task in tasks {
        let (i, result) = task.await.expect("task");
        match i {
            0 => {
                let err = result.expect_err("a key of another request");
                assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"));
            }
            1 | 2 => twin_entries.push(result.expect("the same request twice").into_inner().entry_id),
            3 | 4 => clash.push(result.map(|r| allowed(r.into_inner().decision))),
            _ => assert!(allowed(result.expect("a neighbour").into_inner().decision), "neighbour {i}"),
        }
    }
    assert_eq!(twin_entries[0], twin_entries[1], "a retry gets the first answer, not a second charge");
    assert_eq!(clash.iter().filter(|r| matches!(r, Ok(true))).count(), 1, "one clash wins: {clash:?}");
    assert_eq!(clash.iter().filter(|r| r.as_ref().is_err_and(|e| reason(e) == "IDEMPOTENCY_KEY_REUSED")).count(), 1);

    // 43 neighbours + one twin + one clash: each charged once, and batches did form.
    let (entries, transactions) = debits_and_transactions(&server, "hot").await;
    assert_eq!(entries, 45);
    assert!(transactions < entries, "{entries} debits in {transactions} transactions: no batch formed");
    let charged: i64 = server
        .sql()
        .await
        .query_one("SELECT -SUM(delta_credits)::bigint FROM ledger_entries WHERE account_id = 'hot' AND kind = 'debit'", &[])
        .await
        .expect("sum")
        .get(0);
    assert!(charged == 43 * 10 + 11 + 13 || charged == 43 * 10 + 11 + 17, "charged {charged}");
    assert_ledger_explains_balances(&server).await;
}
