//! Tenant-scoped transactions. Every request transaction starts with [`begin`] (or its
//! read-only and snapshot variants), which sends `BEGIN` and sets `allot.tenant_id` for the
//! transaction in one round trip, so PostgreSQL's row-level security (migration `V8__security`)
//! shows the transaction only its tenant's rows, whatever a statement forgets. Background jobs
//! that span tenants say so with [`begin_all_tenants`] and a reason; that opens only the tables
//! the migration names for them.
//!
//! [`Tx`] is a small transaction guard over a pooled connection (tokio-postgres' own
//! `Transaction` cannot carry extra statements in its `BEGIN`): statements go through the
//! connection's statement cache, `commit` sends `COMMIT`, and a guard dropped without a commit
//! queues a `ROLLBACK` before the connection can be reused, exactly as tokio-postgres does.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt as _;

use crate::ids::TenantId;

/// A transaction on a pooled connection; rolled back unless committed.
pub struct Tx<'a> {
    client: &'a deadpool_postgres::ClientWrapper,
    /// Set once `COMMIT` or `ROLLBACK` is sent; atomic because [`Tx::commit_behind`] sets it
    /// through a shared reference (and `&Tx` crosses `await`s of `Send` futures).
    done: AtomicBool,
    read_only: bool,
}

impl Deref for Tx<'_> {
    type Target = deadpool_postgres::ClientWrapper;

    fn deref(&self) -> &deadpool_postgres::ClientWrapper {
        self.client
    }
}

impl Tx<'_> {
    /// Commits. The guard is spent first, so a `COMMIT` once sent is never followed by a
    /// `ROLLBACK` (a commit future dropped before it ran still rolls back).
    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.done.store(true, Ordering::Relaxed);
        self.client.batch_execute("COMMIT").await
    }

    /// Commits behind statements already sent, in the same round trip: `COMMIT` is sent when
    /// this future is first polled, so poll it after the writes it is to follow
    /// (`futures::try_join!` polls its futures in order), each with its statement prepared
    /// already (`repo::batch_writes`), or an Execute would go out after the `COMMIT`.
    /// PostgreSQL runs one connection's messages in order: it commits them all or, when one
    /// failed, ends the aborted transaction as a `ROLLBACK` — and answers that `COMMIT` without
    /// an error, so whether anything was committed is the writes' answers *and* this one. A
    /// guard whose `COMMIT` was never polled still rolls back when dropped. Nothing may be sent
    /// on the transaction after it.
    pub async fn commit_behind(&self) -> Result<(), tokio_postgres::Error> {
        let was_done = self.done.swap(true, Ordering::Relaxed);
        assert!(!was_done, "a transaction is committed once");
        self.client.batch_execute("COMMIT").await
    }

    /// Ends a read-only transaction without waiting: its `ROLLBACK` (for a transaction that wrote
    /// nothing, the same as `COMMIT`) is queued on the connection, ahead of whatever its next user
    /// sends.
    pub fn end_read_only(self) {
        assert!(self.read_only, "only a read-only transaction ends without waiting");
        // Dropping the guard queues the ROLLBACK.
    }

    /// Rolls back and waits for it.
    pub async fn rollback(self) -> Result<(), tokio_postgres::Error> {
        self.done.store(true, Ordering::Relaxed);
        self.client.batch_execute("ROLLBACK").await
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Relaxed) {
            // Polling once sends the message; the connection reads and discards the answer.
            let _ = self.client.batch_execute("ROLLBACK").now_or_never();
        }
    }
}

/// How a transaction reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read committed, read-write: every mutation.
    ReadWrite,
    /// Read committed, read-only.
    ReadOnly,
    /// Repeatable read, read-only: one snapshot for a whole answer (`Check`, summaries).
    Snapshot,
}

impl Access {
    fn begin(self) -> &'static str {
        match self {
            Access::ReadWrite => "BEGIN",
            Access::ReadOnly => "BEGIN READ ONLY",
            Access::Snapshot => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }
}

