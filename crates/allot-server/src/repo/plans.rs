//! `plans` and `plan_meters`: what each plan gives each meter per period.

use allot_domain::plan::{MeterPolicy, Scope};
use time::OffsetDateTime;

use super::Tx;
use crate::error::Error;
use crate::ids::{Meter, PlanId, TenantId};

/// A per-minute rate cap on a meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCap {
    pub limit_per_minute: i64,
    pub burst: i64,
    pub fail_open: bool,
}

/// Everything a plan says about one meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterTerms {
    pub policy: MeterPolicy,
    pub rate: Option<RateCap>,
    /// For org-pooled plans: most one member may use per period.
    pub member_cap_credits: Option<i64>,
    /// Promotional credit granted when a trial of the plan starts.
    pub trial_grant_credits: i64,
}

impl MeterTerms {
    /// A meter the plan does not list: no allowance, no cap, only grants pay.
    pub const UNLISTED: MeterTerms = MeterTerms { policy: MeterPolicy::UNLISTED, rate: None, member_cap_credits: None, trial_grant_credits: 0 };
}

/// A plan with its meters.
#[derive(Debug, Clone)]
pub struct PlanRecord {
    pub id: PlanId,
    pub tier: String,
    pub name: String,
    pub trial_days: u32,
    pub is_free_default: bool,
    pub scope: Scope,
    pub meters: Vec<(Meter, MeterTerms)>,
    pub trial_keeps_credits: bool,
    pub trial_ending_notice_ms: i64,
    pub updated_at: OffsetDateTime,
}

/// A plan's identity, without its meters.
#[derive(Debug, Clone)]
pub struct PlanHeader {
    pub id: String,
    pub tier: String,
    pub scope: Scope,
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
            "INSERT INTO plans (tenant_id, id, tier, name, trial_days, is_free_default, updated_at, scope, trial_keeps_credits, trial_ending_notice_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET tier = EXCLUDED.tier, name = EXCLUDED.name, trial_days = EXCLUDED.trial_days, \
             is_free_default = EXCLUDED.is_free_default, updated_at = EXCLUDED.updated_at, scope = EXCLUDED.scope, \
             trial_keeps_credits = EXCLUDED.trial_keeps_credits, trial_ending_notice_ms = EXCLUDED.trial_ending_notice_ms",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tenant.0,
            &plan.id.as_str(),
            &plan.tier,
            &plan.name,
            &trial_days,
            &plan.is_free_default,
            &plan.updated_at,
            &plan.scope.as_str(),
            &plan.trial_keeps_credits,
            &plan.trial_ending_notice_ms,
        ],
    )
    .await?;
    let delete = tx.prepare_cached("DELETE FROM plan_meters WHERE tenant_id = $1 AND plan_id = $2").await?;
    tx.execute(&delete, &[&tenant.0, &plan.id.as_str()]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO plan_meters (tenant_id, plan_id, meter, allowance_credits, rollover_cap_credits, debt_limit_credits, \
             rate_limit_per_minute, rate_burst, rate_fail_open, member_cap_credits, trial_grant_credits) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .await?;
    for (meter, terms) in &plan.meters {
        let policy = &terms.policy;
        tx.execute(
            &insert,
            &[
                &tenant.0,
                &plan.id.as_str(),
                &meter.as_str(),
                &policy.allowance_credits,
                &policy.rollover_cap_credits,
                &policy.debt_limit_credits,
                &terms.rate.map(|r| r.limit_per_minute),
                &terms.rate.map(|r| r.burst),
                &terms.rate.is_none_or(|r| r.fail_open),
                &terms.member_cap_credits,
                &terms.trial_grant_credits,
            ],
        )
        .await?;
    }
    Ok(())
}

const TERMS: &str =
    "allowance_credits, rollover_cap_credits, debt_limit_credits, rate_limit_per_minute, rate_burst, rate_fail_open, member_cap_credits, trial_grant_credits";

/// Reads the terms columns starting at `first`.
fn terms(row: &tokio_postgres::Row, first: usize) -> MeterTerms {
    let limit: Option<i64> = row.get(first + 3);
    let burst: Option<i64> = row.get(first + 4);
    MeterTerms {
        policy: MeterPolicy { allowance_credits: row.get(first), rollover_cap_credits: row.get(first + 1), debt_limit_credits: row.get(first + 2) },
        rate: limit.map(|limit_per_minute| RateCap { limit_per_minute, burst: burst.unwrap_or(limit_per_minute), fail_open: row.get(first + 5) }),
        member_cap_credits: row.get(first + 6),
        trial_grant_credits: row.get(first + 7),
    }
}

async fn meters(tx: &Tx<'_>, tenant: TenantId, plan_id: &str) -> Result<Vec<(Meter, MeterTerms)>, Error> {
    let sql = format!("SELECT meter, {TERMS} FROM plan_meters WHERE tenant_id = $1 AND plan_id = $2 ORDER BY meter COLLATE \"C\"");
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&stmt, &[&tenant.0, &plan_id]).await?;
    rows.iter()
        .map(|row| {
            let meter = Meter::parse(row.get(0)).map_err(|e| Error::Internal(format!("stored meter: {e}")))?;
            Ok((meter, terms(row, 1)))
        })
        .collect()
}

