//! The subsidy pool inside the charge path. A request that names a pool gets a split of its
//! cost (free / partial / gate, see `allot_domain::subsidy`) decided under the identity's day row
//! and the pool shard's row, in the request's own transaction, so the pool debit, the account
//! debit and the decision commit or roll back together.
//!
//! Lock order (after the account's meters and hold rows): the hold's pool parts → the identity's
//! day row → the pool shard. A shard row is held from the moment credit is taken until commit;
//! shards spread concurrent free-tier requests over `shard_count` rows.
//!
//! Paid charges fund pools without touching the shards: their share is written as pending funding
//! in the charge's transaction and moved into the shards in batches by [`settle_pending`].

use allot_domain::subsidy::{self, Split};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use super::credits::Usage;
use super::in_force::Payer;
use super::Ctx;
use crate::error::Error;
use crate::ids::{AccountId, Identity, Meter, PoolId, TenantId};
use crate::repo::subsidy::{self as repo, HoldPart, LogRow};
use crate::repo::Tx;

/// Most pending fundings moved into the shards in one transaction.
pub const SETTLE_BATCH_MAX: i64 = 10_000;
/// Most expired pool reservations returned per sweep.
pub const RETURN_BATCH_MAX: i64 = 1_000;

/// A request's ask for subsidy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubsidyAsk {
    pub pool: PoolId,
    /// Whose daily budget counts; the acting account when not given.
    pub identity: Option<Identity>,
}

impl SubsidyAsk {
    /// A stable text for request fingerprints.
    pub fn print(&self) -> String {
        format!("{}\u{1f}{}", self.pool, self.identity.as_ref().map_or("", Identity::as_str))
    }
}

/// The pool's decision on one request, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsidyView {
    pub pool_id: String,
    pub identity: String,
    pub tier: String,
    /// `free`, `partial` or `gate`.
    pub serve: String,
    pub cost_credits: i64,
    pub absorbed_credits: i64,
    pub account_credits: i64,
    pub daily_budget_credits: i64,
    /// What the identity may still receive today, after this request.
    pub budget_left_credits: i64,
    /// The balance of the shard that paid, after this request.
    pub pool_balance_credits: i64,
}

/// The pool's part of one line of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineSubsidy {
    /// The grant-log row of this subsidy; refunds may name it (or the line's ledger entry).
    pub subsidy_id: Option<Uuid>,
    pub absorbed_credits: i64,
    pub account_credits: i64,
}

/// Where a request's subsidy comes from and how its cost splits, per line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub view: SubsidyView,
    pub splits: Vec<Split>,
    pool: PoolId,
    identity: Identity,
    shard: u32,
    day: Date,
    /// Taken from the shard in this transaction (zero in a dry run).
    taken_credits: i64,
    reserve: bool,
}

impl Plan {
    /// What the account pays per line.
    pub fn account_amounts(&self) -> Vec<i64> {
        self.splits.iter().map(|s| s.account_credits).collect()
    }
}

/// How a plan treats the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Reads only: the decision the real request would get if nothing changes meanwhile.
    DryRun,
    /// Takes the pool's part from the shard's balance.
    Absorb,
    /// Moves the pool's part from the shard's balance into its reservations.
    Reserve,
}

