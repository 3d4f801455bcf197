//! Pricing against the real server and database: the price book with effective-dated versions,
//! rating (rounding, zero, overflow), the unknown-SKU policy and `:free` spoofing, sanity bounds
//! at write and rating time, tenant isolation, the `Pricing::rate` seam, and cache invalidation
//! across two servers sharing one database.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use allot_proto::v1 as pb;
use allot_proto::v1::pricing_client::PricingClient;
use allot_server::clock::ManualClock;
use allot_server::config::Config;
use allot_server::error::Error;
use allot_server::grpc::to_proto::timestamp;
use allot_server::server::{serve, App};
use allot_server::service::pricing::{self, Pricing, Quantities, Sku, UpsertPrice, PRICE_CACHE_TTL_DEFAULT};
use allot_server::service::Ctx;
use allot_server::testkit::{stack, Bearer, TestServer};
use common::reason;
use time::macros::datetime;
use time::OffsetDateTime;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

const T0: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);

type Client = PricingClient<InterceptedService<Channel, Bearer>>;

fn client(channel: Channel, api_key: &str) -> Client {
    PricingClient::with_interceptor(channel, Bearer::new(api_key))
}

async fn pricing_client(server: &TestServer) -> Client {
    client(server.channel().await, &server.tenant.api_key)
}

use pb::UsageDimension::{AudioMs, InputTokens, OutputTokens, Requests};

fn up(dimension: pb::UsageDimension, credits: i64, per_units: i64) -> pb::UnitPrice {
    pb::UnitPrice { dimension: dimension as i32, credits, per_units }
}

fn tokens(input: i64, output: i64) -> pb::UsageQuantities {
    pb::UsageQuantities { input_tokens: input, output_tokens: output, ..Default::default() }
}

async fn upsert(client: &mut Client, sku: &str, prices: Vec<pb::UnitPrice>, from: Option<OffsetDateTime>) -> Result<pb::Price, tonic::Status> {
    client
        .upsert_price(pb::UpsertPriceRequest { sku: sku.into(), unit_prices: prices, effective_from: from.map(timestamp) })
        .await
        .map(|r| r.into_inner())
}

async fn estimate(
    client: &mut Client,
    sku: &str,
    quantities: pb::UsageQuantities,
    at: Option<OffsetDateTime>,
) -> Result<pb::EstimateResponse, tonic::Status> {
    client.estimate(pb::EstimateRequest { sku: sku.into(), quantities: Some(quantities), at: at.map(timestamp) }).await.map(|r| r.into_inner())
}

/// (cost_credits, price_version, defaulted)
async fn cost(client: &mut Client, sku: &str, quantities: pb::UsageQuantities, at: Option<OffsetDateTime>) -> (i64, i64, bool) {
    let e = estimate(client, sku, quantities, at).await.unwrap_or_else(|s| panic!("estimate {sku}: {s:?}"));
    (e.cost_credits, e.price_version, e.defaulted)
}

async fn refused(client: &mut Client, sku: &str, quantities: pb::UsageQuantities, at: Option<OffsetDateTime>) -> String {
    let status = estimate(client, sku, quantities, at).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    reason(&status)
}

async fn set_policy(client: &mut Client, policy: pb::PricingPolicy) -> pb::PricingPolicy {
    client.update_pricing_policy(pb::UpdatePricingPolicyRequest { policy: Some(policy) }).await.expect("policy").into_inner()
}

fn bounds(dimension: pb::UsageDimension, min: Option<i64>, max: Option<i64>) -> pb::CostBounds {
    pb::CostBounds { dimension: dimension as i32, min_cost_credits_per_1k_units: min, max_cost_credits_per_1k_units: max }
}

/// No two versions of one SKU are ever in force at the same instant.
async fn assert_versions_never_overlap(server: &TestServer) {
    let overlaps: i64 = server
        .sql()
        .await
        .query_one(
            "SELECT COUNT(*) FROM price_versions a JOIN price_versions b ON a.tenant_id = b.tenant_id AND a.sku = b.sku AND a.version < b.version \
             WHERE tstzrange(a.effective_from, a.effective_to) && tstzrange(b.effective_from, b.effective_to)",
            &[],
        )
        .await
        .expect("overlaps")
        .get(0);
    assert_eq!(overlaps, 0);
}

