//! Back-office operations: plans, subscriptions, grants, balances and the ledger.

use allot_domain::ledger::{Effect, EntryKind, GrantKind, Portion};
use allot_domain::meter::Grant;
use allot_domain::plan::SubscriptionStatus;
use time::OffsetDateTime;
use uuid::Uuid;

use super::idempotent::{self, fingerprint};
use super::in_force;
use super::meter_session::MeterSession;
use super::outcome::{GrantOutcome, MeterView};
use super::Ctx;
use crate::auth::Principal;
use crate::error::Error;
use crate::ids::{AccountId, IdempotencyKey, Meter, PlanId, TenantId};
use crate::repo::audit::{self, Audit, Subject};
use crate::repo::grants::GrantRow;
use crate::repo::holds::HoldRow;
use crate::repo::ledger::{EntryRefs, EntryRow};
use crate::repo::plans::PlanRecord;
use crate::repo::subscriptions::SubscriptionRecord;
use crate::repo::{self};

/// Largest page of any listing.
pub const PAGE_SIZE_MAX: u32 = 500;
/// Page size when the caller names none.
pub const PAGE_SIZE_DEFAULT: u32 = 100;

#[derive(Debug, Clone)]
pub struct GrantCommand {
    pub account: AccountId,
    pub meter: Meter,
    pub amount_credits: i64,
    pub kind: GrantKind,
    pub priority: i32,
    pub expires_at: Option<OffsetDateTime>,
    pub key: IdempotencyKey,
}

/// One meter of a balance view.
#[derive(Debug, Clone)]
pub struct MeterBalance {
    pub view: MeterView,
    pub grants: Vec<GrantRow>,
    pub holds: Vec<HoldRow>,
}

/// Every meter of an account.
#[derive(Debug, Clone)]
pub struct Balance {
    pub plan_id: Option<String>,
    pub meters: Vec<MeterBalance>,
}

#[derive(Clone)]
pub struct Admin {
    ctx: Ctx,
}

impl Admin {
    pub fn new(ctx: Ctx) -> Admin {
        Admin { ctx }
    }

    pub async fn upsert_plan(&self, actor: &Principal, mut plan: PlanRecord) -> Result<PlanRecord, Error> {
        let tenant = actor.tenant;
        plan.updated_at = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let audit = Audit::begin(&tx, actor, "UpsertPlan", Subject::Plan(plan.id.as_str())).await?;
        repo::plans::upsert(&tx, tenant, &plan).await?;
        audit.finish(&tx, plan.updated_at).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn get_plan(&self, tenant: TenantId, id: &PlanId) -> Result<PlanRecord, Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let plan = repo::plans::get(&tx, tenant, id.as_str()).await?.ok_or(Error::NotFound { what: "plan" })?;
        tx.commit().await?;
        Ok(plan)
    }

    /// A page of plans in id order, and the token of the next page (empty at the end).
    pub async fn list_plans(&self, tenant: TenantId, page_size: u32, after: &str) -> Result<(Vec<PlanRecord>, String), Error> {
        let limit = i64::from(page_size);
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let plans = repo::plans::page(&tx, tenant, after, limit + 1).await?;
        tx.commit().await?;
        Ok(paginate(plans, page_size, |p| p.id.as_str().to_owned()))
    }

    /// Stores the subscription; returns it and whether it entitles the account now.
    pub async fn upsert_subscription(&self, actor: &Principal, mut sub: SubscriptionRecord) -> Result<(SubscriptionRecord, bool), Error> {
        let tenant = actor.tenant;
        sub.updated_at = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        if repo::plans::get(&tx, tenant, sub.plan_id.as_str()).await?.is_none() {
            return Err(Error::NotFound { what: "plan" });
        }
        let audit = Audit::begin(&tx, actor, "UpsertSubscription", Subject::Subscription(sub.account_id.as_str())).await?;
        repo::subscriptions::upsert(&tx, tenant, &sub).await?;
        if matches!(sub.status, SubscriptionStatus::Active | SubscriptionStatus::PastDue) {
            super::trials::end_by_conversion(&tx, tenant, &sub.account_id, "subscription", sub.updated_at).await?;
        }
        audit.finish(&tx, sub.updated_at).await?;
        tx.commit().await?;
        let entitled = sub.entitled_at(self.ctx.clock.now());
        Ok((sub, entitled))
    }

    /// Sets an account's org. An org cannot itself be a member, and a member cannot be an org.
    pub async fn upsert_account(&self, actor: &Principal, account: &AccountId, org: Option<&AccountId>) -> Result<(), Error> {
        let tenant = actor.tenant;
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        if let Some(org) = org {
            if repo::accounts::org_of(&tx, tenant, org).await?.is_some() {
                return Err(Error::invalid("org_id", "is itself a member of an org"));
            }
            if repo::accounts::has_members(&tx, tenant, account).await? {
                return Err(Error::invalid("account_id", "is an org with members and cannot join another org"));
            }
        }
        let audit = Audit::begin(&tx, actor, "UpsertAccount", Subject::Account(account.as_str())).await?;
        repo::accounts::upsert(&tx, tenant, account, org).await?;
        audit.finish(&tx, self.ctx.clock.now()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_account(&self, tenant: TenantId, account: &AccountId) -> Result<Option<AccountId>, Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let org = repo::accounts::org_of(&tx, tenant, account).await?;
        tx.commit().await?;
        Ok(org)
    }

    /// The account's subscription and whether it entitles the account now.
    pub async fn get_subscription(&self, tenant: TenantId, account: &AccountId) -> Result<(SubscriptionRecord, bool), Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let sub = repo::subscriptions::get(&tx, tenant, account).await?.ok_or(Error::NotFound { what: "subscription" })?;
        tx.commit().await?;
        let entitled = sub.entitled_at(self.ctx.clock.now());
        Ok((sub, entitled))
    }

