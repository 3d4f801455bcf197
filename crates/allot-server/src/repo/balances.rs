//! `meter_balances`: one row per account and meter, the row every charge locks.

use std::sync::LazyLock;

use allot_domain::period::Period;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};

/// The stored scalars of a meter (grants and holds live in their own tables).
#[derive(Debug, Clone)]
pub struct BalanceRow {
    pub period: Period,
    pub allowance_credits: Option<i64>,
    pub allowance_used_credits: i64,
    pub rollover_credits: i64,
    pub debt_credits: i64,
    /// The `seq` of the meter's last ledger entry.
    pub seq: i64,
    /// What was charged in the period starting `period_usage_start` (refunds subtracted) and
    /// how many charges: that period's overall usage, kept here rather than in `usage_rollups`
    /// until the row is saved in a later period (`None` on a row no save has set it on yet,
    /// whose figures are zero). See migration V12.
    pub period_usage_start: Option<OffsetDateTime>,
    pub period_charged_credits: i64,
    pub period_charges: i64,
}

/// The columns `from_row` reads, in its order.
pub(super) const COLUMNS: &str =
    "period_start, period_end, allowance_credits, allowance_used_credits, rollover_credits, debt_credits, seq, period_usage_start, period_charged_credits, period_charges";

pub(super) fn from_row(row: &tokio_postgres::Row) -> BalanceRow {
    BalanceRow {
        period: Period { start: row.get(0), end: row.get(1) },
        allowance_credits: row.get(2),
        allowance_used_credits: row.get(3),
        rollover_credits: row.get(4),
        debt_credits: row.get(5),
        seq: row.get(6),
        period_usage_start: row.get(7),
        period_charged_credits: row.get(8),
        period_charges: row.get(9),
    }
}

/// Locks the meter's row (`SELECT … FOR UPDATE`) and reads it; `None` when it does not exist yet.
#[tracing::instrument(name = "db.lock", skip_all, fields(tenant.id = %tenant, account.id = %account, meter = %meter))]
pub async fn lock(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter) -> Result<Option<BalanceRow>, Error> {
    let stmt = tx.prepare_cached(&LOCK_SQL).await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str()]).await?.as_ref().map(from_row))
}

/// Prepares [`lock`]'s statement on this connection unless prepared already, so that reads
/// pipelined behind the lock are executed after it (see [`prepare_lock_many`]).
pub async fn prepare_lock(tx: &Tx<'_>) -> Result<(), Error> {
    tx.prepare_cached(&LOCK_SQL).await?;
    Ok(())
}

/// [`lock`]'s statement, built once.
static LOCK_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM meter_balances WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 FOR UPDATE"));

/// Reads the meter's row without locking it.
pub async fn read(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter) -> Result<Option<BalanceRow>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM meter_balances WHERE tenant_id = $1 AND account_id = $2 AND meter = $3");
    let stmt = tx.prepare_cached(&sql).await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str()]).await?.as_ref().map(from_row))
}

/// Every meter row of an account, in meter order.
pub async fn list_meters(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<Vec<Meter>, Error> {
    let stmt = tx.prepare_cached("SELECT meter FROM meter_balances WHERE tenant_id = $1 AND account_id = $2 ORDER BY meter LIMIT 1000").await?;
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str()]).await?;
    rows.iter().map(|row| Meter::parse(row.get(0)).map_err(|e| Error::Internal(format!("stored meter: {e}")))).collect()
}

/// Creates the meter's row in its opening state unless another transaction did first. Returns
/// whether this call created it.
pub async fn insert_opening(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    meter: &Meter,
    period: Period,
    allowance_credits: Option<i64>,
    now: OffsetDateTime,
) -> Result<bool, Error> {
    let created = insert_openings(tx, tenant, &[(account.as_str(), meter.as_str(), period, allowance_credits)], now).await?;
    Ok(!created.is_empty())
}

/// A meter row to open: account, meter, period and allowance (`None`: unmetered).
pub type Opening<'a> = (&'a str, &'a str, Period, Option<i64>);

