//! Streams of calls (`CheckStream`, `DebitStream`, `RequestClassificationStream`): each request
//! is answered, once, with its sequence, exactly as its unary twin would be — the same decisions,
//! idempotency and errors (as `google.rpc.Status` with the same details), with the stream going
//! on after an error. Every request is authenticated and authorised again, so a key revoked
//! mid-stream stops working; many requests in flight lose none; a draining server answers what is
//! in flight and ends the stream with UNAVAILABLE; a debit in flight when its client abandons the
//! stream still commits.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use allot_proto::v1 as pb;
use allot_server::auth::Role;
use allot_server::testkit::TestServer;
use common::*;
use pb::check_stream_response::Outcome as CheckOutcome;
use pb::debit_stream_response::Outcome as DebitOutcome;
use pb::entitlements_client::EntitlementsClient;
use pb::fair_use_client::FairUseClient;
use pb::request_classification_stream_response::Outcome as ClassificationOutcome;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A guard against a hang, not a performance assertion.
const HANG: Duration = Duration::from_secs(120);

/// An open stream: where requests go, and where answers come from.
struct Open<Req, Resp> {
    requests: mpsc::Sender<Req>,
    answers: tonic::Streaming<Resp>,
}

impl<Req, Resp> Open<Req, Resp> {
    async fn send(&self, request: Req) {
        self.requests.send(request).await.expect("stream open");
    }

    /// The next answer (None once the stream ended with OK).
    async fn next(&mut self) -> Result<Option<Resp>, tonic::Status> {
        tokio::time::timeout(HANG, self.answers.message()).await.expect("an answer in time")
    }

    /// Half-closes and reads every answer left; the stream must end with OK.
    async fn finish(self) -> Vec<Resp> {
        let Open { requests, mut answers } = self;
        drop(requests);
        let mut all = Vec::new();
        while let Some(answer) = tokio::time::timeout(HANG, answers.message()).await.expect("an answer in time").expect("the stream ends with OK") {
            all.push(answer);
        }
        all
    }
}

async fn debit_stream(server: &TestServer, api_key: &str) -> Result<Open<pb::DebitStreamRequest, pb::DebitStreamResponse>, tonic::Status> {
    let (channel, bearer) = server.channel_for(api_key).await;
    let mut client = EntitlementsClient::with_interceptor(channel, bearer);
    let (requests, rx) = mpsc::channel(4_096);
    let answers = client.debit_stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Open { requests, answers })
}

async fn check_stream(server: &TestServer, api_key: &str) -> Result<Open<pb::CheckStreamRequest, pb::CheckStreamResponse>, tonic::Status> {
    let (channel, bearer) = server.channel_for(api_key).await;
    let mut client = EntitlementsClient::with_interceptor(channel, bearer);
    let (requests, rx) = mpsc::channel(4_096);
    let answers = client.check_stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Open { requests, answers })
}

fn debit_at(sequence: u64, account: &str, amount: i64, key: &str) -> pb::DebitStreamRequest {
    pb::DebitStreamRequest { sequence, debit: Some(debit_req(account, "tokens", amount, key, pb::DebitMode::Gate)) }
}

fn check_at(sequence: u64, account: &str, amount: i64) -> pb::CheckStreamRequest {
    pb::CheckStreamRequest {
        sequence,
        check: Some(pb::CheckRequest { account_id: account.into(), meter: "tokens".into(), amount_credits: amount, ..Default::default() }),
    }
}

/// The `ErrorInfo.reason` and `BadRequest` fields of a stream answer's error.
fn error_of(status: &tonic_types::pb::Status) -> (Code, String, Vec<String>) {
    use prost::Message as _;
    let status = tonic::Status::with_details(Code::from(status.code), status.message.clone(), status.encode_to_vec().into());
    let fields = {
        use tonic_types::StatusExt as _;
        let details = status.get_error_details();
        details.bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
    };
    (status.code(), reason(&status), fields)
}

