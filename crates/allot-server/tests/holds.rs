//! Reserve → commit / release / expiry, and refunds, against a real server and PostgreSQL.

mod common;

use allot_proto::v1 as pb;
use allot_server::testkit::{Entitlements, TestServer};
use common::*;

fn reserve_req(amount: i64, ttl_ms: i64, key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        ttl_ms,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

async fn reserve(client: &mut Entitlements, amount: i64, ttl_ms: i64, key: &str) -> pb::ReserveResponse {
    client.reserve(reserve_req(amount, ttl_ms, key)).await.expect("reserve").into_inner()
}

async fn commit(client: &mut Entitlements, hold_id: &str, actual: i64) -> Result<pb::CommitResponse, tonic::Status> {
    client.commit(pb::CommitRequest { hold_id: hold_id.into(), actual_credits: actual, ..Default::default() }).await.map(|r| r.into_inner())
}

async fn release(client: &mut Entitlements, hold_id: &str) -> Result<pb::ReleaseResponse, tonic::Status> {
    client.release(pb::ReleaseRequest { hold_id: hold_id.into() }).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn holds_count_until_committed_and_settle_once() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 50).await;

    let hold = reserve(&mut entitlements, 80, 60_000, "r1").await;
    assert!(allowed(hold.decision));
    assert_eq!(reserve(&mut entitlements, 80, 60_000, "r1").await, hold, "reserve is idempotent");
    let meter = check(&mut entitlements, "acct", "tokens", 21).await;
    assert_eq!(meter.reason, pb::DenialReason::InsufficientCredit as i32, "the hold counts against availability");
    assert_eq!(meter.meter.expect("meter").held_credits, 80);

    // Commit more than held: the extra is a record of usage (into debt).
    let committed = commit(&mut entitlements, &hold.hold_id, 120).await.expect("commit");
    assert!(allowed(committed.decision));
    let after = committed.meter.clone().expect("meter");
    assert_eq!((after.held_credits, after.used_credits, after.debt_credits), (0, 100, 20));
    assert_eq!(commit(&mut entitlements, &hold.hold_id, 120).await.expect("replay"), committed, "a retried commit gets the same answer");
    let err = commit(&mut entitlements, &hold.hold_id, 10).await.expect_err("different amount");
    assert_eq!(reason(&err), "HOLD_ALREADY_SETTLED");
    let err = release(&mut entitlements, &hold.hold_id).await.expect_err("already committed");
    assert_eq!(reason(&err), "HOLD_ALREADY_SETTLED");
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn release_returns_the_hold_and_expiry_voids_it() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;

    let hold = reserve(&mut entitlements, 60, 60_000, "r1").await;
    let released = release(&mut entitlements, &hold.hold_id).await.expect("release");
    assert_eq!(released.status, pb::HoldStatus::Released as i32);
    assert_eq!(released.meter.clone().expect("meter").available_credits, Some(100));
    assert_eq!(release(&mut entitlements, &hold.hold_id).await.expect("again"), released);
    let err = commit(&mut entitlements, &hold.hold_id, 10).await.expect_err("released");
    assert_eq!(reason(&err), "HOLD_ALREADY_SETTLED");

    // An expired hold stops counting at once and cannot be committed.
    let short = reserve(&mut entitlements, 90, 1_000, "r2").await;
    assert!(allowed(short.decision));
    assert_eq!(check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter").available_credits, Some(10));
    server.clock.advance(time::Duration::milliseconds(1_000));
    assert_eq!(check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter").available_credits, Some(100));
    let err = commit(&mut entitlements, &short.hold_id, 10).await.expect_err("expired");
    assert_eq!(reason(&err), "HOLD_EXPIRED");
    // The sweeper marks it expired in the table.
    let db = server.sql().await;
    let mut status = String::new();
    for _ in 0..50 {
        status = db.query_one("SELECT status FROM holds WHERE id = $1::text::uuid", &[&short.hold_id]).await.expect("hold").get(0);
        if status == "expired" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "expired");
    assert_eq!(release(&mut entitlements, &short.hold_id).await.expect("release expired").status, pb::HoldStatus::Expired as i32);

    // Unknown and malformed hold ids.
    let err = commit(&mut entitlements, &uuid::Uuid::new_v4().to_string(), 1).await.expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = commit(&mut entitlements, "not-a-uuid", 1).await.expect_err("malformed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 1,
            ttl_ms: 999,
            idempotency_key: "r3".into(),
            ..Default::default()
        })
        .await
        .expect_err("ttl too short");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn refunds_never_exceed_the_charge() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    let charge = debit(&mut entitlements, "acct", "tokens", 70, "d1").await;

    let refund = |amount, key: &str| pb::RefundRequest { entry_id: charge.entry_id.clone(), amount_credits: amount, idempotency_key: key.into() };
    let first = entitlements.refund(refund(50, "f1")).await.expect("refund").into_inner();
    assert_eq!(first.refunded_total_credits, 50);
    assert_eq!(entitlements.refund(refund(50, "f1")).await.expect("replay").into_inner(), first);
    let err = entitlements.refund(refund(21, "f2")).await.expect_err("too much");
    assert_eq!(reason(&err), "REFUND_EXCEEDS_CHARGE");
    let last = entitlements.refund(refund(20, "f3")).await.expect("rest").into_inner();
    assert_eq!(last.refunded_total_credits, 70);
    assert_eq!(last.meter.expect("meter").used_credits, 0);

    // A refund entry itself cannot be refunded.
    let err = entitlements
        .refund(pb::RefundRequest { entry_id: last.entry_id.clone(), amount_credits: 1, idempotency_key: "f4".into() })
        .await
        .expect_err("refund of a refund");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Concurrent refunds of one charge: the total stays within it.
    let charge = debit(&mut entitlements, "acct", "tokens", 30, "d2").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = entitlements.clone();
        let req = pb::RefundRequest { entry_id: charge.entry_id.clone(), amount_credits: 4, idempotency_key: format!("c{i}") };
        tasks.push(tokio::spawn(async move { client.refund(req).await }));
    }
    let mut ok = 0;
    for task in tasks {
        if task.await.expect("task").is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 7, "7 × 4 = 28 ≤ 30 < 32");
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn grants_pay_in_priority_order_and_expire() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(0), 0, 0).await;
    let now = allot_server::clock::Clock::now(&*server.clock);
    let grant = |amount, priority, expires: Option<time::OffsetDateTime>, key: &str, kind: pb::GrantKind| pb::GrantCreditsRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        kind: kind as i32,
        priority,
        expires_at: expires.map(allot_server::grpc::to_proto::timestamp),
        idempotency_key: key.into(),
    };
    let purchased = admin.grant_credits(grant(100, 0, None, "g1", pb::GrantKind::Purchased)).await.expect("grant").into_inner();
    let promo =
        admin.grant_credits(grant(50, 5, Some(now + time::Duration::days(1)), "g2", pb::GrantKind::Promotional)).await.expect("grant").into_inner();
    let err =
        admin.grant_credits(grant(1, 0, Some(now - time::Duration::seconds(1)), "g3", pb::GrantKind::Purchased)).await.expect_err("past expiry");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let spent = debit(&mut entitlements, "acct", "tokens", 60, "d1").await;
    let grants: Vec<(&str, i64)> = spent.breakdown.iter().map(|b| (b.grant_id.as_str(), b.amount_credits)).collect();
    assert_eq!(grants, vec![(promo.grant_id.as_str(), -50), (purchased.grant_id.as_str(), -10)]);

    // Refund back into the promotional grant, then let it expire: only purchased credit remains.
    entitlements
        .refund(pb::RefundRequest { entry_id: spent.entry_id.clone(), amount_credits: 60, idempotency_key: "f1".into() })
        .await
        .expect("refund");
    server.clock.advance(time::Duration::days(2));
    let balance = admin.get_balance(pb::GetBalanceRequest { account_id: "acct".into() }).await.expect("balance").into_inner();
    let meter = &balance.meters[0];
    assert_eq!(meter.status.as_ref().expect("status").remaining_credits, Some(100));
    assert_eq!(meter.grants.len(), 1, "the expired grant is not listed");
    let denied = debit(&mut entitlements, "acct", "tokens", 101, "d2").await;
    assert!(!allowed(denied.decision));
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 100, "d3").await.decision));

    let ledger = admin
        .list_ledger_entries(pb::ListLedgerEntriesRequest { account_id: "acct".into(), page_size: 2, ..Default::default() })
        .await
        .expect("ledger")
        .into_inner();
    assert_eq!(ledger.entries.len(), 2);
    assert!(!ledger.next_page_token.is_empty());
    let kinds: Vec<i32> = ledger.entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![pb::EntryKind::Grant as i32, pb::EntryKind::Grant as i32]);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reserve_counts_holds_committed_while_it_waited_for_the_lock_on_a_connection_new_to_locking() {
    // One connection: a balance read prepares the grant and hold reads a reserve pipelines behind
    // its row lock, but not the lock, which the reserve is the first to use.
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.db_pool_size_max = 1).await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    let mut client = entitlements.clone();
    assert!(allowed(debit(&mut client, "acct", "tokens", 10, "open").await.decision));
    admin.get_balance(pb::GetBalanceRequest { account_id: "acct".into() }).await.expect("balance");
    // Another transaction holds 80 of the 90 left under the meter's lock and has not committed.
    let tenant = server.tenant.tenant.0;
    let mut holding = connect(&server.database_url).await;
    let hold = holding.transaction().await.expect("begin");
    lock_meters(&hold, tenant, "acct").await;
    hold_tokens(&hold, tenant, "acct", 80).await;
    let waiting = tokio::spawn(async move { reserve(&mut client, 30, 600_000, "r1").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    hold.commit().await.expect("commit");
    let reserved = waiting.await.expect("task");
    assert!(!allowed(reserved.decision), "30 reserved where 10 were left beside a hold of 80");
    assert!(reserved.hold_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reserve_whose_key_is_stored_meanwhile_holds_nothing() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    let mut client = entitlements.clone();
    assert!(allowed(debit(&mut client, "acct", "tokens", 10, "open").await.decision));
    // Another transaction has stored the key `raced` and not committed yet: the reserve finds it
    // unused, decides, and sends its record with its COMMIT behind it; the record's insert waits,
    // then fails once the other transaction commits.
    let tenant = server.tenant.tenant.0;
    let mut racing = connect(&server.database_url).await;
    let raced = racing.transaction().await.expect("begin");
    store_key(&raced, tenant, "raced", "reserve").await;
    let waiting = tokio::spawn(async move { client.reserve(reserve_req(30, 600_000, "raced")).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    raced.commit().await.expect("commit");
    let err = waiting.await.expect("task").expect_err("a key another request stored");
    assert_eq!((err.code(), reason(&err).as_str()), (tonic::Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"));
    let db = server.sql().await;
    let holds: i64 = db.query_one("SELECT COUNT(*) FROM holds", &[]).await.expect("count").get(0);
    assert_eq!(holds, 0, "the reserve's hold was committed beside another request's record of its key");
    let mut client = entitlements.clone();
    let check = check(&mut client, "acct", "tokens", 90).await;
    assert!(allowed(check.decision), "90 left, none of it held");
}
