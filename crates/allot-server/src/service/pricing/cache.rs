//! The in-process cache of price look-ups: each SKU's latest versions and each tenant's policy,
//! kept for a TTL and forgotten earlier when a write is announced on `allot_prices`.
//!
//! A look-up that raced with an invalidation must not put the old answer back: every entry is
//! stored only if no invalidation happened since the look-up began (a generation counter,
//! compared under the same lock that invalidations take).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_domain::pricing::{PriceVersion, Sku};
use time::OffsetDateTime;

use crate::ids::TenantId;
use crate::repo::prices::PolicyRecord;

/// Most cached SKUs (and, separately, policies); the cache is emptied when full.
pub const ENTRIES_MAX: usize = 10_000;

/// A SKU's latest versions (newest first) as loaded.
#[derive(Debug, Clone)]
pub struct SkuEntry {
    pub versions: Arc<[PriceVersion]>,
    /// Instants from here on are fully covered by `versions`; `None` = every version is here.
    /// (A later version never starts before an earlier one, and ends every earlier one by its
    /// start, so the newest versions cover everything from the oldest loaded start.)
    pub covers_from: Option<OffsetDateTime>,
}

impl SkuEntry {
    /// From the `limit` latest versions, newest first.
    pub fn new(versions: Vec<PriceVersion>, limit: usize) -> SkuEntry {
        let covers_from = if versions.len() >= limit { versions.last().map(|v| v.effective_from) } else { None };
        SkuEntry { versions: versions.into(), covers_from }
    }

    pub fn covers(&self, at: OffsetDateTime) -> bool {
        self.covers_from.is_none_or(|from| at >= from)
    }
}

#[derive(Default)]
struct Inner {
    generation: u64,
    skus: HashMap<(TenantId, Sku), (SkuEntry, Instant)>,
    policies: HashMap<TenantId, (Arc<PolicyRecord>, Instant)>,
}

/// Cached look-ups, shared by every clone of the service and the listener.
pub struct Cache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl Cache {
    pub fn new(ttl: Duration) -> Cache {
        Cache { ttl, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before a look-up; pass it back to `put_*`.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn sku(&self, tenant: TenantId, sku: &Sku) -> Option<SkuEntry> {
        let inner = self.lock();
        inner.skus.get(&(tenant, sku.clone())).filter(|(_, at)| at.elapsed() < self.ttl).map(|(entry, _)| entry.clone())
    }

    pub fn policy(&self, tenant: TenantId) -> Option<Arc<PolicyRecord>> {
        let inner = self.lock();
        inner.policies.get(&tenant).filter(|(_, at)| at.elapsed() < self.ttl).map(|(policy, _)| policy.clone())
    }

    /// Stores a look-up that began at `generation`, unless something was invalidated since.
    pub fn put_sku(&self, generation: u64, tenant: TenantId, sku: Sku, entry: SkuEntry) {
        let mut inner = self.lock();
        if inner.generation != generation || self.ttl.is_zero() {
            return;
        }
        if inner.skus.len() >= ENTRIES_MAX {
            inner.skus.clear();
        }
        inner.skus.insert((tenant, sku), (entry, Instant::now()));
    }

    pub fn put_policy(&self, generation: u64, tenant: TenantId, policy: Arc<PolicyRecord>) {
        let mut inner = self.lock();
        if inner.generation != generation || self.ttl.is_zero() {
            return;
        }
        if inner.policies.len() >= ENTRIES_MAX {
            inner.policies.clear();
        }
        inner.policies.insert(tenant, (policy, Instant::now()));
    }

    pub fn forget_sku(&self, tenant: TenantId, sku: &Sku) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.skus.remove(&(tenant, sku.clone()));
    }

    pub fn forget_policy(&self, tenant: TenantId) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.policies.remove(&tenant);
    }

    /// Forgets everything (the listener reconnected and may have missed announcements).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.skus.clear();
        inner.policies.clear();
    }

    /// Applies an `allot_prices` payload: `<tenant uuid>` (policy) or `<tenant uuid> <sku>`.
    /// Anything else empties the cache: an announcement is never ignored.
    pub fn apply(&self, payload: &str) {
        let (tenant, sku) = match payload.split_once(' ') {
            Some((tenant, sku)) => (tenant, Some(sku)),
            None => (payload, None),
        };
        let Ok(tenant) = uuid::Uuid::parse_str(tenant).map(TenantId) else {
            tracing::warn!(payload, "unexpected price notification, cache cleared");
            return self.clear();
        };
        match sku.map(Sku::parse) {
            None => self.forget_policy(tenant),
            Some(Ok(sku)) => self.forget_sku(tenant, &sku),
            Some(Err(_)) => {
                tracing::warn!(payload, "unexpected price notification, cache cleared");
                self.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId(uuid::Uuid::from_u128(7))
    }

    fn entry() -> SkuEntry {
        SkuEntry::new(Vec::new(), 16)
    }

    #[test]
    fn a_look_up_that_raced_an_invalidation_is_not_stored() {
        let cache = Cache::new(Duration::from_secs(60));
        let sku = Sku::parse("vendor/model").expect("sku");
        let before = cache.generation();
        cache.apply(&format!("{} vendor/model", tenant().0));
        cache.put_sku(before, tenant(), sku.clone(), entry());
        assert!(cache.sku(tenant(), &sku).is_none(), "the stale answer was dropped");
        let now = cache.generation();
        cache.put_sku(now, tenant(), sku.clone(), entry());
        assert!(cache.sku(tenant(), &sku).is_some());
        cache.apply(&format!("{} vendor/model", tenant().0));
        assert!(cache.sku(tenant(), &sku).is_none(), "announced writes are forgotten");

        let before = cache.generation();
        cache.apply(&format!("{} other/sku", tenant().0));
        cache.put_policy(before, tenant(), Arc::new(PolicyRecord::default()));
        assert!(cache.policy(tenant()).is_none(), "any invalidation between look-up and store drops it");
        let now = cache.generation();
        cache.put_policy(now, tenant(), Arc::new(PolicyRecord::default()));
        cache.apply(&tenant().0.to_string());
        assert!(cache.policy(tenant()).is_none());
        cache.put_sku(cache.generation(), tenant(), sku.clone(), entry());
        cache.apply("garbage");
        assert!(cache.sku(tenant(), &sku).is_none(), "a payload it cannot read empties the cache");
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = Cache::new(Duration::from_millis(30));
        let sku = Sku::parse("vendor/model").expect("sku");
        cache.put_sku(cache.generation(), tenant(), sku.clone(), entry());
        assert!(cache.sku(tenant(), &sku).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.sku(tenant(), &sku).is_none());
    }
}
