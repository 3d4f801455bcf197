//! Group commit for debits. Concurrent single-line debits (credits, or SKU usage rated as it is
//! queued) of one tenant queue up in one of a few lanes, chosen by account: a lane's one worker
//! takes what has queued and decides it in **one** transaction (`group`): every meter locked by
//! one statement in a fixed order, every table read, then written, in one pipelined round trip,
//! one commit. Each debit is still decided on its own, in arrival order, against the
//! balance the earlier ones left: a denial is a decision for that debit only, each allowed debit
//! gets its own ledger entry and each keeps its own idempotency record. No reply leaves before
//! the commit that holds it.
//!
//! Lanes by account keep the debits of a hot account in one lane (one big batch under its lock,
//! rather than batches of several workers queuing for the same row) while the debits of many
//! accounts spread over the lanes in use (that many transactions at once). Two lanes lock the
//! same account's meters only right after the lanes in use change, so batches rarely wait for
//! each other. How many lanes are in use follows the batches ([`Batches::lane_for`],
//! [`Batches::took`]): one lane until a lane takes a batch of [`WIDEN_AT_BATCH`] or more, then
//! every configured lane until [`WIDE_FOR`] after the last such batch (check lanes from
//! [`CHECK_WIDEN_AT_BATCH`]). A batch costs the
//! database about as much whether it decides four debits or eight, so a second transaction at
//! a time only pays once batches are large (docs/benchmarks.md, finding 38). The rule is tuned
//! for two lanes (the default); with more, all of them are used at once. Batches of 24 need as
//! many calls of the tenant in flight on this server (`ALLOT_TENANT_CONCURRENCY_MAX`, default
//! 8): below that one lane is used, whatever is configured.
//!
//! A lone debit is a batch of one (fewer round trips than the ordinary path, `debit_alone`),
//! but for a meter the plan book knows to be rate-capped. A debit the batch does not cover (see
//! `group`) is decided alone after the batch commits, apart from the lane (which goes on to its
//! next batch). Any error rolls the whole batch back and decides its debits alone, so a failure
//! of one debit never fails or duplicates its neighbours. Debits and checks are run through
//! one `Credits::decide`, each kind giving its own batch and lone decision (`Batched`).
//!
//! Checks queue the same way in lanes of their own (`check_batch_workers` of them, in use by the
//! same rule; `read`): a batch of concurrent checks reads one snapshot, every table once for all
//! of them, and decides each check on its own.
//!
//! A lane has one batch at the database at a time. A debit batch runs as a task of its own
//! holding the lane's turn ([`LaneTurn`]) until its commit has answered; the lane then takes its
//! next batch while the last one answers (docs/benchmarks.md, finding 35). A check batch, one
//! round trip, is decided and answered by the lane's worker itself before it takes the next
//! ([`Batched::BY_WORKER`]): handing it to a task and waiting for its turn cost two wake-ups
//! per batch, more than deciding it while the next one queues (finding 41).

mod group;
mod plans;
mod read;

pub use read::QueuedCheck;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{Amount, Credits, DebitCommand, Priced};
use crate::error::Error;
use crate::ids::TenantId;
use crate::service::outcome::Decision;
use crate::service::pricing::Rated;

/// Most debits decided in one transaction.
pub const BATCH_MAX: usize = 256;

/// Most lanes (each with at most one batch transaction at a time) per tenant on one server
/// (`debit_batch_workers`). More than one keeps PostgreSQL busy while a batch waits for its
/// commit, once there are callers enough to fill them all.
pub const WORKERS_MAX: usize = 64;

/// A debit batch at least this large spreads its tenant's next debits over every lane configured.
pub const WIDEN_AT_BATCH: usize = 24;

/// A check batch at least this large spreads its tenant's next checks over every check lane
/// configured. Far above [`WIDEN_AT_BATCH`]: a second check transaction at a time costs more than
/// it overlaps while batches are a few dozen (findings 27 and 41), but a lane whose batches are
/// this large is draining a backlog — which one lane, one snapshot at a time, could not drain
/// while calls kept coming (docs/benchmarks.md, finding 46).
pub const CHECK_WIDEN_AT_BATCH: usize = 128;

