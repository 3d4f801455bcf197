//! Group commit for debits of one hot meter. Concurrent single-meter debits of the same account
//! and meter queue behind one worker; while it runs a transaction, new arrivals wait, and the next
//! transaction decides all of them under **one** row lock, one load, one fair-use standing and one
//! commit. Each debit is still decided on its own, in arrival order, against the balance the
//! earlier ones left: a denial is a decision for that debit only, each allowed debit gets its own
//! ledger entry and each keeps its own idempotency record. No reply leaves before the commit that
//! holds it.
//!
//! A lone debit takes the ordinary path (`debit_alone`), so an idle meter pays nothing for this.
//! Anything unusual for a batch — a pooled (org) payer, a restrict-stage daily budget on the
//! meter, an idempotency key stored concurrently by another transaction, any error — rolls the
//! batch back as a whole and decides its debits one by one on the ordinary path, so a failure of
//! one debit never fails or duplicates its neighbours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use allot_domain::charge;
use allot_domain::ledger::EntryKind;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{count, debit_print, refs, Amount, Credits, DebitCommand};
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use crate::repo::idempotency;
use crate::service::fair_use::{self, Standing};
use crate::service::idempotent;
use crate::service::in_force;
use crate::service::meter_session::MeterSession;
use crate::service::outcome::{Decision, Denial, MeterOutcome};

/// Most debits decided in one transaction.
pub const BATCH_MAX: usize = 256;

type Key = (TenantId, AccountId, Meter);

struct Pending {
    cmd: DebitCommand,
    reply: oneshot::Sender<Result<Decision, Error>>,
    /// The caller's span: the work done for it is traced under it.
    span: tracing::Span,
}

/// The queues of meters that have a worker.
#[derive(Default)]
pub struct Batches {
    queues: Mutex<HashMap<Key, Vec<Pending>>>,
}

/// The meter a debit could be batched on: one line of plain credits, no subsidy.
pub fn key_of(tenant: TenantId, cmd: &DebitCommand) -> Option<Key> {
    match cmd.lines.as_slice() {
        [(meter, Amount::Credits(amount))] if *amount > 0 && cmd.subsidy.is_none() => Some((tenant, cmd.account.clone(), meter.clone())),
        _ => None,
    }
}

/// Removes a worker's queue if it stops abnormally (a panic), failing the debits still queued
/// rather than leaving the meter without a worker.
struct Worker {
    batches: Arc<Batches>,
    key: Option<Key>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.batches.queues.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }
}

