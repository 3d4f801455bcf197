//! What a batch of checks reads of its meters, in one statement: each meter's row, the total of
//! its live holds and its grants with credit left — three tables that a lone check reads one
//! statement each. Locks nothing: for a snapshot (a debit batch reads holds and grants after its
//! row locks, in statements of their own). Each key is looked up on its own (lateral
//! subqueries; see `balances::lock_many`).

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
    let stmt = tx.prepare_cached(&SQL).await?;
    let (accounts, meters): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let mut reads = MeterReads::default();
    // One row per meter and grant (one for a meter without grants), the row and holds repeated.
    for row in tx.query(&stmt, &[&tenant.0, &accounts, &meters, &now]).await? {
        let key: MeterKey = (row.get(BALANCE_COLUMNS), row.get(BALANCE_COLUMNS + 1));
        if row.get::<_, Option<OffsetDateTime>>(0).is_some() && !reads.rows.contains_key(&key) {
            reads.rows.insert(key.clone(), balances::from_row(&row));
        }
        if let Some(held) = row.get::<_, Option<i64>>(BALANCE_COLUMNS + 2) {
            reads.held.insert(key.clone(), held);
        }
        if row.get::<_, Option<uuid::Uuid>>(BALANCE_COLUMNS + 3).is_some() {
            reads.grants.entry(key).or_default().push(grants::from_row_at(&row, BALANCE_COLUMNS + 3)?.grant);
        }
    }
    Ok(reads)
}

/// How many columns a meter's row takes at the start of a row (`balances::COLUMNS`).
const BALANCE_COLUMNS: usize = 10;

/// Per key and grant: the meter's row (NULL without one), the key, the live holds' total (NULL
/// without any), the grant (NULL without any); keys in order, each meter's grants in the order of
/// `grants::for_meter` (the LIMIT bounds what one meter returns, as there).
static SQL: LazyLock<String> = LazyLock::new(|| {
    let (balance_columns, grant_columns) = (balances::COLUMNS, grants::COLUMNS);
    assert_eq!(balance_columns.split(',').count(), BALANCE_COLUMNS, "the meter's row comes first");
    format!(
        "SELECT b.*, k.account_id, k.meter, h.total, g.* \
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(account_id, meter, n) \
         LEFT JOIN LATERAL (SELECT {balance_columns} FROM meter_balances \
           WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter LIMIT 1) b ON true \
         CROSS JOIN LATERAL (SELECT SUM(amount_credits)::bigint AS total FROM holds \
           WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter AND status = 'held' AND expires_at > $4) h \
         LEFT JOIN LATERAL (SELECT {grant_columns} FROM grants \
           WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter AND remaining_credits > 0 \
           ORDER BY created_at, id LIMIT 10000) g ON true \
         ORDER BY k.n, g.created_at, g.id"
    )
});
