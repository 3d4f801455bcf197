//! Connections for small debit batches ("lane connections"), polled by the task that uses them.
//!
//! tokio-postgres splits a connection in two: a `Client` that queues requests and a
//! `Connection` future that writes them to the socket and hands the answers back. The main pool
//! spawns each `Connection` as a task of its own, so every round trip crosses tasks twice: the
//! batch's task wakes the connection's task to send, and the connection's task wakes the batch's
//! task with the answer — each wake-up a wait in the run queue behind the gRPC calls on the same
//! two workers. A batch lane waits for one round trip at a time, so at low concurrency those waits
//! are most of what its callers wait for (docs/benchmarks.md, finding 44).
//!
//! A [`Driven`] connection has no task: whoever holds it polls its `Connection` together with
//! the work that uses it ([`Driven::drive`]), so an answer is read and handed over in the same
//! poll that goes on with the work. Between uses nobody polls it; taking it from the pool polls
//! it once (without a task) to read what arrived meanwhile (the answer of a `ROLLBACK` queued at
//! the end of the last use) and to find a connection the server closed, which is then replaced.
//!
//! The pool of them ([`Lanes`]) is small and an accelerator only: a batch that finds none free,
//! or none that can be opened, uses the main pool ([`crate::service::Ctx::batch_db`]), which
//! answers as it always has (waiting, or UNAVAILABLE). After a failure to open one, lane
//! connections are not tried for [`PAUSE_AFTER_FAILURE`], so a database that is down costs a
//! batch one wait for a connection (the main pool's), not two.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, PoolError, RecycleError, RecycleResult, TimeoutType, Timeouts};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Connection, NoTls, Socket};

/// The pool of lane connections.
pub type DrivenPool = managed::Pool<DrivenManager>;

/// How long lane connections are not tried after one failed to open.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The lane connections, paused for a while after one failed to open.
pub struct Lanes {
    pool: DrivenPool,
    paused_until: Mutex<Option<Instant>>,
}

impl Lanes {
    pub fn new(pool: DrivenPool) -> Lanes {
        Lanes { pool, paused_until: Mutex::new(None) }
    }

    /// A lane connection at once — an idle one, or a new one while the pool has room — or
    /// `None`: all of them busy, or lanes paused after a failure (then or earlier).
    pub async fn take(&self) -> Option<managed::Object<DrivenManager>> {
        if self.paused_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let no_wait = Timeouts { wait: Some(Duration::ZERO), ..self.pool.timeouts() };
        match self.pool.timeout_get(&no_wait).await {
            Ok(driven) => Some(driven),
            Err(PoolError::Timeout(TimeoutType::Wait)) => None,
            Err(err) => {
                tracing::debug!(error = %err, "no lane connection; the main pool serves");
                *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + PAUSE_AFTER_FAILURE);
                None
            }
        }
    }
}

/// Why a lane connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DrivenError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The database could lose acknowledged commits (see `db::check_durability`).
    #[error("{0}")]
    UnsafeDurability(String),
}

/// Opens lane connections as the main pool opens its own: the same configuration (options,
/// role, keepalives) and the same durability check.
pub struct DrivenManager {
    pub pg: tokio_postgres::Config,
    pub allow_unsafe_durability: bool,
}

/// A connection polled by its holder.
pub struct Driven {
    client: ClientWrapper,
    /// `None` once it has ended (the server closed it, or the socket failed): the client's
    /// requests then fail at once rather than wait for a poll that never comes.
    connection: Option<Pin<Box<Connection<Socket, NoTlsStream>>>>,
}

impl managed::Manager for DrivenManager {
    type Type = Driven;
    type Error = DrivenError;

    async fn create(&self) -> Result<Driven, DrivenError> {
        let (client, connection) = self.pg.connect(NoTls).await?;
        // `ClientWrapper` aborts its connection's task when dropped; this connection has none, so
        // it gets the handle of a task that has nothing to do.
        let mut driven = Driven { client: ClientWrapper::new(client, tokio::spawn(async {})), connection: Some(Box::pin(connection)) };
        if !self.allow_unsafe_durability {
            if let Some(setting) = driven.drive(async |client| super::unsafe_durability(client).await).await? {
                return Err(DrivenError::UnsafeDurability(super::refusal(&setting)));
            }
        }
        Ok(driven)
    }

    async fn recycle(&self, driven: &mut Driven, _: &Metrics) -> RecycleResult<DrivenError> {
        match driven.settle() {
            true => Ok(()),
            false => Err(RecycleError::message("lane connection closed")),
        }
    }
}

impl Driven {
    /// Polls the connection once, outside any task: sends what is queued and reads what has
    /// arrived. True while it is usable.
    fn settle(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        poll_connection(&mut self.connection, &mut cx);
        self.connection.is_some() && !self.client.is_closed()
    }

    /// Runs `work` on this connection, polling the connection in the same task: before the work
    /// (answers that arrived), and after it (requests it queued), every time the task is woken.
    pub async fn drive<T>(&mut self, work: impl AsyncFnOnce(&ClientWrapper) -> T) -> T {
        let Driven { client, connection } = self;
        let mut work = std::pin::pin!(work(client));
        std::future::poll_fn(move |cx| {
            poll_connection(connection, cx);
            let polled = work.as_mut().poll(cx);
            poll_connection(connection, cx);
            polled
        })
        .await
    }
}

/// Polls `connection` if it has not ended; drops it when it ends, which fails whatever was still
/// waiting for an answer on it.
fn poll_connection(connection: &mut Option<Pin<Box<Connection<Socket, NoTlsStream>>>>, cx: &mut Context<'_>) {
    let Some(polled) = connection.as_mut().map(|c| c.as_mut().poll(cx)) else { return };
    if let Poll::Ready(ended) = polled {
        if let Err(err) = ended {
            tracing::debug!(error = %err, "lane connection ended");
        }
        *connection = None;
    }
}
