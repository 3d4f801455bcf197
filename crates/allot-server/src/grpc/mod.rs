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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Error;

/// A service call that a client cannot interrupt half-way: if the caller goes away (it cancels,
/// or its deadline passes) before the call has answered, the call is moved onto a task of its own
/// and finishes there (commit or rollback); only the reply is lost. An idempotent retry then gets
/// the stored outcome.
///
/// Until then the call runs on the caller's task, polled by the handler that awaits it. It used to
/// be spawned at once, and every call then paid for a task and for the wake-up of its handler
/// when the task ended, often a hand-over between threads (docs/benchmarks.md, finding 53). A
/// call that panics answers INTERNAL, as a panicked task did.
///
/// The call is boxed here, so the future returned (and the handler's future that awaits it) holds
/// a pointer, not the call: a service call's future can be kilobytes (5–10 KB for a reserve or a
/// commit), and a future held by value is copied whole each time it moves (docs/benchmarks.md,
/// finding 48). The hot calls keep theirs small by boxing their cold paths themselves (a check,
/// a debit, a classification answered from memory: finding 65), so this copy is cheap for them.
pub fn detached<T, F>(call: F) -> Detached<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    Detached { call: Some(Box::pin(tracing::Instrument::in_current_span(call))) }
}

/// The future of a [`detached`] call: the call until it answers, nothing after.
#[must_use = "a detached call answers only when awaited (dropped, it still runs to its end)"]
pub struct Detached<T: Send + 'static> {
    call: Option<BoxedCall<T>>,
}

/// A service call, boxed.
type BoxedCall<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let call = self.call.as_mut().expect("a detached call is not polled after it answered");
        let answer = match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(answer)) => answer,
            Err(_) => Err(Error::Internal("the service call panicked".into())),
        };
        self.call = None;
        Poll::Ready(answer)
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = call.await;
                });
            }
            // Only a caller outside any runtime (none in the server) gets here; the call cannot
            // go on without one.
            Err(_) => tracing::error!("a service call was dropped outside the runtime before it answered"),
        }
    }
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
    async fn a_call_its_caller_drops_half_way_still_runs_to_its_end() {
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel();
        let call = async move {
            let _ = gate.await;
            let _ = done.send("finished");
            Ok::<_, Error>(())
        };
        let mut waiting = Box::pin(detached(call));
        // The caller waits once (the call is half-way, at its gate), then gives up.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(waiting);
        open.send(()).expect("the call still waits at its gate");
        assert_eq!(finished.await.expect("the call ran on"), "finished");
    }

    #[tokio::test]
    async fn a_call_runs_on_its_callers_task_while_the_caller_waits() {
        let handler = tokio::spawn(async move {
            let call = async move {
                tokio::task::yield_now().await;
                Ok::<_, Error>(tokio::task::id())
            };
            (tokio::task::id(), detached(call).await.expect("answered"))
        });
        let (caller, ran_on) = handler.await.expect("the handler ran");
        assert_eq!(ran_on, caller);
    }

    #[tokio::test]
    async fn a_call_that_panics_answers_internal() {
        let call = async move {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("a bug in a service call");
            }
            Ok(())
        };
        let answer = detached::<(), _>(call).await;
        assert!(matches!(answer, Err(Error::Internal(_))), "{answer:?}");
    }

    #[tokio::test]
    async fn the_future_of_a_detached_call_holds_a_box_not_the_call() {
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