/// Splits `usage` between the pool and the account. Lines on meters the pool does not cover, and
/// lines already refused (`refused[i]`), cost the pool nothing.
#[allow(clippy::too_many_arguments)] // one transaction's context, passed through
pub async fn plan(
    tx: &Tx<'_>,
    tenant: TenantId,
    ask: &SubsidyAsk,
    acting: &AccountId,
    usage: &Usage,
    refused: &[bool],
    now: OffsetDateTime,
    take: Take,
) -> Result<Plan, Error> {
    let pool = repo::pool(tx, tenant, &ask.pool).await?.ok_or(Error::NotFound { what: "subsidy pool" })?;
    let identity = match &ask.identity {
        Some(identity) => identity.clone(),
        None => Identity::parse(acting.as_str()).map_err(|e| Error::Internal(format!("account id as identity: {e}")))?,
    };
    let costs: Vec<i64> = usage
        .iter()
        .enumerate()
        .map(|(i, (meter, amount))| if !refused[i] && pool.meters.iter().any(|m| m == meter.as_str()) { *amount } else { 0 })
        .collect();
    let cost_credits: i64 = costs.iter().sum();
    let (tier, daily_budget_credits) = repo::tier_of(tx, tenant, acting).await?;
    let day = crate::repo::fair_use::day_of(now);
    let shard = subsidy::shard_of(identity.as_str(), pool.shard_count);
    let (budget_left, balance, taken_credits) = if daily_budget_credits == 0 || cost_credits == 0 {
        // Nothing to give: no lock on the pool at all (the common case for new identities).
        let balance = repo::shard_balance(tx, tenant, &ask.pool, shard).await?;
        let used = repo::read_daily(tx, tenant, &ask.pool, &identity, day).await?;
        (subsidy::budget_left(daily_budget_credits, used.absorbed_credits, used.reserved_credits), balance, 0)
    } else if take == Take::DryRun {
        let used = repo::read_daily(tx, tenant, &ask.pool, &identity, day).await?;
        let balance = repo::shard_balance(tx, tenant, &ask.pool, shard).await?;
        (subsidy::budget_left(daily_budget_credits, used.absorbed_credits, used.reserved_credits), balance, 0)
    } else {
        let used = repo::lock_daily(tx, tenant, &ask.pool, &identity, day, &tier).await?;
        let left = subsidy::budget_left(daily_budget_credits, used.absorbed_credits, used.reserved_credits);
        let want = cost_credits.min(left);
        if want == 0 {
            // The day's budget is spent: the shard is not locked.
            (left, repo::shard_balance(tx, tenant, &ask.pool, shard).await?, 0)
        } else {
            let (taken, after) = repo::take(tx, tenant, &ask.pool, shard, want, take == Take::Reserve).await?;
            (left, after + taken, taken)
        }
    };
    let split = subsidy::decide(cost_credits, budget_left, balance);
    if take != Take::DryRun {
        assert_eq!(split.absorbed_credits, taken_credits, "the pool absorbs exactly what was taken from it");
    }
    let eligible = subsidy::spread(&costs, split.absorbed_credits);
    let splits = usage
        .iter()
        .zip(eligible)
        .map(|((_, amount), line)| Split { absorbed_credits: line.absorbed_credits, account_credits: amount - line.absorbed_credits })
        .collect();
    let view = SubsidyView {
        pool_id: ask.pool.as_str().to_owned(),
        identity: identity.as_str().to_owned(),
        tier,
        serve: split.serve().as_str().to_owned(),
        cost_credits,
        absorbed_credits: split.absorbed_credits,
        account_credits: split.account_credits,
        daily_budget_credits,
        budget_left_credits: budget_left - split.absorbed_credits,
        pool_balance_credits: balance - split.absorbed_credits,
    };
    Ok(Plan { view, splits, pool: ask.pool.clone(), identity, shard, day, taken_credits, reserve: take == Take::Reserve })
}

/// Gives back what `plan` took when the request was denied after all; the view keeps the
/// decision the pool would have made.
pub async fn undo(tx: &Tx<'_>, tenant: TenantId, plan: &Plan) -> Result<(), Error> {
    if plan.taken_credits > 0 {
        let reserved = if plan.reserve { -plan.taken_credits } else { 0 };
        repo::move_shard(tx, tenant, plan.pool.as_str(), plan.shard, plan.taken_credits, reserved).await?;
    }
    Ok(())
}

