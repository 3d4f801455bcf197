//! Table tests and properties of rating: rounding, zero, huge quantities and overflow, versions
//! in force, the unknown-SKU policy, sanity bounds, `:free` suffixes and glob patterns.

use proptest::prelude::*;
use time::macros::datetime;
use time::OffsetDateTime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).expect("valid sku")
}

fn up(credits: i64, per_units: i64) -> UnitPrice {
    UnitPrice { credits, per_units }
}

fn prices(list: &[(Dimension, i64, i64)]) -> UnitPrices {
    list.iter().map(|&(d, c, p)| (d, up(c, p))).collect()
}

fn q(list: &[(Dimension, i64)]) -> Quantities {
    let mut quantities = Quantities::default();
    for &(d, n) in list {
        quantities.set(d, n);
    }
    quantities
}

fn version(n: i64, from: OffsetDateTime, to: Option<OffsetDateTime>, list: &[(Dimension, i64, i64)]) -> PriceVersion {
    PriceVersion { version: n, effective_from: from, effective_to: to, unit_prices: prices(list) }
}

fn pattern(raw: &str) -> SkuPattern {
    SkuPattern::parse(raw).expect("valid pattern")
}

use Dimension::*;

#[test]
fn cost_is_the_exact_sum_rounded_up_once() {
    let cases: Vec<(&str, UnitPrices, Quantities, Result<i64, Refusal>)> = vec![
        ("zero quantities cost nothing", prices(&[(InputTokens, 3, 1_000)]), q(&[]), Ok(0)),
        ("zero quantities of an unpriced dimension too", prices(&[(InputTokens, 3, 1_000)]), q(&[(AudioMs, 0)]), Ok(0)),
        ("exact", prices(&[(InputTokens, 3, 1_000)]), q(&[(InputTokens, 2_000)]), Ok(6)),
        ("one unit rounds up to a credit", prices(&[(InputTokens, 3, 1_000)]), q(&[(InputTokens, 1)]), Ok(1)),
        ("just above a whole credit", prices(&[(InputTokens, 1, 1_000)]), q(&[(InputTokens, 1_001)]), Ok(2)),
        (
            // 500/1000 + 500/1000 = 1 exactly: rounding each dimension would give 2.
            "fractions add before rounding",
            prices(&[(InputTokens, 1, 1_000), (OutputTokens, 1, 1_000)]),
            q(&[(InputTokens, 500), (OutputTokens, 500)]),
            Ok(1),
        ),
        (
            // 1/3 + 1/3 + 1/3 = 1 over different denominators.
            "different denominators add exactly",
            prices(&[(InputTokens, 1, 3), (OutputTokens, 2, 6), (CachedTokens, 3, 9)]),
            q(&[(InputTokens, 1), (OutputTokens, 1), (CachedTokens, 1)]),
            Ok(1),
        ),
        ("a free price", prices(&[(Requests, 0, 1)]), q(&[(Requests, 1_000_000)]), Ok(0)),
        ("per request", prices(&[(Requests, 5, 1)]), q(&[(Requests, 7)]), Ok(35)),
        (
            "every dimension",
            prices(&[
                (InputTokens, 250, 1_000_000),
                (OutputTokens, 1_000, 1_000_000),
                (CachedTokens, 125, 1_000_000),
                (AudioMs, 1, 1_000),
                (Characters, 15, 1_000_000),
                (Requests, 1, 1),
            ]),
            q(&[(InputTokens, 1_000_000), (OutputTokens, 2_000_000), (CachedTokens, 8_000), (AudioMs, 60_000), (Characters, 1), (Requests, 1)]),
            // 250 + 2000 + 1 + 60 + 15e-6 + 1 = 2312.000015 → 2313
            Ok(250 + 2_000 + 1 + 60 + 1 + 1),
        ),
        (
            "a dimension without a price is refused",
            prices(&[(InputTokens, 1, 1)]),
            q(&[(OutputTokens, 1)]),
            Err(Refusal::DimensionUnpriced(OutputTokens)),
        ),
        ("the largest cost allowed", prices(&[(InputTokens, 1, 1)]), q(&[(InputTokens, QUANTITY_MAX)]), Ok(MAX_AMOUNT_CREDITS)),
        (
            "one credit more is too large",
            prices(&[(InputTokens, 1, 1), (Requests, 1, 1)]),
            q(&[(InputTokens, QUANTITY_MAX), (Requests, 1)]),
            Err(Refusal::TooLarge),
        ),
        (
            // 10^15 × 10^15 = 10^30: fine in i128, far above the cap.
            "huge quantity times huge price",
            prices(&[(InputTokens, UNIT_PRICE_CREDITS_MAX, 1)]),
            q(&[(InputTokens, QUANTITY_MAX)]),
            Err(Refusal::TooLarge),
        ),
        (
            "huge quantity over a huge denominator",
            prices(&[(InputTokens, UNIT_PRICE_CREDITS_MAX, PER_UNITS_MAX)]),
            q(&[(InputTokens, 1_000_000_000_000)]),
            Ok(MAX_AMOUNT_CREDITS),
        ),
        (
            // Two coprime denominators near 10^12 have a common multiple above 10^18: refused
            // when written, and never a wrapped number if such data got in anyway.
            "denominators beyond the exact range",
            prices(&[(InputTokens, 1, 999_999_999_989), (OutputTokens, 1, 999_999_999_959)]),
            q(&[(InputTokens, 1), (OutputTokens, 1)]),
            Err(Refusal::TooLarge),
        ),
    ];
    for (name, p, quantities, expected) in cases {
        assert_eq!(cost(&p, &quantities), expected, "{name}");
    }
}

