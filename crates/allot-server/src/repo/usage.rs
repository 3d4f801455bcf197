//! `member_usage` (a pooled member's use of an org meter per period) and `usage_rollups`
//! (charged totals per attribute value and period). Both change only under the meter's row lock.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use tokio_postgres::Statement;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};

/// A member's use of a pooled org meter in the period starting at `period_start`.
pub async fn member_used(
    tx: &Tx<'_>,
    tenant: TenantId,
    org: &AccountId,
    meter: &Meter,
    period_start: OffsetDateTime,
    member: &AccountId,
) -> Result<i64, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT used_credits FROM member_usage WHERE tenant_id = $1 AND org_id = $2 AND meter = $3 AND period_start = $4 AND member_id = $5",
        )
        .await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &org.as_str(), &meter.as_str(), &period_start, &member.as_str()]).await?.map_or(0, |row| row.get(0)))
}

/// Adds `delta_credits` (negative for refunds, never below zero) to a member's use.
pub async fn add_member_used(
    tx: &Tx<'_>,
    tenant: TenantId,
    org: &AccountId,
    meter: &Meter,
    period_start: OffsetDateTime,
    member: &AccountId,
    delta_credits: i64,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO member_usage (tenant_id, org_id, meter, period_start, member_id, used_credits) VALUES ($1, $2, $3, $4, $5, GREATEST($6::bigint, 0)) \
             ON CONFLICT (tenant_id, org_id, meter, period_start, member_id) \
             DO UPDATE SET used_credits = GREATEST(member_usage.used_credits + $6, 0)",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &org.as_str(), &meter.as_str(), &period_start, &member.as_str(), &delta_credits]).await?;
    Ok(())
}

/// Live holds a member placed on a pooled meter.
pub async fn member_held(
    tx: &Tx<'_>,
    tenant: TenantId,
    org: &AccountId,
    meter: &Meter,
    member: &AccountId,
    now: OffsetDateTime,
) -> Result<i64, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_credits), 0)::bigint FROM holds WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 \
             AND acting_account_id = $4 AND status = 'held' AND expires_at > $5",
        )
        .await?;
    Ok(tx.query_one(&stmt, &[&tenant.0, &org.as_str(), &meter.as_str(), &member.as_str(), &now]).await?.get(0))
}

/// A change to a meter's usage roll-ups: a charge (`charges` 1, positive total) or a refund
/// (`charges` 0, negative total), in the period it belongs to.
#[derive(Debug, Clone)]
pub struct Rollup {
    pub period_start: OffsetDateTime,
    pub attributes: BTreeMap<String, String>,
    pub total_credits: i64,
    pub charges: i64,
    /// Whether the change also goes to the period's overall roll-up (`attr_key` ''): not for the
    /// meter's current period, whose overall usage is kept on its `meter_balances` row.
    pub overall: bool,
}

/// Adds a change to one roll-up per attribute and, if [`Rollup::overall`], to the overall one.
pub async fn roll_up(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, rollup: &Rollup) -> Result<(), Error> {
    let Rollup { period_start, attributes, total_credits, charges, overall } = rollup;
    if !overall && attributes.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO usage_rollups AS r (tenant_id, account_id, meter, period_start, attr_key, attr_value, total_credits, charges) \
             SELECT $1, $2, $3, $4, k, v, $7, $8 FROM unnest($5::text[], $6::text[]) AS a(k, v) \
             ON CONFLICT (tenant_id, account_id, meter, period_start, attr_key, attr_value) \
             DO UPDATE SET total_credits = r.total_credits + EXCLUDED.total_credits, charges = r.charges + EXCLUDED.charges",
        )
        .await?;
    let (mut keys, mut values) = if *overall { (vec![String::new()], vec![String::new()]) } else { (Vec::new(), Vec::new()) };
    for (k, v) in attributes {
        keys.push(k.clone());
        values.push(v.clone());
    }
    tx.execute(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &period_start, &keys, &values, &total_credits, &charges]).await?;
    Ok(())
}

/// One group of a breakdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub value: String,
    pub total_credits: i64,
    pub charges: i64,
}

