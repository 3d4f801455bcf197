//! Checks that share one snapshot (concurrent single-line checks of a tenant, or one on its own)
//! answer exactly as checks decided alone (by a server that batches none): the same decision, denial, meter figures (allowance, grants, live
//! holds), fair-use stage and soft caps, for accounts in every state, an org member and a meter
//! nobody has used yet among them. A check sees the debits committed before it was made.

mod common;

use allot_proto::v1 as pb;
use allot_server::testkit::{Admin, Entitlements, TestServer};
use common::*;
use time::macros::datetime;

/// Accounts in varied states: `a{i}` has used `i * 40` of an allowance of 1,000, every third
/// has a purchased grant of 500, every fourth a live hold of 150, every sixth a second grant (250)
/// and a second hold (50); `member` belongs to an org; and the accounts of `subscribed_accounts`.
async fn varied_accounts(server: &TestServer) -> Vec<String> {
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    fair.set_soft_caps(pb::SetSoftCapsRequest {
        plan_id: "free".into(),
        caps: vec![pb::SoftCap { meter: "tokens".into(), window_ms: 3_600_000, threshold_credits: 400 }],
    })
    .await
    .expect("caps");
    admin.upsert_account(pb::Account { account_id: "member".into(), org_id: "acme".into() }).await.expect("member");
    let mut accounts = subscribed_accounts(&mut admin, &mut entitlements).await;
    for i in 0..24 {
        let account = format!("a{i}");
        if i > 0 {
            assert!(allowed(debit(&mut entitlements, &account, "tokens", i * 40, &format!("use-{i}")).await.decision));
        }
        if i % 3 == 0 {
            purchase(&mut admin, &account, "tokens", 500, &format!("grant-{i}")).await;
        }
        if i % 4 == 0 {
            reserve(&mut entitlements, &account, "tokens", 150, &format!("hold-{i}")).await;
        }
        if i % 6 == 0 {
            purchase(&mut admin, &account, "tokens", 250, &format!("second-grant-{i}")).await;
            reserve(&mut entitlements, &account, "tokens", 50, &format!("second-hold-{i}")).await;
        }
        accounts.push(account);
    }
    accounts.push("member".into());
    accounts.push("never-seen".into());
    accounts
}

/// Accounts under a paid plan: `sub-active` (entitled, its own billing period, some used),
/// `sub-lapsed` (canceled: the free plan) and `trialist` (trialing, with the trial's grant).
async fn subscribed_accounts(admin: &mut Admin, entitlements: &mut Entitlements) -> Vec<String> {
    pro_plan(admin, 5_000, 14, 500).await;
    let ts = allot_server::grpc::to_proto::timestamp;
    for (account, status) in [("sub-active", pb::SubscriptionStatus::Active), ("sub-lapsed", pb::SubscriptionStatus::Canceled)] {
        admin
            .upsert_subscription(pb::UpsertSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    account_id: account.into(),
                    plan_id: "pro".into(),
                    status: status as i32,
                    current_period_start: Some(ts(datetime!(2026-11-05 00:00 UTC))),
                    current_period_end: Some(ts(datetime!(2026-12-05 00:00 UTC))),
                    ..Default::default()
                }),
            })
            .await
            .expect("subscription");
    }
    let trial = pb::StartTrialRequest { account_id: "trialist".into(), plan_id: "pro".into(), fingerprint: "fingerprint-trialist".into() };
    assert!(admin.start_trial(trial).await.expect("trial").into_inner().started);
    for account in ["sub-active", "trialist"] {
        assert!(allowed(debit(entitlements, account, "tokens", 4_500, &format!("use-{account}")).await.decision));
    }
    vec!["sub-active".into(), "sub-lapsed".into(), "trialist".into()]
}

/// A check of 300 for each account, one after the other.
async fn one_by_one(client: &Entitlements, accounts: &[String]) -> Vec<pb::CheckResponse> {
    let mut client = client.clone();
    let mut answers = Vec::new();
    for account in accounts {
        answers.push(check(&mut client, account, "tokens", 300).await);
    }
    answers
}

/// A check of 300 for each account, all at once (batches of any shape).
async fn all_at_once(client: &Entitlements, accounts: &[String]) -> Vec<pb::CheckResponse> {
    let mut tasks = Vec::new();
    for account in accounts {
        let (mut client, account) = (client.clone(), account.clone());
        tasks.push(tokio::spawn(async move { check(&mut client, &account, "tokens", 300).await }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

fn assert_same(got: &[pb::CheckResponse], alone: &[pb::CheckResponse], accounts: &[String], what: &str) {
    for (i, account) in accounts.iter().enumerate() {
        assert_eq!(got[i], alone[i], "{what}: {account}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_answer_as_checks_alone() {
    let server = TestServer::start_at(datetime!(2026-11-10 12:00 UTC)).await;
    let accounts = varied_accounts(&server).await;
    let (entitlements, _) = server.clients().await;

    // Decided alone: by a replica of the same database that batches no check.
    let unbatched = server.replica(|c| c.check_batching = false).await;
    let unbatched_client = unbatched.clients().await.0;
    let alone = one_by_one(&unbatched_client, &accounts).await;
    let denied = alone.iter().filter(|r| !allowed(r.decision)).count();
    assert!(denied > 0 && denied < alone.len(), "the accounts span allowed and denied checks ({denied} denied)");
    assert!(alone.iter().any(|r| !r.fair_use.as_ref().expect("fair use").soft_caps_triggered.is_empty()), "some are over the soft cap");

    // One at a time on the batching server (each a batch of one), then all at once, several
    // times over.
    assert_same(&one_by_one(&entitlements, &accounts).await, &alone, &accounts, "a batch of one");
    for round in 0..3 {
        assert_same(&all_at_once(&entitlements, &accounts).await, &alone, &accounts, &format!("round {round}"));
    }

    // Past every period's end (calendar months, and the subscriptions' own): periods roll over
    // in memory alike on both paths.
    server.clock.set(datetime!(2026-12-06 12:00 UTC));
    let rolled = one_by_one(&unbatched_client, &accounts).await;
    assert_ne!(rolled, alone, "the new periods show");
    assert_same(&all_at_once(&entitlements, &accounts).await, &rolled, &accounts, "after the roll-over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_sees_the_debits_committed_before_it() {
    let server = TestServer::start_at(datetime!(2026-11-10 12:00 UTC)).await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    // Checks of other accounts keep the lanes busy while one account debits and checks in turn.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = Vec::new();
    for worker in 0..16 {
        let (mut client, stop) = (entitlements.clone(), stop.clone());
        background.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                check(&mut client, &format!("busy{worker}"), "tokens", 1).await;
            }
        }));
    }
    let mut client = entitlements.clone();
    for i in 1..=20 {
        assert!(allowed(debit(&mut client, "mine", "tokens", 50, &format!("d{i}")).await.decision));
        let meter = check(&mut client, "mine", "tokens", 1).await.meters.into_iter().next().and_then(|m| m.meter).expect("meter");
        assert_eq!(meter.used_credits, 50 * i, "after debit {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in background {
        task.await.expect("task");
    }
}
