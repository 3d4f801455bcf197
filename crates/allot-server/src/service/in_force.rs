//! Who acts, who pays, and under which plan and billing period.
//!
//! An account that belongs to an org is governed by the org's subscription (or the tenant's free
//! plan when the org has no entitled one). When that plan is ORG-scoped, the org's meters pay
//! for every member (pooled); when it is USER-scoped, each member counts its own meters under the
//! org's plan. An account without an org is governed by its own subscription.

use allot_domain::period::{period_containing, subscription_period, Period, CALENDAR_ANCHOR};
use allot_domain::plan::{MeterPolicy, Scope};
use time::OffsetDateTime;

use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use std::collections::HashMap;

use super::plan_book::PlanBook;
use crate::repo::account_reads::AccountReads;
use crate::repo::fair_use::Settings;
use crate::repo::plans::{MeterTerms, PlanHeader, RateCap};
use crate::repo::subscriptions::SubscriptionRecord;
use crate::repo::{self, Tx};

/// The resolution for one request, shared by all its meters.
#[derive(Debug, Clone)]
pub struct Payer {
    /// The account named in the request.
    pub acting: AccountId,
    /// The account whose meters are charged: `acting`, or its org when the plan pools.
    pub payer: AccountId,
    /// The subscription that governs (the acting account's, or its org's).
    pub subscription: Option<SubscriptionRecord>,
    pub entitled: bool,
    /// `None` when nothing is entitled and the tenant has no free plan.
    pub plan_id: Option<String>,
    pub plan_tier: Option<String>,
    /// Monthly anchor for periods skipped while the account was idle.
    pub anchor: OffsetDateTime,
    pub period: Period,
    /// The end of the governing account's active trial, when it is trialing.
    pub trial_ends_at: Option<OffsetDateTime>,
}

impl Payer {
    /// The trial shown on decisions.
    pub fn trial(&self, now: OffsetDateTime) -> Option<super::outcome::TrialView> {
        self.trial_ends_at.filter(|end| *end > now).map(|ends_at| {
            let seconds = (ends_at - now).whole_seconds();
            super::outcome::TrialView { ends_at, days_left: (seconds + 86_399) / 86_400 }
        })
    }

    /// Whether members draw on an org's pool.
    pub fn pooled(&self) -> bool {
        self.payer != self.acting
    }
}

/// Resolves the payer and plan for `acting` at `now`.
pub async fn resolve(tx: &Tx<'_>, tenant: TenantId, acting: &AccountId, now: OffsetDateTime) -> Result<Payer, Error> {
    // The usual case (no org, the account's own subscription or the free plan) in one pipelined
    // round trip: the three reads are sent together.
    let (org, own_subscription, free_plan) = futures::try_join!(
        repo::accounts::org_of(tx, tenant, acting),
        repo::subscriptions::get(tx, tenant, acting),
        repo::plans::free_default(tx, tenant),
    )?;
    let subscription = match &org {
        Some(org) => repo::subscriptions::get(tx, tenant, org).await?,
        None => own_subscription,
    };
    let entitled = subscription.as_ref().is_some_and(|s| s.entitled_at(now));
    let plan = match (&subscription, entitled) {
        (Some(sub), true) => repo::plans::header(tx, tenant, sub.plan_id.as_str()).await?,
        _ => free_plan,
    };
    let trial_ends_at = match trialing(subscription.as_ref(), entitled) {
        true => repo::trials::active_end(tx, tenant, org.as_ref().unwrap_or(acting)).await?,
        false => None,
    };
    Ok(payer_of(acting, org, subscription, entitled, plan, trial_ends_at, now))
}

/// What [`resolve_many`] found: the payers, and the tenant's configuration version and fair-use
/// settings it read them at (see `plan_book`).
pub struct ResolvedMany {
    /// By account; members of an org are absent (their payer is decided on its own).
    pub payers: HashMap<String, Payer>,
    pub config_version: i64,
    pub settings: Settings,
}

