//! Streams of calls (`Entitlements.CheckStream`, `Entitlements.DebitStream`,
//! `FairUse.RequestClassificationStream`): many unary calls on one HTTP/2 stream, for callers
//! that make many. A unary call costs its client and server ~60 µs of CPU here before it does
//! anything (an HTTP/2 stream, headers both ways, the tower layers); a request on an open stream
//! costs ~14 µs (docs/benchmarks.md, finding 19).
//!
//! Each request of a stream is treated as its unary twin would be, by [`Streams::serve`]:
//! authenticated again with the stream's credential (so a revoked key or an expired token stops
//! working mid-stream), authorised with the twin's role (`auth::methods`), admitted by the
//! tenant's concurrency limit, run beside the stream's other requests on the stream's task, and
//! bounded by `request_timeout_ms`: past it the answer is DEADLINE_EXCEEDED, but a call that has
//! started is never dropped — neither a broken stream nor the deadline interrupts a debit
//! half-way (as `grpc::detached` for unary calls). Its answer carries the request's `sequence`
//! and either the reply or the error as a `google.rpc.Status` with the twin's code, message and
//! details; the stream goes on. At most [`IN_FLIGHT_PER_STREAM_MAX`] requests of a stream run at
//! once, and the stream is not read further until one is answered (a request the server has not
//! read has not started). The stream ends with OK after the client half-closes and every request
//! is answered; with the decoder's status for a message it cannot read; with UNAVAILABLE
//! (`SERVER_DRAINING`, with `RetryInfo`) when the server starts draining, after answering what is
//! in flight. A client that stops reading holds its stream (and its in-flight requests' answers)
//! until it reads again, or until the drain's grace ends at shutdown. Every request read runs to
//! its end even when the client breaks the stream or goes away; only its answer is lost.
//!
//! `concurrency_limit_per_connection` counts a stream as one call; what bounds a stream's work
//! is this module's in-flight limit and, for the database, the tenant's concurrency limit.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt as _};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::auth::fairness::Slot;
use crate::auth::layer::Gate;
use crate::auth::methods::{access, Access};
use crate::auth::Role;
use crate::error::Error;
use crate::ids::TenantId;

/// Most requests of one stream in flight at once.
pub const IN_FLIGHT_PER_STREAM_MAX: usize = 256;

/// The answers of a stream, as tonic sends them.
pub type Answers<T> = ReceiverStream<Result<T, Status>>;

/// How one kind of stream wraps its unary twin: the twin's path (its role and its metric label)
/// and the conversions between stream messages and the twin's request and reply.
pub struct Shape<In, Call, Reply, Out> {
    /// The unary twin, e.g. `/allot.v1.Entitlements/Check`.
    pub unary_path: &'static str,
    /// The request field that holds the twin's request, e.g. `check` (for INVALID_ARGUMENT).
    pub field: &'static str,
    pub open: fn(In) -> (u64, Option<Call>),
    pub answer: fn(u64, Result<Reply, tonic_types::pb::Status>) -> Out,
}

/// What every stream of the server shares.
#[derive(Clone)]
pub struct Streams {
    gate: Arc<Gate>,
    request_timeout: Duration,
    draining: watch::Receiver<bool>,
}

/// What a stream knows from its opening: its caller, kept to authenticate each request, and
/// the labels its requests are counted under.
struct Caller {
    headers: http::HeaderMap,
    extensions: http::Extensions,
    required: Role,
    /// The twin's service, and the method label of the stream's requests in
    /// `allot_rpc_duration_seconds`: `CheckStream.request` for the twin `Check`.
    service: &'static str,
    metric_method: String,
}

impl Streams {
    pub fn new(gate: Arc<Gate>, request_timeout: Duration, draining: watch::Receiver<bool>) -> Streams {
        Streams { gate, request_timeout, draining }
    }

