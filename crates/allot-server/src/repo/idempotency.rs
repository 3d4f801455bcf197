//! `idempotency_records`: the stored outcome of every idempotent request, keyed per tenant.

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::Tx;
use crate::error::Error;
use crate::ids::{IdempotencyKey, TenantId};

/// What a key was first used for and what it answered.
#[derive(Debug, Clone)]
pub struct Record {
    pub operation: String,
    pub request_sha256: Vec<u8>,
    pub response: serde_json::Value,
}

pub async fn find(tx: &Tx<'_>, tenant: TenantId, key: &IdempotencyKey) -> Result<Option<Record>, Error> {
    let stmt = tx.prepare_cached("SELECT operation, request_sha256, response FROM idempotency_records WHERE tenant_id = $1 AND key = $2").await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &key.as_str()]).await?.map(|row| Record {
        operation: row.get(0),
        request_sha256: row.get(1),
        response: row.get(2),
    }))
}

/// [`insert`]'s statement.
pub const INSERT_SQL: &str = "INSERT INTO idempotency_records (tenant_id, key, operation, request_sha256, response) VALUES ($1, $2, $3, $4, $5)";

/// Inserts the record with [`INSERT_SQL`], prepared already (sent when first polled). A
/// concurrent insert of the same key fails this transaction with a unique violation, which
/// [`is_conflict`] recognises.
pub async fn insert(tx: &Tx<'_>, stmt: &Statement, tenant: TenantId, key: &IdempotencyKey, record: &Record) -> Result<(), tokio_postgres::Error> {
    tx.execute(stmt, &[&tenant.0, &key.as_str(), &record.operation, &record.request_sha256, &record.response]).await?;
    Ok(())
}

/// Whether `err` is the unique violation of a concurrent insert of the same key.
pub fn is_conflict(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// The records of several keys at once (a batch of debits), by key.
pub async fn find_many(tx: &Tx<'_>, tenant: TenantId, keys: &[&str]) -> Result<std::collections::HashMap<String, Record>, Error> {
    // One primary-key lookup per key (see `balances::lock_many`).
    let stmt = tx
        .prepare_cached(
            "SELECT r.* FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL \
             (SELECT key, operation, request_sha256, response FROM idempotency_records WHERE tenant_id = $1 AND key = k.key LIMIT 1) r",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&tenant.0, &keys])
        .await?
        .into_iter()
        .map(|row| (row.get(0), Record { operation: row.get(1), request_sha256: row.get(2), response: row.get(3) }))
        .collect())
}

/// A record for [`RecordColumns`] whose response is already JSON text: serialized once, straight
/// from the outcome, without a `serde_json::Value` tree in between (building and dropping one cost
/// ~3 % of the CPU of a batched debit).
pub struct NewRecord<'a> {
    pub key: &'a str,
    pub operation: &'a str,
    pub request_sha256: &'a [u8],
    pub response_json: String,
}

/// Several records (a batch of debits) as the columns a batch's write statement
/// ([`super::batch_writes::WRITE_SQL`]) unnests and inserts; the statement fails, and aborts the
/// transaction, when another transaction stored one of the keys first.
pub struct RecordColumns<'a> {
    keys: Vec<&'a str>,
    operations: Vec<&'a str>,
    prints: Vec<&'a [u8]>,
    responses: Vec<&'a str>,
}

impl<'a> RecordColumns<'a> {
    pub fn of(records: &'a [NewRecord<'a>]) -> RecordColumns<'a> {
        RecordColumns {
            keys: records.iter().map(|r| r.key).collect(),
            operations: records.iter().map(|r| r.operation).collect(),
            prints: records.iter().map(|r| r.request_sha256).collect(),
            responses: records.iter().map(|r| r.response_json.as_str()).collect(),
        }
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The 4 arrays, in the statement's order.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.keys, &self.operations, &self.prints, &self.responses]
    }
}
