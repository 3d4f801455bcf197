//! Subsidy tables and properties: the three decisions, settlement bounds, funding shares,
//! refund splits that add up, stable shards.

use proptest::prelude::*;

use super::*;

#[test]
fn decisions_follow_budget_and_pool() {
    // (cost, budget left, pool, absorbed, serve)
    let cases = [
        (100, 500, 1_000, 100, Serve::Free),
        (100, 40, 1_000, 40, Serve::Partial),
        (100, 500, 30, 30, Serve::Partial),
        (100, 0, 1_000, 0, Serve::Gate),
        (100, 500, 0, 0, Serve::Gate),
        (100, 500, -5, 0, Serve::Gate),
        (0, 500, 1_000, 0, Serve::Gate),
    ];
    for (cost, budget, pool, absorbed, serve) in cases {
        let split = decide(cost, budget, pool);
        assert_eq!(split.absorbed_credits, absorbed, "cost {cost} budget {budget} pool {pool}");
        assert_eq!(split.cost_credits(), cost);
        assert_eq!(split.serve(), serve, "cost {cost} budget {budget} pool {pool}");
    }
}

#[test]
fn budget_left_counts_reservations() {
    assert_eq!(budget_left(200, 50, 30), 120);
    assert_eq!(budget_left(200, 150, 80), 0);
    assert_eq!(budget_left(0, 0, 0), 0);
}

#[test]
fn settlement_never_absorbs_more_than_reserved_or_used() {
    assert_eq!(settle(70, 100), Split { absorbed_credits: 70, account_credits: 0 });
    assert_eq!(settle(130, 100), Split { absorbed_credits: 100, account_credits: 30 });
    assert_eq!(settle(0, 100), Split { absorbed_credits: 0, account_credits: 0 });
}

#[test]
fn funding_rounds_down() {
    assert_eq!(funding(1_000, 1_000), 100);
    assert_eq!(funding(19, 500), 0);
    assert_eq!(funding(i64::MAX, BPS_ONE), i64::MAX);
    assert_eq!(funding(1_000, 0), 0);
}

#[test]
fn spread_covers_earlier_lines_first() {
    let splits = spread(&[30, 50, 20], 60);
    assert_eq!(splits.iter().map(|s| s.absorbed_credits).collect::<Vec<_>>(), vec![30, 30, 0]);
    assert_eq!(splits.iter().map(|s| s.account_credits).collect::<Vec<_>>(), vec![0, 20, 20]);
}

#[test]
fn refunds_return_each_side_its_part() {
    let mut paid = Paid { absorbed_credits: 30, account_credits: 70, refunded_credits: 0, pool_refunded_credits: 0 };
    let first = refund_split(paid, 10).expect("refundable");
    assert_eq!(first, Split { absorbed_credits: 3, account_credits: 7 });
    paid.refunded_credits += 10;
    paid.pool_refunded_credits += first.absorbed_credits;
    let rest = refund_split(paid, 90).expect("refundable");
    assert_eq!(rest, Split { absorbed_credits: 27, account_credits: 63 });
    paid.refunded_credits += 90;
    assert_eq!(refund_split(paid, 1), Err(RefundError::ExceedsRefundable { refundable_credits: 0 }));
}

#[test]
fn shards_are_stable_and_in_range() {
    assert_eq!(shard_of("user-1", 8), shard_of("user-1", 8));
    assert_eq!(shard_of("", 1), 0);
    // Pinned so that a change of the hash (which would move identities between shards) is seen.
    assert_eq!(shard_of("user-1", 64), shard_of_reference("user-1") % 64);
}

fn shard_of_reference(identity: &str) -> u32 {
    let mut hash: u64 = 14_695_981_039_346_656_037;
    for byte in identity.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(1_099_511_628_211);
    }
    (hash % 64) as u32
}

#[test]
fn top_ups_spread_evenly() {
    assert_eq!(top_up_parts(10, 4), vec![3, 3, 2, 2]);
    assert_eq!(top_up_parts(3, 4), vec![1, 1, 1, 0]);
    assert_eq!(top_up_parts(0, 2), vec![0, 0]);
}

proptest! {
    #[test]
    fn decide_conserves_and_respects_bounds(cost in 0i64..1_000_000, budget in -10i64..1_000_000, pool in -10i64..1_000_000) {
        let split = decide(cost, budget, pool);
        prop_assert_eq!(split.absorbed_credits + split.account_credits, cost);
        prop_assert!(split.absorbed_credits >= 0 && split.account_credits >= 0);
        prop_assert!(split.absorbed_credits <= budget.max(0));
        prop_assert!(split.absorbed_credits <= pool.max(0));
        prop_assert!(pool > 0 || split.serve() == Serve::Gate, "an empty pool never serves free");
    }

    #[test]
    fn settle_conserves(actual in 0i64..1_000_000, reserved in 0i64..1_000_000) {
        let split = settle(actual, reserved);
        prop_assert_eq!(split.cost_credits(), actual);
        prop_assert!(split.absorbed_credits <= reserved);
    }

    #[test]
    fn refunds_in_pieces_add_up_to_what_each_paid(absorbed in 0i64..10_000, account in 0i64..10_000, pieces in proptest::collection::vec(1i64..500, 1..40)) {
        let cost = absorbed + account;
        let mut paid = Paid { absorbed_credits: absorbed, account_credits: account, refunded_credits: 0, pool_refunded_credits: 0 };
        for piece in pieces {
            let refundable = cost - paid.refunded_credits;
            if refundable == 0 {
                break;
            }
            let amount = piece.min(refundable);
            let split = refund_split(paid, amount).expect("within refundable");
            prop_assert_eq!(split.cost_credits(), amount);
            paid.refunded_credits += amount;
            paid.pool_refunded_credits += split.absorbed_credits;
            prop_assert!(paid.pool_refunded_credits <= absorbed);
            prop_assert!(paid.refunded_credits - paid.pool_refunded_credits <= account);
        }
        if paid.refunded_credits == cost {
            prop_assert_eq!(paid.pool_refunded_credits, absorbed);
        }
    }

    #[test]
    fn spread_conserves(costs in proptest::collection::vec(0i64..1_000, 1..8), fraction in 0u32..=100) {
        let total: i64 = costs.iter().sum();
        let absorbed = total * i64::from(fraction) / 100;
        let splits = spread(&costs, absorbed);
        prop_assert_eq!(splits.iter().map(|s| s.absorbed_credits).sum::<i64>(), absorbed);
        for (split, cost) in splits.iter().zip(&costs) {
            prop_assert_eq!(split.cost_credits(), *cost);
        }
    }
}
