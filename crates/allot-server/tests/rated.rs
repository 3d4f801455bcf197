//! Rated charges: Debit, Reserve/Commit and Check given usage of a SKU instead of credits. The
//! cost comes from the price in force, the ledger keeps how it was rated, and unpriced SKUs are
//! denied as decisions.

mod common;

use allot_proto::v1 as pb;
use allot_proto::v1::pricing_client::PricingClient;
use allot_server::testkit::{Bearer, TestServer};
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
    let mut pricing = PricingClient::with_interceptor(server.channel().await, Bearer::new(&server.tenant.api_key));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rated_debits_are_batched_and_keep_their_ratings() {
    let server = TestServer::start().await;
    let (entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "credits", Some(1_000), 0, 0).await;
    let mut pricing = PricingClient::with_interceptor(server.channel().await, Bearer::new(&server.tenant.api_key));
    pricing
        .upsert_price(pb::UpsertPriceRequest {
            sku: "openai/gpt-4o".into(),
            unit_prices: vec![pb::UnitPrice { dimension: pb::UsageDimension::InputTokens as i32, credits: 250, per_units: 1_000_000 }],
            effective_from: None,
        })
        .await
        .expect("price");

    // 16 accounts x 8 debits of 1,000,000 input tokens (250 credits) against 1,000: 4 fit each,
    // and a mystery SKU beside them is denied as a decision.
    let mut tasks = Vec::new();
    for i in 0..8 {
        for a in 0..16 {
            let mut client = entitlements.clone();
            let sku = if a == 0 && i == 0 { "acme/mystery" } else { "openai/gpt-4o" };
            let request = pb::DebitRequest {
                account_id: format!("acct-{a}"),
                usage: vec![rated(sku, tokens(1_000_000, 0))],
                idempotency_key: format!("r{a}-{i}"),
                ..Default::default()
            };
            tasks.push(tokio::spawn(async move { (a, client.debit(request).await.expect("debit").into_inner()) }));
        }
    }
    let mut admitted = [0; 16];
    for task in tasks {
        let (a, response) = task.await.expect("task");
        if allowed(response.decision) {
            admitted[a] += 1;
            assert_eq!(response.meters[0].rated_cost_credits, 250, "acct-{a}: the outcome names its rating");
        } else {
            let expected =
                [pb::DenialReason::PriceUnknown as i32, pb::DenialReason::InsufficientCredit as i32, pb::DenialReason::QuotaExhausted as i32];
            assert!(expected.contains(&response.reason), "acct-{a}: {:?}", response.reason);
        }
    }
    assert_eq!(admitted, [4; 16]);
    let db = server.sql().await;
    let row = db
        .query_one(
            "SELECT COUNT(*), COUNT(DISTINCT xmin::text), COUNT(*) FILTER (WHERE (rating->>'cost_credits')::bigint = 250 AND -delta_credits = 250) \
             FROM ledger_entries WHERE kind = 'debit'",
            &[],
        )
        .await
        .expect("entries");
    let (entries, transactions, rated_entries): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((entries, rated_entries), (64, 64), "every charge is the rated cost, with its rating kept");
    assert!(transactions < entries, "{entries} rated debits in {transactions} transactions: no batch formed");
    assert_eq!(assert_ledger_explains_balances(&server).await, 16);
}
