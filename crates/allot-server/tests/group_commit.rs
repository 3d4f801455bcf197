//! Group commit: concurrent debits — of one hot meter or of many accounts — are decided together in
//! shared transactions (visible as shared `xmin`s of their ledger entries) and stay exact: the same
//! admissions, one entry and one idempotency record per debit (the entry's id ordered by time),
//! grants consumed in the waterfall, one soft-cap event per crossing. A debit that fails inside a
//! batch (a key reused for another request) fails alone without failing or duplicating its
//! neighbours, and debits a batch does not cover (an org member, a rate-capped meter) are decided
//! alone beside it, and a meter a batch opened keeps its opening entry whoever decides its debit.
//! Small batches run on lane connections (`db::driven`) and go on when the database closes them.

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
    // Entry ids begin with their time in milliseconds (UUIDv7), so the ledger's id index grows at
    // its right edge: within the meter, across batches as within one, that time never falls as
    // the sequence rises (on one server; ids of several servers follow their clocks).
    let out_of_order: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM (SELECT substring(uuid_send(id) FROM 1 FOR 6) AS ms, \
             lag(substring(uuid_send(id) FROM 1 FOR 6)) OVER (ORDER BY seq) AS before \
             FROM ledger_entries WHERE account_id = 'hot' AND meter = 'tokens') e WHERE e.ms < e.before",
            &[],
        )
        .await
        .expect("order")
        .get(0);
    assert_eq!(out_of_order, 0, "an entry id's time below the one before it in the meter's sequence");

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

