//! `price_versions`, `price_rates`, `pricing_policies` and `pricing_policy_dimensions`: the price
//! book and each tenant's pricing policy, plus the `allot_prices` notification that tells every
//! replica's cache to forget a tenant's SKU or policy. Reads take any client (the rating cache
//! reads outside a transaction); writes take the caller's transaction.

use allot_domain::pricing::{CostBounds, Dimension, PerDimension, Policy, PriceVersion, Sku, SkuPattern, UnitPrice, UnitPrices};
use time::OffsetDateTime;

use super::Tx;
use crate::error::Error;
use crate::ids::TenantId;

/// The channel price and policy writes notify, in the same transaction.
pub const CHANNEL: &str = "allot_prices";

/// A stored price version with its SKU.
#[derive(Debug, Clone)]
pub struct PriceRecord {
    pub sku: Sku,
    pub version: PriceVersion,
    pub created_at: OffsetDateTime,
}

/// A tenant's stored policy; `version` 0 and no `updated_at` when it never set one.
#[derive(Debug, Clone, Default)]
pub struct PolicyRecord {
    pub policy: Policy,
    pub version: i64,
    pub updated_at: Option<OffsetDateTime>,
}

fn dimension(raw: &str) -> Result<Dimension, Error> {
    Dimension::parse(raw).ok_or_else(|| Error::Internal(format!("stored dimension {raw}")))
}

fn stored_sku(raw: &str) -> Result<Sku, Error> {
    Sku::parse(raw).map_err(|e| Error::Internal(format!("stored sku: {e}")))
}

/// Versions from rows of `version, effective_from, effective_to, dimension?, credits?, per_units?`
/// sorted by version, merging the rates of each version.
fn versions_of(rows: &[tokio_postgres::Row]) -> Result<Vec<PriceVersion>, Error> {
    let mut versions: Vec<PriceVersion> = Vec::new();
    for row in rows {
        let number: i64 = row.get(0);
        if versions.last().is_none_or(|v| v.version != number) {
            versions.push(PriceVersion { version: number, effective_from: row.get(1), effective_to: row.get(2), unit_prices: UnitPrices::default() });
        }
        if let Some(raw) = row.get::<_, Option<&str>>(3) {
            let price = UnitPrice { credits: row.get(4), per_units: row.get(5) };
            if let Some(last) = versions.last_mut() {
                last.unit_prices.set(dimension(raw)?, Some(price));
            }
        }
    }
    Ok(versions)
}

/// The `limit` latest versions of a SKU, newest first.
pub async fn latest(client: &Tx<'_>, tenant: TenantId, sku: &Sku, limit: i64) -> Result<Vec<PriceVersion>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT v.version, v.effective_from, v.effective_to, r.dimension, r.credits, r.per_units \
             FROM (SELECT version, effective_from, effective_to FROM price_versions WHERE tenant_id = $1 AND sku = $2 ORDER BY version DESC LIMIT $3) v \
             LEFT JOIN price_rates r ON r.tenant_id = $1 AND r.sku = $2 AND r.version = v.version \
             ORDER BY v.version DESC",
        )
        .await?;
    versions_of(&client.query(&stmt, &[&tenant.0, &sku.as_str(), &limit]).await?)
}

/// The version in force at `at`, if any.
pub async fn in_force_at(client: &Tx<'_>, tenant: TenantId, sku: &Sku, at: OffsetDateTime) -> Result<Option<PriceVersion>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT v.version, v.effective_from, v.effective_to, r.dimension, r.credits, r.per_units \
             FROM (SELECT version, effective_from, effective_to FROM price_versions WHERE tenant_id = $1 AND sku = $2 \
                   AND effective_from <= $3 AND (effective_to IS NULL OR effective_to > $3) ORDER BY version DESC LIMIT 1) v \
             LEFT JOIN price_rates r ON r.tenant_id = $1 AND r.sku = $2 AND r.version = v.version",
        )
        .await?;
    Ok(versions_of(&client.query(&stmt, &[&tenant.0, &sku.as_str(), &at]).await?)?.pop())
}

