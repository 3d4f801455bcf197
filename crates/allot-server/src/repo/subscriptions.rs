//! `subscriptions`: which plan an account pays for, its status and billing period.

use allot_domain::plan::SubscriptionStatus;
use time::OffsetDateTime;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, PlanId, TenantId};

/// A subscription as stored.
#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    pub account_id: AccountId,
    pub plan_id: PlanId,
    pub status: SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub cancel_at_period_end: bool,
    pub updated_at: OffsetDateTime,
}

impl SubscriptionRecord {
    /// Whether it entitles the account to its plan at `now`.
    pub fn entitled_at(&self, now: OffsetDateTime) -> bool {
        allot_domain::plan::entitled_at(self.status, self.cancel_at_period_end, self.current_period_end, now)
    }
}

/// Inserts or replaces the account's subscription. Fails with a foreign-key violation when the
/// plan does not exist in the tenant (the caller checks first).
pub async fn upsert(tx: &Tx<'_>, tenant: TenantId, sub: &SubscriptionRecord) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO subscriptions (tenant_id, account_id, plan_id, status, current_period_start, current_period_end, updated_at, \
             cancel_at_period_end) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, account_id) DO UPDATE SET \
             plan_id = EXCLUDED.plan_id, status = EXCLUDED.status, current_period_start = EXCLUDED.current_period_start, \
             current_period_end = EXCLUDED.current_period_end, updated_at = EXCLUDED.updated_at, \
             cancel_at_period_end = EXCLUDED.cancel_at_period_end",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tenant.0,
            &sub.account_id.as_str(),
            &sub.plan_id.as_str(),
            &sub.status.as_str(),
            &sub.current_period_start,
            &sub.current_period_end,
            &sub.updated_at,
            &sub.cancel_at_period_end,
        ],
    )
    .await?;
    Ok(())
}

pub async fn get(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<Option<SubscriptionRecord>, Error> {
    let stmt = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM subscriptions WHERE tenant_id = $1 AND account_id = $2")).await?;
    tx.query_opt(&stmt, &[&tenant.0, &account.as_str()]).await?.as_ref().map(from_row).transpose()
}

/// The columns `from_row` reads, in its order.
pub(super) const COLUMNS: &str = "plan_id, status, current_period_start, current_period_end, updated_at, cancel_at_period_end, account_id";

pub(super) fn from_row(row: &tokio_postgres::Row) -> Result<SubscriptionRecord, Error> {
    let status: &str = row.get(1);
    Ok(SubscriptionRecord {
        account_id: AccountId::parse(row.get(6)).map_err(|e| Error::Internal(format!("stored account id: {e}")))?,
        plan_id: PlanId::parse(row.get(0)).map_err(|e| Error::Internal(format!("stored plan id: {e}")))?,
        status: SubscriptionStatus::parse(status).ok_or_else(|| Error::Internal(format!("stored status {status}")))?,
        current_period_start: row.get(2),
        current_period_end: row.get(3),
        updated_at: row.get(4),
        cancel_at_period_end: row.get(5),
    })
}