fn by_sequence<T>(answers: Vec<T>, sequence: impl Fn(&T) -> u64) -> BTreeMap<u64, T> {
    let count = answers.len();
    let map: BTreeMap<u64, T> = answers.into_iter().map(|a| (sequence(&a), a)).collect();
    assert_eq!(map.len(), count, "every request is answered once");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debits_and_checks_on_streams_are_answered_as_unary_calls_would_be() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(3_010), 0, 0).await;

    // 128 debits of 30 against 3,010 on one stream, with two requests that are wrong.
    let stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    for i in 0..128 {
        stream.send(debit_at(i, "hot", 30, &format!("k{i}"))).await;
    }
    stream.send(pb::DebitStreamRequest { sequence: 1_000, debit: None }).await;
    stream.send(debit_at(1_001, "hot", 0, "zero")).await;
    let answers = by_sequence(stream.finish().await, |a| a.sequence);
    assert_eq!(answers.len(), 130);
    let mut admitted = 0;
    for i in 0..128 {
        match answers[&i].outcome.as_ref().expect("outcome") {
            DebitOutcome::Debit(debit) if allowed(debit.decision) => admitted += 1,
            DebitOutcome::Debit(debit) => assert_eq!(debit.reason, pb::DenialReason::InsufficientCredit as i32),
            DebitOutcome::Error(status) => panic!("debit {i} failed: {status:?}"),
        }
    }
    assert_eq!(admitted, 100, "exactly what fits");
    let Some(DebitOutcome::Error(missing)) = &answers[&1_000].outcome else { panic!("a request without a debit is an error") };
    assert_eq!(error_of(missing), (Code::InvalidArgument, "INVALID_ARGUMENT".into(), vec!["debit".into()]));
    let Some(DebitOutcome::Error(zero)) = &answers[&1_001].outcome else { panic!("a zero debit is an error") };
    let unary_zero = entitlements.debit(debit_req("hot", "tokens", 0, "zero", pb::DebitMode::Gate)).await.expect_err("zero");
    assert_eq!(error_of(zero).0, unary_zero.code());
    assert_eq!(zero.message, unary_zero.message(), "the same error as the unary call");

    let db = server.sql().await;
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 100, "one entry per admitted debit");
    assert_eq!(assert_ledger_explains_balances(&server).await, 1);

    // Retries replay, on a stream or alone; a key reused for another request fails alone.
    let stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    for i in 0..8 {
        stream.send(debit_at(i, "hot", 30, &format!("k{i}"))).await;
    }
    stream.send(debit_at(8, "hot", 31, "k0")).await;
    let replays = by_sequence(stream.finish().await, |a| a.sequence);
    for i in 0..8 {
        let Some(DebitOutcome::Debit(replay)) = &replays[&i].outcome else { panic!("replay {i}") };
        let Some(DebitOutcome::Debit(first)) = &answers[&i].outcome else { panic!("first {i}") };
        assert_eq!(replay.decision, first.decision);
        assert_eq!(replay.entry_id, first.entry_id, "the same entry, not a second charge");
        let alone = debit(&mut entitlements, "hot", "tokens", 30, &format!("k{i}")).await;
        assert_eq!(alone.entry_id, first.entry_id);
    }
    let Some(DebitOutcome::Error(reused)) = &replays[&8].outcome else { panic!("a reused key is an error") };
    assert_eq!(error_of(reused).1, "IDEMPOTENCY_KEY_REUSED");
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 100, "replays charge nothing");

    // Checks: the same answers as unary checks, the last 10 credits allowed and 11 denied.
    let stream = check_stream(&server, &server.tenant.api_key).await.expect("open");
    let amounts = [0, 10, 11, 1];
    for (i, amount) in amounts.iter().enumerate() {
        stream.send(check_at(i as u64, "hot", *amount)).await;
    }
    stream.send(check_at(9, "", 1)).await;
    let checks = by_sequence(stream.finish().await, |a| a.sequence);
    for (i, amount) in amounts.iter().enumerate() {
        let Some(CheckOutcome::Check(streamed)) = &checks[&(i as u64)].outcome else { panic!("check {i}") };
        assert_eq!(streamed, &check(&mut entitlements, "hot", "tokens", *amount).await, "check of {amount}");
    }
    let Some(CheckOutcome::Check(eleven)) = &checks[&2].outcome else { panic!("check of 11") };
    assert!(!allowed(eleven.decision));
    let Some(CheckOutcome::Error(no_account)) = &checks[&9].outcome else { panic!("a check without an account is an error") };
    assert_eq!(error_of(no_account).0, Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_more_requests_than_it_runs_at_once_answers_every_one() {
    let server = TestServer::start().await;
    let (_, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000_000), 0, 0).await;
    let total = 4 * allot_server::grpc::streams::IN_FLIGHT_PER_STREAM_MAX as u64;

    // Every request is queued before any answer is read: the server must hold back, not drop.
    let stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    for i in 0..total {
        stream.send(debit_at(i, &format!("acct-{}", i % 7), 1, &format!("key-{i}"))).await;
    }
    let answers = by_sequence(stream.finish().await, |a| a.sequence);
    assert_eq!(answers.len() as u64, total);
    assert!(answers.values().all(|a| matches!(&a.outcome, Some(DebitOutcome::Debit(d)) if allowed(d.decision))));
    let db = server.sql().await;
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries as u64, total);
    assert_eq!(assert_ledger_explains_balances(&server).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_stream_is_authenticated_and_authorised() {
    // Keys are looked up on every use, so a revocation takes effect at once.
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.auth_cache_ttl_ms = 0).await;
    let (_, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;

    // A read-only key may check on a stream but not open a debit stream.
    let reader = server.key(Role::Check).await;
    let refused = debit_stream(&server, &reader).await.err().expect("a check key cannot debit");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let stream = check_stream(&server, &reader).await.expect("a check key may check");
    stream.send(check_at(1, "acct", 1)).await;
    assert!(matches!(&stream.finish().await[0].outcome, Some(CheckOutcome::Check(c)) if allowed(c.decision)));

    // A key revoked mid-stream: the next request is refused, the stream goes on.
    let key = allot_server::seed::api_key(&server.app_pool, server.tenant.tenant, "streamer", Role::Charge).await.expect("key");
    let mut stream = debit_stream(&server, &key.key).await.expect("open");
    stream.send(debit_at(1, "acct", 5, "before")).await;
    let first = stream.next().await.expect("answer").expect("open");
    assert!(matches!(&first.outcome, Some(DebitOutcome::Debit(d)) if allowed(d.decision)));
    assert!(allot_server::seed::revoke_api_key(&server.app_pool, server.tenant.tenant, key.id).await.expect("revoke"));
    stream.send(debit_at(2, "acct", 5, "after")).await;
    stream.send(pb::DebitStreamRequest { sequence: 3, debit: None }).await;
    let rest = by_sequence(stream.finish().await, |a| a.sequence);
    for sequence in [2, 3] {
        let Some(DebitOutcome::Error(status)) = &rest[&sequence].outcome else { panic!("request {sequence} after the revocation ran") };
        assert_eq!(error_of(status).1, "UNAUTHENTICATED", "request {sequence}: authentication comes before validation");
    }
    let db = server.sql().await;
    let entries: i64 = db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 1, "nothing charged after the revocation");

    // Another tenant's key on a stream sees its own tenant only.
    let other = allot_server::seed::tenant(&server.app_pool, "other-tenant").await.expect("tenant");
    free_plan(&mut server.clients_for(&other.api_key).await.1, "tokens", Some(1_000), 0, 0).await;
    let stream = check_stream(&server, &other.api_key).await.expect("open");
    stream.send(check_at(1, "acct", 1)).await;
    let answer = &stream.finish().await[0];
    let Some(CheckOutcome::Check(theirs)) = &answer.outcome else { panic!("check") };
    assert_eq!(theirs.meter.as_ref().map(|m| m.used_credits), Some(0), "the other tenant's acct has used nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_requests_on_a_stream_share_one_cooldown_lock() {
    let server = TestServer::start().await;
    let (_, mut admin) = server.clients().await;
    free_plan(&mut admin, "speech_ms", Some(1_000_000), 0, 0).await;
    let (channel, bearer) = server.channel_for(&server.tenant.api_key).await;
    let mut fair = FairUseClient::with_interceptor(channel, bearer);
    let (requests, rx) = mpsc::channel(256);
    let answers = fair.request_classification_stream(ReceiverStream::new(rx)).await.expect("open").into_inner();
    let stream = Open { requests, answers };
    let request =
        |sequence| pb::RequestClassificationStreamRequest { sequence, request: Some(pb::RequestClassificationRequest { account_id: "acct".into() }) };
    for i in 0..100 {
        stream.send(request(i)).await;
    }
    let answers = by_sequence(stream.finish().await, |a| a.sequence);
    let verdicts: Vec<i32> = answers
        .values()
        .map(|a| match &a.outcome {
            Some(ClassificationOutcome::Response(r)) => r.verdict,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(verdicts.iter().filter(|v| **v == pb::ClassificationVerdict::Run as i32).count(), 1, "one run");
    assert_eq!(verdicts.iter().filter(|v| **v == pb::ClassificationVerdict::Cooldown as i32).count(), 99);

    // A held lock reads no database on a stream either.
    let before = server.db_checkouts.load(Ordering::Relaxed);
    let (requests, rx) = mpsc::channel(256);
    let answers = fair.request_classification_stream(ReceiverStream::new(rx)).await.expect("open").into_inner();
    let stream = Open { requests, answers };
    for i in 0..20 {
        stream.send(request(i)).await;
    }
    assert!(stream
        .finish()
        .await
        .iter()
        .all(|a| matches!(&a.outcome, Some(ClassificationOutcome::Response(r)) if r.verdict == pb::ClassificationVerdict::Cooldown as i32)));
    assert_eq!(server.db_checkouts.load(Ordering::Relaxed), before, "a held lock costs no database query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_answers_what_it_read_and_ends_streams_with_unavailable() {
    // A grace far longer than the wait below: a stream that held the drain would show.
    let mut server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.shutdown_grace_ms = 600_000).await;
    let (_, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000_000), 0, 0).await;
    let mut stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    stream.send(debit_at(0, "acct", 1, "first")).await;
    assert!(stream.next().await.expect("answer").is_some());

    // More debits than a stream runs at once, then the server drains while they are in flight.
    let total = 2 * allot_server::grpc::streams::IN_FLIGHT_PER_STREAM_MAX as u64;
    for i in 1..=total {
        stream.send(debit_at(i, &format!("acct-{}", i % 5), 1, &format!("key-{i}"))).await;
    }
    server.begin_shutdown();
    let mut answered = vec![0];
    let end = loop {
        match stream.next().await {
            Ok(Some(answer)) => {
                assert!(matches!(&answer.outcome, Some(DebitOutcome::Debit(d)) if allowed(d.decision)), "{answer:?}");
                answered.push(answer.sequence);
            }
            Ok(None) => panic!("the stream ended with OK while the client still had it open"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable);
    assert_eq!(reason(&end), "SERVER_DRAINING");
    // The client still holds its stream open: the server stops anyway, long before its grace.
    let pool = server.pool.clone();
    tokio::time::timeout(Duration::from_secs(60), server.stopped()).await.expect("the drain did not wait for the stream").expect("clean stop");

    // Every answered debit is charged, and nothing unanswered is.
    let db = pool.get().await.expect("database");
    let keys: Vec<String> = db
        .query("SELECT idempotency_key FROM ledger_entries WHERE kind = 'debit'", &[])
        .await
        .expect("entries")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(keys.len(), answered.len(), "{} answered, {} charged", answered.len(), keys.len());
    drop(stream);
}

/// Clients of a tenant whose account `acct` has debited once under [`two_meter_free_plan`].
async fn two_meter_account(server: &TestServer) -> allot_server::testkit::Entitlements {
    let (mut entitlements, mut admin) = server.clients().await;
    two_meter_free_plan(&mut admin).await;
    assert!(allowed(entitlements.debit(two_meter_debit("opening")).await.expect("debit").into_inner().decision));
    entitlements
}

/// Locks `acct`'s `tokens` row in a transaction of `blocker` until the transaction ends.
async fn hold_tokens_row(blocker: &mut deadpool_postgres::Client) -> deadpool_postgres::Transaction<'_> {
    let lock = blocker.transaction().await.expect("begin");
    lock.execute("SELECT 1 FROM meter_balances WHERE account_id = 'acct' AND meter = 'tokens' FOR UPDATE", &[]).await.expect("lock");
    lock
}

/// A free plan of two meters, `tokens` and `calls`, 1,000 credits each.
async fn two_meter_free_plan(admin: &mut allot_server::testkit::Admin) {
    let meter = |name: &str| pb::MeterAllowance { meter: name.into(), allowance_credits: Some(1_000), ..Default::default() };
    let plan = pb::Plan {
        plan_id: "free".into(),
        tier: "free".into(),
        name: "Free".into(),
        meters: vec![meter("tokens"), meter("calls")],
        is_free_default: true,
        ..Default::default()
    };
    admin.upsert_plan(pb::UpsertPlanRequest { plan: Some(plan) }).await.expect("plan");
}

/// A debit of `acct` on two meters at once: decided alone, not by a group-commit lane.
fn two_meter_debit(key: &str) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: "acct".into(),
        usage: vec![
            pb::MeterAmount { meter: "tokens".into(), amount_credits: 5, ..Default::default() },
            pb::MeterAmount { meter: "calls".into(), amount_credits: 1, ..Default::default() },
        ],
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// Waits until the two-meter debit `key` has committed (an entry per meter), then checks that a
/// unary retry of it replays rather than charging again.
async fn committed_once(db: &tokio_postgres::Client, entitlements: &mut allot_server::testkit::Entitlements, key: &str) {
    let count = "SELECT COUNT(*) FROM ledger_entries WHERE idempotency_key = $1";
    let mut charged = 0;
    for _ in 0..200 {
        charged = db.query_one(count, &[&key]).await.expect("count").get::<_, i64>(0);
        if charged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(charged, 2, "the debit {key} committed once its lock was gone (an entry per meter)");
    let retry = entitlements.debit(two_meter_debit(key)).await.expect("retry").into_inner();
    assert!(allowed(retry.decision));
    let total: i64 = db.query_one(count, &[&key]).await.expect("count").get(0);
    assert_eq!(total, 2, "the retry of {key} replays, it does not charge again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_debit_past_its_deadline_is_answered_deadline_exceeded_and_still_commits() {
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.request_timeout_ms = 300;
        c.db_lock_timeout_ms = 10_000;
    })
    .await;
    let mut entitlements = two_meter_account(&server).await;

    // The test holds the account's balance row, so its next debit waits past the deadline.
    let mut blocker = server.sql().await;
    let lock = hold_tokens_row(&mut blocker).await;
    let mut stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    stream.send(pb::DebitStreamRequest { sequence: 1, debit: Some(two_meter_debit("slow")) }).await;
    let answer = stream.next().await.expect("answer").expect("open");
    let Some(DebitOutcome::Error(late)) = &answer.outcome else { panic!("the held debit: {answer:?}") };
    assert_eq!((answer.sequence, error_of(late).1.as_str()), (1, "DEADLINE_EXCEEDED"));

    // The debit was not dropped with its answer: it commits once the lock is gone.
    lock.rollback().await.expect("release");
    let db = server.sql().await;
    committed_once(&db, &mut entitlements, "slow").await;
    assert_eq!(stream.finish().await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_debit_whose_client_abandons_the_stream_still_commits() {
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| c.db_lock_timeout_ms = 10_000).await;
    let mut entitlements = two_meter_account(&server).await;

    // The test holds the account's balance row, so the streamed debit waits inside its
    // transaction; the client then goes away with the stream (no half-close, no answer read).
    let mut blocker = server.sql().await;
    let lock = hold_tokens_row(&mut blocker).await;
    let stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    stream.send(pb::DebitStreamRequest { sequence: 1, debit: Some(two_meter_debit("abandoned")) }).await;
    let db = server.sql().await;
    // This test's database only: the cluster is shared with the other tests of this file.
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let mut blocked = 0;
    for _ in 0..200 {
        blocked = db.query_one(waiting, &[]).await.expect("activity").get::<_, i64>(0);
        if blocked > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(blocked, 1, "the streamed debit waits for the balance row");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The debit was not dropped with its stream: it commits once the lock is gone.
    lock.rollback().await.expect("release");
    committed_once(&db, &mut entitlements, "abandoned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_requests_take_the_tenants_concurrency_slots() {
    // One slot per tenant and no queue: a second request while the first runs is refused.
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.tenant_concurrency_max = 1;
        c.tenant_queue_max = 0;
        c.db_lock_timeout_ms = 10_000;
    })
    .await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 1, "opening").await.decision));

    // The first request holds the tenant's slot while it waits for a row the test holds.
    let mut blocker = server.sql().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.execute("SELECT 1 FROM meter_balances WHERE account_id = 'acct' FOR UPDATE", &[]).await.expect("lock");
    let mut stream = debit_stream(&server, &server.tenant.api_key).await.expect("open");
    stream.send(debit_at(1, "acct", 5, "held")).await;
    let db = server.sql().await;
    for _ in 0..400 {
        let waiting: i64 = db.query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'", &[]).await.expect("activity").get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stream.send(debit_at(2, "other", 5, "refused")).await;
    let refused = stream.next().await.expect("answer").expect("open");
    let Some(DebitOutcome::Error(status)) = &refused.outcome else { panic!("the second request ran: {refused:?}") };
    assert_eq!((refused.sequence, error_of(status).0, error_of(status).1.as_str()), (2, Code::ResourceExhausted, "TENANT_CONCURRENCY_LIMIT"));

    // Once the row is free the first one completes, and the stream goes on.
    lock.rollback().await.expect("release");
    let first = stream.next().await.expect("answer").expect("open");
    assert!(matches!(&first.outcome, Some(DebitOutcome::Debit(d)) if allowed(d.decision)), "{first:?}");
    stream.send(debit_at(3, "other", 5, "after")).await;
    let rest = stream.finish().await;
    assert!(matches!(&rest[0].outcome, Some(DebitOutcome::Debit(d)) if allowed(d.decision)), "{rest:?}");
}
