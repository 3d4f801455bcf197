//! Fair use: classifier cooldown locks in Redis, the escalation ladder and its effects on
//! decisions, controls (kill switch, exemptions), tickets, free exhausted accounts, soft caps,
//! and the event stream.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use allot_proto::v1 as pb;
use allot_server::testkit::{Admin, FairUse, TestServer};
use common::*;

fn verdict(v: pb::ClassificationVerdict) -> i32 {
    v as i32
}

async fn settings(fair: &mut FairUse, change: impl FnOnce(&mut pb::EscalationSettings)) {
    let mut current = fair.get_settings(pb::GetSettingsRequest {}).await.expect("settings").into_inner();
    change(&mut current);
    fair.update_settings(current).await.expect("update settings");
}

async fn request(fair: &mut FairUse, account: &str) -> pb::RequestClassificationResponse {
    fair.request_classification(pb::RequestClassificationRequest { account_id: account.into() }).await.expect("request").into_inner()
}

/// Requests a run (waiting out a short cooldown if needed) and submits `score`.
async fn classify(fair: &mut FairUse, account: &str, score: f64) -> pb::SubmitClassificationResponse {
    for _ in 0..40 {
        let response = request(fair, account).await;
        if response.verdict == verdict(pb::ClassificationVerdict::Run) {
            return fair
                .submit_classification(pb::SubmitClassificationRequest { ticket: response.ticket, score, labels: vec!["test".into()] })
                .await
                .expect("submit")
                .into_inner();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no classifier run was granted");
}

/// The free plan with one `speech_ms` meter of `allowance_credits`, and a fair-use client of the
/// server's tenant.
async fn speech_plan(server: &TestServer, allowance_credits: i64) -> FairUse {
    let (_, mut admin) = server.clients().await;
    let meter = pb::MeterAllowance { meter: "speech_ms".into(), allowance_credits: Some(allowance_credits), ..Default::default() };
    plan_with(&mut admin, vec![meter]).await;
    server.fair_use_for(&server.tenant.api_key).await
}

async fn plan_with(admin: &mut Admin, meters: Vec<pb::MeterAllowance>) {
    admin
        .upsert_plan(pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: "free".into(),
                tier: "free".into(),
                name: "Free".into(),
                meters,
                is_free_default: true,
                ..Default::default()
            }),
        })
        .await
        .expect("plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_get_exactly_one_run_and_a_held_lock_reads_no_database() {
    let server = TestServer::start().await;
    let fair = speech_plan(&server, 1_000_000).await;

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut client = fair.clone();
        tasks.push(tokio::spawn(async move { request(&mut client, "acct").await }));
    }
    let mut runs = 0;
    for task in tasks {
        let response = task.await.expect("task");
        if response.verdict == verdict(pb::ClassificationVerdict::Run) {
            runs += 1;
            assert!(!response.ticket.is_empty());
        } else {
            assert_eq!(response.verdict, verdict(pb::ClassificationVerdict::Cooldown));
            let ends = response.cooldown_ends_at.expect("cooldown end").seconds;
            let now = allot_server::clock::Clock::now(&*server.clock).unix_timestamp();
            assert!((ends - now - 12 * 3600).abs() < 120, "a 12 h cooldown");
        }
    }
    assert_eq!(runs, 1);

    let mut client = fair.clone();
    let before = server.db_checkouts.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(request(&mut client, "acct").await.verdict, verdict(pb::ClassificationVerdict::Cooldown));
    }
    assert_eq!(server.db_checkouts.load(Ordering::Relaxed), before, "a held lock costs no database query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ladder_climbs_bites_and_steps_back_down() {
    let start = time::macros::datetime!(2026-05-04 09:00 UTC);
    let server = TestServer::start_at(start).await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan_with(
        &mut admin,
        vec![
            pb::MeterAllowance { meter: "speech_ms".into(), allowance_credits: Some(100_000_000), ..Default::default() },
            pb::MeterAllowance { meter: "requests".into(), allowance_credits: None, rate_limit_per_minute: Some(100), ..Default::default() },
        ],
    )
    .await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    settings(&mut fair, |s| {
        s.cooldown_ms = 1_000;
        s.violation_window_ms = 86_400_000;
        s.restrict_daily_budgets.insert("speech_ms".into(), 1_800_000);
    })
    .await;

    let stage_of = |r: &pb::CheckResponse| r.fair_use.as_ref().expect("fair use").stage;
    assert_eq!(stage_of(&check(&mut entitlements, "acct", "speech_ms", 1).await), pb::EscalationStage::None as i32);
    let clean = classify(&mut fair, "acct", 0.2).await;
    assert!(!clean.violation);
    assert_eq!(classify(&mut fair, "acct", 0.9).await.stage, pb::EscalationStage::Warning as i32);
    assert_eq!(stage_of(&check(&mut entitlements, "acct", "speech_ms", 1).await), pb::EscalationStage::Warning as i32);

    assert_eq!(classify(&mut fair, "acct", 0.7).await.stage, pb::EscalationStage::Throttle as i32);
    let throttled = check(&mut entitlements, "acct", "requests", 1).await;
    assert_eq!(throttled.meter.expect("meter").rate.expect("rate").limit_per_minute, 25, "100/min throttled to 25%");

    assert_eq!(classify(&mut fair, "acct", 1.0).await.stage, pb::EscalationStage::Restrict as i32);
    // Restrict: 30 minutes of speech a day. A long job is pre-charged, then confirmed.
    let hold = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "speech_ms".into(),
            amount_credits: 1_200_000,
            ttl_ms: 600_000,
            idempotency_key: "job".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    assert!(allowed(hold.decision));
    let busted = debit(&mut entitlements, "acct", "speech_ms", 700_000, "big").await;
    assert_eq!(busted.reason, pb::DenialReason::DailyBudgetExhausted as i32, "pre-charged 1.2 M + 0.7 M > 1.8 M");
    entitlements.commit(pb::CommitRequest { hold_id: hold.hold_id, actual_credits: 1_000_000, ..Default::default() }).await.expect("commit");
    assert!(allowed(debit(&mut entitlements, "acct", "speech_ms", 700_000, "fits").await.decision), "1.0 M + 0.7 M ≤ 1.8 M");
    assert_eq!(debit(&mut entitlements, "acct", "speech_ms", 200_000, "over").await.reason, pb::DenialReason::DailyBudgetExhausted as i32);
    // Other meters are not budgeted.
    assert!(allowed(debit(&mut entitlements, "acct", "requests", 1, "r1").await.decision));

    // A day later the violations have expired: the stage steps down on the next decision.
    server.clock.advance(time::Duration::hours(25));
    let later = debit(&mut entitlements, "acct", "speech_ms", 200_000, "later").await;
    assert!(allowed(later.decision));
    assert_eq!(later.fair_use.expect("fair use").stage, pb::EscalationStage::None as i32);
    let escalation = fair.get_escalation(pb::GetEscalationRequest { account_id: "acct".into() }).await.expect("escalation").into_inner();
    assert_eq!((escalation.stage, escalation.violations_in_window), (pb::EscalationStage::None as i32, 0));
    assert_eq!(escalation.history.len(), 4);

    let db = server.sql().await;
    let stages: Vec<String> = db
        .query("SELECT payload->>'to' FROM outbox_events WHERE kind = 'stage_changed' ORDER BY seq", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stages, vec!["warning", "throttle", "restrict", "none"]);
    let exhausted: i64 = db.query_one("SELECT COUNT(*) FROM outbox_events WHERE kind = 'budget_exhausted'", &[]).await.expect("n").get(0);
    assert_eq!(exhausted, 2);
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test]
async fn kill_switch_and_exemptions_turn_fair_use_off() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan_with(&mut admin, vec![pb::MeterAllowance { meter: "speech_ms".into(), allowance_credits: Some(1_000), ..Default::default() }]).await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    settings(&mut fair, |s| s.cooldown_ms = 1_000).await;
    assert_eq!(classify(&mut fair, "acct", 0.95).await.stage, pb::EscalationStage::Warning as i32);

    settings(&mut fair, |s| s.kill_switch = true).await;
    let off = check(&mut entitlements, "acct", "speech_ms", 1).await.fair_use.expect("fair use");
    assert_eq!((off.stage, off.enforced), (pb::EscalationStage::None as i32, false));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(request(&mut fair, "acct").await.verdict, verdict(pb::ClassificationVerdict::NotNeeded));

    settings(&mut fair, |s| s.kill_switch = false).await;
    assert_eq!(check(&mut entitlements, "acct", "speech_ms", 1).await.fair_use.expect("fair use").stage, pb::EscalationStage::Warning as i32);
    fair.set_exempt(pb::SetExemptRequest { account_id: "acct".into(), exempt: true }).await.expect("exempt");
    assert!(!check(&mut entitlements, "acct", "speech_ms", 1).await.fair_use.expect("fair use").enforced);
    let audited: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM escalation_audit", &[]).await.expect("audit").get(0);
    assert_eq!(audited, 4, "three settings changes and one exemption");

    let err = fair
        .update_settings(pb::EscalationSettings { warning_after: 3, throttle_after: 2, restrict_after: 4, ..Default::default() })
        .await
        .expect_err("bad ladder");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn tickets_are_single_use_bound_and_expire() {
    let server = TestServer::start().await;
    let mut fair = speech_plan(&server, 1_000).await;
    let run = request(&mut fair, "acct").await;
    let submit = |ticket: String| pb::SubmitClassificationRequest { ticket, score: 0.1, labels: vec![] };
    fair.submit_classification(submit(run.ticket.clone())).await.expect("first use");
    let reused = fair.submit_classification(submit(run.ticket.clone())).await.expect_err("reuse");
    assert_eq!(reason(&reused), "TICKET_USED");
    let forged = fair.submit_classification(submit(uuid::Uuid::new_v4().to_string())).await.expect_err("forged");
    assert_eq!(forged.code(), tonic::Code::NotFound);
    let malformed = fair.submit_classification(submit("x".into())).await.expect_err("malformed");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    let bad_score = fair
        .submit_classification(pb::SubmitClassificationRequest { ticket: run.ticket.clone(), score: 1.5, labels: vec![] })
        .await
        .expect_err("score");
    assert_eq!(bad_score.code(), tonic::Code::InvalidArgument);

    let other = request(&mut fair, "other").await;
    // Another tenant cannot use it.
    let stranger = allot_server::seed::tenant(&server.pool, "stranger").await.expect("tenant");
    let mut theirs = server.fair_use_for(&stranger.api_key).await;
    assert_eq!(theirs.submit_classification(submit(other.ticket.clone())).await.expect_err("foreign").code(), tonic::Code::NotFound);
    // And it expires (15 min by default).
    server.clock.advance(time::Duration::minutes(16));
    let expired = fair.submit_classification(submit(other.ticket)).await.expect_err("expired");
    assert_eq!(reason(&expired), "TICKET_EXPIRED");
}