fn record(row: &tokio_postgres::Row, meters: Vec<(Meter, MeterTerms)>) -> Result<PlanRecord, Error> {
    let trial_days: i32 = row.get(3);
    let scope: &str = row.get(6);
    Ok(PlanRecord {
        id: PlanId::parse(row.get(0)).map_err(|e| Error::Internal(format!("stored plan id: {e}")))?,
        tier: row.get(1),
        name: row.get(2),
        trial_days: u32::try_from(trial_days).unwrap_or(0),
        is_free_default: row.get(4),
        scope: Scope::parse(scope).ok_or_else(|| Error::Internal(format!("stored scope {scope}")))?,
        meters,
        trial_keeps_credits: row.get(7),
        trial_ending_notice_ms: row.get(8),
        updated_at: row.get(5),
    })
}

pub async fn get(tx: &Tx<'_>, tenant: TenantId, id: &str) -> Result<Option<PlanRecord>, Error> {
    let stmt = tx
        .prepare_cached("SELECT id, tier, name, trial_days, is_free_default, updated_at, scope, trial_keeps_credits, trial_ending_notice_ms FROM plans WHERE tenant_id = $1 AND id = $2")
        .await?;
    match tx.query_opt(&stmt, &[&tenant.0, &id]).await? {
        Some(row) => Ok(Some(record(&row, meters(tx, tenant, id).await?)?)),
        None => Ok(None),
    }
}

/// Plans with ids after `after`, in id order.
pub async fn page(tx: &Tx<'_>, tenant: TenantId, after: &str, limit: i64) -> Result<Vec<PlanRecord>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, tier, name, trial_days, is_free_default, updated_at, scope, trial_keeps_credits, trial_ending_notice_ms FROM plans WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
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

/// A plan's header.
pub async fn header(tx: &Tx<'_>, tenant: TenantId, id: &str) -> Result<Option<PlanHeader>, Error> {
    let stmt = tx.prepare_cached("SELECT id, tier, scope FROM plans WHERE tenant_id = $1 AND id = $2").await?;
    tx.query_opt(&stmt, &[&tenant.0, &id]).await?.map(|row| header_of(&row)).transpose()
}

/// The tenant's free default plan, if it has one.
pub async fn free_default(tx: &Tx<'_>, tenant: TenantId) -> Result<Option<PlanHeader>, Error> {
    let stmt = tx.prepare_cached("SELECT id, tier, scope FROM plans WHERE tenant_id = $1 AND is_free_default").await?;
    tx.query_opt(&stmt, &[&tenant.0]).await?.map(|row| header_of(&row)).transpose()
}

fn header_of(row: &tokio_postgres::Row) -> Result<PlanHeader, Error> {
    let scope: &str = row.get(2);
    Ok(PlanHeader { id: row.get(0), tier: row.get(1), scope: Scope::parse(scope).ok_or_else(|| Error::Internal(format!("stored scope {scope}")))? })
}

/// One meter's terms in a plan; `None` when the plan does not list the meter.
pub async fn meter_terms(tx: &Tx<'_>, tenant: TenantId, plan_id: &str, meter: &Meter) -> Result<Option<MeterTerms>, Error> {
    let stmt = tx.prepare_cached(&METER_TERMS_SQL).await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &plan_id, &meter.as_str()]).await?.map(|row| terms(&row, 0)))
}

/// Prepares [`meter_terms`]' statement on this connection unless prepared already, so that it
/// is sent when its future is first polled (see `balances::prepare_lock`).
pub async fn prepare_meter_terms(tx: &Tx<'_>) -> Result<(), Error> {
    tx.prepare_cached(&METER_TERMS_SQL).await?;
    Ok(())
}

/// [`meter_terms`]' statement, built once.
static METER_TERMS_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {TERMS} FROM plan_meters WHERE tenant_id = $1 AND plan_id = $2 AND meter = $3"));

/// The headers of several plans at once (a batch of debits).
pub async fn headers(tx: &Tx<'_>, tenant: TenantId, ids: &[&str]) -> Result<Vec<PlanHeader>, Error> {
    let stmt = tx.prepare_cached("SELECT id, tier, scope FROM plans WHERE tenant_id = $1 AND id = ANY ($2)").await?;
    tx.query(&stmt, &[&tenant.0, &ids]).await?.iter().map(header_of).collect()
}

/// The terms of several `(plan, meter)` pairs at once; pairs the plan does not list are absent.
pub async fn meter_terms_many(
    tx: &Tx<'_>,
    tenant: TenantId,
    pairs: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), MeterTerms>, Error> {
    let sql = format!(
        "SELECT plan_id, meter, {TERMS} FROM plan_meters WHERE tenant_id = $1 \
         AND (plan_id, meter) IN (SELECT * FROM unnest($2::text[], $3::text[]))"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let (plans, meters): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let rows = tx.query(&stmt, &[&tenant.0, &plans, &meters]).await?;
    Ok(rows.iter().map(|row| ((row.get(0), row.get(1)), terms(row, 2))).collect())
}
