//! Subsidy pools: pool settings and shards, trust tiers, per-identity daily use, the pool's part
//! of holds, funding waiting to be settled, and the append-only grant log.

use time::{Date, OffsetDateTime};
use uuid::Uuid;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Identity, Meter, PoolId, TenantId, TrustTier};

/// The tier of an account nobody has classified.
pub const DEFAULT_TIER: &str = "new";

/// A pool's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub id: String,
    pub share_bps: u32,
    pub meters: Vec<String>,
    pub shard_count: u32,
    pub updated_at: OffsetDateTime,
}

fn pool_from(row: &tokio_postgres::Row) -> PoolRow {
    PoolRow {
        id: row.get(0),
        share_bps: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
        meters: row.get(2),
        shard_count: u32::try_from(row.get::<_, i32>(3)).unwrap_or(1),
        updated_at: row.get(4),
    }
}

pub async fn pool(tx: &Tx<'_>, tenant: TenantId, id: &PoolId) -> Result<Option<PoolRow>, Error> {
    let stmt = tx.prepare_cached("SELECT id, share_bps, meters, shard_count, updated_at FROM subsidy_pools WHERE tenant_id = $1 AND id = $2").await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &id.as_str()]).await?.as_ref().map(pool_from))
}

pub async fn pools(tx: &Tx<'_>, tenant: TenantId) -> Result<Vec<PoolRow>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, share_bps, meters, shard_count, updated_at FROM subsidy_pools WHERE tenant_id = $1 ORDER BY id COLLATE \"C\" LIMIT 1000",
        )
        .await?;
    Ok(tx.query(&stmt, &[&tenant.0]).await?.iter().map(pool_from).collect())
}

/// Creates or changes a pool and makes sure each of its shards has a row. Shards are never
/// removed, so `shard_count` may only grow (the caller checks).
pub async fn upsert_pool(
    tx: &Tx<'_>,
    tenant: TenantId,
    id: &PoolId,
    share_bps: u32,
    meters: &[String],
    shard_count: u32,
    now: OffsetDateTime,
) -> Result<PoolRow, Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO subsidy_pools (tenant_id, id, share_bps, meters, shard_count, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET share_bps = EXCLUDED.share_bps, meters = EXCLUDED.meters, \
             shard_count = EXCLUDED.shard_count, updated_at = EXCLUDED.updated_at \
             WHERE subsidy_pools.shard_count <= EXCLUDED.shard_count \
             RETURNING id, share_bps, meters, shard_count, updated_at",
        )
        .await?;
    let share = i32::try_from(share_bps).map_err(|_| Error::invalid("share_bps", "out of range"))?;
    let shards = i32::try_from(shard_count).map_err(|_| Error::invalid("shard_count", "out of range"))?;
    let row = tx
        .query_opt(&stmt, &[&tenant.0, &id.as_str(), &share, &meters, &shards, &now])
        .await?
        .ok_or_else(|| Error::FailedPrecondition("a pool's shard_count may only grow".into()))?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO subsidy_pool_shards (tenant_id, pool_id, shard) SELECT $1, $2, s FROM generate_series(0, $3 - 1) AS s \
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &id.as_str(), &shards]).await?;
    Ok(pool_from(&row))
}

/// Locks a pool's row: top-ups and funding settlements of one pool take turns.
pub async fn lock_pool(tx: &Tx<'_>, tenant: TenantId, pool: &str) -> Result<(), Error> {
    let stmt = tx.prepare_cached("SELECT 1 FROM subsidy_pools WHERE tenant_id = $1 AND id = $2 FOR UPDATE").await?;
    tx.query_opt(&stmt, &[&tenant.0, &pool]).await?.ok_or(Error::NotFound { what: "subsidy pool" })?;
    Ok(())
}

