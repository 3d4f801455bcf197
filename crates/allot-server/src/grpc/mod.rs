//! The gRPC edge. Handlers only convert and delegate: authenticate, `from_proto` (validation →
//! INVALID_ARGUMENT), call the service, `to_proto`. Errors become `tonic::Status` in `status`.

pub mod admin;
pub mod deadline;
pub mod entitlements;
pub mod fair_use;
pub mod from_proto;
pub mod pricing;
pub mod pricing_proto;
pub mod status;
pub mod streams;
pub mod subsidy;
pub mod subsidy_proto;
pub mod to_proto;

use std::future::Future;

use crate::error::Error;

/// Runs a service call on its own task, so that a client that cancels or times out cannot
/// interrupt a transaction half-way: the call finishes (commit or rollback) and only the reply is
/// lost. An idempotent retry then gets the stored outcome.
pub async fn detached<T, F>(call: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(call)).await.map_err(|e| Error::Internal(format!("service task failed: {e}")))?
}