#[tokio::test]
async fn a_free_account_out_of_credit_escalates_without_a_classifier_run() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan_with(&mut admin, vec![pb::MeterAllowance { meter: "speech_ms".into(), allowance_credits: Some(10), ..Default::default() }]).await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    assert!(allowed(debit(&mut entitlements, "poor", "speech_ms", 10, "d1").await.decision));

    let response = request(&mut fair, "poor").await;
    assert_eq!(response.verdict, verdict(pb::ClassificationVerdict::NotNeeded));
    assert_eq!(response.stage, pb::EscalationStage::Warning as i32);
    let again = request(&mut fair, "poor").await;
    assert_eq!(again.verdict, verdict(pb::ClassificationVerdict::Cooldown));
    let ends = again.cooldown_ends_at.expect("end").seconds - allot_server::clock::Clock::now(&*server.clock).unix_timestamp();
    assert!((3_500..=3_600).contains(&ends), "the cooldown was shortened to 1 h, got {ends} s");
    // Redis holds the lock as long as its value says: the owner shortened both at once.
    let (ttl_ms, value) = cooldown_lock(&server, "poor").await;
    assert!((3_500_000..=3_600_000).contains(&ttl_ms), "the lock's TTL is 1 h, got {ttl_ms} ms");
    let (_, ends_ms) = value.rsplit_once('@').expect("the value names its end");
    assert_eq!(ends_ms.parse::<i64>().expect("ms") / 1_000, again.cooldown_ends_at.expect("end").seconds, "{value}");
    let escalation = fair.get_escalation(pb::GetEscalationRequest { account_id: "poor".into() }).await.expect("escalation").into_inner();
    assert!(escalation.history[0].synthetic && escalation.history[0].score == 1.0);

    // An account with credit left is asked to run the classifier.
    assert_eq!(request(&mut fair, "rich").await.verdict, verdict(pb::ClassificationVerdict::Run));
}