/// The most accounts whose debit entries one transaction wrote.
async fn most_accounts_in_one_transaction(server: &TestServer) -> i64 {
    let sql =
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(DISTINCT account_id) AS n FROM ledger_entries WHERE kind = 'debit' GROUP BY xmin::text) t";
    server.sql().await.query_one(sql, &[]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_of_many_accounts_share_transactions_and_stay_exact() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    // Half the accounts also hold a purchased grant of 50: the waterfall takes the allowance first.
    for a in (0..32).step_by(2) {
        purchase(&mut admin, &format!("acct-{a}"), "tokens", 50, &format!("grant-{a}")).await;
    }

    // 32 accounts x 7 debits of 30: 3 fit in 100, 5 in 150.
    let mut tasks = Vec::new();
    for i in 0..7 {
        for a in 0..32 {
            let mut client = entitlements.clone();
            tasks.push(tokio::spawn(async move { (a, debit(&mut client, &format!("acct-{a}"), "tokens", 30, &format!("k{a}-{i}")).await) }));
        }
    }
    let mut admitted = [0; 32];
    for task in tasks {
        let (a, response) = task.await.expect("task");
        if allowed(response.decision) {
            admitted[a] += 1;
            assert!(!response.entry_id.is_empty());
        } else {
            let credit = [pb::DenialReason::InsufficientCredit as i32, pb::DenialReason::QuotaExhausted as i32];
            assert!(credit.contains(&response.reason), "acct-{a}: {:?}", response.reason);
        }
    }
    for (a, n) in admitted.iter().enumerate() {
        assert_eq!(*n, if a % 2 == 0 { 5 } else { 3 }, "acct-{a}");
    }
    let db = server.sql().await;
    let left: i64 = db.query_one("SELECT COALESCE(SUM(remaining_credits), 0)::bigint FROM grants", &[]).await.expect("sum").get(0);
    assert_eq!(left, 0, "each grant of 50 paid 20 of the 4th debit and 30 of the 5th");
    let records: i64 = db.query_one("SELECT COUNT(*) FROM idempotency_records WHERE operation = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(records, 32 * 7, "each debit keeps its own idempotency record, denials too");
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 16 * 5 + 16 * 3);
    assert!(most_accounts_in_one_transaction(&server).await >= 2, "no transaction decided debits of more than one account");
    assert_eq!(assert_ledger_explains_balances(&server).await, 32);

    // Retries replay their own answers and charge nothing more.
    let mut client = entitlements.clone();
    for (a, i) in [(0, 0), (5, 6), (31, 3)] {
        let key = format!("k{a}-{i}");
        let stored: serde_json::Value =
            db.query_one("SELECT response FROM idempotency_records WHERE key = $1", &[&key]).await.expect("record").get(0);
        let replay = debit(&mut client, &format!("acct-{a}"), "tokens", 30, &key).await;
        assert_eq!(allowed(replay.decision), stored["meters"][0]["denial"].is_null(), "{key}");
    }
    let after: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(after, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_crosses_soft_caps_once_and_leaves_org_members_to_the_ordinary_path() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", None, 0, 1_000_000).await;
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    fair.set_soft_caps(pb::SetSoftCapsRequest {
        plan_id: "free".into(),
        caps: vec![pb::SoftCap { meter: "tokens".into(), window_ms: 3_600_000, threshold_credits: 50 }],
    })
    .await
    .expect("caps");
    // Two members of an org (a USER-scoped free plan: each counts its own meter).
    for member in ["member-1", "member-2"] {
        admin.upsert_account(pb::Account { account_id: member.into(), org_id: "org".into() }).await.expect("member");
    }

    // 16 accounts (2 of them org members) x 4 debits of 20 in record mode: each crosses 50 once.
    let accounts: Vec<String> = (0..14).map(|a| format!("acct-{a}")).chain(["member-1".into(), "member-2".into()]).collect();
    let mut tasks = Vec::new();
    for i in 0..4 {
        for account in &accounts {
            let mut client = entitlements.clone();
            let (account, key) = (account.clone(), format!("{account}-{i}"));
            tasks.push(tokio::spawn(async move {
                let response = client.debit(debit_req(&account, "tokens", 20, &key, pb::DebitMode::Record)).await.expect("debit").into_inner();
                (account, response)
            }));
        }
    }
    let mut over = std::collections::BTreeMap::<String, usize>::new();
    for task in tasks {
        let (account, response) = task.await.expect("task");
        assert!(allowed(response.decision), "{account}");
        let fair_use = response.fair_use.expect("fair use");
        if fair_use.soft_caps_triggered == vec!["tokens/3600000".to_owned()] {
            *over.entry(account).or_default() += 1;
        }
    }
    // After 20, 40, 60, 80 the cap (50) is over for the last two of each account's four.
    assert_eq!(over.len(), 16, "{over:?}");
    assert!(over.values().all(|n| *n == 2), "{over:?}");
    let db = server.sql().await;
    let events: Vec<String> = db
        .query("SELECT account_id FROM outbox_events WHERE kind = 'soft_cap_triggered' ORDER BY account_id", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected = accounts.clone();
    expected.sort();
    assert_eq!(events, expected, "one event per account that crossed the cap");
    let hourly: i64 = db.query_one("SELECT SUM(used_credits)::bigint FROM usage_hourly", &[]).await.expect("sum").get(0);
    assert_eq!(hourly, 16 * 4 * 20);
    assert_eq!(assert_ledger_explains_balances(&server).await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_first_used_beside_a_batch_keeps_its_opening_entry() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    // `tokens` is batched; `capped` has a per-minute rate cap, so its debits are decided alone —
    // even when they are queued beside a batch that locks (and may open) their rows.
    let meter = |name: &str, rate: Option<i64>| pb::MeterAllowance {
        meter: name.into(),
        allowance_credits: Some(1_000),
        rate_limit_per_minute: rate,
        ..Default::default()
    };
    let plan = pb::Plan {
        plan_id: "free".into(),
        tier: "free".into(),
        name: "Free".into(),
        meters: vec![meter("tokens", None), meter("capped", Some(1_000_000))],
        is_free_default: true,
        ..Default::default()
    };
    admin.upsert_plan(pb::UpsertPlanRequest { plan: Some(plan) }).await.expect("plan");
    // acct-0 is in the restrict stage with a daily budget on `tokens`: decided alone too.
    let mut fair = server.fair_use_for(&server.tenant.api_key).await;
    let mut settings = fair.get_settings(pb::GetSettingsRequest {}).await.expect("settings").into_inner();
    (settings.warning_after, settings.throttle_after, settings.restrict_after) = (1, 1, 1);
    settings.restrict_daily_budgets.insert("tokens".into(), 1_000);
    fair.update_settings(settings).await.expect("update settings");
    let run = fair.request_classification(pb::RequestClassificationRequest { account_id: "acct-0".into() }).await.expect("request").into_inner();
    assert_eq!(run.verdict, pb::ClassificationVerdict::Run as i32);
    let classified = fair
        .submit_classification(pb::SubmitClassificationRequest { ticket: run.ticket, score: 1.0, labels: vec!["test".into()] })
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(classified.stage, pb::EscalationStage::Restrict as i32);

    // 24 accounts use both meters for the first time, all at once.
    let mut tasks = Vec::new();
    for i in 0..3 {
        for a in 0..24 {
            for meter in ["tokens", "capped"] {
                let mut client = entitlements.clone();
                let key = format!("{meter}-{a}-{i}");
                tasks.push(tokio::spawn(async move { debit(&mut client, &format!("acct-{a}"), meter, 10, &key).await }));
            }
        }
    }
    for task in tasks {
        assert!(allowed(task.await.expect("task").decision));
    }
    let db = server.sql().await;
    let openings: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'period_roll'", &[]).await.expect("count").get(0);
    assert_eq!(openings, 48, "one opening entry (the period's allowance) per meter row");
    assert_eq!(assert_ledger_explains_balances(&server).await, 48);
    let budget_used: i64 = db.query_one("SELECT COALESCE(SUM(used_credits), 0)::bigint FROM restrict_usage", &[]).await.expect("used").get(0);
    assert_eq!(budget_used, 30, "acct-0's tokens debits were counted against its daily budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_leaves_what_live_holds_keep() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    // 16 accounts each hold 40 of their 100: 60 is left, 6 debits of 10.
    for a in 0..16 {
        let mut client = entitlements.clone();
        let hold = reserve(&mut client, &format!("acct-{a}"), "tokens", 40, &format!("hold-{a}")).await;
        assert!(allowed(hold.decision));
    }
    let mut tasks = Vec::new();
    for i in 0..9 {
        for a in 0..16 {
            let mut client = entitlements.clone();
            tasks.push(tokio::spawn(async move { (a, debit(&mut client, &format!("acct-{a}"), "tokens", 10, &format!("k{a}-{i}")).await) }));
        }
    }
    let mut admitted = [0; 16];
    for task in tasks {
        let (a, response) = task.await.expect("task");
        admitted[a] += usize::from(allowed(response.decision));
    }
    assert_eq!(admitted, [6; 16], "each account may spend what its hold leaves");
    assert!(most_accounts_in_one_transaction(&server).await >= 2, "no transaction decided debits of more than one account");
    assert_eq!(assert_ledger_explains_balances(&server).await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_taken_while_a_batch_waits_for_its_locks_are_counted() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    // Per account, reserves of 30 and debits of 10 race: whatever order they commit in, what
    // was admitted fits in 100 (a batch reads holds only once its row locks are held).
    let mut tasks = Vec::new();
    for a in 0..16 {
        for i in 0..12 {
            let mut client = entitlements.clone();
            let account = format!("acct-{a}");
            tasks.push(tokio::spawn(async move {
                let credits = if i % 3 == 0 {
                    let hold = reserve(&mut client, &account, "tokens", 30, &format!("hold-{a}-{i}")).await;
                    if allowed(hold.decision) {
                        30
                    } else {
                        0
                    }
                } else {
                    let response = debit(&mut client, &account, "tokens", 10, &format!("k{a}-{i}")).await;
                    if allowed(response.decision) {
                        10
                    } else {
                        0
                    }
                };
                (a, credits)
            }));
        }
    }
    let mut admitted = [0i64; 16];
    for task in tasks {
        let (a, credits) = task.await.expect("task");
        admitted[a] += credits;
    }
    assert!(admitted.iter().all(|credits| *credits <= 100), "holds and debits admitted per account: {admitted:?}");
    assert!(admitted.iter().all(|credits| *credits >= 80), "each account spent what it had: {admitted:?}");
    assert_eq!(assert_ledger_explains_balances(&server).await, 16);
}

/// A server with one pooled connection and one group-commit lane.
async fn one_connection_one_lane() -> TestServer {
    TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.db_pool_size_max = 1;
        c.debit_batch_workers = 1;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_reads_holds_after_its_locks_even_on_a_connection_new_to_locking() {
    // One connection and one lane, so the order of events is the test's to set.
    let server = one_connection_one_lane().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    let mut client = entitlements.clone();
    for account in ["a", "c"] {
        assert!(allowed(debit(&mut client, account, "tokens", 10, &format!("open-{account}")).await.decision));
    }
    // Batches of checks prepare, on the one connection, the statements that read grants, holds
    // and standings, which a debit batch shares; never the debit batch's row lock.
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (mut client, account) = (entitlements.clone(), if i % 2 == 0 { "a" } else { "c" });
            tasks.push(tokio::spawn(async move { check(&mut client, account, "tokens", 1).await }));
        }
        for task in tasks {
            assert!(allowed(task.await.expect("task").decision), "round {round}");
        }
    }
    let tenant = server.tenant.tenant.0;
    let mut holding_c = connect(&server.database_url).await;
    let hold_c = holding_c.transaction().await.expect("begin");
    lock_meters(&hold_c, tenant, "c").await;
    // Another transaction reserves 80 of a's 90 under a's row lock, and has not committed yet.
    let mut holding_a = connect(&server.database_url).await;
    let hold_a = holding_a.transaction().await.expect("begin");
    lock_meters(&hold_a, tenant, "a").await;
    hold_tokens(&hold_a, tenant, "a", 80).await;
    // A debit of c takes the connection and waits for c's lock; meanwhile ten debits of a
    // queue behind it in the lane, to be decided as one batch.
    let mut waiting = vec![{
        let mut client = entitlements.clone();
        tokio::spawn(async move { debit(&mut client, "c", "tokens", 10, "c-1").await })
    }];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 0..10 {
        let mut client = entitlements.clone();
        waiting.push(tokio::spawn(async move { debit(&mut client, "a", "tokens", 10, &format!("a-{i}")).await }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // c's debit goes through; a's batch starts and waits for a's lock, then the hold commits.
    hold_c.commit().await.expect("commit c");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    hold_a.commit().await.expect("commit a");
    let mut admitted = 0;
    for task in waiting.split_off(1) {
        admitted += usize::from(allowed(task.await.expect("task").decision));
    }
    assert!(allowed(waiting.pop().expect("c").await.expect("task").decision));
    assert_eq!(admitted, 1, "90 left, 80 of it held: one debit of 10 fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_writes_and_commits_in_one_transaction_on_a_connection_new_to_its_writes() {
    // One connection, one lane: the first batches meet statements no batch prepared before, and
    // send their COMMIT behind their writes.
    let server = one_connection_one_lane().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100_000), 0, 0).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut client = entitlements.clone();
        let account = format!("acct-{}", i % 3);
        tasks.push(tokio::spawn(async move { debit(&mut client, &account, "tokens", 5, &format!("k{i}")).await }));
    }
    for task in tasks {
        assert!(allowed(task.await.expect("task").decision));
    }
    let db = connect(&server.database_url).await; // the server has one connection
                                                  // Each debit's entry, its idempotency record and its meter's row as last saved were written
                                                  // by the same transaction: none of them ran on its own after the COMMIT.
    let apart: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM ledger_entries l JOIN idempotency_records r ON r.key = l.idempotency_key \
             WHERE l.kind = 'debit' AND l.xmin::text <> r.xmin::text",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(apart, 0, "an entry and its idempotency record written by different transactions");
    let stale: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM meter_balances b WHERE b.xmin::text <> \
             (SELECT l.xmin::text FROM ledger_entries l WHERE l.account_id = b.account_id AND l.meter = b.meter ORDER BY l.seq DESC LIMIT 1)",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stale, 0, "a meter's row saved by another transaction than its last entry");
    let (entries, transactions) = {
        let row = db.query_one("SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count");
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    assert_eq!(entries, 24);
    assert!(transactions < entries, "{entries} debits in {transactions} transactions: no batch formed");
    assert_eq!(assert_ledger_explains_balances(&server).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_meets_a_key_stored_meanwhile_commits_nothing() {
    // One lane, so the test sets which debits form the batch.
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.debit_batch_workers = 1).await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100_000), 0, 0).await;
    let mut client = entitlements.clone();
    for account in ["blocker", "hot"] {
        assert!(allowed(debit(&mut client, account, "tokens", 1, &format!("open-{account}")).await.decision));
    }
    let tenant = server.tenant.tenant.0;
    // A transaction holds the blocker's row, so the lane's next batch waits while ten debits of
    // `hot` queue behind it; another has stored the key `raced` and not committed yet.
    let mut blocking = connect(&server.database_url).await;
    let blocked = blocking.transaction().await.expect("begin");
    lock_meters(&blocked, tenant, "blocker").await;
    let mut racing = connect(&server.database_url).await;
    let raced = racing.transaction().await.expect("begin");
    store_key(&raced, tenant, "raced", "debit").await;
    let blocker = {
        let mut client = entitlements.clone();
        tokio::spawn(async move { debit(&mut client, "blocker", "tokens", 1, "blocker-1").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let key = if i == 5 { "raced".to_owned() } else { format!("n{i}") };
        let mut client = entitlements.clone();
        tasks.push(tokio::spawn(async move { (key.clone(), client.debit(debit_req("hot", "tokens", 10, &key, pb::DebitMode::Gate)).await) }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The batch of `hot` finds `raced` unused (not committed), decides it with its neighbours and
    // sends its writes with its COMMIT behind them; the record's insert waits for the racing
    // transaction, which then commits: the insert stores nine records of ten.
    blocked.commit().await.expect("commit blocker");
    assert!(allowed(blocker.await.expect("task").decision));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    raced.commit().await.expect("commit raced");
    for task in tasks {
        let (key, result) = task.await.expect("task");
        if key == "raced" {
            let err = result.expect_err("a key another request stored");
            assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"));
        } else {
            assert!(allowed(result.expect("a neighbour").into_inner().decision), "{key}");
        }
    }
    let db = server.sql().await;
    let raced_entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE idempotency_key = 'raced'", &[]).await.expect("count").get(0);
    assert_eq!(raced_entries, 0, "the batch's entry for `raced` was committed beside the racing record");
    let (entries, _) = debits_and_transactions(&server, "hot").await;
    assert_eq!(entries, 1 + 9, "the opening debit and each neighbour once");
    let record: serde_json::Value = db.query_one("SELECT response FROM idempotency_records WHERE key = 'raced'", &[]).await.expect("record").get(0);
    assert_eq!(record, serde_json::json!({}), "the racing transaction's record stands");
    assert_eq!(assert_ledger_explains_balances(&server).await, 2);
}

/// Backends of the server's lane connections (`db::driven`) on this test's database, by pid.
async fn lane_backends(server: &TestServer) -> Vec<i32> {
    let rows = server
        .sql()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 ORDER BY pid",
            &[&allot_server::db::LANE_APPLICATION_NAME],
        )
        .await
        .expect("backends");
    rows.iter().map(|r| r.get(0)).collect()
}

/// 24 concurrent debits of 5 on as many accounts, each allowed and written once.
async fn debit_round(entitlements: &allot_server::testkit::Entitlements, round: &str) {
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut client = entitlements.clone();
        let key = format!("{round}-{i}");
        tasks.push(tokio::spawn(async move { debit(&mut client, &format!("acct-{i}"), "tokens", 5, &key).await }));
    }
    for task in tasks {
        let response = task.await.expect("task");
        assert!(allowed(response.decision), "{response:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debit_batches_run_on_lane_connections_and_outlive_losing_them() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    debit_round(&entitlements, "first").await;
    let before = lane_backends(&server).await;
    assert!(!before.is_empty(), "small debit batches took lane connections");

    // The database drops every lane connection while it idles in its pool: the next batches find
    // them closed, open new ones, and charge each debit once.
    let db = server.sql().await;
    // This test's database only: other tests' servers share the PostgreSQL server.
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        &[&allot_server::db::LANE_APPLICATION_NAME],
    )
    .await
    .expect("terminate");
    // `pg_terminate_backend` only signals: once the backends have exited, their sockets are
    // closed, and taking a lane connection finds it closed (a batch that met a backend still
    // exiting would fail as on any pooled connection: alone in its batch, UNAVAILABLE).
    for _ in 0..200 {
        let left: i64 = db.query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&before]).await.expect("left").get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    for round in ["second", "third"] {
        debit_round(&entitlements, round).await;
    }
    let after = lane_backends(&server).await;
    assert!(!after.is_empty() && after.iter().all(|pid| !before.contains(pid)), "new lane connections: {before:?} → {after:?}");
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 72, "each of 3 × 24 debits written once");
    assert_eq!(assert_ledger_explains_balances(&server).await, 24);
}
