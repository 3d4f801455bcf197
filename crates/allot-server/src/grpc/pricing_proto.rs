//! `allot.v1.Pricing` messages ↔ pricing commands and records. Validation of caller input happens
//! here, once, and every failure names the offending field. [`sku`] and [`quantities`] are also
//! for other requests that carry usage of a SKU (e.g. a rated `Debit`).

use allot_domain::limits::MAX_AMOUNT_CREDITS;
use allot_domain::pricing::{
    validate_unit_prices, CostBounds, Dimension, PerDimension, Policy, Quantities, Sku, SkuPattern, UnitPrice, UnitPrices, PATTERNS_MAX,
    PER_UNITS_MAX, QUANTITY_MAX, UNIT_PRICE_CREDITS_MAX,
};
use allot_proto::v1 as pb;
use time::OffsetDateTime;

use super::from_proto::{page_size, timestamp};
use crate::error::Error;
use crate::repo::prices::{PolicyRecord, PriceRecord};
use crate::service::pricing::{ListPrices, Rated, UpsertPrice};

/// A SKU: 1 to 128 bytes of ASCII letters, digits and `. _ - : @ /`.
pub fn sku(field: &str, raw: &str) -> Result<Sku, Error> {
    Sku::parse(raw).map_err(|e| Error::invalid(field, e))
}

/// Required usage quantities, each between 0 and 10^15; `field` names the message
/// (e.g. `quantities`), and an error names the quantity (`quantities.audio_ms`).
pub fn quantities(field: &str, raw: Option<&pb::UsageQuantities>) -> Result<Quantities, Error> {
    let raw = raw.ok_or_else(|| Error::invalid(field, "is required"))?;
    let parsed = Quantities {
        input_tokens: raw.input_tokens,
        output_tokens: raw.output_tokens,
        cached_tokens: raw.cached_tokens,
        audio_ms: raw.audio_ms,
        characters: raw.characters,
        requests: raw.requests,
    };
    for d in Dimension::ALL {
        if !(0..=QUANTITY_MAX).contains(&parsed.get(d)) {
            return Err(Error::invalid(format!("{field}.{d}"), format!("must be between 0 and {QUANTITY_MAX}")));
        }
    }
    Ok(parsed)
}

pub fn quantities_to_proto(q: &Quantities) -> pb::UsageQuantities {
    pb::UsageQuantities {
        input_tokens: q.input_tokens,
        output_tokens: q.output_tokens,
        cached_tokens: q.cached_tokens,
        audio_ms: q.audio_ms,
        characters: q.characters,
        requests: q.requests,
    }
}

fn dimension(field: &str, raw: i32) -> Result<Dimension, Error> {
    match pb::UsageDimension::try_from(raw) {
        Ok(pb::UsageDimension::InputTokens) => Ok(Dimension::InputTokens),
        Ok(pb::UsageDimension::OutputTokens) => Ok(Dimension::OutputTokens),
        Ok(pb::UsageDimension::CachedTokens) => Ok(Dimension::CachedTokens),
        Ok(pb::UsageDimension::AudioMs) => Ok(Dimension::AudioMs),
        Ok(pb::UsageDimension::Characters) => Ok(Dimension::Characters),
        Ok(pb::UsageDimension::Requests) => Ok(Dimension::Requests),
        Ok(pb::UsageDimension::Unspecified) | Err(_) => Err(Error::invalid(field, "must be a known dimension")),
    }
}

fn dimension_to_proto(d: Dimension) -> pb::UsageDimension {
    match d {
        Dimension::InputTokens => pb::UsageDimension::InputTokens,
        Dimension::OutputTokens => pb::UsageDimension::OutputTokens,
        Dimension::CachedTokens => pb::UsageDimension::CachedTokens,
        Dimension::AudioMs => pb::UsageDimension::AudioMs,
        Dimension::Characters => pb::UsageDimension::Characters,
        Dimension::Requests => pb::UsageDimension::Requests,
    }
}