/// The amount of the top-up made with `key`, if there was one.
pub async fn top_up_amount(tx: &Tx<'_>, tenant: TenantId, pool: &str, key: &str) -> Result<Option<i64>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT pool_delta_credits FROM subsidy_grants WHERE tenant_id = $1 AND pool_id = $2 AND idempotency_key = $3 AND kind = 'top_up'",
        )
        .await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &pool, &key]).await?.map(|r| r.get(0)))
}

/// Pools funded by paid charges on `meter` (with a share above zero).
pub async fn funded_by(tx: &Tx<'_>, tenant: TenantId, meter: &Meter) -> Result<Vec<(PoolId, u32)>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, share_bps FROM subsidy_pools WHERE tenant_id = $1 AND $2 = ANY (meters) AND share_bps > 0 ORDER BY id COLLATE \"C\"",
        )
        .await?;
    tx.query(&stmt, &[&tenant.0, &meter.as_str()])
        .await?
        .iter()
        .map(|r| {
            let id = PoolId::parse(r.get::<_, &str>(0)).map_err(|e| Error::Internal(format!("stored pool id: {e}")))?;
            Ok((id, u32::try_from(r.get::<_, i32>(1)).unwrap_or(0)))
        })
        .collect()
}

/// An account's trust tier and that tier's daily budget (the default tier, budget 0, when unset).
pub async fn tier_of(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<(String, i64), Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT t.name, COALESCE(b.daily_budget_credits, 0) \
             FROM (SELECT COALESCE((SELECT tier FROM account_trust WHERE tenant_id = $1 AND account_id = $2), $3) AS name) AS t \
             LEFT JOIN trust_tiers b ON b.tenant_id = $1 AND b.tier = t.name",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&tenant.0, &account.as_str(), &DEFAULT_TIER]).await?;
    Ok((row.get(0), row.get(1)))
}

pub async fn upsert_tier(tx: &Tx<'_>, tenant: TenantId, tier: &TrustTier, daily_budget_credits: i64, now: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO trust_tiers (tenant_id, tier, daily_budget_credits, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, tier) DO UPDATE SET daily_budget_credits = EXCLUDED.daily_budget_credits, updated_at = EXCLUDED.updated_at",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &tier.as_str(), &daily_budget_credits, &now]).await?;
    Ok(())
}

/// The tenant's tiers and budgets, by name.
pub async fn tiers(tx: &Tx<'_>, tenant: TenantId) -> Result<Vec<(String, i64)>, Error> {
    let stmt =
        tx.prepare_cached("SELECT tier, daily_budget_credits FROM trust_tiers WHERE tenant_id = $1 ORDER BY tier COLLATE \"C\" LIMIT 1000").await?;
    Ok(tx.query(&stmt, &[&tenant.0]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn set_account_tier(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, tier: &TrustTier, now: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO account_trust (tenant_id, account_id, tier, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, account_id) DO UPDATE SET tier = EXCLUDED.tier, updated_at = EXCLUDED.updated_at",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &account.as_str(), &tier.as_str(), &now]).await?;
    Ok(())
}

/// One identity's use of one pool on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Daily {
    pub absorbed_credits: i64,
    pub reserved_credits: i64,
}

/// Locks (creating it when missing) the identity's row for `day`.
pub async fn lock_daily(tx: &Tx<'_>, tenant: TenantId, pool: &PoolId, identity: &Identity, day: Date, tier: &str) -> Result<Daily, Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO subsidy_daily (tenant_id, pool_id, identity, day, tier) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, pool_id, identity, day) DO UPDATE SET tier = subsidy_daily.tier \
             RETURNING absorbed_credits, reserved_credits",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&tenant.0, &pool.as_str(), &identity.as_str(), &day, &tier]).await?;
    Ok(Daily { absorbed_credits: row.get(0), reserved_credits: row.get(1) })
}

/// The identity's row for `day`, unlocked (zero when missing).
pub async fn read_daily(tx: &Tx<'_>, tenant: TenantId, pool: &PoolId, identity: &Identity, day: Date) -> Result<Daily, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT absorbed_credits, reserved_credits FROM subsidy_daily WHERE tenant_id = $1 AND pool_id = $2 AND identity = $3 AND day = $4",
        )
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&tenant.0, &pool.as_str(), &identity.as_str(), &day])
        .await?
        .map_or(Daily::default(), |r| Daily { absorbed_credits: r.get(0), reserved_credits: r.get(1) }))
}