impl Credits {
    /// Queues a debit behind its meter's worker (starting one if there is none) and waits for its
    /// decision.
    pub(super) async fn debit_queued(&self, key: Key, cmd: DebitCommand) -> Result<Decision, Error> {
        let (reply, decided) = oneshot::channel();
        let start_worker = {
            let mut queues = self.batches.queues.lock().unwrap_or_else(|p| p.into_inner());
            let pending = Pending { cmd, reply, span: tracing::Span::current() };
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push(pending);
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![pending]);
                    true
                }
            }
        };
        if start_worker {
            let this = self.clone();
            tokio::spawn(async move { this.work(key).await });
        }
        decided.await.map_err(|_| Error::Internal("the meter's batch worker stopped".into()))?
    }

    /// Decides the meter's queue, batch after batch, until it is empty.
    async fn work(self, key: Key) {
        let mut worker = Worker { batches: self.batches.clone(), key: Some(key.clone()) };
        loop {
            let mut batch = {
                let mut queues = self.batches.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(&key) else { break };
                if queue.is_empty() {
                    queues.remove(&key);
                    worker.key = None;
                    return;
                }
                let take = queue.len().min(BATCH_MAX);
                queue.drain(..take).collect::<Vec<_>>()
            };
            let tenant = key.0;
            if batch.len() == 1 {
                let pending = batch.pop().expect("one");
                let decided = self.debit_alone(tenant, pending.cmd).instrument(pending.span).await;
                let _ = pending.reply.send(decided);
                continue;
            }
            let commands: Vec<DebitCommand> = batch.iter().map(|p| p.cmd.clone()).collect();
            // The batch's work is traced under its first caller; the others get an event.
            for pending in &batch[1..] {
                pending.span.in_scope(|| tracing::debug!(batch.size = batch.len(), "debit decided in a batch"));
            }
            match self.debit_batch(tenant, &commands).instrument(batch[0].span.clone()).await {
                Ok(decisions) => {
                    crate::telemetry::record_debit_batch(batch.len());
                    for (pending, decision) in batch.into_iter().zip(decisions) {
                        let _ = pending.reply.send(decision);
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, batch.size = batch.len(), "debit batch rolled back; deciding its debits one by one");
                    for pending in batch {
                        let decided = self.debit_alone(tenant, pending.cmd).instrument(pending.span).await;
                        let _ = pending.reply.send(decided);
                    }
                }
            }
        }
    }

    /// Decides `commands` (same tenant, account and meter; plain credits) in one transaction.
    /// Per debit: its decision, or the error it alone gets (a reused key). `Err` means nothing was
    /// written and every debit must be decided alone.
    async fn debit_batch(&self, tenant: TenantId, commands: &[DebitCommand]) -> Result<Vec<Result<Decision, Error>>, Error> {
        let now = self.ctx.clock.now();
        let first = &commands[0];
        let meter = first.lines[0].0.clone();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let payer = in_force::resolve(&tx, tenant, &first.account, now).await?;
        if payer.pooled() {
            return Err(Error::Internal("not batched: a pooled payer".into()));
        }
        let mut session = MeterSession::lock(&tx, tenant, &payer, &meter, now, &[]).await?;
        if super::moved_on(&payer, std::slice::from_ref(&session)) {
            return Err(Error::Internal("not batched: the meter moved on to a later period".into()));
        }
        let keys: Vec<&str> = commands.iter().map(|c| c.key.as_str()).collect();
        let mut stored = idempotency::find_many(&tx, tenant, &keys).await?;
        let mut standing = Standing::load(&tx, tenant, &payer.acting, now).await?;
        standing.sync(&tx, tenant, &payer.acting, "", now).await?;
        if standing.daily_budget(&meter).is_some() {
            return Err(Error::Internal("not batched: a restrict-stage daily budget".into()));
        }
        if session.in_force.rate.is_some() {
            // One Redis decision per debit would hold the row lock for as many round trips, and
            // a rolled-back batch would count its debits twice.
            return Err(Error::Internal("not batched: a per-minute rate cap".into()));
        }
        let funds = crate::service::subsidy::pays(&payer);
        let policy = session.in_force.policy;
        let mut results: Vec<Result<Decision, Error>> = Vec::with_capacity(commands.len());
        let mut fresh: HashMap<&str, (Vec<u8>, usize)> = HashMap::new();
        let mut used_credits = 0;
        for cmd in commands {
            let print = debit_print(cmd);
            if let Some(record) = stored.remove(cmd.key.as_str()) {
                results.push(idempotent::replay_record(record, "debit", &print));
                continue;
            }
            if let Some((first_print, index)) = fresh.get(cmd.key.as_str()) {
                // A retry that arrived while its first try was queued: the same answer.
                let first = results[*index].as_ref().ok().cloned();
                results.push(match first {
                    Some(decision) if *first_print == print => Ok(decision),
                    _ => Err(Error::IdempotencyKeyReused),
                });
                continue;
            }
            let amount = match cmd.lines[0].1 {
                Amount::Credits(amount) => amount,
                Amount::Rated { .. } => return Err(Error::Internal("not batched: rated usage".into())),
            };
            let denial = if session.within_member_cap(amount) {
                charge::check(&session.state, &policy, amount, cmd.mode, now).err().map(|d| session.denial(d))
            } else {
                Some(Denial::MemberCapReached)
            };
            let mut outcome = MeterOutcome {
                denial,
                entry_id: None,
                breakdown: Vec::new(),
                retry_after_ms: 0,
                meter: session.view(now),
                rating: None,
                subsidy: None,
            };
            if denial.is_none() {
                let effect = charge::debit(&mut session.state, &policy, amount, cmd.mode, EntryKind::Debit, now)
                    .map_err(|d| Error::Internal(format!("a checked debit was denied: {d:?}")))?;
                outcome.breakdown = effect.breakdown.clone();
                let entry_id = session.record(effect, refs(&payer, Some(&cmd.key), None, &cmd.attributes, None));
                outcome.entry_id = Some(entry_id);
                if funds {
                    crate::service::subsidy::fund(&tx, tenant, &meter, amount, entry_id, now).await?;
                }
                session.add_member_use(amount);
                session.roll_up(session.state.period.start, cmd.attributes.clone(), amount, 1);
                outcome.meter = session.view(now);
                used_credits += amount;
            }
            fresh.insert(cmd.key.as_str(), (print, results.len()));
            results.push(Ok(Decision { meters: vec![outcome], fair_use: None, trial: payer.trial(now), subsidy: None }));
        }
        let caps = if used_credits > 0 {
            fair_use::record_usage(&tx, tenant, &payer.acting, payer.plan_id.as_deref(), &meter, used_credits, now).await?
        } else {
            Vec::new()
        };
        for (_, index) in fresh.values() {
            if let Ok(decision) = &mut results[*index] {
                let allowed = decision.denial().is_none();
                decision.fair_use = Some(standing.view(if allowed { caps.clone() } else { Vec::new() }));
            }
        }
        // Every new outcome under its key, the inserts pipelined. Rate-limited ones are decided
        // afresh on retry, as on the ordinary path.
        let mut stores = Vec::with_capacity(fresh.len());
        let tx_ref = &tx;
        for (key, (print, index)) in &fresh {
            let Ok(decision) = &results[*index] else { continue };
            if !decision.is_transient() {
                let key = crate::ids::IdempotencyKey::parse(key).map_err(|e| Error::Internal(format!("batched key: {e}")))?;
                stores.push(async move { idempotent::store(tx_ref, tenant, &key, "debit", print.clone(), decision).await });
            }
        }
        if !futures::future::try_join_all(stores).await?.into_iter().all(|stored| stored) {
            return Err(Error::Internal("not batched: a key was stored concurrently".into()));
        }
        // Retries inside the batch got a copy before the fair-use figures were filled in.
        let copies: Vec<(usize, usize)> = commands
            .iter()
            .enumerate()
            .filter_map(|(i, cmd)| fresh.get(cmd.key.as_str()).filter(|(_, first)| *first != i).map(|(_, first)| (i, *first)))
            .collect();
        for (i, first) in copies {
            if let (true, Ok(decision)) = (results[i].is_ok(), &results[first]) {
                results[i] = Ok(decision.clone());
            }
        }
        session.save(&tx, now).await?;
        tx.commit().await?;
        for decision in results.iter().flatten() {
            count("debit", decision);
        }
        Ok(results)
    }
}
