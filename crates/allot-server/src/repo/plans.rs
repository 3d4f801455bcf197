//! `plans` and `plan_meters`: what each plan gives each meter per period.

use allot_domain::plan::MeterPolicy;
use time::OffsetDateTime;

use super::Tx;
use crate::error::Error;
use crate::ids::{Meter, PlanId, TenantId};

/// A plan with its meters.
#[derive(Debug, Clone)]
pub struct PlanRecord {
    pub id: PlanId,
    pub tier: String,
    pub name: String,
    pub trial_days: u32,
    pub is_free_default: bool,
    pub meters: Vec<(Meter, MeterPolicy)>,
    pub updated_at: OffsetDateTime,
}

/// Inserts or replaces a plan and all its meters. Making it the free default takes the flag
/// from any other plan of the tenant.
pub async fn upsert(tx: &Tx<'_>, tenant: TenantId, plan: &PlanRecord) -> Result<(), Error> {
    let trial_days = i32::try_from(plan.trial_days).map_err(|_| Error::invalid("plan.trial_days", "too large"))?;
    if plan.is_free_default {
        let clear = tx.prepare_cached("UPDATE plans SET is_free_default = false WHERE tenant_id = $1 AND id <> $2 AND is_free_default").await?;
        tx.execute(&clear, &[&tenant.0, &plan.id.as_str()]).await?;
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO plans (tenant_id, id, tier, name, trial_days, is_free_default, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET tier = EXCLUDED.tier, name = EXCLUDED.name, trial_days = EXCLUDED.trial_days, \
             is_free_default = EXCLUDED.is_free_default, updated_at = EXCLUDED.updated_at",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &plan.id.as_str(), &plan.tier, &plan.name, &trial_days, &plan.is_free_default, &plan.updated_at]).await?;
    let delete = tx.prepare_cached("DELETE FROM plan_meters WHERE tenant_id = $1 AND plan_id = $2").await?;
    tx.execute(&delete, &[&tenant.0, &plan.id.as_str()]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO plan_meters (tenant_id, plan_id, meter, allowance_credits, rollover_cap_credits, debt_limit_credits) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    for (meter, policy) in &plan.meters {
        tx.execute(
            &insert,
            &[&tenant.0, &plan.id.as_str(), &meter.as_str(), &policy.allowance_credits, &policy.rollover_cap_credits, &policy.debt_limit_credits],
        )
        .await?;
    }
    Ok(())
}

async fn meters(tx: &Tx<'_>, tenant: TenantId, plan_id: &str) -> Result<Vec<(Meter, MeterPolicy)>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT meter, allowance_credits, rollover_cap_credits, debt_limit_credits FROM plan_meters \
             WHERE tenant_id = $1 AND plan_id = $2 ORDER BY meter",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &plan_id]).await?;
    rows.iter()
        .map(|row| {
            let meter = Meter::parse(row.get(0)).map_err(|e| Error::Internal(format!("stored meter: {e}")))?;
            Ok((meter, MeterPolicy { allowance_credits: row.get(1), rollover_cap_credits: row.get(2), debt_limit_credits: row.get(3) }))
        })
        .collect()
}

fn record(row: &tokio_postgres::Row, meters: Vec<(Meter, MeterPolicy)>) -> Result<PlanRecord, Error> {
    let trial_days: i32 = row.get(3);
    Ok(PlanRecord {
        id: PlanId::parse(row.get(0)).map_err(|e| Error::Internal(format!("stored plan id: {e}")))?,
        tier: row.get(1),
        name: row.get(2),
        trial_days: u32::try_from(trial_days).unwrap_or(0),
        is_free_default: row.get(4),
        meters,
        updated_at: row.get(5),
    })
}

pub async fn get(tx: &Tx<'_>, tenant: TenantId, id: &str) -> Result<Option<PlanRecord>, Error> {
    let stmt =
        tx.prepare_cached("SELECT id, tier, name, trial_days, is_free_default, updated_at FROM plans WHERE tenant_id = $1 AND id = $2").await?;
    match tx.query_opt(&stmt, &[&tenant.0, &id]).await? {
        Some(row) => Ok(Some(record(&row, meters(tx, tenant, id).await?)?)),
        None => Ok(None),
    }
}

/// Plans with ids after `after`, in id order.
pub async fn page(tx: &Tx<'_>, tenant: TenantId, after: &str, limit: i64) -> Result<Vec<PlanRecord>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, tier, name, trial_days, is_free_default, updated_at FROM plans WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &after, &limit]).await?;
    let mut plans = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: &str = row.get(0);
        plans.push(record(row, meters(tx, tenant, id).await?)?);
    }
    Ok(plans)
}

/// The tenant's free default plan id, if it has one.
pub async fn free_default(tx: &Tx<'_>, tenant: TenantId) -> Result<Option<String>, Error> {
    let stmt = tx.prepare_cached("SELECT id FROM plans WHERE tenant_id = $1 AND is_free_default").await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0]).await?.map(|row| row.get(0)))
}

/// One meter's policy in a plan; `None` when the plan does not list the meter.
pub async fn meter_policy(tx: &Tx<'_>, tenant: TenantId, plan_id: &str, meter: &Meter) -> Result<Option<MeterPolicy>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT allowance_credits, rollover_cap_credits, debt_limit_credits FROM plan_meters \
             WHERE tenant_id = $1 AND plan_id = $2 AND meter = $3",
        )
        .await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &plan_id, &meter.as_str()]).await?.map(|row| MeterPolicy {
        allowance_credits: row.get(0),
        rollover_cap_credits: row.get(1),
        debt_limit_credits: row.get(2),
    }))
}
