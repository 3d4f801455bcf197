//! `idempotency_records`: the stored outcome of every idempotent request, keyed per tenant.

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

/// A record for [`insert_many`] whose response is already JSON text: serialized once, straight
/// from the outcome, without a `serde_json::Value` tree in between (building and dropping one cost
/// ~3 % of the CPU of a batched debit).
pub struct NewRecord<'a> {
    pub key: &'a str,
    pub operation: &'a str,
    pub request_sha256: &'a [u8],
    pub response_json: String,
}

/// [`insert_many`]'s statement: fails unless every record was inserted — when another
/// transaction stored one of the keys first (`allot_expect_rows`, migration `V15__write_checks`).
pub const INSERT_MANY_SQL: &str = "WITH i AS (INSERT INTO idempotency_records (tenant_id, key, operation, request_sha256, response) \
       SELECT $1, key, operation, request_sha256, response::jsonb \
       FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[]) AS r(key, operation, request_sha256, response) \
       ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1) \
     SELECT allot_expect_rows(count(*), cardinality($2::text[]), 'idempotency records, a key stored concurrently') FROM i";

/// Inserts several records (a batch of debits) in one statement ([`INSERT_MANY_SQL`], prepared
/// already: sent when first polled). Fails, and aborts the transaction, when another
/// transaction stored one of the keys first.
pub async fn insert_many(tx: &Tx<'_>, stmt: &Statement, tenant: TenantId, records: &[NewRecord<'_>]) -> Result<(), Error> {
    if records.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = records.iter().map(|r| r.key).collect();
    let operations: Vec<&str> = records.iter().map(|r| r.operation).collect();
    let prints: Vec<&[u8]> = records.iter().map(|r| r.request_sha256).collect();
    let responses: Vec<&str> = records.iter().map(|r| r.response_json.as_str()).collect();
    tx.execute(stmt, &[&tenant.0, &keys, &operations, &prints, &responses]).await?;
    Ok(())
}