/// Creates several meters' rows in their opening state in one statement (a batch's first-used
/// meters, given in `(account, meter)` order), skipping rows another transaction created first.
/// Returns the keys this call created.
pub async fn insert_openings(
    tx: &Tx<'_>,
    tenant: TenantId,
    openings: &[Opening<'_>],
    now: OffsetDateTime,
) -> Result<std::collections::HashSet<MeterKey>, Error> {
    if openings.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO meter_balances (tenant_id, account_id, meter, period_start, period_end, allowance_credits, updated_at) \
             SELECT $1, u.account_id, u.meter, u.period_start, u.period_end, u.allowance_credits, $7 \
             FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bigint[]) \
             AS u(account_id, meter, period_start, period_end, allowance_credits) \
             ON CONFLICT (tenant_id, account_id, meter) DO NOTHING RETURNING account_id, meter",
        )
        .await?;
    let accounts: Vec<&str> = openings.iter().map(|o| o.0).collect();
    let meters: Vec<&str> = openings.iter().map(|o| o.1).collect();
    let starts: Vec<OffsetDateTime> = openings.iter().map(|o| o.2.start).collect();
    let ends: Vec<OffsetDateTime> = openings.iter().map(|o| o.2.end).collect();
    let allowances: Vec<Option<i64>> = openings.iter().map(|o| o.3).collect();
    let rows = tx.query(&stmt, &[&tenant.0, &accounts, &meters, &starts, &ends, &allowances, &now]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Stores the meter's scalars; the row must be locked by this transaction.
pub async fn save(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, row: &BalanceRow, now: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE meter_balances SET period_start = $4, period_end = $5, allowance_credits = $6, allowance_used_credits = $7, \
             rollover_credits = $8, debt_credits = $9, seq = $10, updated_at = $11, period_usage_start = $12, period_charged_credits = $13, period_charges = $14 \
             WHERE tenant_id = $1 AND account_id = $2 AND meter = $3",
        )
        .await?;
    let updated = tx
        .execute(
            &stmt,
            &[
                &tenant.0,
                &account.as_str(),
                &meter.as_str(),
                &row.period.start,
                &row.period.end,
                &row.allowance_credits,
                &row.allowance_used_credits,
                &row.rollover_credits,
                &row.debt_credits,
                &row.seq,
                &now,
                &row.period_usage_start,
                &row.period_charged_credits,
                &row.period_charges,
            ],
        )
        .await?;
    if updated != 1 {
        return Err(Error::Internal(format!("saving a meter updated {updated} rows")));
    }
    Ok(())
}

/// A meter row's key: `(account, meter)`.
pub type MeterKey = (String, String);

/// Locks the rows of several meters (a batch of debits) in one statement, in `(account, meter)`
/// order — the lock order of batches, so two batches never wait on each other in a cycle — and
/// reads them. Meters without a row are absent. `keys` must be in that order.
///
/// Batch statements look each key up on its own (a lateral subquery per key, which the planner
/// cannot turn into a join): a join against the tenant's rows would scan all of them whenever the
/// statistics are those of a small table, as on a fresh deployment (measured: 4–7 ms a batch
/// with 10,000 accounts, against well under 1 ms).
///
/// Traced as `db.lock` with how many meter rows it locks and, when they are all of one meter (as
/// they usually are), that meter.
#[tracing::instrument(name = "db.lock", skip_all, fields(tenant.id = %tenant, meters = keys.len(), meter = tracing::field::Empty))]
pub async fn lock_many(tx: &Tx<'_>, tenant: TenantId, keys: &[(&str, &str)]) -> Result<std::collections::HashMap<MeterKey, BalanceRow>, Error> {
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "meters are locked in (account, meter) byte order");
    if let Some((_, meter)) = keys.first().filter(|(_, first)| keys.iter().all(|(_, m)| m == first)) {
        tracing::Span::current().record("meter", *meter);
    }
    let stmt = tx.prepare_cached(&LOCK_MANY_SQL).await?;
    let (accounts, meters): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let rows = tx.query(&stmt, &[&tenant.0, &accounts, &meters]).await?;
    Ok(rows.iter().map(|row| ((row.get(10), row.get(11)), from_row(row))).collect())
}

