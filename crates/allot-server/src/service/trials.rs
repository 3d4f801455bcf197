//! Trials: an account starts one trial of a plan (`trialing` for the plan's trial days, with
//! promotional credit that expires when the trial ends). One trial per account and per
//! fingerprint; never for an account with any sign of payment. Conversion (the subscription
//! becoming active, or purchased credit) ends the trial state and keeps or expires the trial
//! credit as the plan says. A sweep writes `trial_ending` (the plan's notice before the end) and
//! `trial_ended` events.

use allot_domain::ledger::GrantKind;
use allot_domain::plan::SubscriptionStatus;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::admin::add_grant;
use super::in_force;
use super::meter_session::MeterSession;
use super::Ctx;
use crate::auth::Principal;
use crate::error::Error;
use crate::ids::{AccountId, PlanId, TenantId};
use crate::repo::audit::{self, Subject};
use crate::repo::subscriptions::SubscriptionRecord;
use crate::repo::trials::{NewTrial, Taken};
use crate::repo::{self, Tx};

/// Most trials announced or ended per sweep statement.
pub const SWEEP_BATCH_MAX: i64 = 500;

/// Why a trial was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AccountUsed,
    FingerprintUsed,
    PaidAccount,
}

/// The answer to StartTrial.
#[derive(Debug, Clone)]
pub enum TrialOutcome {
    Started { subscription: SubscriptionRecord, ends_at: OffsetDateTime, grant_ids: Vec<Uuid> },
    Refused(Refusal),
}

#[derive(Clone)]
pub struct Trials {
    ctx: Ctx,
}

/// The stored hash of a fingerprint, salted by tenant.
fn fingerprint_sha256(tenant: TenantId, fingerprint: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(tenant.0.as_bytes());
    hasher.update(fingerprint.as_bytes());
    hasher.finalize().to_vec()
}

impl Trials {
    pub fn new(ctx: Ctx) -> Trials {
        Trials { ctx }
    }

    pub async fn start(&self, actor: &Principal, account: &AccountId, plan_id: &PlanId, fingerprint: &str) -> Result<TrialOutcome, Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let plan = repo::plans::get(&tx, tenant, plan_id.as_str()).await?.ok_or(Error::NotFound { what: "plan" })?;
        if plan.trial_days == 0 {
            return Err(Error::FailedPrecondition(format!("plan {plan_id} has no trial")));
        }
        if repo::trials::paid_signs(&tx, tenant, account).await? {
            return Ok(TrialOutcome::Refused(Refusal::PaidAccount));
        }
        let ends_at = now + time::Duration::days(i64::from(plan.trial_days));
        let hash = fingerprint_sha256(tenant, fingerprint);
        let trial = NewTrial { account, fingerprint_sha256: &hash, plan_id: plan_id.as_str(), started_at: now, ends_at };
        match repo::trials::insert(&tx, tenant, &trial).await? {
            Some(Taken::Account) => return Ok(TrialOutcome::Refused(Refusal::AccountUsed)),
            Some(Taken::Fingerprint) => return Ok(TrialOutcome::Refused(Refusal::FingerprintUsed)),
            None => {}
        }
        let subscription = SubscriptionRecord {
            account_id: account.clone(),
            plan_id: plan_id.clone(),
            status: SubscriptionStatus::Trialing,
            current_period_start: now,
            current_period_end: ends_at,
            cancel_at_period_end: false,
            updated_at: now,
        };
        repo::subscriptions::upsert(&tx, tenant, &subscription).await?;
        let mut payer = in_force::resolve(&tx, tenant, account, now).await?;
        payer.payer = account.clone();
        let mut grant_ids = Vec::new();
        for (meter, terms) in plan.meters.iter().filter(|(_, t)| t.trial_grant_credits > 0) {
            let mut session = MeterSession::lock(&tx, tenant, &payer, meter, now, &[]).await?;
            let outcome = add_grant(&mut session, GrantKind::Promotional, terms.trial_grant_credits, 0, Some(ends_at), None, now);
            grant_ids.push(outcome.grant_id);
            session.save(&tx, now).await?;
        }
        repo::trials::set_grants(&tx, tenant, account, &grant_ids).await?;
        let payload = serde_json::json!({ "plan_id": plan_id.as_str(), "ends_at": ends_at.unix_timestamp() });
        repo::outbox::append(&tx, tenant, "trial_started", account, payload, now).await?;
        let after = audit::snapshot(&tx, actor, Subject::Trial(account.as_str())).await?;
        audit::append(&tx, actor, "StartTrial", Subject::Trial(account.as_str()), None, after, now).await?;
        tx.commit().await?;
        Ok(TrialOutcome::Started { subscription, ends_at, grant_ids })
    }
}

/// Ends an active trial by conversion (`by`: subscription or purchase), expiring its credit now
/// unless the plan keeps it, with a `trial_converted` event. Does nothing without a trial.
pub async fn end_by_conversion(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, by: &str, now: OffsetDateTime) -> Result<(), Error> {
    let Some((plan_id, grant_ids)) = repo::trials::convert(tx, tenant, account).await? else {
        return Ok(());
    };
    let keeps = repo::plans::get(tx, tenant, &plan_id).await?.is_some_and(|p| p.trial_keeps_credits);
    if !keeps {
        repo::grants::expire_now(tx, tenant, &grant_ids, now).await?;
    }
    let payload = serde_json::json!({ "plan_id": plan_id, "by": by, "credits_kept": keeps });
    repo::outbox::append(tx, tenant, "trial_converted", account, payload, now).await?;
    Ok(())
}

/// Writes `trial_ending` and `trial_ended` events for trials that are due; returns how many.
pub async fn sweep(ctx: &Ctx, now: OffsetDateTime) -> Result<usize, Error> {
    let mut client = ctx.pool.get().await?;
    // Spans tenants: the documented background path (see `db::AllTenants`).
    let tx = crate::db::begin_all_tenants(&mut client, crate::db::AllTenants::TrialSweep).await?;
    let mut due: Vec<(&str, repo::trials::Due)> = Vec::new();
    due.extend(repo::trials::announce_due(&tx, now, SWEEP_BATCH_MAX).await?.into_iter().map(|d| ("trial_ending", d)));
    due.extend(repo::trials::end_due(&tx, now, SWEEP_BATCH_MAX).await?.into_iter().map(|d| ("trial_ended", d)));
    // Tenants' outbox counters are locked in one order, so concurrent sweepers cannot deadlock.
    due.sort_by_key(|(_, d)| d.0 .0);
    let mut written = 0;
    for (kind, (tenant, account, plan_id, ends_at)) in due {
        let account = AccountId::parse(&account).map_err(|e| Error::Internal(format!("stored account: {e}")))?;
        let payload = serde_json::json!({ "plan_id": plan_id, "ends_at": ends_at.unix_timestamp() });
        repo::outbox::append(&tx, tenant, kind, &account, payload, now).await?;
        written += 1;
    }
    tx.commit().await?;
    Ok(written)
}
