//! Voids holds whose TTL has passed. Expired holds already stop counting the moment they expire
//! (every read filters on `expires_at`); the sweeper only moves their status along so that live
//! indexes stay small. Runs until the server shuts down.

use std::time::Duration;

use super::Ctx;

/// Most holds voided per statement.
pub const SWEEP_BATCH_MAX: i64 = 1_000;

/// Sweeps every `interval` until `shutdown` fires.
pub async fn run(ctx: Ctx, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(err) = sweep_once(&ctx).await {
            tracing::warn!(error = %err, "hold sweep failed");
        }
    }
}

/// Voids expired holds until none is left; returns how many.
pub async fn sweep_once(ctx: &Ctx) -> Result<u64, crate::error::Error> {
    let client = ctx.db().await?;
    let mut total = 0;
    loop {
        let voided = crate::repo::holds::sweep_expired(&client, ctx.clock.now(), SWEEP_BATCH_MAX).await?;
        total += voided;
        if voided < SWEEP_BATCH_MAX as u64 {
            break;
        }
    }
    if total > 0 {
        tracing::debug!(holds.voided = total, "expired holds voided");
    }
    Ok(total)
}