/// How long a tenant's work stays spread over its lanes after its last batch of its kind's
/// widening size or more.
pub const WIDE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Debit batches smaller than this run on a lane connection (`Ctx::batch_db`): the size below
/// which the lanes of a tenant stay one.
pub const LANE_CONNECTION_BELOW_BATCH: usize = WIDEN_AT_BATCH;

/// Debits or checks left out of a batch, decided alone at once at most.
const ALONE_CONCURRENCY: usize = 8;

/// A debit that can be batched, with what it costs.
#[derive(Debug, Clone)]
pub struct Queued {
    pub cmd: DebitCommand,
    /// Its one line in credits (rated already for SKU usage), above zero.
    pub amount_credits: i64,
    /// The rating of SKU usage, priced when the debit was queued.
    pub rating: Option<Rated>,
}

impl Queued {
    /// Decided alone after all: its line as the ordinary path would price it, without pricing it
    /// again (a rating that was batched is neither refused nor defaulted, so pricing it for real
    /// would count and log nothing either).
    fn into_priced(self) -> (DebitCommand, Priced) {
        let meter = self.cmd.lines[0].0.clone();
        let priced =
            Priced { usage: vec![(meter, self.amount_credits)], charged: vec![self.amount_credits], ratings: vec![self.rating], denials: vec![None] };
        (self.cmd, priced)
    }
}

/// Per caller of a batch: its answer, or `None` when it is to be decided alone.
pub type Results = Vec<Option<Result<Decision, Error>>>;

/// What can be queued in lanes and decided in batches: debits (`group`) and checks (`read`).
/// `Credits::decide` runs a batch of either kind the same way.
pub trait Batched: Sized + Send + Sync + 'static {
    /// What it is, for logs.
    const KIND: &'static str;
    /// Whether the lane's worker decides and answers each batch itself (`LaneTurn` unused)
    /// rather than in a task of its own that hands the turn back once it no longer needs the
    /// database.
    const BY_WORKER: bool;
    /// The account whose lane it takes.
    fn account(&self) -> &str;
    /// The meter of its one line.
    fn meter(&self) -> &str;
    /// The lanes of its kind.
    fn batches(credits: &Credits) -> &Arc<Batches<Self>>;
    /// Decides `batch` together, one result per item. `Err` means it decided nothing: every item
    /// is to be decided alone. Dropping `lane` once the batch no longer needs the database (by
    /// then or when the batch ends) lets the lane's next batch start meanwhile.
    fn group<'a>(
        credits: &'a Credits,
        tenant: TenantId,
        batch: &'a [&'a Self],
        lane: LaneTurn,
    ) -> impl std::future::Future<Output = Result<Results, Error>> + Send + 'a;
    /// Decides one on its own, as if it had not been queued.
    fn alone(credits: &Credits, tenant: TenantId, queued: Self) -> impl std::future::Future<Output = Result<Decision, Error>> + Send;
    /// Counts a batch that decided `size` items.
    fn record_batch(size: usize);
}

/// One queued caller.
pub struct Pending<Q> {
    queued: Q,
    reply: oneshot::Sender<Result<Decision, Error>>,
    /// The caller's span: the work done for it is traced under it.
    span: tracing::Span,
}

/// A tenant's lane: the tenant and the lane's number.
type Lane = (TenantId, usize);

/// A batch's turn in its lane, for a batch decided in a task of its own: while it is held, the
/// lane takes no next batch; dropping it (once the batch's database work is over) lets the lane
/// take its next batch while this one answers. The lane keeps at most one batch at the database
/// at a time. A batch decided by the worker itself ([`Batched::BY_WORKER`]) gets an empty one.
pub struct LaneTurn(Option<oneshot::Sender<()>>);

