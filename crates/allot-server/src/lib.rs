//! Allot's server: a gRPC entitlement service that holds credit balances in PostgreSQL.
//!
//! # Layout
//! - [`grpc`]: the edge. Handlers authenticate, convert (`from_proto`, `to_proto`) and delegate;
//!   `grpc::status` is the one mapping from [`error::Error`] to `tonic::Status`.
//! - [`service`]: the imperative shell. Owns transactions and the lock order; asks
//!   `allot_domain` to decide; persists what it proposed.
//! - [`repo`]: the only place with SQL; every statement is scoped by tenant.
//! - [`auth`]: credentials → principal (tenant, role), the authorization table, per-tenant
//!   limits; [`tls`]: TLS and mTLS with reloadable certificates. [`ids`]: validated identifiers. [`clock`]: injected time.
//! - [`server`]: assembles services, health, reflection and limits; `serve(app, listener, …)`.
//! - [`db`]: pool and migrations. [`config`]: the one configuration struct.
//! - [`localstack`], [`dev`], [`seed`]: throwaway PostgreSQL/Redis, `allot dev`, demo data.
//! - `faults` (feature `testkit`): the fault suite's history checker, workload, TCP fault proxy
//!   and child-process handle; [`failpoint`]: crash points, inert unless built with
//!   the `failpoints` feature (tests only).

pub mod auth;
pub mod bench;
pub mod clock;
pub mod config;
pub mod db;
pub mod dev;
pub mod env_setting;
pub mod error;
pub mod failpoint;
#[cfg(feature = "testkit")]
pub mod faults;
pub mod grpc;
pub mod ids;
pub mod localstack;
pub mod repo;
pub mod runtime;
pub mod seed;
pub mod server;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
