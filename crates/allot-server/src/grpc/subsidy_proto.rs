//! Conversions for `allot.v1.Subsidy`: requests into validated commands (every violation names
//! its field), records into messages.

use allot_domain::subsidy::{BPS_ONE, SHARDS_MAX};
use allot_proto::v1 as pb;
use time::OffsetDateTime;

use super::from_proto::{account, key, meter, non_negative, positive};
use super::to_proto::timestamp;
use crate::error::Error;
use crate::ids::{AccountId, PoolId, TrustTier};
use crate::repo::subsidy::{LogRow, PoolRow};
use crate::service::pools::{PoolCommand, PoolStatus, GRANTS_PAGE_DEFAULT, GRANTS_PAGE_MAX};

/// Most meters one pool covers.
pub const POOL_METERS_MAX: usize = 16;
/// Shards of a pool created without saying.
pub const SHARDS_DEFAULT: u32 = 8;

pub fn pool_id(field: &str, raw: &str) -> Result<PoolId, Error> {
    PoolId::parse(raw).map_err(|e| Error::invalid(field, e))
}

fn tier(field: &str, raw: &str) -> Result<TrustTier, Error> {
    TrustTier::parse(raw).map_err(|e| Error::invalid(field, e))
}

pub fn upsert_pool(req: pb::UpsertPoolRequest) -> Result<PoolCommand, Error> {
    let pool = req.pool.ok_or_else(|| Error::invalid("pool", "is required"))?;
    if pool.share_bps > BPS_ONE {
        return Err(Error::invalid("pool.share_bps", format!("must be at most {BPS_ONE} (100%)")));
    }
    if pool.meters.is_empty() || pool.meters.len() > POOL_METERS_MAX {
        return Err(Error::invalid("pool.meters", format!("must name 1 to {POOL_METERS_MAX} meters")));
    }
    let mut meters = Vec::with_capacity(pool.meters.len());
    for (i, raw) in pool.meters.iter().enumerate() {
        let m = meter(&format!("pool.meters[{i}]"), raw)?;
        if meters.iter().any(|seen: &String| seen == m.as_str()) {
            return Err(Error::invalid(format!("pool.meters[{i}]"), "is listed twice"));
        }
        meters.push(m.as_str().to_owned());
    }
    let shard_count = match pool.shard_count {
        0 => SHARDS_DEFAULT,
        n if n <= SHARDS_MAX => n,
        _ => return Err(Error::invalid("pool.shard_count", format!("must be at most {SHARDS_MAX}"))),
    };
    Ok(PoolCommand { id: pool_id("pool.pool_id", &pool.pool_id)?, share_bps: pool.share_bps, meters, shard_count })
}

pub fn top_up(req: pb::TopUpPoolRequest) -> Result<(PoolId, i64, String), Error> {
    Ok((pool_id("pool_id", &req.pool_id)?, positive("amount_credits", req.amount_credits)?, key(&req.idempotency_key)?.as_str().to_owned()))
}

pub fn upsert_tier(req: pb::UpsertTrustTierRequest) -> Result<(TrustTier, i64), Error> {
    Ok((tier("tier", &req.tier)?, non_negative("daily_budget_credits", req.daily_budget_credits)?))
}

pub fn set_account_tier(req: pb::SetAccountTrustTierRequest) -> Result<(AccountId, TrustTier), Error> {
    Ok((account("account_id", &req.account_id)?, tier("tier", &req.tier)?))
}

/// The pool, the position to start after and the page size.
pub fn list_grants(req: pb::ListPoolGrantsRequest) -> Result<(PoolId, i64, u32), Error> {
    let page_size = match req.page_size {
        0 => GRANTS_PAGE_DEFAULT,
        n if n <= GRANTS_PAGE_MAX => n,
        _ => return Err(Error::invalid("page_size", format!("must be at most {GRANTS_PAGE_MAX}"))),
    };
    let after = match req.page_token.as_str() {
        "" => 0,
        raw => raw.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| Error::invalid("page_token", "is not a token this service gave"))?,
    };
    Ok((pool_id("pool_id", &req.pool_id)?, after, page_size))
}

pub fn pool(row: PoolRow) -> pb::Pool {
    pb::Pool {
        pool_id: row.id,
        share_bps: row.share_bps,
        meters: row.meters,
        shard_count: row.shard_count,
        updated_at: Some(timestamp(row.updated_at)),
    }
}

pub fn status(status: PoolStatus) -> pb::GetPoolStatusResponse {
    pb::GetPoolStatusResponse {
        balance_credits: status.balances.balance_credits,
        reserved_credits: status.balances.reserved_credits,
        pending_funding_credits: status.balances.pending_credits,
        shards: status
            .balances
            .shards
            .iter()
            .enumerate()
            .map(|(i, (balance, reserved))| pb::ShardBalance { shard: i as u32, balance_credits: *balance, reserved_credits: *reserved })
            .collect(),
        tiers: status
            .tiers
            .into_iter()
            .map(|(tier, budget, absorbed, reserved, identities)| pb::TierDay {
                tier,
                daily_budget_credits: budget,
                absorbed_today_credits: absorbed,
                reserved_today_credits: reserved,
                identities_today: identities,
            })
            .collect(),
        pool: Some(pool(status.pool)),
    }
}

pub fn grant(row: LogRow, at: OffsetDateTime) -> pb::PoolGrant {
    let id = |v: Option<uuid::Uuid>| v.map(|u| u.to_string()).unwrap_or_default();
    pb::PoolGrant {
        id: row.id.to_string(),
        kind: row.kind.to_owned(),
        account_id: row.account_id.unwrap_or_default(),
        identity: row.identity.unwrap_or_default(),
        trust_tier: row.tier.unwrap_or_default(),
        meter: row.meter.unwrap_or_default(),
        cost_credits: row.cost_credits,
        reserved_credits: row.reserved_credits,
        absorbed_credits: row.absorbed_credits,
        account_credits: row.account_credits,
        pool_delta_credits: row.pool_delta_credits,
        pool_balance_after_credits: row.pool_balance_after_credits.unwrap_or_default(),
        entry_id: id(row.entry_id),
        hold_id: id(row.hold_id),
        refunds_id: id(row.refunds_id),
        shard: row.shard.map_or(-1, |s| s as i32),
        created_at: Some(timestamp(at)),
    }
}