/// Totals per value of `attr_key` in one period, largest first. Charges without the attribute
/// are reported under the empty value (the overall total less the attributed ones). The overall
/// total is the period's overall roll-up plus the meter row's figures when they belong to that
/// period.
pub async fn breakdown(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    meter: &Meter,
    period_start: OffsetDateTime,
    attr_key: &str,
    limit: i64,
) -> Result<Vec<Group>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT attr_key, attr_value, total_credits, charges FROM usage_rollups \
             WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 AND period_start = $4 AND attr_key IN ('', $5) \
             UNION ALL SELECT '', '', period_charged_credits, period_charges FROM meter_balances \
             WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 AND period_usage_start = $4",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &period_start, &attr_key]).await?;
    let (mut overall_total, mut overall_charges) = (0i64, 0i64);
    let mut groups = Vec::new();
    for row in &rows {
        let key: &str = row.get(0);
        let total: i64 = row.get(2);
        let charges: i64 = row.get(3);
        if key.is_empty() {
            overall_total += total;
            overall_charges += charges;
        } else {
            groups.push(Group { value: row.get(1), total_credits: total, charges });
        }
    }
    let attributed_total: i64 = groups.iter().map(|g| g.total_credits).sum();
    let attributed_charges: i64 = groups.iter().map(|g| g.charges).sum();
    if overall_charges > attributed_charges || overall_total != attributed_total {
        groups.push(Group { value: String::new(), total_credits: overall_total - attributed_total, charges: overall_charges - attributed_charges });
    }
    groups.sort_by(|a, b| b.total_credits.cmp(&a.total_credits).then_with(|| a.value.cmp(&b.value)));
    groups.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(groups)
}

/// [`roll_up_many`]'s statement.
pub const ROLL_UP_MANY_SQL: &str =
    "INSERT INTO usage_rollups AS r (tenant_id, account_id, meter, period_start, attr_key, attr_value, total_credits, charges) \
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::bigint[], $8::bigint[]) \
     ON CONFLICT (tenant_id, account_id, meter, period_start, attr_key, attr_value) \
     DO UPDATE SET total_credits = r.total_credits + EXCLUDED.total_credits, charges = r.charges + EXCLUDED.charges";

/// [`roll_up`] for several meters (a batch of debits) in one statement ([`ROLL_UP_MANY_SQL`],
/// prepared already: sent when first polled). Roll-ups of the same meter, period and attributes
/// are merged first (one statement may not update a row twice).
pub async fn roll_up_many(tx: &Tx<'_>, stmt: &Statement, tenant: TenantId, rollups: &[(&AccountId, &Meter, Rollup)]) -> Result<(), Error> {
    // (account, meter, period start, attribute key, value) → (total credits, charges)
    type Row<'a> = (&'a str, &'a str, OffsetDateTime, &'a str, &'a str);
    let mut merged: BTreeMap<Row, (i64, i64)> = BTreeMap::new();
    for (account, meter, rollup) in rollups {
        let overall = rollup.overall.then_some(("", ""));
        for (k, v) in overall.into_iter().chain(rollup.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            let sums = merged.entry((account.as_str(), meter.as_str(), rollup.period_start, k, v)).or_default();
            sums.0 += rollup.total_credits;
            sums.1 += rollup.charges;
        }
    }
    if merged.is_empty() {
        return Ok(());
    }
    let accounts: Vec<&str> = merged.keys().map(|k| k.0).collect();
    let meters: Vec<&str> = merged.keys().map(|k| k.1).collect();
    let starts: Vec<OffsetDateTime> = merged.keys().map(|k| k.2).collect();
    let attr_keys: Vec<&str> = merged.keys().map(|k| k.3).collect();
    let attr_values: Vec<&str> = merged.keys().map(|k| k.4).collect();
    let totals: Vec<i64> = merged.values().map(|v| v.0).collect();
    let charges: Vec<i64> = merged.values().map(|v| v.1).collect();
    tx.execute(stmt, &[&tenant.0, &accounts, &meters, &starts, &attr_keys, &attr_values, &totals, &charges]).await?;
    Ok(())
}
