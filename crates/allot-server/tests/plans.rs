//! Plans in force: per-minute rate caps (GCRA in Redis, injected clock), the Redis failure
//! policy, org pooling with member caps, all-or-nothing multi-meter decisions, plan changes and
//! cancellation at period end, and usage reporting.

mod common;

use allot_proto::v1 as pb;
use allot_server::testkit::{Admin, Entitlements, TestServer};
use common::*;
use time::macros::datetime;
use time::Duration;

fn meter(name: &str, allowance: Option<i64>) -> pb::MeterAllowance {
    pb::MeterAllowance { meter: name.into(), allowance_credits: allowance, ..Default::default() }
}

fn rated(name: &str, allowance: Option<i64>, per_minute: i64, policy: pb::RateFailurePolicy) -> pb::MeterAllowance {
    pb::MeterAllowance { rate_limit_per_minute: Some(per_minute), rate_failure_policy: policy as i32, ..meter(name, allowance) }
}

async fn plan(admin: &mut Admin, id: &str, free_default: bool, scope: pb::PlanScope, meters: Vec<pb::MeterAllowance>) {
    admin
        .upsert_plan(pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: id.into(),
                tier: id.into(),
                name: id.into(),
                meters,
                is_free_default: free_default,
                scope: scope as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("upsert plan");
}

fn line(meter: &str, amount: i64) -> pb::MeterAmount {
    pb::MeterAmount { meter: meter.into(), amount_credits: amount, ..Default::default() }
}

async fn debit_many(client: &mut Entitlements, account: &str, usage: Vec<pb::MeterAmount>, key: &str) -> pb::DebitResponse {
    client
        .debit(pb::DebitRequest { account_id: account.into(), usage, idempotency_key: key.into(), ..Default::default() })
        .await
        .expect("debit")
        .into_inner()
}

async fn subscribe(admin: &mut Admin, account: &str, plan_id: &str, start: time::OffsetDateTime, cancel_at_period_end: bool) {
    admin
        .upsert_subscription(pb::UpsertSubscriptionRequest {
            subscription: Some(pb::Subscription {
                account_id: account.into(),
                plan_id: plan_id.into(),
                status: pb::SubscriptionStatus::Active as i32,
                current_period_start: Some(allot_server::grpc::to_proto::timestamp(start)),
                current_period_end: Some(allot_server::grpc::to_proto::timestamp(allot_domain::period::add_months(start, 1))),
                cancel_at_period_end,
                ..Default::default()
            }),
        })
        .await
        .expect("subscribe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_caps_admit_exactly_the_burst_then_refill_with_time() {
    let server = TestServer::start_at(datetime!(2026-03-10 12:00 UTC)).await;
    let (entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![rated("requests", None, 30, pb::RateFailurePolicy::FailClosed)]).await;

    // 100 concurrent requests at one instant: exactly the burst (30) get through.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut client = entitlements.clone();
        tasks.push(tokio::spawn(async move { debit(&mut client, "acct", "requests", 1, &format!("r{i}")).await }));
    }
    let mut admitted = 0;
    for task in tasks {
        let response = task.await.expect("task");
        if allowed(response.decision) {
            admitted += 1;
        } else {
            assert_eq!(response.reason, pb::DenialReason::RateLimited as i32);
            assert!((1..=2_000).contains(&response.retry_after_ms), "retry after {} ms", response.retry_after_ms);
            let rate = response.meter.expect("meter").rate.expect("rate status");
            assert_eq!((rate.limit_per_minute, rate.remaining), (30, 0));
        }
    }
    assert_eq!(admitted, 30);

    let mut client = entitlements.clone();
    // A rate-limited decision is not stored under its key: the same key succeeds once there is room.
    let limited = debit(&mut client, "acct", "requests", 1, "retry-me").await;
    assert_eq!(limited.reason, pb::DenialReason::RateLimited as i32);
    server.clock.advance(Duration::seconds(2)); // 30 a minute refills one every 2 s
    assert!(allowed(debit(&mut client, "acct", "requests", 1, "retry-me").await.decision));
    assert!(!allowed(debit(&mut client, "acct", "requests", 1, "again").await.decision));

    // Worst case in any minute: burst + one minute's refill (60 here), never more.
    server.clock.advance(Duration::seconds(60));
    let mut in_window = 0;
    for i in 0..100 {
        if allowed(debit(&mut client, "acct", "requests", 1, &format!("w{i}")).await.decision) {
            in_window += 1;
        }
    }
    assert_eq!(in_window, 30, "a full bucket after a quiet minute");

    // Weighted: a cost of 10 uses 10 units.
    server.clock.advance(Duration::seconds(60));
    let mut heavy = 0;
    for i in 0..5 {
        if allowed(debit(&mut client, "acct", "requests", 10, &format!("h{i}")).await.decision) {
            heavy += 1;
        }
    }
    assert_eq!(heavy, 3);
    let used: i64 = server.sql().await.query_one("SELECT allowance_used_credits FROM meter_balances", &[]).await.expect("used").get(0);
    assert_eq!(used, 30 + 1 + 30 + 30, "money moved exactly for the admitted requests");
}

#[tokio::test]
async fn check_reports_rate_status_without_consuming() {
    let server = TestServer::start_at(datetime!(2026-03-10 12:00 UTC)).await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![rated("requests", Some(1_000), 10, pb::RateFailurePolicy::FailOpen)]).await;
    for _ in 0..20 {
        let status = check(&mut entitlements, "acct", "requests", 1).await;
        assert!(allowed(status.decision));
        assert_eq!(status.meter.expect("meter").rate.expect("rate").remaining, 10);
    }
    let too_big = check(&mut entitlements, "acct", "requests", 11).await;
    assert_eq!(too_big.reason, pb::DenialReason::RateLimited as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_meter_follows_its_policy_and_money_is_unchanged() {
    let closed = allot_server::localstack::free_port().expect("port");
    let server = TestServer::start_with(datetime!(2026-03-10 12:00 UTC), |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{closed}"));
        c.redis_timeout_ms = 50;
    })
    .await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(
        &mut admin,
        "free",
        true,
        pb::PlanScope::User,
        vec![rated("open", Some(100), 10, pb::RateFailurePolicy::FailOpen), rated("closed", Some(100), 10, pb::RateFailurePolicy::FailClosed)],
    )
    .await;
    for i in 0..20 {
        let open = debit(&mut entitlements, "acct", "open", 1, &format!("o{i}")).await;
        assert!(allowed(open.decision), "fail open lets requests through");
        assert!(open.meter.expect("meter").rate.expect("rate").failed_open);
    }
    let closed = debit(&mut entitlements, "acct", "closed", 1, "c1").await;
    assert_eq!(closed.reason, pb::DenialReason::RateLimited as i32);
    let db = server.sql().await;
    let open_used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances WHERE meter = 'open'", &[]).await.expect("open").get(0);
    assert_eq!(open_used, 20, "credit is still enforced and charged in PostgreSQL");
    let closed_entries: i64 =
        db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE meter = 'closed' AND kind = 'debit'", &[]).await.expect("n").get(0);
    assert_eq!(closed_entries, 0);
    // Credit limits still bite while failing open.
    let over = debit(&mut entitlements, "acct", "open", 81, "o-over").await;
    assert_eq!(over.reason, pb::DenialReason::InsufficientCredit as i32);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn org_pooling_with_member_caps_under_concurrency() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![meter("tokens", Some(10))]).await;
    let mut team = meter("tokens", Some(1_000));
    team.member_cap_credits = Some(100);
    plan(&mut admin, "team", false, pb::PlanScope::Org, vec![team]).await;
    subscribe(&mut admin, "acme", "team", allot_server::clock::Clock::now(&*server.clock), false).await;
    for member in ["m1", "m2", "m3", "m4"] {
        admin.upsert_account(pb::Account { account_id: member.into(), org_id: "acme".into() }).await.expect("member");
    }
    let err = admin.upsert_account(pb::Account { account_id: "acme".into(), org_id: "other".into() }).await.expect_err("org with members");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut tasks = Vec::new();
    for member in ["m1", "m2", "m3", "m4"] {
        for i in 0..20 {
            let mut client = entitlements.clone();
            tasks.push(tokio::spawn(async move { (member, debit(&mut client, member, "tokens", 10, &format!("{member}-{i}")).await) }));
        }
    }
    let mut per_member = std::collections::BTreeMap::new();
    for task in tasks {
        let (member, response) = task.await.expect("task");
        if allowed(response.decision) {
            *per_member.entry(member).or_insert(0) += 10;
            assert_eq!(response.meter.expect("meter").payer_account_id, "acme");
        } else {
            assert_eq!(response.reason, pb::DenialReason::MemberCapReached as i32);
        }
    }
    assert_eq!(per_member.values().copied().collect::<Vec<i64>>(), vec![100, 100, 100, 100]);
    let db = server.sql().await;
    let org_used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances WHERE account_id = 'acme'", &[]).await.expect("org").get(0);
    assert_eq!(org_used, 400, "the org's pool paid");
    let member_rows: i64 = db.query_one("SELECT COUNT(*) FROM meter_balances WHERE account_id <> 'acme'", &[]).await.expect("n").get(0);
    assert_eq!(member_rows, 0, "members have no meters of their own");
    let usage: Vec<(String, i64)> = db
        .query("SELECT member_id, used_credits FROM member_usage ORDER BY member_id", &[])
        .await
        .expect("usage")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(usage.iter().map(|u| u.1).collect::<Vec<_>>(), vec![100, 100, 100, 100]);

    // A refund gives the member room again.
    let mut client = entitlements.clone();
    let entry: String = db
        .query_one("SELECT id::text FROM ledger_entries WHERE acting_account_id = 'm1' AND kind = 'debit' LIMIT 1", &[])
        .await
        .expect("entry")
        .get(0);
    client.refund(pb::RefundRequest { entry_id: entry, amount_credits: 10, idempotency_key: "refund-m1".into() }).await.expect("refund");
    assert!(allowed(debit(&mut client, "m1", "tokens", 10, "m1-after").await.decision));
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn several_meters_are_all_or_nothing() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![meter("requests", Some(10)), meter("tokens", Some(1_000))]).await;

    let denied = debit_many(&mut entitlements, "acct", vec![line("requests", 1), line("tokens", 1_200)], "d1").await;
    assert!(!allowed(denied.decision));
    assert_eq!(denied.meters.len(), 2);
    assert!(allowed(denied.meters[0].decision), "requests alone would fit");
    assert_eq!(denied.meters[1].reason, pb::DenialReason::InsufficientCredit as i32);
    assert!(denied.meters.iter().all(|m| m.entry_id.is_empty()), "nothing was charged");

    let ok = debit_many(&mut entitlements, "acct", vec![line("requests", 1), line("tokens", 900)], "d2").await;
    assert!(allowed(ok.decision));
    let used: Vec<i64> = ok.meters.iter().map(|m| m.meter.as_ref().expect("meter").used_credits).collect();
    assert_eq!(used, vec![1, 900]);
    assert!(ok.meters.iter().all(|m| !m.entry_id.is_empty()));

    // A hold over two meters, committed per meter.
    let hold = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            usage: vec![line("tokens", 100), line("requests", 1)],
            ttl_ms: 60_000,
            idempotency_key: "h1".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    assert!(allowed(hold.decision));
    let err = entitlements
        .commit(pb::CommitRequest { hold_id: hold.hold_id.clone(), actual_credits: 5, ..Default::default() })
        .await
        .expect_err("one amount for two meters");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let committed = entitlements
        .commit(pb::CommitRequest { hold_id: hold.hold_id.clone(), actual: vec![line("tokens", 60)], ..Default::default() })
        .await
        .expect("commit")
        .into_inner();
    let after: Vec<(String, i64, i64)> = committed
        .meters
        .iter()
        .map(|m| {
            let s = m.meter.as_ref().expect("meter");
            (s.meter.clone(), s.used_credits, s.held_credits)
        })
        .collect();
    assert_eq!(after, vec![("requests".to_owned(), 1, 0), ("tokens".to_owned(), 960, 0)]);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn plan_changes_mid_period_and_cancellation_at_period_end() {
    let start = datetime!(2026-01-10 00:00 UTC);
    let server = TestServer::start_at(start + Duration::days(5)).await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![meter("tokens", Some(100))]).await;
    plan(&mut admin, "pro", false, pb::PlanScope::User, vec![meter("tokens", Some(1_000))]).await;
    subscribe(&mut admin, "acct", "pro", start, false).await;
    debit(&mut entitlements, "acct", "tokens", 80, "d1").await;

    // Downgrade inside the period: the use so far counts against the smaller allowance.
    subscribe(&mut admin, "acct", "pro", start, false).await;
    plan(&mut admin, "pro", false, pb::PlanScope::User, vec![meter("tokens", Some(50))]).await;
    let down = check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter");
    assert_eq!((down.limit_credits, down.used_credits, down.remaining_credits), (Some(50), 80, Some(0)));
    // Upgrade: the new allowance applies at once, the use is kept.
    plan(&mut admin, "pro", false, pb::PlanScope::User, vec![meter("tokens", Some(1_000))]).await;
    let up = check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter");
    assert_eq!((up.limit_credits, up.used_credits, up.remaining_credits), (Some(1_000), 80, Some(920)));
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 900, "d2").await.decision));

    // Cancel at period end: entitled until 2026-02-10, then the free plan on calendar months.
    subscribe(&mut admin, "acct", "pro", start, true).await;
    server.clock.set(datetime!(2026-02-09 23:59 UTC));
    assert_eq!(check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter").plan_id, "pro");
    server.clock.set(datetime!(2026-02-10 00:00 UTC));
    let after = check(&mut entitlements, "acct", "tokens", 0).await.meter.expect("meter");
    assert_eq!((after.plan_id.as_str(), after.limit_credits), ("free", Some(100)));
    let sub = admin.get_subscription(pb::GetSubscriptionRequest { account_id: "acct".into() }).await.expect("sub").into_inner();
    assert!(!sub.entitled);
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 100, "d3").await.decision));
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn usage_summary_and_breakdown_by_attribute() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![meter("tokens", Some(10_000)), meter("requests", None)]).await;
    let attributed = |model: &str, amount, key: &str| pb::DebitRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        attributes: [("model".to_owned(), model.to_owned())].into_iter().collect(),
        ..Default::default()
    };
    let mut first = String::new();
    for (i, (model, amount)) in [("gpt-4o", 500), ("gpt-4o", 700), ("claude", 300), ("mini", 50)].into_iter().enumerate() {
        let response = entitlements.debit(attributed(model, amount, &format!("k{i}"))).await.expect("debit").into_inner();
        if i == 0 {
            first = response.entry_id;
        }
    }
    debit(&mut entitlements, "acct", "tokens", 25, "plain").await;
    entitlements.refund(pb::RefundRequest { entry_id: first, amount_credits: 100, idempotency_key: "r1".into() }).await.expect("refund");

    let breakdown = entitlements
        .get_usage_breakdown(pb::GetUsageBreakdownRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            group_by: "model".into(),
            period_at: None,
        })
        .await
        .expect("breakdown")
        .into_inner();
    let groups: Vec<(String, i64, i64)> = breakdown.groups.iter().map(|g| (g.value.clone(), g.total_credits, g.count)).collect();
    assert_eq!(groups, vec![("gpt-4o".into(), 1_100, 2), ("claude".into(), 300, 1), ("mini".into(), 50, 1), (String::new(), 25, 1)]);
    let ledger = admin
        .list_ledger_entries(pb::ListLedgerEntriesRequest { account_id: "acct".into(), ..Default::default() })
        .await
        .expect("ledger")
        .into_inner();
    assert!(ledger.entries.iter().any(|e| e.attributes.get("model").map(String::as_str) == Some("claude")));

    let summary = entitlements.get_usage_summary(pb::GetUsageSummaryRequest { account_id: "acct".into() }).await.expect("summary").into_inner();
    assert_eq!((summary.plan_id.as_str(), summary.payer_account_id.as_str(), summary.entitled), ("free", "acct", false));
    let meters: Vec<(String, i64)> = summary
        .meters
        .iter()
        .map(|m| {
            let s = m.status.as_ref().expect("status");
            (s.meter.clone(), s.used_credits)
        })
        .collect();
    assert_eq!(meters, vec![("requests".into(), 0), ("tokens".into(), 1_475)]);
    let err = entitlements
        .get_usage_breakdown(pb::GetUsageBreakdownRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            group_by: "Bad Key".into(),
            period_at: None,
        })
        .await
        .expect_err("bad key");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// `acct`'s `tokens` by `model` in the period at `at` (the current one without): (value, credits, charges).