/// Moves what the identity absorbed and reserved on `day` (the row is locked by `lock_daily`).
pub async fn add_daily(
    tx: &Tx<'_>,
    tenant: TenantId,
    pool: &str,
    identity: &str,
    day: Date,
    absorbed_delta: i64,
    reserved_delta: i64,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE subsidy_daily SET absorbed_credits = absorbed_credits + $5, reserved_credits = reserved_credits + $6 \
             WHERE tenant_id = $1 AND pool_id = $2 AND identity = $3 AND day = $4",
        )
        .await?;
    let n = tx.execute(&stmt, &[&tenant.0, &pool, &identity, &day, &absorbed_delta, &reserved_delta]).await?;
    if n != 1 {
        return Err(Error::Internal(format!("subsidy day row of {identity} on {day} missing")));
    }
    Ok(())
}

/// A shard's spendable balance, unlocked.
pub async fn shard_balance(tx: &Tx<'_>, tenant: TenantId, pool: &PoolId, shard: u32) -> Result<i64, Error> {
    let stmt = tx.prepare_cached("SELECT balance_credits FROM subsidy_pool_shards WHERE tenant_id = $1 AND pool_id = $2 AND shard = $3").await?;
    let shard = i32::try_from(shard).map_err(|_| Error::Internal("shard out of range".into()))?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &pool.as_str(), &shard]).await?.map_or(0, |r| r.get(0)))
}

/// Takes up to `want_credits` from a shard's balance (locking the row until commit), into its
/// reservations when `reserve`. Returns what was taken and the balance after.
pub async fn take(tx: &Tx<'_>, tenant: TenantId, pool: &PoolId, shard: u32, want_credits: i64, reserve: bool) -> Result<(i64, i64), Error> {
    assert!(want_credits >= 0, "takes are not negative");
    // RETURNING cannot show the balance before the update, so lock and read it first.
    let shard_i = i32::try_from(shard).map_err(|_| Error::Internal("shard out of range".into()))?;
    let lock =
        tx.prepare_cached("SELECT balance_credits FROM subsidy_pool_shards WHERE tenant_id = $1 AND pool_id = $2 AND shard = $3 FOR UPDATE").await?;
    let before: i64 = tx
        .query_opt(&lock, &[&tenant.0, &pool.as_str(), &shard_i])
        .await?
        .ok_or_else(|| Error::Internal(format!("shard {shard} of pool {pool} missing")))?
        .get(0);
    let taken = before.min(want_credits);
    let after = move_shard(tx, tenant, pool.as_str(), shard, -taken, if reserve { taken } else { 0 }).await?;
    Ok((taken, after))
}

/// Adds `balance_delta` to a shard's balance and `reserved_delta` to its reservations; returns the
/// balance after. The CHECK constraints refuse a negative balance or reservation.
pub async fn move_shard(tx: &Tx<'_>, tenant: TenantId, pool: &str, shard: u32, balance_delta: i64, reserved_delta: i64) -> Result<i64, Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE subsidy_pool_shards SET balance_credits = balance_credits + $4, reserved_credits = reserved_credits + $5 \
             WHERE tenant_id = $1 AND pool_id = $2 AND shard = $3 RETURNING balance_credits",
        )
        .await?;
    let shard_i = i32::try_from(shard).map_err(|_| Error::Internal("shard out of range".into()))?;
    let row = tx.query_opt(&stmt, &[&tenant.0, &pool, &shard_i, &balance_delta, &reserved_delta]).await?;
    Ok(row.ok_or_else(|| Error::Internal(format!("shard {shard} of pool {pool} missing")))?.get(0))
}