#[test]
fn unit_prices_are_checked_when_written() {
    let cases: Vec<(UnitPrices, bool, Result<(), PriceError>)> = vec![
        (prices(&[(InputTokens, 1, 1_000)]), false, Ok(())),
        (prices(&[]), false, Err(PriceError::Empty)),
        (prices(&[]), true, Ok(())),
        (prices(&[(InputTokens, -1, 1)]), false, Err(PriceError::CreditsOutOfRange(InputTokens))),
        (prices(&[(InputTokens, UNIT_PRICE_CREDITS_MAX + 1, 1)]), false, Err(PriceError::CreditsOutOfRange(InputTokens))),
        (prices(&[(AudioMs, 1, 0)]), false, Err(PriceError::PerUnitsOutOfRange(AudioMs))),
        (prices(&[(AudioMs, 1, PER_UNITS_MAX + 1)]), false, Err(PriceError::PerUnitsOutOfRange(AudioMs))),
        (prices(&[(InputTokens, 1, 1_000_000), (OutputTokens, 1, 1_000), (Requests, 1, 1)]), false, Ok(())),
        (prices(&[(InputTokens, 1, 999_999_999_989), (OutputTokens, 1, 999_999_999_959)]), false, Err(PriceError::CommonPerUnitsTooLarge)),
    ];
    for (p, allow_empty, expected) in cases {
        assert_eq!(validate_unit_prices(&p, allow_empty), expected, "{p:?}");
    }
}

fn bounded(d: Dimension, min: Option<i64>, max: Option<i64>) -> PerDimension<CostBounds> {
    [(d, CostBounds { min_cost_credits_per_1k_units: min, max_cost_credits_per_1k_units: max })].into_iter().collect()
}

#[test]
fn sanity_bounds_refuse_prices_outside_them_when_written() {
    // Between 1 and 100 credits per 1,000 input tokens.
    let bounds = bounded(InputTokens, Some(1), Some(100));
    let cases = [
        (up(5, 1_000), Ok(())),
        (up(1, 1_000), Ok(())),
        (up(100, 1_000), Ok(())),
        (up(100_000, 1_000_000), Ok(())),
        // A 1000× typo: 5 per token instead of 5 per 1,000 tokens.
        (up(5, 1), Err(Side::Above)),
        (up(101, 1_000), Err(Side::Above)),
        // A 1000× typo the other way.
        (up(5, 1_000_000), Err(Side::Below)),
        (up(999, 1_000_000), Err(Side::Below)),
        // Zero is a deliberate "free", exempt from the minimum.
        (up(0, 1), Ok(())),
    ];
    for (price, expected) in cases {
        let result = check_price_bounds(&[(InputTokens, price)].into_iter().collect(), &bounds);
        match expected {
            Ok(()) => assert_eq!(result, Ok(()), "{price:?}"),
            Err(side) => {
                assert!(matches!(result, Err(PriceError::OutOfBounds { side: s, dimension: InputTokens, .. }) if s == side), "{price:?}: {result:?}")
            }
        }
    }
    // Dimensions without bounds are not checked.
    assert_eq!(check_price_bounds(&prices(&[(Requests, 1_000_000, 1)]), &bounds), Ok(()));
}

