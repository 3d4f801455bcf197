//! Pricing: the rules that turn usage quantities of a SKU into whole credits.
//!
//! A tenant's price book lists SKUs (a model id such as `openai/gpt-4o`, a voice, an audio
//! engine). Each SKU has versions; a version prices some [`Dimension`]s, each as an exact
//! rational [`UnitPrice`] (`credits` per `per_units` units), and is in force over
//! `[effective_from, effective_to)`. Usage at time `t` is rated at the version in force at `t`.
//!
//! - [`cost`] adds the exact rational costs of every dimension and rounds the sum up to a whole
//!   credit, with `i128` intermediates; a cost above [`MAX_AMOUNT_CREDITS`] is refused.
//! - [`rate`] picks the version in force, applies the tenant's [`Policy`] to SKUs without one
//!   (strict mode and high-value patterns refuse; others may use the default price, flagged) and
//!   checks the cost against the tenant's sanity bounds.
//! - [`next_version`] and [`ends_at`] schedule versions so that they never overlap.
//!
//! Nothing here treats a SKU name specially: `vendor/model:free` is free only when that exact SKU
//! is priced at zero. No floating point, no clock reads: `now` and `at` are passed in.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::limits::MAX_AMOUNT_CREDITS;

/// Longest SKU, in bytes.
pub const SKU_LEN_MAX: usize = 128;
/// Largest quantity of one dimension in one rating (10^15 units).
pub const QUANTITY_MAX: i64 = 1_000_000_000_000_000;
/// Largest `credits` of one unit price.
pub const UNIT_PRICE_CREDITS_MAX: i64 = MAX_AMOUNT_CREDITS;
/// Largest `per_units` of one unit price (10^12 units).
pub const PER_UNITS_MAX: i64 = 1_000_000_000_000;
/// Largest least common multiple of the `per_units` of one price. It keeps the exact sum of the
/// dimensions' fractional costs inside `i128`, whatever the quantities.
pub const COMMON_PER_UNITS_MAX: i128 = 1_000_000_000_000_000_000;
/// Sanity bounds are expressed per this many units.
pub const BOUND_UNITS: i64 = 1_000;
/// Most high-value patterns in one policy, and the longest pattern.
pub const PATTERNS_MAX: usize = 64;
pub const PATTERN_LEN_MAX: usize = 128;

/// A usage dimension a price can charge for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    InputTokens,
    OutputTokens,
    CachedTokens,
    AudioMs,
    Characters,
    Requests,
}

impl Dimension {
    /// Every dimension, in a fixed order.
    pub const ALL: [Dimension; 6] =
        [Dimension::InputTokens, Dimension::OutputTokens, Dimension::CachedTokens, Dimension::AudioMs, Dimension::Characters, Dimension::Requests];

    fn index(self) -> usize {
        self as usize
    }

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
            Dimension::CachedTokens => "cached_tokens",
            Dimension::AudioMs => "audio_ms",
            Dimension::Characters => "characters",
            Dimension::Requests => "requests",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a SKU or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} bytes")]
    TooLong(usize),
    #[error("may contain only ASCII letters, digits and . _ - : @ / (and * ? in patterns)")]
    BadCharacter,
}

fn sku_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@' | b'/')
}

