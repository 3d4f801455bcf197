//! What a batch reads of its meters beside their rows, in one statement where a lone decision
//! reads one table a statement: for a batch of checks (`read`), each meter's row, the total of
//! its live holds and its grants with credit left; for a batch of debits (`holds_and_grants`,
//! sent after the row lock so that it sees what was committed while the lock was awaited), the
//! holds and grants only. Each key is looked up on its own (lateral subqueries; see
//! `balances::lock_many`).

use std::collections::HashMap;
use std::sync::LazyLock;

use allot_domain::meter::Grant;
use time::OffsetDateTime;

use super::balances::{self, BalanceRow, MeterKey};
use super::grants;
use super::Tx;
use crate::error::Error;
use crate::ids::TenantId;

/// What [`read`] found, by `(account, meter)`.
#[derive(Debug, Default)]
pub struct MeterReads {
    /// Meters without a row are absent.
    pub rows: HashMap<MeterKey, BalanceRow>,
    /// Each meter's grants in the order of `grants::for_meter`; meters without any are absent.
    pub grants: HashMap<MeterKey, Vec<Grant>>,
    /// Meters without live holds are absent.
    pub held: HashMap<MeterKey, i64>,
}

/// Reads [`MeterReads`] of `keys` at `now` (holds that expired by then are not live).
pub async fn read(tx: &Tx<'_>, tenant: TenantId, keys: &[(&str, &str)], now: OffsetDateTime) -> Result<MeterReads, Error> {
    read_by(tx, tenant, keys, now, &WITH_ROWS_SQL, BALANCE_COLUMNS).await
}

/// [`read`] without the meters' rows (`rows` is empty), for meters whose rows this transaction
/// has locked and read.
pub async fn holds_and_grants(tx: &Tx<'_>, tenant: TenantId, keys: &[(&str, &str)], now: OffsetDateTime) -> Result<MeterReads, Error> {
    read_by(tx, tenant, keys, now, &WITHOUT_ROWS_SQL, 0).await
}

/// The reads of `sql`, whose key columns start at column `at` (after the row's columns, if any).
async fn read_by(tx: &Tx<'_>, tenant: TenantId, keys: &[(&str, &str)], now: OffsetDateTime, sql: &str, at: usize) -> Result<MeterReads, Error> {
    let stmt = tx.prepare_cached(sql).await?;
    let (accounts, meters): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let mut reads = MeterReads::default();
    // One row per meter and grant (one for a meter without grants), the row and holds repeated.
    for row in tx.query(&stmt, &[&tenant.0, &accounts, &meters, &now]).await? {
        let key: MeterKey = (row.get(at), row.get(at + 1));
        if at > 0 && row.get::<_, Option<OffsetDateTime>>(0).is_some() && !reads.rows.contains_key(&key) {
            reads.rows.insert(key.clone(), balances::from_row(&row));
        }
        if let Some(held) = row.get::<_, Option<i64>>(at + 2) {
            reads.held.insert(key.clone(), held);
        }
        if row.get::<_, Option<uuid::Uuid>>(at + 3).is_some() {
            reads.grants.entry(key).or_default().push(grants::from_row_at(&row, at + 3)?.grant);
        }
    }
    Ok(reads)
}

/// How many columns a meter's row takes at the start of a row (`balances::COLUMNS`).
const BALANCE_COLUMNS: usize = 10;

static WITH_ROWS_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = balances::COLUMNS;
    assert_eq!(columns.split(',').count(), BALANCE_COLUMNS, "the meter's row comes first");
    meters_sql(
        "b.*, ",
        &format!("LEFT JOIN LATERAL (SELECT {columns} FROM meter_balances WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter LIMIT 1) b ON true "),
    )
});
static WITHOUT_ROWS_SQL: LazyLock<String> = LazyLock::new(|| meters_sql("", ""));

/// Per key and grant: `row_columns` (from `row_join`), the key, the live holds' total (NULL
/// without any), the grant (NULL without any); keys in order, each meter's grants in the order
/// of `grants::for_meter` (the LIMIT bounds what one meter returns, as there).
fn meters_sql(row_columns: &str, row_join: &str) -> String {
    let grant_columns = grants::COLUMNS;
    format!(
        "SELECT {row_columns}k.account_id, k.meter, h.total, g.* \
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(account_id, meter, n) \
         {row_join}\
         CROSS JOIN LATERAL (SELECT SUM(amount_credits)::bigint AS total FROM holds \
           WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter AND status = 'held' AND expires_at > $4) h \
         LEFT JOIN LATERAL (SELECT {grant_columns} FROM grants \
           WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter AND remaining_credits > 0 \
           ORDER BY created_at, id LIMIT 10000) g ON true \
         ORDER BY k.n, g.created_at, g.id"
    )
}