#[test]
fn policies_are_checked_when_written() {
    let ok = Policy { default_price: prices(&[(InputTokens, 2, 1_000)]), bounds: bounded(InputTokens, Some(1), Some(10)), ..Policy::default() };
    assert_eq!(validate_policy(&ok), Ok(()));
    let typo = Policy { default_price: prices(&[(InputTokens, 2, 1)]), ..ok.clone() };
    assert!(matches!(validate_policy(&typo), Err(PriceError::OutOfBounds { side: Side::Above, .. })));
    let inverted = Policy { bounds: bounded(InputTokens, Some(10), Some(1)), ..ok.clone() };
    assert_eq!(validate_policy(&inverted), Err(PriceError::BadBounds(InputTokens)));
    let negative = Policy { bounds: bounded(InputTokens, Some(-1), None), ..ok.clone() };
    assert_eq!(validate_policy(&negative), Err(PriceError::BadBounds(InputTokens)));
    let many = Policy { high_value_patterns: (0..=PATTERNS_MAX).map(|i| pattern(&format!("p{i}*"))).collect(), ..ok };
    assert_eq!(validate_policy(&many), Err(PriceError::TooManyPatterns));
}

#[test]
fn usage_at_t_is_rated_at_the_version_in_force_at_t() {
    let v1 = version(1, T0, Some(T0 + time::Duration::days(10)), &[(InputTokens, 1, 1)]);
    let v2 = version(2, T0 + time::Duration::days(10), Some(T0 + time::Duration::days(20)), &[(InputTokens, 2, 1)]);
    // Superseded before it began: never in force.
    let v3 = version(3, T0 + time::Duration::days(20), Some(T0 + time::Duration::days(20)), &[(InputTokens, 9, 1)]);
    let v4 = version(4, T0 + time::Duration::days(20), None, &[(InputTokens, 3, 1)]);
    let versions = [v1, v2, v3, v4];
    let policy = Policy { default_price: prices(&[(InputTokens, 100, 1)]), ..Policy::default() };
    let s = sku("openai/gpt-4o");
    let ten = q(&[(InputTokens, 10)]);
    let cases = [
        (T0 - time::Duration::microseconds(1), Err(Refusal::Unknown(Unpriced::NotInForce))),
        (T0, Ok((10, 1))),
        (T0 + time::Duration::days(10) - time::Duration::microseconds(1), Ok((10, 1))),
        (T0 + time::Duration::days(10), Ok((20, 2))),
        (T0 + time::Duration::days(20), Ok((30, 4))),
        (T0 + time::Duration::days(3_000), Ok((30, 4))),
    ];
    for (at, expected) in cases {
        let got = rate(&s, &ten, at, &versions, &policy).map(|r| (r.cost_credits, r.price_version));
        assert_eq!(got, expected, "at {at}");
    }
    // Retired: refused after the end, even with a default price (the SKU is known, not new).
    let retired = [version(1, T0, Some(T0 + time::Duration::days(1)), &[(InputTokens, 1, 1)])];
    assert_eq!(rate(&s, &ten, T0 + time::Duration::days(2), &retired, &policy), Err(Refusal::Unknown(Unpriced::NotInForce)));
}

