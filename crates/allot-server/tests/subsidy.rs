//! Subsidy pools: free / partial / gate by trust tier, daily budget and pool balance; dry runs
//! that equal the real decision; 64 concurrent subsidised debits that never overdraw the pool or
//! an identity's budget; reservations settled and returned; refunds split back; paid usage
//! funding the pool; conservation of every credit in the grant log.

mod common;

use allot_proto::v1 as pb;
use allot_proto::v1::subsidy_client::SubsidyClient;
use allot_server::service::{subsidy, Ctx};
use allot_server::testkit::{Admin, Bearer, Entitlements, TestServer};
use common::*;
use time::macros::datetime;
use time::OffsetDateTime;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

const T0: OffsetDateTime = datetime!(2026-06-10 12:00 UTC);

type Pools = SubsidyClient<InterceptedService<Channel, Bearer>>;

async fn start() -> (TestServer, Entitlements, Admin, Pools) {
    let server = TestServer::start_with(T0, |c| c.hold_sweep_interval_ms = 3_600_000).await;
    let (entitlements, mut admin) = server.clients().await;
    let (channel, bearer) = server.channel_for(&server.tenant.api_key).await;
    let pools = SubsidyClient::with_interceptor(channel, bearer);
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    (server, entitlements, admin, pools)
}

async fn pool(pools: &mut Pools, id: &str, share_bps: u32, shards: u32, top_up: i64) {
    pools
        .upsert_pool(pb::UpsertPoolRequest {
            pool: Some(pb::Pool { pool_id: id.into(), share_bps, meters: vec!["tokens".into()], shard_count: shards, ..Default::default() }),
        })
        .await
        .expect("pool");
    if top_up > 0 {
        pools
            .top_up_pool(pb::TopUpPoolRequest { pool_id: id.into(), amount_credits: top_up, idempotency_key: format!("seed-{id}") })
            .await
            .expect("top up");
    }
}

async fn tier(pools: &mut Pools, tier: &str, budget: i64, accounts: &[&str]) {
    pools.upsert_trust_tier(pb::UpsertTrustTierRequest { tier: tier.into(), daily_budget_credits: budget }).await.expect("tier");
    for account in accounts {
        pools.set_account_trust_tier(pb::SetAccountTrustTierRequest { account_id: (*account).into(), tier: tier.into() }).await.expect("set tier");
    }
}

fn ask(pool: &str) -> Option<pb::SubsidyRequest> {
    Some(pb::SubsidyRequest { pool_id: pool.into(), identity: String::new() })
}

async fn debit_subsidised(entitlements: &mut Entitlements, account: &str, amount: i64, key: &str) -> pb::DebitResponse {
    let mut req = debit_req(account, "tokens", amount, key, pb::DebitMode::Gate);
    req.subsidy = ask("gen");
    entitlements.debit(req).await.expect("debit").into_inner()
}

