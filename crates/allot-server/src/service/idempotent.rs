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
    let insert = idempotency::insert(&tx, &statement, tenant, key, &record);
    match insert_then_commit(insert, tx.commit_behind()).await {
        // Failed before the COMMIT was sent: the guard rolls everything back.
        (inserted, None) => stored(inserted),
        (inserted, Some(committed)) => {
            let stored = stored(inserted)?;
            committed?;
            Ok(stored)
        }
    }
}

/// Sends `insert` (its first poll sends it), then `commit` behind it, and waits for both; the
/// commit's answer is `None` when it was not sent. An insert that fails at its first poll (before
/// it is sent, its parameters not encoding; or answered already with an error) is not followed by
/// the commit: either way the transaction writes nothing and its guard rolls it back. One
/// answered already at its first poll (its thread was descheduled long enough for the answer to
/// arrive) is not polled again: the commit follows alone.
async fn insert_then_commit<E>(
    insert: impl std::future::Future<Output = Result<(), E>>,
    commit: impl std::future::Future<Output = Result<(), E>>,
) -> (Result<(), E>, Option<Result<(), E>>) {
    let mut insert = std::pin::pin!(insert);
    match futures::poll!(insert.as_mut()) {
        std::task::Poll::Ready(Err(err)) => (Err(err), None),
        std::task::Poll::Ready(Ok(())) => (Ok(()), Some(commit.await)),
        std::task::Poll::Pending => {
            let (inserted, committed) = futures::join!(insert, commit);
            (inserted, Some(committed))
        }
    }
}

/// Whether an insert stored the record (`false`: the key was stored by another transaction).
fn stored(inserted: Result<(), tokio_postgres::Error>) -> Result<bool, Error> {
    match inserted {
        Ok(()) => Ok(true),
        Err(err) if idempotency::is_conflict(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::insert_then_commit;

    /// A future that is pending at its first poll and ready at the next.
    async fn answered_later(result: Result<(), String>) -> Result<(), String> {
        let mut polled = false;
        futures::future::poll_fn(|cx| {
            if polled {
                std::task::Poll::Ready(())
            } else {
                polled = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
        result
    }

    #[tokio::test]
    async fn an_insert_answered_at_its_first_poll_is_not_polled_again_and_the_commit_follows() {
        let committed = AtomicBool::new(false);
        // `async {}` panics if polled after it completed, as the real insert does.
        let insert = async { Ok::<(), String>(()) };
        let commit = async {
            committed.store(true, Ordering::SeqCst);
            Ok(())
        };
        let (inserted, commit_answer) = insert_then_commit(insert, commit).await;
        assert_eq!((inserted, commit_answer), (Ok(()), Some(Ok(()))));
        assert!(committed.load(Ordering::SeqCst), "the commit is sent after an insert answered at once");
    }

    #[tokio::test]
    async fn an_insert_that_fails_before_it_is_sent_is_not_followed_by_the_commit() {
        let committed = AtomicBool::new(false);
        let commit = async {
            committed.store(true, Ordering::SeqCst);
            Ok(())
        };
        let (inserted, commit_answer) = insert_then_commit(async { Err("would not encode".to_owned()) }, commit).await;
        assert_eq!((inserted, commit_answer), (Err("would not encode".to_owned()), None));
        assert!(!committed.load(Ordering::SeqCst), "no commit behind an insert that was never sent");
    }

    #[tokio::test]
    async fn an_insert_in_flight_is_joined_with_the_commit_behind_it() {
        let (inserted, commit_answer) = insert_then_commit(answered_later(Err("conflict".to_owned())), answered_later(Ok(()))).await;
        assert_eq!((inserted, commit_answer), (Err("conflict".to_owned()), Some(Ok(()))));
        let (inserted, commit_answer) = insert_then_commit(answered_later(Ok(())), answered_later(Ok(()))).await;
        assert_eq!((inserted, commit_answer), (Ok(()), Some(Ok(()))));
    }
}