#[tokio::test]
async fn soft_caps_trigger_on_rolling_usage() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan_with(&mut admin, vec![pb::MeterAllowance { meter: "speech_ms".into(), allowance_credits: None, ..Default::default() }]).await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    fair.set_soft_caps(pb::SetSoftCapsRequest {
        plan_id: "free".into(),
        caps: vec![
            pb::SoftCap { meter: "speech_ms".into(), window_ms: 86_400_000, threshold_credits: 14_400_000 },
            pb::SoftCap { meter: "speech_ms".into(), window_ms: 7 * 86_400_000, threshold_credits: 72_000_000 },
        ],
    })
    .await
    .expect("caps");
    let first = debit(&mut entitlements, "acct", "speech_ms", 10_000_000, "d1").await;
    assert!(first.fair_use.expect("fair use").soft_caps_triggered.is_empty());
    let second = debit(&mut entitlements, "acct", "speech_ms", 5_000_000, "d2").await;
    assert_eq!(second.fair_use.expect("fair use").soft_caps_triggered, vec!["speech_ms/86400000".to_owned()]);
    let over = check(&mut entitlements, "acct", "speech_ms", 1).await;
    assert_eq!(over.fair_use.expect("fair use").soft_caps_triggered, vec!["speech_ms/86400000".to_owned()], "a check reports the caps it is over");
    server.clock.advance(time::Duration::hours(26));
    let later = check(&mut entitlements, "acct", "speech_ms", 1).await;
    assert!(later.fair_use.expect("fair use").soft_caps_triggered.is_empty(), "the day window rolled past");
    let events: i64 =
        server.sql().await.query_one("SELECT COUNT(*) FROM outbox_events WHERE kind = 'soft_cap_triggered'", &[]).await.expect("n").get(0);
    assert_eq!(events, 1);
}

