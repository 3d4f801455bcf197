//! Table tests and properties of the waterfall, gates, records and holds.

use proptest::prelude::*;
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::ledger::GrantKind;
use crate::meter::Grant;
use crate::period::Period;

const NOW: OffsetDateTime = datetime!(2025-01-15 12:00 UTC);

fn period() -> Period {
    Period { start: datetime!(2025-01-01 00:00 UTC), end: datetime!(2025-02-01 00:00 UTC) }
}

fn policy(allowance: Option<i64>, debt_limit: i64) -> MeterPolicy {
    MeterPolicy { allowance_credits: allowance, rollover_cap_credits: 0, debt_limit_credits: debt_limit }
}

fn grant(n: u128, remaining: i64, priority: i32) -> Grant {
    Grant {
        id: Uuid::from_u128(n),
        kind: GrantKind::Purchased,
        remaining_credits: remaining,
        priority,
        expires_at: None,
        created_at: datetime!(2024-12-01 00:00 UTC),
    }
}

/// allowance, used, rollover, grants (id, remaining, priority), debt limit.
fn state(allowance: Option<i64>, used: i64, rollover: i64, grants: &[(u128, i64, i32)]) -> MeterState {
    MeterState {
        allowance_used_credits: used,
        rollover_credits: rollover,
        grants: grants.iter().map(|&(n, r, p)| grant(n, r, p)).collect(),
        ..MeterState::opening(period(), allowance)
    }
}

fn portion(bucket: Bucket, delta_credits: i64) -> Portion {
    Portion { bucket, delta_credits }
}

fn g(n: u128) -> Bucket {
    Bucket::Grant { id: Uuid::from_u128(n), kind: GrantKind::Purchased }
}

