//! Bearer API keys (`allot_…`): hashed (SHA-256) and looked up to the tenant, role and key id,
//! cached for a bounded time (a revoked key stops working within that TTL). `last_used_at` is
//! written at most once a minute per key and replica, off the request path. Database look-ups
//! (cache misses, unknown keys) are bounded to [`LOOKUPS_MAX`] at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Credential, Principal};
use crate::error::Error;
use crate::repo::tenants::{key_sha256, API_KEY_PREFIX};

/// Longest API key accepted, in bytes.
pub const API_KEY_LEN_MAX: usize = 256;
/// Most cached keys; the cache is emptied when full.
pub const CACHE_ENTRIES_MAX: usize = 10_000;
/// `last_used_at` is written at most this often per key (and replica).
pub const LAST_USED_INTERVAL: Duration = Duration::from_secs(60);
/// Most key look-ups in the database at once. Unknown keys are never cached, so without this
/// bound a flood of made-up keys (no tenant to limit it by) could take every pooled connection.
pub const LOOKUPS_MAX: usize = 4;
/// Longest wait for a look-up slot before answering UNAVAILABLE.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(5);

struct Entry {
    principal: Principal,
    verified_at: Instant,
    touched_at: Option<Instant>,
}

/// Resolves API keys.
pub struct ApiKeys {
    pool: deadpool_postgres::Pool,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Entry>>,
    lookups: tokio::sync::Semaphore,
}

impl ApiKeys {
    pub fn new(pool: deadpool_postgres::Pool, ttl: Duration) -> ApiKeys {
        ApiKeys { pool, ttl, cache: Mutex::new(HashMap::new()), lookups: tokio::sync::Semaphore::new(LOOKUPS_MAX) }
    }

    /// Whether `token` looks like an API key (rather than a JWT).
    pub fn is_api_key(token: &str) -> bool {
        token.starts_with(API_KEY_PREFIX)
    }

    /// The principal of an unrevoked key, or `Unauthenticated`.
    pub async fn verify(self: &Arc<Self>, key: &str) -> Result<Principal, Error> {
        if key.len() > API_KEY_LEN_MAX || !Self::is_api_key(key) {
            return Err(Error::Unauthenticated);
        }
        let hash = key_sha256(key);
        if let Some((principal, touch)) = self.cached(&hash) {
            if touch {
                self.touch(principal.clone());
            }
            return Ok(principal);
        }
        let _slot = match tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(Error::Unavailable("credential store")),
        };
        // Callers of one new key queue here together: the first one's look-up serves the rest.
        if let Some((principal, _)) = self.cached(&hash) {
            return Ok(principal);
        }
        // The key names its tenant, so this is the one request-path lookup across tenants.
        let mut client = self.pool.get().await?;
        let tx = crate::db::begin_all_tenants(&mut client, crate::db::AllTenants::KeyLookup).await?;
        let found = crate::repo::tenants::key_for_hash(&tx, &hash).await?;
        tx.commit().await?;
        let found = found.ok_or(Error::Unauthenticated)?;
        let principal = Principal { tenant: found.tenant, role: found.role, credential: Credential::ApiKey(found.id) };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.clear();
        }
        let touch = found.last_used_stale;
        cache.insert(hash, Entry { principal: principal.clone(), verified_at: Instant::now(), touched_at: touch.then(Instant::now) });
        drop(cache);
        if touch {
            self.touch(principal.clone());
        }
        Ok(principal)
    }

    /// The cached principal and whether its `last_used_at` is due for a write.
    fn cached(&self, hash: &[u8; 32]) -> Option<(Principal, bool)> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get_mut(hash).filter(|e| e.verified_at.elapsed() < self.ttl)?;
        let due = entry.touched_at.is_none_or(|at| at.elapsed() >= LAST_USED_INTERVAL);
        if due {
            entry.touched_at = Some(Instant::now());
        }
        Some((entry.principal.clone(), due))
    }

    /// Writes `last_used_at` on its own task: a failure is logged, never the caller's problem.
    fn touch(self: &Arc<Self>, principal: Principal) {
        let Credential::ApiKey(id) = principal.credential else { return };
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let result = async {
                let mut client = pool.get().await?;
                let tx = crate::db::begin(&mut client, principal.tenant).await?;
                crate::repo::tenants::touch_key(&tx, principal.tenant, id).await?;
                tx.commit().await?;
                Ok::<_, Error>(())
            };
            if let Err(err) = result.await {
                tracing::debug!(error = %err, "api key last_used_at not written");
            }
        });
    }
}
