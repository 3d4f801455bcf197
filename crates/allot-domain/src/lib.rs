//! Allot's pure credit rules. Given a meter's state, a plan's policy and the time `now` (always
//! passed in), it decides and proposes changes; it never performs them.
//!
//! # Layout
//! - [`limits`]: the bounds every amount, TTL and id obeys.
//! - [`period`]: billing periods, month-end anchors.
//! - [`plan`]: subscription statuses and per-meter policy.
//! - [`meter`]: a meter's buckets (allowance, rollover, grants, debt) and holds.
//! - [`ledger`]: the effects a decision proposes, one ledger entry each.
//! - [`advance`]: housekeeping before any decision (grant expiry, period roll-over).
//! - [`charge`]: the debit waterfall, gates, records, reserve and commit.
//! - [`refund`]: returning credit to the buckets it came from.
//! - [`pricing`]: rating usage of a SKU in whole credits at the price version in force.
//! - [`escalation`]: the fair-use ladder, soft caps and daily budgets.
//! - [`subsidy`]: the subsidy pool's splits (free / partial / gate), settlements, shares, refunds.
//!
//! # Invariants
//! - No async, no I/O, no clock reads, no floating point.
//! - For a meter with a finite allowance, the sum of the `delta_credits` of all effects equals the
//!   change of [`meter::MeterState::net_credits`]; every effect's breakdown sums to its delta.
//! - A gate never takes availability (net less holds) below zero; a record never takes net below
//!   minus the plan's debt limit.

pub mod advance;
pub mod charge;
pub mod escalation;
pub mod ledger;
pub mod limits;
pub mod meter;
pub mod period;
pub mod plan;
pub mod pricing;
pub mod refund;
pub mod subsidy;

pub use time::OffsetDateTime;
pub use uuid::Uuid;
