//! Requests → service commands. All validation of caller input happens here, once; every
//! failure names the offending field (→ INVALID_ARGUMENT with `BadRequest`).

use allot_domain::charge::Mode;
use allot_domain::ledger::GrantKind;
use allot_domain::limits::{non_negative_amount, positive_amount, HOLD_TTL_MAX_MS, HOLD_TTL_MIN_MS, MAX_AMOUNT_CREDITS};
use allot_domain::plan::{MeterPolicy, SubscriptionStatus};
use allot_proto::v1 as pb;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Error;
use crate::ids::{AccountId, IdempotencyKey, Identity, Meter, PlanId, PoolId};
use crate::repo::plans::{MeterTerms, PlanRecord, RateCap};
use crate::repo::subscriptions::SubscriptionRecord;
use crate::service::admin::{GrantCommand, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use crate::service::credits::{Actual, Amount, Attributes, CheckCommand, CommitCommand, DebitCommand, Lines, RefundCommand, ReserveCommand};
use crate::service::subsidy::SubsidyAsk;

/// Longest free-text field (plan names, tiers).
pub const TEXT_LEN_MAX: usize = 200;
/// Most meters one plan may list.
pub const PLAN_METERS_MAX: usize = 100;
/// Most meters one request may name.
pub const USAGE_METERS_MAX: usize = 16;
/// Most attributes on one request, and their sizes.
pub const ATTRIBUTES_MAX: usize = 16;
pub const ATTRIBUTE_KEY_LEN_MAX: usize = 64;
pub const ATTRIBUTE_VALUE_LEN_MAX: usize = 256;
/// Largest rate cap, units per minute.
pub const RATE_LIMIT_PER_MINUTE_MAX: i64 = 1_000_000_000_000;

pub fn account(field: &str, raw: &str) -> Result<AccountId, Error> {
    AccountId::parse(raw).map_err(|e| Error::invalid(field, e))
}

pub fn meter(field: &str, raw: &str) -> Result<Meter, Error> {
    Meter::parse(raw).map_err(|e| Error::invalid(field, e))
}

pub fn plan_id(field: &str, raw: &str) -> Result<PlanId, Error> {
    PlanId::parse(raw).map_err(|e| Error::invalid(field, e))
}

pub fn key(raw: &str) -> Result<IdempotencyKey, Error> {
    IdempotencyKey::parse(raw).map_err(|e| Error::invalid("idempotency_key", e))
}

pub fn positive(field: &str, amount: i64) -> Result<i64, Error> {
    positive_amount(amount).map_err(|e| Error::invalid(field, e))
}

pub fn non_negative(field: &str, amount: i64) -> Result<i64, Error> {
    non_negative_amount(amount).map_err(|e| Error::invalid(field, e))
}

fn uuid(field: &str, raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| Error::invalid(field, "must be a UUID"))
}

fn text(field: &str, raw: &str) -> Result<String, Error> {
    if raw.len() > TEXT_LEN_MAX {
        return Err(Error::invalid(field, format!("must be at most {TEXT_LEN_MAX} bytes")));
    }
    if raw.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(raw.to_owned())
}

/// A timestamp between 1970 and 9999, truncated to microseconds.
pub fn timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<OffsetDateTime, Error> {
    if !(0..=253_402_300_799).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Error::invalid(field, "must be a valid time between 1970 and 9999"));
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map(crate::clock::truncate_to_micros).map_err(|_| Error::invalid(field, "out of range"))
}