/// Versions still in force at or after `at` (not ended by then), oldest first.
pub async fn not_ended_by(tx: &Tx<'_>, tenant: TenantId, sku: &Sku, at: OffsetDateTime) -> Result<Vec<PriceVersion>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT v.version, v.effective_from, v.effective_to, r.dimension, r.credits, r.per_units \
             FROM price_versions v LEFT JOIN price_rates r ON r.tenant_id = v.tenant_id AND r.sku = v.sku AND r.version = v.version \
             WHERE v.tenant_id = $1 AND v.sku = $2 AND (v.effective_to IS NULL OR v.effective_to > $3) ORDER BY v.version",
        )
        .await?;
    versions_of(&tx.query(&stmt, &[&tenant.0, &sku.as_str(), &at]).await?)
}

/// Serialises writers of one SKU until the transaction ends (readers are not blocked).
pub async fn lock_sku(tx: &Tx<'_>, tenant: TenantId, sku: &Sku) -> Result<(), Error> {
    let stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text || ' price ' || $2::text, 0))").await?;
    tx.execute(&stmt, &[&tenant.0, &sku.as_str()]).await?;
    Ok(())
}

/// Stores a new version and its unit prices.
pub async fn insert(tx: &Tx<'_>, tenant: TenantId, sku: &Sku, version: &PriceVersion, created_at: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO price_versions (tenant_id, sku, version, effective_from, effective_to, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &sku.as_str(), &version.version, &version.effective_from, &version.effective_to, &created_at]).await?;
    let rate =
        tx.prepare_cached("INSERT INTO price_rates (tenant_id, sku, version, dimension, credits, per_units) VALUES ($1, $2, $3, $4, $5, $6)").await?;
    for (d, price) in version.unit_prices.iter() {
        tx.execute(&rate, &[&tenant.0, &sku.as_str(), &version.version, &d.as_str(), &price.credits, &price.per_units]).await?;
    }
    Ok(())
}

/// Ends `version` at `to`.
pub async fn set_end(tx: &Tx<'_>, tenant: TenantId, sku: &Sku, version: i64, to: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx.prepare_cached("UPDATE price_versions SET effective_to = $4 WHERE tenant_id = $1 AND sku = $2 AND version = $3").await?;
    tx.execute(&stmt, &[&tenant.0, &sku.as_str(), &version, &to]).await?;
    Ok(())
}

/// One version of a SKU.
pub async fn get(tx: &Tx<'_>, tenant: TenantId, sku: &Sku, version: i64) -> Result<Option<PriceRecord>, Error> {
    let page = page(tx, tenant, Some(sku), None, (sku.as_str(), version - 1), 1).await?;
    Ok(page.into_iter().next().filter(|p| p.version.version == version))
}

/// Versions after `after` = (sku, version) in (sku, version) order: of one SKU when `sku` is
/// set; only those not ended (nor superseded) by `current_at` when it is set.
pub async fn page(
    tx: &Tx<'_>,
    tenant: TenantId,
    sku: Option<&Sku>,
    current_at: Option<OffsetDateTime>,
    after: (&str, i64),
    limit: i64,
) -> Result<Vec<PriceRecord>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT sku, version, effective_from, effective_to, created_at FROM price_versions \
             WHERE tenant_id = $1 AND ($2::text IS NULL OR sku = $2) \
               AND ($3::timestamptz IS NULL OR effective_to IS NULL OR (effective_to > $3 AND effective_to > effective_from)) \
               AND (sku, version) > ($4, $5) \
             ORDER BY sku, version LIMIT $6",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &sku.map(Sku::as_str), &current_at, &after.0, &after.1, &limit]).await?;
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        records.push(PriceRecord {
            sku: stored_sku(row.get(0))?,
            version: PriceVersion { version: row.get(1), effective_from: row.get(2), effective_to: row.get(3), unit_prices: UnitPrices::default() },
            created_at: row.get(4),
        });
    }
    if records.is_empty() {
        return Ok(records);
    }
    let skus: Vec<&str> = records.iter().map(|r| r.sku.as_str()).collect();
    let numbers: Vec<i64> = records.iter().map(|r| r.version.version).collect();
    let rates = tx
        .prepare_cached(
            "SELECT sku, version, dimension, credits, per_units FROM price_rates \
             WHERE tenant_id = $1 AND (sku, version) IN (SELECT * FROM unnest($2::text[], $3::bigint[]))",
        )
        .await?;
    for row in tx.query(&rates, &[&tenant.0, &skus, &numbers]).await? {
        let (sku, number): (&str, i64) = (row.get(0), row.get(1));
        if let Some(record) = records.iter_mut().find(|r| r.sku.as_str() == sku && r.version.version == number) {
            record.version.unit_prices.set(dimension(row.get(2))?, Some(UnitPrice { credits: row.get(3), per_units: row.get(4) }));
        }
    }
    Ok(records)
}