/// Hourly usage is kept only for meters a soft cap watches: the debits of an uncapped meter write
/// none (alone or batched), and a cap set later counts the usage from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_caps_count_usage_from_when_they_watch_a_meter() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    plan_with(&mut admin, vec![pb::MeterAllowance { meter: "tokens".into(), allowance_credits: None, ..Default::default() }]).await;
    // Alone, then 24 at once (batched).
    debit(&mut entitlements.clone(), "acct", "tokens", 40, "alone").await;
    let batch = (0..24).map(|i| {
        let mut client = entitlements.clone();
        tokio::spawn(async move { debit(&mut client, &format!("acct-{}", i % 6), "tokens", 40, &format!("b{i}")).await })
    });
    for task in batch.collect::<Vec<_>>() {
        task.await.expect("task");
    }
    let db = server.sql().await;
    const HOURLY_ROWS: &str = "SELECT COUNT(*) FROM usage_hourly";
    let rows: i64 = db.query_one(HOURLY_ROWS, &[]).await.expect("count").get(0);
    assert_eq!(rows, 0, "no cap watches `tokens`: no hourly usage");

    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    let cap = pb::SoftCap { meter: "tokens".into(), window_ms: 3_600_000, threshold_credits: 50 };
    fair.set_soft_caps(pb::SetSoftCapsRequest { plan_id: "free".into(), caps: vec![cap] }).await.expect("caps");
    let after = debit(&mut entitlements.clone(), "acct", "tokens", 40, "after").await;
    assert!(after.fair_use.expect("fair use").soft_caps_triggered.is_empty(), "the 40 charged before the cap are not counted");
    let over = debit(&mut entitlements.clone(), "acct", "tokens", 40, "over").await;
    assert_eq!(over.fair_use.expect("fair use").soft_caps_triggered, vec!["tokens/3600000".to_owned()]);
    let rows: i64 = db.query_one(HOURLY_ROWS, &[]).await.expect("count").get(0);
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_delivers_every_event_once_across_a_reconnect() {
    let server = TestServer::start().await;
    let mut fair = speech_plan(&server, 1_000).await;
    for i in 0..6 {
        request(&mut fair, &format!("a{i}")).await; // one classification_requested each
    }
    let mut stream = fair.watch_events(pb::WatchEventsRequest { from_cursor: 0 }).await.expect("watch").into_inner();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(stream.message().await.expect("event").expect("open").cursor);
    }
    drop(stream);
    let mut stream = fair.watch_events(pb::WatchEventsRequest { from_cursor: *seen.last().expect("cursor") }).await.expect("watch").into_inner();
    for _ in 0..2 {
        seen.push(stream.message().await.expect("event").expect("open").cursor);
    }
    // New events arrive live on the open stream.
    let mut writer = fair.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        request(&mut writer, "late").await;
    });
    let live = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("in time").expect("event").expect("open");
    assert_eq!(live.account_id, "late");
    seen.push(live.cursor);
    assert_eq!(seen, (1..=7).collect::<Vec<i64>>(), "gap-free, in order, no repeats");
}

