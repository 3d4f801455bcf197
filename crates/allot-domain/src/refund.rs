//! Refunds: credit goes back to the buckets a charge took it from, in reverse waterfall order
//! (debt first, then grants, rollover, allowance). Partial refunds continue where earlier ones
//! stopped, so refunds of one charge never exceed it.
//!
//! Allowance from a period that has since closed cannot return to that period; it is credited as
//! rollover. Credit returned to a grant that has expired expires again at once, in its own effect.

use time::OffsetDateTime;

use crate::ledger::{merge_portions, Bucket, Effect, EntryKind, Portion};
use crate::meter::MeterState;
use crate::period::Period;

/// Why a refund cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("refund exceeds what is left to refund ({refundable_credits} credits)")]
    ExceedsRefundable { refundable_credits: i64 },
    #[error("the original entry is not a charge")]
    NotACharge,
    #[error("grant {0} of the original charge was not loaded")]
    GrantMissing(uuid::Uuid),
}

/// The charge being refunded, as recorded in its ledger entry.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// The charge's breakdown (negative portions).
    pub breakdown: &'a [Portion],
    /// The period the charge was made in.
    pub period: Period,
    /// The sum of earlier refunds of this charge.
    pub refunded_credits: i64,
}

/// Returns `amount_credits` of `original` to its buckets. The first effect is the refund; a
/// second, when present, expires what went back to an already expired grant.
pub fn refund(state: &mut MeterState, original: Original<'_>, amount_credits: i64, now: OffsetDateTime) -> Result<Vec<Effect>, Error> {
    assert!(amount_credits > 0, "refunds are positive");
    if original.breakdown.iter().any(|p| p.delta_credits > 0) {
        return Err(Error::NotACharge);
    }
    let charged: i64 = original.breakdown.iter().map(|p| -p.delta_credits).sum();
    let refundable_credits = charged - original.refunded_credits;
    if amount_credits > refundable_credits {
        return Err(Error::ExceedsRefundable { refundable_credits: refundable_credits.max(0) });
    }

    // Walk the charge backwards, skipping what earlier refunds already returned.
    let mut skip = original.refunded_credits;
    let mut left = amount_credits;
    let mut portions = Vec::new();
    let mut expired = Vec::new();
    for portion in original.breakdown.iter().rev() {
        let mut part = -portion.delta_credits;
        let skipped = skip.min(part);
        skip -= skipped;
        part -= skipped;
        let take = part.min(left);
        if take == 0 {
            continue;
        }
        left -= take;
        match portion.bucket {
            Bucket::Debt => {
                let repaid = state.debt_credits.min(take);
                state.debt_credits -= repaid;
                state.rollover_credits += take - repaid;
                portions.push(Portion { bucket: Bucket::Debt, delta_credits: repaid });
                portions.push(Portion { bucket: Bucket::Rollover, delta_credits: take - repaid });
            }
            Bucket::Grant { id, .. } => {
                let grant = state.grant_mut(id).ok_or(Error::GrantMissing(id))?;
                let has_expired = grant.expires_at.is_some_and(|at| at <= now);
                grant.remaining_credits += take;
                portions.push(Portion { bucket: portion.bucket, delta_credits: take });
                if has_expired {
                    grant.remaining_credits -= take;
                    expired.push(Portion { bucket: portion.bucket, delta_credits: -take });
                }
            }
            Bucket::Rollover => {
                state.rollover_credits += take;
                portions.push(Portion { bucket: Bucket::Rollover, delta_credits: take });
            }
            Bucket::Allowance => {
                let same_period = original.period == state.period;
                let back = if same_period { state.allowance_used_credits.min(take) } else { 0 };
                state.allowance_used_credits -= back;
                state.rollover_credits += take - back;
                portions.push(Portion { bucket: Bucket::Allowance, delta_credits: back });
                portions.push(Portion { bucket: Bucket::Rollover, delta_credits: take - back });
            }
        }
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "refundable credit covers the refund");

    let mut effects = vec![Effect::from_portions(EntryKind::Refund, merge_portions(portions))];
    assert_eq!(effects[0].delta_credits, amount_credits, "the breakdown sums to the refund");
    if !expired.is_empty() {
        effects.push(Effect::from_portions(EntryKind::GrantExpiry, expired));
    }
    state.assert_invariants();
    Ok(effects)
}

#[cfg(test)]
mod tests;