/// name, state, amount, mode, expected breakdown or denial.
type WaterfallCase = (&'static str, MeterState, i64, Mode, Result<Vec<Portion>, Denial>);

#[test]
fn the_waterfall_takes_buckets_in_order() {
    let cases: Vec<WaterfallCase> = vec![
        ("allowance first", state(Some(100), 0, 50, &[(1, 50, 0)]), 30, Mode::Gate, Ok(vec![portion(Bucket::Allowance, -30)])),
        (
            "then rollover then grants by priority",
            state(Some(100), 90, 5, &[(1, 50, 0), (2, 50, 9)]),
            70,
            Mode::Gate,
            Ok(vec![portion(Bucket::Allowance, -10), portion(Bucket::Rollover, -5), portion(g(2), -50), portion(g(1), -5)]),
        ),
        ("gate denies a shortfall", state(Some(100), 90, 0, &[(1, 5, 0)]), 20, Mode::Gate, Err(Denial::InsufficientCredit)),
        ("quota exhausted when only the allowance could pay", state(Some(100), 100, 0, &[]), 1, Mode::Gate, Err(Denial::QuotaExhausted)),
        ("unlisted meter without grants is insufficient credit", state(Some(0), 0, 0, &[]), 1, Mode::Gate, Err(Denial::InsufficientCredit)),
        ("record goes into debt", state(Some(100), 100, 0, &[]), 20, Mode::Record, Ok(vec![portion(Bucket::Debt, -20)])),
        ("record stops at the floor", state(Some(100), 100, 0, &[]), 51, Mode::Record, Err(Denial::DebtLimitReached)),
        (
            "unlimited allowance pays everything",
            state(None, 1_000, 0, &[(1, 5, 0)]),
            10_000,
            Mode::Gate,
            Ok(vec![portion(Bucket::Allowance, -10_000)]),
        ),
    ];
    for (name, mut s, amount, mode, expected) in cases {
        let before = s.clone();
        let p = policy(s.allowance_credits, 50);
        let got = debit(&mut s, &p, amount, mode, EntryKind::Debit, NOW).map(|e| e.breakdown);
        assert_eq!(got, expected, "{name}");
        if got.is_err() {
            assert_eq!(s, before, "{name}: a denial changes nothing");
        }
    }
}

#[test]
fn holds_count_against_gates_but_not_records() {
    let p = policy(Some(100), 50);
    let mut s = state(Some(100), 0, 0, &[]);
    reserve(&mut s, &p, 80, NOW).expect("fits");
    assert_eq!(s.available_credits(NOW), Some(20));
    assert_eq!(reserve(&mut s, &p, 21, NOW), Err(Denial::InsufficientCredit));
    assert_eq!(check(&s, &p, 21, Mode::Gate, NOW), Err(Denial::InsufficientCredit));
    assert_eq!(check(&s, &p, 21, Mode::Record, NOW), Ok(()));
    // Commit less than held: the rest returns.
    let effect = commit(&mut s, &p, 80, 30, NOW).expect("allowed").expect("charged");
    assert_eq!(effect.delta_credits, -30);
    assert_eq!(s.held_credits, 0);
    assert_eq!(s.available_credits(NOW), Some(70));
}

#[test]
fn commit_beyond_the_hold_is_a_record_and_respects_the_floor() {
    let p = policy(Some(100), 50);
    let mut s = state(Some(100), 0, 0, &[]);
    reserve(&mut s, &p, 100, NOW).expect("fits");
    let effect = commit(&mut s, &p, 100, 140, NOW).expect("allowed").expect("charged");
    assert_eq!(effect.breakdown, vec![portion(Bucket::Allowance, -100), portion(Bucket::Debt, -40)]);
    reserve(&mut s, &p, 1, NOW).expect_err("in debt, nothing is available");
    let mut t = state(Some(100), 0, 0, &[]);
    reserve(&mut t, &p, 100, NOW).expect("fits");
    let before = t.clone();
    assert_eq!(commit(&mut t, &p, 100, 151, NOW), Err(Denial::DebtLimitReached));
    assert_eq!(t, before, "a denied commit keeps the hold");
    assert_eq!(commit(&mut t, &p, 100, 0, NOW), Ok(None), "zero charges nothing");
    assert_eq!(t.held_credits, 0);
}

fn arb_state() -> impl Strategy<Value = (MeterState, MeterPolicy)> {
    (
        prop::option::weighted(0.9, 0i64..1_000),
        0i64..1_000,
        0i64..500,
        0i64..300,
        prop::collection::vec((0i64..400, -3i32..3, prop::option::of(-10i64..10)), 0..5),
        0i64..300,
        0i64..500,
    )
        .prop_map(|(allowance, used, rollover, debt, grants, held, debt_limit)| {
            let used = allowance.map_or(used, |a| used.min(a));
            let grants = grants
                .into_iter()
                .enumerate()
                .map(|(i, (remaining, priority, expiry_days))| Grant {
                    id: Uuid::from_u128(i as u128 + 1),
                    kind: if i % 2 == 0 { GrantKind::Purchased } else { GrantKind::Promotional },
                    remaining_credits: remaining,
                    priority,
                    expires_at: expiry_days.map(|d| NOW + time::Duration::days(d)),
                    created_at: datetime!(2024-12-01 00:00 UTC) + time::Duration::hours(i as i64),
                })
                .collect();
            let s = MeterState {
                period: period(),
                allowance_credits: allowance,
                allowance_used_credits: used,
                rollover_credits: rollover,
                debt_credits: debt,
                grants,
                held_credits: held,
            };
            (s, MeterPolicy { allowance_credits: allowance, rollover_cap_credits: 200, debt_limit_credits: debt_limit + debt })
        })
}

proptest! {
    /// Conservation: an allowed debit moves net by exactly the amount, the breakdown sums to it,
    /// and no bucket goes negative; a denial changes nothing.
    #[test]
    fn debits_conserve_credit((s, p) in arb_state(), amount in 1i64..3_000, record in any::<bool>()) {
        let mode = if record { Mode::Record } else { Mode::Gate };
        let mut after = s.clone();
        match debit(&mut after, &p, amount, mode, EntryKind::Debit, NOW) {
            Ok(effect) => {
                prop_assert_eq!(effect.delta_credits, -amount);
                prop_assert_eq!(effect.breakdown.iter().map(|x| x.delta_credits).sum::<i64>(), -amount);
                if let (Some(a), Some(b)) = (s.net_credits(NOW), after.net_credits(NOW)) {
                    prop_assert_eq!(b, a - i128::from(amount));
                    // Never below the floor.
                    prop_assert!(b >= -i128::from(p.debt_limit_credits));
                    if mode == Mode::Gate {
                        prop_assert!(after.available_credits(NOW).unwrap() >= 0);
                        prop_assert_eq!(after.debt_credits, s.debt_credits, "gates never create debt");
                    }
                }
            }
            Err(_) => prop_assert_eq!(&after, &s),
        }
    }

    /// A sequence of gate debits and holds never takes availability below zero when it starts at
    /// or above zero.
    #[test]
    fn gates_never_overdraw((s, p) in arb_state(), ops in prop::collection::vec((1i64..200, any::<bool>()), 1..40)) {
        let mut s = s;
        prop_assume!(s.available_credits(NOW).is_none_or(|a| a >= 0));
        for (amount, hold) in ops {
            let _ = if hold { reserve(&mut s, &p, amount, NOW).map(|_| ()) } else { debit(&mut s, &p, amount, Mode::Gate, EntryKind::Debit, NOW).map(|_| ()) };
            prop_assert!(s.available_credits(NOW).is_none_or(|a| a >= 0));
        }
    }

    /// Check agrees with debit.
    #[test]
    fn check_predicts_debit((s, p) in arb_state(), amount in 1i64..3_000, record in any::<bool>()) {
        let mode = if record { Mode::Record } else { Mode::Gate };
        let predicted = check(&s, &p, amount, mode, NOW);
        let mut after = s.clone();
        prop_assert_eq!(predicted, debit(&mut after, &p, amount, mode, EntryKind::Debit, NOW).map(|_| ()));
    }

    /// Expired grants never pay.
    #[test]
    fn expired_grants_never_pay((s, p) in arb_state(), amount in 1i64..3_000) {
        let mut after = s.clone();
        if let Ok(effect) = debit(&mut after, &p, amount, Mode::Record, EntryKind::Debit, NOW) {
            for portion in &effect.breakdown {
                if let Bucket::Grant { id, .. } = portion.bucket {
                    let grant = s.grants.iter().find(|g| g.id == id).unwrap();
                    prop_assert!(grant.is_live(NOW));
                }
            }
        }
    }
}
