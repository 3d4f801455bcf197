//! One snapshot for a batch of checks. Single-line checks of credits of one tenant queue in
//! lanes like debits (see `batch`), and a check alone in its lane is a batch of one. A lane's
//! worker reads, in one read-only repeatable-read transaction, who pays for every account, the
//! plans' terms and soft caps (through the plan book, at the configuration version of that
//! snapshot), every meter's row, grants, live holds, standings and hourly usage — each table once
//! for the whole batch — and then decides each check on its own exactly as `check` does alone. A
//! check sees every debit committed before it was queued (the snapshot is taken after the batch
//! is taken). The lane's worker decides the batch itself (one round trip, then CPU only) and
//! takes the next one once every check it decided is answered ([`Batched::BY_WORKER`]); those
//! it leaves alone are decided apart.
//!
//! Checks it leaves to be decided alone (their result is `None`): a member of an org (pooled
//! meters, member caps), a meter with a per-minute rate cap (answered from Redis), and a meter
//! under a restrict-stage daily budget; they are decided apart from the lane, which goes on to its
//! next batch. Any error decides every check of the batch alone, but for a batch of one meeting
//! an unavailable database: that error is its answer.

use std::collections::{BTreeSet, HashMap};

use allot_domain::charge::{self, Mode};

use super::plans::{self, Plans};
use super::{Batched, Batches, LaneTurn, Results};
use crate::error::Error;
use crate::ids::{Meter, TenantId};
use crate::repo;
use crate::service::credits::{count, outcomes, Amount, CheckCommand, Credits};
use crate::service::in_force::{self, InForce};
use crate::service::meter_session::MeterSession;
use crate::service::outcome::Decision;

/// A check that can be batched: one line of credits above zero, no subsidy.
#[derive(Debug, Clone)]
pub struct QueuedCheck {
    pub cmd: CheckCommand,
    pub meter: Meter,
    pub amount_credits: i64,
}

impl QueuedCheck {
    /// The check as a batch sees it, if it can be batched.
    pub fn of(cmd: CheckCommand) -> Result<QueuedCheck, CheckCommand> {
        match (cmd.lines.as_slice(), &cmd.subsidy) {
            ([(meter, Amount::Credits(amount))], None) if *amount > 0 => {
                let (meter, amount_credits) = (meter.clone(), *amount);
                Ok(QueuedCheck { cmd, meter, amount_credits })
            }
            _ => Err(cmd),
        }
    }
}

impl Batched for QueuedCheck {
    const KIND: &'static str = "check";
    const BY_WORKER: bool = true;

    fn account(&self) -> &str {
        self.cmd.account.as_str()
    }

    fn meter(&self) -> &str {
        self.meter.as_str()
    }

    fn batches(credits: &Credits) -> &std::sync::Arc<Batches<QueuedCheck>> {
        credits.check_batches.as_ref().expect("checks are queued only while check batching is on")
    }

    fn group<'a>(
        credits: &'a Credits,
        tenant: TenantId,
        batch: &'a [&'a QueuedCheck],
        _lane: LaneTurn,
    ) -> impl std::future::Future<Output = Result<Results, Error>> + Send + 'a {
        credits.check_group(tenant, batch)
    }

    fn alone(credits: &Credits, tenant: TenantId, queued: QueuedCheck) -> impl std::future::Future<Output = Result<Decision, Error>> + Send {
        credits.check_alone(tenant, queued.cmd)
    }

    fn record_batch(size: usize) {
        crate::telemetry::record_check_batch(size);
    }
}