/// The tenant's policy (the default one when it never set any).
pub async fn policy(client: &Tx<'_>, tenant: TenantId) -> Result<PolicyRecord, Error> {
    let stmt = client.prepare_cached("SELECT strict, high_value_patterns, version, updated_at FROM pricing_policies WHERE tenant_id = $1").await?;
    let Some(row) = client.query_opt(&stmt, &[&tenant.0]).await? else {
        return Ok(PolicyRecord::default());
    };
    let patterns: Vec<String> = row.get(1);
    let mut policy = Policy {
        strict: row.get(0),
        high_value_patterns: patterns
            .iter()
            .map(|p| SkuPattern::parse(p).map_err(|e| Error::Internal(format!("stored pattern: {e}"))))
            .collect::<Result<_, _>>()?,
        default_price: UnitPrices::default(),
        bounds: PerDimension::default(),
    };
    let dims = client
        .prepare_cached(
            "SELECT dimension, default_credits, default_per_units, min_cost_credits_per_1k_units, max_cost_credits_per_1k_units \
             FROM pricing_policy_dimensions WHERE tenant_id = $1",
        )
        .await?;
    for row in client.query(&dims, &[&tenant.0]).await? {
        let d = dimension(row.get(0))?;
        if let (Some(credits), Some(per_units)) = (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)) {
            policy.default_price.set(d, Some(UnitPrice { credits, per_units }));
        }
        let bounds = CostBounds { min_cost_credits_per_1k_units: row.get(3), max_cost_credits_per_1k_units: row.get(4) };
        if bounds != CostBounds::default() {
            policy.bounds.set(d, Some(bounds));
        }
    }
    Ok(PolicyRecord { policy, version: row.get(2), updated_at: Some(row.get(3)) })
}

/// Replaces the tenant's policy; returns its new version.
pub async fn save_policy(tx: &Tx<'_>, tenant: TenantId, policy: &Policy, updated_at: OffsetDateTime) -> Result<i64, Error> {
    let patterns: Vec<&str> = policy.high_value_patterns.iter().map(SkuPattern::as_str).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO pricing_policies (tenant_id, strict, high_value_patterns, version, updated_at) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET strict = EXCLUDED.strict, high_value_patterns = EXCLUDED.high_value_patterns, \
             version = pricing_policies.version + 1, updated_at = EXCLUDED.updated_at RETURNING version",
        )
        .await?;
    let version: i64 = tx.query_one(&stmt, &[&tenant.0, &policy.strict, &patterns, &updated_at]).await?.get(0);
    let delete = tx.prepare_cached("DELETE FROM pricing_policy_dimensions WHERE tenant_id = $1").await?;
    tx.execute(&delete, &[&tenant.0]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO pricing_policy_dimensions (tenant_id, dimension, default_credits, default_per_units, \
             min_cost_credits_per_1k_units, max_cost_credits_per_1k_units) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    for d in Dimension::ALL {
        let price = policy.default_price.get(d);
        let bounds = policy.bounds.get(d);
        if price.is_none() && bounds.is_none() {
            continue;
        }
        let bounds = bounds.unwrap_or_default();
        tx.execute(
            &insert,
            &[
                &tenant.0,
                &d.as_str(),
                &price.map(|p| p.credits),
                &price.map(|p| p.per_units),
                &bounds.min_cost_credits_per_1k_units,
                &bounds.max_cost_credits_per_1k_units,
            ],
        )
        .await?;
    }
    Ok(version)
}

/// Tells every replica, when the transaction commits, to forget the tenant's cached `sku` (or its
/// policy, for `None`). The payload is `<tenant uuid>` or `<tenant uuid> <sku>`.
pub async fn notify(tx: &Tx<'_>, tenant: TenantId, sku: Option<&Sku>) -> Result<(), Error> {
    let payload = match sku {
        Some(sku) => format!("{} {}", tenant.0, sku.as_str()),
        None => tenant.0.to_string(),
    };
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&stmt, &[&CHANNEL, &payload]).await?;
    Ok(())
}