#[tokio::test]
async fn usage_is_rated_at_the_version_in_force_when_it_happened() {
    let server = TestServer::start_at(T0).await;
    let mut client = pricing_client(&server).await;
    let sku = "openai/gpt-4o";
    let v1 = upsert(&mut client, sku, vec![up(InputTokens, 250, 1_000_000), up(OutputTokens, 1_000, 1_000_000)], None).await.expect("v1");
    assert_eq!((v1.version, v1.effective_from, v1.effective_to), (1, Some(timestamp(T0)), None));
    // A price change announced for the 10th, then a retirement on the 20th.
    let change = T0 + time::Duration::days(10);
    let v2 = upsert(&mut client, sku, vec![up(InputTokens, 500, 1_000_000), up(OutputTokens, 2_000, 1_000_000)], Some(change)).await.expect("v2");
    assert_eq!(v2.version, 2);

    let usage = || tokens(1_000_000, 500_000);
    assert_eq!(cost(&mut client, sku, usage(), None).await, (250 + 500, 1, false), "now: v1");
    assert_eq!(cost(&mut client, sku, usage(), Some(change - time::Duration::microseconds(1))).await, (750, 1, false));
    assert_eq!(cost(&mut client, sku, usage(), Some(change)).await, (500 + 1_000, 2, false), "from the change: v2");
    assert_eq!(refused(&mut client, sku, usage(), Some(T0 - time::Duration::seconds(1))).await, "PRICE_UNKNOWN", "before the first price");

    let retire = T0 + time::Duration::days(20);
    let retired = client.retire_price(pb::RetirePriceRequest { sku: sku.into(), at: Some(timestamp(retire)) }).await.expect("retire").into_inner();
    assert_eq!((retired.version, retired.effective_to), (2, Some(timestamp(retire))));
    assert_eq!(cost(&mut client, sku, usage(), Some(retire - time::Duration::microseconds(1))).await.1, 2);
    assert_eq!(refused(&mut client, sku, usage(), Some(retire)).await, "PRICE_UNKNOWN", "retired");
    // History is kept: usage before the change is still rated at v1.
    assert_eq!(cost(&mut client, sku, usage(), Some(T0 + time::Duration::days(1))).await.1, 1);

    // Repeating the latest price changes nothing; a price in the past or before a scheduled
    // version is refused.
    let again = upsert(&mut client, "voice/alloy", vec![up(AudioMs, 1, 1_000)], None).await.expect("voice");
    let repeat = upsert(&mut client, "voice/alloy", vec![up(AudioMs, 1, 1_000)], None).await.expect("repeat");
    assert_eq!((again.version, repeat.version), (1, 1));
    let past = upsert(&mut client, "voice/alloy", vec![up(AudioMs, 2, 1_000)], Some(T0 - time::Duration::seconds(1))).await.expect_err("past");
    assert_eq!(past.code(), Code::InvalidArgument);
    let before = upsert(&mut client, sku, vec![up(InputTokens, 1, 1)], Some(change - time::Duration::days(1))).await.expect_err("before v2");
    assert_eq!(before.code(), Code::FailedPrecondition);
    // Re-pricing the retired SKU from the 25th starts version 3 then.
    let v3 = upsert(&mut client, sku, vec![up(InputTokens, 1, 1_000)], Some(T0 + time::Duration::days(25))).await.expect("v3");
    assert_eq!(v3.version, 3);
    assert_eq!(refused(&mut client, sku, usage(), Some(T0 + time::Duration::days(22))).await, "PRICE_UNKNOWN", "the gap stays unpriced");
    assert_eq!(cost(&mut client, sku, tokens(1_000, 0), Some(T0 + time::Duration::days(25))).await, (1, 3, false));

    // Listing: every version, paginated, and only those still current.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page =
            client.list_prices(pb::ListPricesRequest { page_size: 2, page_token: token, ..Default::default() }).await.expect("list").into_inner();
        assert!(page.prices.len() <= 2);
        all.extend(page.prices.into_iter().map(|p| (p.sku, p.version, p.unit_prices.len())));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all, vec![(sku.to_owned(), 1, 2), (sku.to_owned(), 2, 2), (sku.to_owned(), 3, 1), ("voice/alloy".to_owned(), 1, 1)]);
    let current = client.list_prices(pb::ListPricesRequest { current_only: true, ..Default::default() }).await.expect("current").into_inner();
    let current: Vec<(String, i64)> = current.prices.into_iter().map(|p| (p.sku, p.version)).collect();
    assert_eq!(current, vec![(sku.to_owned(), 1), (sku.to_owned(), 2), (sku.to_owned(), 3), ("voice/alloy".to_owned(), 1)]);
    server.clock.set(T0 + time::Duration::days(21));
    let current = client.list_prices(pb::ListPricesRequest { current_only: true, sku: sku.into(), ..Default::default() }).await.expect("current");
    assert_eq!(current.into_inner().prices.iter().map(|p| p.version).collect::<Vec<_>>(), vec![3], "v1 and v2 have ended");
    let err = client.list_prices(pb::ListPricesRequest { page_size: 501, ..Default::default() }).await.expect_err("page size");
    assert_eq!(err.code(), Code::InvalidArgument);

    let rows: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM price_versions", &[]).await.expect("count").get(0);
    assert_eq!(rows, 4, "the repeat wrote nothing");
    assert_versions_never_overlap(&server).await;
}

