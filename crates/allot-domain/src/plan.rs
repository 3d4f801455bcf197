//! Which plan is in force: subscription statuses, entitlement, and a plan's per-meter policy.

/// A subscription's status as the billing system reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Active,
    Trialing,
    PastDue,
    Canceled,
    Unpaid,
    Incomplete,
}

impl SubscriptionStatus {
    /// Active, trialing and past-due subscriptions keep their plan (past-due covers the billing
    /// system's dunning window); every other status falls back to the tenant's free plan.
    pub fn is_entitled(self) -> bool {
        matches!(self, Self::Active | Self::Trialing | Self::PastDue)
    }

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Trialing => "trialing",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Incomplete => "incomplete",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Active, Self::Trialing, Self::PastDue, Self::Canceled, Self::Unpaid, Self::Incomplete]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// Whether a subscription entitles its account to its plan at `now`: its status is entitled and,
/// when it is set to cancel at the period's end or is a trial (which ends with its period), that
/// end has not come yet.
pub fn entitled_at(
    status: SubscriptionStatus,
    cancel_at_period_end: bool,
    current_period_end: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> bool {
    let ends_with_period = cancel_at_period_end || status == SubscriptionStatus::Trialing;
    status.is_entitled() && !(ends_with_period && now >= current_period_end)
}

/// Who a plan's quotas and credits belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Each account counts its own.
    User,
    /// Members of an org draw on the org's pool.
    Org,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Org => "org",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Self::User),
            "org" => Some(Self::Org),
            _ => None,
        }
    }
}

/// A pooled member's cap: would `amount_credits` more stay within it, counting what the member
/// used this period and holds in flight?
pub fn within_member_cap(cap_credits: Option<i64>, used_credits: i64, held_credits: i64, amount_credits: i64) -> bool {
    cap_credits.is_none_or(|cap| i128::from(used_credits) + i128::from(held_credits) + i128::from(amount_credits) <= i128::from(cap))
}

/// What a plan gives one meter each billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterPolicy {
    /// Credits per period; `None` is unlimited.
    pub allowance_credits: Option<i64>,
    /// At most this much unused allowance (plus earlier rollover) carries into the next period.
    pub rollover_cap_credits: i64,
    /// Records of usage may take the meter's net balance down to minus this.
    pub debt_limit_credits: i64,
}

impl MeterPolicy {
    /// The policy of a meter the plan does not list: no allowance, no rollover, no debt. Only
    /// grants can pay for it.
    pub const UNLISTED: MeterPolicy = MeterPolicy { allowance_credits: Some(0), rollover_cap_credits: 0, debt_limit_credits: 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entitled_statuses() {
        let cases = [("active", true), ("trialing", true), ("past_due", true), ("canceled", false), ("unpaid", false), ("incomplete", false)];
        for (name, entitled) in cases {
            let status = SubscriptionStatus::parse(name).expect("known status");
            assert_eq!(status.is_entitled(), entitled, "{name}");
            assert_eq!(status.as_str(), name);
        }
        assert_eq!(SubscriptionStatus::parse("ACTIVE"), None);
    }

    #[test]
    fn cancellation_at_period_end_keeps_the_plan_until_the_end() {
        use time::macros::datetime;
        let end = datetime!(2025-02-01 00:00 UTC);
        let cases = [
            (SubscriptionStatus::Active, false, datetime!(2025-03-01 00:00 UTC), true),
            (SubscriptionStatus::Active, true, datetime!(2025-01-31 23:59 UTC), true),
            (SubscriptionStatus::Active, true, end, false),
            (SubscriptionStatus::PastDue, true, datetime!(2025-01-15 00:00 UTC), true),
            (SubscriptionStatus::Canceled, false, datetime!(2025-01-15 00:00 UTC), false),
            (SubscriptionStatus::Trialing, false, datetime!(2025-01-31 23:59 UTC), true),
            (SubscriptionStatus::Trialing, false, end, false),
        ];
        for (status, cancel, now, expected) in cases {
            assert_eq!(entitled_at(status, cancel, end, now), expected, "{status:?} cancel={cancel} at {now}");
        }
    }

    #[test]
    fn member_caps() {
        assert!(within_member_cap(None, i64::MAX, i64::MAX, i64::MAX));
        assert!(within_member_cap(Some(100), 60, 30, 10));
        assert!(!within_member_cap(Some(100), 60, 30, 11));
        assert!(!within_member_cap(Some(0), 0, 0, 1));
    }
}
