//! Idempotency records: a request's fingerprint and stored outcome, replayed to retries with the
//! same key and refused for a different request under the same key.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ids::{IdempotencyKey, TenantId};
use crate::repo::idempotency::{self, Record};
use crate::repo::Tx;

/// A request's identity: the operation and every field that changes its meaning.
pub fn fingerprint(operation: &str, fields: &[&dyn std::fmt::Display]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    for field in fields {
        hasher.update(b"\x1f");
        hasher.update(field.to_string().as_bytes());
    }
    hasher.finalize().to_vec()
}

/// The stored outcome for `key` if there is one: the same request gets it back, another request
/// is refused.
pub async fn replay<T: DeserializeOwned>(
    tx: &Tx<'_>,
    tenant: TenantId,
    key: &IdempotencyKey,
    operation: &str,
    fingerprint: &[u8],
) -> Result<Option<T>, Error> {
    idempotency::find(tx, tenant, key).await?.map(|record| replay_record(record, operation, fingerprint)).transpose()
}

/// What a stored record means for a request with `fingerprint`: its outcome, or a refusal.
pub fn replay_record<T: DeserializeOwned>(record: Record, operation: &str, fingerprint: &[u8]) -> Result<T, Error> {
    if record.operation == operation && record.request_sha256 == fingerprint {
        serde_json::from_value(record.response).map_err(|e| Error::Internal(format!("stored outcome: {e}")))
    } else {
        Err(Error::IdempotencyKeyReused)
    }
}

/// Stores the outcome as the transaction's last write and commits, in one round trip (`COMMIT`
/// sent behind the record, see `Tx::commit_behind`). `Ok(false)` when another transaction stored
/// one for the same key first: the record's insert failed, so the `COMMIT` rolled everything back
/// and the caller must replay from a fresh transaction.
pub async fn store_and_commit<T: Serialize>(
    tx: Tx<'_>,
    tenant: TenantId,
    key: &IdempotencyKey,
    operation: &str,
    fingerprint: Vec<u8>,
    outcome: &T,
) -> Result<bool, Error> {
    let response = serde_json::to_value(outcome).map_err(|e| Error::Internal(format!("outcome: {e}")))?;
    let record = Record { operation: operation.to_owned(), request_sha256: fingerprint, response };
    // Prepared before anything is sent: the insert must go out ahead of the `COMMIT`.
    let statement = tx.prepare_cached(idempotency::INSERT_SQL).await?;
    let mut insert = std::pin::pin!(idempotency::insert(&tx, &statement, tenant, key, &record));
    // An insert that fails before it is sent (its parameters would not encode) must not be
    // followed by a COMMIT: answered here, the guard rolls everything back.
    if let std::task::Poll::Ready(Err(err)) = futures::poll!(insert.as_mut()) {
        return stored(Err(err));
    }
    let (inserted, committed) = futures::join!(insert, tx.commit_behind());
    let stored = stored(inserted)?;
    committed?;
    Ok(stored)
}

/// Whether an insert stored the record (`false`: the key was stored by another transaction).
fn stored(inserted: Result<(), tokio_postgres::Error>) -> Result<bool, Error> {
    match inserted {
        Ok(()) => Ok(true),
        Err(err) if idempotency::is_conflict(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}