fn required_timestamp(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<OffsetDateTime, Error> {
    timestamp(field, ts.ok_or_else(|| Error::invalid(field, "is required"))?)
}

/// Page size: 0 means the default; above the maximum is an error, not a silent cut.
pub fn page_size(requested: u32) -> Result<u32, Error> {
    match requested {
        0 => Ok(PAGE_SIZE_DEFAULT),
        n if n <= PAGE_SIZE_MAX => Ok(n),
        _ => Err(Error::invalid("page_size", format!("must be at most {PAGE_SIZE_MAX}"))),
    }
}

/// The meters of a request: either the one-meter shorthand or the `usage` list, not both; each
/// meter once; each line either credits or a SKU with quantities. `zero_ok` allows 0 credits
/// (checks for status only, commits of unused holds).
fn lines(single_meter: &str, single_amount: i64, usage: &[pb::MeterAmount], zero_ok: bool) -> Result<Lines, Error> {
    let credits = |field: &str, a: i64| if zero_ok { non_negative(field, a) } else { positive(field, a) };
    if usage.is_empty() {
        return Ok(vec![(meter("meter", single_meter)?, Amount::Credits(credits("amount_credits", single_amount)?))]);
    }
    if !single_meter.is_empty() || single_amount != 0 {
        return Err(Error::invalid("usage", "give either meter and amount_credits, or usage, not both"));
    }
    if usage.len() > USAGE_METERS_MAX {
        return Err(Error::invalid("usage", format!("at most {USAGE_METERS_MAX} meters")));
    }
    let mut parsed: Lines = Vec::with_capacity(usage.len());
    for (i, line) in usage.iter().enumerate() {
        let name = meter(&format!("usage[{i}].meter"), &line.meter)?;
        if parsed.iter().any(|(m, _)| *m == name) {
            return Err(Error::invalid(format!("usage[{i}].meter"), "listed twice"));
        }
        let amount = if line.sku.is_empty() {
            if line.quantities.is_some() {
                return Err(Error::invalid(format!("usage[{i}].quantities"), "quantities need a sku"));
            }
            Amount::Credits(credits(&format!("usage[{i}].amount_credits"), line.amount_credits)?)
        } else {
            if line.amount_credits != 0 {
                return Err(Error::invalid(format!("usage[{i}].amount_credits"), "give either amount_credits or sku and quantities, not both"));
            }
            Amount::Rated {
                sku: super::pricing_proto::sku(&format!("usage[{i}].sku"), &line.sku)?,
                quantities: super::pricing_proto::quantities(&format!("usage[{i}].quantities"), line.quantities.as_ref())?,
            }
        };
        parsed.push((name, amount));
    }
    Ok(parsed)
}

/// Bounded attributes: keys `[a-z0-9_.-]`, values without control characters.
fn attributes(raw: std::collections::HashMap<String, String>) -> Result<Attributes, Error> {
    if raw.len() > ATTRIBUTES_MAX {
        return Err(Error::invalid("attributes", format!("at most {ATTRIBUTES_MAX}")));
    }
    let mut parsed = Attributes::new();
    for (key, value) in raw {
        let field = format!("attributes[{key:.64}]");
        if key.is_empty()
            || key.len() > ATTRIBUTE_KEY_LEN_MAX
            || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Error::invalid(field, format!("keys are 1 to {ATTRIBUTE_KEY_LEN_MAX} bytes of a-z 0-9 _ . -")));
        }
        if value.len() > ATTRIBUTE_VALUE_LEN_MAX || value.chars().any(char::is_control) {
            return Err(Error::invalid(field, format!("values are at most {ATTRIBUTE_VALUE_LEN_MAX} bytes without control characters")));
        }
        parsed.insert(key, value);
    }
    Ok(parsed)
}

pub fn check(req: pb::CheckRequest) -> Result<CheckCommand, Error> {
    Ok(CheckCommand {
        account: account("account_id", &req.account_id)?,
        lines: lines(&req.meter, req.amount_credits, &req.usage, true)?,
        subsidy: subsidy(req.subsidy)?,
    })
}