#[test]
fn unknown_skus_follow_the_policy() {
    let default_price = prices(&[(InputTokens, 1, 1_000), (OutputTokens, 2, 1_000)]);
    let patterns = vec![pattern("openai/gpt-4*"), pattern("anthropic/claude-*-opus"), pattern("*o1-?")];
    let lenient = Policy { high_value_patterns: patterns.clone(), default_price, ..Policy::default() };
    let strict = Policy { strict: true, ..lenient.clone() };
    let no_default = Policy { default_price: UnitPrices::default(), ..lenient.clone() };
    let usage = q(&[(InputTokens, 1_500), (OutputTokens, 1_000)]);
    let defaulted = Ok(Rating { cost_credits: 4, price_version: 0, defaulted: true });
    let cases = [
        ("a new cheap model uses the default price", &lenient, "mistral/small-3", defaulted),
        ("high-value", &lenient, "openai/gpt-4o", Err(Refusal::Unknown(Unpriced::HighValue))),
        ("high-value whatever the case", &lenient, "OpenAI/GPT-4o-mini", Err(Refusal::Unknown(Unpriced::HighValue))),
        ("a :free suffix does not make a high-value SKU free", &lenient, "openai/gpt-4o:free", Err(Refusal::Unknown(Unpriced::HighValue))),
        ("nor a cheap one", &lenient, "mistral/small-3:free", defaulted),
        ("inner wildcard", &lenient, "anthropic/claude-3-opus", Err(Refusal::Unknown(Unpriced::HighValue))),
        ("? is one character", &lenient, "openai/o1-x", Err(Refusal::Unknown(Unpriced::HighValue))),
        ("? is not two", &lenient, "openai/o1-xy", defaulted),
        ("strict refuses everything unpriced", &strict, "mistral/small-3", Err(Refusal::Unknown(Unpriced::Strict))),
        ("no default price refuses", &no_default, "mistral/small-3", Err(Refusal::Unknown(Unpriced::NoDefault))),
    ];
    for (name, policy, raw, expected) in cases {
        assert_eq!(rate(&sku(raw), &usage, T0, &[], policy), expected, "{name}");
    }
    // The default price must price every dimension used.
    assert_eq!(rate(&sku("x"), &q(&[(AudioMs, 1)]), T0, &[], &lenient), Err(Refusal::DimensionUnpriced(AudioMs)));
}

#[test]
fn free_is_only_an_exact_zero_price() {
    let policy = Policy { default_price: prices(&[(InputTokens, 1, 1)]), ..Policy::default() };
    let paid = [version(1, T0, None, &[(InputTokens, 5, 1)])];
    let free = [version(1, T0, None, &[(InputTokens, 0, 1)])];
    let usage = q(&[(InputTokens, 10)]);
    // `x:free` priced at zero is free; `x` priced at 5 is not made free by asking for `x:free`
    // (an unpriced `x:free` is just another unknown SKU).
    assert_eq!(rate(&sku("vendor/x:free"), &usage, T0, &free, &policy).map(|r| r.cost_credits), Ok(0));
    assert_eq!(rate(&sku("vendor/x"), &usage, T0, &paid, &policy).map(|r| r.cost_credits), Ok(50));
    assert_eq!(rate(&sku("vendor/x:free"), &usage, T0, &[], &policy), Ok(Rating { cost_credits: 10, price_version: 0, defaulted: true }));
}

#[test]
fn computed_costs_outside_the_bounds_are_anomalies() {
    // A price written before the bounds were tightened.
    let versions = [version(1, T0, None, &[(InputTokens, 5, 1), (Requests, 1, 1)])];
    let policy = Policy { bounds: bounded(InputTokens, Some(1), Some(100)), ..Policy::default() };
    let s = sku("vendor/model");
    let refused = rate(&s, &q(&[(InputTokens, 1_000)]), T0, &versions, &policy);
    assert!(matches!(refused, Err(Refusal::Anomaly(PriceError::OutOfBounds { side: Side::Above, dimension: InputTokens, .. }))), "{refused:?}");
    // Only dimensions used are checked.
    assert_eq!(rate(&s, &q(&[(Requests, 3)]), T0, &versions, &policy).map(|r| r.cost_credits), Ok(3));
    // Rounding one token up to a whole credit is not an anomaly: the exact cost is compared.
    let fine = [version(1, T0, None, &[(InputTokens, 1, 1_000)])];
    assert_eq!(rate(&s, &q(&[(InputTokens, 1)]), T0, &fine, &policy).map(|r| r.cost_credits), Ok(1));
}