fn validate_name(raw: &str, len_max: usize, extra: impl Fn(u8) -> bool) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > len_max {
        return Err(NameError::TooLong(len_max));
    }
    if !raw.bytes().all(|b| sku_byte(b) || extra(b)) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// A priced thing, e.g. `openai/gpt-4o`. Compared exactly (case and suffixes included).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Sku, NameError> {
        validate_name(raw, SKU_LEN_MAX, |_| false).map(|()| Sku(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A glob over SKUs: `*` matches any run of characters, `?` exactly one; everything else matches
/// itself, ignoring ASCII case (so `OpenAI/GPT-4o` cannot slip past `openai/gpt-4*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SkuPattern(String);

impl SkuPattern {
    pub fn parse(raw: &str) -> Result<SkuPattern, NameError> {
        validate_name(raw, PATTERN_LEN_MAX, |b| matches!(b, b'*' | b'?')).map(|()| SkuPattern(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `sku` matches, in time linear in the lengths (the classic greedy glob with one
    /// backtrack point).
    pub fn matches(&self, sku: &Sku) -> bool {
        let pattern = self.0.as_bytes();
        let text = sku.0.as_bytes();
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&text[t])) {
                p += 1;
                t += 1;
            } else if p < pattern.len() && pattern[p] == b'*' {
                star = Some((p, t));
                p += 1;
            } else if let Some((star_p, star_t)) = star {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&b| b == b'*')
    }
}

/// How much of each dimension was used. Every quantity is in `0..=QUANTITY_MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quantities {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub audio_ms: i64,
    pub characters: i64,
    pub requests: i64,
}

/// Why a quantity is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0} must not be negative")]
    Negative(Dimension),
    #[error("{0} must be at most {QUANTITY_MAX}")]
    TooLarge(Dimension),
}

impl Quantities {
    pub fn get(&self, dimension: Dimension) -> i64 {
        match dimension {
            Dimension::InputTokens => self.input_tokens,
            Dimension::OutputTokens => self.output_tokens,
            Dimension::CachedTokens => self.cached_tokens,
            Dimension::AudioMs => self.audio_ms,
            Dimension::Characters => self.characters,
            Dimension::Requests => self.requests,
        }
    }

    pub fn set(&mut self, dimension: Dimension, quantity: i64) {
        let slot = match dimension {
            Dimension::InputTokens => &mut self.input_tokens,
            Dimension::OutputTokens => &mut self.output_tokens,
            Dimension::CachedTokens => &mut self.cached_tokens,
            Dimension::AudioMs => &mut self.audio_ms,
            Dimension::Characters => &mut self.characters,
            Dimension::Requests => &mut self.requests,
        };
        *slot = quantity;
    }

    /// The dimensions used (quantity above zero), in [`Dimension::ALL`] order.
    pub fn used(&self) -> impl Iterator<Item = (Dimension, i64)> + '_ {
        Dimension::ALL.into_iter().map(|d| (d, self.get(d))).filter(|(_, q)| *q > 0)
    }

    /// Accepts quantities in `0..=QUANTITY_MAX`.
    pub fn validate(&self) -> Result<(), QuantityError> {
        for d in Dimension::ALL {
            match self.get(d) {
                q if q < 0 => return Err(QuantityError::Negative(d)),
                q if q > QUANTITY_MAX => return Err(QuantityError::TooLarge(d)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// An exact rational price: `credits` per `per_units` units of a dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitPrice {
    pub credits: i64,
    pub per_units: i64,
}

/// One value per dimension, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PerDimension<T>([Option<T>; 6]);

impl<T: Copy> Default for PerDimension<T> {
    fn default() -> Self {
        PerDimension([None; 6])
    }
}

impl<T: Copy> PerDimension<T> {
    pub fn get(&self, dimension: Dimension) -> Option<T> {
        self.0[dimension.index()]
    }

    pub fn set(&mut self, dimension: Dimension, value: Option<T>) {
        self.0[dimension.index()] = value;
    }

    /// The dimensions that have a value, in [`Dimension::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Dimension, T)> + '_ {
        Dimension::ALL.into_iter().filter_map(|d| self.get(d).map(|v| (d, v)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

impl<T: Copy> FromIterator<(Dimension, T)> for PerDimension<T> {
    fn from_iter<I: IntoIterator<Item = (Dimension, T)>>(iter: I) -> Self {
        let mut all = PerDimension::default();
        for (d, v) in iter {
            all.set(d, Some(v));
        }
        all
    }
}

/// The unit prices of one price version (or of a policy's default price).
pub type UnitPrices = PerDimension<UnitPrice>;

/// A tenant's sanity bounds for one dimension, in credits per [`BOUND_UNITS`] units. A price of
/// exactly zero is a deliberate "free" and is exempt from the minimum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CostBounds {
    pub min_cost_credits_per_1k_units: Option<i64>,
    pub max_cost_credits_per_1k_units: Option<i64>,
}

/// Which side of a bound a price fell on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Below,
    Above,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Below => "below the minimum of",
            Side::Above => "above the maximum of",
        })
    }
}

/// One version of a SKU's price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    /// 1, 2, … per SKU; later versions never start earlier than earlier ones.
    pub version: i64,
    pub effective_from: OffsetDateTime,
    /// `None` = open-ended. Equal to `effective_from` for a version superseded before it began.
    pub effective_to: Option<OffsetDateTime>,
    pub unit_prices: UnitPrices,
}

impl PriceVersion {
    pub fn in_force_at(&self, at: OffsetDateTime) -> bool {
        self.effective_from <= at && self.effective_to.is_none_or(|to| at < to)
    }
}

/// The version in force at `at`, if any (versions never overlap; the highest wins regardless).
pub fn in_force(versions: &[PriceVersion], at: OffsetDateTime) -> Option<&PriceVersion> {
    versions.iter().filter(|v| v.in_force_at(at)).max_by_key(|v| v.version)
}

/// A tenant's pricing policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Every SKU without a price in force is refused.
    pub strict: bool,
    /// SKUs matching any of these are refused when unpriced, whatever the default price.
    pub high_value_patterns: Vec<SkuPattern>,
    /// Unit prices for SKUs the price book has never listed (and that are not high-value).
    /// Empty = no default: such SKUs are refused too.
    pub default_price: UnitPrices,
    /// Sanity bounds per dimension; a dimension without bounds is not checked.
    pub bounds: PerDimension<CostBounds>,
}

impl Policy {
    /// The first high-value pattern `sku` matches.
    pub fn high_value_match(&self, sku: &Sku) -> Option<&SkuPattern> {
        self.high_value_patterns.iter().find(|p| p.matches(sku))
    }
}

/// Why a price (or a policy) cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("a price must price at least one dimension")]
    Empty,
    #[error("{0}: credits must be between 0 and {UNIT_PRICE_CREDITS_MAX}")]
    CreditsOutOfRange(Dimension),
    #[error("{0}: per_units must be between 1 and {PER_UNITS_MAX}")]
    PerUnitsOutOfRange(Dimension),
    #[error("the per_units of one price must have a least common multiple of at most {COMMON_PER_UNITS_MAX}")]
    CommonPerUnitsTooLarge,
    #[error("{dimension}: {credits} credits per {per_units} units is {side} {bound_credits} credits per 1,000 units")]
    OutOfBounds { dimension: Dimension, credits: i64, per_units: i64, side: Side, bound_credits: i64 },
    #[error("{0}: min_cost_credits_per_1k_units must be between 0 and the maximum")]
    BadBounds(Dimension),
    #[error("effective_from must not be in the past")]
    InPast,
    #[error("a later version is already scheduled from {0}")]
    BeforeLatest(OffsetDateTime),
    #[error("at most {PATTERNS_MAX} high-value patterns")]
    TooManyPatterns,
}

