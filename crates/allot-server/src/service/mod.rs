//! The imperative shell: each operation owns its transaction boundary and the lock order, loads
//! state through `repo`, asks `allot_domain` to decide, and persists what the rules proposed.
//!
//! Lock order (every transaction that takes more than one lock takes them in this order):
//! 1. the meter's `meter_balances` row (`SELECT … FOR UPDATE`),
//! 2. then a hold row of that meter (`SELECT … FOR UPDATE`),
//! 3. then subsidy rows: a hold's pool parts, the identity's day row, one pool shard,
//! 4. then fair-use rows (`escalation_state`, then the outbox counter).
//!
//! Grants, ledger entries and idempotency records are only touched while (1) is held.

pub mod admin;
pub mod classification;
pub mod credits;
pub mod events;
pub mod fair_use;
pub mod health;
pub mod idempotent;
pub mod in_force;
pub mod meter_session;
pub mod outcome;
pub mod plan_book;
pub mod pools;
pub mod pricing;
pub mod rate;
pub mod subsidy;
pub mod summary;
pub mod sweeper;
pub mod trials;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::Error;

/// What every service needs: the pool and the clock.
#[derive(Clone)]
pub struct Ctx {
    pub pool: deadpool_postgres::Pool,
    pub clock: Arc<dyn Clock>,
    /// Connections taken by services (health probes excluded): proves paths that must not touch
    /// the database (a held classifier cooldown) do not.
    pub db_checkouts: Arc<AtomicU64>,
    /// Tenants' configuration as batches read it, at each tenant's configuration version.
    pub plan_book: Arc<plan_book::PlanBook>,
}

impl Ctx {
    pub fn new(pool: deadpool_postgres::Pool, clock: Arc<dyn Clock>) -> Ctx {
        Ctx { pool, clock, db_checkouts: Arc::new(AtomicU64::new(0)), plan_book: Arc::default() }
    }

    /// A pooled connection for one operation.
    #[tracing::instrument(name = "db.checkout", skip_all)]
    pub async fn db(&self) -> Result<deadpool_postgres::Client, Error> {
        self.db_checkouts.fetch_add(1, Ordering::Relaxed);
        Ok(self.pool.get().await?)
    }
}
