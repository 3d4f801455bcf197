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
///
/// The call is boxed and its task started here, when `detached` is called, so the future returned
/// (and the handler's future that awaits it) holds only the task's handle. A service call's future
/// is kilobytes (12 KB for a classification request, 5–10 KB for a reserve or a commit),
/// and a future held by value is copied whole each time it moves: into the handler's box, into the
/// task, through the task's stages (docs/benchmarks.md, finding 48).
pub fn detached<T, F>(call: F) -> impl Future<Output = Result<T, Error>> + Send
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    let task = tokio::spawn(tracing::Instrument::in_current_span(Box::pin(call)));
    async move { task.await.map_err(|e| Error::Internal(format!("service task failed: {e}")))? }
}

#[cfg(test)]
mod tests {
    use super::detached;
    use crate::error::Error;

    #[tokio::test]
    async fn a_detached_call_runs_to_its_end_though_its_caller_is_gone() {
        let (done, finished) = tokio::sync::oneshot::channel();
        let call = async move {
            tokio::task::yield_now().await;
            let _ = done.send("finished");
            Ok::<_, Error>(())
        };
        // The caller gives up before it ever waits (a client that cancels at once).
        drop(detached(call));
        assert_eq!(finished.await.expect("the call ran"), "finished");
    }

    #[tokio::test]
    async fn the_future_of_a_detached_call_holds_its_handle_not_the_call() {
        let ballast = [7u8; 16 * 1024];
        let call = async move {
            tokio::task::yield_now().await;
            Ok::<_, Error>(ballast.iter().map(|b| u64::from(*b)).sum::<u64>())
        };
        assert!(std::mem::size_of_val(&call) >= ballast.len());
        let waiting = detached(call);
        assert!(std::mem::size_of_val(&waiting) < 256, "{} bytes", std::mem::size_of_val(&waiting));
        assert_eq!(waiting.await.expect("answered"), 7 * 16 * 1024);
    }
}