/// Checks a price's shape: each unit price within range, a common multiple of the `per_units`
/// small enough for exact rating. `allow_empty` for a policy's default price.
pub fn validate_unit_prices(prices: &UnitPrices, allow_empty: bool) -> Result<(), PriceError> {
    if prices.is_empty() && !allow_empty {
        return Err(PriceError::Empty);
    }
    let mut common: i128 = 1;
    for (d, price) in prices.iter() {
        if !(0..=UNIT_PRICE_CREDITS_MAX).contains(&price.credits) {
            return Err(PriceError::CreditsOutOfRange(d));
        }
        if !(1..=PER_UNITS_MAX).contains(&price.per_units) {
            return Err(PriceError::PerUnitsOutOfRange(d));
        }
        common = lcm(common, i128::from(price.per_units)).filter(|l| *l <= COMMON_PER_UNITS_MAX).ok_or(PriceError::CommonPerUnitsTooLarge)?;
    }
    Ok(())
}

/// Checks a price against the tenant's bounds when it is written.
pub fn check_price_bounds(prices: &UnitPrices, bounds: &PerDimension<CostBounds>) -> Result<(), PriceError> {
    for (d, price) in prices.iter() {
        if let Some(b) = bounds.get(d) {
            check_unit_price(d, price, b)?;
        }
    }
    Ok(())
}

/// Compares `credits / per_units` with `bound / 1000` exactly: `credits × 1000` against
/// `bound × per_units`, in `i128`.
fn check_unit_price(d: Dimension, price: UnitPrice, bounds: CostBounds) -> Result<(), PriceError> {
    let per_1k = i128::from(price.credits) * i128::from(BOUND_UNITS);
    let out = |side, bound_credits| PriceError::OutOfBounds { dimension: d, credits: price.credits, per_units: price.per_units, side, bound_credits };
    if let Some(min) = bounds.min_cost_credits_per_1k_units {
        if price.credits != 0 && per_1k < i128::from(min) * i128::from(price.per_units) {
            return Err(out(Side::Below, min));
        }
    }
    if let Some(max) = bounds.max_cost_credits_per_1k_units {
        if per_1k > i128::from(max) * i128::from(price.per_units) {
            return Err(out(Side::Above, max));
        }
    }
    Ok(())
}