async fn check_subsidised(entitlements: &mut Entitlements, account: &str, amount: i64) -> pb::CheckResponse {
    entitlements
        .check(pb::CheckRequest {
            account_id: account.into(),
            meter: "tokens".into(),
            amount_credits: amount,
            subsidy: ask("gen"),
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner()
}

fn split(decision: &Option<pb::SubsidyDecision>) -> (pb::SubsidyServe, i64, i64) {
    let d = decision.as_ref().expect("a subsidy decision");
    (d.serve(), d.absorbed_credits, d.account_credits)
}

async fn status(pools: &mut Pools, id: &str) -> pb::GetPoolStatusResponse {
    pools.get_pool_status(pb::GetPoolStatusRequest { pool_id: id.into() }).await.expect("status").into_inner()
}

/// Every subsidy in the grant log is conserved (cost = absorbed + account part, the account part
/// equals its ledger entry), and the pool's balances are exactly the sum of the log's movements.
async fn assert_pool_conserved(server: &TestServer) {
    let db = server.sql().await;
    let bad = db
        .query(
            "SELECT g.id, g.cost_credits, g.absorbed_credits, g.account_credits, l.delta_credits FROM subsidy_grants g \
             LEFT JOIN ledger_entries l ON l.tenant_id = g.tenant_id AND l.id = g.entry_id \
             WHERE g.kind IN ('absorb', 'settle') AND (g.cost_credits <> g.absorbed_credits + g.account_credits \
                OR COALESCE(-l.delta_credits, 0) <> g.account_credits OR (g.account_credits > 0 AND l.id IS NULL))",
            &[],
        )
        .await
        .expect("conservation query");
    assert!(bad.is_empty(), "subsidies whose parts do not add up: {:?}", bad.iter().map(|r| r.get::<_, uuid::Uuid>(0)).collect::<Vec<_>>());
    let rows = db
        .query(
            "SELECT p.pool_id, p.balance, p.reserved, COALESCE(g.delta, 0)::bigint, COALESCE(g.reserved, 0)::bigint FROM \
               (SELECT tenant_id, pool_id, SUM(balance_credits)::bigint AS balance, SUM(reserved_credits)::bigint AS reserved FROM subsidy_pool_shards GROUP BY 1, 2) p \
             LEFT JOIN (SELECT tenant_id, pool_id, SUM(pool_delta_credits) AS delta, \
                   SUM(CASE kind WHEN 'reserve' THEN reserved_credits WHEN 'return' THEN -reserved_credits WHEN 'settle' THEN -reserved_credits ELSE 0 END) AS reserved \
                 FROM subsidy_grants GROUP BY 1, 2) g ON g.tenant_id = p.tenant_id AND g.pool_id = p.pool_id",
            &[],
        )
        .await
        .expect("balance query");
    for row in rows {
        let (pool, balance, reserved, logged, logged_reserved): (String, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert_eq!(balance, logged, "pool {pool}: balance is the sum of the log's movements");
        assert_eq!(reserved, logged_reserved, "pool {pool}: reservations are the log's reserves less returns and settlements");
        assert!(balance >= 0 && reserved >= 0);
    }
    assert_ledger_explains_balances(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_partial_and_gate_follow_tier_budget_and_pool_and_dry_runs_agree() {
    let (server, mut entitlements, _admin, mut pools) = start().await;
    pool(&mut pools, "gen", 1_000, 1, 120).await;
    tier(&mut pools, "established", 50, &["est-1", "est-2", "est-3", "est-4"]).await;

    // (account, cost, serve, absorbed, account part); the pool starts at 120.
    let steps = [
        ("newbie", 30, pb::SubsidyServe::Gate, 0, 30), // tier `new`: no budget
        ("est-1", 30, pb::SubsidyServe::Free, 30, 0),
        ("est-1", 30, pb::SubsidyServe::Partial, 20, 10), // budget 50 per day
        ("est-1", 30, pb::SubsidyServe::Gate, 0, 30),
        ("est-2", 60, pb::SubsidyServe::Partial, 50, 10), // pool 70 → 20
        ("est-3", 40, pb::SubsidyServe::Partial, 20, 20), // the pool runs dry
        ("est-4", 10, pb::SubsidyServe::Gate, 0, 10),     // a dry pool serves nothing free
    ];
    for (i, (account, cost, serve, absorbed, paid)) in steps.into_iter().enumerate() {
        let dry = check_subsidised(&mut entitlements, account, cost).await;
        let real = debit_subsidised(&mut entitlements, account, cost, &format!("k{i}")).await;
        assert!(allowed(real.decision), "step {i}");
        assert_eq!(split(&real.subsidy), (serve, absorbed, paid), "step {i}: {account} {cost}");
        assert_eq!(dry.subsidy, real.subsidy, "step {i}: the dry run equals the real decision");
        let line = real.meters[0].subsidy.clone();
        if absorbed == 0 {
            assert!(line.is_none(), "step {i}: no subsidy line without a subsidy");
        } else {
            assert_eq!(line.as_ref().map(|l| (l.absorbed_credits, l.account_credits)), Some((absorbed, paid)));
            assert!(!line.expect("line").subsidy_id.is_empty());
        }
        assert_eq!(real.entry_id.is_empty(), paid == 0, "step {i}: a ledger entry exactly when the account paid");
    }
    // A retry replays the stored answer and takes nothing more from the pool.
    let replay = debit_subsidised(&mut entitlements, "est-1", 30, "k1").await;
    assert_eq!(split(&replay.subsidy), (pb::SubsidyServe::Free, 30, 0));

    let st = status(&mut pools, "gen").await;
    assert_eq!((st.balance_credits, st.reserved_credits), (0, 0));
    let established = st.tiers.iter().find(|t| t.tier == "established").expect("tier");
    assert_eq!((established.absorbed_today_credits, established.identities_today, established.daily_budget_credits), (120, 3, 50));
    assert!(st.tiers.iter().any(|t| t.tier == "new" && t.daily_budget_credits == 0));
    // est-1's meter paid 10 + 30; the free step left its allowance alone.
    let remaining = check(&mut entitlements, "est-1", "tokens", 0).await.meter.expect("meter").remaining_credits;
    assert_eq!(remaining, Some(1_000 - 40));
    assert_pool_conserved(&server).await;

    let grants = pools
        .list_pool_grants(pb::ListPoolGrantsRequest { pool_id: "gen".into(), page_size: 3, ..Default::default() })
        .await
        .expect("log")
        .into_inner();
    assert_eq!(grants.grants.len(), 3);
    assert_eq!(grants.grants[0].kind, "top_up");
    assert!(!grants.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_subsidised_debits_never_overdraw_pool_or_budgets() {
    let (server, entitlements, _admin, mut pools) = start().await;
    pool(&mut pools, "gen", 0, 4, 1_000).await;
    let accounts: Vec<String> = (0..16).map(|i| format!("user-{i:02}")).collect();
    let names: Vec<&str> = accounts.iter().map(String::as_str).collect();
    tier(&mut pools, "trusted", 100, &names).await;

    let mut tasks = Vec::new();
    for (a, account) in accounts.iter().enumerate() {
        for n in 0..4 {
            let mut client = entitlements.clone();
            let account = account.clone();
            tasks.push(tokio::spawn(async move { debit_subsidised(&mut client, &account, 40, &format!("c-{a}-{n}")).await }));
        }
    }
    let mut absorbed_total = 0;
    for task in tasks {
        let response = task.await.expect("task");
        assert!(allowed(response.decision), "the account can always pay its part here");
        absorbed_total += response.subsidy.expect("decision").absorbed_credits;
    }
    let db = server.sql().await;
    let per_identity = db
        .query("SELECT identity, SUM(absorbed_credits)::bigint FROM subsidy_grants WHERE kind = 'absorb' GROUP BY identity", &[])
        .await
        .expect("per identity");
    for row in &per_identity {
        let absorbed: i64 = row.get(1);
        assert!(absorbed <= 100, "{} absorbed {absorbed} > its daily budget", row.get::<_, String>(0));
    }
    let daily: i64 = db.query_one("SELECT COALESCE(SUM(absorbed_credits), 0)::bigint FROM subsidy_daily", &[]).await.expect("daily").get(0);
    assert_eq!(daily, absorbed_total, "day rows count exactly what was absorbed");
    let st = status(&mut pools, "gen").await;
    assert_eq!(st.balance_credits, 1_000 - absorbed_total);
    assert!(st.shards.iter().all(|s| s.balance_credits >= 0));
    assert!(absorbed_total <= 1_000 && absorbed_total > 0);
    // Identities whose shard still has credit got their whole budget.
    for row in per_identity {
        let identity: String = row.get(0);
        let shard = allot_domain::subsidy::shard_of(&identity, 4) as usize;
        if st.shards[shard].balance_credits > 0 {
            assert_eq!(row.get::<_, i64>(1), 100, "{identity} on a shard with credit left");
        }
    }
    assert_pool_conserved(&server).await;
}

async fn reserve_subsidised(entitlements: &mut Entitlements, account: &str, amount: i64, ttl_ms: i64, key: &str) -> pb::ReserveResponse {
    entitlements
        .reserve(pb::ReserveRequest {
            account_id: account.into(),
            meter: "tokens".into(),
            amount_credits: amount,
            ttl_ms,
            idempotency_key: key.into(),
            subsidy: ask("gen"),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_settle_on_the_actual_cost_and_return_the_rest() {
    let (server, mut entitlements, _admin, mut pools) = start().await;
    pool(&mut pools, "gen", 0, 1, 1_000).await;
    tier(&mut pools, "trusted", 100, &["u"]).await;

    // The pool reserves all 80; the commit uses 50 and 30 goes back.
    let hold = reserve_subsidised(&mut entitlements, "u", 80, 60_000, "r1").await;
    assert_eq!(split(&hold.subsidy), (pb::SubsidyServe::Free, 80, 0));
    let st = status(&mut pools, "gen").await;
    assert_eq!((st.balance_credits, st.reserved_credits), (920, 80));
    let commit = entitlements
        .commit(pb::CommitRequest { hold_id: hold.hold_id.clone(), actual_credits: 50, ..Default::default() })
        .await
        .expect("commit")
        .into_inner();
    assert!(allowed(commit.decision));
    let line = commit.meters[0].subsidy.clone().expect("settled subsidy");
    assert_eq!((line.absorbed_credits, line.account_credits), (50, 0));
    assert!(commit.entry_id.is_empty(), "the account paid nothing");
    let st = status(&mut pools, "gen").await;
    assert_eq!((st.balance_credits, st.reserved_credits), (950, 0));

    // Budget left 50: the pool reserves 50, the account holds 30; using 100 costs the account 50.
    let hold = reserve_subsidised(&mut entitlements, "u", 80, 60_000, "r2").await;
    assert_eq!(split(&hold.subsidy), (pb::SubsidyServe::Partial, 50, 30));
    assert_eq!(hold.meter.as_ref().expect("meter").held_credits, 30);
    let commit = entitlements
        .commit(pb::CommitRequest { hold_id: hold.hold_id.clone(), actual_credits: 100, ..Default::default() })
        .await
        .expect("commit")
        .into_inner();
    let line = commit.meters[0].subsidy.clone().expect("settled subsidy");
    assert_eq!((line.absorbed_credits, line.account_credits), (50, 50), "never more than reserved");
    assert_eq!(commit.meter.expect("meter").remaining_credits, Some(1_000 - 50));

    // A released reservation goes back whole, and so does an expired one (by the sweeper).
    pools.upsert_trust_tier(pb::UpsertTrustTierRequest { tier: "trusted".into(), daily_budget_credits: 200 }).await.expect("raise");
    let hold = reserve_subsidised(&mut entitlements, "u", 10, 60_000, "r3").await;
    entitlements.release(pb::ReleaseRequest { hold_id: hold.hold_id }).await.expect("release");
    let hold = reserve_subsidised(&mut entitlements, "u", 20, 1_000, "r4").await;
    assert_eq!(split(&hold.subsidy), (pb::SubsidyServe::Free, 20, 0));
    assert_eq!(status(&mut pools, "gen").await.reserved_credits, 20);
    server.clock.advance(time::Duration::seconds(5));
    let ctx = Ctx::new(server.app_pool.clone(), server.clock.clone());
    assert_eq!(subsidy::return_expired(&ctx).await.expect("sweep"), 1);
    let st = status(&mut pools, "gen").await;
    assert_eq!((st.balance_credits, st.reserved_credits), (900, 0));
    let trusted = st.tiers.iter().find(|t| t.tier == "trusted").expect("tier");
    assert_eq!((trusted.absorbed_today_credits, trusted.reserved_today_credits), (100, 0));
    // A commit of the expired hold is refused and moves nothing.
    let late = entitlements.commit(pb::CommitRequest { hold_id: hold.hold_id, actual_credits: 5, ..Default::default() }).await;
    assert_eq!(late.expect_err("expired").code(), Code::FailedPrecondition);
    assert_eq!(status(&mut pools, "gen").await.balance_credits, 900);
    assert_pool_conserved(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_return_the_pool_part_to_the_pool_and_the_account_part_to_the_account() {
    let (server, mut entitlements, _admin, mut pools) = start().await;
    pool(&mut pools, "gen", 0, 1, 1_000).await;
    tier(&mut pools, "trusted", 20, &["u"]).await;

    let partial = debit_subsidised(&mut entitlements, "u", 30, "d1").await;
    assert_eq!(split(&partial.subsidy), (pb::SubsidyServe::Partial, 20, 10));
    let refund = |entry: String, amount: i64, key: &str| pb::RefundRequest { entry_id: entry, amount_credits: amount, idempotency_key: key.into() };
    let first = entitlements.refund(refund(partial.entry_id.clone(), 15, "f1")).await.expect("refund").into_inner();
    let pool_part = first.subsidy.as_ref().expect("split");
    assert_eq!((pool_part.pool_refunded_credits, pool_part.account_refunded_credits), (10, 5));
    assert_eq!(first.refunded_total_credits, 15);
    let second = entitlements.refund(refund(partial.entry_id.clone(), 15, "f2")).await.expect("refund").into_inner();
    let pool_part = second.subsidy.as_ref().expect("split");
    assert_eq!((pool_part.pool_refunded_credits, pool_part.account_refunded_credits), (10, 5));
    assert_eq!(second.refunded_total_credits, 30);
    let over = entitlements.refund(refund(partial.entry_id.clone(), 1, "f3")).await.expect_err("nothing left");
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert_eq!(check(&mut entitlements, "u", "tokens", 0).await.meter.expect("meter").remaining_credits, Some(1_000));

    // A charge the pool paid in full has no ledger entry: it is refunded by its subsidy id.
    pools.upsert_trust_tier(pb::UpsertTrustTierRequest { tier: "trusted".into(), daily_budget_credits: 100 }).await.expect("raise");
    let free = debit_subsidised(&mut entitlements, "u", 25, "d2").await;
    assert_eq!(split(&free.subsidy), (pb::SubsidyServe::Free, 25, 0));
    let subsidy_id = free.meters[0].subsidy.as_ref().expect("line").subsidy_id.clone();
    let back = entitlements.refund(refund(subsidy_id, 25, "f4")).await.expect("refund").into_inner();
    assert!(back.entry_id.is_empty(), "the account had nothing to get back");
    assert_eq!(back.subsidy.expect("split").pool_refunded_credits, 25);
    assert_eq!(status(&mut pools, "gen").await.balance_credits, 1_000);
    assert_pool_conserved(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_usage_funds_the_pool_and_bad_asks_are_refused() {
    let (server, mut entitlements, mut admin, mut pools) = start().await;
    pool(&mut pools, "gen", 1_000, 2, 0).await; // 10% of paid usage on `tokens`
    pro_plan(&mut admin, 10_000, 0, 0).await;
    admin
        .upsert_subscription(pb::UpsertSubscriptionRequest {
            subscription: Some(pb::Subscription {
                account_id: "payer".into(),
                plan_id: "pro".into(),
                status: pb::SubscriptionStatus::Active as i32,
                current_period_start: Some(allot_server::grpc::to_proto::timestamp(T0 - time::Duration::days(1))),
                current_period_end: Some(allot_server::grpc::to_proto::timestamp(T0 + time::Duration::days(29))),
                ..Default::default()
            }),
        })
        .await
        .expect("subscribe");
    assert!(allowed(debit(&mut entitlements, "payer", "tokens", 505, "p1").await.decision));
    assert!(allowed(debit(&mut entitlements, "free-user", "tokens", 500, "p2").await.decision), "free usage funds nothing");
    let st = status(&mut pools, "gen").await;
    assert_eq!((st.balance_credits, st.pending_funding_credits), (0, 50));
    // Paid debits that arrive together are group-committed: they fund the pool all the same.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut client = entitlements.clone();
        tasks.push(tokio::spawn(async move { debit(&mut client, "payer", "tokens", 100, &format!("b{i}")).await }));
    }
    for task in tasks {
        assert!(allowed(task.await.expect("task").decision));
    }
    let db = server.sql().await;
    let row = db
        .query_one("SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM ledger_entries WHERE account_id = 'payer' AND idempotency_key LIKE 'b%'", &[])
        .await
        .expect("count");
    let (entries, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert!(transactions < entries, "no batch formed ({entries} debits in {transactions} transactions)");
    assert_eq!(status(&mut pools, "gen").await.pending_funding_credits, 50 + 40 * 10);
    let ctx = Ctx::new(server.app_pool.clone(), server.clock.clone());
    assert_eq!(subsidy::settle_pending(&ctx).await.expect("settle"), 450);
    let st = status(&mut pools, "gen").await;
    assert_eq!((st.balance_credits, st.pending_funding_credits), (450, 0));
    assert_eq!(st.shards.iter().map(|s| s.balance_credits).collect::<Vec<_>>(), vec![225, 225]);
    // A top-up key used again: the same amount replays, another amount is refused.
    let top_up = |amount: i64| pb::TopUpPoolRequest { pool_id: "gen".into(), amount_credits: amount, idempotency_key: "t1".into() };
    assert!(!pools.top_up_pool(top_up(30)).await.expect("top up").into_inner().replayed);
    assert!(pools.top_up_pool(top_up(30)).await.expect("replay").into_inner().replayed);
    assert_eq!(reason(&pools.top_up_pool(top_up(31)).await.expect_err("another amount")), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(status(&mut pools, "gen").await.balance_credits, 480);

    // Bad asks are errors naming the field; nothing is written.
    let mut req = debit_req("u", "tokens", 5, "bad1", pb::DebitMode::Gate);
    req.subsidy = Some(pb::SubsidyRequest { pool_id: "nope".into(), identity: String::new() });
    assert_eq!(entitlements.debit(req).await.expect_err("unknown pool").code(), Code::NotFound);
    let mut req = debit_req("u", "tokens", 5, "bad2", pb::DebitMode::Gate);
    req.subsidy = Some(pb::SubsidyRequest { pool_id: "gen".into(), identity: "has space".into() });
    let err = entitlements.debit(req).await.expect_err("bad identity");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subsidy.identity"), "{}", err.message());
    let err = pools
        .upsert_pool(pb::UpsertPoolRequest {
            pool: Some(pb::Pool { pool_id: "x".into(), share_bps: 10_001, meters: vec!["tokens".into()], ..Default::default() }),
        })
        .await
        .expect_err("share above 100%");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = pools
        .upsert_pool(pb::UpsertPoolRequest {
            pool: Some(pb::Pool { pool_id: "gen".into(), share_bps: 0, meters: vec!["tokens".into()], shard_count: 1, ..Default::default() }),
        })
        .await;
    assert_eq!(err.expect_err("shards only grow").code(), Code::FailedPrecondition);
    let written: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM ledger_entries WHERE account_id = 'u'", &[]).await.expect("count").get(0);
    assert_eq!(written, 0);
    assert_pool_conserved(&server).await;
}
