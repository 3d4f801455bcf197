//! Housekeeping that must happen before any decision on a meter: grants past their expiry lose
//! their credit, and a period that has ended closes into the next one (unused allowance rolls
//! over up to the plan's cap, netted against debt). Both are proposed as ledger effects, so the
//! ledger always explains the balance.

use time::OffsetDateTime;

use crate::ledger::{merge_portions, Bucket, Effect, EntryKind, Portion};
use crate::limits::MAX_PERIOD_STEPS;
use crate::meter::MeterState;
use crate::period::{period_containing, Period};
use crate::plan::MeterPolicy;

/// Brings `state` up to `now`: expires grants, then rolls periods forward until one contains
/// `now`. `target` is the period in force at `now` (from the subscription), `anchor` the monthly
/// anchor for any periods skipped in between. Returns at most one effect per expired grant and
/// one period-roll effect.
pub fn advance(state: &mut MeterState, policy: &MeterPolicy, anchor: OffsetDateTime, target: Period, now: OffsetDateTime) -> Vec<Effect> {
    assert!(target.contains(now), "target period must contain now");
    let mut effects = expire_grants(state, now);
    // A billing cycle that restarted early (e.g. an upgrade that resets the anchor) closes the
    // current period where the new one begins.
    if target.start > state.period.start && target.start < state.period.end {
        state.period.end = target.start;
    }
    let mut roll = Vec::new();
    let mut steps = 0;
    while state.period.end <= now {
        let next = if steps >= MAX_PERIOD_STEPS || target.start <= state.period.end {
            target
        } else {
            let following = period_containing(anchor, state.period.end);
            Period { start: state.period.end, end: following.end.min(target.start) }
        };
        roll.extend(close_period(state, policy, next));
        steps += 1;
    }
    if steps > 0 {
        effects.push(Effect::from_portions(EntryKind::PeriodRoll, merge_portions(roll)));
    } else if state.allowance_credits != policy.allowance_credits {
        effects.push(change_plan(state, policy));
    }
    state.assert_invariants();
    effects
}

/// The plan changed mid-period: the new allowance applies at once and the use so far counts
/// against it (a downgrade below the use leaves nothing of the allowance, and no debt).
fn change_plan(state: &mut MeterState, policy: &MeterPolicy) -> Effect {
    let left_before = state.allowance_left_credits().unwrap_or(0);
    state.allowance_credits = policy.allowance_credits;
    let left_after = state.allowance_left_credits().unwrap_or(0);
    Effect::from_portions(EntryKind::PlanChange, vec![Portion { bucket: Bucket::Allowance, delta_credits: left_after - left_before }])
}

/// A meter's first state in `period`, and the effect that records its opening allowance (none
/// when the allowance is unlimited or zero).
pub fn open(policy: &MeterPolicy, period: Period) -> (MeterState, Option<Effect>) {
    let state = MeterState::opening(period, policy.allowance_credits);
    let effect = match policy.allowance_credits {
        Some(allowance) if allowance > 0 => {
            Some(Effect::from_portions(EntryKind::PeriodRoll, vec![Portion { bucket: Bucket::Allowance, delta_credits: allowance }]))
        }
        _ => None,
    };
    (state, effect)
}

fn expire_grants(state: &mut MeterState, now: OffsetDateTime) -> Vec<Effect> {
    let mut effects = Vec::new();
    for grant in &mut state.grants {
        if grant.remaining_credits > 0 && !grant.is_live(now) {
            let portion = Portion { bucket: grant.bucket(), delta_credits: -grant.remaining_credits };
            grant.remaining_credits = 0;
            effects.push(Effect::from_portions(EntryKind::GrantExpiry, vec![portion]));
        }
    }
    effects
}

