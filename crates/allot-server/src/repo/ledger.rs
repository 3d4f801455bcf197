//! `ledger_entries`: the append-only record of every balance change. Rows are only inserted; a
//! trigger refuses updates and deletes.

use std::sync::LazyLock;

use allot_domain::ledger::{Effect, EntryKind, Portion};
use allot_domain::period::Period;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};

/// What links an entry to the request that caused it.
#[derive(Debug, Clone, Default)]
pub struct EntryRefs {
    pub refunds_entry_id: Option<Uuid>,
    pub hold_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    /// The account that acted, when it is not the one that paid (a pooled org member).
    pub acting_account_id: Option<String>,
    /// Caller-supplied labels (`{}` when none).
    pub attributes: Option<serde_json::Value>,
    /// How usage given as a SKU was rated.
    pub rating: Option<serde_json::Value>,
}

/// A ledger entry as stored.
#[derive(Debug, Clone)]
pub struct EntryRow {
    pub position: i64,
    pub id: Uuid,
    pub account_id: String,
    pub meter: String,
    pub seq: i64,
    pub kind: EntryKind,
    pub delta_credits: i64,
    pub breakdown: Vec<Portion>,
    pub period: Period,
    pub refs: EntryRefs,
    pub created_at: OffsetDateTime,
}

const COLUMNS: &str = "position, id, account_id, meter, seq, kind, delta_credits, breakdown, period_start, period_end, refunds_entry_id, hold_id, \
     idempotency_key, created_at, acting_account_id, attributes, rating";

fn from_row(row: &tokio_postgres::Row) -> Result<EntryRow, Error> {
    let kind: &str = row.get(5);
    let breakdown: serde_json::Value = row.get(7);
    Ok(EntryRow {
        position: row.get(0),
        id: row.get(1),
        account_id: row.get(2),
        meter: row.get(3),
        seq: row.get(4),
        kind: EntryKind::parse(kind).ok_or_else(|| Error::Internal(format!("stored entry kind {kind}")))?,
        delta_credits: row.get(6),
        breakdown: serde_json::from_value(breakdown).map_err(|e| Error::Internal(format!("stored breakdown: {e}")))?,
        period: Period { start: row.get(8), end: row.get(9) },
        refs: EntryRefs {
            refunds_entry_id: row.get(10),
            hold_id: row.get(11),
            idempotency_key: row.get(12),
            acting_account_id: row.get(14),
            attributes: Some(row.get(15)),
            rating: row.get(16),
        },
        created_at: row.get(13),
    })
}

/// An entry to append: the effect, its period, and what it refers to.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub id: Uuid,
    pub effect: Effect,
    pub period: Period,
    pub refs: EntryRefs,
}

pub async fn get(tx: &Tx<'_>, tenant: TenantId, id: Uuid) -> Result<Option<EntryRow>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM ledger_entries WHERE tenant_id = $1 AND id = $2");
    let stmt = tx.prepare_cached(&sql).await?;
    tx.query_opt(&stmt, &[&tenant.0, &id]).await?.as_ref().map(from_row).transpose()
}

/// The sum of refunds of an entry so far.
pub async fn refunded_total(tx: &Tx<'_>, tenant: TenantId, entry_id: Uuid) -> Result<i64, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(delta_credits), 0)::bigint FROM ledger_entries \
             WHERE tenant_id = $1 AND refunds_entry_id = $2 AND kind = 'refund'",
        )
        .await?;
    Ok(tx.query_one(&stmt, &[&tenant.0, &entry_id]).await?.get(0))
}

/// A page of an account's entries after `after_position`, oldest first.
pub async fn page(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    meter: Option<&Meter>,
    after_position: i64,
    limit: i64,
) -> Result<Vec<EntryRow>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger_entries WHERE tenant_id = $1 AND account_id = $2 AND ($3::text IS NULL OR meter = $3) \
         AND position > $4 ORDER BY position LIMIT $5"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str(), &meter.map(Meter::as_str), &after_position, &limit]).await?;
    rows.iter().map(from_row).collect()
}

/// The entries of one meter to append after its last `seq` (see [`append_many`]).
pub struct MeterEntries<'a> {
    pub account: &'a AccountId,
    pub meter: &'a Meter,
    pub last_seq: i64,
    pub entries: &'a [NewEntry],
}