/// Books an allowed debit's subsidy: the identity's day, and a grant-log row per subsidised line
/// (with the line's ledger entry when the account paid part). Returns each line's subsidy.
#[allow(clippy::too_many_arguments)] // one transaction's context, passed through
pub async fn absorbed(
    tx: &Tx<'_>,
    tenant: TenantId,
    plan: &Plan,
    acting: &AccountId,
    usage: &Usage,
    entries: &[Option<Uuid>],
    key: &str,
    now: OffsetDateTime,
) -> Result<Vec<Option<LineSubsidy>>, Error> {
    if plan.taken_credits > 0 {
        repo::add_daily(tx, tenant, plan.pool.as_str(), plan.identity.as_str(), plan.day, plan.taken_credits, 0).await?;
    }
    let mut lines = Vec::with_capacity(plan.splits.len());
    for (i, split) in plan.splits.iter().enumerate() {
        if split.absorbed_credits == 0 {
            lines.push(None);
            continue;
        }
        let id = Uuid::new_v4();
        let row = LogRow {
            id,
            kind: "absorb",
            meter: Some(usage[i].0.as_str().to_owned()),
            cost_credits: split.cost_credits(),
            absorbed_credits: split.absorbed_credits,
            account_credits: split.account_credits,
            pool_delta_credits: -split.absorbed_credits,
            entry_id: entries[i],
            idempotency_key: Some(key.to_owned()),
            ..who(plan, acting)
        };
        repo::log(tx, tenant, &row, now).await?;
        lines.push(Some(LineSubsidy { subsidy_id: Some(id), absorbed_credits: split.absorbed_credits, account_credits: split.account_credits }));
    }
    Ok(lines)
}

fn who(plan: &Plan, acting: &AccountId) -> LogRow {
    LogRow {
        pool_id: plan.pool.as_str().to_owned(),
        shard: Some(plan.shard),
        account_id: Some(acting.as_str().to_owned()),
        identity: Some(plan.identity.as_str().to_owned()),
        tier: Some(plan.view.tier.clone()),
        pool_balance_after_credits: Some(plan.view.pool_balance_credits),
        ..LogRow::default()
    }
}