#[tokio::test]
async fn rating_rounds_up_once_and_refuses_overflow() {
    let server = TestServer::start_at(T0).await;
    let mut client = pricing_client(&server).await;
    upsert(&mut client, "m", vec![up(InputTokens, 1, 1_000), up(OutputTokens, 1, 1_000), up(Requests, 1_000_000_000, 1)], None).await.expect("price");
    let cases = [
        (tokens(0, 0), 0),
        (tokens(1, 0), 1),
        (tokens(1_000, 0), 1),
        (tokens(1_001, 0), 2),
        // 0.5 + 0.5: the sum is rounded, not each dimension.
        (tokens(500, 500), 1),
        (tokens(1_000_000_000_000_000, 0), 1_000_000_000_000),
    ];
    for (quantities, expected) in cases {
        assert_eq!(cost(&mut client, "m", quantities, None).await.0, expected, "{quantities:?}");
    }
    // 10^15 requests × 10^9 credits: far beyond 10^15 credits, refused rather than wrapped.
    let huge = pb::UsageQuantities { requests: 1_000_000_000_000_000, ..Default::default() };
    let err = estimate(&mut client, "m", huge, None).await.expect_err("overflow");
    assert_eq!((err.code(), reason(&err)), (Code::InvalidArgument, "INVALID_ARGUMENT".to_owned()));
    let negative = estimate(&mut client, "m", tokens(-1, 0), None).await.expect_err("negative");
    assert_eq!(field_violation(&negative), "quantities.input_tokens");
    let missing = client.estimate(pb::EstimateRequest { sku: "m".into(), quantities: None, at: None }).await.expect_err("missing");
    assert_eq!(field_violation(&missing), "quantities");
    // A used dimension without a unit price is unknown, not free.
    assert_eq!(refused(&mut client, "m", pb::UsageQuantities { audio_ms: 1, ..Default::default() }, None).await, "PRICE_UNKNOWN");
}

fn field_violation(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone())).unwrap_or_default()
}

