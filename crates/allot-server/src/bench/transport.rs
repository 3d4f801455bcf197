//! The load generator's HTTP/2 connections: `h2` called from the calling task.
//!
//! tonic's `Channel` puts every call through a `tower::buffer::Buffer` (a message to a worker
//! task and a oneshot back), a boxed service, an origin, user-agent and timeout layer and a
//! reconnecting service; hyper's client connection under it hands each request to its dispatch
//! task, which spawns a task per call to await the answer and reply through another oneshot.
//! That is a client's comfort (reconnection, load balancing, back-pressure across tasks) that a
//! load generator on loopback connections does not need, and on a two-core machine its CPU is
//! taken from the server being measured (`docs/benchmarks.md`, findings 32 and 51). Here a call
//! goes from tonic's generated client and codec straight to `h2`, the HTTP/2 implementation both
//! of them build on, from the caller's own task: the same framing, window sizes and codec. The
//! server is not changed by it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use tonic::body::Body;
use tonic::codegen::http;

/// HTTP/2 connections the clients share, unless `ALLOT_BENCH_CONNECTIONS` says otherwise.
pub const CONNECTIONS_DEFAULT: usize = 4;
/// Most HTTP/2 connections the load generator opens.
pub const CONNECTIONS_MAX: usize = 64;

/// hyper's client defaults, kept so that a call is framed as it was through hyper.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;
const FRAME_BYTES_MAX: u32 = 16 * 1024;
const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;

/// How many connections to open, from `ALLOT_BENCH_CONNECTIONS` (`None`: the default).
pub fn connections(setting: Option<&str>) -> anyhow::Result<usize> {
    crate::env_setting::within("ALLOT_BENCH_CONNECTIONS", setting, 1..=CONNECTIONS_MAX, CONNECTIONS_DEFAULT, "a number of connections")
}

/// One HTTP/2 connection to the server; clones share it.
#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
}

/// Opens one HTTP/2 connection to `addr` (plain text, `TCP_NODELAY` as tonic's `Endpoint` sets
/// it) and drives it on a task of its own until either side closes it.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES_MAX)
        .max_header_list_size(HEADER_LIST_BYTES_MAX)
        .enable_push(false)
        .handshake(tcp)
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "bench connection closed");
        }
    });
    Ok(Connection { send })
}

impl tonic::codegen::Service<http::Request<Body>> for Connection {
    type Response = http::Response<Incoming>;
    type Error = h2::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (head, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        // `poll_ready` said this handle may open a stream: no clone, no second wait.
        let sent = self.send.send_request(http::Request::from_parts(head, ()), end_of_stream);
        Box::pin(async move {
            let (response, out) = sent?;
            if !end_of_stream {
                // A unary call's one message is ready now and goes from this task; a stream of
                // calls goes on sending from a task of its own while its answers come back.
                let mut pipe = Pipe { body, out };
                if !std::future::poll_fn(|cx| Poll::Ready(pipe.send_ready(cx))).await {
                    tokio::spawn(std::future::poll_fn(move |cx| if pipe.send_ready(cx) { Poll::Ready(()) } else { Poll::Pending }));
                }
            }
            Ok(response.await?.map(|recv| Incoming { recv, data_done: false, done: false }))
        })
    }
}

/// A request body on its way into its HTTP/2 stream.
struct Pipe {
    body: Body,
    out: h2::SendStream<Bytes>,
}

impl Pipe {
    /// Sends the body's frames that are ready, the last one marked as the end of the stream;
    /// resets the stream if the body fails. True once nothing is left to send.
    fn send_ready(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return false,
                Poll::Ready(None) => {
                    let _ = self.out.send_data(Bytes::new(), true);
                    return true;
                }
                Poll::Ready(Some(frame)) => frame,
            };
            let sent = match frame.map(Frame::into_data) {
                Ok(Ok(data)) => self.out.send_data(data, self.body.is_end_stream()),
                Ok(Err(frame)) => match frame.into_trailers() {
                    Ok(trailers) => {
                        let _ = self.out.send_trailers(trailers);
                        return true;
                    }
                    Err(_) => Ok(()),
                },
                Err(_) => {
                    self.out.send_reset(h2::Reason::CANCEL);
                    return true;
                }
            };
            if sent.is_err() || self.body.is_end_stream() {
                return true;
            }
        }
    }
}

/// An answer's body: its DATA frames (their flow-control window given back as they are read),
/// then its trailers, where gRPC puts the call's status.
pub struct Incoming {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl http_body::Body for Incoming {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.recv.poll_trailers(cx));
        self.done = true;
        Poll::Ready(trailers.transpose().map(|t| t.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_default_to_four_and_take_a_count_within_the_limit() {
        assert_eq!(connections(None).unwrap(), CONNECTIONS_DEFAULT);
        assert_eq!(connections(Some("1")).unwrap(), 1);
        assert_eq!(connections(Some(" 64 ")).unwrap(), CONNECTIONS_MAX);
    }

    #[test]
    fn connections_outside_the_limit_or_not_a_number_are_refused_with_the_setting_named() {
        for bad in ["0", "65", "four", "", "-1"] {
            let err = connections(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("ALLOT_BENCH_CONNECTIONS"), "{bad:?}: {err}");
        }
    }
}