impl Drop for LaneTurn {
    fn drop(&mut self) {
        if let Some(turn) = self.0.take() {
            let _ = turn.send(());
        }
    }
}

/// A lane's queue; it exists while its worker runs.
struct Queue<Q> {
    pending: VecDeque<Pending<Q>>,
}

/// The queues of lanes that have a worker, and which tenants' work is spread.
struct State<Q> {
    queues: HashMap<Lane, Queue<Q>>,
    /// Per tenant whose work is spread over its lanes, until when.
    wide_until: HashMap<TenantId, Instant>,
}

impl<Q> State<Q> {
    /// Whether `tenant`'s work is spread over its lanes at `now`; a spread that has lapsed is
    /// forgotten.
    fn spread_at(&mut self, tenant: TenantId, now: Instant) -> bool {
        match self.wide_until.get(&tenant) {
            Some(until) if now < *until => true,
            Some(_) => {
                self.wide_until.remove(&tenant);
                false
            }
            None => false,
        }
    }
}

/// A tenant's lanes on this server.
pub struct Batches<Q> {
    state: Mutex<State<Q>>,
    lanes_per_tenant: usize,
    /// The batch size that spreads a tenant's work over its lanes.
    widen_at: usize,
}

impl<Q> Batches<Q> {
    /// Lanes whose work spreads from one to `lanes_per_tenant` once a batch reaches `widen_at`.
    pub fn new(lanes_per_tenant: usize, widen_at: usize) -> Batches<Q> {
        assert!((1..=WORKERS_MAX).contains(&lanes_per_tenant), "batch workers per tenant: 1 to {WORKERS_MAX}");
        assert!((2..=BATCH_MAX).contains(&widen_at), "a widening batch size a batch can reach: 2 to {BATCH_MAX}");
        Batches { state: Mutex::new(State { queues: HashMap::new(), wide_until: HashMap::new() }), lanes_per_tenant, widen_at }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<Q>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lane of an account's work at `now`: the same one as long as the lanes in use do not
    /// change. One lane is in use unless the tenant's work is spread ([`Batches::took`]).
    fn lane_for(&self, state: &mut State<Q>, tenant: TenantId, account: &str, now: Instant) -> Lane {
        let lanes = if state.spread_at(tenant, now) { self.lanes_per_tenant } else { 1 };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        account.hash(&mut hasher);
        let lane = usize::try_from(hasher.finish() % lanes as u64).expect("below the lane count");
        (tenant, lane)
    }

    /// A lane of `tenant` took a batch of `size` at `now`: one of `widen_at` or more
    /// spreads the tenant's work over every lane until [`WIDE_FOR`] later. True when that starts
    /// a spread (the work was in one lane).
    fn took(&self, state: &mut State<Q>, tenant: TenantId, size: usize, now: Instant) -> bool {
        if size < self.widen_at || self.lanes_per_tenant == 1 {
            return false;
        }
        let starts = !state.spread_at(tenant, now);
        state.wide_until.insert(tenant, now + WIDE_FOR);
        starts
    }
}

impl Credits {
    /// The debit as a batch sees it, if it can be batched: one line (credits, or SKU usage that
    /// is priced now at a cost above zero) and no subsidy. A line that cannot be priced, is free,
    /// fails to price or is rated at the tenant's default price is left to the ordinary path,
    /// which decides (or refuses) it and counts and logs its rating exactly once (the look-up
    /// here is quiet).
    pub(super) async fn batchable(&self, tenant: TenantId, cmd: DebitCommand) -> Result<Queued, DebitCommand> {
        if cmd.subsidy.is_some() {
            return Err(cmd);
        }
        let (amount_credits, rating) = match cmd.lines.as_slice() {
            [(_, Amount::Credits(amount))] if *amount > 0 => (*amount, None),
            [(_, Amount::Rated { sku, quantities })] => match self.pricing.estimate(tenant, sku, quantities, Some(self.ctx.clock.now())).await {
                Ok(rated) if rated.cost_credits > 0 && !rated.defaulted => (rated.cost_credits, Some(rated)),
                _ => return Err(cmd),
            },
            _ => return Err(cmd),
        };
        Ok(Queued { cmd, amount_credits, rating })
    }
}

/// A lane's running worker. One that stops abnormally (a panic) removes its queue: the callers
/// still queued fail rather than wait forever, and the next one starts a new worker.
struct Worker<Q> {
    batches: Arc<Batches<Q>>,
    lane: Lane,
    running: bool,
}

impl<Q> Drop for Worker<Q> {
    fn drop(&mut self) {
        if self.running {
            self.batches.state().queues.remove(&self.lane); // drops the senders: the callers get an error
        }
    }
}

impl Batched for Queued {
    const KIND: &'static str = "debit";
    const BY_WORKER: bool = false;

