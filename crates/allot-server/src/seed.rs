//! Tenants, API keys and the demo data `allot dev` serves. Plans and subscriptions go through the
//! Admin service, so the demo obeys the same validation and rules as real callers.

use allot_domain::ledger::GrantKind;
use allot_domain::plan::{MeterPolicy, Scope, SubscriptionStatus};
use time::OffsetDateTime;

use crate::auth::{Principal, Role};
use crate::error::Error;
use crate::ids::{AccountId, IdempotencyKey, Meter, PlanId, TenantId};
use crate::repo::audit::{self, Audit, Subject};
use crate::repo::plans::{MeterTerms, PlanRecord, RateCap};
use crate::repo::subscriptions::SubscriptionRecord;
use crate::repo::tenants;
use crate::service::admin::{Admin, GrantCommand};
use crate::service::Ctx;

/// A tenant and its first API key, of role `admin` (the key in clear, shown once).
#[derive(Debug, Clone)]
pub struct TenantKey {
    pub tenant: TenantId,
    pub api_key: String,
    pub key_id: uuid::Uuid,
}

/// Creates a tenant with one admin API key. The transaction is the new tenant's own, so
/// row-level security admits exactly its rows.
pub async fn tenant(pool: &deadpool_postgres::Pool, name: &str) -> Result<TenantKey, Error> {
    let tenant = tenants::new_id();
    let mut client = pool.get().await?;
    let tx = crate::db::begin(&mut client, tenant).await?;
    tenants::create(&tx, tenant, name).await?;
    let key = tenants::create_api_key(&tx, tenant, "default", Role::Admin).await?;
    audit_key(&tx, tenant, "CreateApiKey", key.id).await?;
    tx.commit().await?;
    Ok(TenantKey { tenant, api_key: key.key, key_id: key.id })
}

/// Creates another API key of `role` for `tenant`, shown once.
pub async fn api_key(pool: &deadpool_postgres::Pool, tenant: TenantId, name: &str, role: Role) -> Result<tenants::NewKey, Error> {
    if name.is_empty() || name.len() > tenants::KEY_NAME_LEN_MAX {
        return Err(Error::invalid("name", format!("1 to {} bytes", tenants::KEY_NAME_LEN_MAX)));
    }
    let mut client = pool.get().await?;
    let tx = crate::db::begin(&mut client, tenant).await?;
    let key = tenants::create_api_key(&tx, tenant, name, role).await?;
    audit_key(&tx, tenant, "CreateApiKey", key.id).await?;
    tx.commit().await?;
    Ok(key)
}

/// Revokes an API key of `tenant`; false when there is no such live key.
pub async fn revoke_api_key(pool: &deadpool_postgres::Pool, tenant: TenantId, id: uuid::Uuid) -> Result<bool, Error> {
    let mut client = pool.get().await?;
    let tx = crate::db::begin(&mut client, tenant).await?;
    let actor = key_admin(tenant);
    let audit = Audit::begin(&tx, &actor, "RevokeApiKey", Subject::ApiKey(id)).await?;
    let revoked = tenants::revoke_api_key(&tx, tenant, id, OffsetDateTime::now_utc()).await?;
    if revoked {
        audit.finish(&tx, OffsetDateTime::now_utc()).await?;
    }
    tx.commit().await?;
    Ok(revoked)
}

/// Who manages keys outside the API (the command line, `allot dev`, the test kit).
fn key_admin(tenant: TenantId) -> Principal {
    Principal::system(tenant, "keys")
}

/// Audits a key's creation in its transaction (the row never holds the key or its hash).
async fn audit_key(tx: &crate::db::Tx<'_>, tenant: TenantId, method: &'static str, id: uuid::Uuid) -> Result<(), Error> {
    let actor = key_admin(tenant);
    let after = audit::snapshot(tx, &actor, Subject::ApiKey(id)).await?;
    audit::append(tx, &actor, method, Subject::ApiKey(id), None, after, OffsetDateTime::now_utc()).await
}

fn id<T>(parse: fn(&str) -> Result<T, crate::ids::IdError>, raw: &str) -> Result<T, Error> {
    parse(raw).map_err(|e| Error::Internal(format!("seed id {raw}: {e}")))
}

