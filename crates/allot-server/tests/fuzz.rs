//! Fuzzing request validation (proptest): arbitrary bytes, and mutations of valid requests,
//! decoded as every request type and pushed through its validation (`grpc::from_proto`,
//! `grpc::pricing_proto`) must never panic and must fail only with INVALID_ARGUMENT naming a
//! field; a sample is sent to the live server for every RPC, which must never answer INTERNAL
//! (or UNKNOWN). Bounded for CI; longer runs (docs/security.md):
//!
//! ```sh
//! ALLOT_FUZZ_CASES=200000 ALLOT_FUZZ_LIVE_CASES=2000 cargo test -p allot-server --test fuzz --release
//! ```

mod common;
#[path = "support/raw.rs"]
mod raw;

use allot_proto::v1 as pb;
use allot_server::error::Error;
use allot_server::grpc::{from_proto, pricing_proto};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message as _;
use tonic::Code;

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Valid encodings of every validated request, as starting points for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let ts = Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 });
    let attributes = [("model".to_owned(), "big".to_owned())].into_iter().collect();
    let usage = vec![pb::MeterAmount { meter: "tokens".into(), amount_credits: 5, ..Default::default() }];
    vec![
        pb::CheckRequest { account_id: "acct".into(), meter: "tokens".into(), amount_credits: 5, usage: usage.clone(), subsidy: None }
            .encode_to_vec(),
        pb::DebitRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            idempotency_key: "k".into(),
            attributes,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            ttl_ms: 60_000,
            idempotency_key: "k".into(),
            usage,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::CommitRequest { hold_id: uuid::Uuid::nil().to_string(), actual_credits: 3, ..Default::default() }.encode_to_vec(),
        pb::RefundRequest { entry_id: uuid::Uuid::nil().to_string(), amount_credits: 1, idempotency_key: "r".into() }.encode_to_vec(),
        pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: "p".into(),
                tier: "t".into(),
                name: "n".into(),
                meters: vec![pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(10), ..Default::default() }],
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        pb::UpsertSubscriptionRequest {
            subscription: Some(pb::Subscription {
                account_id: "a".into(),
                plan_id: "p".into(),
                status: 1,
                current_period_start: ts,
                current_period_end: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        pb::GrantCreditsRequest {
            account_id: "a".into(),
            meter: "tokens".into(),
            amount_credits: 10,
            kind: 1,
            expires_at: ts,
            idempotency_key: "g".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::GetUsageBreakdownRequest { account_id: "a".into(), meter: "tokens".into(), group_by: "model".into(), ..Default::default() }
            .encode_to_vec(),
        pb::UpsertPriceRequest {
            sku: "vendor/model".into(),
            unit_prices: vec![pb::UnitPrice { dimension: 1, credits: 3, per_units: 1_000 }],
            effective_from: ts,
        }
        .encode_to_vec(),
        pb::UpdatePricingPolicyRequest {
            policy: Some(pb::PricingPolicy { strict: true, high_value_sku_patterns: vec!["vendor/*".into()], ..Default::default() }),
        }
        .encode_to_vec(),
        pb::EstimateRequest { sku: "vendor/model".into(), ..Default::default() }.encode_to_vec(),
        pb::StartTrialRequest { account_id: "a".into(), plan_id: "p".into(), fingerprint: "fp".into() }.encode_to_vec(),
    ]
}

/// Arbitrary bytes, or a valid request with bytes overwritten, inserted, or cut off.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    let mutated =
        (0..seeds.len(), proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 1..8), any::<u16>()).prop_map(move |(i, edits, cut)| {
            let mut bytes = seeds[i].clone();
            for (at, byte, how) in edits {
                let at = usize::from(at) % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.extend(std::iter::repeat_n(byte, usize::from(byte % 64))),
                }
            }
            if cut % 5 == 0 {
                bytes.truncate(usize::from(cut) % (bytes.len() + 1));
            }
            bytes
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated]
}

/// A validation failure must be INVALID_ARGUMENT naming a field (or out of the price bounds).
fn refused_properly(what: &str, result: Result<(), Error>) -> Result<(), TestCaseError> {
    match result {
        Ok(()) => Ok(()),
        Err(Error::InvalidArgument { field, .. }) | Err(Error::PriceOutOfBounds { field, .. }) => {
            prop_assert!(!field.is_empty(), "{what}: a refusal names its field");
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!("{what}: {other:?} is not INVALID_ARGUMENT"))),
    }
}