/// The background jobs (and the one request-path lookup) that may see every tenant's rows of
/// the tables migration `V8__security` opens to them. Each is named so `grep AllTenants::`
/// lists every such path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllTenants {
    /// Finding an API key's tenant from its hash (`api_keys`).
    KeyLookup,
    /// Voiding expired holds of every tenant (`holds`).
    HoldSweep,
    /// Announcing and ending trials of every tenant (`trials`, outbox tables).
    TrialSweep,
    /// Finding subsidy pools with funding to settle and pool reservations of expired holds
    /// (`subsidy_pending_funding`, `subsidy_holds`); each is then settled in its tenant's own
    /// transaction.
    SubsidySweep,
}

/// Starts a read-write transaction that sees only `tenant`'s rows.
pub async fn begin(client: &mut deadpool_postgres::Client, tenant: TenantId) -> Result<Tx<'_>, tokio_postgres::Error> {
    begin_with(client, tenant, Access::ReadWrite).await
}

/// Starts a transaction of `access` that sees only `tenant`'s rows: `BEGIN` and the tenant
/// setting travel in one message (one round trip, like a plain `BEGIN`).
pub async fn begin_with(client: &mut deadpool_postgres::Client, tenant: TenantId, access: Access) -> Result<Tx<'_>, tokio_postgres::Error> {
    start(client, &tenant_begin(tenant, access, ""), access).await
}

/// `BEGIN` of `access`, the tenant setting and `then`, as one message.
fn tenant_begin(tenant: TenantId, access: Access, then: &str) -> String {
    // A UUID's text form is hex digits and dashes only: nothing to quote. `SET LOCAL`, not
    // `SELECT set_config(…, true)`: the same transaction-local setting without a query to plan
    // and execute (~11 µs of PostgreSQL CPU per transaction, finding 21).
    format!("{}; SET LOCAL allot.tenant_id = '{}'{then}", access.begin(), tenant.0.hyphenated())
}

/// [`begin_with`] for a batch of requests (group-committed debits, checks sharing a snapshot),
/// in two ways:
/// - `BEGIN` is not waited for. It is queued on the connection and travels ahead of the batch's
///   first statements, one round trip fewer. The batch's first round trip must show that the
///   transaction began: `repo::tenants::config_version` fails when the tenant's row is not
///   visible, and it is visible only once `BEGIN` and the tenant setting have run (they are one
///   message, executed in order, before anything sent after it).
/// - Its statements are always executed with their generic (cached) plan. Batch statements look
///   each key up on its own (a lateral subquery per key), so the generic plan is the right one
///   for any batch size; left to `plan_cache_mode = auto`, PostgreSQL judged a small batch's
///   custom plan cheaper than the generic one (which assumes ten keys) and planned the statement
///   again on every execution: 190–250 µs of planning per batch at 16 clients
///   (docs/benchmarks.md, finding 18).
pub fn begin_batch(client: &deadpool_postgres::ClientWrapper, tenant: TenantId, access: Access) -> Result<Tx<'_>, tokio_postgres::Error> {
    let tx = Tx { client, done: AtomicBool::new(false), read_only: access != Access::ReadWrite };
    let sql = tenant_begin(tenant, access, "; SET LOCAL plan_cache_mode = force_generic_plan");
    // Polling once queues the message (as `Drop` does for its ROLLBACK); the connection reads
    // and discards the answer. An error already known (a closed connection) is returned.
    if let Some(Err(err)) = client.batch_execute(&sql).now_or_never() {
        return Err(err);
    }
    Ok(tx)
}

/// Starts a read-write transaction for a job that spans tenants (see [`AllTenants`]).
pub async fn begin_all_tenants(client: &mut deadpool_postgres::Client, why: AllTenants) -> Result<Tx<'_>, tokio_postgres::Error> {
    tracing::trace!(why = ?why, "transaction across tenants");
    start(client, "BEGIN; SET LOCAL allot.all_tenants = 'on'", Access::ReadWrite).await
}

async fn start<'a>(client: &'a mut deadpool_postgres::Client, sql: &str, access: Access) -> Result<Tx<'a>, tokio_postgres::Error> {
    let client: &'a deadpool_postgres::ClientWrapper = client;
    // The guard is live before `BEGIN` is sent: a caller that gives up mid-way rolls back.
    let tx = Tx { client, done: AtomicBool::new(false), read_only: access != Access::ReadWrite };
    client.batch_execute(sql).await?;
    Ok(tx)
}
