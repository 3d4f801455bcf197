//! The subsidy pool's arithmetic: who pays for a free-tier request, how a reservation settles,
//! how paid usage funds the pool and how a refund is split back.
//!
//! A request that asks for subsidy costs `cost_credits`. The pool pays
//! `min(cost, identity's budget left today, pool shard's balance)`; the account pays the rest.
//! That makes the decision **free** (the pool pays all), **partial** (both pay) or **gate** (the
//! account pays all). A pool that cannot pay never serves anything free: what it absorbs is
//! bounded by its balance, which is never negative.
//!
//! The pool is split into shards (sub-balances) so that concurrent free-tier requests lock
//! different rows. An identity always uses the shard [`shard_of`] picks, a stable hash, so a dry
//! run and the real decision look at the same row.
//!
//! Everything is exact integer arithmetic; shares round down (the pool never gets more than its
//! share), and refunds split with cumulative rounding so the parts of all refunds of one charge add
//! up to exactly what each side paid.

/// Largest number of shards of one pool.
pub const SHARDS_MAX: u32 = 64;
/// Basis points in one whole.
pub const BPS_ONE: u32 = 10_000;

/// Who pays for a subsidised request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serve {
    /// The pool pays everything.
    Free,
    /// The pool pays part, the account the rest.
    Partial,
    /// The account pays everything.
    Gate,
}

impl Serve {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Partial => "partial",
            Self::Gate => "gate",
        }
    }

    pub fn parse(name: &str) -> Option<Serve> {
        match name {
            "free" => Some(Self::Free),
            "partial" => Some(Self::Partial),
            "gate" => Some(Self::Gate),
            _ => None,
        }
    }
}

/// A cost split between the pool and the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Split {
    pub absorbed_credits: i64,
    pub account_credits: i64,
}

impl Split {
    pub fn serve(self) -> Serve {
        match (self.absorbed_credits, self.account_credits) {
            (0, _) => Serve::Gate,
            (_, 0) => Serve::Free,
            _ => Serve::Partial,
        }
    }

    pub fn cost_credits(self) -> i64 {
        self.absorbed_credits + self.account_credits
    }
}

/// Splits `cost_credits` given what the identity may still receive today and what the pool
/// (its shard) holds. Negative inputs count as nothing.
pub fn decide(cost_credits: i64, budget_left_credits: i64, pool_available_credits: i64) -> Split {
    assert!(cost_credits >= 0, "costs are validated before the rules");
    let absorbed_credits = cost_credits.min(budget_left_credits.max(0)).min(pool_available_credits.max(0));
    let split = Split { absorbed_credits, account_credits: cost_credits - absorbed_credits };
    debug_assert!(split.absorbed_credits >= 0 && split.account_credits >= 0);
    split
}

/// What the identity may still receive today: the tier's daily budget less what it absorbed and
/// has reserved today.
pub fn budget_left(daily_budget_credits: i64, absorbed_today_credits: i64, reserved_today_credits: i64) -> i64 {
    (daily_budget_credits - absorbed_today_credits - reserved_today_credits).max(0)
}

/// Settles a reservation in which the pool reserved `reserved_credits` for a request whose actual
/// cost is `actual_credits`: the pool absorbs no more than it reserved and no more than the actual
/// cost; the account pays the rest. `reserved_credits - absorbed` goes back to the pool.
pub fn settle(actual_credits: i64, reserved_credits: i64) -> Split {
    assert!(actual_credits >= 0 && reserved_credits >= 0, "validated before the rules");
    let absorbed_credits = actual_credits.min(reserved_credits);
    Split { absorbed_credits, account_credits: actual_credits - absorbed_credits }
}

/// The pool's share of a paid charge of `paid_credits`, rounded down.
pub fn funding(paid_credits: i64, share_bps: u32) -> i64 {
    assert!(paid_credits >= 0 && share_bps <= BPS_ONE, "validated before the rules");
    let share = i128::from(paid_credits) * i128::from(share_bps) / i128::from(BPS_ONE);
    i64::try_from(share).expect("a share of an i64 fits in an i64")
}

/// Splits `costs` (one per line, in request order) given the total the pool absorbs: earlier
/// lines are covered first.
pub fn spread(costs: &[i64], absorbed_credits: i64) -> Vec<Split> {
    let mut left = absorbed_credits;
    let splits: Vec<Split> = costs
        .iter()
        .map(|cost| {
            let absorbed = left.min(*cost).max(0);
            left -= absorbed;
            Split { absorbed_credits: absorbed, account_credits: cost - absorbed }
        })
        .collect();
    assert_eq!(left, 0, "the pool never absorbs more than the lines cost");
    splits
}

/// The charge being refunded: what each side paid and what earlier refunds returned in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paid {
    pub absorbed_credits: i64,
    pub account_credits: i64,
    /// Earlier refunds of this charge, both sides together.
    pub refunded_credits: i64,
    /// The pool's part of those earlier refunds.
    pub pool_refunded_credits: i64,
}

/// Why a refund of a subsidised charge cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    #[error("refund exceeds what is left to refund ({refundable_credits} credits)")]
    ExceedsRefundable { refundable_credits: i64 },
}

/// Splits a refund of `amount_credits` of a subsidised charge into the pool's and the account's
/// parts, proportionally to what each paid, with cumulative rounding: after any sequence of
/// refunds the pool has got back `floor(refunded_total × absorbed / cost)`, and a full refund
/// returns exactly what each side paid.
pub fn refund_split(paid: Paid, amount_credits: i64) -> Result<Split, RefundError> {
    assert!(amount_credits > 0, "refunds are positive");
    let cost = paid.absorbed_credits + paid.account_credits;
    let refundable_credits = cost - paid.refunded_credits;
    if amount_credits > refundable_credits {
        return Err(RefundError::ExceedsRefundable { refundable_credits: refundable_credits.max(0) });
    }
    let total_after = i128::from(paid.refunded_credits + amount_credits);
    let pool_total_after = i64::try_from(total_after * i128::from(paid.absorbed_credits) / i128::from(cost.max(1))).expect("bounded by cost");
    let pool = pool_total_after - paid.pool_refunded_credits;
    assert!(pool >= 0 && pool <= amount_credits, "cumulative rounding never goes backwards");
    Ok(Split { absorbed_credits: pool, account_credits: amount_credits - pool })
}

/// The shard an identity's subsidy comes from: FNV-1a of the identity, modulo `shards`. Stable
/// across processes and versions, so a dry run and the real request meet on one row.
pub fn shard_of(identity: &str, shards: u32) -> u32 {
    assert!((1..=SHARDS_MAX).contains(&shards), "shard counts are validated");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(shards)).expect("below shards")
}

/// Splits a top-up of `amount_credits` evenly over `shards`; the first shards get the remainder.
pub fn top_up_parts(amount_credits: i64, shards: u32) -> Vec<i64> {
    assert!(amount_credits >= 0 && (1..=SHARDS_MAX).contains(&shards), "validated before the rules");
    let n = i64::from(shards);
    (0..n).map(|i| amount_credits / n + i64::from(i < amount_credits % n)).collect()
}

#[cfg(test)]
mod tests;