/// [`append_many`]'s statement.
pub const APPEND_MANY_SQL: &str =
    "INSERT INTO ledger_entries (tenant_id, id, account_id, meter, seq, kind, delta_credits, breakdown, period_start, period_end, \
             refunds_entry_id, hold_id, idempotency_key, created_at, acting_account_id, attributes, rating) \
             SELECT $1, id, account_id, meter, seq, kind, delta_credits, breakdown::jsonb, period_start, period_end, refunds_entry_id, hold_id, \
             idempotency_key, $2, acting_account_id, attributes, rating \
             FROM unnest($3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::timestamptz[], \
             $11::timestamptz[], $12::uuid[], $13::uuid[], $14::text[], $15::text[], $16::jsonb[], $17::jsonb[]) \
             AS e(id, account_id, meter, seq, kind, delta_credits, breakdown, period_start, period_end, refunds_entry_id, hold_id, \
             idempotency_key, acting_account_id, attributes, rating)";

/// Appends the entries of one or more meters (a session's, or a batch's) in one statement, each
/// meter's with consecutive `seq` numbers after its `last_seq`.
pub async fn append_many(tx: &Tx<'_>, tenant: TenantId, meters: &[MeterEntries<'_>], now: OffsetDateTime) -> Result<(), Error> {
    let columns = EntryColumns::of(meters)?;
    if columns.is_empty() {
        return Ok(());
    }
    let stmt = tx.prepare_cached(APPEND_MANY_SQL).await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant.0, &now];
    params.extend(columns.params());
    tx.execute(&stmt, &params).await?;
    Ok(())
}

/// The entries of one or more meters as the columns [`APPEND_MANY_SQL`] unnests (its parameters
/// from `$3` on), each meter's with consecutive `seq` numbers after its `last_seq`.
pub struct EntryColumns<'a> {
    ids: Vec<Uuid>,
    accounts: Vec<&'a str>,
    meters: Vec<&'a str>,
    seqs: Vec<i64>,
    kinds: Vec<&'static str>,
    deltas: Vec<i64>,
    /// JSON text, cast by the statement: no `serde_json::Value` in between.
    breakdowns: Vec<String>,
    starts: Vec<OffsetDateTime>,
    ends: Vec<OffsetDateTime>,
    refunds: Vec<Option<Uuid>>,
    holds: Vec<Option<Uuid>>,
    keys: Vec<Option<&'a str>>,
    acting: Vec<Option<&'a str>>,
    attributes: Vec<&'a serde_json::Value>,
    ratings: Vec<Option<&'a serde_json::Value>>,
}

/// Attributes of an entry that has none.
static NO_ATTRIBUTES: LazyLock<serde_json::Value> = LazyLock::new(|| serde_json::Value::Object(serde_json::Map::new()));

impl<'a> EntryColumns<'a> {
    /// The columns of `meters`' entries.
    pub fn of(meters: &'a [MeterEntries<'a>]) -> Result<EntryColumns<'a>, Error> {
        let count: usize = meters.iter().map(|m| m.entries.len()).sum();
        let mut c = EntryColumns {
            ids: Vec::with_capacity(count),
            accounts: Vec::with_capacity(count),
            meters: Vec::with_capacity(count),
            seqs: Vec::with_capacity(count),
            kinds: Vec::with_capacity(count),
            deltas: Vec::with_capacity(count),
            breakdowns: Vec::with_capacity(count),
            starts: Vec::with_capacity(count),
            ends: Vec::with_capacity(count),
            refunds: Vec::with_capacity(count),
            holds: Vec::with_capacity(count),
            keys: Vec::with_capacity(count),
            acting: Vec::with_capacity(count),
            attributes: Vec::with_capacity(count),
            ratings: Vec::with_capacity(count),
        };
        for meter in meters {
            for (i, entry) in meter.entries.iter().enumerate() {
                c.ids.push(entry.id);
                c.accounts.push(meter.account.as_str());
                c.meters.push(meter.meter.as_str());
                c.seqs.push(meter.last_seq + 1 + i as i64);
                c.kinds.push(entry.effect.kind.as_str());
                c.deltas.push(entry.effect.delta_credits);
                c.breakdowns.push(serde_json::to_string(&entry.effect.breakdown).map_err(|e| Error::Internal(format!("breakdown: {e}")))?);
                c.starts.push(entry.period.start);
                c.ends.push(entry.period.end);
                c.refunds.push(entry.refs.refunds_entry_id);
                c.holds.push(entry.refs.hold_id);
                c.keys.push(entry.refs.idempotency_key.as_deref());
                c.acting.push(entry.refs.acting_account_id.as_deref());
                c.attributes.push(entry.refs.attributes.as_ref().unwrap_or(&NO_ATTRIBUTES));
                c.ratings.push(entry.refs.rating.as_ref());
            }
        }
        Ok(c)
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The 15 arrays, in the statement's order.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        [
            &self.ids,
            &self.accounts,
            &self.meters,
            &self.seqs,
            &self.kinds,
            &self.deltas,
            &self.breakdowns,
            &self.starts,
            &self.ends,
            &self.refunds,
            &self.holds,
            &self.keys,
            &self.acting,
            &self.attributes,
            &self.ratings,
        ]
    }
}
