//! `Check`: would the usage be allowed now, as a gate? A dry run of the debit's admission on a
//! consistent snapshot: it locks nothing, writes nothing and counts no rate cap. Single-line
//! checks are decided in batches, of one or of many sharing a snapshot (see `batch::read`); the
//! others, and every check while `Config::check_batching` is off, are decided here alone.

use super::*;

impl Credits {
    /// Would the usage be allowed now, as a gate? Reads a consistent snapshot, writes nothing, and
    /// only looks at the rate caps.
    pub async fn check(&self, tenant: TenantId, cmd: CheckCommand) -> Result<Decision, Error> {
        let cmd = match batch::QueuedCheck::of(cmd) {
            Ok(queued) if self.check_batches.is_some() => return self.queue(tenant, queued).await,
            Ok(queued) => queued.cmd,
            Err(cmd) => cmd,
        };
        // A check decided alone is boxed: its future (a transaction's reads, kilobytes) would
        // otherwise make every check's future that large, copied whole each time it moves
        // (docs/benchmarks.md, finding 48); a queued check's is small.
        Box::pin(self.check_alone(tenant, cmd)).await
    }

    /// A check in its own snapshot.
    pub(super) async fn check_alone(&self, tenant: TenantId, cmd: CheckCommand) -> Result<Decision, Error> {
        let now = self.ctx.clock.now();
        let mut priced = self.price(tenant, &cmd.lines, now).await?;
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::Snapshot).await?;
        let payer = in_force::resolve(&tx, tenant, &cmd.account, now).await?;
        let plan = Self::subsidise(&tx, tenant, cmd.subsidy.as_ref(), &payer.acting, &mut priced, now, Take::DryRun).await?;
        let usage = &priced.usage;
        let charged = priced.charged_usage();
        // The meters, the standing and the soft caps are read in one pipelined burst (one
        // snapshot: the order does not matter).
        let snapshots = futures::future::try_join_all(usage.iter().map(|(meter, _)| MeterSession::snapshot(&tx, tenant, &payer, meter, now)));
        let caps = futures::future::try_join_all(
            usage.iter().map(|(meter, _)| fair_use::triggered_caps(&tx, tenant, &payer.acting, payer.plan_id.as_deref(), Some(meter), now)),
        );
        let (mut sessions, standing, caps) = futures::try_join!(snapshots, Standing::load(&tx, tenant, &payer.acting, now), caps)?;
        let caps: Vec<String> = caps.into_iter().flatten().collect();
        let mut denials = credit_denials(&sessions, &charged, Mode::Gate, now);
        overlay(&mut denials, &priced.denials);
        budget_denials(&tx, tenant, &standing, &payer.acting, &charged, &mut denials, now).await?;
        tx.commit().await?;
        let mut retry = vec![0; sessions.len()];
        if let Some((i, wait_ms)) = self.decide_rate(tenant, &mut sessions, usage, standing.rate_percent(), now, false).await {
            if denials.iter().all(Option::is_none) {
                denials[i] = Some(Denial::RateLimited);
                retry[i] = wait_ms;
            }
        }
        let mut meters = outcomes(&sessions, &denials, &retry, &priced.ratings, now);
        if let Some(plan) = &plan {
            for (meter, split) in meters.iter_mut().zip(&plan.splits) {
                meter.subsidy = (split.absorbed_credits > 0).then_some(subsidy::LineSubsidy {
                    subsidy_id: None,
                    absorbed_credits: split.absorbed_credits,
                    account_credits: split.account_credits,
                });
            }
        }
        let decision = Decision { meters, fair_use: Some(standing.view(caps)), trial: payer.trial(now), subsidy: plan.map(|p| p.view) };
        count("check", &decision);
        Ok(decision)
    }
}
