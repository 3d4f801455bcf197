//! `tenants` and `api_keys`: who may call, for which tenant and in which role, and the version of
//! each tenant's configuration. Keys are random, shown once and stored only as SHA-256 hashes;
//! revoked keys stay (with `revoked_at`) so the audit trail can name them.

use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Tx;
use crate::auth::Role;
use crate::error::Error;
use crate::ids::TenantId;

/// The prefix of every API key, so leaked keys are easy to recognise.
pub const API_KEY_PREFIX: &str = "allot_";
/// Longest key name.
pub const KEY_NAME_LEN_MAX: usize = 200;

/// The SHA-256 of a presented key.
pub fn key_sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new tenant's id (the caller opens its transaction for it, see `seed::tenant`).
pub fn new_id() -> TenantId {
    TenantId(Uuid::new_v4())
}

pub async fn create(tx: &Tx<'_>, id: TenantId, name: &str) -> Result<(), Error> {
    tx.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", &[&id.0, &name]).await?;
    Ok(())
}

/// The version of the tenant's configuration (plans, their meters and soft caps, fair-use
/// settings), moved by every write to it (migration V14); 0 for a tenant never configured.
/// Fails when the tenant's row is not visible: the transaction has not begun for the tenant
/// (row-level security shows it only then; see `db::begin_batch`).
pub async fn config_version(tx: &Tx<'_>, tenant: TenantId) -> Result<i64, Error> {
    let stmt = tx.prepare_cached("SELECT config_version FROM tenants WHERE id = $1").await?;
    let row = tx.query_opt(&stmt, &[&tenant.0]).await?;
    row.map(|row| row.get(0)).ok_or_else(|| Error::Internal(format!("tenant {tenant} is not visible: its transaction did not begin")))
}

/// A key in clear (the only time it is seen) and its id.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: Uuid,
    pub key: String,
    pub role: Role,
}

/// Creates an API key of `role` for the tenant.
pub async fn create_api_key(tx: &Tx<'_>, tenant: TenantId, name: &str, role: Role) -> Result<NewKey, Error> {
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
    let hash = key_sha256(&key).to_vec();
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO api_keys (tenant_id, id, key_sha256, name, role) VALUES ($1, $2, $3, $4, $5)",
        &[&tenant.0, &id, &hash, &name, &role.as_str()],
    )
    .await?;
    Ok(NewKey { id, key, role })
}

/// Revokes a key; returns whether it existed and was live.
pub async fn revoke_api_key(tx: &Tx<'_>, tenant: TenantId, id: Uuid, now: OffsetDateTime) -> Result<bool, Error> {
    let n =
        tx.execute("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL", &[&tenant.0, &id, &now]).await?;
    Ok(n == 1)
}

/// An unrevoked key, found by its hash.
#[derive(Debug, Clone)]
pub struct FoundKey {
    pub tenant: TenantId,
    pub id: Uuid,
    pub role: Role,
    /// `last_used_at` is older than a minute (or unset): due for a write.
    pub last_used_stale: bool,
}

/// The unrevoked key with this hash, across tenants (`db::AllTenants::KeyLookup`).
pub async fn key_for_hash(tx: &Tx<'_>, key_sha256: &[u8; 32]) -> Result<Option<FoundKey>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT tenant_id, id, role, last_used_at IS NULL OR last_used_at < now() - interval '1 minute' \
             FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL",
        )
        .await?;
    let hash: &[u8] = key_sha256;
    let Some(row) = tx.query_opt(&stmt, &[&hash]).await? else { return Ok(None) };
    let role: String = row.get(2);
    let role = role.parse::<Role>().map_err(|e| Error::Internal(format!("stored key role: {e}")))?;
    Ok(Some(FoundKey { tenant: TenantId(row.get(0)), id: row.get(1), role, last_used_stale: row.get(3) }))
}

/// Records that a key was used (at most once a minute: older stamps only).
pub async fn touch_key(tx: &Tx<'_>, tenant: TenantId, id: Uuid) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE api_keys SET last_used_at = now() WHERE tenant_id = $1 AND id = $2 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &id]).await?;
    Ok(())
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

/// The tenant's keys, newest first (at most `limit`).
pub async fn list_keys(tx: &Tx<'_>, tenant: TenantId, limit: i64) -> Result<Vec<KeyRow>, Error> {
    let rows = tx
        .query(
            "SELECT id, name, role, created_at, revoked_at, last_used_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT $2",
            &[&tenant.0, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyRow { id: r.get(0), name: r.get(1), role: r.get(2), created_at: r.get(3), revoked_at: r.get(4), last_used_at: r.get(5) })
        .collect())
}