/// What a grant-log row records.
#[derive(Debug, Clone, Default)]
pub struct LogRow {
    pub id: Uuid,
    pub pool_id: String,
    pub shard: Option<u32>,
    pub kind: &'static str,
    pub account_id: Option<String>,
    pub identity: Option<String>,
    pub tier: Option<String>,
    pub meter: Option<String>,
    pub cost_credits: i64,
    pub reserved_credits: i64,
    pub absorbed_credits: i64,
    pub account_credits: i64,
    pub pool_delta_credits: i64,
    pub pool_balance_after_credits: Option<i64>,
    pub entry_id: Option<Uuid>,
    pub hold_id: Option<Uuid>,
    pub refunds_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
}

const LOG_COLUMNS: &str = "id, pool_id, shard, kind, account_id, identity, tier, meter, cost_credits, reserved_credits, absorbed_credits, \
     account_credits, pool_delta_credits, pool_balance_after_credits, entry_id, hold_id, refunds_id, idempotency_key";

/// Appends to the grant log. Returns false when a top-up with the same key exists.
pub async fn log(tx: &Tx<'_>, tenant: TenantId, row: &LogRow, now: OffsetDateTime) -> Result<bool, Error> {
    let sql = format!(
        "INSERT INTO subsidy_grants (tenant_id, {LOG_COLUMNS}, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) ON CONFLICT DO NOTHING"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let shard = row.shard.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
    let n = tx
        .execute(
            &stmt,
            &[
                &tenant.0,
                &row.id,
                &row.pool_id,
                &shard,
                &row.kind,
                &row.account_id,
                &row.identity,
                &row.tier,
                &row.meter,
                &row.cost_credits,
                &row.reserved_credits,
                &row.absorbed_credits,
                &row.account_credits,
                &row.pool_delta_credits,
                &row.pool_balance_after_credits,
                &row.entry_id,
                &row.hold_id,
                &row.refunds_id,
                &row.idempotency_key,
                &now,
            ],
        )
        .await?;
    Ok(n == 1)
}

fn log_from(r: &tokio_postgres::Row) -> LogRow {
    LogRow {
        id: r.get(0),
        pool_id: r.get(1),
        shard: r.get::<_, Option<i32>>(2).and_then(|s| u32::try_from(s).ok()),
        kind: match r.get::<_, &str>(3) {
            "absorb" => "absorb",
            "reserve" => "reserve",
            "settle" => "settle",
            "return" => "return",
            "refund" => "refund",
            "fund" => "fund",
            _ => "top_up",
        },
        account_id: r.get(4),
        identity: r.get(5),
        tier: r.get(6),
        meter: r.get(7),
        cost_credits: r.get(8),
        reserved_credits: r.get(9),
        absorbed_credits: r.get(10),
        account_credits: r.get(11),
        pool_delta_credits: r.get(12),
        pool_balance_after_credits: r.get(13),
        entry_id: r.get(14),
        hold_id: r.get(15),
        refunds_id: r.get(16),
        idempotency_key: r.get(17),
    }
}

/// The subsidy (an `absorb` or `settle` row) that `id` names, or whose ledger entry `id` is.
pub async fn subsidy_for(tx: &Tx<'_>, tenant: TenantId, id: Uuid) -> Result<Option<LogRow>, Error> {
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM subsidy_grants WHERE tenant_id = $1 AND (id = $2 OR entry_id = $2) AND kind IN ('absorb', 'settle') \
         ORDER BY position LIMIT 1"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &id]).await?.as_ref().map(log_from))
}

/// What earlier refunds of a subsidy returned: (to the pool, to the account).
pub async fn refunded(tx: &Tx<'_>, tenant: TenantId, subsidy_id: Uuid) -> Result<(i64, i64), Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(absorbed_credits), 0)::bigint, COALESCE(SUM(account_credits), 0)::bigint FROM subsidy_grants \
             WHERE tenant_id = $1 AND refunds_id = $2 AND kind = 'refund'",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&tenant.0, &subsidy_id]).await?;
    Ok((row.get(0), row.get(1)))
}

/// The pool's part of one meter of a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldPart {
    pub hold_id: Uuid,
    pub meter: String,
    pub pool_id: String,
    pub shard: u32,
    pub identity: String,
    pub day: Date,
    pub account_id: String,
    pub tier: String,
    pub reserved_credits: i64,
    pub cost_credits: i64,
    pub status: String,
    pub expires_at: OffsetDateTime,
}