#[tokio::test]
async fn unknown_skus_follow_the_tenant_policy_and_free_suffixes_mean_nothing() {
    let server = TestServer::start_at(T0).await;
    let mut client = pricing_client(&server).await;
    let usage = || tokens(10_000, 10_000);

    // No policy: nothing unpriced is rated.
    let initial = client.get_pricing_policy(pb::GetPricingPolicyRequest {}).await.expect("policy").into_inner();
    assert_eq!((initial.version, initial.strict, initial.default_unit_prices.len()), (0, false, 0));
    assert_eq!(refused(&mut client, "mistral/small-3", usage(), None).await, "PRICE_UNKNOWN");

    let policy = pb::PricingPolicy {
        high_value_sku_patterns: vec!["openai/gpt-4*".into(), "anthropic/claude-*".into()],
        default_unit_prices: vec![up(InputTokens, 1, 1_000), up(OutputTokens, 2, 1_000)],
        ..Default::default()
    };
    let stored = set_policy(&mut client, policy.clone()).await;
    assert_eq!((stored.version, stored.high_value_sku_patterns.len()), (1, 2));
    let read = client.get_pricing_policy(pb::GetPricingPolicyRequest {}).await.expect("policy").into_inner();
    assert_eq!((read.version, read.default_unit_prices.len(), read.high_value_sku_patterns), (1, 2, policy.high_value_sku_patterns.clone()));

    upsert(&mut client, "openai/gpt-4o", vec![up(InputTokens, 5, 1_000), up(OutputTokens, 15, 1_000)], None).await.expect("gpt-4o");
    assert_eq!(cost(&mut client, "openai/gpt-4o", usage(), None).await, (200, 1, false));
    // A new cheap model: the default price, flagged.
    assert_eq!(cost(&mut client, "mistral/small-3", usage(), None).await, (30, 0, true));
    // High-value and unpriced: refused, whatever the case or suffix.
    assert_eq!(refused(&mut client, "openai/gpt-4.1", usage(), None).await, "PRICE_UNKNOWN");
    assert_eq!(refused(&mut client, "OpenAI/GPT-4o-mini", usage(), None).await, "PRICE_UNKNOWN");
    assert_eq!(refused(&mut client, "openai/gpt-4o:free", usage(), None).await, "PRICE_UNKNOWN", "a :free suffix is not free");
    assert_eq!(refused(&mut client, "anthropic/claude-opus-4", usage(), None).await, "PRICE_UNKNOWN");
    // A cheap SKU with a :free suffix pays the default price, until that exact SKU is priced at zero.
    assert_eq!(cost(&mut client, "mistral/small-3:free", usage(), None).await, (30, 0, true));
    upsert(&mut client, "mistral/small-3:free", vec![up(InputTokens, 0, 1), up(OutputTokens, 0, 1)], None).await.expect("free");
    assert_eq!(cost(&mut client, "mistral/small-3:free", usage(), None).await, (0, 1, false));
    assert_eq!(cost(&mut client, "mistral/small-3", usage(), None).await, (30, 0, true), "the plain SKU is not made free");

    // Strict: nothing unpriced, even cheap.
    let strict = set_policy(&mut client, pb::PricingPolicy { strict: true, ..policy }).await;
    assert_eq!(strict.version, 2);
    assert_eq!(refused(&mut client, "mistral/small-3", usage(), None).await, "PRICE_UNKNOWN");
    assert_eq!(cost(&mut client, "openai/gpt-4o", usage(), None).await.0, 200, "priced SKUs are unaffected");
}

#[tokio::test]
async fn sanity_bounds_refuse_mistyped_prices_when_written_and_when_rated() {
    let server = TestServer::start_at(T0).await;
    let mut client = pricing_client(&server).await;
    // 1 to 100 credits per 1,000 input tokens.
    set_policy(&mut client, pb::PricingPolicy { bounds: vec![bounds(InputTokens, Some(1), Some(100))], ..Default::default() }).await;

    // A 1000× typo either way is refused when written, naming the dimension; nothing is stored.
    for typo in [up(InputTokens, 5, 1), up(InputTokens, 5, 1_000_000)] {
        let err = upsert(&mut client, "vendor/model", vec![typo], None).await.expect_err("out of bounds");
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "PRICE_OUT_OF_BOUNDS".to_owned()), "{typo:?}");
        assert_eq!(field_violation(&err), "unit_prices[input_tokens]");
    }
    let stored: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM price_versions", &[]).await.expect("count").get(0);
    assert_eq!(stored, 0);
    upsert(&mut client, "vendor/model", vec![up(InputTokens, 5, 1_000), up(Requests, 1_000, 1)], None).await.expect("in bounds");
    upsert(&mut client, "vendor/free", vec![up(InputTokens, 0, 1)], None).await.expect("zero is a deliberate free");
    assert_eq!(cost(&mut client, "vendor/model", tokens(2_000, 0), None).await.0, 10);

    // The bounds tighten after the price was written: rating refuses it as an anomaly.
    set_policy(&mut client, pb::PricingPolicy { bounds: vec![bounds(InputTokens, Some(1), Some(2))], ..Default::default() }).await;
    assert_eq!(refused(&mut client, "vendor/model", tokens(2_000, 0), None).await, "PRICE_ANOMALY");
    // Only the dimensions used are judged.
    assert_eq!(cost(&mut client, "vendor/model", pb::UsageQuantities { requests: 2, ..Default::default() }, None).await.0, 2_000);

    // A default price outside the policy's own bounds is refused too.
    let err = client
        .update_pricing_policy(pb::UpdatePricingPolicyRequest {
            policy: Some(pb::PricingPolicy {
                default_unit_prices: vec![up(InputTokens, 3, 1)],
                bounds: vec![bounds(InputTokens, None, Some(100))],
                ..Default::default()
            }),
        })
        .await
        .expect_err("default out of bounds");
    assert_eq!(reason(&err), "PRICE_OUT_OF_BOUNDS");
    assert_eq!(client.get_pricing_policy(pb::GetPricingPolicyRequest {}).await.expect("policy").into_inner().version, 2, "nothing written");
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_price_book() {
    let server = TestServer::start_at(T0).await;
    let mut mine = pricing_client(&server).await;
    let other = allot_server::seed::tenant(&server.pool, "other").await.expect("tenant");
    let mut theirs = client(server.channel().await, &other.api_key);
    upsert(&mut mine, "vendor/model", vec![up(Requests, 7, 1)], None).await.expect("price");
    set_policy(&mut mine, pb::PricingPolicy { default_unit_prices: vec![up(Requests, 1, 1)], ..Default::default() }).await;

    assert_eq!(refused(&mut theirs, "vendor/model", pb::UsageQuantities { requests: 1, ..Default::default() }, None).await, "PRICE_UNKNOWN");
    let listed = theirs.list_prices(pb::ListPricesRequest::default()).await.expect("list").into_inner();
    assert!(listed.prices.is_empty());
    let err = theirs.retire_price(pb::RetirePriceRequest { sku: "vendor/model".into(), at: None }).await.expect_err("not theirs");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(theirs.get_pricing_policy(pb::GetPricingPolicyRequest {}).await.expect("policy").into_inner().version, 0);
    assert_eq!(cost(&mut mine, "vendor/model", pb::UsageQuantities { requests: 1, ..Default::default() }, None).await, (7, 1, false));

    let mut anonymous = PricingClient::new(server.channel().await);
    let err = anonymous.list_prices(pb::ListPricesRequest::default()).await.expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);
}

