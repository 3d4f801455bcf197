//! `holds`: credit reserved for work in flight, and how each hold was settled.

use time::OffsetDateTime;
use uuid::Uuid;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};

/// A hold's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Held,
    Committed,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "held" => Ok(Self::Held),
            "committed" => Ok(Self::Committed),
            "released" => Ok(Self::Released),
            "expired" => Ok(Self::Expired),
            other => Err(Error::Internal(format!("stored hold status {other}"))),
        }
    }
}

/// One meter of a hold as stored (a hold on several meters has one row each, sharing the id).
#[derive(Debug, Clone)]
pub struct HoldRow {
    pub id: Uuid,
    /// The account that pays (the meter row's account).
    pub account_id: String,
    /// The account that placed the hold.
    pub acting_account_id: String,
    pub attributes: serde_json::Value,
    /// The day whose restrict-stage budget the hold pre-charged.
    pub restrict_day: Option<time::Date>,
    pub meter: String,
    pub amount_credits: i64,
    pub status: HoldStatus,
    pub expires_at: OffsetDateTime,
    pub settlement_request_sha256: Option<Vec<u8>>,
    pub settlement_response: Option<serde_json::Value>,
}

const COLUMNS: &str =
    "id, account_id, meter, amount_credits, status, expires_at, settlement_request_sha256, settlement_response, acting_account_id, attributes, restrict_day";

fn from_row(row: &tokio_postgres::Row) -> Result<HoldRow, Error> {
    Ok(HoldRow {
        id: row.get(0),
        account_id: row.get(1),
        meter: row.get(2),
        amount_credits: row.get(3),
        status: HoldStatus::parse(row.get(4))?,
        expires_at: row.get(5),
        settlement_request_sha256: row.get(6),
        settlement_response: row.get(7),
        acting_account_id: row.get(8),
        attributes: row.get(9),
        restrict_day: row.get(10),
    })
}

/// The sum of holds that still count at `now`.
pub async fn held_total(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, now: OffsetDateTime) -> Result<i64, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_credits), 0)::bigint FROM holds \
             WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 AND status = 'held' AND expires_at > $4",
        )
        .await?;
    Ok(tx.query_one(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &now]).await?.get(0))
}

/// Live holds of an account, for balance views.
pub async fn live_for_account(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, now: OffsetDateTime) -> Result<Vec<HoldRow>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM holds WHERE tenant_id = $1 AND account_id = $2 AND status = 'held' AND expires_at > $3 \
         ORDER BY meter, expires_at, id LIMIT 10000"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str(), &now]).await?;
    rows.iter().map(from_row).collect()
}

/// A hold about to be placed.
#[derive(Debug, Clone)]
pub struct NewHold<'a> {
    pub id: Uuid,
    pub account: &'a AccountId,
    pub acting: &'a AccountId,
    pub attributes: &'a serde_json::Value,
    pub meter: &'a Meter,
    pub amount_credits: i64,
    pub expires_at: OffsetDateTime,
    pub restrict_day: Option<time::Date>,
}

pub async fn insert(tx: &Tx<'_>, tenant: TenantId, hold: &NewHold<'_>, now: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO holds (tenant_id, id, account_id, meter, amount_credits, status, expires_at, created_at, acting_account_id, attributes, restrict_day) \
             VALUES ($1, $2, $3, $4, $5, 'held', $6, $7, $8, $9, $10)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tenant.0,
            &hold.id,
            &hold.account.as_str(),
            &hold.meter.as_str(),
            &hold.amount_credits,
            &hold.expires_at,
            &now,
            &hold.acting.as_str(),
            hold.attributes,
            &hold.restrict_day,
        ],
    )
    .await?;
    Ok(())
}

/// Reads every meter of a hold, in meter order; with `for_update` they are locked (after their
/// meters' rows: see the lock order). Empty when there is no such hold.
pub async fn get(tx: &Tx<'_>, tenant: TenantId, id: Uuid, for_update: bool) -> Result<Vec<HoldRow>, Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM holds WHERE tenant_id = $1 AND id = $2 ORDER BY meter COLLATE \"C\"{lock}");
    let stmt = tx.prepare_cached(&sql).await?;
    tx.query(&stmt, &[&tenant.0, &id]).await?.iter().map(from_row).collect()
}

/// Settles every meter of a held hold, storing the response that retries will get.
pub async fn settle(
    tx: &Tx<'_>,
    tenant: TenantId,
    id: Uuid,
    status: HoldStatus,
    request_sha256: &[u8],
    response: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE holds SET status = $3, settled_at = $4, settlement_request_sha256 = $5, settlement_response = $6 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'held'",
        )
        .await?;
    let updated = tx.execute(&stmt, &[&tenant.0, &id, &status.as_str(), &now, &request_sha256, response]).await?;
    if updated == 0 {
        return Err(Error::Internal("settled a hold that was not held".into()));
    }
    Ok(())
}

/// Marks up to `limit` holds whose TTL has passed as expired, across tenants (a system job), and
/// returns the restrict-stage budget they pre-charged to their day. Returns how many it voided.
pub async fn sweep_expired(client: &Tx<'_>, now: OffsetDateTime, limit: i64) -> Result<u64, Error> {
    let stmt = client
        .prepare_cached(
            "WITH expired AS ( \
                UPDATE holds SET status = 'expired', settled_at = $1 WHERE (tenant_id, id, meter) IN ( \
                    SELECT tenant_id, id, meter FROM holds WHERE status = 'held' AND expires_at <= $1 \
                    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                RETURNING tenant_id, acting_account_id, meter, restrict_day, amount_credits), \
             returned AS ( \
                UPDATE restrict_usage r SET used_credits = GREATEST(r.used_credits - e.amount, 0) \
                FROM (SELECT tenant_id, acting_account_id, meter, restrict_day, SUM(amount_credits)::bigint AS amount FROM expired \
                      WHERE restrict_day IS NOT NULL GROUP BY 1, 2, 3, 4) e \
                WHERE r.tenant_id = e.tenant_id AND r.account_id = e.acting_account_id AND r.meter = e.meter AND r.day = e.restrict_day \
                RETURNING 1) \
             SELECT COUNT(*) FROM expired",
        )
        .await?;
    let voided: i64 = client.query_one(&stmt, &[&now, &limit]).await?.get(0);
    Ok(u64::try_from(voided).unwrap_or(0))
}

/// The expiry of the oldest hold still held although its TTL has passed, across tenants (the
/// sweeper's lag; uses the `holds_sweep` index).
pub async fn oldest_expired(client: &Tx<'_>, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, Error> {
    let stmt = client.prepare_cached("SELECT MIN(expires_at) FROM holds WHERE status = 'held' AND expires_at <= $1").await?;
    Ok(client.query_one(&stmt, &[&now]).await?.get(0))
}