/// Books an allowed reservation's subsidy: the identity's day counts it as reserved, each
/// subsidised meter of the hold gets its pool part, and the log a `reserve` row.
#[allow(clippy::too_many_arguments)]
pub async fn reserved(
    tx: &Tx<'_>,
    tenant: TenantId,
    plan: &Plan,
    acting: &AccountId,
    usage: &Usage,
    hold_id: Uuid,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<Option<LineSubsidy>>, Error> {
    if plan.taken_credits > 0 {
        repo::add_daily(tx, tenant, plan.pool.as_str(), plan.identity.as_str(), plan.day, 0, plan.taken_credits).await?;
    }
    let mut lines = Vec::with_capacity(plan.splits.len());
    for (i, split) in plan.splits.iter().enumerate() {
        if split.absorbed_credits == 0 {
            lines.push(None);
            continue;
        }
        let part = HoldPart {
            hold_id,
            meter: usage[i].0.as_str().to_owned(),
            pool_id: plan.pool.as_str().to_owned(),
            shard: plan.shard,
            identity: plan.identity.as_str().to_owned(),
            day: plan.day,
            account_id: acting.as_str().to_owned(),
            tier: plan.view.tier.clone(),
            reserved_credits: split.absorbed_credits,
            cost_credits: split.cost_credits(),
            status: "held".into(),
            expires_at,
        };
        repo::insert_hold_part(tx, tenant, &part).await?;
        let row = LogRow {
            id: Uuid::new_v4(),
            kind: "reserve",
            meter: Some(part.meter.clone()),
            cost_credits: split.cost_credits(),
            reserved_credits: split.absorbed_credits,
            pool_delta_credits: -split.absorbed_credits,
            hold_id: Some(hold_id),
            ..who(plan, acting)
        };
        repo::log(tx, tenant, &row, now).await?;
        lines.push(Some(LineSubsidy { subsidy_id: None, absorbed_credits: split.absorbed_credits, account_credits: split.account_credits }));
    }
    Ok(lines)
}

/// Settles a hold's pool part for one meter whose actual cost is `actual_credits`: the pool
/// absorbs up to what it reserved, the rest of the reservation returns to the shard and the day.
pub async fn settle_part(
    tx: &Tx<'_>,
    tenant: TenantId,
    part: &HoldPart,
    actual_credits: i64,
    entry_id: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<LineSubsidy, Error> {
    let split = subsidy::settle(actual_credits, part.reserved_credits);
    let back = part.reserved_credits - split.absorbed_credits;
    repo::add_daily(tx, tenant, &part.pool_id, &part.identity, part.day, split.absorbed_credits, -part.reserved_credits).await?;
    let balance_after = repo::move_shard(tx, tenant, &part.pool_id, part.shard, back, -part.reserved_credits).await?;
    repo::set_hold_status(tx, tenant, part.hold_id, &part.meter, "committed").await?;
    let id = Uuid::new_v4();
    let row = LogRow {
        id,
        kind: "settle",
        cost_credits: actual_credits,
        absorbed_credits: split.absorbed_credits,
        account_credits: split.account_credits,
        pool_delta_credits: back,
        pool_balance_after_credits: Some(balance_after),
        entry_id,
        ..of_part(part)
    };
    repo::log(tx, tenant, &row, now).await?;
    Ok(LineSubsidy { subsidy_id: Some(id), absorbed_credits: split.absorbed_credits, account_credits: split.account_credits })
}

/// The grant-log fields a hold's pool part names: who, where, which hold and what it reserved.
fn of_part(part: &HoldPart) -> LogRow {
    LogRow {
        pool_id: part.pool_id.clone(),
        shard: Some(part.shard),
        account_id: Some(part.account_id.clone()),
        identity: Some(part.identity.clone()),
        tier: Some(part.tier.clone()),
        meter: Some(part.meter.clone()),
        reserved_credits: part.reserved_credits,
        hold_id: Some(part.hold_id),
        ..LogRow::default()
    }
}

/// Returns a hold's pool parts whole (release or expiry).
pub async fn return_parts(tx: &Tx<'_>, tenant: TenantId, parts: &[HoldPart], status: &str, now: OffsetDateTime) -> Result<(), Error> {
    for part in parts {
        repo::add_daily(tx, tenant, &part.pool_id, &part.identity, part.day, 0, -part.reserved_credits).await?;
        let balance_after = repo::move_shard(tx, tenant, &part.pool_id, part.shard, part.reserved_credits, -part.reserved_credits).await?;
        repo::set_hold_status(tx, tenant, part.hold_id, &part.meter, status).await?;
        let row = LogRow {
            id: Uuid::new_v4(),
            kind: "return",
            pool_delta_credits: part.reserved_credits,
            pool_balance_after_credits: Some(balance_after),
            ..of_part(part)
        };
        repo::log(tx, tenant, &row, now).await?;
    }
    Ok(())
}

/// The pool's side of a refund of a subsidised charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    pub pool_id: String,
    pub subsidy_id: Uuid,
    pub pool_refunded_credits: i64,
    pub account_refunded_credits: i64,
}

/// Splits a refund of a subsidy (read under the account's meter lock) into the
/// pool's part and the account's part.
pub async fn refund_split(tx: &Tx<'_>, tenant: TenantId, original: &LogRow, amount_credits: i64) -> Result<Split, Error> {
    let (pool_refunded, account_refunded) = repo::refunded(tx, tenant, original.id).await?;
    let paid = subsidy::Paid {
        absorbed_credits: original.absorbed_credits,
        account_credits: original.account_credits,
        refunded_credits: pool_refunded + account_refunded,
        pool_refunded_credits: pool_refunded,
    };
    subsidy::refund_split(paid, amount_credits)
        .map_err(|subsidy::RefundError::ExceedsRefundable { refundable_credits }| Error::RefundExceedsCharge { refundable_credits })
}

/// Books a refund's pool part: back to the shard the subsidy came from, and a `refund` row.
/// Returns the total refunded so far (both sides).
pub async fn refunded(
    tx: &Tx<'_>,
    tenant: TenantId,
    original: &LogRow,
    split: Split,
    entry_id: Option<Uuid>,
    key: &str,
    now: OffsetDateTime,
) -> Result<RefundView, Error> {
    let shard = original.shard.ok_or_else(|| Error::Internal("a subsidy without a shard".into()))?;
    let balance_after = repo::move_shard(tx, tenant, &original.pool_id, shard, split.absorbed_credits, 0).await?;
    let row = LogRow {
        id: Uuid::new_v4(),
        pool_id: original.pool_id.clone(),
        shard: Some(shard),
        kind: "refund",
        account_id: original.account_id.clone(),
        identity: original.identity.clone(),
        tier: original.tier.clone(),
        meter: original.meter.clone(),
        absorbed_credits: split.absorbed_credits,
        account_credits: split.account_credits,
        pool_delta_credits: split.absorbed_credits,
        pool_balance_after_credits: Some(balance_after),
        entry_id,
        refunds_id: Some(original.id),
        idempotency_key: Some(key.to_owned()),
        ..LogRow::default()
    };
    repo::log(tx, tenant, &row, now).await?;
    Ok(RefundView {
        pool_id: original.pool_id.clone(),
        subsidy_id: original.id,
        pool_refunded_credits: split.absorbed_credits,
        account_refunded_credits: split.account_credits,
    })
}

/// Whether a payer's charges are paid usage that funds pools: a paying subscription (active or
/// past due) that entitles it now. Trials and the free plan fund nothing.
pub fn pays(payer: &Payer) -> bool {
    use allot_domain::plan::SubscriptionStatus;
    payer.entitled && payer.subscription.as_ref().is_some_and(|s| matches!(s.status, SubscriptionStatus::Active | SubscriptionStatus::PastDue))
}

/// Funds the pools that take a share of paid charges on `meter`: pending funding, settled later.
pub async fn fund(tx: &Tx<'_>, tenant: TenantId, meter: &Meter, paid_credits: i64, entry_id: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    if paid_credits <= 0 {
        return Ok(());
    }
    for (pool, share_bps) in repo::funded_by(tx, tenant, meter).await? {
        let amount = subsidy::funding(paid_credits, share_bps);
        if amount > 0 {
            repo::add_pending(tx, tenant, &pool, amount, entry_id, now).await?;
        }
    }
    Ok(())
}

