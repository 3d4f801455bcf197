//! The history checker on a healthy server: many concurrent clients (debit, reserve, commit,
//! release, refund, with replays of the same keys) leave a history that the database explains
//! exactly; and the checker is not blind: anomalies planted behind the server's back (a lost
//! acknowledgement, a duplicate, an overspend, a gap) are each reported.

use std::time::Duration;

use allot_server::faults::history::{self, Attempt, AttemptRecord, Expect, History, Kind, Operation};
use allot_server::faults::workload::{self, Options, Stop};
use allot_server::testkit::TestServer;

const ALLOWANCE_CREDITS: i64 = 5_000;
const DEBT_LIMIT_CREDITS: i64 = 500;

async fn checked(server: &TestServer, history: &History) -> history::Report {
    let db = server.sql().await;
    let expect = Expect { debt_limit_credits: DEBT_LIMIT_CREDITS, now: allot_server::clock::Clock::now(&*server.clock) };
    history::check(history, &db, &expect).await.expect("check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_mixed_workload_is_explained_by_the_ledger() {
    let server = TestServer::start().await;
    let (_, mut admin) = server.clients().await;
    admin.upsert_plan(workload::plan_request("tokens", ALLOWANCE_CREDITS, DEBT_LIMIT_CREDITS)).await.expect("plan");
    let client = workload::client(server.channel().await, &server.tenant.api_key);
    let history = History::new();
    // 16 clients on 4 accounts: contention on every row, and enough demand to exhaust credit.
    let options = Options { clients: 16, accounts: 4, operations_per_client: Some(40), replay_percent: 25, ..Options::default() };
    workload::run(client, options, history.clone(), Stop::new()).await;

    let report = checked(&server, &history).await;
    println!("{report}");
    report.assert_clean();
    assert_eq!(report.operations, 16 * 40);
    assert_eq!(report.unknown, 0, "a healthy server answers every call");
    assert!(report.acked > 200 && report.denied > 0, "the mix both charges and runs out of credit: {report}");
    for kind in [Kind::Debit, Kind::Reserve, Kind::Commit, Kind::Release, Kind::Refund] {
        let acked = history.operations().iter().filter(|op| op.kind == kind && matches!(op.outcome(), history::Outcome::Acked { .. })).count();
        assert!(acked > 0, "no acknowledged {}", kind.as_str());
    }
}

fn op(kind: Kind, key: &str, attempts: Vec<Attempt>) -> Operation {
    Operation {
        kind,
        account: "acct".into(),
        key: Some(key.into()),
        hold_id: None,
        refunds: None,
        amount_credits: 10,
        attempts: attempts.into_iter().map(|attempt| AttemptRecord { attempt, elapsed: Duration::ZERO }).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_reports_planted_anomalies() {
    let server = TestServer::start().await;
    let (_, mut admin) = server.clients().await;
    admin.upsert_plan(workload::plan_request("tokens", 100, 0)).await.expect("plan");
    let mut client = workload::client(server.channel().await, &server.tenant.api_key);
    let history = History::new();
    let mut ids = Vec::new();
    for key in ["a", "b", "c"] {
        let request = pb_debit(key, 10);
        let response = client.debit(request).await.expect("debit").into_inner();
        ids.push(response.entry_id.clone());
        history.record(op(Kind::Debit, key, vec![Attempt::Ok { id: Some(response.entry_id) }]));
    }
    // Clean so far.
    checked(&server, &history).await.assert_clean();

    // 1. A refused operation that is nevertheless in the ledger ("d" was really debited).
    client.debit(pb_debit("d", 10)).await.expect("debit");
    history.record(op(Kind::Debit, "d", vec![Attempt::Refused { code: tonic::Code::FailedPrecondition, reason: String::new() }]));
    // 2. An acknowledgement the ledger does not hold (lost).
    history.record(op(Kind::Debit, "e", vec![Attempt::Ok { id: Some(uuid::Uuid::new_v4().to_string()) }]));
    // 3. A replay that answered differently.
    history.record(op(Kind::Debit, "f", vec![Attempt::Denied { reason: 2 }, Attempt::Ok { id: None }]));
    let report = checked(&server, &history).await;
    let text = format!("{:#?}", report.anomalies);
    assert!(text.contains("debit d") && text.contains("not acknowledged"), "{text}");
    assert!(text.contains("debit e") && text.contains("acknowledged entry"), "{text}");
    assert!(text.contains("first answer"), "{text}");

    // 4. Behind the server's back: a duplicate entry under key "a", a phantom key, an overspend
    //    below the floor, and a seq gap (the stored seq no longer matches).
    let db = server.sql().await;
    db.batch_execute(
        "INSERT INTO ledger_entries (tenant_id, id, account_id, meter, seq, kind, delta_credits, breakdown, period_start, period_end, idempotency_key, created_at) \
         SELECT tenant_id, gen_random_uuid(), account_id, meter, seq + 10 + (k = 'zz')::int, 'debit', -1000, breakdown, period_start, period_end, k, created_at \
         FROM ledger_entries, (VALUES ('a'), ('zz')) AS keys(k) WHERE idempotency_key = 'c'",
    )
    .await
    .expect("plant entries");
    let report = checked(&server, &history).await;
    let text = format!("{:#?}", report.anomalies);
    assert!(text.contains("key a has 2 entries"), "{text}");
    assert!(text.contains("under key zz that no client sent"), "{text}");
    assert!(text.contains("below the floor"), "{text}");
    assert!(text.contains("a gap") && text.contains("ledger sums to"), "{text}");
    let _ = ids;
}

fn pb_debit(key: &str, amount: i64) -> allot_proto::v1::DebitRequest {
    allot_proto::v1::DebitRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        mode: allot_proto::v1::DebitMode::Gate as i32,
        ..Default::default()
    }
}