pub async fn insert_hold_part(tx: &Tx<'_>, tenant: TenantId, part: &HoldPart) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO subsidy_holds (tenant_id, hold_id, meter, pool_id, shard, identity, day, account_id, tier, reserved_credits, cost_credits, status, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .await?;
    let shard = i32::try_from(part.shard).map_err(|_| Error::Internal("shard out of range".into()))?;
    tx.execute(
        &stmt,
        &[
            &tenant.0,
            &part.hold_id,
            &part.meter,
            &part.pool_id,
            &shard,
            &part.identity,
            &part.day,
            &part.account_id,
            &part.tier,
            &part.reserved_credits,
            &part.cost_credits,
            &part.status,
            &part.expires_at,
        ],
    )
    .await?;
    Ok(())
}

/// The pool's parts of a hold still held, locked, in meter order.
pub async fn held_parts(tx: &Tx<'_>, tenant: TenantId, hold_id: Uuid) -> Result<Vec<HoldPart>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT hold_id, meter, pool_id, shard, identity, day, account_id, tier, reserved_credits, cost_credits, status, expires_at \
             FROM subsidy_holds WHERE tenant_id = $1 AND hold_id = $2 AND status = 'held' ORDER BY meter COLLATE \"C\" FOR UPDATE",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&tenant.0, &hold_id])
        .await?
        .iter()
        .map(|r| HoldPart {
            hold_id: r.get(0),
            meter: r.get(1),
            pool_id: r.get(2),
            shard: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
            identity: r.get(4),
            day: r.get(5),
            account_id: r.get(6),
            tier: r.get(7),
            reserved_credits: r.get(8),
            cost_credits: r.get(9),
            status: r.get(10),
            expires_at: r.get(11),
        })
        .collect())
}

pub async fn set_hold_status(tx: &Tx<'_>, tenant: TenantId, hold_id: Uuid, meter: &str, status: &str) -> Result<(), Error> {
    let stmt =
        tx.prepare_cached("UPDATE subsidy_holds SET status = $4 WHERE tenant_id = $1 AND hold_id = $2 AND meter = $3 AND status = 'held'").await?;
    tx.execute(&stmt, &[&tenant.0, &hold_id, &meter, &status]).await?;
    Ok(())
}

/// Up to `limit` holds whose pool part is still reserved past its expiry, across tenants (a
/// system job).
pub async fn expired_holds(tx: &Tx<'_>, now: OffsetDateTime, limit: i64) -> Result<Vec<(TenantId, Uuid)>, Error> {
    let stmt = tx.prepare_cached("SELECT DISTINCT tenant_id, hold_id FROM subsidy_holds WHERE status = 'held' AND expires_at <= $1 LIMIT $2").await?;
    Ok(tx.query(&stmt, &[&now, &limit]).await?.iter().map(|r| (TenantId(r.get(0)), r.get(1))).collect())
}

/// Records funding from a paid charge, to be settled into the shards by `settle_pending`.
pub async fn add_pending(
    tx: &Tx<'_>,
    tenant: TenantId,
    pool: &PoolId,
    amount_credits: i64,
    entry_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached("INSERT INTO subsidy_pending_funding (tenant_id, pool_id, amount_credits, entry_id, created_at) VALUES ($1, $2, $3, $4, $5)")
        .await?;
    tx.execute(&stmt, &[&tenant.0, &pool.as_str(), &amount_credits, &entry_id, &now]).await?;
    Ok(())
}

