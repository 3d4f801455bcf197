//! The imperative shell: each operation owns its transaction boundary and the lock order, loads
//! state through `repo`, asks `allot_domain` to decide, and persists what the rules proposed.
//!
//! Lock order (every transaction that takes more than one lock takes them in this order):
//! 1. the meter's `meter_balances` row (`SELECT … FOR UPDATE`),
//! 2. then a hold row of that meter (`SELECT … FOR UPDATE`),
//! 3. then subsidy rows: a hold's pool parts, the identity's day row, one pool shard,
//! 4. then fair-use rows (the account's `accounts` row, only while its fair-use mark is first
//!    set by a trigger, V17; `escalation_state`; then the outbox counter).
//!
//! Grants, ledger entries and idempotency records are only touched while (1) is held.

pub mod admin;
pub mod classification;
pub mod credits;
pub mod events;
pub mod fair_use;
pub mod health;
pub mod held_cooldowns;
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
use tracing::Instrument as _;

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
    /// Connections for batch lanes, polled by the batch that holds one (`db::driven`); `None`
    /// when the pool is too small to spare any.
    pub lanes: Option<Arc<crate::db::driven::Lanes>>,
}

impl Ctx {
    pub fn new(pool: deadpool_postgres::Pool, clock: Arc<dyn Clock>) -> Ctx {
        Ctx { pool, clock, db_checkouts: Arc::new(AtomicU64::new(0)), plan_book: Arc::default(), lanes: None }
    }

    /// For tests that build services without polling them (the sizes of their futures): a pool
    /// that is never connected (building one opens nothing) and the system clock.
    #[cfg(test)]
    pub fn unconnected() -> Ctx {
        let config = crate::config::Config::with_database("postgresql://nobody@127.0.0.1:1/none".into(), None);
        Ctx::new(crate::db::pool(&config).expect("a lazy pool"), Arc::new(crate::clock::SystemClock))
    }

    /// A pooled connection for one operation.
    #[tracing::instrument(name = "db.checkout", skip_all)]
    pub async fn db(&self) -> Result<deadpool_postgres::Client, Error> {
        self.db_checkouts.fetch_add(1, Ordering::Relaxed);
        Ok(self.pool.get().await?)
    }

    /// Runs the database work of a debit batch of `size` on a lane connection polled by this task
    /// (`db::driven`) when the batch is small, or on a pooled connection. A small batch waits on
    /// its round trips, which a lane connection shortens; a large one comes with a busy server,
    /// where a connection polled by a task of its own measured as well or better
    /// (docs/benchmarks.md, finding 44). When no lane
    /// connection is free or can be opened the main pool serves, as it always has (waiting, or
    /// UNAVAILABLE): a lane connection only saves time.
    pub async fn batch_db<T>(&self, size: usize, work: impl AsyncFnOnce(&deadpool_postgres::ClientWrapper) -> Result<T, Error>) -> Result<T, Error> {
        let lanes = self.lanes.as_ref().filter(|_| size < crate::service::credits::LANE_CONNECTION_BELOW_BATCH);
        let lane = match lanes {
            Some(lanes) => lanes.take().instrument(tracing::info_span!("db.checkout", db.pool = "lane")).await,
            None => None,
        };
        if let Some(mut lane) = lane {
            self.db_checkouts.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::count_batch_connection("lane");
            return lane.drive(work).await;
        }
        crate::telemetry::count_batch_connection("pool");
        let client = self.db().await?;
        work(&client).await
    }
}
