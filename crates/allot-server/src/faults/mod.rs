//! The fault suite's toolkit (feature `testkit`): what the reliability tests and the soak share.
//!
//! # Layout
//! - [`history`]: every operation a client attempted and how each attempt ended (ok, denied,
//!   refused, unknown).
//! - [`check`]: holds a history against the database afterwards: acknowledged → exactly one
//!   ledger entry, refused → none, unknown → at most one, balances explained by the ledger, never
//!   below the floor, refunds within their charges, `seq` gapless.
//! - [`workload`]: many concurrent clients issuing debit, reserve, commit, release and refund,
//!   retrying unknown outcomes with the same idempotency key (or the same hold), recording into a
//!   history.
//! - [`proxy`]: a small in-process TCP proxy that passes, delays, blackholes or rejects traffic
//!   to PostgreSQL or Redis (`tc netem` does not exist on this kernel).
//! - [`process`]: a child `allot serve` process, killed (`SIGKILL`) or terminated (`SIGTERM`) by
//!   its own PID and restarted on the same port.
//!
//! Nothing here is used by the server itself; it only talks to it over gRPC and to its database
//! over SQL.

pub mod check;
pub mod history;
pub mod process;
pub mod proxy;
pub mod workload;