/// Checks a policy when it is written: patterns bounded, bounds ordered, and the default price
/// well-formed and inside the bounds.
pub fn validate_policy(policy: &Policy) -> Result<(), PriceError> {
    if policy.high_value_patterns.len() > PATTERNS_MAX {
        return Err(PriceError::TooManyPatterns);
    }
    for (d, b) in policy.bounds.iter() {
        let min = b.min_cost_credits_per_1k_units.unwrap_or(0);
        let max = b.max_cost_credits_per_1k_units.unwrap_or(MAX_AMOUNT_CREDITS);
        if !(0..=MAX_AMOUNT_CREDITS).contains(&min) || !(0..=MAX_AMOUNT_CREDITS).contains(&max) || min > max {
            return Err(PriceError::BadBounds(d));
        }
    }
    validate_unit_prices(&policy.default_price, true)?;
    check_price_bounds(&policy.default_price, &policy.bounds)
}

/// What writing a price does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The latest version already charges these prices from then on: nothing to write.
    Unchanged { version: i64 },
    /// Write `version` from `effective_from`, ending earlier versions then (see [`ends_at`]).
    New { version: i64, effective_from: OffsetDateTime },
}

/// Schedules a new price. It starts at `effective_from` (default `now`), never in the past and
/// never before the latest version starts; the versions still in force then end at that instant
/// (see [`ends_at`]). A repeat of the latest open-ended price, from its start or later, changes
/// nothing.
pub fn next_version(
    latest: Option<&PriceVersion>,
    prices: &UnitPrices,
    effective_from: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Upsert, PriceError> {
    let from = effective_from.unwrap_or(now);
    if let Some(latest) = latest {
        // Already true from `from` on (a retry, even one whose explicit start has since passed).
        if latest.effective_to.is_none() && latest.unit_prices == *prices && from >= latest.effective_from {
            return Ok(Upsert::Unchanged { version: latest.version });
        }
    }
    if from < now {
        return Err(PriceError::InPast);
    }
    let Some(latest) = latest else {
        return Ok(Upsert::New { version: 1, effective_from: from });
    };
    if from < latest.effective_from {
        return Err(PriceError::BeforeLatest(latest.effective_from));
    }
    Ok(Upsert::New { version: latest.version + 1, effective_from: from })
}

/// The new `effective_to` of every version that would still be in force at or after `at`: each
/// ends at `at`, or, when it has not begun by then, at its own start (it never takes effect).
pub fn ends_at(versions: &[PriceVersion], at: OffsetDateTime) -> Vec<(i64, OffsetDateTime)> {
    versions
        .iter()
        .filter(|v| v.effective_to.is_none_or(|to| to > at))
        .map(|v| (v.version, if v.effective_from > at { v.effective_from } else { at }))
        .collect()
}

/// A rating's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating {
    /// The cost, rounded up to a whole credit.
    pub cost_credits: i64,
    /// The price version used; 0 when the policy's default price was used.
    pub price_version: i64,
    /// The SKU had no price and the policy's default price was used.
    pub defaulted: bool,
}

/// Why a SKU has no price to rate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpriced {
    /// The tenant refuses every unpriced SKU.
    Strict,
    /// The SKU matches a high-value pattern.
    HighValue,
    /// The tenant has no default price.
    NoDefault,
    /// The price book lists the SKU, but no version is in force then (retired or not yet begun).
    NotInForce,
}

impl fmt::Display for Unpriced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unpriced::Strict => "the tenant's pricing is strict",
            Unpriced::HighValue => "it matches a high-value pattern",
            Unpriced::NoDefault => "the tenant has no default price",
            Unpriced::NotInForce => "no version is in force at that time",
        })
    }
}

/// Why usage cannot be rated. `Unknown` and `DimensionUnpriced` are PRICE_UNKNOWN, `Anomaly` is
/// PRICE_ANOMALY, `TooLarge` is invalid input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no price in force ({0})")]
    Unknown(Unpriced),
    #[error("the price has no unit price for {0}")]
    DimensionUnpriced(Dimension),
    #[error("price anomaly: {0}")]
    Anomaly(PriceError),
    #[error("the cost exceeds {MAX_AMOUNT_CREDITS} credits")]
    TooLarge,
}