async fn model_breakdown(mut client: Entitlements, at: Option<time::OffsetDateTime>) -> Vec<(String, i64, i64)> {
    let period_at = at.map(|t| prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: 0 });
    let request = pb::GetUsageBreakdownRequest { account_id: "acct".into(), meter: "tokens".into(), group_by: "model".into(), period_at };
    let groups = client.get_usage_breakdown(request).await.expect("breakdown").into_inner().groups;
    groups.iter().map(|g| (g.value.clone(), g.total_credits, g.count)).collect()
}

/// The current period's overall usage lives on the meter's row; when the meter moves to a new
/// period it is added to the closing period's roll-up, and refunds of a closed period go there
/// too. Breakdowns of both periods stay exact, alone and batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakdowns_stay_exact_across_a_period_roll_and_refunds_of_the_past_period() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![meter("tokens", Some(10_000))]).await;
    let attributed = |amount, key: &str| pb::DebitRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        attributes: [("model".to_owned(), "a".to_owned())].into_iter().collect(),
        ..Default::default()
    };
    let reader = entitlements.clone();
    let breakdown = |at| model_breakdown(reader.clone(), at);

    server.clock.set(datetime!(2026-03-10 12:00 UTC));
    let march_entry = entitlements.debit(attributed(100, "m1")).await.expect("debit").into_inner().entry_id;
    debit(&mut entitlements, "acct", "tokens", 40, "m2").await;
    assert_eq!(breakdown(None).await, vec![("a".into(), 100, 1), (String::new(), 40, 1)]);

    server.clock.set(datetime!(2026-04-02 08:00 UTC));
    entitlements.debit(attributed(7, "a1")).await.expect("debit");
    let batch: Vec<_> = (0..16)
        .map(|i| {
            let mut client = entitlements.clone();
            tokio::spawn(async move { debit(&mut client, "acct", "tokens", 1, &format!("a-batch-{i}")).await })
        })
        .collect();
    for task in batch {
        assert!(allowed(task.await.expect("task").decision));
    }
    entitlements.refund(pb::RefundRequest { entry_id: march_entry, amount_credits: 30, idempotency_key: "r1".into() }).await.expect("refund");

    let march = Some(datetime!(2026-03-15 00:00 UTC));
    assert_eq!(breakdown(march).await, vec![("a".into(), 70, 1), (String::new(), 40, 1)], "March, closed and refunded");
    assert_eq!(breakdown(None).await, vec![(String::new(), 16, 16), ("a".into(), 7, 1)], "April, on the row");
    let db = server.sql().await;
    let row = db
        .query_one("SELECT period_charged_credits, period_charges FROM meter_balances WHERE account_id = 'acct' AND meter = 'tokens'", &[])
        .await
        .expect("row");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (23, 17));
    let overall: Vec<(time::OffsetDateTime, i64, i64)> = db
        .query("SELECT period_start, total_credits, charges FROM usage_rollups WHERE attr_key = '' ORDER BY period_start", &[])
        .await
        .expect("roll-ups")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(overall, vec![(datetime!(2026-03-01 00:00 UTC), 110, 2)], "only the closed period has an overall roll-up");
    assert_ledger_explains_balances(&server).await;
}