impl Credits {
    /// Decides `checks` on one snapshot. `Err` means every check must be decided alone.
    async fn check_group(&self, tenant: TenantId, checks: &[&QueuedCheck]) -> Result<Results, Error> {
        let now = self.ctx.clock.now();
        // A pooled connection, not a lane connection (`Ctx::batch_db`): for checks those measured
        // better streamed but worse unary, p99 included (docs/benchmarks.md, finding 44).
        let client = self.ctx.db().await?;
        let tx = crate::db::begin_batch(&client, tenant, crate::db::Access::Snapshot)?;
        let accounts: Vec<&str> = checks.iter().map(|c| c.cmd.account.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        let asked: Vec<(&str, &str)> =
            checks.iter().map(|c| (c.cmd.account.as_str(), c.meter.as_str())).collect::<BTreeSet<_>>().into_iter().collect();
        // One round trip for all of it (`BEGIN` included), two statements, before who pays is
        // known: the rows, holds and grants of every meter asked (an org member's are read and
        // left unused) and what governs every account; the standings, under the fair-use settings
        // the plan book last held, follow in a second round trip for the accounts that have
        // fair-use state only (read again if those settings turn out not to be the current
        // version's).
        let book = &self.ctx.plan_book;
        let hint = plans::standings_hint(book, tenant, now);
        let (mut account_reads, meter_reads) = futures::try_join!(
            repo::account_reads::read(&tx, tenant, &accounts, hint.map(|(_, since)| since)),
            repo::meter_reads::read(&tx, tenant, &asked, now),
        )?;
        let early_standings = plans::early_standings(hint, &mut account_reads);
        let resolved = in_force::resolve_many(&tx, tenant, &accounts, account_reads, now, book).await?;
        let in_force::ResolvedMany { payers, config_version, settings } = resolved;
        let repo::meter_reads::MeterReads { mut rows, mut grants, held } = meter_reads;
        let keys: Vec<(&str, &str)> = asked.iter().copied().filter(|(account, _)| payers.contains_key(*account)).collect();
        let (plan_meters, plan_ids) = plans::wanted(&payers, &keys);
        let (terms, soft_caps) = book.terms(&tx, tenant, config_version, &plan_meters, &plan_ids).await?;
        let plans = Plans { payers: &payers, terms, soft_caps };
        let capped: Vec<(&str, &str)> = keys.iter().copied().filter(|(a, m)| !plans.caps_of(a, m).is_empty()).collect();
        let (standings, hourly) = futures::try_join!(
            plans::standings_at(early_standings, config_version, &settings, &tx, tenant, now),
            plans.hourly(&tx, tenant, &capped, now),
        )?;
        tx.end_read_only();
        drop(client);
        let standing_of = plans::standings(&settings, &standings, payers.keys().map(String::as_str));
        // Meters decided here: no rate cap, no daily budget.
        let decided: Vec<(&str, &str)> = keys
            .iter()
            .copied()
            .filter(|(a, m)| plans.terms_of(a, m).rate.is_none() && Meter::parse(m).is_ok_and(|meter| standing_of[a].daily_budget(&meter).is_none()))
            .collect();

        let mut sessions: HashMap<plans::Key, MeterSession> = HashMap::new();
        for (account, meter) in &decided {
            let key = ((*account).to_owned(), (*meter).to_owned());
            let payer = &payers[*account];
            let terms = plans.terms_of(account, meter);
            let in_force = InForce { payer: payer.clone(), policy: terms.policy, rate: None, member_cap_credits: None };
            let meter_id = Meter::parse(meter).map_err(|e| Error::Internal(format!("meter: {e}")))?;
            let session = MeterSession::from_read_rows(
                tenant,
                &payer.payer,
                &meter_id,
                now,
                in_force,
                rows.remove(&key),
                grants.remove(&key).unwrap_or_default(),
                held.get(&key).copied().unwrap_or(0),
            );
            sessions.insert(key, session);
        }

        let mut results = Vec::with_capacity(checks.len());
        for check in checks {
            let (account, meter) = (check.cmd.account.as_str(), check.meter.as_str());
            let Some(session) = sessions.get(&(account.to_owned(), meter.to_owned())) else {
                results.push(None);
                continue;
            };
            let payer = &payers[account];
            let denial =
                charge::check(&session.state, &session.in_force.policy, check.amount_credits, Mode::Gate, now).err().map(|d| session.denial(d));
            let meters = outcomes(std::slice::from_ref(session), &[denial], &[0], &[None], now);
            let mut triggered = Vec::new();
            let key = (account.to_owned(), meter.to_owned());
            for cap in plans.caps_of(account, meter) {
                if cap.is_triggered(plans::used_in_window(&hourly, &key, cap.window_ms, now)) {
                    triggered.push(format!("{meter}/{}", cap.window_ms));
                }
            }
            let decision = Decision { meters, fair_use: Some(standing_of[account].view(triggered)), trial: payer.trial(now), subsidy: None };
            count("check", &decision);
            results.push(Some(Ok(decision)));
        }
        Ok(results)
    }
}
