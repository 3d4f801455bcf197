//! The statements a debit batch writes with, prepared together before any of them is sent.
//!
//! A batch sends its writes and its `COMMIT` in one round trip (docs/benchmarks.md, finding
//! 30). tokio-postgres sends a prepared statement's Execute when its future is first polled, but
//! a statement still to be prepared goes out as Parse and its Execute only once the Parse has
//! answered — behind a `COMMIT` sent meanwhile, outside the transaction. So each write of a
//! batch takes its statement from [`BatchStatements`], whose preparation completes before the
//! first write is sent: one round trip on a connection that has not written a batch yet, none
//! after (the connection's statement cache).
//!
//! What every batch that decides something writes — ledger entries, balance rows, idempotency
//! records — is one statement ([`WRITE_SQL`], docs/benchmarks.md finding 39); grants, usage
//! rollups and hourly usage, which only some batches change, have a statement each.

use std::sync::LazyLock;

use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::balances::BalanceColumns;
use super::idempotency::RecordColumns;
use super::ledger::{EntryColumns, APPEND_MANY_SQL};
use super::Tx;
use crate::error::Error;
use crate::ids::TenantId;

/// Ledger entries (`$3`–`$17`, [`APPEND_MANY_SQL`] itself), balance rows (`$18`–`$29`,
/// [`BalanceColumns`]) and idempotency records (`$30`–`$33`, [`RecordColumns`]) of a batch, with
/// the tenant (`$1`) and the time (`$2`). Data-modifying `WITH` queries all run to completion
/// whether or not the final query reads them. The final query fails, aborting the transaction,
/// unless every balance row was updated (`allot_expect_rows`, migration `V15__write_checks`).
/// A key another transaction stored first fails the records' insert itself (a unique
/// violation), with the same effect, so the records need no count: a plain insert, not `ON
/// CONFLICT DO NOTHING`, whose speculative insertion cost ~8 µs more per record
/// (docs/benchmarks.md, finding 63).
pub static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH l AS ({APPEND_MANY_SQL}), \
         t AS (SELECT k.*, r.row_id FROM unnest($18::text[], $19::text[], $20::timestamptz[], $21::timestamptz[], $22::int8[], \
             $23::int8[], $24::int8[], $25::int8[], $26::int8[], $27::timestamptz[], $28::int8[], $29::int8[]) \
           AS k(account_id, meter, period_start, period_end, allowance_credits, allowance_used_credits, rollover_credits, \
             debt_credits, seq, period_usage_start, period_charged_credits, period_charges) \
           CROSS JOIN LATERAL (SELECT ctid AS row_id FROM meter_balances \
             WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter LIMIT 1) r), \
         u AS (UPDATE meter_balances b SET period_start = t.period_start, period_end = t.period_end, \
             allowance_credits = t.allowance_credits, allowance_used_credits = t.allowance_used_credits, \
             rollover_credits = t.rollover_credits, debt_credits = t.debt_credits, seq = t.seq, updated_at = $2, \
             period_usage_start = t.period_usage_start, period_charged_credits = t.period_charged_credits, \
             period_charges = t.period_charges \
           FROM t WHERE b.ctid = t.row_id AND b.tenant_id = $1 RETURNING 1), \
         i AS (INSERT INTO idempotency_records (tenant_id, key, operation, request_sha256, response) \
           SELECT $1, key, operation, request_sha256, response::jsonb \
           FROM unnest($30::text[], $31::text[], $32::bytea[], $33::text[]) AS r(key, operation, request_sha256, response)) \
         SELECT allot_expect_rows((SELECT count(*) FROM u), cardinality($18::text[]), 'meter balances')"
    )
});

/// One prepared statement per kind of write a batch makes.
pub struct BatchStatements {
    /// [`WRITE_SQL`].
    pub write: Statement,
    pub grants: Statement,
    pub rollups: Statement,
    pub hourly: Statement,
}

impl BatchStatements {
    /// Prepares (or finds in the connection's cache) every statement, all at once.
    pub async fn prepare(tx: &Tx<'_>) -> Result<BatchStatements, Error> {
        let (write, grants, rollups, hourly) = futures::try_join!(
            tx.prepare_cached(&WRITE_SQL),
            tx.prepare_cached(super::grants::SET_REMAINING_SQL),
            tx.prepare_cached(super::usage::ROLL_UP_MANY_SQL),
            tx.prepare_cached(super::fair_use::ADD_HOURLY_MANY_SQL),
        )?;
        Ok(BatchStatements { write, grants, rollups, hourly })
    }
}

/// Writes a batch's ledger entries, balance rows and idempotency records in one statement
/// ([`WRITE_SQL`], prepared already: sent when first polled); nothing when there are none.
pub async fn write(
    tx: &Tx<'_>,
    statements: &BatchStatements,
    tenant: TenantId,
    now: OffsetDateTime,
    entries: &EntryColumns<'_>,
    balances: &BalanceColumns<'_>,
    records: &RecordColumns<'_>,
) -> Result<(), Error> {
    if entries.is_empty() && balances.is_empty() && records.is_empty() {
        return Ok(());
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(33);
    params.extend([&tenant.0 as &(dyn ToSql + Sync), &now]);
    params.extend(entries.params());
    params.extend(balances.params());
    params.extend(records.params());
    assert_eq!(params.len(), 33, "one value per parameter of the write statement");
    tx.execute(&statements.write, &params).await?;
    Ok(())
}
