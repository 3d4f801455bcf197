//! `tenants` and `api_keys`: who may call, and for which tenant. Keys are random, shown once and
//! stored only as SHA-256 hashes.

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::Error;
use crate::ids::TenantId;

/// The prefix of every API key, so leaked keys are easy to recognise.
pub const API_KEY_PREFIX: &str = "allot_";

/// The SHA-256 of a presented key.
pub fn key_sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub async fn create(client: &impl tokio_postgres::GenericClient, name: &str) -> Result<TenantId, Error> {
    let id = Uuid::new_v4();
    client.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", &[&id, &name]).await?;
    Ok(TenantId(id))
}

/// Creates an API key for the tenant and returns it in clear: the only time it is seen.
pub async fn create_api_key(client: &impl tokio_postgres::GenericClient, tenant: TenantId, name: &str) -> Result<String, Error> {
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
    let hash = key_sha256(&key).to_vec();
    client
        .execute("INSERT INTO api_keys (tenant_id, id, key_sha256, name) VALUES ($1, $2, $3, $4)", &[&tenant.0, &Uuid::new_v4(), &hash, &name])
        .await?;
    Ok(key)
}

/// The tenant of an unrevoked key.
pub async fn tenant_for_key(client: &deadpool_postgres::Client, key_sha256: &[u8; 32]) -> Result<Option<TenantId>, Error> {
    let stmt = client.prepare_cached("SELECT tenant_id FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL").await?;
    let hash: &[u8] = key_sha256;
    Ok(client.query_opt(&stmt, &[&hash]).await?.map(|row| TenantId(row.get(0))))
}
