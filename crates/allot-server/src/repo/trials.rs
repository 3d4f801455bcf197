//! `trials`: one per account and per fingerprint hash in a tenant, with its grants and state.

use time::OffsetDateTime;
use uuid::Uuid;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, TenantId};

/// A trial about to start.
#[derive(Debug, Clone)]
pub struct NewTrial<'a> {
    pub account: &'a AccountId,
    pub fingerprint_sha256: &'a [u8],
    pub plan_id: &'a str,
    pub started_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
}

/// Why a trial row could not be inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Account,
    Fingerprint,
}

/// Inserts the trial unless the account or the fingerprint had one (the unique keys decide
/// between concurrent attempts: one wins).
pub async fn insert(tx: &Tx<'_>, tenant: TenantId, trial: &NewTrial<'_>) -> Result<Option<Taken>, Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO trials (tenant_id, account_id, fingerprint_sha256, plan_id, started_at, ends_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 'active') ON CONFLICT DO NOTHING",
        )
        .await?;
    let inserted = tx
        .execute(&stmt, &[&tenant.0, &trial.account.as_str(), &trial.fingerprint_sha256, &trial.plan_id, &trial.started_at, &trial.ends_at])
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    let account = tx.prepare_cached("SELECT 1 FROM trials WHERE tenant_id = $1 AND account_id = $2").await?;
    Ok(Some(if tx.query_opt(&account, &[&tenant.0, &trial.account.as_str()]).await?.is_some() { Taken::Account } else { Taken::Fingerprint }))
}

pub async fn set_grants(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, grant_ids: &[Uuid]) -> Result<(), Error> {
    let stmt = tx.prepare_cached("UPDATE trials SET grant_ids = $3 WHERE tenant_id = $1 AND account_id = $2").await?;
    tx.execute(&stmt, &[&tenant.0, &account.as_str(), &grant_ids]).await?;
    Ok(())
}

/// The end of the account's active trial.
pub async fn active_end(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<Option<OffsetDateTime>, Error> {
    let stmt = tx.prepare_cached("SELECT ends_at FROM trials WHERE tenant_id = $1 AND account_id = $2 AND status = 'active'").await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &account.as_str()]).await?.map(|r| r.get(0)))
}

/// Ends an active trial by conversion; returns its plan and grants when there was one.
pub async fn convert(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<Option<(String, Vec<Uuid>)>, Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE trials SET status = 'converted' WHERE tenant_id = $1 AND account_id = $2 AND status = 'active' RETURNING plan_id, grant_ids",
        )
        .await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &account.as_str()]).await?.map(|r| (r.get(0), r.get(1))))
}

/// Whether the account shows any sign of payment: an active or past-due subscription, any other
/// non-trial subscription on record, or purchased credit.
pub async fn paid_signs(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<bool, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE tenant_id = $1 AND account_id = $2 AND status <> 'trialing') \
                 OR EXISTS (SELECT 1 FROM grants WHERE tenant_id = $1 AND account_id = $2 AND kind = 'purchased')",
        )
        .await?;
    Ok(tx.query_one(&stmt, &[&tenant.0, &account.as_str()]).await?.get(0))
}

/// A trial due for an event: (tenant, account, plan, ends_at).
pub type Due = (TenantId, String, String, OffsetDateTime);

/// Active trials that have ended (marked ended) — at most `limit`.
pub async fn end_due(client: &Tx<'_>, now: OffsetDateTime, limit: i64) -> Result<Vec<Due>, Error> {
    let stmt = client
        .prepare_cached(
            "UPDATE trials SET status = 'ended' WHERE (tenant_id, account_id) IN ( \
                SELECT tenant_id, account_id FROM trials WHERE status = 'active' AND ends_at <= $1 ORDER BY ends_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING tenant_id, account_id, plan_id, ends_at",
        )
        .await?;
    Ok(client.query(&stmt, &[&now, &limit]).await?.iter().map(|r| (TenantId(r.get(0)), r.get(1), r.get(2), r.get(3))).collect())
}

/// Active trials within their plan's notice of ending, not yet announced (marked announced).
pub async fn announce_due(client: &Tx<'_>, now: OffsetDateTime, limit: i64) -> Result<Vec<Due>, Error> {
    let stmt = client
        .prepare_cached(
            "UPDATE trials t SET ending_announced = true FROM plans p WHERE (t.tenant_id, t.account_id) IN ( \
                SELECT t2.tenant_id, t2.account_id FROM trials t2 JOIN plans p2 ON p2.tenant_id = t2.tenant_id AND p2.id = t2.plan_id \
                WHERE t2.status = 'active' AND NOT t2.ending_announced AND t2.ends_at - p2.trial_ending_notice_ms * interval '1 millisecond' <= $1 \
                ORDER BY t2.ends_at LIMIT $2 FOR UPDATE OF t2 SKIP LOCKED) \
             AND p.tenant_id = t.tenant_id AND p.id = t.plan_id RETURNING t.tenant_id, t.account_id, t.plan_id, t.ends_at",
        )
        .await?;
    Ok(client.query(&stmt, &[&now, &limit]).await?.iter().map(|r| (TenantId(r.get(0)), r.get(1), r.get(2), r.get(3))).collect())
}