/// Pools with funding waiting, across tenants (a system job).
pub async fn pools_with_pending(tx: &Tx<'_>, limit: i64) -> Result<Vec<(TenantId, String)>, Error> {
    let stmt = tx.prepare_cached("SELECT DISTINCT tenant_id, pool_id FROM subsidy_pending_funding LIMIT $1").await?;
    Ok(tx.query(&stmt, &[&limit]).await?.iter().map(|r| (TenantId(r.get(0)), r.get(1))).collect())
}

/// Takes (deletes) up to `limit` waiting fundings of a pool; returns their total and count.
pub async fn take_pending(tx: &Tx<'_>, tenant: TenantId, pool: &str, limit: i64) -> Result<(i64, i64), Error> {
    let stmt = tx
        .prepare_cached(
            "WITH taken AS (DELETE FROM subsidy_pending_funding WHERE (tenant_id, id) IN ( \
                 SELECT tenant_id, id FROM subsidy_pending_funding WHERE tenant_id = $1 AND pool_id = $2 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING amount_credits) \
             SELECT COALESCE(SUM(amount_credits), 0)::bigint, COUNT(*) FROM taken",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&tenant.0, &pool, &limit]).await?;
    Ok((row.get(0), row.get(1)))
}

/// A pool's balances now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balances {
    pub balance_credits: i64,
    pub reserved_credits: i64,
    pub pending_credits: i64,
    /// Per shard: (balance, reserved).
    pub shards: Vec<(i64, i64)>,
}

pub async fn balances(tx: &Tx<'_>, tenant: TenantId, pool: &PoolId) -> Result<Balances, Error> {
    let stmt = tx
        .prepare_cached("SELECT balance_credits, reserved_credits FROM subsidy_pool_shards WHERE tenant_id = $1 AND pool_id = $2 ORDER BY shard")
        .await?;
    let shards: Vec<(i64, i64)> = tx.query(&stmt, &[&tenant.0, &pool.as_str()]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stmt = tx
        .prepare_cached("SELECT COALESCE(SUM(amount_credits), 0)::bigint FROM subsidy_pending_funding WHERE tenant_id = $1 AND pool_id = $2")
        .await?;
    let pending_credits = tx.query_one(&stmt, &[&tenant.0, &pool.as_str()]).await?.get(0);
    Ok(Balances { balance_credits: shards.iter().map(|s| s.0).sum(), reserved_credits: shards.iter().map(|s| s.1).sum(), pending_credits, shards })
}

/// Per tier, what identities absorbed and have reserved on `day`, and how many drew on the pool.
pub async fn day_by_tier(tx: &Tx<'_>, tenant: TenantId, pool: &PoolId, day: Date) -> Result<Vec<(String, i64, i64, i64)>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT tier, SUM(absorbed_credits)::bigint, SUM(reserved_credits)::bigint, COUNT(*) FILTER (WHERE absorbed_credits + reserved_credits > 0) \
             FROM subsidy_daily WHERE tenant_id = $1 AND pool_id = $2 AND day = $3 GROUP BY tier ORDER BY tier COLLATE \"C\"",
        )
        .await?;
    Ok(tx.query(&stmt, &[&tenant.0, &pool.as_str(), &day]).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
}

/// A page of a pool's grant log, oldest first, after `after_position`.
pub async fn log_page(
    tx: &Tx<'_>,
    tenant: TenantId,
    pool: &PoolId,
    after_position: i64,
    limit: i64,
) -> Result<Vec<(i64, LogRow, OffsetDateTime)>, Error> {
    let sql = format!(
        "SELECT {LOG_COLUMNS}, position, created_at FROM subsidy_grants WHERE tenant_id = $1 AND pool_id = $2 AND position > $3 ORDER BY position LIMIT $4"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    Ok(tx.query(&stmt, &[&tenant.0, &pool.as_str(), &after_position, &limit]).await?.iter().map(|r| (r.get(18), log_from(r), r.get(19))).collect())
}