#[test]
fn versions_are_scheduled_without_overlap() {
    let now = T0 + time::Duration::days(5);
    let a = prices(&[(InputTokens, 1, 1)]);
    let b = prices(&[(InputTokens, 2, 1)]);
    let open = version(3, T0, None, &[(InputTokens, 1, 1)]);
    let later = now + time::Duration::days(1);
    assert_eq!(next_version(None, &a, None, now), Ok(Upsert::New { version: 1, effective_from: now }));
    assert_eq!(next_version(Some(&open), &b, None, now), Ok(Upsert::New { version: 4, effective_from: now }));
    assert_eq!(next_version(Some(&open), &b, Some(later), now), Ok(Upsert::New { version: 4, effective_from: later }));
    assert_eq!(next_version(Some(&open), &a, None, now), Ok(Upsert::Unchanged { version: 3 }), "a repeat changes nothing");
    assert_eq!(next_version(Some(&open), &a, Some(T0), now), Ok(Upsert::Unchanged { version: 3 }), "a retry after its start has passed");
    assert_eq!(next_version(Some(&open), &a, Some(T0 - time::Duration::seconds(1)), now), Err(PriceError::InPast));
    assert_eq!(next_version(Some(&open), &b, Some(now - time::Duration::seconds(1)), now), Err(PriceError::InPast));
    let scheduled = version(4, later, None, &[(InputTokens, 2, 1)]);
    assert_eq!(next_version(Some(&scheduled), &a, None, now), Err(PriceError::BeforeLatest(later)));
    // The same instant as a scheduled version: the new one supersedes it.
    assert_eq!(next_version(Some(&scheduled), &a, Some(later), now), Ok(Upsert::New { version: 5, effective_from: later }));
    let retired = version(3, T0, Some(now), &[(InputTokens, 1, 1)]);
    assert_eq!(next_version(Some(&retired), &a, None, now), Ok(Upsert::New { version: 4, effective_from: now }), "re-pricing a retired SKU");

    // Ending at `at`: a version in force ends then, a scheduled one never begins, ended ones stay.
    let versions = [version(1, T0 - time::Duration::days(9), Some(T0), &[]), version(2, T0, Some(later), &[]), version(3, later, None, &[])];
    assert_eq!(ends_at(&versions, now), vec![(2, now), (3, later)]);
    assert_eq!(ends_at(&versions, later + time::Duration::days(1)), vec![(3, later + time::Duration::days(1))]);
}