/// Rates `quantities` of `sku` at `at`. `versions` are the SKU's versions (any that may be in
/// force at `at`; empty = never priced).
pub fn rate(sku: &Sku, quantities: &Quantities, at: OffsetDateTime, versions: &[PriceVersion], policy: &Policy) -> Result<Rating, Refusal> {
    let (prices, price_version, defaulted) = match in_force(versions, at) {
        Some(v) => (&v.unit_prices, v.version, false),
        None if !versions.is_empty() => return Err(Refusal::Unknown(Unpriced::NotInForce)),
        None if policy.strict => return Err(Refusal::Unknown(Unpriced::Strict)),
        None if policy.high_value_match(sku).is_some() => return Err(Refusal::Unknown(Unpriced::HighValue)),
        None if policy.default_price.is_empty() => return Err(Refusal::Unknown(Unpriced::NoDefault)),
        None => (&policy.default_price, 0, true),
    };
    check_cost_bounds(prices, quantities, &policy.bounds)?;
    let cost_credits = cost(prices, quantities)?;
    Ok(Rating { cost_credits, price_version, defaulted })
}

/// The exact cost per 1,000 units this rating implies for each dimension used, against the
/// tenant's current bounds. Exact, before rounding: one token rounded up to one whole credit is
/// not an anomaly.
fn check_cost_bounds(prices: &UnitPrices, quantities: &Quantities, bounds: &PerDimension<CostBounds>) -> Result<(), Refusal> {
    for (d, _) in quantities.used() {
        if let (Some(price), Some(b)) = (prices.get(d), bounds.get(d)) {
            check_unit_price(d, price, b).map_err(Refusal::Anomaly)?;
        }
    }
    Ok(())
}

/// `ceil(Σ quantity × credits / per_units)` over the dimensions used, exactly.
///
/// Each term splits into a whole part and a remainder `r / per_units` (`r < per_units`). The
/// whole parts add in `i128` (each at most 10^30); the remainders add over the least common
/// multiple `L` of their `per_units` (at most 10^18 for a validated price, so the sum stays below
/// 6 × 10^18), and only that sum is rounded up. Every step is checked: anything out of range is
/// `TooLarge`, never a wrapped number.
pub fn cost(prices: &UnitPrices, quantities: &Quantities) -> Result<i64, Refusal> {
    let mut whole: i128 = 0;
    let mut common: i128 = 1;
    let mut remainders: Vec<(i128, i128)> = Vec::with_capacity(Dimension::ALL.len());
    for (d, quantity) in quantities.used() {
        assert!(quantity <= QUANTITY_MAX, "quantities are validated before rating");
        let price = prices.get(d).ok_or(Refusal::DimensionUnpriced(d))?;
        assert!(price.credits >= 0 && price.per_units > 0, "unit prices are validated when written");
        let numerator = i128::from(quantity).checked_mul(i128::from(price.credits)).ok_or(Refusal::TooLarge)?;
        let per_units = i128::from(price.per_units);
        whole = whole.checked_add(numerator / per_units).ok_or(Refusal::TooLarge)?;
        let remainder = numerator % per_units;
        if remainder > 0 {
            common = lcm(common, per_units).filter(|l| *l <= COMMON_PER_UNITS_MAX).ok_or(Refusal::TooLarge)?;
            remainders.push((remainder, per_units));
        }
    }
    let mut fraction: i128 = 0;
    for (remainder, per_units) in remainders {
        fraction = remainder.checked_mul(common / per_units).and_then(|f| fraction.checked_add(f)).ok_or(Refusal::TooLarge)?;
    }
    let total = whole.checked_add(div_ceil(fraction, common)).ok_or(Refusal::TooLarge)?;
    if total > i128::from(MAX_AMOUNT_CREDITS) {
        return Err(Refusal::TooLarge);
    }
    i64::try_from(total).map_err(|_| Refusal::TooLarge)
}

/// Rounds `a / b` up, for `a >= 0` and `b > 0`.
fn div_ceil(a: i128, b: i128) -> i128 {
    a / b + i128::from(a % b != 0)
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The least common multiple of two positive numbers, `None` on overflow.
fn lcm(a: i128, b: i128) -> Option<i128> {
    (a / gcd(a, b)).checked_mul(b)
}

#[cfg(test)]
mod tests;