#[tokio::test]
async fn without_redis_classifier_requests_fail_closed() {
    let closed = allot_server::localstack::free_port().expect("port");
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{closed}"));
        c.redis_timeout_ms = 50;
    })
    .await;
    let mut fair = speech_plan(&server, 1_000).await;
    for i in 0..5 {
        let response = request(&mut fair, &format!("acct{i}")).await;
        assert_eq!(response.verdict, verdict(pb::ClassificationVerdict::Cooldown), "never a run while the lock store is down");
        assert!(response.ticket.is_empty());
    }
    let tickets: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM classifier_tickets", &[]).await.expect("n").get(0);
    assert_eq!(tickets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_restricted_hold_gives_its_budget_back() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plan_with(&mut admin, vec![pb::MeterAllowance { meter: "speech_ms".into(), allowance_credits: Some(100_000_000), ..Default::default() }]).await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    settings(&mut fair, |s| {
        (s.warning_after, s.throttle_after, s.restrict_after) = (1, 1, 1);
        s.restrict_daily_budgets.insert("speech_ms".into(), 1_000);
    })
    .await;
    assert_eq!(classify(&mut fair, "acct", 1.0).await.stage, pb::EscalationStage::Restrict as i32);
    let hold = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "speech_ms".into(),
            amount_credits: 800,
            ttl_ms: 1_000,
            idempotency_key: "job".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    assert!(allowed(hold.decision));
    assert_eq!(debit(&mut entitlements, "acct", "speech_ms", 300, "d1").await.reason, pb::DenialReason::DailyBudgetExhausted as i32);
    // The job dies; once the hold expires and is swept, its pre-charge returns to the day.
    server.clock.advance(time::Duration::seconds(2));
    let mut used: i64 = -1;
    for _ in 0..50 {
        used = server.sql().await.query_one("SELECT COALESCE(SUM(used_credits), 0)::bigint FROM restrict_usage", &[]).await.expect("used").get(0);
        if used == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(used, 0);
    assert!(allowed(debit(&mut entitlements, "acct", "speech_ms", 300, "d2").await.decision));
}

/// Two transactions load `acct`'s standing at once and each sees `violations`; the first stores
/// what it saw and commits, then the second (its standing read before that commit) does. Per
/// transaction: the stage it read as stored and the stage it says is in force.
async fn two_at_once(server: &TestServer, violations: i64) -> [(Option<allot_domain::escalation::Stage>, allot_domain::escalation::Stage); 2] {
    use allot_server::clock::Clock as _;
    use allot_server::service::fair_use::Standing;

    let (tenant, now) = (server.tenant.tenant, server.clock.now());
    let account = allot_server::ids::AccountId::parse("acct").expect("account id");
    let (mut first, mut second) = (server.app_pool.get().await.expect("db"), server.app_pool.get().await.expect("db"));
    let tx_a = allot_server::db::begin(&mut first, tenant).await.expect("begin");
    let tx_b = allot_server::db::begin(&mut second, tenant).await.expect("begin");
    let mut a = Standing::load(&tx_a, tenant, &account, now).await.expect("standing");
    let mut b = Standing::load(&tx_b, tenant, &account, now).await.expect("standing");
    (a.violations, b.violations) = (violations, violations);
    let read = (a.stored, b.stored);
    let in_force_a = a.sync(&tx_a, tenant, &account, "", now).await.expect("sync");
    tx_a.commit().await.expect("commit");
    let in_force_b = b.sync(&tx_b, tenant, &account, "", now).await.expect("sync");
    tx_b.commit().await.expect("commit");
    [(read.0, in_force_a), (read.1, in_force_b)]
}

/// The stored stage is read without a lock, by every decision and classification, so two
/// transactions can both see it move from the same stage. Each move is stored and announced
/// once: the transaction that stores second finds the row changed and leaves it.
#[tokio::test]
async fn a_stage_two_transactions_see_move_at_once_is_stored_once_with_one_event() {
    use allot_domain::escalation::Stage;

    let server = TestServer::start().await;
    // Both read no stored stage and one violation: both move it to warning.
    assert_eq!(two_at_once(&server, 1).await, [(None, Stage::Warning); 2], "the stage in force all the same");
    // Both read warning and no violation left: both move it back to none.
    assert_eq!(two_at_once(&server, 0).await, [(Some(Stage::Warning), Stage::None); 2]);

    let db = server.sql().await;
    let moves: Vec<(String, String)> = db
        .query("SELECT payload->>'from', payload->>'to' FROM outbox_events WHERE kind = 'stage_changed' ORDER BY seq", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(moves, vec![("none".to_owned(), "warning".to_owned()), ("warning".to_owned(), "none".to_owned())]);
    let stored: String = db.query_one("SELECT stage FROM escalation_state WHERE account_id = 'acct'", &[]).await.expect("stage").get(0);
    assert_eq!(stored, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_found_held_is_answered_from_memory_for_a_second_at_most() {
    use fred::prelude::*;
    let server = TestServer::start().await;
    let mut fair = speech_plan(&server, 1_000_000).await;
    // Connected first, so that only a `DEL` falls between the held answer and the next request.
    let (redis, key) = cooldown_redis(&server, "acct").await;
    assert_eq!(request(&mut fair, "acct").await.verdict, verdict(pb::ClassificationVerdict::Run));
    let held = request(&mut fair, "acct").await;
    assert_eq!(held.verdict, verdict(pb::ClassificationVerdict::Cooldown));

    // The lock goes away in Redis. Within the second the account is still answered from memory,
    // with the end first read, and no command reaches Redis: a `SET NX` would take the free lock
    // and grant a run.
    assert_eq!(redis.del::<i64, _>(&key).await.expect("del"), 1, "the lock was held");
    let remembered = request(&mut fair, "acct").await;
    assert_eq!(remembered.verdict, verdict(pb::ClassificationVerdict::Cooldown));
    assert_eq!(remembered.cooldown_ends_at, held.cooldown_ends_at);
    assert_eq!(redis.exists::<i64, _>(&key).await.expect("exists"), 0, "no lock was taken meanwhile");
    // Another account's lock is not remembered for it.
    assert_eq!(request(&mut fair, "other").await.verdict, verdict(pb::ClassificationVerdict::Run));

    // Past the second, Redis decides again: the lock is free, so a run is granted.
    tokio::time::sleep(Duration::from_millis(allot_server::service::held_cooldowns::REMEMBER_MS + 100)).await;
    assert_eq!(request(&mut fair, "acct").await.verdict, verdict(pb::ClassificationVerdict::Run));
    redis.quit().await.expect("quit");
}

/// The remaining TTL (ms) and the value of `account`'s cooldown lock, read from Redis itself.
async fn cooldown_lock(server: &TestServer, account: &str) -> (i64, String) {
    use fred::prelude::*;
    let (redis, key) = cooldown_redis(server, account).await;
    let ttl_ms: i64 = redis.pttl(&key).await.expect("pttl");
    let value: String = redis.get(&key).await.expect("get");
    redis.quit().await.expect("quit");
    (ttl_ms, value)
}

/// A client of the test stack's Redis, and the key of `account`'s cooldown lock (the documented
/// `allot:cooldown:{tenant}:account`).
async fn cooldown_redis(server: &TestServer, account: &str) -> (fred::clients::Client, String) {
    use fred::prelude::*;
    let redis = Builder::from_config(Config::from_url(&allot_server::testkit::stack().redis.url()).expect("url")).build().expect("client");
    redis.init().await.expect("connect redis");
    (redis, format!("allot:cooldown:{{{}}}:{account}", server.tenant.tenant))
}

/// A batch reads fair-use state only for the accounts marked as having some (an exemption, a
/// stored stage, a violation; migration V17), so the marks must be set by whatever writes that
/// state: checks and debits of marked and unmarked accounts, at once, each get their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_the_fair_use_state_of_the_accounts_marked_as_having_some() {
    let server = TestServer::start().await;
    let mut fair = speech_plan(&server, 1_000_000).await;
    settings(&mut fair, |s| s.cooldown_ms = 1_000).await;
    assert_eq!(classify(&mut fair, "warned", 0.95).await.stage, pb::EscalationStage::Warning as i32);
    assert!(!classify(&mut fair, "clean", 0.2).await.violation);
    fair.set_exempt(pb::SetExemptRequest { account_id: "exempt".into(), exempt: true }).await.expect("exempt");
    // A check and a debit first: until the plan book holds the tenant's fair-use settings, a batch
    // reads every account's standings, marked or not.
    let (mut entitlements, _) = server.clients().await;
    check(&mut entitlements, "first", "speech_ms", 1).await;
    debit(&mut entitlements, "first", "speech_ms", 1, "first").await;

    let accounts: Vec<String> = ["warned", "clean", "exempt"].into_iter().map(String::from).chain((0..13).map(|i| format!("plain-{i}"))).collect();
    let checks = accounts.iter().map(|account| {
        let mut client = entitlements.clone();
        async move { check(&mut client, account, "speech_ms", 1).await.fair_use.expect("fair use") }
    });
    let debits = accounts.iter().map(|account| {
        let mut client = entitlements.clone();
        async move { debit(&mut client, account, "speech_ms", 1, &format!("d-{account}")).await.fair_use.expect("fair use") }
    });
    let (checked, debited) = futures::future::join(futures::future::join_all(checks), futures::future::join_all(debits)).await;
    for (i, account) in accounts.iter().enumerate() {
        for standing in [&checked[i], &debited[i]] {
            let expected = match account.as_str() {
                "warned" => (pb::EscalationStage::Warning as i32, true),
                "exempt" => (pb::EscalationStage::None as i32, false),
                _ => (pb::EscalationStage::None as i32, true),
            };
            assert_eq!((standing.stage, standing.enforced), expected, "{account}");
        }
    }

    let db = server.sql().await;
    let marked: Vec<(String, Option<String>)> = db
        .query("SELECT id, org_id FROM accounts WHERE fair_use_marked ORDER BY id", &[])
        .await
        .expect("marks")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(marked, vec![("exempt".into(), None), ("warned".into(), None)], "a mark makes no account an org member");
}

/// An account's next violation, once it is marked, takes no lock on its `accounts` row (V17): with
/// that row locked by another transaction, the classification still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_accounts_next_violation_takes_no_lock_on_its_account_row() {
    let server = TestServer::start().await;
    let mut fair = speech_plan(&server, 1_000_000).await;
    settings(&mut fair, |s| s.cooldown_ms = 1_000).await;
    assert!(classify(&mut fair, "acct", 0.95).await.violation);

    let mut db = server.sql().await;
    let tx = db.transaction().await.expect("begin");
    let locked = tx.execute("SELECT 1 FROM accounts WHERE id = 'acct' AND fair_use_marked FOR UPDATE", &[]).await.expect("lock");
    assert_eq!(locked, 1, "the first violation marked the account");
    let next = tokio::time::timeout(Duration::from_secs(10), classify(&mut fair, "acct", 0.9)).await.expect("not held up by the row's lock");
    assert!(next.violation);
    tx.rollback().await.expect("rollback");
}

/// Migration V17 marks the accounts whose fair-use state was written before it, run by a plain
/// owner under row-level security forced on its tables, and leaves that security forced; its
/// triggers mark each kind of state written after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_marks_the_accounts_whose_fair_use_state_it_finds() {
    let (url, as_superuser) = plain_owner_database("marks").await;
    allot_server::db::migrate_up_to(&url, Some(16)).await.expect("up to V16");

    // State written before V17, by a superuser (row-level security does not hold it back).
    let in_db = connect(&as_superuser).await;
    in_db
        .batch_execute(
            "INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'a'); \
             INSERT INTO accounts (tenant_id, id, org_id) VALUES ('00000000-0000-0000-0000-00000000000a', 'member', 'org'), \
               ('00000000-0000-0000-0000-00000000000a', 'exempt', 'org'); \
             INSERT INTO escalation_exempt (tenant_id, account_id) VALUES ('00000000-0000-0000-0000-00000000000a', 'exempt'); \
             INSERT INTO escalation_state (tenant_id, account_id, stage, reason, updated_at) \
               VALUES ('00000000-0000-0000-0000-00000000000a', 'staged', 'none', 'stepped down', now()); \
             INSERT INTO classifications (tenant_id, id, account_id, score_milli, synthetic, violation, created_at) VALUES \
               ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'violator', 900, false, true, now()), \
               ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'violator', 950, false, true, now()), \
               ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'clean', 100, false, false, now());",
        )
        .await
        .expect("state before V17");
    let applied = allot_server::db::migrate_up_to(&url, None).await.expect("V17 by a plain owner");
    assert!(applied.iter().any(|m| m.contains("fair_use_marks")), "{applied:?}");

    let accounts: Vec<(String, Option<String>, bool)> = in_db
        .query("SELECT id, org_id, fair_use_marked FROM accounts ORDER BY id", &[])
        .await
        .expect("accounts")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let org = || Some("org".to_owned());
    assert_eq!(
        accounts,
        vec![("exempt".into(), org(), true), ("member".into(), org(), false), ("staged".into(), None, true), ("violator".into(), None, true)],
        "marked where there is state, org membership kept, no row for a clean classification"
    );
    let unprotected = unprotected_tables(&in_db).await;
    assert!(unprotected.is_empty(), "row-level security is forced again on every tenant table: {unprotected:?}");

    // From now on each kind of state marks its account as it is written.
    in_db
        .batch_execute(
            "INSERT INTO escalation_exempt (tenant_id, account_id) VALUES ('00000000-0000-0000-0000-00000000000a', 'later-exempt'); \
             INSERT INTO escalation_state (tenant_id, account_id, stage, reason, updated_at) \
               VALUES ('00000000-0000-0000-0000-00000000000a', 'later-staged', 'warning', 'test', now()); \
             INSERT INTO classifications (tenant_id, id, account_id, score_milli, synthetic, violation, created_at) VALUES \
               ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'later-violator', 900, false, true, now()), \
               ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'later-clean', 100, false, false, now());",
        )
        .await
        .expect("state after V17");
    let later: Vec<String> = in_db
        .query("SELECT id FROM accounts WHERE id LIKE 'later-%' AND fair_use_marked ORDER BY id", &[])
        .await
        .expect("marks")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(later, vec!["later-exempt", "later-staged", "later-violator"]);
}
