//! The debit waterfall and the decisions built on it: gate debits, records of usage, holds and
//! their commits.
//!
//! Waterfall, in this order: the current period's allowance → rollover → live grants (priority
//! high first, then soonest expiry, then oldest) → debt (records only, down to the plan's floor).

use time::OffsetDateTime;

use crate::ledger::{Bucket, Effect, EntryKind, Portion};
use crate::meter::MeterState;
use crate::plan::MeterPolicy;

/// How a debit treats a shortfall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deny unless the amount is available after holds. Never creates debt.
    Gate,
    /// Usage that already happened: may create debt down to the plan's floor.
    Record,
}

/// Why a debit or hold is refused. An expected outcome, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denial {
    /// The period's allowance is spent and nothing else can pay.
    QuotaExhausted,
    /// Some credit is left, but not enough after holds.
    InsufficientCredit,
    /// A record would take the net balance below minus the debt limit.
    DebtLimitReached,
}

/// Would `amount_credits` be allowed now? Mutates nothing. An amount of 0 is always allowed.
pub fn check(state: &MeterState, policy: &MeterPolicy, amount_credits: i64, mode: Mode, now: OffsetDateTime) -> Result<(), Denial> {
    assert!(amount_credits >= 0, "amounts are validated before the rules");
    if amount_credits == 0 {
        return Ok(());
    }
    let amount = i128::from(amount_credits);
    match mode {
        Mode::Gate => match state.available_credits(now) {
            Some(available) if available < amount => Err(gate_denial(state, now)),
            _ => Ok(()),
        },
        Mode::Record => match state.net_credits(now) {
            Some(net) if net - amount < -i128::from(policy.debt_limit_credits.max(0)) => Err(Denial::DebtLimitReached),
            _ => Ok(()),
        },
    }
}

fn gate_denial(state: &MeterState, now: OffsetDateTime) -> Denial {
    let quota_spent = matches!(state.allowance_credits, Some(a) if a > 0) && state.allowance_left_credits() == Some(0);
    let nothing_else = state.rollover_credits == 0 && state.grants_credits(now) == 0;
    if quota_spent && nothing_else {
        Denial::QuotaExhausted
    } else {
        Denial::InsufficientCredit
    }
}

/// Charges `amount_credits` through the waterfall, or changes nothing and says why not.
pub fn debit(
    state: &mut MeterState,
    policy: &MeterPolicy,
    amount_credits: i64,
    mode: Mode,
    kind: EntryKind,
    now: OffsetDateTime,
) -> Result<Effect, Denial> {
    assert!(amount_credits > 0, "debits are positive");
    check(state, policy, amount_credits, mode, now)?;
    let net_before = state.net_credits(now);
    let mut left = amount_credits;
    let mut portions = Vec::new();

    let from_allowance = state.allowance_left_credits().map_or(left, |a| a.min(left));
    state.allowance_used_credits += from_allowance;
    left -= from_allowance;
    portions.push(Portion { bucket: Bucket::Allowance, delta_credits: -from_allowance });

    let from_rollover = state.rollover_credits.min(left);
    state.rollover_credits -= from_rollover;
    left -= from_rollover;
    portions.push(Portion { bucket: Bucket::Rollover, delta_credits: -from_rollover });

    let order: Vec<_> = state.grants_in_waterfall_order(now).iter().map(|g| g.id).collect();
    for id in order {
        if left == 0 {
            break;
        }
        if let Some(grant) = state.grant_mut(id) {
            let take = grant.remaining_credits.min(left);
            grant.remaining_credits -= take;
            left -= take;
            portions.push(Portion { bucket: grant.bucket(), delta_credits: -take });
        }
    }

    if left > 0 {
        assert_eq!(mode, Mode::Record, "a gate that passed its check is covered by credit");
        state.debt_credits += left;
        portions.push(Portion { bucket: Bucket::Debt, delta_credits: -left });
    }

    let effect = Effect::from_portions(kind, portions);
    assert_eq!(effect.delta_credits, -amount_credits, "the breakdown sums to the amount");
    if let (Some(before), Some(after)) = (net_before, state.net_credits(now)) {
        assert_eq!(after, before - i128::from(amount_credits), "net moves by the amount");
        if mode == Mode::Record {
            assert!(after >= -i128::from(policy.debt_limit_credits), "never below the floor");
        }
    }
    state.assert_invariants();
    Ok(effect)
}

/// Places a hold of `amount_credits` if that much is available (a gate check).
pub fn reserve(state: &mut MeterState, policy: &MeterPolicy, amount_credits: i64, now: OffsetDateTime) -> Result<(), Denial> {
    assert!(amount_credits > 0, "holds are positive");
    check(state, policy, amount_credits, Mode::Gate, now)?;
    state.held_credits += amount_credits;
    Ok(())
}

/// Settles a live hold of `held_credits` by charging `actual_credits` as a record of usage (the
/// hold already secured up to its amount; anything beyond may go into debt down to the floor).
/// Returns no effect when nothing is charged. On denial the hold stays in place.
pub fn commit(
    state: &mut MeterState,
    policy: &MeterPolicy,
    held_credits: i64,
    actual_credits: i64,
    now: OffsetDateTime,
) -> Result<Option<Effect>, Denial> {
    assert!(held_credits > 0 && actual_credits >= 0, "validated before the rules");
    assert!(state.held_credits >= held_credits, "the hold being committed is live");
    state.held_credits -= held_credits;
    if actual_credits == 0 {
        return Ok(None);
    }
    match debit(state, policy, actual_credits, Mode::Record, EntryKind::Commit, now) {
        Ok(effect) => Ok(Some(effect)),
        Err(denial) => {
            state.held_credits += held_credits;
            Err(denial)
        }
    }
}

#[cfg(test)]
mod tests;
