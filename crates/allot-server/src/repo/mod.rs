//! The only place with SQL. Every function takes the caller's transaction and the tenant, and
//! every statement filters by `tenant_id`. Functions load and store rows; they decide nothing.

pub mod account_reads;
pub mod accounts;
pub mod audit;
pub mod balances;
pub mod batch_writes;
pub mod fair_use;
pub mod grants;
pub mod holds;
pub mod idempotency;
pub mod ledger;
pub mod meter_reads;
pub mod outbox;
pub mod plans;
pub mod prices;
pub mod subscriptions;
pub mod subsidy;
pub mod tenants;
pub mod trials;
pub mod usage;

/// The transaction type every repository function takes: tenant-scoped (`db::begin`), so
/// row-level security backs up every statement's own `tenant_id` filter.
pub type Tx<'a> = crate::db::Tx<'a>;