    /// Adds credit to a meter, idempotent by key.
    pub async fn grant(&self, actor: &Principal, cmd: GrantCommand) -> Result<GrantOutcome, Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let expiry = cmd.expires_at.map(|t| t.unix_timestamp_nanos().to_string()).unwrap_or_default();
        let print = fingerprint("grant", &[&cmd.account, &cmd.meter, &cmd.amount_credits, &cmd.kind.as_str(), &cmd.priority, &expiry]);
        let mut client = self.ctx.db().await?;
        {
            let tx = crate::db::begin(&mut client, tenant).await?;
            let payer = in_force::resolve(&tx, tenant, &cmd.account, now).await?;
            let mut own = payer.clone();
            own.payer = cmd.account.clone();
            let mut session = MeterSession::lock(&tx, tenant, &own, &cmd.meter, now, &[]).await?;
            if let Some(replayed) = idempotent::replay(&tx, tenant, &cmd.key, "grant", &print).await? {
                return Ok(replayed);
            }
            // Checked after the replay: a retry of a grant made before its expiry gets its answer.
            if cmd.expires_at.is_some_and(|at| at <= now) {
                return Err(Error::invalid("expires_at", "must be in the future"));
            }
            let outcome = add_grant(&mut session, cmd.kind, cmd.amount_credits, cmd.priority, cmd.expires_at, Some(&cmd.key), now);
            if cmd.kind == GrantKind::Purchased {
                // Paying ends any trial: an account with purchased credit is never trialing.
                super::trials::end_by_conversion(&tx, tenant, &cmd.account, "purchase", now).await?;
            }
            session.save(&tx, now).await?;
            let after = audit::snapshot(&tx, actor, Subject::Grant(outcome.grant_id)).await?;
            audit::append(&tx, actor, "GrantCredits", Subject::Grant(outcome.grant_id), None, after, now).await?;
            if idempotent::store_and_commit(tx, tenant, &cmd.key, "grant", print.clone(), &outcome).await? {
                return Ok(outcome);
            }
        }
        let tx = crate::db::begin(&mut client, tenant).await?;
        let replayed = idempotent::replay(&tx, tenant, &cmd.key, "grant", &print).await?;
        tx.commit().await?;
        replayed.ok_or_else(|| Error::Internal("idempotency conflict without a stored outcome".into()))
    }

    /// Every meter the account has used, with live grants and holds, from one snapshot.
    pub async fn balance(&self, tenant: TenantId, account: &AccountId) -> Result<Balance, Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::Snapshot).await?;
        let meters = repo::balances::list_meters(&tx, tenant, account).await?;
        let grants = repo::grants::for_account(&tx, tenant, account).await?;
        let holds = repo::holds::live_for_account(&tx, tenant, account, now).await?;
        let mut payer = in_force::resolve(&tx, tenant, account, now).await?;
        payer.payer = account.clone();
        let plan_id = payer.plan_id.clone();
        let mut views = Vec::with_capacity(meters.len());
        for meter in &meters {
            let session = MeterSession::snapshot(&tx, tenant, &payer, meter, now).await?;
            let live_ids: Vec<Uuid> = session.state.grants_in_waterfall_order(now).iter().map(|g| g.id).collect();
            let mut meter_grants: Vec<GrantRow> = Vec::new();
            for id in live_ids {
                if let Some(row) = grants.iter().find(|g| g.grant.id == id) {
                    meter_grants.push(row.clone());
                }
            }
            views.push(MeterBalance {
                view: session.view(now),
                grants: meter_grants,
                holds: holds.iter().filter(|h| h.meter == meter.as_str()).cloned().collect(),
            });
        }
        tx.commit().await?;
        Ok(Balance { plan_id, meters: views })
    }

    /// A page of the account's ledger, oldest first; the token is the last entry's position.
    pub async fn ledger(
        &self,
        tenant: TenantId,
        account: &AccountId,
        meter: Option<&Meter>,
        page_size: u32,
        after_position: i64,
    ) -> Result<(Vec<EntryRow>, String), Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let entries = repo::ledger::page(&tx, tenant, account, meter, after_position, i64::from(page_size) + 1).await?;
        tx.commit().await?;
        Ok(paginate(entries, page_size, |e| e.position.to_string()))
    }
}

/// Adds a grant to a locked meter and records its ledger entry; the caller saves the session.
pub fn add_grant(
    session: &mut MeterSession,
    kind: GrantKind,
    amount_credits: i64,
    priority: i32,
    expires_at: Option<OffsetDateTime>,
    key: Option<&IdempotencyKey>,
    now: OffsetDateTime,
) -> GrantOutcome {
    let grant = Grant { id: Uuid::new_v4(), kind, remaining_credits: amount_credits, priority, expires_at, created_at: now };
    let effect = Effect::from_portions(EntryKind::Grant, vec![Portion { bucket: grant.bucket(), delta_credits: amount_credits }]);
    let grant_id = grant.id;
    session.add_grant(grant, amount_credits);
    let entry_id = session.record(effect, EntryRefs { idempotency_key: key.map(|k| k.as_str().to_owned()), ..EntryRefs::default() });
    GrantOutcome { grant_id, entry_id, meter: session.view(now) }
}

/// Cuts a list fetched with one extra row to `page_size` and derives the next page's token.
fn paginate<T>(mut rows: Vec<T>, page_size: u32, token: impl Fn(&T) -> String) -> (Vec<T>, String) {
    let page_size = usize::try_from(page_size).unwrap_or(usize::MAX);
    if rows.len() > page_size {
        rows.truncate(page_size);
        let next = rows.last().map(&token).unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}
