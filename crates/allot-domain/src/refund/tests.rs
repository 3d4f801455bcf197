//! Refund tables and properties: reverse order, bounds, closed periods, expired grants.

use proptest::prelude::*;
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::charge::{debit, Mode};
use crate::ledger::GrantKind;
use crate::meter::Grant;
use crate::plan::MeterPolicy;

const NOW: OffsetDateTime = datetime!(2025-01-15 12:00 UTC);
const POLICY: MeterPolicy = MeterPolicy { allowance_credits: Some(100), rollover_cap_credits: 0, debt_limit_credits: 100 };

fn period() -> Period {
    Period { start: datetime!(2025-01-01 00:00 UTC), end: datetime!(2025-02-01 00:00 UTC) }
}

fn state_with_grant(expires_at: Option<OffsetDateTime>) -> MeterState {
    let mut s = MeterState::opening(period(), Some(100));
    s.grants.push(Grant {
        id: Uuid::from_u128(1),
        kind: GrantKind::Promotional,
        remaining_credits: 50,
        priority: 0,
        expires_at,
        created_at: datetime!(2024-12-01 00:00 UTC),
    });
    s
}

#[test]
fn partial_refunds_walk_back_from_debt_to_allowance_and_stop_at_the_charge() {
    let mut s = state_with_grant(None);
    // 100 allowance + 50 grant + 30 debt.
    let charge = debit(&mut s, &POLICY, 180, Mode::Record, EntryKind::Debit, NOW).expect("allowed");
    let original = |refunded_credits| Original { breakdown: &charge.breakdown, period: period(), refunded_credits };

    let first = refund(&mut s, original(0), 40, NOW).expect("refundable");
    assert_eq!(
        first[0].breakdown,
        vec![
            Portion { bucket: Bucket::Debt, delta_credits: 30 },
            Portion { bucket: Bucket::Grant { id: Uuid::from_u128(1), kind: GrantKind::Promotional }, delta_credits: 10 },
        ]
    );
    assert_eq!((s.debt_credits, s.grants[0].remaining_credits), (0, 10));

    let second = refund(&mut s, original(40), 140, NOW).expect("refundable");
    assert_eq!(second[0].delta_credits, 140);
    assert_eq!((s.allowance_used_credits, s.grants[0].remaining_credits), (0, 50));

    assert_eq!(refund(&mut s, original(180), 1, NOW), Err(Error::ExceedsRefundable { refundable_credits: 0 }));
}

#[test]
fn allowance_of_a_closed_period_returns_as_rollover() {
    let mut s = MeterState::opening(period(), Some(100));
    let charge = debit(&mut s, &POLICY, 60, Mode::Gate, EntryKind::Debit, NOW).expect("allowed");
    let december = Period { start: datetime!(2024-12-01 00:00 UTC), end: datetime!(2025-01-01 00:00 UTC) };
    let effects = refund(&mut s, Original { breakdown: &charge.breakdown, period: december, refunded_credits: 0 }, 60, NOW).expect("ok");
    assert_eq!(effects[0].breakdown, vec![Portion { bucket: Bucket::Rollover, delta_credits: 60 }]);
    assert_eq!((s.allowance_used_credits, s.rollover_credits), (60, 60));
}

#[test]
fn credit_returned_to_an_expired_grant_expires_again() {
    let expiry = datetime!(2025-01-20 00:00 UTC);
    let mut s = MeterState { allowance_credits: Some(0), ..state_with_grant(Some(expiry)) };
    let charge = debit(&mut s, &POLICY, 20, Mode::Gate, EntryKind::Debit, NOW).expect("allowed");
    let later = datetime!(2025-01-25 00:00 UTC);
    let effects = refund(&mut s, Original { breakdown: &charge.breakdown, period: period(), refunded_credits: 0 }, 20, later).expect("ok");
    assert_eq!(effects.len(), 2);
    assert_eq!(effects[1].kind, EntryKind::GrantExpiry);
    assert_eq!(effects[0].delta_credits + effects[1].delta_credits, 0);
}

#[test]
fn a_refund_is_not_a_charge() {
    let mut s = MeterState::opening(period(), Some(100));
    let credit = [Portion { bucket: Bucket::Rollover, delta_credits: 5 }];
    assert_eq!(refund(&mut s, Original { breakdown: &credit, period: period(), refunded_credits: 0 }, 1, NOW), Err(Error::NotACharge));
}

proptest! {
    /// Any split of refunds returns exactly the charge, never more, and the ledger explains net.
    #[test]
    fn refunds_add_up_to_the_charge(amount in 1i64..250, cuts in prop::collection::vec(1i64..100, 1..8)) {
        let mut s = state_with_grant(None);
        let charge = debit(&mut s, &POLICY, amount, Mode::Record, EntryKind::Debit, NOW).expect("within floor");
        let mut refunded = 0;
        for cut in cuts {
            let before = s.net_credits(NOW).unwrap();
            let original = Original { breakdown: &charge.breakdown, period: period(), refunded_credits: refunded };
            match refund(&mut s, original, cut, NOW) {
                Ok(effects) => {
                    refunded += cut;
                    let delta: i64 = effects.iter().map(|e| e.delta_credits).sum();
                    prop_assert_eq!(s.net_credits(NOW).unwrap() - before, i128::from(delta));
                }
                Err(Error::ExceedsRefundable { refundable_credits }) => prop_assert_eq!(refundable_credits, amount - refunded),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            prop_assert!(refunded <= amount);
        }
    }
}