#[test]
fn skus_and_patterns_are_bounded_and_plain() {
    assert!(Sku::parse("openai/gpt-4o:free").is_ok());
    assert!(Sku::parse("voice@eleven_labs.v2").is_ok());
    assert_eq!(Sku::parse(""), Err(NameError::Empty));
    assert_eq!(Sku::parse(&"a".repeat(SKU_LEN_MAX + 1)), Err(NameError::TooLong(SKU_LEN_MAX)));
    assert_eq!(Sku::parse("gpt-4*"), Err(NameError::BadCharacter), "wildcards are for patterns");
    assert_eq!(Sku::parse("a b"), Err(NameError::BadCharacter));
    assert!(SkuPattern::parse("openai/gpt-4*").is_ok());
    assert_eq!(SkuPattern::parse("gpt 4"), Err(NameError::BadCharacter));
    let cases = [
        ("*", "anything", true),
        ("openai/gpt-4*", "openai/gpt-4", true),
        ("openai/gpt-4*", "openai/gpt-3.5", false),
        ("openai/gpt-4*", "xopenai/gpt-4o", false),
        ("*gpt-4*", "xopenai/gpt-4o", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXbYcZ", false),
        ("a*b*c", "abbbbbc", true),
    ];
    for (p, s, expected) in cases {
        assert_eq!(pattern(p).matches(&sku(s)), expected, "{p} ~ {s}");
    }
    for d in Dimension::ALL {
        assert_eq!(Dimension::parse(d.as_str()), Some(d));
    }
    assert_eq!(Dimension::parse("tokens"), None);
}

fn arb_prices() -> impl Strategy<Value = UnitPrices> {
    let per_units = prop::sample::select(vec![1i64, 3, 7, 10, 1_000, 1_000_000, 999_983]);
    prop::collection::vec(prop::option::of((0i64..=1_000_000, per_units)), 6)
        .prop_map(|slots| Dimension::ALL.into_iter().zip(slots).filter_map(|(d, slot)| slot.map(|(c, p)| (d, up(c, p)))).collect())
}

fn arb_quantities(prices: UnitPrices) -> impl Strategy<Value = (UnitPrices, Quantities)> {
    // Only priced dimensions get quantities, so every rating is defined.
    // Mostly realistic quantities, sometimes up to the maximum (where costs become too large).
    let quantity = prop_oneof![3 => 0i64..=1_000_000_000, 1 => 0i64..=QUANTITY_MAX];
    prop::collection::vec(quantity, 6).prop_map(move |raw| {
        let mut quantities = Quantities::default();
        for (d, n) in Dimension::ALL.into_iter().zip(raw) {
            if prices.get(d).is_some() {
                quantities.set(d, n);
            }
        }
        (prices, quantities)
    })
}

proptest! {
    #[test]
    fn cost_is_monotone_in_quantity_and_never_negative(
        (p, quantities) in arb_prices().prop_flat_map(arb_quantities),
        which in 0usize..6,
        extra in 0i64..=1_000_000_000_000,
    ) {
        prop_assume!(validate_unit_prices(&p, true).is_ok());
        let d = Dimension::ALL[which];
        let mut more = quantities;
        if p.get(d).is_some() {
            more.set(d, (quantities.get(d) + extra).min(QUANTITY_MAX));
        }
        match (cost(&p, &quantities), cost(&p, &more)) {
            (Ok(less), Ok(greater)) => {
                prop_assert!(less >= 0);
                prop_assert!(less <= greater, "{} > {}", less, greater);
            }
            // Too large stays too large with more usage.
            (Err(Refusal::TooLarge), other) => prop_assert_eq!(other, Err(Refusal::TooLarge)),
            (Ok(less), Err(Refusal::TooLarge)) => prop_assert!(less >= 0),
            (a, b) => prop_assert!(false, "unexpected {:?} / {:?}", a, b),
        }
    }

    #[test]
    fn cost_is_the_ceiling_of_the_exact_sum(
        (p, quantities) in arb_prices().prop_flat_map(arb_quantities),
    ) {
        prop_assume!(validate_unit_prices(&p, true).is_ok());
        // Whole parts add exactly; only the sum of the fractions (each below one) is rounded up.
        if let Ok(c) = cost(&p, &quantities) {
            let terms: Vec<(i128, i128)> = quantities.used().map(|(d, n)| {
                let price = p.get(d).expect("priced");
                (i128::from(n) * i128::from(price.credits), i128::from(price.per_units))
            }).collect();
            let whole: i128 = terms.iter().map(|(num, den)| num / den).sum();
            let fractions = terms.iter().filter(|(num, den)| num % den != 0).count();
            let rounding = i128::from(c) - whole;
            prop_assert!(rounding >= i128::from(fractions > 0), "a fraction always rounds up");
            prop_assert!(rounding <= i128::try_from(fractions).expect("small"), "fractions below one each add less than one credit each");
        }
    }

    #[test]
    fn cost_is_additive_up_to_rounding(
        c1 in 0i64..100_000, c2 in 0i64..100_000, per in prop::sample::select(vec![1i64, 7, 1_000, 1_000_000]),
        a in 0i64..1_000_000_000, b in 0i64..1_000_000_000,
    ) {
        // Rating two dimensions at once never costs more than rating them apart.
        let both = prices(&[(InputTokens, c1, per), (OutputTokens, c2, per)]);
        let together = cost(&both, &q(&[(InputTokens, a), (OutputTokens, b)])).expect("fits");
        let apart = cost(&both, &q(&[(InputTokens, a)])).expect("fits") + cost(&both, &q(&[(OutputTokens, b)])).expect("fits");
        prop_assert!(together <= apart);
        prop_assert!(together + 1 >= apart);
    }
}
