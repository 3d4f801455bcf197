//! The statements a debit batch writes with, prepared together before any of them is sent.
//!
//! A batch sends its writes and its `COMMIT` in one round trip (docs/benchmarks.md, finding
//! 30). tokio-postgres sends a prepared statement's Execute when its future is first polled, but
//! a statement still to be prepared goes out as Parse and its Execute only once the Parse has
//! answered — behind a `COMMIT` sent meanwhile, outside the transaction. So each write of a
//! batch takes its statement from [`BatchStatements`], whose preparation completes before the
//! first write is sent: one round trip on a connection that has not written a batch yet, none
//! after (the connection's statement cache).

use tokio_postgres::Statement;

use super::Tx;
use crate::error::Error;

/// One prepared statement per table a batch writes.
pub struct BatchStatements {
    pub ledger: Statement,
    pub balances: Statement,
    pub grants: Statement,
    pub rollups: Statement,
    pub hourly: Statement,
    pub idempotency: Statement,
}

impl BatchStatements {
    /// Prepares (or finds in the connection's cache) every statement, all at once.
    pub async fn prepare(tx: &Tx<'_>) -> Result<BatchStatements, Error> {
        let (ledger, balances, grants, rollups, hourly, idempotency) = futures::try_join!(
            tx.prepare_cached(super::ledger::APPEND_MANY_SQL),
            tx.prepare_cached(super::balances::SAVE_MANY_SQL),
            tx.prepare_cached(super::grants::SET_REMAINING_SQL),
            tx.prepare_cached(super::usage::ROLL_UP_MANY_SQL),
            tx.prepare_cached(super::fair_use::ADD_HOURLY_MANY_SQL),
            tx.prepare_cached(super::idempotency::INSERT_MANY_SQL),
        )?;
        Ok(BatchStatements { ledger, balances, grants, rollups, hourly, idempotency })
    }
}