/// A binary from before migration V12 that moves a meter's row into the next period does not
/// know the usage columns: they keep naming the period they belong to, which therefore keeps them,
/// and the next save by this binary moves them into that period's roll-up.
#[tokio::test]
async fn period_usage_keeps_its_period_when_an_older_binary_rolls_the_row() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan(&mut admin, "free", true, pb::PlanScope::User, vec![meter("tokens", Some(10_000))]).await;
    server.clock.set(datetime!(2026-03-10 12:00 UTC));
    debit(&mut entitlements, "acct", "tokens", 40, "m1").await;
    // What an older binary's save writes at the roll: the new period, the usage columns untouched.
    let rolled = server
        .sql()
        .await
        .execute(
            "UPDATE meter_balances SET period_start = '2026-04-01T00:00:00Z', period_end = '2026-05-01T00:00:00Z', allowance_used_credits = 0 \
             WHERE account_id = 'acct' AND meter = 'tokens'",
            &[],
        )
        .await
        .expect("roll");
    assert_eq!(rolled, 1);
    server.clock.set(datetime!(2026-04-02 08:00 UTC));
    let march = Some(datetime!(2026-03-15 00:00 UTC));
    assert_eq!(model_breakdown(entitlements.clone(), march).await, vec![(String::new(), 40, 1)], "March keeps its usage");
    debit(&mut entitlements, "acct", "tokens", 5, "a1").await;
    assert_eq!(model_breakdown(entitlements.clone(), march).await, vec![(String::new(), 40, 1)], "moved into March's roll-up");
    assert_eq!(model_breakdown(entitlements.clone(), None).await, vec![(String::new(), 5, 1)], "April");
}
