//! Administering subsidy pools: settings, top-ups, trust tiers, status and the grant log. The
//! charge path's side of pools lives in `subsidy`.

use allot_domain::subsidy::SHARDS_MAX;
use time::OffsetDateTime;

use super::Ctx;
use crate::auth::Principal;
use crate::error::Error;
use crate::ids::{AccountId, PoolId, TenantId, TrustTier};
use crate::repo::audit::{Audit, Subject};
use crate::repo::subsidy::{self as repo, Balances, LogRow, PoolRow, DEFAULT_TIER};

/// Most entries of the grant log in one page.
pub const GRANTS_PAGE_MAX: u32 = 500;
pub const GRANTS_PAGE_DEFAULT: u32 = 100;

/// A pool as an admin sets it.
#[derive(Debug, Clone)]
pub struct PoolCommand {
    pub id: PoolId,
    pub share_bps: u32,
    pub meters: Vec<String>,
    pub shard_count: u32,
}

/// What `GetPoolStatus` reports.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub pool: PoolRow,
    pub balances: Balances,
    /// Per tier: (tier, daily budget, absorbed today, reserved today, identities today).
    pub tiers: Vec<(String, i64, i64, i64, i64)>,
}

#[derive(Clone)]
pub struct Pools {
    ctx: Ctx,
}

impl Pools {
    pub fn new(ctx: Ctx) -> Pools {
        Pools { ctx }
    }

    pub async fn upsert(&self, actor: &Principal, cmd: PoolCommand) -> Result<PoolRow, Error> {
        assert!((1..=SHARDS_MAX).contains(&cmd.shard_count), "validated at the edge");
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let audit = Audit::begin(&tx, actor, "UpsertPool", Subject::Pool(cmd.id.as_str())).await?;
        if let Some(existing) = repo::pool(&tx, tenant, &cmd.id).await? {
            if cmd.shard_count < existing.shard_count {
                return Err(Error::FailedPrecondition(format!("a pool's shard_count may only grow (it is {})", existing.shard_count)));
            }
        }
        let pool = repo::upsert_pool(&tx, tenant, &cmd.id, cmd.share_bps, &cmd.meters, cmd.shard_count, now).await?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        Ok(pool)
    }

    /// Adds credit; a key used before adds nothing and says so. Returns (balance, replayed).
    pub async fn top_up(&self, actor: &Principal, pool: &PoolId, amount_credits: i64, key: &str) -> Result<(i64, bool), Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let settings = repo::pool(&tx, tenant, pool).await?.ok_or(Error::NotFound { what: "subsidy pool" })?;
        let audit = Audit::begin(&tx, actor, "TopUpPool", Subject::Pool(pool.as_str())).await?;
        let added = super::subsidy::credit_pool(&tx, tenant, pool.as_str(), settings.shard_count, amount_credits, "top_up", Some(key), now).await?;
        let balance = repo::balances(&tx, tenant, pool).await?.balance_credits;
        if added.is_some() {
            audit.finish(&tx, now).await?;
        }
        tx.commit().await?;
        Ok((balance, added.is_none()))
    }

    pub async fn upsert_tier(&self, actor: &Principal, tier: &TrustTier, daily_budget_credits: i64) -> Result<(), Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let audit = Audit::begin(&tx, actor, "UpsertTrustTier", Subject::TrustTier(tier.as_str())).await?;
        repo::upsert_tier(&tx, tenant, tier, daily_budget_credits, now).await?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Puts an account in a tier; the tier must exist (or be the default tier).
    pub async fn set_account_tier(&self, actor: &Principal, account: &AccountId, tier: &TrustTier) -> Result<(), Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        if tier.as_str() != DEFAULT_TIER && !repo::tiers(&tx, tenant).await?.iter().any(|(t, _)| t == tier.as_str()) {
            return Err(Error::NotFound { what: "trust tier" });
        }
        let audit = Audit::begin(&tx, actor, "SetAccountTrustTier", Subject::AccountTrust(account.as_str())).await?;
        repo::set_account_tier(&tx, tenant, account, tier, now).await?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn status(&self, tenant: TenantId, pool: &PoolId) -> Result<PoolStatus, Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::Snapshot).await?;
        let settings = repo::pool(&tx, tenant, pool).await?.ok_or(Error::NotFound { what: "subsidy pool" })?;
        let balances = repo::balances(&tx, tenant, pool).await?;
        let today = repo::day_by_tier(&tx, tenant, pool, crate::repo::fair_use::day_of(now)).await?;
        let mut budgets = repo::tiers(&tx, tenant).await?;
        if !budgets.iter().any(|(t, _)| t == DEFAULT_TIER) {
            budgets.push((DEFAULT_TIER.to_owned(), 0));
        }
        for (tier, ..) in &today {
            if !budgets.iter().any(|(t, _)| t == tier) {
                budgets.push((tier.clone(), 0)); // a tier removed since, still in today's figures
            }
        }
        budgets.sort();
        let tiers = budgets
            .into_iter()
            .map(|(tier, budget)| {
                let (absorbed, reserved, identities) = today.iter().find(|(t, ..)| *t == tier).map_or((0, 0, 0), |(_, a, r, n)| (*a, *r, *n));
                (tier, budget, absorbed, reserved, identities)
            })
            .collect();
        tx.commit().await?;
        Ok(PoolStatus { pool: settings, balances, tiers })
    }

    /// A page of the grant log after `after_position`; the next page's position when there may be more.
    pub async fn grants(
        &self,
        tenant: TenantId,
        pool: &PoolId,
        after_position: i64,
        page_size: u32,
    ) -> Result<(Vec<(LogRow, OffsetDateTime)>, Option<i64>), Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
        repo::pool(&tx, tenant, pool).await?.ok_or(Error::NotFound { what: "subsidy pool" })?;
        let rows = repo::log_page(&tx, tenant, pool, after_position, i64::from(page_size)).await?;
        tx.commit().await?;
        let next = (rows.len() == page_size as usize).then(|| rows.last().map(|(p, ..)| *p)).flatten();
        Ok((rows.into_iter().map(|(_, row, at)| (row, at)).collect(), next))
    }
}