    fn account(&self) -> &str {
        self.cmd.account.as_str()
    }

    fn meter(&self) -> &str {
        self.cmd.lines[0].0.as_str()
    }

    fn batches(credits: &Credits) -> &Arc<Batches<Queued>> {
        &credits.batches
    }

    async fn group<'a>(credits: &'a Credits, tenant: TenantId, batch: &'a [&'a Queued], lane: LaneTurn) -> Result<Results, Error> {
        // A debit batch holds its rows' locks until its commit answers: its turn ends with it.
        let _lane = lane;
        credits.debit_group(tenant, batch).await
    }

    async fn alone(credits: &Credits, tenant: TenantId, queued: Queued) -> Result<Decision, Error> {
        let (cmd, priced) = queued.into_priced();
        credits.debit_alone(tenant, cmd, priced).await
    }

    fn record_batch(size: usize) {
        crate::telemetry::record_debit_batch(size);
    }
}

impl Credits {
    /// Queues work in its account's lane (starting the lane's worker if none runs) and waits for
    /// its decision.
    pub(super) async fn queue<Q: Batched>(&self, tenant: TenantId, queued: Q) -> Result<Decision, Error> {
        let (reply, decided) = oneshot::channel();
        let batches = Q::batches(self);
        let (lane, start_worker) = {
            let mut state = batches.state();
            let lane = batches.lane_for(&mut state, tenant, queued.account(), Instant::now());
            let start = !state.queues.contains_key(&lane);
            let queue = state.queues.entry(lane).or_insert_with(|| Queue { pending: VecDeque::new() });
            queue.pending.push_back(Pending { queued, reply, span: tracing::Span::current() });
            (lane, start)
        };
        if start_worker {
            let this = self.clone();
            tokio::spawn(async move { this.work::<Q>(lane).await });
        }
        decided.await.map_err(|_| Error::Internal("the batch worker stopped".into()))?
    }

    /// Decides the lane's queue, batch after batch, until it is empty.
    async fn work<Q: Batched>(self, lane: Lane) {
        let batches = Q::batches(&self).clone();
        let mut worker = Worker { batches: batches.clone(), lane, running: true };
        let tenant = lane.0;
        loop {
            let batch: Vec<Pending<Q>> = {
                let mut state = batches.state();
                let Some(queue) = state.queues.get_mut(&lane) else { return };
                if queue.pending.is_empty() {
                    // Leaving is decided under the lock that queuing takes: no debit is stranded.
                    state.queues.remove(&lane);
                    state.spread_at(tenant, Instant::now()); // a tenant gone quiet keeps no lapsed entry
                    worker.running = false;
                    return;
                }
                let take = queue.pending.len().min(BATCH_MAX);
                let batch = queue.pending.drain(..take).collect();
                if batches.took(&mut state, tenant, take, Instant::now()) {
                    crate::telemetry::record_lanes_widened(Q::KIND);
                }
                batch
            };
            if Q::BY_WORKER {
                // A batch that panics fails its own callers (their answers are dropped), as it
                // would in a task of its own; the worker goes on with the lane's queue.
                if std::panic::AssertUnwindSafe(self.decide(tenant, batch, LaneTurn(None))).catch_unwind().await.is_err() {
                    tracing::error!(batch.kind = Q::KIND, "a batch panicked; its callers get an internal error");
                }
                continue;
            }
            let (turn, turn_ended) = oneshot::channel();
            let this = self.clone();
            tokio::spawn(async move { this.decide(tenant, batch, LaneTurn(Some(turn))).await });
            let _ = turn_ended.await; // sent, or dropped when the batch ended (or panicked)
        }
    }

