//! The hot path: check, debit, reserve, commit, release and refund. Each mutation is one
//! transaction: resolve who pays, lock the payer's meters in meter order, replay or decide (credit,
//! member cap, then the rate cap), persist, store the idempotent outcome, commit. A request with
//! several meters is all or nothing.

use std::collections::BTreeMap;

use allot_domain::charge::{self, Mode};
use allot_domain::ledger::{Bucket, EntryKind};
use allot_domain::refund::{self, Original};
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::fair_use::{self, Standing};
use super::idempotent::{self, fingerprint};
use super::in_force::{self, Payer};
use super::meter_session::MeterSession;
use super::outcome::{Decision, Denial, MeterOutcome, RefundOutcome, ReleaseOutcome, ReserveOutcome};
use super::pricing::{Pricing, Quantities, Rated, Sku};
use super::rate::{RateLimiter, RateRequest};
use super::subsidy::{self, SubsidyAsk, Take};

mod batch;
mod check;
#[cfg(test)]
mod future_sizes;

use super::Ctx;
use crate::error::Error;
use crate::ids::{AccountId, IdempotencyKey, Meter, TenantId};
use crate::repo::holds::{HoldRow, HoldStatus, NewHold};
use crate::repo::ledger::EntryRefs;
use crate::repo::{self, Tx};
pub use batch::LANE_CONNECTION_BELOW_BATCH;

/// Meters and amounts of one request, in request order, each meter once.
pub type Usage = Vec<(Meter, i64)>;

/// How much a request uses of one meter: credits, or usage of a SKU to rate at the price in force.
#[derive(Debug, Clone)]
pub enum Amount {
    Credits(i64),
    Rated { sku: Sku, quantities: Quantities },
}

/// Meters and amounts as requested, in request order, each meter once.
pub type Lines = Vec<(Meter, Amount)>;

/// The verdicts of a debit or reserve before anything is charged.
struct Admission {
    standing: Standing,
    denials: Vec<Option<Denial>>,
    retry: Vec<i64>,
    /// Per meter, the restrict-stage day whose budget applies.
    budgeted: Vec<Option<time::Date>>,
}

/// Lines turned into credits: the usage, each line's rating, and price refusals.
#[derive(Debug, Clone)]
struct Priced {
    usage: Usage,
    /// What the account itself pays per line: the usage, less what a subsidy pool covers.
    charged: Vec<i64>,
    ratings: Vec<Option<Rated>>,
    denials: Vec<Option<Denial>>,
}

impl Priced {
    /// The account's part of each line, as usage.
    fn charged_usage(&self) -> Usage {
        self.usage.iter().zip(&self.charged).map(|((m, _), c)| (m.clone(), *c)).collect()
    }

    /// Lines a price refusal already denies.
    fn refused(&self) -> Vec<bool> {
        self.denials.iter().map(Option::is_some).collect()
    }
}
/// Caller-supplied labels kept on ledger entries.
pub type Attributes = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct CheckCommand {
    pub account: AccountId,
    pub lines: Lines,
    pub subsidy: Option<SubsidyAsk>,
}

#[derive(Debug, Clone)]
pub struct DebitCommand {
    pub account: AccountId,
    pub lines: Lines,
    pub mode: Mode,
    pub key: IdempotencyKey,
    pub attributes: Attributes,
    pub subsidy: Option<SubsidyAsk>,
}

#[derive(Debug, Clone)]
pub struct ReserveCommand {
    pub account: AccountId,
    pub lines: Lines,
    pub ttl_ms: i64,
    pub key: IdempotencyKey,
    pub attributes: Attributes,
    pub subsidy: Option<SubsidyAsk>,
}

/// What a hold really used.
#[derive(Debug, Clone)]
pub enum Actual {
    /// For a hold on one meter.
    Single(i64),
    /// Per meter (credits or rated usage); meters left out used nothing.
    PerMeter(Lines),
}

#[derive(Debug, Clone)]
pub struct CommitCommand {
    pub hold_id: Uuid,
    pub actual: Actual,
}

#[derive(Debug, Clone)]
pub struct RefundCommand {
    pub entry_id: Uuid,
    pub amount_credits: i64,
    pub key: IdempotencyKey,
}

/// The credit operations of one server.
#[derive(Clone)]
pub struct Credits {
    ctx: Ctx,
    rate: RateLimiter,
    pricing: Pricing,
    /// Debits queued per tenant (group commit, see `batch`).
    batches: std::sync::Arc<batch::Batches<batch::Queued>>,
    /// Checks queued per tenant (one snapshot for a batch, see `batch`); `None` when every check
    /// is decided alone (`Config::check_batching` off).
    check_batches: Option<std::sync::Arc<batch::Batches<batch::QueuedCheck>>>,
}

/// What a keyed operation did inside its transaction.
enum Keyed<T> {
    /// A stored outcome for the same request: nothing was written.
    Replayed(T),
    /// A new outcome, saved; it is stored under the key and committed.
    Decided(T),
    /// A new outcome that passes with time (rate limited): committed but not stored under the key,
    /// so a retry with the same key is decided afresh.
    Transient(T),
}