/// At most one unit price per dimension, each in range, with a common multiple of the
/// `per_units` small enough for exact rating.
fn unit_prices(field: &str, raw: &[pb::UnitPrice], allow_empty: bool) -> Result<UnitPrices, Error> {
    if raw.len() > Dimension::ALL.len() {
        return Err(Error::invalid(field, "at most one unit price per dimension"));
    }
    let mut parsed = UnitPrices::default();
    for (i, price) in raw.iter().enumerate() {
        let d = dimension(&format!("{field}[{i}].dimension"), price.dimension)?;
        if parsed.get(d).is_some() {
            return Err(Error::invalid(format!("{field}[{i}].dimension"), "listed twice"));
        }
        if !(0..=UNIT_PRICE_CREDITS_MAX).contains(&price.credits) {
            return Err(Error::invalid(format!("{field}[{i}].credits"), format!("must be between 0 and {UNIT_PRICE_CREDITS_MAX}")));
        }
        if !(1..=PER_UNITS_MAX).contains(&price.per_units) {
            return Err(Error::invalid(format!("{field}[{i}].per_units"), format!("must be between 1 and {PER_UNITS_MAX}")));
        }
        parsed.set(d, Some(UnitPrice { credits: price.credits, per_units: price.per_units }));
    }
    validate_unit_prices(&parsed, allow_empty).map_err(|e| Error::invalid(field, e))?;
    Ok(parsed)
}

fn unit_prices_to_proto(prices: &UnitPrices) -> Vec<pb::UnitPrice> {
    prices.iter().map(|(d, p)| pb::UnitPrice { dimension: dimension_to_proto(d) as i32, credits: p.credits, per_units: p.per_units }).collect()
}