    /// Decides a batch taken from a lane and answers every caller in it. A batch of one too: one
    /// transaction of few round trips against the many of deciding it alone (findings 25 and 28);
    /// but not a lone item of a meter the batch would leave alone anyway (a rate cap, as far as
    /// the plan book knows). What the batch leaves alone, or every item when the batch fails, is
    /// decided apart from the lane, which takes its next batch at once: an item waiting for Redis
    /// (a rate cap) or deciding an org member holds up no other. Each belongs to a call in
    /// flight, so the tenant's limit on those bounds them.
    async fn decide<Q: Batched>(&self, tenant: TenantId, batch: Vec<Pending<Q>>, lane: LaneTurn) {
        let lone_rate_capped = batch.len() == 1 && self.ctx.plan_book.may_rate_cap(tenant, batch[0].queued.meter());
        // A lone rate-capped item holds the lane's turn no longer than it takes to hand it to the
        // alone path below: `lane` is dropped when this returns.
        let grouped = match lone_rate_capped {
            true => Ok(vec![None]),
            false => {
                // The batch's work is traced under its first caller; the others get an event.
                for pending in &batch[1..] {
                    pending.span.in_scope(|| tracing::debug!(batch.kind = Q::KIND, batch.size = batch.len(), "decided in a batch"));
                }
                let queued: Vec<&Q> = batch.iter().map(|p| &p.queued).collect();
                Q::group(self, tenant, &queued, lane).instrument(batch[0].span.clone()).await
            }
        };
        let results = match grouped {
            Ok(results) => {
                let decided = results.iter().filter(|r| r.is_some()).count();
                if decided > 0 {
                    Q::record_batch(decided);
                }
                results
            }
            // Alone in its batch, the item would meet the same unavailable database again alone
            // (and wait for a connection twice): that is its answer, as it would be alone. (When
            // a debit's commit answer was lost it may have been written: a retry with its key
            // replays it.)
            Err(err @ Error::Unavailable(_)) if batch.len() == 1 => vec![Some(Err(err))],
            Err(err) => {
                tracing::debug!(error = %err, batch.kind = Q::KIND, batch.size = batch.len(), "batch rolled back; deciding its items alone");
                batch.iter().map(|_| None).collect()
            }
        };
        let alone = answer(batch, results);
        if alone.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let this = &this;
            futures::stream::iter(alone)
                .for_each_concurrent(ALONE_CONCURRENCY, |pending| async move {
                    let decided = Q::alone(this, tenant, pending.queued).instrument(pending.span).await;
                    let _ = pending.reply.send(decided);
                })
                .await;
        });
    }
}