pub fn debit(req: pb::DebitRequest) -> Result<DebitCommand, Error> {
    let mode = match pb::DebitMode::try_from(req.mode) {
        Ok(pb::DebitMode::Unspecified | pb::DebitMode::Gate) => Mode::Gate,
        Ok(pb::DebitMode::Record) => Mode::Record,
        Err(_) => return Err(Error::invalid("mode", "unknown debit mode")),
    };
    Ok(DebitCommand {
        account: account("account_id", &req.account_id)?,
        lines: lines(&req.meter, req.amount_credits, &req.usage, false)?,
        mode,
        key: key(&req.idempotency_key)?,
        attributes: attributes(req.attributes)?,
        subsidy: subsidy(req.subsidy)?,
    })
}

pub fn reserve(req: pb::ReserveRequest) -> Result<ReserveCommand, Error> {
    if !(HOLD_TTL_MIN_MS..=HOLD_TTL_MAX_MS).contains(&req.ttl_ms) {
        return Err(Error::invalid("ttl_ms", format!("must be between {HOLD_TTL_MIN_MS} and {HOLD_TTL_MAX_MS}")));
    }
    Ok(ReserveCommand {
        account: account("account_id", &req.account_id)?,
        lines: lines(&req.meter, req.amount_credits, &req.usage, false)?,
        ttl_ms: req.ttl_ms,
        key: key(&req.idempotency_key)?,
        attributes: attributes(req.attributes)?,
        subsidy: subsidy(req.subsidy)?,
    })
}

pub fn commit(req: pb::CommitRequest) -> Result<CommitCommand, Error> {
    let actual = if req.actual.is_empty() {
        Actual::Single(non_negative("actual_credits", req.actual_credits)?)
    } else if req.actual_credits != 0 {
        return Err(Error::invalid("actual", "give either actual_credits or actual, not both"));
    } else {
        Actual::PerMeter(lines("", 0, &req.actual, true)?)
    };
    Ok(CommitCommand { hold_id: uuid("hold_id", &req.hold_id)?, actual })
}

pub fn release(req: pb::ReleaseRequest) -> Result<Uuid, Error> {
    uuid("hold_id", &req.hold_id)
}

/// A request's ask for subsidy: a pool, and optionally whose daily budget counts.
fn subsidy(req: Option<pb::SubsidyRequest>) -> Result<Option<SubsidyAsk>, Error> {
    let Some(req) = req else { return Ok(None) };
    let pool = PoolId::parse(&req.pool_id).map_err(|e| Error::invalid("subsidy.pool_id", e))?;
    let identity = match req.identity.as_str() {
        "" => None,
        raw => Some(Identity::parse(raw).map_err(|e| Error::invalid("subsidy.identity", e))?),
    };
    Ok(Some(SubsidyAsk { pool, identity }))
}

pub fn refund(req: pb::RefundRequest) -> Result<RefundCommand, Error> {
    Ok(RefundCommand {
        entry_id: uuid("entry_id", &req.entry_id)?,
        amount_credits: positive("amount_credits", req.amount_credits)?,
        key: key(&req.idempotency_key)?,
    })
}

