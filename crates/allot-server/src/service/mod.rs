//! The imperative shell: each operation owns its transaction boundary and the lock order, loads
//! state through `repo`, asks `allot_domain` to decide, and persists what the rules proposed.
//!
//! Lock order (every transaction that takes more than one lock takes them in this order):
//! 1. the meter's `meter_balances` row (`SELECT … FOR UPDATE`),
//! 2. then a hold row of that meter (`SELECT … FOR UPDATE`).
//!
//! Grants, ledger entries and idempotency records are only touched while (1) is held.

pub mod admin;
pub mod credits;
pub mod health;
pub mod idempotent;
pub mod in_force;
pub mod meter_session;
pub mod outcome;
pub mod rate;
pub mod summary;
pub mod sweeper;

use std::sync::Arc;

use crate::clock::Clock;

/// What every service needs: the pool and the clock.
#[derive(Clone)]
pub struct Ctx {
    pub pool: deadpool_postgres::Pool,
    pub clock: Arc<dyn Clock>,
}
