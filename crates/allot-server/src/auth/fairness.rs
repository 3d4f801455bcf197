//! Fairness between tenants: each tenant may have at most `tenant_concurrency_max` calls in
//! flight on a server. A call over the limit waits up to `tenant_queue_wait_ms` for a slot
//! (with at most `tenant_queue_max` others of its tenant), then is refused with
//! RESOURCE_EXHAUSTED and a `RetryInfo`. With the limit below the database pool size, one
//! tenant's flood holds at most that many connections and other tenants keep being served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::ids::TenantId;

/// Most tenants tracked; idle tenants' slots are dropped when full.
pub const TENANTS_MAX: usize = 100_000;

struct Slots {
    semaphore: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// Per-tenant concurrency limits.
pub struct TenantLimiter {
    in_flight_max: usize,
    queue_max: usize,
    queue_wait: Duration,
    tenants: Mutex<HashMap<TenantId, Arc<Slots>>>,
}

/// A call's slot; released when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl TenantLimiter {
    pub fn new(in_flight_max: usize, queue_max: usize, queue_wait: Duration) -> TenantLimiter {
        assert!(in_flight_max > 0, "a tenant needs at least one slot");
        TenantLimiter { in_flight_max, queue_max, queue_wait, tenants: Mutex::new(HashMap::new()) }
    }

    fn slots(&self, tenant: TenantId) -> Arc<Slots> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if tenants.len() >= TENANTS_MAX && !tenants.contains_key(&tenant) {
            // Forget idle tenants (all slots free); busy ones keep counting.
            tenants.retain(|_, s| s.semaphore.available_permits() < self.in_flight_max || Arc::strong_count(s) > 1);
        }
        tenants
            .entry(tenant)
            .or_insert_with(|| Arc::new(Slots { semaphore: Arc::new(Semaphore::new(self.in_flight_max)), queued: AtomicUsize::new(0) }))
            .clone()
    }

    /// A slot for one call of `tenant`, or `TenantBusy` when none frees up in time.
    pub async fn acquire(&self, tenant: TenantId) -> Result<Slot, Error> {
        let slots = self.slots(tenant);
        if let Ok(permit) = slots.semaphore.clone().try_acquire_owned() {
            return Ok(Slot(permit));
        }
        let busy = Error::TenantBusy { retry_after: self.queue_wait.max(Duration::from_millis(10)) };
        if self.queue_wait.is_zero() {
            crate::telemetry::count_tenant_busy();
            return Err(busy);
        }
        if slots.queued.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            slots.queued.fetch_sub(1, Ordering::AcqRel);
            crate::telemetry::count_tenant_busy();
            return Err(busy);
        }
        let waited = tokio::time::timeout(self.queue_wait, slots.semaphore.clone().acquire_owned()).await;
        slots.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            _ => {
                crate::telemetry::count_tenant_busy();
                Err(busy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> TenantId {
        TenantId(uuid::Uuid::from_u128(n))
    }

    #[tokio::test]
    async fn a_full_tenant_is_refused_and_others_are_not() {
        let limiter = TenantLimiter::new(2, 0, Duration::ZERO);
        let a1 = limiter.acquire(tenant(1)).await.expect("first slot");
        let _a2 = limiter.acquire(tenant(1)).await.expect("second slot");
        assert!(matches!(limiter.acquire(tenant(1)).await, Err(Error::TenantBusy { .. })), "a third call of A is refused");
        let _b = limiter.acquire(tenant(2)).await.expect("B has slots of its own");
        drop(a1);
        limiter.acquire(tenant(1)).await.expect("a freed slot is A's again");
    }

    #[tokio::test]
    async fn a_short_queue_waits_for_a_slot() {
        let limiter = Arc::new(TenantLimiter::new(1, 1, Duration::from_secs(30)));
        let held = limiter.acquire(tenant(1)).await.expect("slot");
        let waiter = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(tenant(1)).await.map(|_| ()) }
        });
        // Let the waiter queue, then a second waiter finds the queue full.
        while limiter.slots(tenant(1)).queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(limiter.acquire(tenant(1)).await, Err(Error::TenantBusy { .. })), "the queue holds one");
        drop(held);
        waiter.await.expect("task").expect("the queued call gets the freed slot");
    }
}
