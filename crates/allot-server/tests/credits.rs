//! Debits, idempotency and checks against a real server and PostgreSQL, including the
//! concurrency invariants: gates never overdraw, one key writes one entry.

mod common;

use allot_proto::v1 as pb;
use allot_server::testkit::TestServer;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gate_debits_never_overdraw() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    // 64 debits of 30 against 1,000: exactly 33 fit.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut client = entitlements.clone();
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

    let status = check(&mut entitlements.clone(), "acct", "tokens", 0).await.meter.expect("meter");
    assert_eq!(status.used_credits, 990);
    assert_eq!(status.available_credits, Some(10));
    let db = server.sql().await;
    let debits: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(debits, 33, "one entry per admitted debit");
    let records: i64 = db.query_one("SELECT COUNT(*) FROM idempotency_records", &[]).await.expect("count").get(0);
    assert_eq!(records, 64, "denials are recorded too");
    assert_eq!(assert_ledger_explains_balances(&server).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_of_one_key_write_one_entry() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut client = entitlements.clone();
        tasks.push(tokio::spawn(async move { debit(&mut client, "acct", "tokens", 7, "same-key").await }));
    }
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.expect("task"));
    }
    assert!(allowed(responses[0].decision));
    assert!(responses.iter().all(|r| *r == responses[0]), "every replay answers identically");

    let db = server.sql().await;
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 1);
    let used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances", &[]).await.expect("used").get(0);
    assert_eq!(used, 7);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_and_a_denial_is_replayed() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;

    let first = debit(&mut entitlements, "acct", "tokens", 10, "k1").await;
    assert!(allowed(first.decision));
    let err = entitlements.debit(debit_req("acct", "tokens", 11, "k1", pb::DebitMode::Gate)).await.expect_err("different amount");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");
    let err = entitlements.debit(debit_req("other", "tokens", 10, "k1", pb::DebitMode::Gate)).await.expect_err("different account");
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");

    // A denied gate is recorded: granting credit afterwards does not change its replay.
    let denied = debit(&mut entitlements, "acct", "tokens", 500, "big").await;
    assert!(!allowed(denied.decision));
    purchase(&mut admin, "acct", "tokens", 1_000, "grant-1").await;
    assert_eq!(debit(&mut entitlements, "acct", "tokens", 500, "big").await, denied);
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 500, "big-2").await.decision));
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn check_changes_nothing() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    debit(&mut entitlements, "acct", "tokens", 40, "k1").await;

    let snapshot = |db: deadpool_postgres::Client| async move {
        let mut out = Vec::new();
        for table in ["meter_balances", "ledger_entries", "grants", "holds", "idempotency_records"] {
            let row = db
                .query_one(&format!("SELECT COUNT(*), COALESCE(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"), &[])
                .await
                .expect("snapshot");
            out.push((table, row.get::<_, i64>(0), row.get::<_, String>(1)));
        }
        out
    };
    let before = snapshot(server.sql().await).await;
    for (account, amount) in [("acct", 10), ("acct", 1_000), ("new-account", 5), ("acct", 0)] {
        check(&mut entitlements, account, "tokens", amount).await;
    }
    // Checks across a period boundary do not roll the period either.
    server.clock.advance(time::Duration::days(40));
    let later = check(&mut entitlements, "acct", "tokens", 10).await;
    assert_eq!(later.meter.expect("meter").used_credits, 0, "the view is of the new period");
    assert_eq!(snapshot(server.sql().await).await, before);

    let denied = check(&mut entitlements, "acct", "tokens", 101).await;
    assert_eq!(denied.reason, pb::DenialReason::InsufficientCredit as i32);
}