/// Answers the callers whose work a batch decided; returns those it left to be decided alone.
fn answer<Q>(batch: Vec<Pending<Q>>, results: Results) -> Vec<Pending<Q>> {
    assert_eq!(batch.len(), results.len(), "one result per caller");
    let mut alone = Vec::new();
    for (pending, result) in batch.into_iter().zip(results) {
        match result {
            Some(result) => {
                let _ = pending.reply.send(result);
            }
            None => alone.push(pending),
        }
    }
    alone
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{Batches, Lane, State, CHECK_WIDEN_AT_BATCH, WIDEN_AT_BATCH, WIDE_FOR};
    use crate::ids::TenantId;

    fn lanes_of(batches: &Batches<()>, state: &mut State<()>, tenant: TenantId, now: Instant) -> Vec<Lane> {
        (0..64).map(|i| batches.lane_for(state, tenant, &format!("acct-{i}"), now)).collect()
    }

    #[test]
    fn work_takes_one_lane_until_a_large_batch_spreads_it_for_a_while() {
        let batches = Batches::<()>::new(2, WIDEN_AT_BATCH);
        let mut state = batches.state.lock().unwrap();
        let (tenant, other) = (TenantId(uuid::Uuid::from_u128(7)), TenantId(uuid::Uuid::from_u128(8)));
        let t0 = Instant::now();
        assert!(lanes_of(&batches, &mut state, tenant, t0).iter().all(|l| *l == (tenant, 0)), "one lane at first");

        assert!(!batches.took(&mut state, tenant, WIDEN_AT_BATCH - 1, t0), "a smaller batch spreads nothing");
        assert!(lanes_of(&batches, &mut state, tenant, t0).iter().all(|l| l.1 == 0));
        assert!(batches.took(&mut state, tenant, WIDEN_AT_BATCH, t0), "a large batch starts a spread");
        let spread = lanes_of(&batches, &mut state, tenant, t0);
        assert!(spread.iter().any(|l| l.1 == 0) && spread.iter().any(|l| l.1 == 1), "64 accounts over both lanes");
        assert_eq!(spread, lanes_of(&batches, &mut state, tenant, t0 + WIDE_FOR / 2), "an account keeps its lane while spread");
        assert!(lanes_of(&batches, &mut state, other, t0).iter().all(|l| *l == (other, 0)), "another tenant is not spread");

        // Another large batch within the spread extends it without starting a new one.
        assert!(!batches.took(&mut state, tenant, 200, t0 + WIDE_FOR / 2));
        assert_eq!(spread, lanes_of(&batches, &mut state, tenant, t0 + WIDE_FOR));
        // Once it lapses: one lane again, and the tenant's entry is gone.
        assert!(lanes_of(&batches, &mut state, tenant, t0 + WIDE_FOR * 2).iter().all(|l| l.1 == 0));
        assert!(state.wide_until.is_empty());
        assert!(batches.took(&mut state, tenant, WIDEN_AT_BATCH, t0 + WIDE_FOR * 2), "a new spread after a lapse");
    }

    #[test]
    fn check_lanes_spread_only_for_a_backlog() {
        let batches = Batches::<()>::new(2, CHECK_WIDEN_AT_BATCH);
        let mut state = batches.state.lock().unwrap();
        let tenant = TenantId(uuid::Uuid::from_u128(7));
        let t0 = Instant::now();
        for size in [WIDEN_AT_BATCH, 64, CHECK_WIDEN_AT_BATCH - 1] {
            assert!(!batches.took(&mut state, tenant, size, t0), "a batch of {size} checks keeps one lane");
        }
        assert!(lanes_of(&batches, &mut state, tenant, t0).iter().all(|l| l.1 == 0));
        assert!(batches.took(&mut state, tenant, CHECK_WIDEN_AT_BATCH, t0), "a backlog's batch spreads the checks");
        let spread = lanes_of(&batches, &mut state, tenant, t0);
        assert!(spread.iter().any(|l| l.1 == 0) && spread.iter().any(|l| l.1 == 1));
    }

    #[test]
    #[should_panic(expected = "a widening batch size a batch can reach")]
    fn a_widening_size_above_the_largest_batch_is_a_bug() {
        let _ = Batches::<()>::new(2, super::BATCH_MAX + 1);
    }

    #[test]
    fn a_single_lane_never_spreads() {
        let batches = Batches::<()>::new(1, WIDEN_AT_BATCH);
        let mut state = batches.state.lock().unwrap();
        let tenant = TenantId(uuid::Uuid::from_u128(7));
        assert!(!batches.took(&mut state, tenant, 256, Instant::now()));
        assert!(lanes_of(&batches, &mut state, tenant, Instant::now()).iter().all(|l| l.1 == 0));
    }
}