pub fn plan(req: pb::UpsertPlanRequest) -> Result<PlanRecord, Error> {
    let plan = req.plan.ok_or_else(|| Error::invalid("plan", "is required"))?;
    if plan.meters.len() > PLAN_METERS_MAX {
        return Err(Error::invalid("plan.meters", format!("at most {PLAN_METERS_MAX} meters")));
    }
    if plan.trial_days > 366 {
        return Err(Error::invalid("plan.trial_days", "must be at most 366"));
    }
    let scope = match pb::PlanScope::try_from(plan.scope) {
        Ok(pb::PlanScope::Unspecified | pb::PlanScope::User) => allot_domain::plan::Scope::User,
        Ok(pb::PlanScope::Org) => allot_domain::plan::Scope::Org,
        Err(_) => return Err(Error::invalid("plan.scope", "unknown scope")),
    };
    let mut meters: Vec<(Meter, MeterTerms)> = Vec::with_capacity(plan.meters.len());
    for (i, m) in plan.meters.iter().enumerate() {
        let name = meter(&format!("plan.meters[{i}].meter"), &m.meter)?;
        if meters.iter().any(|(existing, _)| *existing == name) {
            return Err(Error::invalid(format!("plan.meters[{i}].meter"), "listed twice"));
        }
        let allowance_credits = m.allowance_credits.map(|a| non_negative(&format!("plan.meters[{i}].allowance_credits"), a)).transpose()?;
        let bounded = |field: &str, v: i64| {
            if (0..=MAX_AMOUNT_CREDITS).contains(&v) {
                Ok(v)
            } else {
                Err(Error::invalid(format!("plan.meters[{i}].{field}"), format!("must be between 0 and {MAX_AMOUNT_CREDITS}")))
            }
        };
        let policy = MeterPolicy {
            allowance_credits,
            rollover_cap_credits: bounded("rollover_cap_credits", m.rollover_cap_credits)?,
            debt_limit_credits: bounded("debt_limit_credits", m.debt_limit_credits)?,
        };
        let rate = match m.rate_limit_per_minute {
            None if m.rate_burst.is_some() => return Err(Error::invalid(format!("plan.meters[{i}].rate_burst"), "needs rate_limit_per_minute")),
            None => None,
            Some(limit) => {
                if !(1..=RATE_LIMIT_PER_MINUTE_MAX).contains(&limit) {
                    return Err(Error::invalid(
                        format!("plan.meters[{i}].rate_limit_per_minute"),
                        format!("must be between 1 and {RATE_LIMIT_PER_MINUTE_MAX}"),
                    ));
                }
                let burst = m.rate_burst.unwrap_or(limit);
                if !(1..=RATE_LIMIT_PER_MINUTE_MAX).contains(&burst) {
                    return Err(Error::invalid(format!("plan.meters[{i}].rate_burst"), format!("must be between 1 and {RATE_LIMIT_PER_MINUTE_MAX}")));
                }
                let fail_open = match pb::RateFailurePolicy::try_from(m.rate_failure_policy) {
                    Ok(pb::RateFailurePolicy::Unspecified | pb::RateFailurePolicy::FailOpen) => true,
                    Ok(pb::RateFailurePolicy::FailClosed) => false,
                    Err(_) => return Err(Error::invalid(format!("plan.meters[{i}].rate_failure_policy"), "unknown policy")),
                };
                Some(RateCap { limit_per_minute: limit, burst, fail_open })
            }
        };
        let member_cap_credits = m.member_cap_credits.map(|c| bounded("member_cap_credits", c)).transpose()?;
        let trial_grant_credits = bounded("trial_grant_credits", m.trial_grant_credits)?;
        meters.push((name, MeterTerms { policy, rate, member_cap_credits, trial_grant_credits }));
    }
    Ok(PlanRecord {
        id: plan_id("plan.plan_id", &plan.plan_id)?,
        tier: text("plan.tier", &plan.tier)?,
        name: text("plan.name", &plan.name)?,
        trial_days: plan.trial_days,
        is_free_default: plan.is_free_default,
        scope,
        meters,
        trial_keeps_credits: plan.trial_keeps_credits,
        trial_ending_notice_ms: match plan.trial_ending_notice_ms {
            None => 3 * 86_400_000,
            Some(ms) if (0..=30 * 86_400_000).contains(&ms) => ms,
            Some(_) => return Err(Error::invalid("plan.trial_ending_notice_ms", "must be between 0 and 30 days")),
        },
        updated_at: OffsetDateTime::UNIX_EPOCH,
    })
}