fn optional_timestamp(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<OffsetDateTime>, Error> {
    ts.map(|t| timestamp(field, t)).transpose()
}

pub fn upsert_price(req: pb::UpsertPriceRequest) -> Result<UpsertPrice, Error> {
    Ok(UpsertPrice {
        sku: sku("sku", &req.sku)?,
        unit_prices: unit_prices("unit_prices", &req.unit_prices, false)?,
        effective_from: optional_timestamp("effective_from", req.effective_from.as_ref())?,
    })
}

pub fn list_prices(req: pb::ListPricesRequest) -> Result<ListPrices, Error> {
    let after = if req.page_token.is_empty() {
        None
    } else {
        let bad = || Error::invalid("page_token", "not a token this service issued");
        let (raw_sku, raw_version) = req.page_token.rsplit_once(' ').ok_or_else(bad)?;
        let version = raw_version.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(bad)?;
        Some((Sku::parse(raw_sku).map_err(|_| bad())?, version))
    };
    Ok(ListPrices {
        sku: if req.sku.is_empty() { None } else { Some(sku("sku", &req.sku)?) },
        current_only: req.current_only,
        page_size: page_size(req.page_size)?,
        after,
    })
}

pub fn retire_price(req: pb::RetirePriceRequest) -> Result<(Sku, Option<OffsetDateTime>), Error> {
    Ok((sku("sku", &req.sku)?, optional_timestamp("at", req.at.as_ref())?))
}

pub fn estimate(req: pb::EstimateRequest) -> Result<(Sku, Quantities, Option<OffsetDateTime>), Error> {
    Ok((sku("sku", &req.sku)?, quantities("quantities", req.quantities.as_ref())?, optional_timestamp("at", req.at.as_ref())?))
}

pub fn policy(req: pb::UpdatePricingPolicyRequest) -> Result<Policy, Error> {
    let policy = req.policy.ok_or_else(|| Error::invalid("policy", "is required"))?;
    if policy.high_value_sku_patterns.len() > PATTERNS_MAX {
        return Err(Error::invalid("policy.high_value_sku_patterns", format!("at most {PATTERNS_MAX}")));
    }
    let mut patterns: Vec<SkuPattern> = Vec::with_capacity(policy.high_value_sku_patterns.len());
    for (i, raw) in policy.high_value_sku_patterns.iter().enumerate() {
        let pattern = SkuPattern::parse(raw).map_err(|e| Error::invalid(format!("policy.high_value_sku_patterns[{i}]"), e))?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    if policy.bounds.len() > Dimension::ALL.len() {
        return Err(Error::invalid("policy.bounds", "at most one per dimension"));
    }
    let mut bounds: PerDimension<CostBounds> = PerDimension::default();
    for (i, b) in policy.bounds.iter().enumerate() {
        let d = dimension(&format!("policy.bounds[{i}].dimension"), b.dimension)?;
        if bounds.get(d).is_some() {
            return Err(Error::invalid(format!("policy.bounds[{i}].dimension"), "listed twice"));
        }
        let bounded = |name: &str, v: Option<i64>| match v {
            Some(v) if !(0..=MAX_AMOUNT_CREDITS).contains(&v) => {
                Err(Error::invalid(format!("policy.bounds[{i}].{name}"), format!("must be between 0 and {MAX_AMOUNT_CREDITS}")))
            }
            other => Ok(other),
        };
        let min = bounded("min_cost_credits_per_1k_units", b.min_cost_credits_per_1k_units)?;
        let max = bounded("max_cost_credits_per_1k_units", b.max_cost_credits_per_1k_units)?;
        if let (Some(min), Some(max)) = (min, max) {
            if min > max {
                return Err(Error::invalid(format!("policy.bounds[{i}].min_cost_credits_per_1k_units"), "must not exceed the maximum"));
            }
        }
        bounds.set(d, Some(CostBounds { min_cost_credits_per_1k_units: min, max_cost_credits_per_1k_units: max }));
    }
    Ok(Policy {
        strict: policy.strict,
        high_value_patterns: patterns,
        default_price: unit_prices("policy.default_unit_prices", &policy.default_unit_prices, true)?,
        bounds,
    })
}

pub fn price(record: PriceRecord) -> pb::Price {
    let v = record.version;
    pb::Price {
        sku: record.sku.as_str().to_owned(),
        version: v.version,
        unit_prices: unit_prices_to_proto(&v.unit_prices),
        effective_from: Some(super::to_proto::timestamp(v.effective_from)),
        effective_to: v.effective_to.map(super::to_proto::timestamp),
        created_at: Some(super::to_proto::timestamp(record.created_at)),
    }
}

pub fn estimate_response(rated: Rated) -> pb::EstimateResponse {
    pb::EstimateResponse {
        sku: rated.sku.as_str().to_owned(),
        cost_credits: rated.cost_credits,
        price_version: rated.price_version,
        defaulted: rated.defaulted,
        at: Some(super::to_proto::timestamp(rated.at)),
    }
}

pub fn policy_to_proto(record: PolicyRecord) -> pb::PricingPolicy {
    let p = record.policy;
    pb::PricingPolicy {
        strict: p.strict,
        high_value_sku_patterns: p.high_value_patterns.iter().map(|x| x.as_str().to_owned()).collect(),
        default_unit_prices: unit_prices_to_proto(&p.default_price),
        bounds: p
            .bounds
            .iter()
            .map(|(d, b)| pb::CostBounds {
                dimension: dimension_to_proto(d) as i32,
                min_cost_credits_per_1k_units: b.min_cost_credits_per_1k_units,
                max_cost_credits_per_1k_units: b.max_cost_credits_per_1k_units,
            })
            .collect(),
        version: record.version,
        updated_at: record.updated_at.map(super::to_proto::timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn up(d: pb::UsageDimension, credits: i64, per_units: i64) -> pb::UnitPrice {
        pb::UnitPrice { dimension: d as i32, credits, per_units }
    }

    #[test]
    fn bad_prices_name_their_field() {
        let good = pb::UpsertPriceRequest {
            sku: "openai/gpt-4o".into(),
            unit_prices: vec![up(pb::UsageDimension::InputTokens, 250, 1_000_000)],
            effective_from: None,
        };
        assert!(upsert_price(good.clone()).is_ok());
        let with = |prices: Vec<pb::UnitPrice>| pb::UpsertPriceRequest { unit_prices: prices, ..good.clone() };
        let cases = [
            (pb::UpsertPriceRequest { sku: String::new(), ..good.clone() }, "sku"),
            (pb::UpsertPriceRequest { sku: "gpt 4".into(), ..good.clone() }, "sku"),
            (pb::UpsertPriceRequest { sku: "x".repeat(129), ..good.clone() }, "sku"),
            (with(vec![]), "unit_prices"),
            (with(vec![up(pb::UsageDimension::Unspecified, 1, 1)]), "unit_prices[0].dimension"),
            (with(vec![pb::UnitPrice { dimension: 99, credits: 1, per_units: 1 }]), "unit_prices[0].dimension"),
            (with(vec![up(pb::UsageDimension::Requests, 1, 1), up(pb::UsageDimension::Requests, 2, 1)]), "unit_prices[1].dimension"),
            (with(vec![up(pb::UsageDimension::Requests, -1, 1)]), "unit_prices[0].credits"),
            (with(vec![up(pb::UsageDimension::Requests, 1, 0)]), "unit_prices[0].per_units"),
            (with(vec![up(pb::UsageDimension::Requests, 1, PER_UNITS_MAX + 1)]), "unit_prices[0].per_units"),
            (
                with(vec![up(pb::UsageDimension::InputTokens, 1, 999_999_999_989), up(pb::UsageDimension::OutputTokens, 1, 999_999_999_959)]),
                "unit_prices",
            ),
            (with((0..7).map(|_| up(pb::UsageDimension::Requests, 1, 1)).collect()), "unit_prices"),
            (pb::UpsertPriceRequest { effective_from: Some(prost_types::Timestamp { seconds: -1, nanos: 0 }), ..good.clone() }, "effective_from"),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(upsert_price(req).expect_err("invalid")), field);
        }
    }

    #[test]
    fn quantities_are_required_and_bounded() {
        let q = |audio_ms| pb::UsageQuantities { audio_ms, requests: 1, ..Default::default() };
        let parsed = quantities("quantities", Some(&q(5))).expect("valid");
        assert_eq!((parsed.audio_ms, parsed.requests, parsed.input_tokens), (5, 1, 0));
        assert_eq!(quantities("quantities", Some(&q(QUANTITY_MAX))).expect("valid").audio_ms, QUANTITY_MAX);
        assert_eq!(field_of(quantities("quantities", None).expect_err("missing")), "quantities");
        assert_eq!(field_of(quantities("quantities", Some(&q(-1))).expect_err("negative")), "quantities.audio_ms");
        assert_eq!(field_of(quantities("usage.quantities", Some(&q(QUANTITY_MAX + 1))).expect_err("huge")), "usage.quantities.audio_ms");
    }

    #[test]
    fn bad_policies_name_their_field() {
        let bounds = |min, max| pb::CostBounds {
            dimension: pb::UsageDimension::InputTokens as i32,
            min_cost_credits_per_1k_units: min,
            max_cost_credits_per_1k_units: max,
        };
        let good = pb::PricingPolicy {
            strict: false,
            high_value_sku_patterns: vec!["openai/gpt-4*".into()],
            default_unit_prices: vec![up(pb::UsageDimension::InputTokens, 1, 1_000)],
            bounds: vec![bounds(Some(1), Some(100))],
            ..Default::default()
        };
        let req = |p: pb::PricingPolicy| pb::UpdatePricingPolicyRequest { policy: Some(p) };
        let parsed = policy(req(good.clone())).expect("valid");
        assert_eq!(parsed.high_value_patterns.len(), 1);
        assert!(policy(req(pb::PricingPolicy { default_unit_prices: vec![], ..good.clone() })).expect("no default").default_price.is_empty());
        let cases = [
            (pb::UpdatePricingPolicyRequest { policy: None }, "policy"),
            (
                req(pb::PricingPolicy { high_value_sku_patterns: vec!["ok*".into(), "not ok".into()], ..good.clone() }),
                "policy.high_value_sku_patterns[1]",
            ),
            (
                req(pb::PricingPolicy { high_value_sku_patterns: (0..=PATTERNS_MAX).map(|i| format!("p{i}")).collect(), ..good.clone() }),
                "policy.high_value_sku_patterns",
            ),
            (req(pb::PricingPolicy { bounds: vec![bounds(Some(-1), None)], ..good.clone() }), "policy.bounds[0].min_cost_credits_per_1k_units"),
            (req(pb::PricingPolicy { bounds: vec![bounds(Some(5), Some(4))], ..good.clone() }), "policy.bounds[0].min_cost_credits_per_1k_units"),
            (req(pb::PricingPolicy { bounds: vec![bounds(None, Some(1)), bounds(None, Some(2))], ..good.clone() }), "policy.bounds[1].dimension"),
            (
                req(pb::PricingPolicy { default_unit_prices: vec![up(pb::UsageDimension::AudioMs, 1, 0)], ..good.clone() }),
                "policy.default_unit_prices[0].per_units",
            ),
        ];
        for (r, field) in cases {
            assert_eq!(field_of(policy(r).expect_err("invalid")), field);
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        let token = crate::service::pricing::page_token(&Sku::parse("a/b:free").expect("sku"), 7);
        let parsed = list_prices(pb::ListPricesRequest { page_token: token, ..Default::default() }).expect("valid");
        assert_eq!(parsed.after.map(|(s, v)| (s.as_str().to_owned(), v)), Some(("a/b:free".to_owned(), 7)));
        for bad in ["x", "a/b 0", "a b c", " 3"] {
            let err = list_prices(pb::ListPricesRequest { page_token: bad.into(), ..Default::default() }).expect_err(bad);
            assert_eq!(field_of(err), "page_token");
        }
        let err = list_prices(pb::ListPricesRequest { page_size: 501, ..Default::default() }).expect_err("page size");
        assert_eq!(field_of(err), "page_size");
    }
}
