//! `grants`: purchased and promotional credit with priority and expiry.

use allot_domain::ledger::GrantKind;
use allot_domain::meter::Grant;
use tokio_postgres::Statement;
use uuid::Uuid;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};

/// A grant as stored, with its meter and original amount.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub meter: String,
    pub amount_credits: i64,
    pub grant: Grant,
}

/// The columns `from_row` reads, in its order.
pub(super) const COLUMNS: &str = "id, kind, remaining_credits, priority, expires_at, created_at, meter, amount_credits";

fn from_row(row: &tokio_postgres::Row) -> Result<GrantRow, Error> {
    from_row_at(row, 0)
}

/// The grant whose [`COLUMNS`] start at column `at`.
pub(super) fn from_row_at(row: &tokio_postgres::Row, at: usize) -> Result<GrantRow, Error> {
    let kind: &str = row.get(at + 1);
    Ok(GrantRow {
        grant: Grant {
            id: row.get(at),
            kind: GrantKind::parse(kind).ok_or_else(|| Error::Internal(format!("stored grant kind {kind}")))?,
            remaining_credits: row.get(at + 2),
            priority: row.get(at + 3),
            expires_at: row.get(at + 4),
            created_at: row.get(at + 5),
        },
        meter: row.get(at + 6),
        amount_credits: row.get(at + 7),
    })
}

/// Grants of a meter with credit left (expired ones included: expiry is the rules' business),
/// plus the grants named in `also` whatever their state.
pub async fn for_meter(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, also: &[Uuid]) -> Result<Vec<Grant>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM grants WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 \
         AND (remaining_credits > 0 OR id = ANY($4)) ORDER BY created_at, id LIMIT 10000"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let also: Vec<Uuid> = also.to_vec();
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &also]).await?;
    rows.iter().map(|row| from_row(row).map(|r| r.grant)).collect()
}

/// Every grant of an account with credit left, for balance views.
pub async fn for_account(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<Vec<GrantRow>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM grants WHERE tenant_id = $1 AND account_id = $2 AND remaining_credits > 0 ORDER BY meter, created_at, id LIMIT 10000"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str()]).await?;
    rows.iter().map(from_row).collect()
}

pub async fn insert(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, grant: &Grant, amount_credits: i64) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO grants (tenant_id, id, account_id, meter, kind, amount_credits, remaining_credits, priority, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tenant.0,
            &grant.id,
            &account.as_str(),
            &meter.as_str(),
            &grant.kind.as_str(),
            &amount_credits,
            &grant.remaining_credits,
            &grant.priority,
            &grant.expires_at,
            &grant.created_at,
        ],
    )
    .await?;
    Ok(())
}

/// [`set_remaining_with`]'s statement: fails unless every grant was updated
/// (`allot_expect_rows`, migration `V15__write_checks`).
pub const SET_REMAINING_SQL: &str = "WITH u AS (UPDATE grants AS g SET remaining_credits = c.remaining \
       FROM unnest($2::uuid[], $3::bigint[]) AS c(id, remaining) WHERE g.tenant_id = $1 AND g.id = c.id RETURNING 1) \
     SELECT allot_expect_rows(count(*), cardinality($2::uuid[]), 'grants') FROM u";

/// Stores new remaining amounts, `(grant id, remaining)`.
pub async fn set_remaining(tx: &Tx<'_>, tenant: TenantId, changes: &[(Uuid, i64)]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let stmt = tx.prepare_cached(SET_REMAINING_SQL).await?;
    set_remaining_with(tx, &stmt, tenant, changes).await
}

/// [`set_remaining`] with its statement prepared already ([`super::batch_writes`]): sent when
/// first polled.
pub async fn set_remaining_with(tx: &Tx<'_>, stmt: &Statement, tenant: TenantId, changes: &[(Uuid, i64)]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changes.iter().map(|c| c.0).collect();
    let remaining: Vec<i64> = changes.iter().map(|c| c.1).collect();
    tx.execute(stmt, &[&tenant.0, &ids, &remaining]).await?;
    Ok(())
}

/// Makes grants with credit left expire at `now` (the next decision on their meter records the
/// expiry in the ledger).
pub async fn expire_now(tx: &Tx<'_>, tenant: TenantId, ids: &[Uuid], now: time::OffsetDateTime) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached("UPDATE grants SET expires_at = $3 WHERE tenant_id = $1 AND id = ANY($2) AND remaining_credits > 0 AND (expires_at IS NULL OR expires_at > $3)")
        .await?;
    let ids = ids.to_vec();
    tx.execute(&stmt, &[&tenant.0, &ids, &now]).await?;
    Ok(())
}