/// Resolves several accounts at once (a batch) from what `repo::account_reads` read of them:
/// the payers of those that belong to no org. The same rules as [`resolve`], with nothing more
/// to read when the plan book holds the tenant's configuration at the version read (two
/// statements more when it does not) and no account is trialing (one more each).
pub async fn resolve_many(
    tx: &Tx<'_>,
    tenant: TenantId,
    accounts: &[&str],
    read: AccountReads,
    now: OffsetDateTime,
    book: &PlanBook,
) -> Result<ResolvedMany, Error> {
    let AccountReads { config_version, members, mut subscriptions, .. } = read;
    let entitled_plans: Vec<&str> = subscriptions
        .values()
        .filter(|s| s.entitled_at(now))
        .map(|s| s.plan_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let base = book.base(tx, tenant, config_version, &entitled_plans).await?;
    let mut payers = HashMap::with_capacity(accounts.len());
    for account in accounts.iter().filter(|a| !members.contains(**a)) {
        let acting = AccountId::parse(account).map_err(|e| Error::Internal(format!("batched account id: {e}")))?;
        let subscription = subscriptions.remove(*account);
        let entitled = subscription.as_ref().is_some_and(|s| s.entitled_at(now));
        let plan = match (&subscription, entitled) {
            (Some(sub), true) => base.headers.get(sub.plan_id.as_str()).cloned(),
            _ => base.free_plan.clone(),
        };
        // Trials are few: their ends are read one by one.
        let trial_ends_at = match trialing(subscription.as_ref(), entitled) {
            true => repo::trials::active_end(tx, tenant, &acting).await?,
            false => None,
        };
        payers.insert((*account).to_owned(), payer_of(&acting, None, subscription, entitled, plan, trial_ends_at, now));
    }
    Ok(ResolvedMany { payers, config_version, settings: base.settings })
}

/// Whether the governing subscription is an entitled trial.
fn trialing(subscription: Option<&SubscriptionRecord>, entitled: bool) -> bool {
    entitled && subscription.is_some_and(|s| s.status == allot_domain::plan::SubscriptionStatus::Trialing)
}

/// The payer, from what was read: the acting account's org, the governing subscription and
/// whether it entitles, the plan in force and the trial's end.
fn payer_of(
    acting: &AccountId,
    org: Option<AccountId>,
    subscription: Option<SubscriptionRecord>,
    entitled: bool,
    plan: Option<PlanHeader>,
    trial_ends_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Payer {
    let (anchor, period) = match (&subscription, entitled) {
        (Some(sub), true) => (sub.current_period_start, subscription_period(sub.current_period_start, sub.current_period_end, now)),
        _ => (CALENDAR_ANCHOR, period_containing(CALENDAR_ANCHOR, now)),
    };
    let payer = match (&org, plan.as_ref().map(|p| p.scope)) {
        (Some(org), Some(Scope::Org)) => org.clone(),
        _ => acting.clone(),
    };
    Payer {
        acting: acting.clone(),
        payer,
        subscription,
        entitled,
        plan_id: plan.as_ref().map(|p| p.id.clone()),
        plan_tier: plan.map(|p| p.tier),
        anchor,
        period,
        trial_ends_at,
    }
}

/// Resolves for a stored hold or entry: the plan and period of the account that was charged
/// then (its meter is the one settled), with the member that acted (membership may have changed
/// since, so the payer's own resolution governs).
pub async fn resolve_stored(tx: &Tx<'_>, tenant: TenantId, acting: &AccountId, payer: &AccountId, now: OffsetDateTime) -> Result<Payer, Error> {
    let mut resolved = resolve(tx, tenant, payer, now).await?;
    resolved.acting = acting.clone();
    resolved.payer = payer.clone();
    Ok(resolved)
}

/// The plan, policy and period in force for one meter.
#[derive(Debug, Clone)]
pub struct InForce {
    pub payer: Payer,
    pub policy: MeterPolicy,
    pub rate: Option<RateCap>,
    pub member_cap_credits: Option<i64>,
}

impl InForce {
    /// The plan's terms for `meter` (a meter the plan does not list has no allowance).
    pub async fn load(tx: &Tx<'_>, tenant: TenantId, payer: &Payer, meter: &Meter) -> Result<InForce, Error> {
        let terms = match &payer.plan_id {
            Some(id) => repo::plans::meter_terms(tx, tenant, id, meter).await?.unwrap_or(MeterTerms::UNLISTED),
            None => MeterTerms::UNLISTED,
        };
        Ok(InForce {
            payer: payer.clone(),
            policy: terms.policy,
            rate: terms.rate,
            member_cap_credits: if payer.pooled() { terms.member_cap_credits } else { None },
        })
    }
}