/// Prepares [`lock_many`]'s statement on the transaction's connection: nothing is sent when it is
/// prepared already. A batch that pipelines reads behind its row lock awaits this first: a
/// statement still to be prepared goes out as Parse, and its Execute one round trip later —
/// behind reads sent after it whose statements were prepared (docs/benchmarks.md, finding 23).
pub async fn prepare_lock_many(tx: &Tx<'_>) -> Result<(), Error> {
    tx.prepare_cached(&LOCK_MANY_SQL).await?;
    Ok(())
}

/// [`lock_many`]'s statement, built once: the rows of the keys `$2`/`$3`, each looked up by a
/// lateral subquery (`FOR UPDATE` keeps the planner from merging it into a join), in the order of
/// the keys.
static LOCK_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT b.* FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(account_id, meter, n) \
         CROSS JOIN LATERAL (SELECT {COLUMNS}, account_id, meter FROM meter_balances \
           WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter FOR UPDATE) b \
         ORDER BY k.n"
    )
});

/// The scalars of several meters this transaction has locked, as the columns a batch's write
/// statement ([`super::batch_writes::WRITE_SQL`]) unnests and stores: each key finds its row's
/// current version on its own (a lateral subquery, like [`lock_many`]) and the update reaches it
/// by that physical address (`ctid`, stable while the row is locked), since a plain `UPDATE …
/// FROM unnest(…)` is planned as a join over all the tenant's rows whenever the statistics are
/// those of a small table. One statement a batch replaced one per meter (docs/benchmarks.md,
/// finding 9).
pub struct BalanceColumns<'a> {
    accounts: Vec<&'a str>,
    meters: Vec<&'a str>,
    starts: Vec<OffsetDateTime>,
    ends: Vec<OffsetDateTime>,
    allowances: Vec<Option<i64>>,
    used: Vec<i64>,
    rollover: Vec<i64>,
    debt: Vec<i64>,
    seqs: Vec<i64>,
    usage_starts: Vec<Option<OffsetDateTime>>,
    charged: Vec<i64>,
    charges: Vec<i64>,
}

impl<'a> BalanceColumns<'a> {
    pub fn of(rows: &'a [(&'a AccountId, &'a Meter, BalanceRow)]) -> BalanceColumns<'a> {
        BalanceColumns {
            accounts: rows.iter().map(|(a, _, _)| a.as_str()).collect(),
            meters: rows.iter().map(|(_, m, _)| m.as_str()).collect(),
            starts: rows.iter().map(|(_, _, r)| r.period.start).collect(),
            ends: rows.iter().map(|(_, _, r)| r.period.end).collect(),
            allowances: rows.iter().map(|(_, _, r)| r.allowance_credits).collect(),
            used: rows.iter().map(|(_, _, r)| r.allowance_used_credits).collect(),
            rollover: rows.iter().map(|(_, _, r)| r.rollover_credits).collect(),
            debt: rows.iter().map(|(_, _, r)| r.debt_credits).collect(),
            seqs: rows.iter().map(|(_, _, r)| r.seq).collect(),
            usage_starts: rows.iter().map(|(_, _, r)| r.period_usage_start).collect(),
            charged: rows.iter().map(|(_, _, r)| r.period_charged_credits).collect(),
            charges: rows.iter().map(|(_, _, r)| r.period_charges).collect(),
        }
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// The 12 arrays, in the statement's order.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.accounts,
            &self.meters,
            &self.starts,
            &self.ends,
            &self.allowances,
            &self.used,
            &self.rollover,
            &self.debt,
            &self.seqs,
            &self.usage_starts,
            &self.charged,
            &self.charges,
        ]
    }
}
