//! Which plan governs an account's meter right now, and the billing period it is in.

use allot_domain::period::{period_containing, subscription_period, Period, CALENDAR_ANCHOR};
use allot_domain::plan::MeterPolicy;
use time::OffsetDateTime;

use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use crate::repo::{self, Tx};

/// The plan, policy and period in force for one meter.
#[derive(Debug, Clone)]
pub struct InForce {
    /// `None` when the account has no entitled subscription and the tenant no free plan.
    pub plan_id: Option<String>,
    pub policy: MeterPolicy,
    /// Monthly anchor for periods skipped while the account was idle.
    pub anchor: OffsetDateTime,
    pub period: Period,
}

/// Entitled subscriptions (active, trialing, past due) keep their plan and billing period;
/// everyone else gets the tenant's free plan on calendar months. A meter the plan does not list
/// has no allowance: only grants pay for it.
pub async fn resolve(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, now: OffsetDateTime) -> Result<InForce, Error> {
    let subscription = repo::subscriptions::get(tx, tenant, account).await?;
    let (plan_id, anchor, period) = match subscription {
        Some(sub) if sub.status.is_entitled() => (
            Some(sub.plan_id.as_str().to_owned()),
            sub.current_period_start,
            subscription_period(sub.current_period_start, sub.current_period_end, now),
        ),
        _ => (repo::plans::free_default(tx, tenant).await?, CALENDAR_ANCHOR, period_containing(CALENDAR_ANCHOR, now)),
    };
    let policy = match &plan_id {
        Some(id) => repo::plans::meter_policy(tx, tenant, id, meter).await?.unwrap_or(MeterPolicy::UNLISTED),
        None => MeterPolicy::UNLISTED,
    };
    Ok(InForce { plan_id, policy, anchor, period })
}