fn validate_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    macro_rules! each {
        ($ty:ty, $name:literal, |$req:ident| $validate:expr) => {
            if let Ok($req) = <$ty>::decode(bytes) {
                refused_properly($name, $validate.map(|_| ()))?;
            }
        };
    }
    each!(pb::CheckRequest, "check", |r| from_proto::check(r));
    each!(pb::DebitRequest, "debit", |r| from_proto::debit(r));
    each!(pb::ReserveRequest, "reserve", |r| from_proto::reserve(r));
    each!(pb::CommitRequest, "commit", |r| from_proto::commit(r));
    each!(pb::ReleaseRequest, "release", |r| from_proto::release(r));
    each!(pb::RefundRequest, "refund", |r| from_proto::refund(r));
    each!(pb::UpsertPlanRequest, "plan", |r| from_proto::plan(r));
    each!(pb::UpsertSubscriptionRequest, "subscription", |r| from_proto::subscription(r));
    each!(pb::GrantCreditsRequest, "grant", |r| from_proto::grant(r));
    each!(pb::Account, "account", |r| from_proto::account_record(r));
    each!(pb::StartTrialRequest, "trial", |r| from_proto::start_trial(r));
    each!(pb::GetUsageBreakdownRequest, "breakdown", |r| from_proto::breakdown(r));
    each!(pb::ListLedgerEntriesRequest, "ledger", |r| from_proto::page_size(r.page_size).and_then(|_| from_proto::ledger_token(&r.page_token)));
    each!(pb::ListPlansRequest, "plans", |r| from_proto::page_size(r.page_size).and_then(|_| from_proto::plan_token(&r.page_token)));
    each!(pb::UpsertPriceRequest, "upsert price", |r| pricing_proto::upsert_price(r));
    each!(pb::ListPricesRequest, "list prices", |r| pricing_proto::list_prices(r));
    each!(pb::RetirePriceRequest, "retire price", |r| pricing_proto::retire_price(r));
    each!(pb::EstimateRequest, "estimate", |r| pricing_proto::estimate(r));
    each!(pb::UpdatePricingPolicyRequest, "policy", |r| pricing_proto::policy(r));
    Ok(())
}

#[test]
fn validation_never_panics_and_refuses_only_with_invalid_argument() {
    let mut runner = TestRunner::new(Config { cases: cases("ALLOT_FUZZ_CASES", 2_000), failure_persistence: None, ..Config::default() });
    runner.run(&hostile(), |bytes| validate_everything(&bytes)).expect("validation under hostile input");
    // The seeds themselves are valid: mutations start from requests that pass.
    for seed in seeds() {
        validate_everything(&seed).expect("seed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_server_never_answers_internal_to_hostile_bytes() {
    let server = allot_server::testkit::TestServer::start().await;
    let channel = server.channel().await;
    let auth = format!("Bearer {}", server.tenant.api_key);
    let mut runner = TestRunner::new(Config { cases: cases("ALLOT_FUZZ_LIVE_CASES", 24), failure_persistence: None, ..Config::default() });
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&hostile(), |bytes| {
        let (channel, auth, body) = (channel.clone(), auth.clone(), bytes.clone());
        let codes = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let mut codes = Vec::new();
                for (path, _) in allot_server::auth::methods::METHODS {
                    let code = match raw::call(channel.clone(), path, Some(&auth), body.clone()).await {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    codes.push((*path, code));
                }
                codes
            })
        });
        for (path, code) in codes {
            prop_assert!(!matches!(code, Code::Internal | Code::Unknown), "{} answered {:?} to {:?}", path, code, bytes);
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    });
    result.expect("no INTERNAL from hostile bytes");
    assert!(answered.into_inner() >= allot_server::auth::methods::METHODS.len(), "every RPC was called");
    // Oversized messages are refused before any handler (the limit is far below 4 MiB).
    let big = pb::DebitRequest { account_id: "a".repeat(usize::try_from(server.config.max_message_bytes).expect("size") + 1), ..Default::default() }
        .encode_to_vec();
    let err = raw::call(channel, "/allot.v1.Entitlements/Debit", Some(&auth), big).await.expect_err("too big");
    assert!(matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange), "{err:?}");
}