pub fn subscription(req: pb::UpsertSubscriptionRequest) -> Result<SubscriptionRecord, Error> {
    let sub = req.subscription.ok_or_else(|| Error::invalid("subscription", "is required"))?;
    let status = match pb::SubscriptionStatus::try_from(sub.status) {
        Ok(pb::SubscriptionStatus::Active) => SubscriptionStatus::Active,
        Ok(pb::SubscriptionStatus::Trialing) => SubscriptionStatus::Trialing,
        Ok(pb::SubscriptionStatus::PastDue) => SubscriptionStatus::PastDue,
        Ok(pb::SubscriptionStatus::Canceled) => SubscriptionStatus::Canceled,
        Ok(pb::SubscriptionStatus::Unpaid) => SubscriptionStatus::Unpaid,
        Ok(pb::SubscriptionStatus::Incomplete) => SubscriptionStatus::Incomplete,
        Ok(pb::SubscriptionStatus::Unspecified) | Err(_) => return Err(Error::invalid("subscription.status", "must be a known status")),
    };
    let start = required_timestamp("subscription.current_period_start", sub.current_period_start.as_ref())?;
    let end = required_timestamp("subscription.current_period_end", sub.current_period_end.as_ref())?;
    if end <= start {
        return Err(Error::invalid("subscription.current_period_end", "must be after current_period_start"));
    }
    if end - start > time::Duration::days(400) {
        return Err(Error::invalid("subscription.current_period_end", "a period lasts at most 400 days"));
    }
    Ok(SubscriptionRecord {
        account_id: account("subscription.account_id", &sub.account_id)?,
        plan_id: plan_id("subscription.plan_id", &sub.plan_id)?,
        status,
        current_period_start: start,
        current_period_end: end,
        cancel_at_period_end: sub.cancel_at_period_end,
        updated_at: OffsetDateTime::UNIX_EPOCH,
    })
}

pub fn grant(req: pb::GrantCreditsRequest) -> Result<GrantCommand, Error> {
    let kind = match pb::GrantKind::try_from(req.kind) {
        Ok(pb::GrantKind::Purchased) => GrantKind::Purchased,
        Ok(pb::GrantKind::Promotional) => GrantKind::Promotional,
        Ok(pb::GrantKind::Unspecified) | Err(_) => return Err(Error::invalid("kind", "must be PURCHASED or PROMOTIONAL")),
    };
    Ok(GrantCommand {
        account: account("account_id", &req.account_id)?,
        meter: meter("meter", &req.meter)?,
        amount_credits: positive("amount_credits", req.amount_credits)?,
        kind,
        priority: req.priority,
        expires_at: req.expires_at.as_ref().map(|t| timestamp("expires_at", t)).transpose()?,
        key: key(&req.idempotency_key)?,
    })
}

/// An account and its org (`None` = none).
pub fn account_record(req: pb::Account) -> Result<(AccountId, Option<AccountId>), Error> {
    let id = account("account_id", &req.account_id)?;
    let org = if req.org_id.is_empty() { None } else { Some(account("org_id", &req.org_id)?) };
    if org.as_ref() == Some(&id) {
        return Err(Error::invalid("org_id", "an account cannot be its own org"));
    }
    Ok((id, org))
}

/// A trial request: account, plan and fingerprint (16..=256 bytes, no control characters).
pub fn start_trial(req: pb::StartTrialRequest) -> Result<(AccountId, PlanId, String), Error> {
    if !(16..=256).contains(&req.fingerprint.len()) || req.fingerprint.chars().any(char::is_control) {
        return Err(Error::invalid("fingerprint", "must be 16 to 256 bytes without control characters"));
    }
    Ok((account("account_id", &req.account_id)?, plan_id("plan_id", &req.plan_id)?, req.fingerprint))
}

/// A breakdown request: account, meter, attribute key and optional instant.
pub fn breakdown(req: pb::GetUsageBreakdownRequest) -> Result<(AccountId, Meter, String, Option<OffsetDateTime>), Error> {
    let group_by = req.group_by;
    if group_by.is_empty()
        || group_by.len() > ATTRIBUTE_KEY_LEN_MAX
        || !group_by.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(Error::invalid("group_by", format!("an attribute key: 1 to {ATTRIBUTE_KEY_LEN_MAX} bytes of a-z 0-9 _ . -")));
    }
    Ok((
        account("account_id", &req.account_id)?,
        meter("meter", &req.meter)?,
        group_by,
        req.period_at.as_ref().map(|t| timestamp("period_at", t)).transpose()?,
    ))
}