fn q(input_tokens: i64) -> Quantities {
    Quantities { input_tokens, ..Quantities::default() }
}

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).expect("sku")
}

fn prices(credits: i64, per_units: i64) -> allot_domain::pricing::UnitPrices {
    [(allot_domain::pricing::Dimension::InputTokens, allot_domain::pricing::UnitPrice { credits, per_units })].into_iter().collect()
}

#[tokio::test]
async fn the_rate_seam_returns_cost_version_and_distinguishable_refusals() {
    let server = TestServer::start_at(T0).await;
    let ctx = Ctx::new(server.pool.clone(), server.clock.clone());
    let pricing = Pricing::new(ctx.clone());
    let tenant = server.tenant.tenant;
    pricing
        .upsert_price(
            &allot_server::auth::Principal::system(tenant, "test"),
            UpsertPrice { sku: sku("vendor/model"), unit_prices: prices(3, 1_000), effective_from: None },
        )
        .await
        .expect("price");
    let mut policy = allot_domain::pricing::Policy { default_price: prices(1, 1_000), ..Default::default() };
    policy.high_value_patterns.push(allot_domain::pricing::SkuPattern::parse("vendor/big*").expect("pattern"));
    pricing.update_policy(&allot_server::auth::Principal::system(tenant, "test"), policy.clone()).await.expect("policy");

    let rated = pricing.rate(tenant, &sku("vendor/model"), &q(1_001), T0).await.expect("rated");
    assert_eq!((rated.cost_credits, rated.price_version, rated.defaulted, rated.at), (4, 1, false, T0));
    assert_eq!(rated.sku.as_str(), "vendor/model");
    let json = serde_json::to_string(&rated).expect("serialisable for idempotent replay");
    assert_eq!(serde_json::from_str::<pricing::Rated>(&json).expect("round trip"), rated);

    let defaulted = pricing.rate(tenant, &sku("vendor/small"), &q(1_000), T0).await.expect("defaulted");
    assert_eq!((defaulted.cost_credits, defaulted.price_version, defaulted.defaulted), (1, 0, true));
    assert!(matches!(pricing.rate(tenant, &sku("vendor/big-1"), &q(1), T0).await, Err(Error::PriceUnknown { .. })));

    policy.bounds.set(
        allot_domain::pricing::Dimension::InputTokens,
        Some(allot_domain::pricing::CostBounds { min_cost_credits_per_1k_units: None, max_cost_credits_per_1k_units: Some(2) }),
    );
    policy.default_price = Default::default();
    pricing.update_policy(&allot_server::auth::Principal::system(tenant, "test"), policy).await.expect("tighter");
    assert!(matches!(pricing.rate(tenant, &sku("vendor/model"), &q(1), T0).await, Err(Error::PriceAnomaly { .. })));
    assert!(matches!(pricing.rate(tenant, &sku("vendor/model"), &q(-1), T0).await, Err(Error::InvalidArgument { .. })));

    // Cache hits take no connection.
    pricing.update_policy(&allot_server::auth::Principal::system(tenant, "test"), Default::default()).await.expect("relaxed");
    pricing.rate(tenant, &sku("vendor/model"), &q(1), T0).await.expect("warm");
    let before = ctx.db_checkouts.load(Ordering::Relaxed);
    for _ in 0..10 {
        pricing.rate(tenant, &sku("vendor/model"), &q(1), T0).await.expect("cached");
    }
    assert_eq!(ctx.db_checkouts.load(Ordering::Relaxed), before, "served from the cache");
    // A rating at an instant older than the cached versions still finds the version then.
    for i in 0..20 {
        let from = T0 + time::Duration::days(i + 1);
        server.clock.set(from);
        pricing
            .upsert_price(
                &allot_server::auth::Principal::system(tenant, "test"),
                UpsertPrice { sku: sku("vendor/model"), unit_prices: prices(4 + i, 1_000), effective_from: None },
            )
            .await
            .expect("version");
    }
    assert_eq!(pricing.rate(tenant, &sku("vendor/model"), &q(1_000), T0).await.expect("old").price_version, 1);
    assert_eq!(pricing.rate(tenant, &sku("vendor/model"), &q(1_000), T0 + time::Duration::days(1)).await.expect("v2").cost_credits, 4);
    assert_eq!(pricing.rate(tenant, &sku("vendor/model"), &q(1_000), T0 + time::Duration::days(30)).await.expect("latest").price_version, 21);
}

