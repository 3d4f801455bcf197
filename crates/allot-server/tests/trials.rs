//! Trials: one per account and per fingerprint (also under concurrency), refused for paying
//! accounts, trial credit that expires with the trial, conversion, and the trial events.

mod common;

use std::time::Duration;

use allot_proto::v1 as pb;
use allot_server::testkit::{Admin, TestServer};
use common::*;

async fn plans(admin: &mut Admin) {
    for (id, free, allowance, trial_days, trial_grant) in [("free", true, 100, 0, 0), ("pro", false, 10_000, 14, 1_000)] {
        admin
            .upsert_plan(pb::UpsertPlanRequest {
                plan: Some(pb::Plan {
                    plan_id: id.into(),
                    tier: id.into(),
                    name: id.into(),
                    is_free_default: free,
                    trial_days,
                    meters: vec![pb::MeterAllowance {
                        meter: "tokens".into(),
                        allowance_credits: Some(allowance),
                        trial_grant_credits: trial_grant,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            })
            .await
            .expect("plan");
    }
}

fn start(account: &str, fingerprint: &str) -> pb::StartTrialRequest {
    pb::StartTrialRequest { account_id: account.into(), plan_id: "pro".into(), fingerprint: format!("fingerprint-{fingerprint:>8}") }
}

async fn events(server: &TestServer, kind: &str) -> i64 {
    server.sql().await.query_one("SELECT COUNT(*) FROM outbox_events WHERE kind = $1", &[&kind]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_starts_once_shows_in_decisions_and_ends_on_time() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plans(&mut admin).await;

    let started = admin.start_trial(start("u1", "a")).await.expect("start").into_inner();
    assert!(started.started);
    assert_eq!(started.subscription.as_ref().expect("sub").status, pb::SubscriptionStatus::Trialing as i32);
    assert_eq!(started.grant_ids.len(), 1);
    let status = check(&mut entitlements, "u1", "tokens", 0).await;
    let trial = status.trial.expect("trial");
    assert_eq!((trial.trialing, trial.days_left), (true, 14));
    let meter = status.meter.expect("meter");
    assert_eq!((meter.plan_id.as_str(), meter.remaining_credits), ("pro", Some(11_000)));

    let again = admin.start_trial(start("u1", "b")).await.expect("again").into_inner();
    assert_eq!((again.started, again.refusal), (false, pb::TrialRefusal::AccountUsed as i32));
    let same_device = admin.start_trial(start("u2", "a")).await.expect("same fingerprint").into_inner();
    assert_eq!(same_device.refusal, pb::TrialRefusal::FingerprintUsed as i32);
    let bad = admin.start_trial(pb::StartTrialRequest { fingerprint: "short".into(), ..start("u3", "c") }).await.expect_err("short fingerprint");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Within the notice (3 days) the ending is announced; at the end the account falls back.
    server.clock.advance(time::Duration::days(12));
    let mut announced = 0;
    for _ in 0..50 {
        announced = events(&server, "trial_ending").await;
        if announced == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(announced, 1);
    server.clock.advance(time::Duration::days(3));
    let after = check(&mut entitlements, "u1", "tokens", 0).await;
    assert!(!after.trial.expect("trial").trialing);
    let meter = after.meter.expect("meter");
    assert_eq!((meter.plan_id.as_str(), meter.limit_credits), ("free", Some(100)));
    assert_eq!(meter.remaining_credits, Some(100), "the trial credit expired with the trial");
    let mut ended = 0;
    for _ in 0..50 {
        ended = events(&server, "trial_ended").await;
        if ended == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended, 1);
    assert_eq!(events(&server, "trial_started").await, 1);
    debit(&mut entitlements, "u1", "tokens", 1, "touch").await;
    assert_ledger_explains_balances(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_fingerprint_wins_under_concurrency() {
    let server = TestServer::start().await;
    let (_, mut admin) = server.clients().await;
    plans(&mut admin).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = admin.clone();
        tasks.push(tokio::spawn(async move { client.start_trial(start(&format!("racer{i}"), "shared")).await.expect("start").into_inner() }));
    }
    let mut started = 0;
    for task in tasks {
        let response = task.await.expect("task");
        if response.started {
            started += 1;
        } else {
            assert_eq!(response.refusal, pb::TrialRefusal::FingerprintUsed as i32);
        }
    }
    assert_eq!(started, 1);
}

#[tokio::test]
async fn paying_accounts_cannot_trial_and_conversion_ends_the_trial() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    plans(&mut admin).await;
    let now = allot_server::clock::Clock::now(&*server.clock);
    let ts = allot_server::grpc::to_proto::timestamp;
    let subscribe = |account: &str, status: pb::SubscriptionStatus| pb::UpsertSubscriptionRequest {
        subscription: Some(pb::Subscription {
            account_id: account.into(),
            plan_id: "pro".into(),
            status: status as i32,
            current_period_start: Some(ts(now)),
            current_period_end: Some(ts(now + time::Duration::days(30))),
            ..Default::default()
        }),
    };
    admin.upsert_subscription(subscribe("active", pb::SubscriptionStatus::Active)).await.expect("sub");
    admin.upsert_subscription(subscribe("lapsed", pb::SubscriptionStatus::Canceled)).await.expect("sub");
    admin
        .grant_credits(pb::GrantCreditsRequest {
            account_id: "buyer".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            kind: pb::GrantKind::Purchased as i32,
            idempotency_key: "g".into(),
            ..Default::default()
        })
        .await
        .expect("grant");
    for (account, fp) in [("active", "p1"), ("lapsed", "p2"), ("buyer", "p3")] {
        let refused = admin.start_trial(start(account, fp)).await.expect("start").into_inner();
        assert_eq!((refused.started, refused.refusal), (false, pb::TrialRefusal::PaidAccount as i32), "{account}");
    }

    // Conversion: the subscription becomes active; the trial credit goes (the plan keeps none).
    assert!(admin.start_trial(start("convert", "p4")).await.expect("start").into_inner().started);
    assert_eq!(check(&mut entitlements, "convert", "tokens", 0).await.meter.expect("meter").remaining_credits, Some(11_000));
    admin.upsert_subscription(subscribe("convert", pb::SubscriptionStatus::Active)).await.expect("convert");
    let converted = check(&mut entitlements, "convert", "tokens", 0).await;
    assert!(!converted.trial.expect("trial").trialing);
    assert_eq!(converted.meter.expect("meter").remaining_credits, Some(10_000));
    assert_eq!(events(&server, "trial_converted").await, 1);

    // Buying credit during a trial ends the trial state too.
    assert!(admin.start_trial(start("trial-buyer", "p5")).await.expect("start").into_inner().started);
    admin
        .grant_credits(pb::GrantCreditsRequest {
            account_id: "trial-buyer".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            kind: pb::GrantKind::Purchased as i32,
            idempotency_key: "g2".into(),
            ..Default::default()
        })
        .await
        .expect("grant");
    assert!(!check(&mut entitlements, "trial-buyer", "tokens", 0).await.trial.expect("trial").trialing);
    // Expiry is recorded in the ledger by the next change of each meter.
    debit(&mut entitlements, "convert", "tokens", 1, "touch").await;
    debit(&mut entitlements, "trial-buyer", "tokens", 1, "touch-2").await;
    assert_ledger_explains_balances(&server).await;
}
