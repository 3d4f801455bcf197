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
}