#[tokio::test]
async fn quota_exhausted_records_into_debt_and_no_entitlement() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;

    // No plan at all yet: nothing can pay.
    let none = check(&mut entitlements, "acct", "tokens", 1).await;
    assert_eq!(none.reason, pb::DenialReason::NoEntitlement as i32);

    free_plan(&mut admin, "tokens", Some(100), 0, 50).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 100, "k1").await.decision));
    let spent = debit(&mut entitlements, "acct", "tokens", 1, "k2").await;
    assert_eq!(spent.reason, pb::DenialReason::QuotaExhausted as i32);

    let record = |amount, key: &str| debit_req("acct", "tokens", amount, key, pb::DebitMode::Record);
    let into_debt = entitlements.record_ok(record(30, "r1")).await;
    assert!(allowed(into_debt.decision));
    assert_eq!(into_debt.meter.expect("meter").debt_credits, 30);
    let beyond = entitlements.record_ok(record(21, "r2")).await;
    assert_eq!(beyond.reason, pb::DenialReason::DebtLimitReached as i32);
    assert!(allowed(entitlements.record_ok(record(20, "r3")).await.decision), "exactly down to the floor");
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn periods_roll_over_with_capped_rollover() {
    let start = time::macros::datetime!(2025-01-31 12:00 UTC);
    let server = TestServer::start_at(start).await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 30, 0).await;

    debit(&mut entitlements, "acct", "tokens", 60, "jan").await;
    server.clock.set(time::macros::datetime!(2025-02-01 00:00 UTC));
    let feb = check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter");
    assert_eq!((feb.used_credits, feb.remaining_credits), (0, Some(130)), "40 unused, capped at 30");
    let debited = debit(&mut entitlements, "acct", "tokens", 110, "feb").await;
    assert!(allowed(debited.decision));
    let kinds: Vec<i32> = debited.breakdown.iter().map(|b| b.kind).collect();
    assert_eq!(kinds, vec![pb::BucketKind::Allowance as i32, pb::BucketKind::Rollover as i32]);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn requests_need_a_valid_key_and_tenants_are_isolated() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    let first = debit(&mut entitlements, "shared-name", "tokens", 10, "k1").await;

    let (mut stranger, _) = server.clients_for("allot_0000").await;
    let err = stranger
        .check(pb::CheckRequest { account_id: "a".into(), meter: "tokens".into(), amount_credits: 1, ..Default::default() })
        .await
        .expect_err("bad key");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Another tenant using the same account name and key sees nothing of the first.
    let other = allot_server::seed::tenant(&server.pool, "other").await.expect("tenant");
    let (mut other_entitlements, mut other_admin) = server.clients_for(&other.api_key).await;
    let view = check(&mut other_entitlements, "shared-name", "tokens", 1).await;
    assert_eq!(view.reason, pb::DenialReason::NoEntitlement as i32, "the other tenant has no plans");
    let refund = other_entitlements
        .refund(pb::RefundRequest { entry_id: first.entry_id.clone(), amount_credits: 1, idempotency_key: "k1".into() })
        .await
        .expect_err("foreign entry");
    assert_eq!(refund.code(), tonic::Code::NotFound);
    let ledger = other_admin
        .list_ledger_entries(pb::ListLedgerEntriesRequest { account_id: "shared-name".into(), ..Default::default() })
        .await
        .expect("ledger")
        .into_inner();
    assert!(ledger.entries.is_empty());
    // The same idempotency key in another tenant is a different key.
    free_plan(&mut other_admin, "tokens", Some(100), 0, 0).await;
    let theirs = debit(&mut other_entitlements, "shared-name", "tokens", 10, "k1").await;
    assert!(allowed(theirs.decision));
    assert_ne!(theirs.entry_id, first.entry_id);
}

/// Record-mode debits without the panic-prone boilerplate.
trait RecordOk {
    async fn record_ok(&mut self, req: pb::DebitRequest) -> pb::DebitResponse;
}

impl RecordOk for allot_server::testkit::Entitlements {
    async fn record_ok(&mut self, req: pb::DebitRequest) -> pb::DebitResponse {
        self.debit(req).await.expect("record").into_inner()
    }
}

#[tokio::test]
async fn messages_larger_than_the_codec_buffer_travel_whole_both_ways() {
    use prost::Message as _;
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    for i in 0..40 {
        assert!(allowed(debit(&mut entitlements, "acct", "tokens", 1, &format!("large-{i}")).await.decision));
    }
    // An answer many times the codec's first buffer: encoded by the server, decoded by the client.
    let ledger = admin
        .list_ledger_entries(pb::ListLedgerEntriesRequest { account_id: "acct".into(), page_size: 40, ..Default::default() })
        .await
        .expect("ledger")
        .into_inner();
    assert_eq!(ledger.entries.len(), 40);
    assert!(ledger.encoded_len() > 4 * allot_proto::codec::BUFFER_BYTES, "the answer is {} bytes", ledger.encoded_len());
    // A request larger than the buffer is decoded whole, then judged on its fields.
    let long_account = "a".repeat(8 * allot_proto::codec::BUFFER_BYTES);
    let err =
        entitlements.check(pb::CheckRequest { account_id: long_account, meter: "tokens".into(), ..Default::default() }).await.expect_err("too long");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("account_id"), "{err:?}");
}