/// A ledger page token: the position after which to continue ("" = from the start).
pub fn ledger_token(raw: &str) -> Result<i64, Error> {
    if raw.is_empty() {
        return Ok(0);
    }
    raw.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| Error::invalid("page_token", "not a token this service issued"))
}

/// A plan page token: the last plan id of the previous page.
pub fn plan_token(raw: &str) -> Result<String, Error> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    plan_id("page_token", raw).map(|id| id.as_str().to_owned())
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

    #[test]
    fn bad_debits_name_their_field() {
        let good = pb::DebitRequest {
            account_id: "u1".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            idempotency_key: "k1".into(),
            ..Default::default()
        };
        let line = |m: &str, a| pb::MeterAmount { meter: m.into(), amount_credits: a, ..Default::default() };
        let many = |lines: Vec<pb::MeterAmount>| pb::DebitRequest { meter: String::new(), amount_credits: 0, usage: lines, ..good.clone() };
        let attrs = |k: &str, v: &str| pb::DebitRequest { attributes: [(k.to_owned(), v.to_owned())].into_iter().collect(), ..good.clone() };
        assert!(debit(good.clone()).is_ok());
        let cases = [
            (pb::DebitRequest { account_id: String::new(), ..good.clone() }, "account_id"),
            (pb::DebitRequest { meter: "a b".into(), ..good.clone() }, "meter"),
            (pb::DebitRequest { amount_credits: 0, ..good.clone() }, "amount_credits"),
            (pb::DebitRequest { amount_credits: i64::MAX, ..good.clone() }, "amount_credits"),
            (pb::DebitRequest { idempotency_key: String::new(), ..good.clone() }, "idempotency_key"),
            (pb::DebitRequest { mode: 99, ..good.clone() }, "mode"),
            (pb::DebitRequest { usage: vec![line("a", 1)], ..good.clone() }, "usage"),
            (many(vec![line("a", 1), line("a", 2)]), "usage[1].meter"),
            (many(vec![line("a", 1), line("b", 0)]), "usage[1].amount_credits"),
            (many((0..17).map(|i| line(&format!("m{i}"), 1)).collect()), "usage"),
            (attrs("Model", "x"), "attributes[Model]"),
            (attrs("model", &"x".repeat(ATTRIBUTE_VALUE_LEN_MAX + 1)), "attributes[model]"),
        ];
        assert_eq!(debit(many(vec![line("b", 1), line("a", 2)])).expect("valid").lines.len(), 2);
        for (req, field) in cases {
            assert_eq!(field_of(debit(req).expect_err("invalid")), field);
        }
    }

    #[test]
    fn hold_ttls_are_bounded() {
        let req = |ttl_ms| pb::ReserveRequest {
            account_id: "u".into(),
            meter: "m".into(),
            amount_credits: 1,
            ttl_ms,
            idempotency_key: "k".into(),
            ..Default::default()
        };
        assert!(reserve(req(HOLD_TTL_MIN_MS)).is_ok());
        assert!(reserve(req(HOLD_TTL_MAX_MS)).is_ok());
        assert_eq!(field_of(reserve(req(HOLD_TTL_MIN_MS - 1)).expect_err("short")), "ttl_ms");
        assert_eq!(field_of(reserve(req(HOLD_TTL_MAX_MS + 1)).expect_err("long")), "ttl_ms");
    }

    #[test]
    fn page_sizes_and_tokens() {
        assert_eq!(page_size(0).ok(), Some(PAGE_SIZE_DEFAULT));
        assert_eq!(page_size(PAGE_SIZE_MAX).ok(), Some(PAGE_SIZE_MAX));
        assert!(page_size(PAGE_SIZE_MAX + 1).is_err());
        assert_eq!(ledger_token("").ok(), Some(0));
        assert_eq!(ledger_token("42").ok(), Some(42));
        assert!(ledger_token("-1").is_err());
        assert!(ledger_token("x").is_err());
    }
}
