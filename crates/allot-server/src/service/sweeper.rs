//! Background housekeeping: voids holds whose TTL has passed, writes the events of trials
//! that are ending or have ended (see `trials::sweep`), returns the subsidy pool's part of
//! expired holds and settles pending pool funding into the pool shards (see `subsidy`). Holds: Expired holds already stop counting the moment they expire
//! (every read filters on `expires_at`); the sweeper only moves their status along so that live
//! indexes stay small. Runs until the server shuts down.

use std::time::Duration;

use super::Ctx;

/// Most holds voided per statement.
pub const SWEEP_BATCH_MAX: i64 = 1_000;

/// Sweeps every `interval`, the first time one interval after start, until `shutdown` fires.
/// (Not at once: a sweep at start-up, late on a loaded machine, raced the tests that settle by
/// hand with a long interval.)
pub async fn run(ctx: Ctx, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(err) = sweep_once(&ctx).await {
            tracing::warn!(error = %err, "hold sweep failed");
        }
        if let Err(err) = super::trials::sweep(&ctx, ctx.clock.now()).await {
            tracing::warn!(error = %err, "trial sweep failed");
        }
        if let Err(err) = super::subsidy::return_expired(&ctx).await {
            tracing::warn!(error = %err, "subsidy reservation sweep failed");
        }
        if let Err(err) = super::subsidy::settle_pending(&ctx).await {
            tracing::warn!(error = %err, "subsidy funding settlement failed");
        }
    }
}

/// Voids expired holds until none is left; returns how many. Before it starts, the age of the
/// oldest expired hold still held is the sweeper's lag (a gauge: about one interval when
/// healthy, growing when sweeps fail or fall behind).
#[tracing::instrument(name = "holds.sweep", level = "debug", skip_all, fields(holds.voided = tracing::field::Empty))]
pub async fn sweep_once(ctx: &Ctx) -> Result<u64, crate::error::Error> {
    // Background work: not counted in `Ctx::db_checkouts`, which tracks request paths.
    let mut client = ctx.pool.get().await?;
    let now = ctx.clock.now();
    // Spans tenants: the documented background path (see `db::AllTenants`); one transaction per batch.
    let tx = crate::db::begin_all_tenants(&mut client, crate::db::AllTenants::HoldSweep).await?;
    let lag = crate::repo::holds::oldest_expired(&tx, now).await?.map_or(Duration::ZERO, |oldest| (now - oldest).unsigned_abs());
    tx.commit().await?;
    let mut total = 0;
    loop {
        let tx = crate::db::begin_all_tenants(&mut client, crate::db::AllTenants::HoldSweep).await?;
        let voided = crate::repo::holds::sweep_expired(&tx, ctx.clock.now(), SWEEP_BATCH_MAX).await?;
        tx.commit().await?;
        total += voided;
        if voided < SWEEP_BATCH_MAX as u64 {
            break;
        }
    }
    crate::telemetry::record_sweeper_lag(lag, total);
    tracing::Span::current().record("holds.voided", total);
    if total > 0 {
        tracing::debug!(holds.voided = total, "expired holds voided");
    }
    Ok(total)
}