/// Spreads `amount_credits` over a pool's shards (ascending, the lock order between shards) and
/// logs it. Returns the pool's balance after.
#[allow(clippy::too_many_arguments)] // one transaction's context, passed through
pub async fn credit_pool(
    tx: &Tx<'_>,
    tenant: TenantId,
    pool: &str,
    shard_count: u32,
    amount_credits: i64,
    kind: &'static str,
    key: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<i64>, Error> {
    // One credit of a pool at a time (its row, then its shards in ascending order).
    repo::lock_pool(tx, tenant, pool).await?;
    if let Some(key) = key {
        if let Some(earlier) = repo::top_up_amount(tx, tenant, pool, key).await? {
            return if earlier == amount_credits { Ok(None) } else { Err(Error::IdempotencyKeyReused) };
        }
    }
    let mut balance = 0;
    for (shard, part) in subsidy::top_up_parts(amount_credits, shard_count).into_iter().enumerate() {
        let shard = u32::try_from(shard).map_err(|_| Error::Internal("shard out of range".into()))?;
        balance += repo::move_shard(tx, tenant, pool, shard, part, 0).await?;
    }
    let row = LogRow {
        id: Uuid::new_v4(),
        pool_id: pool.to_owned(),
        kind,
        pool_delta_credits: amount_credits,
        pool_balance_after_credits: Some(balance),
        idempotency_key: key.map(str::to_owned),
        ..LogRow::default()
    };
    if !repo::log(tx, tenant, &row, now).await? {
        return Err(Error::Internal("a top-up key was used under the pool's lock".into()));
    }
    Ok(Some(balance))
}

/// Moves pending funding into the shards, pool by pool; returns the credits moved.
pub async fn settle_pending(ctx: &Ctx) -> Result<i64, Error> {
    // Spans tenants: the documented background path (see `db::AllTenants`).
    let mut client = ctx.pool.get().await?;
    let tx = crate::db::begin_all_tenants(&mut client, crate::db::AllTenants::SubsidySweep).await?;
    let pools = repo::pools_with_pending(&tx, 1_000).await?;
    tx.commit().await?;
    drop(client);
    let mut moved = 0;
    for (tenant, pool_id) in pools {
        // One pool's failure does not hold up the others.
        match settle_pool(ctx, tenant, &pool_id).await {
            Ok(amount) => moved += amount,
            Err(err) => tracing::warn!(error = %err, pool = %pool_id, "settling a pool's funding failed"),
        }
    }
    Ok(moved)
}

async fn settle_pool(ctx: &Ctx, tenant: TenantId, pool_id: &str) -> Result<i64, Error> {
    let mut client = ctx.pool.get().await?;
    let tx = crate::db::begin(&mut client, tenant).await?;
    let pool = PoolId::parse(pool_id).map_err(|e| Error::Internal(format!("stored pool id: {e}")))?;
    let settings = repo::pool(&tx, tenant, &pool).await?.ok_or_else(|| Error::Internal("funding of a missing pool".into()))?;
    let (amount, count) = repo::take_pending(&tx, tenant, pool_id, SETTLE_BATCH_MAX).await?;
    if count > 0 && amount > 0 {
        credit_pool(&tx, tenant, pool_id, settings.shard_count, amount, "fund", None, ctx.clock.now()).await?;
    }
    tx.commit().await?;
    Ok(amount)
}

/// Returns the pool parts of expired holds; returns how many holds.
pub async fn return_expired(ctx: &Ctx) -> Result<u64, Error> {
    let now = ctx.clock.now();
    let mut client = ctx.pool.get().await?;
    let tx = crate::db::begin_all_tenants(&mut client, crate::db::AllTenants::SubsidySweep).await?;
    let holds = repo::expired_holds(&tx, now, RETURN_BATCH_MAX).await?;
    tx.commit().await?;
    drop(client);
    let mut returned = 0;
    for (tenant, hold_id) in holds {
        match return_hold(ctx, tenant, hold_id, now).await {
            Ok(done) => returned += u64::from(done),
            Err(err) => tracing::warn!(error = %err, hold_id = %hold_id, "returning an expired hold's pool part failed"),
        }
    }
    Ok(returned)
}

/// Returns one expired hold's pool parts. The hold's own rows are locked first (the lock order of
/// commit and release), so a commit that is settling the hold finishes before its parts are looked at.
async fn return_hold(ctx: &Ctx, tenant: TenantId, hold_id: Uuid, now: OffsetDateTime) -> Result<bool, Error> {
    let mut client = ctx.pool.get().await?;
    let tx = crate::db::begin(&mut client, tenant).await?;
    crate::repo::holds::get(&tx, tenant, hold_id, true).await?;
    let parts: Vec<HoldPart> = repo::held_parts(&tx, tenant, hold_id).await?.into_iter().filter(|p| p.expires_at <= now).collect();
    return_parts(&tx, tenant, &parts, "expired", now).await?;
    tx.commit().await?;
    Ok(!parts.is_empty())
}
