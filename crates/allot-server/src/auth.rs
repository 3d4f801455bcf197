//! Who is calling: a bearer API key in the `authorization` metadata, hashed and looked up to a
//! tenant. Verified keys are cached for a bounded time; a revoked key stops working within that
//! TTL. This is the seam the security work extends (mTLS, JWTs, roles).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use crate::error::Error;
use crate::ids::TenantId;
use crate::repo::tenants::{key_sha256, API_KEY_PREFIX};

/// Longest credential accepted, in bytes.
pub const API_KEY_LEN_MAX: usize = 256;
/// Most cached keys; the cache is emptied when full.
pub const CACHE_ENTRIES_MAX: usize = 10_000;

/// Resolves credentials to tenants.
pub struct Authenticator {
    pool: deadpool_postgres::Pool,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (TenantId, Instant)>>,
}

impl Authenticator {
    pub fn new(pool: deadpool_postgres::Pool, ttl: Duration) -> Authenticator {
        Authenticator { pool, ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// The caller's tenant, or `Unauthenticated` for a missing, malformed, unknown or revoked key.
    pub async fn tenant(&self, metadata: &MetadataMap) -> Result<TenantId, Error> {
        let key = bearer(metadata).ok_or(Error::Unauthenticated)?;
        let hash = key_sha256(key);
        if let Some(tenant) = self.cached(&hash) {
            return Ok(tenant);
        }
        let client = self.pool.get().await?;
        let tenant = crate::repo::tenants::tenant_for_key(&client, &hash).await?.ok_or(Error::Unauthenticated)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(hash, (tenant, Instant::now()));
        Ok(tenant)
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<TenantId> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(tenant, _)| *tenant)
    }
}

fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (key.len() <= API_KEY_LEN_MAX && key.starts_with(API_KEY_PREFIX)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_bearer_keys_are_looked_up() {
        let long = format!("Bearer allot_{}", "a".repeat(API_KEY_LEN_MAX));
        let cases = [
            (Some("Bearer allot_abc"), Some("allot_abc")),
            (Some("bearer allot_abc "), Some("allot_abc")),
            (Some("Basic allot_abc"), None),
            (Some("Bearer sk_live_x"), None),
            (Some(long.as_str()), None),
            (None, None),
        ];
        for (header, expected) in cases {
            let mut metadata = MetadataMap::new();
            if let Some(h) = header {
                metadata.insert("authorization", h.parse().expect("ascii"));
            }
            assert_eq!(bearer(&metadata), expected, "{header:?}");
        }
    }
}