    /// Serves one stream: reads its requests, runs each with `handle` (the unary twin's service
    /// call) and sends the answers as they come.
    pub fn serve<In, Call, Reply, Out, H, Fut>(
        &self,
        request: Request<Streaming<In>>,
        shape: Shape<In, Call, Reply, Out>,
        handle: H,
    ) -> Result<Response<Answers<Out>>, Status>
    where
        In: Send + 'static,
        Call: Send + 'static,
        Reply: Send + 'static,
        Out: Send + 'static,
        H: Fn(TenantId, Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, Error>> + Send + 'static,
    {
        let Access::Requires(required) = access(shape.unary_path) else {
            return Err(Error::Internal(format!("{} has no role", shape.unary_path)).into());
        };
        let (service, method) = crate::telemetry::rpc::split(shape.unary_path);
        let (metadata, extensions, inbound) = request.into_parts();
        let caller =
            Arc::new(Caller { headers: metadata.into_headers(), extensions, required, service, metric_method: format!("{method}Stream.request") });
        let (answers, receiver) = mpsc::channel(IN_FLIGHT_PER_STREAM_MAX);
        let stream = Stream { streams: self.clone(), caller, shape: Arc::new(shape), handle: Arc::new(handle), answers };
        // In the stream's span (the RPC's), so that each request's span is its child.
        tokio::spawn(stream.run(inbound).in_current_span());
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One open stream.
struct Stream<In, Call, Reply, Out, H> {
    streams: Streams,
    caller: Arc<Caller>,
    shape: Arc<Shape<In, Call, Reply, Out>>,
    handle: Arc<H>,
    answers: mpsc::Sender<Result<Out, Status>>,
}

impl<In, Call, Reply, Out, H, Fut> Stream<In, Call, Reply, Out, H>
where
    In: Send + 'static,
    Call: Send + 'static,
    Reply: Send + 'static,
    Out: Send + 'static,
    H: Fn(TenantId, Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Error>> + Send + 'static,
{
    async fn run(self, mut inbound: Streaming<In>) {
        // The requests in flight, polled by this task: a task of their own each would cost a
        // spawn and a wake-up between threads per request (docs/benchmarks.md, finding 54).
        let mut running = FuturesUnordered::new();
        let drained = drained(self.streams.draining.clone());
        tokio::pin!(drained);
        let end = loop {
            let room = running.len() < IN_FLIGHT_PER_STREAM_MAX;
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                message = inbound.message(), if room => match message {
                    Ok(Some(message)) => {
                        let (sequence, call) = (self.shape.open)(message);
                        running.push(self.request(sequence, call));
                    }
                    // The client half-closed: answer what is in flight, then end with OK.
                    Ok(None) => break None,
                    // Unreadable (or the client went away): nothing more can be matched to a sequence.
                    Err(status) => break Some(status),
                },
                () = &mut drained => break Some(super::status::server_draining()),
                () = self.answers.closed() => break None,
            }
        };
        // Every request read runs to its end, answered or not (a closed stream loses the answer).
        while running.next().await.is_some() {}
        if let Some(status) = end {
            let _ = self.answers.send(Err(status)).await;
        }
    }

    /// One request, from authentication to its answer on the stream. The request's deadline
    /// (`request_timeout_ms`, from when it is read, as the unary call's runs from its arrival)
    /// may cut its admission, where nothing has started; a call that has started is never
    /// dropped: past the deadline its answer is DEADLINE_EXCEEDED and the call still finishes
    /// (commit or roll back whole), as a detached unary call does.
    fn request(&self, sequence: u64, call: Option<Call>) -> impl Future<Output = ()> + Send + 'static {
        let (streams, caller, shape, handle, answers) =
            (self.streams.clone(), self.caller.clone(), self.shape.clone(), self.handle.clone(), self.answers.clone());
        // The request's own span, a child of the stream's: what the unary call's span would be.
        let span = crate::telemetry::rpc::span(shape.unary_path);
        span.record("allot.sequence", sequence);
        let recorded = span.clone();
        async move {
            let started = Instant::now();
            let deadline = tokio::time::sleep(streams.request_timeout);
            tokio::pin!(deadline);
            let timed_out = || super::status::request_timeout(streams.request_timeout);
            let admitted = tokio::select! {
                admitted = admit(&streams, &caller, shape.field, call) => admitted,
                () = &mut deadline => Err(timed_out()),
            };
            let mut overran = None;
            let outcome = match admitted {
                Err(status) => Err(status),
                Ok((tenant, slot, call)) => {
                    // Boxed: the request's future is moved (into the stream's requests in flight)
                    // while the call's is not.
                    let mut call = Box::pin(handle(tenant, call));
                    tokio::select! {
                        outcome = &mut call => outcome.map_err(Status::from),
                        () = &mut deadline => {
                            overran = Some((call, slot));
                            Err(timed_out())
                        }
                    }
                }
            };
            let code = outcome.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
            crate::telemetry::rpc::finish(&recorded, caller.service, &caller.metric_method, code, started.elapsed());
            let answer = (shape.answer)(sequence, outcome.map_err(|status| rpc_status(&status)));
            // A closed stream (the client went away) loses the answer, not the call's effect.
            let _ = answers.send(Ok(answer)).await;
            if let Some((call, _slot)) = overran {
                let _ = call.await;
            }
        }
        .instrument(span)
    }
}

/// Admits one request as the auth layer admits a unary call: the stream's credential
/// authenticated again, the twin's role, then the request's presence, then a slot of the
/// tenant's concurrency limit (held until the call finishes).
async fn admit<Call>(streams: &Streams, caller: &Caller, field: &'static str, call: Option<Call>) -> Result<(TenantId, Slot, Call), Status> {
    let principal = streams.gate.authenticator.authenticate(&caller.headers, &caller.extensions).await.inspect_err(|err| {
        if matches!(err, Error::Unauthenticated) {
            crate::telemetry::count_auth_refused("unauthenticated");
        }
    })?;
    if !principal.role.allows(caller.required) {
        crate::telemetry::count_auth_refused("permission_denied");
        return Err(Error::PermissionDenied.into());
    }
    let call = call.ok_or_else(|| Error::invalid(field, "required"))?;
    let slot = streams.gate.limiter.acquire(principal.tenant).await?;
    Ok((principal.tenant, slot, call))
}

/// `status` as a `google.rpc.Status`: what a unary call sends in `grpc-status-details-bin`. The
/// code and message are the status's own; the details, when it has any, are decoded from it.
pub fn rpc_status(status: &Status) -> tonic_types::pb::Status {
    let details = tonic_types::pb::Status::decode(status.details()).map(|decoded| decoded.details).unwrap_or_default();
    tonic_types::pb::Status { code: status.code() as i32, message: status.message().to_owned(), details }
}

/// Completes when the server starts draining; never, if it stops without draining.
async fn drained(mut draining: watch::Receiver<bool>) {
    if draining.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_becomes_the_google_rpc_status_a_unary_call_would_carry() {
        let status = Status::from(Error::invalid("amount_credits", "must be greater than zero"));
        let rpc = rpc_status(&status);
        assert_eq!(rpc.code, tonic::Code::InvalidArgument as i32);
        assert_eq!(rpc.message, status.message());
        assert!(rpc.details.iter().any(|any| any.type_url.ends_with("google.rpc.BadRequest")));
        assert!(rpc.details.iter().any(|any| any.type_url.ends_with("google.rpc.ErrorInfo")));

        let bare = rpc_status(&Status::cancelled("gone"));
        assert_eq!((bare.code, bare.message.as_str()), (tonic::Code::Cancelled as i32, "gone"));
        let draining = rpc_status(&super::super::status::server_draining());
        assert_eq!(draining.code, tonic::Code::Unavailable as i32);
        assert!(draining.details.iter().any(|any| any.type_url.ends_with("google.rpc.RetryInfo")));
    }
}