/// Polls `probe` until it returns true or `bound` passes.
async fn eventually(bound: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_written_on_one_server_is_rated_on_another_within_the_bound() {
    let a = TestServer::start_at(T0).await;
    // A second server process on the same database.
    let config = Config::with_database(a.database_url.clone(), Some(stack().redis.url()));
    let app = App::connect(config, Arc::new(ManualClock::new(T0))).await.expect("connect");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let b_addr = listener.local_addr().expect("addr");
    let (stop_b, stopped) = tokio::sync::oneshot::channel::<()>();
    let b_task = tokio::spawn(serve(app, listener, async {
        let _ = stopped.await;
    }));
    let b_channel = tonic::transport::Endpoint::from_shared(format!("http://{b_addr}")).expect("endpoint").connect_lazy();
    let mut on_a = pricing_client(&a).await;
    let mut on_b = client(b_channel, &a.tenant.api_key);
    let at = Some(T0);

    upsert(&mut on_a, "vendor/model", vec![up(Requests, 10, 1)], None).await.expect("v1");
    let mut warm = false;
    for _ in 0..100 {
        if estimate(&mut on_b, "vendor/model", pb::UsageQuantities { requests: 1, ..Default::default() }, at).await.is_ok() {
            warm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warm, "server b answers");
    assert_eq!(
        cost(&mut on_b, "vendor/model", pb::UsageQuantities { requests: 1, ..Default::default() }, at).await,
        (10, 1, false),
        "b has cached v1"
    );

    // The documented bound: the cache TTL (a notification usually arrives within milliseconds).
    let bound = PRICE_CACHE_TTL_DEFAULT + Duration::from_secs(2);
    // An immediate change of price on a.
    upsert(&mut on_a, "vendor/model", vec![up(Requests, 20, 1)], None).await.expect("v2");
    let seen = eventually(bound, async || {
        cost(&mut on_b, "vendor/model", pb::UsageQuantities { requests: 1, ..Default::default() }, at).await == (20, 2, false)
    })
    .await;
    assert!(seen, "b rates at v2 within {bound:?}");

    // A retirement on a.
    on_a.retire_price(pb::RetirePriceRequest { sku: "vendor/model".into(), at: None }).await.expect("retire");
    let seen = eventually(bound, async || {
        estimate(&mut on_b, "vendor/model", pb::UsageQuantities { requests: 1, ..Default::default() }, at)
            .await
            .is_err_and(|s| reason(&s) == "PRICE_UNKNOWN")
    })
    .await;
    assert!(seen, "b refuses the retired SKU within {bound:?}");

    // A policy change on a.
    assert_eq!(refused(&mut on_b, "vendor/new", pb::UsageQuantities { requests: 1, ..Default::default() }, at).await, "PRICE_UNKNOWN");
    set_policy(&mut on_a, pb::PricingPolicy { default_unit_prices: vec![up(Requests, 3, 1)], ..Default::default() }).await;
    let seen = eventually(bound, async || {
        estimate(&mut on_b, "vendor/new", pb::UsageQuantities { requests: 1, ..Default::default() }, at)
            .await
            .is_ok_and(|e| e.defaulted && e.cost_credits == 3)
    })
    .await;
    assert!(seen, "b uses the new default price within {bound:?}");

    let _ = stop_b.send(());
    b_task.await.expect("task").expect("serve");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_invalidate_long_lived_caches_and_survive_a_lost_connection() {
    let server = TestServer::start_at(T0).await;
    let tenant = server.tenant.tenant;
    let hour = Duration::from_secs(3_600);
    // Three replicas' pricing services on one database; a cache TTL of an hour, so only a
    // notification can make a change visible quickly. `deaf` does not listen.
    let writer = Pricing::new(Ctx::new(server.pool.clone(), server.clock.clone()));
    let listening = Pricing::with_cache_ttl(Ctx::new(server.pool.clone(), server.clock.clone()), hour);
    let deaf = Pricing::with_cache_ttl(Ctx::new(server.pool.clone(), server.clock.clone()), hour);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let listener = tokio::spawn(pricing::listen(listening.clone(), server.database_url.clone(), stopped));

    let model = sku("vendor/model");
    writer
        .upsert_price(
            &allot_server::auth::Principal::system(tenant, "test"),
            UpsertPrice { sku: model.clone(), unit_prices: prices(1, 1), effective_from: None },
        )
        .await
        .expect("v1");
    // Let the listener connect (it clears the cache when it does), then warm both caches. The
    // test server's own listener is the other one on this database.
    let connected = eventually(Duration::from_secs(10), async || {
        let n: i64 = server
            .sql()
            .await
            .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'allot-price-listener'", &[])
            .await
            .expect("activity")
            .get(0);
        n >= 2
    })
    .await;
    assert!(connected, "the listener connects");
    for replica in [&listening, &deaf] {
        assert_eq!(replica.rate(tenant, &model, &q(5), T0).await.expect("v1").cost_credits, 5);
    }

    let rated_at = |replica: Pricing, version: i64| {
        let model = model.clone();
        async move { replica.rate(tenant, &model, &q(5), T0).await.is_ok_and(|r| r.price_version == version) }
    };
    writer
        .upsert_price(
            &allot_server::auth::Principal::system(tenant, "test"),
            UpsertPrice { sku: model.clone(), unit_prices: prices(2, 1), effective_from: None },
        )
        .await
        .expect("v2");
    assert!(eventually(Duration::from_secs(5), async || rated_at(listening.clone(), 2).await).await, "the listening replica forgets v1");
    assert!(rated_at(deaf.clone(), 1).await, "without notifications the cache would still serve v1");

    // The listener's connection is killed (a failover, say): it reconnects and notifications
    // work again.
    server
        .sql()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'allot-price-listener'",
            &[],
        )
        .await
        .expect("terminate");
    writer
        .upsert_price(
            &allot_server::auth::Principal::system(tenant, "test"),
            UpsertPrice { sku: model.clone(), unit_prices: prices(3, 1), effective_from: None },
        )
        .await
        .expect("v3");
    assert!(eventually(Duration::from_secs(15), async || rated_at(listening.clone(), 3).await).await, "after a reconnect");
    writer
        .upsert_price(
            &allot_server::auth::Principal::system(tenant, "test"),
            UpsertPrice { sku: model.clone(), unit_prices: prices(4, 1), effective_from: None },
        )
        .await
        .expect("v4");
    assert!(eventually(Duration::from_secs(5), async || rated_at(listening.clone(), 4).await).await, "notifications flow again");

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), listener).await.expect("the listener stops on shutdown").expect("task");
}
