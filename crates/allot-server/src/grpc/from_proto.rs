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
use crate::ids::{AccountId, IdempotencyKey, Meter, PlanId};
use crate::repo::plans::PlanRecord;
use crate::repo::subscriptions::SubscriptionRecord;
use crate::service::admin::{GrantCommand, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use crate::service::credits::{CheckCommand, CommitCommand, DebitCommand, RefundCommand, ReserveCommand};

/// Longest free-text field (plan names, tiers).
pub const TEXT_LEN_MAX: usize = 200;
/// Most meters one plan may list.
pub const PLAN_METERS_MAX: usize = 100;

pub fn account(field: &str, raw: &str) -> Result<AccountId, Error> {
    AccountId::parse(raw).map_err(|e| Error::invalid(field, e))
}

pub fn meter(field: &str, raw: &str) -> Result<Meter, Error> {
    Meter::parse(raw).map_err(|e| Error::invalid(field, e))
}

pub fn plan_id(field: &str, raw: &str) -> Result<PlanId, Error> {
    PlanId::parse(raw).map_err(|e| Error::invalid(field, e))
}

fn key(raw: &str) -> Result<IdempotencyKey, Error> {
    IdempotencyKey::parse(raw).map_err(|e| Error::invalid("idempotency_key", e))
}

fn positive(field: &str, amount: i64) -> Result<i64, Error> {
    positive_amount(amount).map_err(|e| Error::invalid(field, e))
}

fn non_negative(field: &str, amount: i64) -> Result<i64, Error> {
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

pub fn check(req: pb::CheckRequest) -> Result<CheckCommand, Error> {
    Ok(CheckCommand {
        account: account("account_id", &req.account_id)?,
        meter: meter("meter", &req.meter)?,
        amount_credits: non_negative("amount_credits", req.amount_credits)?,
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
        meter: meter("meter", &req.meter)?,
        amount_credits: positive("amount_credits", req.amount_credits)?,
        mode,
        key: key(&req.idempotency_key)?,
    })
}

pub fn reserve(req: pb::ReserveRequest) -> Result<ReserveCommand, Error> {
    if !(HOLD_TTL_MIN_MS..=HOLD_TTL_MAX_MS).contains(&req.ttl_ms) {
        return Err(Error::invalid("ttl_ms", format!("must be between {HOLD_TTL_MIN_MS} and {HOLD_TTL_MAX_MS}")));
    }
    Ok(ReserveCommand {
        account: account("account_id", &req.account_id)?,
        meter: meter("meter", &req.meter)?,
        amount_credits: positive("amount_credits", req.amount_credits)?,
        ttl_ms: req.ttl_ms,
        key: key(&req.idempotency_key)?,
    })
}

pub fn commit(req: pb::CommitRequest) -> Result<CommitCommand, Error> {
    Ok(CommitCommand { hold_id: uuid("hold_id", &req.hold_id)?, actual_credits: non_negative("actual_credits", req.actual_credits)? })
}

pub fn release(req: pb::ReleaseRequest) -> Result<Uuid, Error> {
    uuid("hold_id", &req.hold_id)
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
    let mut meters: Vec<(Meter, MeterPolicy)> = Vec::with_capacity(plan.meters.len());
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
        meters.push((name, policy));
    }
    Ok(PlanRecord {
        id: plan_id("plan.plan_id", &plan.plan_id)?,
        tier: text("plan.tier", &plan.tier)?,
        name: text("plan.name", &plan.name)?,
        trial_days: plan.trial_days,
        is_free_default: plan.is_free_default,
        meters,
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
        let good = pb::DebitRequest { account_id: "u1".into(), meter: "tokens".into(), amount_credits: 5, idempotency_key: "k1".into(), mode: 0 };
        assert!(debit(good.clone()).is_ok());
        let cases = [
            (pb::DebitRequest { account_id: String::new(), ..good.clone() }, "account_id"),
            (pb::DebitRequest { meter: "a b".into(), ..good.clone() }, "meter"),
            (pb::DebitRequest { amount_credits: 0, ..good.clone() }, "amount_credits"),
            (pb::DebitRequest { amount_credits: i64::MAX, ..good.clone() }, "amount_credits"),
            (pb::DebitRequest { idempotency_key: String::new(), ..good.clone() }, "idempotency_key"),
            (pb::DebitRequest { mode: 99, ..good.clone() }, "mode"),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(debit(req).expect_err("invalid")), field);
        }
    }

    #[test]
    fn hold_ttls_are_bounded() {
        let req = |ttl_ms| pb::ReserveRequest { account_id: "u".into(), meter: "m".into(), amount_credits: 1, ttl_ms, idempotency_key: "k".into() };
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