/// Closes the current period and opens `next`; returns the portions of the change.
fn close_period(state: &mut MeterState, policy: &MeterPolicy, next: Period) -> Vec<Portion> {
    let unused = state.allowance_left_credits().unwrap_or(0);
    let carried = (i128::from(unused) + i128::from(state.rollover_credits)).min(i128::from(policy.rollover_cap_credits.max(0)));
    let net_carry = carried - i128::from(state.debt_credits);
    let rollover_after = i64::try_from(net_carry.max(0)).unwrap_or(i64::MAX);
    let debt_after = i64::try_from((-net_carry).max(0)).unwrap_or(i64::MAX);
    let allowance_after = policy.allowance_credits;

    let portions = vec![
        Portion { bucket: Bucket::Allowance, delta_credits: allowance_after.unwrap_or(0) - unused },
        Portion { bucket: Bucket::Rollover, delta_credits: rollover_after - state.rollover_credits },
        Portion { bucket: Bucket::Debt, delta_credits: state.debt_credits - debt_after },
    ];
    state.period = next;
    state.allowance_credits = allowance_after;
    state.allowance_used_credits = 0;
    state.rollover_credits = rollover_after;
    state.debt_credits = debt_after;
    portions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::GrantKind;
    use crate::meter::Grant;
    use crate::period::CALENDAR_ANCHOR;
    use time::macros::datetime;
    use uuid::Uuid;

    const POLICY: MeterPolicy = MeterPolicy { allowance_credits: Some(100), rollover_cap_credits: 150, debt_limit_credits: 50 };

    fn january() -> Period {
        Period { start: datetime!(2025-01-01 00:00 UTC), end: datetime!(2025-02-01 00:00 UTC) }
    }

    fn state(used: i64, rollover: i64, debt: i64) -> MeterState {
        MeterState { allowance_used_credits: used, rollover_credits: rollover, debt_credits: debt, ..MeterState::opening(january(), Some(100)) }
    }

    /// (used, rollover, debt, months later) → (rollover after, debt after)
    #[test]
    fn period_roll_carries_unused_allowance_capped_and_nets_debt() {
        let cases = [
            ((0, 0, 0, 1), (100, 0)),   // all unused carried
            ((0, 100, 0, 1), (150, 0)), // capped at 150
            ((100, 0, 0, 1), (0, 0)),   // nothing left
            ((100, 0, 30, 1), (0, 30)), // debt carried
            ((60, 0, 30, 1), (10, 0)),  // unused 40 pays the debt of 30
            ((0, 0, 0, 3), (150, 0)),   // idle months accumulate up to the cap
            ((100, 0, 30, 2), (70, 0)), // the idle month pays the debt back
        ];
        for ((used, rollover, debt, months), (rollover_after, debt_after)) in cases {
            let mut s = state(used, rollover, debt);
            let now = crate::period::add_months(datetime!(2025-01-15 00:00 UTC), months);
            let target = period_containing(CALENDAR_ANCHOR, now);
            let net_before = s.net_credits(now).unwrap();
            let effects = advance(&mut s, &POLICY, CALENDAR_ANCHOR, target, now);
            assert_eq!((s.rollover_credits, s.debt_credits), (rollover_after, debt_after), "case {used},{rollover},{debt},{months}");
            assert_eq!(s.period, target);
            assert_eq!(s.allowance_used_credits, 0);
            let delta: i64 = effects.iter().map(|e| e.delta_credits).sum();
            assert_eq!(i128::from(delta), s.net_credits(now).unwrap() - net_before, "ledger explains the change");
        }
    }

    #[test]
    fn nothing_happens_inside_the_period() {
        let mut s = state(10, 5, 0);
        let before = s.clone();
        let now = datetime!(2025-01-31 23:59:59 UTC);
        let effects = advance(&mut s, &POLICY, CALENDAR_ANCHOR, january(), now);
        assert!(effects.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn plan_changes_apply_mid_period_and_keep_the_use() {
        // (allowance before, used, allowance after) → (left after, delta)
        let cases = [
            ((Some(100), 30, Some(1_000)), (Some(970), 900)), // upgrade
            ((Some(1_000), 300, Some(100)), (Some(0), -700)), // downgrade below the use
            ((Some(100), 30, None), (None, -70)),             // to unlimited: the ledger stops counting
            ((None, 500, Some(100)), (Some(0), 0)),           // from unlimited
        ];
        for ((before, used, after), (left, delta)) in cases {
            let mut s = MeterState { allowance_used_credits: used, ..MeterState::opening(january(), before) };
            let policy = MeterPolicy { allowance_credits: after, ..POLICY };
            let effects = advance(&mut s, &policy, CALENDAR_ANCHOR, january(), datetime!(2025-01-20 00:00 UTC));
            assert_eq!(s.allowance_left_credits(), left, "{before:?} → {after:?}");
            assert_eq!(s.allowance_used_credits, used, "the use is kept");
            assert_eq!(effects.iter().map(|e| e.delta_credits).sum::<i64>(), delta);
        }
    }

    #[test]
    fn an_early_new_cycle_closes_the_period_where_it_begins() {
        let mut s = state(40, 0, 0);
        let upgrade_at = datetime!(2025-01-20 00:00 UTC);
        let target = Period { start: upgrade_at, end: datetime!(2025-02-20 00:00 UTC) };
        let effects = advance(&mut s, &POLICY, upgrade_at, target, upgrade_at);
        assert_eq!(s.period, target);
        assert_eq!((s.allowance_used_credits, s.rollover_credits), (0, 60));
        assert_eq!(effects.len(), 1);
    }

    #[test]
    fn expired_grants_lose_their_credit_in_the_ledger() {
        let mut s = state(0, 0, 0);
        s.grants.push(Grant {
            id: Uuid::from_u128(7),
            kind: GrantKind::Promotional,
            remaining_credits: 40,
            priority: 0,
            expires_at: Some(datetime!(2025-01-10 00:00 UTC)),
            created_at: datetime!(2024-12-01 00:00 UTC),
        });
        let at_expiry = datetime!(2025-01-10 00:00 UTC);
        let effects = advance(&mut s, &POLICY, CALENDAR_ANCHOR, january(), at_expiry);
        assert_eq!(effects.len(), 1);
        assert_eq!(effects[0].kind, EntryKind::GrantExpiry);
        assert_eq!(effects[0].delta_credits, -40);
        assert_eq!(s.grants[0].remaining_credits, 0);
    }
}
