//! Rated charges: Debit, Reserve/Commit and Check given usage of a SKU instead of credits. The
//! cost comes from the price in force, the ledger keeps how it was rated, and unpriced SKUs are
//! denied as decisions.

mod common;

use allot_proto::v1 as pb;
use allot_proto::v1::pricing_client::PricingClient;
use allot_server::testkit::TestServer;
use common::*;

fn tokens(input: i64, output: i64) -> Option<pb::UsageQuantities> {
    Some(pb::UsageQuantities { input_tokens: input, output_tokens: output, ..Default::default() })
}

fn rated(sku: &str, quantities: Option<pb::UsageQuantities>) -> pb::MeterAmount {
    pb::MeterAmount { meter: "credits".into(), sku: sku.into(), quantities, ..Default::default() }
}

#[tokio::test]
async fn usage_is_rated_at_the_price_in_force_and_recorded() {
    let server = TestServer::start().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "credits", Some(1_000_000), 0, 0).await;
    let channel = server.channel().await;
    let key: tonic::metadata::MetadataValue<_> = format!("Bearer {}", server.tenant.api_key).parse().expect("ascii");
    let mut pricing = PricingClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", key.clone());
        Ok(r)
    });
    // 250 credits per million input tokens, 1,000 per million output tokens.
    let price = pricing
        .upsert_price(pb::UpsertPriceRequest {
            sku: "openai/gpt-4o".into(),
            unit_prices: vec![
                pb::UnitPrice { dimension: pb::UsageDimension::InputTokens as i32, credits: 250, per_units: 1_000_000 },
                pb::UnitPrice { dimension: pb::UsageDimension::OutputTokens as i32, credits: 1_000, per_units: 1_000_000 },
            ],
            effective_from: None,
        })
        .await
        .expect("price")
        .into_inner();

    let debit = entitlements
        .debit(pb::DebitRequest {
            account_id: "acct".into(),
            usage: vec![rated("openai/gpt-4o", tokens(100_000, 20_000))],
            idempotency_key: "r1".into(),
            ..Default::default()
        })
        .await
        .expect("debit")
        .into_inner();
    assert!(allowed(debit.decision));
    // 100,000 × 250 / 1e6 + 20,000 × 1,000 / 1e6 = 25 + 20 = 45 credits.
    assert_eq!((debit.meters[0].rated_cost_credits, debit.meters[0].price_version), (45, price.version));
    assert_eq!(debit.meter.expect("meter").used_credits, 45);
    let ledger = admin
        .list_ledger_entries(pb::ListLedgerEntriesRequest { account_id: "acct".into(), ..Default::default() })
        .await
        .expect("ledger")
        .into_inner();
    let charge = ledger.entries.iter().find(|e| e.kind == pb::EntryKind::Debit as i32).expect("charge");
    let rating: serde_json::Value = serde_json::from_str(&charge.rating_json).expect("rating json");
    assert_eq!(rating["cost_credits"], 45);
    assert_eq!(rating["sku"], "openai/gpt-4o");

    // Unpriced SKUs are denied, as a decision, and charge nothing.
    let unknown = entitlements
        .debit(pb::DebitRequest {
            account_id: "acct".into(),
            usage: vec![rated("acme/mystery", tokens(1, 0))],
            idempotency_key: "r2".into(),
            ..Default::default()
        })
        .await
        .expect("debit")
        .into_inner();
    assert_eq!(unknown.reason, pb::DenialReason::PriceUnknown as i32);
    let check = entitlements
        .check(pb::CheckRequest { account_id: "acct".into(), usage: vec![rated("acme/mystery", tokens(1, 0))], ..Default::default() })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(check.reason, pb::DenialReason::PriceUnknown as i32);

    // A hold in credits settled with rated actual usage.
    let hold = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "credits".into(),
            amount_credits: 100,
            ttl_ms: 60_000,
            idempotency_key: "h1".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    let committed = entitlements
        .commit(pb::CommitRequest { hold_id: hold.hold_id, actual: vec![rated("openai/gpt-4o", tokens(0, 30_000))], ..Default::default() })
        .await
        .expect("commit")
        .into_inner();
    assert_eq!(committed.meters[0].rated_cost_credits, 30);
    assert_eq!(committed.meter.expect("meter").used_credits, 75);

    let both = entitlements
        .debit(pb::DebitRequest {
            account_id: "acct".into(),
            usage: vec![pb::MeterAmount { amount_credits: 5, ..rated("openai/gpt-4o", tokens(1, 0)) }],
            idempotency_key: "r3".into(),
            ..Default::default()
        })
        .await
        .expect_err("credits and sku");
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    assert_ledger_explains_balances(&server).await;
}
