//! A meter's state for one account: the current period's allowance, rollover, grants, debt and
//! live holds, and the figures derived from them.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::ledger::{Bucket, GrantKind};
use crate::period::Period;

/// A purchased or promotional grant with credit left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: Uuid,
    pub kind: GrantKind,
    pub remaining_credits: i64,
    /// Higher is consumed first.
    pub priority: i32,
    pub expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

impl Grant {
    /// Whether the grant can pay at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.remaining_credits > 0 && self.expires_at.is_none_or(|at| now < at)
    }

    pub fn bucket(&self) -> Bucket {
        Bucket::Grant { id: self.id, kind: self.kind }
    }
}

/// Everything the rules need to know about one account's meter, loaded under its row lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterState {
    pub period: Period,
    /// This period's allowance; `None` is unlimited.
    pub allowance_credits: Option<i64>,
    pub allowance_used_credits: i64,
    pub rollover_credits: i64,
    pub debt_credits: i64,
    pub grants: Vec<Grant>,
    /// The sum of live (unexpired, unsettled) holds.
    pub held_credits: i64,
}

impl MeterState {
    /// A meter's first period: the policy's allowance, nothing used, nothing carried.
    pub fn opening(period: Period, allowance_credits: Option<i64>) -> MeterState {
        MeterState { period, allowance_credits, allowance_used_credits: 0, rollover_credits: 0, debt_credits: 0, grants: Vec::new(), held_credits: 0 }
    }

    /// Allowance left this period; `None` is unlimited.
    pub fn allowance_left_credits(&self) -> Option<i64> {
        self.allowance_credits.map(|a| (a - self.allowance_used_credits).max(0))
    }

    /// Credits in live grants.
    pub fn grants_credits(&self, now: OffsetDateTime) -> i128 {
        self.grants.iter().filter(|g| g.is_live(now)).map(|g| i128::from(g.remaining_credits)).sum()
    }

    /// Everything that can pay less debt; `None` when the allowance is unlimited.
    pub fn net_credits(&self, now: OffsetDateTime) -> Option<i128> {
        let allowance_left = self.allowance_left_credits()?;
        Some(i128::from(allowance_left) + i128::from(self.rollover_credits) + self.grants_credits(now) - i128::from(self.debt_credits))
    }

    /// Net less live holds; `None` when unlimited.
    pub fn available_credits(&self, now: OffsetDateTime) -> Option<i128> {
        self.net_credits(now).map(|net| net - i128::from(self.held_credits))
    }

    /// Live grants in waterfall order: priority (high first), then soonest expiry (never-expiring
    /// last), then oldest, then id.
    pub fn grants_in_waterfall_order(&self, now: OffsetDateTime) -> Vec<&Grant> {
        let mut live: Vec<&Grant> = self.grants.iter().filter(|g| g.is_live(now)).collect();
        live.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| match (a.expires_at, b.expires_at) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .then_with(|| a.created_at.cmp(&b.created_at))
                .then_with(|| a.id.cmp(&b.id))
        });
        live
    }

    /// Checks the state's own invariants; a violation is a programmer error.
    pub fn assert_invariants(&self) {
        assert!(self.allowance_used_credits >= 0, "negative allowance use");
        assert!(self.rollover_credits >= 0, "negative rollover");
        assert!(self.debt_credits >= 0, "negative debt");
        assert!(self.held_credits >= 0, "negative holds");
        assert!(self.grants.iter().all(|g| g.remaining_credits >= 0), "negative grant");
        assert!(self.period.start < self.period.end, "empty period");
    }

    pub(crate) fn grant_mut(&mut self, id: Uuid) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| g.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn grant(n: u128, priority: i32, expires_at: Option<OffsetDateTime>, created_at: OffsetDateTime) -> Grant {
        Grant { id: Uuid::from_u128(n), kind: GrantKind::Purchased, remaining_credits: 10, priority, expires_at, created_at }
    }

    #[test]
    fn waterfall_order_is_priority_then_expiry_then_age() {
        let now = datetime!(2025-01-10 00:00 UTC);
        let old = datetime!(2024-01-01 00:00 UTC);
        let new = datetime!(2024-06-01 00:00 UTC);
        let soon = Some(datetime!(2025-02-01 00:00 UTC));
        let later = Some(datetime!(2025-03-01 00:00 UTC));
        let expired = Some(datetime!(2025-01-01 00:00 UTC));
        let mut state =
            MeterState::opening(crate::period::Period { start: datetime!(2025-01-01 00:00 UTC), end: datetime!(2025-02-01 00:00 UTC) }, Some(0));
        state.grants = vec![
            grant(1, 0, None, old),
            grant(2, 0, later, new),
            grant(3, 0, soon, new),
            grant(4, 5, None, new),
            grant(5, 0, None, new),
            grant(6, 9, expired, old),
            grant(7, 0, soon, old),
        ];
        let order: Vec<u128> = state.grants_in_waterfall_order(now).iter().map(|g| g.id.as_u128()).collect();
        assert_eq!(order, vec![4, 7, 3, 2, 1, 5]);
        assert_eq!(state.grants_credits(now), 60);
        assert_eq!(state.net_credits(now), Some(60));
    }
}