fn lines_print(lines: &Lines) -> String {
    lines
        .iter()
        .map(|(m, a)| match a {
            Amount::Credits(c) => format!("{m}={c}"),
            Amount::Rated { sku, quantities } => format!("{m}={}:{quantities:?}", sku.as_str()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A debit's idempotency fingerprint: every field that changes its meaning.
fn debit_print(cmd: &DebitCommand) -> Vec<u8> {
    let (lines, mode, attributes) = (lines_print(&cmd.lines), format!("{:?}", cmd.mode), attributes_print(&cmd.attributes));
    let mut fields: Vec<&dyn std::fmt::Display> = vec![&cmd.account, &lines, &mode, &attributes];
    // Only a subsidised request has the field, so earlier fingerprints stay valid.
    let subsidy = cmd.subsidy.as_ref().map(SubsidyAsk::print);
    if let Some(subsidy) = &subsidy {
        fields.push(subsidy);
    }
    fingerprint("debit", &fields)
}

/// A reservation's idempotency fingerprint.
fn reserve_print(cmd: &ReserveCommand) -> Vec<u8> {
    let (lines, attributes) = (lines_print(&cmd.lines), attributes_print(&cmd.attributes));
    let mut fields: Vec<&dyn std::fmt::Display> = vec![&cmd.account, &lines, &cmd.ttl_ms, &attributes];
    let subsidy = cmd.subsidy.as_ref().map(SubsidyAsk::print);
    if let Some(subsidy) = &subsidy {
        fields.push(subsidy); // only when set: earlier fingerprints stay valid
    }
    fingerprint("reserve", &fields)
}

fn attributes_print(attributes: &Attributes) -> String {
    attributes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\u{1e}")
}

/// Attributes as stored on ledger entries and holds.
pub fn attributes_json(attributes: &Attributes) -> serde_json::Value {
    serde_json::Value::Object(attributes.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect())
}

fn attributes_of(json: &serde_json::Value) -> Attributes {
    json.as_object().map(|o| o.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect()).unwrap_or_default()
}

fn refs(payer: &Payer, key: Option<&IdempotencyKey>, hold_id: Option<Uuid>, attributes: &Attributes, rating: Option<&Rated>) -> EntryRefs {
    EntryRefs {
        rating: rating.and_then(|r| serde_json::to_value(r).ok()),
        refunds_entry_id: None,
        hold_id,
        idempotency_key: key.map(|k| k.as_str().to_owned()),
        acting_account_id: payer.pooled().then(|| payer.acting.as_str().to_owned()),
        attributes: Some(attributes_json(attributes)),
    }
}

/// What a keyed mutation finds once its meters are locked.
#[allow(clippy::large_enum_variant)] // built once per request and consumed at once
enum Locked<T> {
    /// The key was used before for the same request: its stored outcome.
    Replay(T),
    /// A new request: who pays, and the payer's locked meters in request order.
    Fresh(Payer, Vec<MeterSession>),
}

/// Resolves who pays, locks the payer's meters and only then looks the key up, so concurrent
/// requests with one key are serialised by the meter locks.
#[allow(clippy::too_many_arguments)]
async fn lock_or_replay<T: DeserializeOwned>(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    usage: &Usage,
    key: &IdempotencyKey,
    operation: &str,
    print: &[u8],
    now: OffsetDateTime,
    clock: &dyn crate::clock::Clock,
) -> Result<Locked<T>, Error> {
    let payer = in_force::resolve(tx, tenant, account, now).await?;
    let meters: Vec<&Meter> = usage.iter().map(|(m, _)| m).collect();
    let sessions = lock_all(tx, tenant, &payer, &meters, now).await?;
    if stale_time(&payer, &sessions, clock) {
        return Err(Error::Aborted);
    }
    Ok(match idempotent::replay(tx, tenant, key, operation, print).await? {
        Some(replayed) => Locked::Replay(replayed),
        None => Locked::Fresh(payer, sessions),
    })
}

/// Attempts of a keyed operation whose meter moved on to a later period while it waited for the
/// lock (the first attempt's time is then before that period: it is decided again, at a fresh time).
const KEYED_ATTEMPTS_MAX: u32 = 3;

/// Whether a locked meter is already in a period after the one `now` falls in: another request,
/// stamped later, rolled it while this one waited for the lock.
fn moved_on(payer: &Payer, sessions: &[MeterSession]) -> bool {
    sessions.iter().any(|s| s.state.period.start >= payer.period.end)
}

/// Whether an operation must be decided again at a fresh time (answered with `Error::Aborted`,
/// which its caller retries): its meter moved on, and the clock has reached the period the meter
/// moved on to (a clock still behind it — skew between replicas — books into it as before).
fn stale_time(payer: &Payer, sessions: &[MeterSession], clock: &dyn crate::clock::Clock) -> bool {
    moved_on(payer, sessions) && sessions.iter().all(|s| clock.now() >= s.state.period.start)
}

/// Locks the payer's meters in meter order (the lock order) and returns them in request order.
async fn lock_all(tx: &Tx<'_>, tenant: TenantId, payer: &Payer, meters: &[&Meter], now: OffsetDateTime) -> Result<Vec<MeterSession>, Error> {
    let mut order: Vec<usize> = (0..meters.len()).collect();
    order.sort_by(|a, b| meters[*a].cmp(meters[*b]));
    let mut locked: Vec<Option<MeterSession>> = (0..meters.len()).map(|_| None).collect();
    for i in order {
        locked[i] = Some(MeterSession::lock(tx, tenant, payer, meters[i], now, &[]).await?);
    }
    Ok(locked.into_iter().flatten().collect())
}

/// Credit and member-cap verdicts per meter on what the account pays; changes nothing.
fn credit_denials(sessions: &[MeterSession], usage: &Usage, mode: Mode, now: OffsetDateTime) -> Vec<Option<Denial>> {
    sessions
        .iter()
        .zip(usage)
        .map(|(session, (_, amount))| {
            if !session.within_member_cap(*amount) {
                return Some(Denial::MemberCapReached);
            }
            charge::check(&session.state, &session.in_force.policy, *amount, mode, now).err().map(|d| session.denial(d))
        })
        .collect()
}

/// Restrict-stage daily budgets: adds DAILY_BUDGET_EXHAUSTED to meters that are otherwise
/// allowed but would bust their budget. Returns, per meter, the budgeted day when one applies.
async fn budget_denials(
    tx: &Tx<'_>,
    tenant: TenantId,
    standing: &Standing,
    acting: &AccountId,
    usage: &Usage,
    denials: &mut [Option<Denial>],
    now: OffsetDateTime,
) -> Result<Vec<Option<time::Date>>, Error> {
    let day = repo::fair_use::day_of(now);
    let mut budgeted = Vec::with_capacity(usage.len());
    for (i, (meter, amount)) in usage.iter().enumerate() {
        let Some(budget) = standing.daily_budget(meter) else {
            budgeted.push(None);
            continue;
        };
        let used = repo::fair_use::restrict_used(tx, tenant, acting, meter, day).await?;
        if denials[i].is_none() && !allot_domain::escalation::within_daily_budget(budget, used, *amount) {
            denials[i] = Some(Denial::DailyBudgetExhausted);
        }
        budgeted.push(Some(day));
    }
    Ok(budgeted)
}

/// Writes a `budget_exhausted` event for each meter denied by its daily budget.
async fn budget_events(
    tx: &Tx<'_>,
    tenant: TenantId,
    acting: &AccountId,
    usage: &Usage,
    denials: &[Option<Denial>],
    now: OffsetDateTime,
) -> Result<(), Error> {
    for (i, denial) in denials.iter().enumerate() {
        if *denial == Some(Denial::DailyBudgetExhausted) {
            let payload = serde_json::json!({ "meter": usage[i].0.as_str(), "amount_credits": usage[i].1 });
            repo::outbox::append(tx, tenant, "budget_exhausted", acting, payload, now).await?;
        }
    }
    Ok(())
}

fn outcomes(
    sessions: &[MeterSession],
    denials: &[Option<Denial>],
    retry_after_ms: &[i64],
    ratings: &[Option<Rated>],
    now: OffsetDateTime,
) -> Vec<MeterOutcome> {
    sessions
        .iter()
        .enumerate()
        .map(|(i, s)| MeterOutcome {
            denial: denials[i],
            entry_id: None,
            breakdown: Vec::new(),
            retry_after_ms: retry_after_ms[i],
            meter: s.view(now),
            rating: ratings.get(i).cloned().flatten(),
            subsidy: None,
        })
        .collect()
}

/// Price refusals come first: a meter whose usage cannot be rated is denied for that.
fn overlay(denials: &mut [Option<Denial>], price_denials: &[Option<Denial>]) {
    for (denial, price) in denials.iter_mut().zip(price_denials) {
        if price.is_some() {
            *denial = *price;
        }
    }
}

impl Credits {
    /// `batch_workers`: group-commit transactions one tenant runs at once; `check_batch_workers`:
    /// snapshots of batched checks one tenant reads at once, `None` to decide every check alone
    /// (see `batch`).
    pub fn new(ctx: Ctx, rate: RateLimiter, pricing: Pricing, batch_workers: usize, check_batch_workers: Option<usize>) -> Credits {
        let check_batches = check_batch_workers.map(|workers| std::sync::Arc::new(batch::Batches::new(workers, batch::CHECK_WIDEN_AT_BATCH)));
        let batches = std::sync::Arc::new(batch::Batches::new(batch_workers, batch::WIDEN_AT_BATCH));
        Credits { ctx, rate, pricing, batches, check_batches }
    }

    /// Rates SKU usage into credits at `now` (before any lock: prices are cached). A SKU that
    /// cannot be priced, or whose cost is anomalous, denies its meter; other failures are errors.
    async fn price(&self, tenant: TenantId, lines: &Lines, now: OffsetDateTime) -> Result<Priced, Error> {
        let mut priced = Priced { usage: Vec::with_capacity(lines.len()), charged: Vec::new(), ratings: Vec::new(), denials: Vec::new() };
        for (meter, amount) in lines {
            let (credits, rating, denial) = match amount {
                Amount::Credits(credits) => (*credits, None, None),
                Amount::Rated { sku, quantities } => match self.pricing.rate(tenant, sku, quantities, now).await {
                    Ok(rated) => (rated.cost_credits, Some(rated), None),
                    Err(Error::PriceUnknown { .. }) => (0, None, Some(Denial::PriceUnknown)),
                    Err(Error::PriceAnomaly { .. }) => (0, None, Some(Denial::PriceAnomaly)),
                    Err(err) => return Err(err),
                },
            };
            priced.usage.push((meter.clone(), credits));
            priced.charged.push(credits);
            priced.ratings.push(rating);
            priced.denials.push(denial);
        }
        Ok(priced)
    }

    /// Decides the rate caps of all meters at once (counting them when `consume`); sets each
    /// session's rate view and returns the refusing meter and its wait.
    async fn decide_rate(
        &self,
        tenant: TenantId,
        sessions: &mut [MeterSession],
        usage: &Usage,
        throttle_percent: Option<u32>,
        now: OffsetDateTime,
        consume: bool,
    ) -> Option<(usize, i64)> {
        let lowered = |v: i64| throttle_percent.map_or(v, |p| allot_domain::escalation::throttled(v, p));
        let mut capped = Vec::new();
        let mut requests = Vec::new();
        for (i, session) in sessions.iter().enumerate() {
            if let Some(cap) = session.in_force.rate {
                capped.push(i);
                requests.push(RateRequest {
                    key: RateLimiter::key(&tenant.to_string(), session.account.as_str(), session.meter.as_str()),
                    limit_per_minute: lowered(cap.limit_per_minute),
                    burst: lowered(cap.burst),
                    weight: usage[i].1,
                    fail_open: cap.fail_open,
                });
            }
        }
        let decision = self.rate.decide(&requests, now, consume).await;
        for (view, i) in decision.views.into_iter().zip(&capped) {
            sessions[*i].rate = Some(view);
        }
        decision.limited.map(|(index, wait_ms)| (capped[index], wait_ms))
    }

    /// Each meter's verdict before anything is charged: prices, member caps and credit, then
    /// daily budgets in the restrict stage, then — only when all pass — the rate caps, counted.
    /// Budget refusals are written as events; a stage that moved is stored.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        tx: &Tx<'_>,
        tenant: TenantId,
        payer: &Payer,
        sessions: &mut [MeterSession],
        priced: &Priced,
        mode: Mode,
        now: OffsetDateTime,
    ) -> Result<Admission, Error> {
        let mut standing = Standing::load(tx, tenant, &payer.acting, now).await?;
        standing.sync(tx, tenant, &payer.acting, "", now).await?;
        let charged = priced.charged_usage();
        let mut denials = credit_denials(sessions, &charged, mode, now);
        overlay(&mut denials, &priced.denials);
        let budgeted = budget_denials(tx, tenant, &standing, &payer.acting, &charged, &mut denials, now).await?;
        let mut retry = vec![0; sessions.len()];
        if denials.iter().all(Option::is_none) {
            if let Some((i, wait_ms)) = self.decide_rate(tenant, sessions, &priced.usage, standing.rate_percent(), now, true).await {
                denials[i] = Some(Denial::RateLimited);
                retry[i] = wait_ms;
            }
        }
        budget_events(tx, tenant, &payer.acting, &charged, &denials, now).await?;
        Ok(Admission { standing, denials, retry, budgeted })
    }

    /// Decides a request's subsidy (taking the pool's part when `take` says so) and sets what
    /// the account pays per line.
    #[allow(clippy::too_many_arguments)]
    async fn subsidise(
        tx: &Tx<'_>,
        tenant: TenantId,
        ask: Option<&SubsidyAsk>,
        acting: &AccountId,
        priced: &mut Priced,
        now: OffsetDateTime,
        take: Take,
    ) -> Result<Option<subsidy::Plan>, Error> {
        let Some(ask) = ask else { return Ok(None) };
        let plan = subsidy::plan(tx, tenant, ask, acting, &priced.usage, &priced.refused(), now, take).await?;
        priced.charged = plan.account_amounts();
        Ok(Some(plan))
    }

    /// Charges usage. Concurrent single-line debits of a tenant (credits, or SKU usage rated
    /// first) are decided together in one transaction (group commit, see `batch`); others alone.
    pub async fn debit(&self, tenant: TenantId, cmd: DebitCommand) -> Result<Decision, Error> {
        match self.batchable(tenant, cmd).await {
            Ok(queued) => self.queue(tenant, queued).await,
            // Boxed: the ordinary path's future (a whole transaction, kilobytes) would otherwise
            // make a queued debit's future as large, copied whole each time it moves
            // (docs/benchmarks.md, finding 48).
            Err(cmd) => {
                Box::pin(async move {
                    let priced = self.price(tenant, &cmd.lines, self.ctx.clock.now()).await?;
                    self.debit_alone(tenant, cmd, priced).await
                })
                .await
            }
        }
    }

    /// A debit in its own transaction, its lines already `priced`.
    async fn debit_alone(&self, tenant: TenantId, cmd: DebitCommand, priced: Priced) -> Result<Decision, Error> {
        let print = debit_print(&cmd);
        let decision: Decision = self
            .keyed(tenant, &cmd.key, "debit", print.clone(), |tx, now| {
                let cmd = cmd.clone();
                let print = print.clone();
                let this = self.clone();
                let mut priced = priced.clone();
                Box::pin(async move {
                    let (payer, mut sessions) =
                        match lock_or_replay(tx, tenant, &cmd.account, &priced.usage, &cmd.key, "debit", &print, now, &*this.ctx.clock).await? {
                            Locked::Replay(replayed) => return Ok(Keyed::Replayed(replayed)),
                            Locked::Fresh(payer, sessions) => (payer, sessions),
                        };
                    let plan = Self::subsidise(tx, tenant, cmd.subsidy.as_ref(), &payer.acting, &mut priced, now, Take::Absorb).await?;
                    let Admission { standing, denials, retry, budgeted } =
                        this.admit(tx, tenant, &payer, &mut sessions, &priced, cmd.mode, now).await?;
                    let mut meters = outcomes(&sessions, &denials, &retry, &priced.ratings, now);
                    let mut caps = Vec::new();
                    if denials.iter().all(Option::is_none) {
                        for (i, session) in sessions.iter_mut().enumerate() {
                            let (cost, amount) = (priced.usage[i].1, priced.charged[i]);
                            if cost == 0 {
                                continue; // free usage (a SKU priced at zero) writes no entry
                            }
                            if amount > 0 {
                                // What a subsidy pool covers is not the account's to pay.
                                let policy = session.in_force.policy;
                                let effect = charge::debit(&mut session.state, &policy, amount, cmd.mode, EntryKind::Debit, now)
                                    .map_err(|d| Error::Internal(format!("a checked debit was denied: {d:?}")))?;
                                meters[i].breakdown = effect.breakdown.clone();
                                meters[i].entry_id =
                                    Some(session.record(effect, refs(&payer, Some(&cmd.key), None, &cmd.attributes, priced.ratings[i].as_ref())));
                                session.add_member_use(amount);
                                session.roll_up(session.state.period.start, cmd.attributes.clone(), amount, 1);
                                meters[i].meter = session.view(now);
                                if let Some(day) = budgeted[i] {
                                    repo::fair_use::add_restrict_used(tx, tenant, &payer.acting, &session.meter, day, amount).await?;
                                }
                            }
                            caps.extend(
                                fair_use::record_usage(tx, tenant, &payer.acting, payer.plan_id.as_deref(), &session.meter, cost, now).await?,
                            );
                        }
                    }
                    let allowed = denials.iter().all(Option::is_none);
                    if allowed && subsidy::pays(&payer) {
                        for (i, session) in sessions.iter().enumerate() {
                            if let Some(entry_id) = meters[i].entry_id {
                                subsidy::fund(tx, tenant, &session.meter, priced.charged[i], entry_id, now).await?;
                            }
                        }
                    }
                    for session in sessions {
                        session.save(tx, now).await?;
                    }
                    if let Some(plan) = &plan {
                        if allowed {
                            let entries: Vec<Option<Uuid>> = meters.iter().map(|m| m.entry_id).collect();
                            let lines = subsidy::absorbed(tx, tenant, plan, &payer.acting, &priced.usage, &entries, cmd.key.as_str(), now).await?;
                            for (meter, line) in meters.iter_mut().zip(lines) {
                                meter.subsidy = line;
                            }
                        } else {
                            subsidy::undo(tx, tenant, plan).await?;
                        }
                    }
                    let decision = Decision { meters, fair_use: Some(standing.view(caps)), trial: payer.trial(now), subsidy: plan.map(|p| p.view) };
                    Ok(if decision.is_transient() { Keyed::Transient(decision) } else { Keyed::Decided(decision) })
                })
            })
            .await?;
        count("debit", &decision);
        Ok(decision)
    }

    pub async fn reserve(&self, tenant: TenantId, cmd: ReserveCommand) -> Result<ReserveOutcome, Error> {
        let print = reserve_print(&cmd);
        let priced = self.price(tenant, &cmd.lines, self.ctx.clock.now()).await?;
        let outcome: ReserveOutcome = self
            .keyed(tenant, &cmd.key, "reserve", print.clone(), |tx, now| {
                let cmd = cmd.clone();
                let print = print.clone();
                let this = self.clone();
                let mut priced = priced.clone();
                Box::pin(async move {
                    let (payer, mut sessions) =
                        match lock_or_replay(tx, tenant, &cmd.account, &priced.usage, &cmd.key, "reserve", &print, now, &*this.ctx.clock).await? {
                            Locked::Replay(replayed) => return Ok(Keyed::Replayed(replayed)),
                            Locked::Fresh(payer, sessions) => (payer, sessions),
                        };
                    let plan = Self::subsidise(tx, tenant, cmd.subsidy.as_ref(), &payer.acting, &mut priced, now, Take::Reserve).await?;
                    let Admission { standing, denials, retry, budgeted } =
                        this.admit(tx, tenant, &payer, &mut sessions, &priced, Mode::Gate, now).await?;
                    let (mut hold_id, mut expires_at) = (None, None);
                    if denials.iter().all(Option::is_none) {
                        let id = Uuid::new_v4();
                        let expiry = now + time::Duration::milliseconds(cmd.ttl_ms);
                        let attributes = attributes_json(&cmd.attributes);
                        for (i, session) in sessions.iter_mut().enumerate() {
                            let (cost, amount) = (priced.usage[i].1, priced.charged[i]);
                            if cost == 0 {
                                continue; // nothing to hold on this meter
                            }
                            // A meter the pool covers in full keeps a zero-credit row to settle.
                            if amount > 0 {
                                let policy = session.in_force.policy;
                                charge::reserve(&mut session.state, &policy, amount, now)
                                    .map_err(|d| Error::Internal(format!("a checked hold was denied: {d:?}")))?;
                            }
                            session.member_held_credits += amount;
                            let hold = NewHold {
                                id,
                                account: &session.account,
                                acting: &payer.acting,
                                attributes: &attributes,
                                meter: &session.meter,
                                amount_credits: amount,
                                expires_at: expiry,
                                restrict_day: budgeted[i],
                            };
                            repo::holds::insert(tx, tenant, &hold, now).await?;
                            if let Some(day) = budgeted[i] {
                                // A long job is pre-charged against the day's budget; the commit settles it.
                                repo::fair_use::add_restrict_used(tx, tenant, &payer.acting, &session.meter, day, amount).await?;
                            }
                        }
                        if priced.usage.iter().any(|(_, amount)| *amount > 0) {
                            (hold_id, expires_at) = (Some(id), Some(expiry));
                        }
                    }
                    let caps = fair_use::triggered_caps(tx, tenant, &payer.acting, payer.plan_id.as_deref(), None, now).await?;
                    let mut meters = outcomes(&sessions, &denials, &retry, &priced.ratings, now);
                    if let Some(plan) = &plan {
                        match (hold_id, expires_at) {
                            (Some(id), Some(expiry)) => {
                                let lines = subsidy::reserved(tx, tenant, plan, &payer.acting, &priced.usage, id, expiry, now).await?;
                                for (meter, line) in meters.iter_mut().zip(lines) {
                                    meter.subsidy = line;
                                }
                            }
                            _ => subsidy::undo(tx, tenant, plan).await?,
                        }
                    }
                    let decision = Decision { meters, fair_use: Some(standing.view(caps)), trial: payer.trial(now), subsidy: plan.map(|p| p.view) };
                    for session in sessions {
                        session.save(tx, now).await?;
                    }
                    let outcome = ReserveOutcome { hold_id, expires_at, decision };
                    Ok(if outcome.decision.is_transient() { Keyed::Transient(outcome) } else { Keyed::Decided(outcome) })
                })
            })
            .await?;
        count("reserve", &outcome.decision);
        Ok(outcome)
    }

    /// Settles a hold with the actual amounts, at most once. A retry of the same commit gets the
    /// original answer; a denied commit (floor) leaves the hold in place.
    pub async fn commit(&self, tenant: TenantId, cmd: CommitCommand) -> Result<Decision, Error> {
        let mut attempt = 0;
        loop {
            // As in `keyed`: a commit whose meter moved on to a later period while it waited for
            // the lock is decided again at a fresh time.
            match self.commit_at(tenant, &cmd, self.ctx.clock.now()).await {
                Err(Error::Aborted) if attempt < KEYED_ATTEMPTS_MAX - 1 => attempt += 1,
                decided => return decided,
            }
        }
    }

    async fn commit_at(&self, tenant: TenantId, cmd: &CommitCommand, now: OffsetDateTime) -> Result<Decision, Error> {
        let actual_print = match &cmd.actual {
            Actual::Single(a) => a.to_string(),
            Actual::PerMeter(lines) => lines_print(lines),
        };
        // Rated actuals are priced at the time of the commit; an unpriceable SKU is refused (after
        // the replay check, so a retry of a settled commit still gets its answer).
        let mut unrated = None;
        let (actual_usage, ratings) = match &cmd.actual {
            Actual::Single(a) => (Actual::Single(*a), Vec::new()),
            Actual::PerMeter(lines) => {
                let priced = self.price(tenant, lines, now).await?;
                if let Some((i, _)) = priced.denials.iter().enumerate().find(|(_, d)| d.is_some()) {
                    unrated = Some(lines[i].0.clone());
                }
                let by_meter: Vec<(Meter, Option<Rated>)> = lines.iter().map(|(m, _)| m.clone()).zip(priced.ratings).collect();
                (Actual::PerMeter(priced.usage.into_iter().map(|(m, c)| (m, Amount::Credits(c))).collect()), by_meter)
            }
        };
        let print = fingerprint("commit", &[&cmd.hold_id, &actual_print]);
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let (payer, mut sessions, holds) = lock_hold(&tx, tenant, cmd.hold_id, now).await?;
        if stale_time(&payer, &sessions, &*self.ctx.clock) {
            return Err(Error::Aborted);
        }
        match holds[0].status {
            HoldStatus::Committed if holds[0].settlement_request_sha256.as_deref() == Some(print.as_slice()) => return stored(&holds[0]),
            HoldStatus::Committed | HoldStatus::Released => return Err(Error::HoldSettled { status: holds[0].status.as_str() }),
            HoldStatus::Expired => return Err(Error::HoldExpired),
            HoldStatus::Held if holds.iter().any(|h| h.status != HoldStatus::Held || h.expires_at <= now) => return Err(Error::HoldExpired),
            HoldStatus::Held => {}
        }
        if let Some(meter) = unrated {
            return Err(Error::FailedPrecondition(format!("the usage on meter {meter} cannot be rated")));
        }
        let actual = actual_amounts(&holds, &actual_usage)?;
        // The pool's part of the hold settles first: it absorbs up to what it reserved.
        let parts = repo::subsidy::held_parts(&tx, tenant, cmd.hold_id).await?;
        let part_of = |meter: &str| parts.iter().find(|p| p.meter == meter);
        let account_actual: Vec<i64> = holds
            .iter()
            .zip(&actual)
            .map(|(h, a)| part_of(&h.meter).map_or(*a, |p| allot_domain::subsidy::settle(*a, p.reserved_credits).account_credits))
            .collect();
        let mut trials = Vec::with_capacity(sessions.len());
        for (i, session) in sessions.iter().enumerate() {
            let mut state = session.state.clone();
            let policy = &session.in_force.policy;
            let result = match (holds[i].amount_credits, account_actual[i]) {
                (0, 0) => Ok(None),
                // The pool held all of it; what it does not cover is usage on record.
                (0, beyond) => charge::debit(&mut state, policy, beyond, Mode::Record, EntryKind::Commit, now).map(Some),
                (held, amount) => charge::commit(&mut state, policy, held, amount, now),
            };
            trials.push((state, result.map_err(|d| session.denial(d))));
        }
        let allowed = trials.iter().all(|(_, r)| r.is_ok());
        let attributes = attributes_of(&holds[0].attributes);
        let mut meters = Vec::with_capacity(sessions.len());
        for (i, (state, result)) in trials.into_iter().enumerate() {
            let session = &mut sessions[i];
            let rating = ratings.iter().find(|(m, _)| m.as_str() == holds[i].meter).and_then(|(_, r)| r.clone());
            let mut outcome = MeterOutcome {
                denial: result.as_ref().err().copied(),
                entry_id: None,
                breakdown: Vec::new(),
                retry_after_ms: 0,
                meter: session.view(now),
                rating: rating.clone(),
                subsidy: None,
            };
            if allowed {
                session.state = state;
                session.member_held_credits = (session.member_held_credits - holds[i].amount_credits).max(0);
                if let Ok(Some(effect)) = result {
                    outcome.breakdown = effect.breakdown.clone();
                    let entry_id = session.record(effect, refs(&payer, None, Some(cmd.hold_id), &attributes, rating.as_ref()));
                    outcome.entry_id = Some(entry_id);
                    session.add_member_use(account_actual[i]);
                    session.roll_up(session.state.period.start, attributes.clone(), account_actual[i], 1);
                    if subsidy::pays(&payer) {
                        subsidy::fund(&tx, tenant, &session.meter, account_actual[i], entry_id, now).await?;
                    }
                }
                if let Some(part) = part_of(&holds[i].meter) {
                    outcome.subsidy = Some(subsidy::settle_part(&tx, tenant, part, actual[i], outcome.entry_id, now).await?);
                }
                outcome.meter = session.view(now);
            }
            meters.push(outcome);
        }
        // Fair-use rows only after every subsidy row of the hold: the lock order.
        if allowed {
            for (i, session) in sessions.iter().enumerate() {
                if actual[i] > 0 {
                    fair_use::record_usage(&tx, tenant, &payer.acting, payer.plan_id.as_deref(), &session.meter, actual[i], now).await?;
                }
                if let Some(day) = holds[i].restrict_day {
                    let settle = account_actual[i] - holds[i].amount_credits;
                    repo::fair_use::add_restrict_used(&tx, tenant, &payer.acting, &session.meter, day, settle).await?;
                }
            }
        }
        let decision = Decision { meters, fair_use: None, trial: None, subsidy: None };
        if allowed {
            let response = serde_json::to_value(&decision).map_err(|e| Error::Internal(format!("outcome: {e}")))?;
            repo::holds::settle(&tx, tenant, cmd.hold_id, HoldStatus::Committed, &print, &response, now).await?;
        }
        for session in sessions {
            session.save(&tx, now).await?;
        }
        tx.commit().await?;
        count("commit", &decision);
        Ok(decision)
    }

    /// Voids a hold. Releasing a hold twice answers the same; releasing an expired hold says so.
    pub async fn release(&self, tenant: TenantId, hold_id: Uuid) -> Result<ReleaseOutcome, Error> {
        let now = self.ctx.clock.now();
        let print = fingerprint("release", &[&hold_id]);
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let (payer, mut sessions, holds) = lock_hold(&tx, tenant, hold_id, now).await?;
        let status = match holds[0].status {
            HoldStatus::Released => return stored(&holds[0]),
            HoldStatus::Committed => return Err(Error::HoldSettled { status: holds[0].status.as_str() }),
            HoldStatus::Held if holds.iter().all(|h| h.status == HoldStatus::Held && h.expires_at > now) => HoldStatus::Released,
            HoldStatus::Held | HoldStatus::Expired => HoldStatus::Expired,
        };
        if status == HoldStatus::Released {
            for (session, hold) in sessions.iter_mut().zip(&holds) {
                session.state.held_credits -= hold.amount_credits;
                session.member_held_credits = (session.member_held_credits - hold.amount_credits).max(0);
                if let Some(day) = hold.restrict_day {
                    repo::fair_use::add_restrict_used(&tx, tenant, &payer.acting, &session.meter, day, -hold.amount_credits).await?;
                }
            }
        }
        // The pool's reservation goes back whole, whether the hold was released or had expired.
        let parts = repo::subsidy::held_parts(&tx, tenant, hold_id).await?;
        subsidy::return_parts(&tx, tenant, &parts, status.as_str(), now).await?;
        let outcome = ReleaseOutcome { status, meters: sessions.iter().map(|s| s.view(now)).collect() };
        if status == HoldStatus::Released {
            let response = serde_json::to_value(&outcome).map_err(|e| Error::Internal(format!("outcome: {e}")))?;
            repo::holds::settle(&tx, tenant, hold_id, HoldStatus::Released, &print, &response, now).await?;
        }
        for session in sessions {
            session.save(&tx, now).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Returns all or part of a debit or commit to the buckets it came from. A subsidised charge
    /// (named by its ledger entry, or by its subsidy id when the pool paid all of it) is refunded
    /// in proportion: the pool's part to the pool's shard, the account's part to its buckets.
    pub async fn refund(&self, tenant: TenantId, cmd: RefundCommand) -> Result<RefundOutcome, Error> {
        let print = fingerprint("refund", &[&cmd.entry_id, &cmd.amount_credits]);
        self.keyed(tenant, &cmd.key, "refund", print.clone(), |tx, now| {
            let cmd = cmd.clone();
            let print = print.clone();
            let clock = self.ctx.clock.clone();
            Box::pin(async move {
                let stored_id = |raw: &str| AccountId::parse(raw).map_err(|e| Error::Internal(format!("stored account: {e}")));
                let stored_meter = |raw: &str| Meter::parse(raw).map_err(|e| Error::Internal(format!("stored meter: {e}")));
                let (original, subsidy_id) = match repo::ledger::get(tx, tenant, cmd.entry_id).await? {
                    Some(entry) => (Some(entry), None),
                    None => {
                        let found = repo::subsidy::subsidy_for(tx, tenant, cmd.entry_id).await?;
                        let found = found.ok_or(Error::NotFound { what: "ledger entry" })?;
                        let entry = match found.entry_id {
                            Some(id) => repo::ledger::get(tx, tenant, id).await?,
                            None => None,
                        };
                        (entry, Some(found.id))
                    }
                };
                if let Some(original) = &original {
                    if !matches!(original.kind, EntryKind::Debit | EntryKind::Commit) {
                        return Err(Error::FailedPrecondition(format!(
                            "a {} entry cannot be refunded: only debits and commits",
                            original.kind.as_str()
                        )));
                    }
                }
                let (payer, mut session) = match &original {
                    Some(original) => {
                        let account = stored_id(&original.account_id)?;
                        let acting = original.refs.acting_account_id.as_deref().map(stored_id).transpose()?.unwrap_or_else(|| account.clone());
                        let grant_ids: Vec<Uuid> = original
                            .breakdown
                            .iter()
                            .filter_map(|p| match p.bucket {
                                Bucket::Grant { id, .. } => Some(id),
                                _ => None,
                            })
                            .collect();
                        let payer = in_force::resolve_stored(tx, tenant, &acting, &account, now).await?;
                        let session = MeterSession::lock(tx, tenant, &payer, &stored_meter(&original.meter)?, now, &grant_ids).await?;
                        (payer, session)
                    }
                    None => {
                        // The pool paid all of it: the account's meter is locked for the lock order and the view.
                        let found = repo::subsidy::subsidy_for(tx, tenant, cmd.entry_id).await?.ok_or(Error::NotFound { what: "ledger entry" })?;
                        let acting = stored_id(found.account_id.as_deref().unwrap_or_default())?;
                        let payer = in_force::resolve(tx, tenant, &acting, now).await?;
                        let session =
                            MeterSession::lock(tx, tenant, &payer, &stored_meter(found.meter.as_deref().unwrap_or_default())?, now, &[]).await?;
                        (payer, session)
                    }
                };
                // Read under the meter's lock, which serialises refunds of one charge (the grant
                // log is append-only: not even the server's role may lock its rows).
                if stale_time(&payer, std::slice::from_ref(&session), &*clock) {
                    return Err(Error::Aborted); // decided again at a fresh time (see `keyed`)
                }
                let subsidised = match (subsidy_id, &original) {
                    (Some(id), _) => repo::subsidy::subsidy_for(tx, tenant, id).await?,
                    (None, Some(original)) => repo::subsidy::subsidy_for(tx, tenant, original.id).await?,
                    (None, None) => None,
                };
                if let Some(replayed) = idempotent::replay(tx, tenant, &cmd.key, "refund", &print).await? {
                    return Ok(Keyed::Replayed(replayed));
                }
                let split = match &subsidised {
                    Some(s) => subsidy::refund_split(tx, tenant, s, cmd.amount_credits).await?,
                    None => allot_domain::subsidy::Split { absorbed_credits: 0, account_credits: cmd.amount_credits },
                };
                let mut entry_id = None;
                let mut breakdown = Vec::new();
                let mut refunded_total_credits = cmd.amount_credits;
                if let Some(original) = &original {
                    let refunded_credits = repo::ledger::refunded_total(tx, tenant, original.id).await?;
                    refunded_total_credits = refunded_credits + split.account_credits;
                    if split.account_credits > 0 {
                        let effects = refund::refund(
                            &mut session.state,
                            Original { breakdown: &original.breakdown, period: original.period, refunded_credits },
                            split.account_credits,
                            now,
                        )
                        .map_err(|e| match e {
                            refund::Error::ExceedsRefundable { refundable_credits } => Error::RefundExceedsCharge { refundable_credits },
                            refund::Error::NotACharge => Error::FailedPrecondition("the entry is not a charge".into()),
                            refund::Error::GrantMissing(id) => Error::Internal(format!("grant {id} of a charge is missing")),
                        })?;
                        let mut effects = effects.into_iter();
                        let refund_effect = effects.next().ok_or_else(|| Error::Internal("refund proposed no effect".into()))?;
                        breakdown = refund_effect.breakdown.clone();
                        let attributes = original.refs.attributes.as_ref().map(attributes_of).unwrap_or_default();
                        let mut entry_refs = refs(&payer, Some(&cmd.key), None, &attributes, None);
                        entry_refs.refunds_entry_id = Some(original.id);
                        entry_id = Some(session.record(refund_effect, entry_refs));
                        for effect in effects {
                            session.record(effect, EntryRefs::default());
                        }
                        if original.period == session.state.period {
                            session.add_member_use(-split.account_credits);
                        }
                        session.roll_up(original.period.start, attributes, -split.account_credits, 0);
                    }
                }
                let pool = match &subsidised {
                    Some(s) => {
                        let view = subsidy::refunded(tx, tenant, s, split, entry_id, cmd.key.as_str(), now).await?;
                        let (pool_refunded, account_refunded) = repo::subsidy::refunded(tx, tenant, s.id).await?;
                        refunded_total_credits = pool_refunded + account_refunded;
                        Some(view)
                    }
                    None => None,
                };
                let outcome = RefundOutcome { entry_id, breakdown, refunded_total_credits, meter: session.view(now), subsidy: pool };
                session.save(tx, now).await?;
                Ok(Keyed::Decided(outcome))
            })
        })
        .await
    }

    /// Runs a keyed operation in one transaction: `decide` locks, replays or decides and saves;
    /// then the outcome is stored under the key (unless transient) and committed. When a
    /// concurrent request with the same key stored first, the outcome is replayed from a fresh
    /// transaction.
    async fn keyed<T, F>(&self, tenant: TenantId, key: &IdempotencyKey, operation: &str, print: Vec<u8>, decide: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: for<'a> Fn(&'a Tx<'a>, OffsetDateTime) -> futures::future::BoxFuture<'a, Result<Keyed<T>, Error>>,
    {
        let mut client = self.ctx.db().await?;
        let mut attempt = 0;
        loop {
            // The time is read for each attempt: a retry after the period moved on (see
            // `lock_or_replay`) is decided at a time inside the period it is booked in.
            let now = self.ctx.clock.now();
            let tx = crate::db::begin(&mut client, tenant).await?;
            let decided = match decide(&tx, now).await {
                Err(Error::Aborted) if attempt < KEYED_ATTEMPTS_MAX - 1 => {
                    attempt += 1;
                    continue; // rolled back when `tx` drops
                }
                decided => decided?,
            };
            match decided {
                Keyed::Replayed(outcome) => return Ok(outcome),
                Keyed::Transient(outcome) => {
                    tx.commit().await?;
                    return Ok(outcome);
                }
                Keyed::Decided(outcome) => {
                    if idempotent::store_and_commit(tx, tenant, key, operation, print.clone(), &outcome).await? {
                        return Ok(outcome);
                    }
                }
            }
            break;
        }
        let tx = crate::db::begin(&mut client, tenant).await?;
        let replayed = idempotent::replay(&tx, tenant, key, operation, &print).await?;
        tx.commit().await?;
        replayed.ok_or_else(|| Error::Internal("idempotency conflict without a stored outcome".into()))
    }
}

/// Finds a hold, locks its meters (in meter order) and then the hold's rows: the lock order.
async fn lock_hold(tx: &Tx<'_>, tenant: TenantId, hold_id: Uuid, now: OffsetDateTime) -> Result<(Payer, Vec<MeterSession>, Vec<HoldRow>), Error> {
    let holds = repo::holds::get(tx, tenant, hold_id, false).await?;
    let first = holds.first().ok_or(Error::NotFound { what: "hold" })?;
    let stored_id = |raw: &str| AccountId::parse(raw).map_err(|e| Error::Internal(format!("stored account: {e}")));
    let payer = in_force::resolve_stored(tx, tenant, &stored_id(&first.acting_account_id)?, &stored_id(&first.account_id)?, now).await?;
    let meters: Vec<Meter> =
        holds.iter().map(|h| Meter::parse(&h.meter).map_err(|e| Error::Internal(format!("stored meter: {e}")))).collect::<Result<_, _>>()?;
    let mut sessions = Vec::with_capacity(meters.len());
    for meter in &meters {
        sessions.push(MeterSession::lock(tx, tenant, &payer, meter, now, &[]).await?);
    }
    let holds = repo::holds::get(tx, tenant, hold_id, true).await?;
    if holds.len() != sessions.len() {
        return Err(Error::Internal("a hold's meters changed under its lock".into()));
    }
    Ok((payer, sessions, holds))
}

/// The actual amount per held meter, in the holds' order.
fn actual_amounts(holds: &[HoldRow], actual: &Actual) -> Result<Vec<i64>, Error> {
    match actual {
        Actual::Single(amount) if holds.len() == 1 => Ok(vec![*amount]),
        Actual::Single(_) => Err(Error::invalid("actual", "the hold covers several meters: give an actual amount per meter")),
        Actual::PerMeter(lines) => {
            if let Some((meter, _)) = lines.iter().find(|(m, _)| !holds.iter().any(|h| h.meter == m.as_str())) {
                return Err(Error::invalid("actual", format!("meter {meter} is not part of the hold")));
            }
            let credits = |a: &Amount| match a {
                Amount::Credits(c) => *c,
                Amount::Rated { .. } => 0, // rated before this point
            };
            Ok(holds.iter().map(|h| lines.iter().find(|(m, _)| m.as_str() == h.meter).map_or(0, |(_, a)| credits(a))).collect())
        }
    }
}

/// The outcome a settled hold stored.
fn stored<T: DeserializeOwned>(hold: &HoldRow) -> Result<T, Error> {
    let response = hold.settlement_response.clone().ok_or_else(|| Error::Internal("settled hold without a response".into()))?;
    serde_json::from_value(response).map_err(|e| Error::Internal(format!("stored outcome: {e}")))
}

fn count(rpc: &'static str, decision: &Decision) {
    match decision.denial() {
        None => crate::telemetry::count_decision(rpc, "allowed", "none"),
        Some(denial) => crate::telemetry::count_decision(rpc, "denied", denial.as_str()),
    }
}