/// A demo meter: allowance, rollover cap, debt limit and an optional per-minute cap (burst = one
/// minute's worth, failing open).
fn terms(allowance_credits: Option<i64>, rollover_cap_credits: i64, debt_limit_credits: i64, per_minute: Option<i64>) -> MeterTerms {
    MeterTerms {
        policy: MeterPolicy { allowance_credits, rollover_cap_credits, debt_limit_credits },
        rate: per_minute.map(|limit| RateCap { limit_per_minute: limit, burst: limit, fail_open: true }),
        member_cap_credits: None,
        trial_grant_credits: 0,
    }
}

/// The demo tenant: a `free` plan (the fallback: 100 requests and 10,000 tokens a month) and a
/// `pro` plan (unlimited requests, 1,000,000 tokens, rollover up to 500,000, debt down to
/// -50,000); `demo-free` on the free plan with 5,000 promotional tokens, `demo-pro` on pro; a
/// subsidy pool (see `subsidy_pool`).
pub async fn demo(ctx: &Ctx, now: OffsetDateTime) -> Result<TenantKey, Error> {
    let key = tenant(&ctx.pool, "demo").await?;
    let actor = Principal::system(key.tenant, "seed");
    let admin = Admin::new(ctx.clone());
    let requests = id(Meter::parse, "requests")?;
    let tokens = id(Meter::parse, "tokens")?;
    admin
        .upsert_plan(
            &actor,
            PlanRecord {
                id: id(PlanId::parse, "free")?,
                tier: "free".into(),
                name: "Free".into(),
                trial_days: 0,
                is_free_default: true,
                scope: Scope::User,
                trial_keeps_credits: false,
                trial_ending_notice_ms: 3 * 86_400_000,
                meters: vec![(requests.clone(), terms(Some(100), 0, 0, Some(30))), (tokens.clone(), terms(Some(10_000), 0, 0, None))],
                updated_at: now,
            },
        )
        .await?;
    admin
        .upsert_plan(
            &actor,
            PlanRecord {
                id: id(PlanId::parse, "pro")?,
                tier: "pro".into(),
                name: "Pro".into(),
                trial_days: 14,
                is_free_default: false,
                scope: Scope::User,
                trial_keeps_credits: false,
                trial_ending_notice_ms: 3 * 86_400_000,
                meters: vec![(requests, terms(None, 0, 0, Some(120))), (tokens.clone(), terms(Some(1_000_000), 500_000, 50_000, None))],
                updated_at: now,
            },
        )
        .await?;
    admin
        .upsert_subscription(
            &actor,
            SubscriptionRecord {
                account_id: id(AccountId::parse, "demo-pro")?,
                plan_id: id(PlanId::parse, "pro")?,
                status: SubscriptionStatus::Active,
                current_period_start: now,
                current_period_end: allot_domain::period::add_months(now, 1),
                cancel_at_period_end: false,
                updated_at: now,
            },
        )
        .await?;
    admin
        .grant(
            &actor,
            GrantCommand {
                account: id(AccountId::parse, "demo-free")?,
                meter: tokens,
                amount_credits: 5_000,
                kind: GrantKind::Promotional,
                priority: 0,
                expires_at: Some(now + time::Duration::days(30)),
                key: id(IdempotencyKey::parse, "demo-welcome-grant")?,
            },
        )
        .await?;
    subsidy_pool(ctx, &actor).await?;
    Ok(key)
}

/// The demo's subsidy pool `generosity`: 10% of paid `tokens` usage funds it, 100,000 credits to
/// start with; tiers new 0, established 500, trusted 2,000 and elite 10,000 credits a day;
/// `demo-free` is established.
async fn subsidy_pool(ctx: &Ctx, actor: &Principal) -> Result<(), Error> {
    use crate::ids::{PoolId, TrustTier};
    use crate::service::pools::{PoolCommand, Pools};
    let pools = Pools::new(ctx.clone());
    let pool = id(PoolId::parse, "generosity")?;
    pools.upsert(actor, PoolCommand { id: pool.clone(), share_bps: 1_000, meters: vec!["tokens".into()], shard_count: 8 }).await?;
    pools.top_up(actor, &pool, 100_000, "demo-seed").await?;
    for (tier, budget) in [("new", 0), ("established", 500), ("trusted", 2_000), ("elite", 10_000)] {
        pools.upsert_tier(actor, &id(TrustTier::parse, tier)?, budget).await?;
    }
    pools.set_account_tier(actor, &id(AccountId::parse, "demo-free")?, &id(TrustTier::parse, "established")?).await
}
