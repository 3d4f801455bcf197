//! The plan book: what batches of checks and debits read of a tenant's configuration — fair-use
//! settings, the free plan, plan headers, meter terms and soft caps — kept in process at the
//! tenant's configuration version.
//!
//! `tenants.config_version` moves with every write to those tables, in the writer's transaction
//! (a trigger, migration V14). A batch reads the version in its own transaction, with its first
//! statements, and takes from the book only what was stored at that same version; what is
//! missing it reads in that transaction and stores at that version. So a cached answer is exactly
//! what the batch's transaction would have read, on any replica, with no notification to wait
//! for. A READ COMMITTED batch (debits) sees each statement's own snapshot, so a write may commit
//! between its version read and its configuration reads: what it read is stored only if the
//! version, read again after them, has not moved (no write committed in between, so every read
//! saw that version's configuration); otherwise it is used by that batch alone.
//!
//! Bounded: at most [`TENANTS_MAX`] tenants (one is dropped to make room for another) and
//! [`ENTRIES_MAX`] plans, meter terms and soft-cap lists per tenant (its entry is emptied when
//! full: meter names come from requests).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use allot_domain::escalation::SoftCap;

use crate::error::Error;
use crate::ids::TenantId;
use crate::repo::fair_use::Settings;
use crate::repo::plans::{MeterTerms, PlanHeader};
use crate::repo::{self, Tx};

/// Most tenants in the book.
pub const TENANTS_MAX: usize = 1_000;
/// Most entries (plan headers, meter terms, plans' soft caps) kept for one tenant.
pub const ENTRIES_MAX: usize = 4_096;

/// A meter of a plan: `(plan, meter)`.
pub type PlanMeter = (String, String);
/// Soft caps as `(plan, meter, cap)`, in `(plan, meter, window)` order.
pub type SoftCaps = Vec<(String, String, SoftCap)>;

/// What every batch needs before it knows its accounts' plans.
#[derive(Debug, Clone)]
pub struct Base {
    pub settings: Settings,
    pub free_plan: Option<PlanHeader>,
    /// The headers of the plans asked for that exist.
    pub headers: HashMap<String, PlanHeader>,
}

/// One tenant's configuration at one version, as far as batches have read it. A `None` inside
/// an entry is an answer too: the plan or meter does not exist.
#[derive(Default)]
struct Book {
    version: i64,
    settings: Option<Settings>,
    free_plan: Option<Option<PlanHeader>>,
    headers: HashMap<String, Option<PlanHeader>>,
    terms: HashMap<PlanMeter, Option<MeterTerms>>,
    caps: HashMap<String, Vec<(String, SoftCap)>>,
}

impl Book {
    fn entries(&self) -> usize {
        self.headers.len() + self.terms.len() + self.caps.len()
    }
}

/// Every tenant's book, shared by the service's clones.
#[derive(Default)]
pub struct PlanBook {
    books: Mutex<HashMap<TenantId, Book>>,
}

impl PlanBook {
    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, Book>> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The base at `version` with the headers of `plans`, read through the book.
    pub async fn base(&self, tx: &Tx<'_>, tenant: TenantId, version: i64, plans: &[&str]) -> Result<Base, Error> {
        if let Some(base) = self.cached_base(tenant, version, plans) {
            return Ok(base);
        }
        let headers = async {
            match plans.is_empty() {
                true => Ok(Vec::new()),
                false => repo::plans::headers(tx, tenant, plans).await,
            }
        };
        let (settings, free_plan, headers) =
            futures::try_join!(repo::fair_use::settings(tx, tenant), repo::plans::free_default(tx, tenant), headers)?;
        let base = Base { settings, free_plan, headers: headers.into_iter().map(|h| (h.id.clone(), h)).collect() };
        self.store_if_unmoved(tx, tenant, version, |book| {
            book.settings = Some(base.settings.clone());
            book.free_plan = Some(base.free_plan.clone());
            for plan in plans {
                book.headers.insert((*plan).to_owned(), base.headers.get(*plan).cloned());
            }
        })
        .await?;
        Ok(base)
    }

    /// The terms of `pairs` (a pair the plan does not list is absent) and the soft caps of
    /// `plans` at `version`, read through the book.
    pub async fn terms(
        &self,
        tx: &Tx<'_>,
        tenant: TenantId,
        version: i64,
        pairs: &[(&str, &str)],
        plans: &[&str],
    ) -> Result<(HashMap<PlanMeter, MeterTerms>, SoftCaps), Error> {
        if let Some(found) = self.cached_terms(tenant, version, pairs, plans) {
            return Ok(found);
        }
        let (terms, caps) = futures::try_join!(repo::plans::meter_terms_many(tx, tenant, pairs), repo::fair_use::soft_caps_of(tx, tenant, plans))?;
        self.store_if_unmoved(tx, tenant, version, |book| {
            for (plan, meter) in pairs {
                let pair = ((*plan).to_owned(), (*meter).to_owned());
                let found = terms.get(&pair).copied();
                book.terms.insert(pair, found);
            }
            for plan in plans {
                let of_plan = caps.iter().filter(|(p, _, _)| p == plan).map(|(_, meter, cap)| (meter.clone(), *cap)).collect();
                book.caps.insert((*plan).to_owned(), of_plan);
            }
        })
        .await?;
        Ok((terms, caps))
    }

    /// The fair-use settings the book holds for `tenant`, with their version: a batch may start
    /// reads that need them before it knows the current version, and redo them if it differs.
    pub fn settings_hint(&self, tenant: TenantId) -> Option<(i64, Settings)> {
        let books = self.lock();
        let book = books.get(&tenant)?;
        book.settings.clone().map(|settings| (book.version, settings))
    }

    /// Whether a plan of `tenant` rate-caps `meter`, as far as the book knows (any version): such
    /// a check or debit is decided alone after a batch read it, so a lone one goes alone at once.
    /// Only a hint for choosing a path: a wrong answer costs time, never correctness.
    pub fn may_rate_cap(&self, tenant: TenantId, meter: &str) -> bool {
        let books = self.lock();
        books.get(&tenant).is_some_and(|book| book.terms.iter().any(|((_, m), terms)| m == meter && terms.is_some_and(|t| t.rate.is_some())))
    }

    /// The configuration version the book holds for `tenant`, if any.
    pub fn version_of(&self, tenant: TenantId) -> Option<i64> {
        self.lock().get(&tenant).map(|book| book.version)
    }

    fn cached_base(&self, tenant: TenantId, version: i64, plans: &[&str]) -> Option<Base> {
        let books = self.lock();
        let book = books.get(&tenant).filter(|b| b.version == version)?;
        let mut headers = HashMap::with_capacity(plans.len());
        for plan in plans {
            if let Some(header) = book.headers.get(*plan)? {
                headers.insert(header.id.clone(), header.clone());
            }
        }
        Some(Base { settings: book.settings.clone()?, free_plan: book.free_plan.clone()?, headers })
    }

    fn cached_terms(
        &self,
        tenant: TenantId,
        version: i64,
        pairs: &[(&str, &str)],
        plans: &[&str],
    ) -> Option<(HashMap<PlanMeter, MeterTerms>, SoftCaps)> {
        let books = self.lock();
        let book = books.get(&tenant).filter(|b| b.version == version)?;
        let mut terms = HashMap::with_capacity(pairs.len());
        for (plan, meter) in pairs {
            let pair = ((*plan).to_owned(), (*meter).to_owned());
            if let Some(found) = *book.terms.get(&pair)? {
                terms.insert(pair, found);
            }
        }
        // `plans` is sorted and each plan's caps are in (meter, window) order.
        let mut caps = Vec::new();
        for plan in plans {
            caps.extend(book.caps.get(*plan)?.iter().map(|(meter, cap)| ((*plan).to_owned(), meter.clone(), *cap)));
        }
        Some((terms, caps))
    }

    /// Stores what `tx` read after it read `version`, if the version has not moved since (read
    /// again now, after those reads: they all saw `version`'s configuration). One more round trip,
    /// on a miss only.
    async fn store_if_unmoved(&self, tx: &Tx<'_>, tenant: TenantId, version: i64, fill: impl FnOnce(&mut Book)) -> Result<(), Error> {
        if repo::tenants::config_version(tx, tenant).await? == version {
            self.store(tenant, version, fill);
        }
        Ok(())
    }

    /// Stores what was read at `version`: dropped when the book already holds a later version (the
    /// reader's view is older), and the tenant's entry started afresh at a later one.
    fn store(&self, tenant: TenantId, version: i64, fill: impl FnOnce(&mut Book)) {
        let mut books = self.lock();
        if !books.contains_key(&tenant) && books.len() >= TENANTS_MAX {
            // Any one tenant makes room: its next batch reads its configuration again.
            let dropped = *books.keys().next().expect("the book is full");
            books.remove(&dropped);
        }
        let book = books.entry(tenant).or_default();
        if book.version > version {
            return;
        }
        if book.version < version || book.entries() >= ENTRIES_MAX {
            *book = Book { version, ..Book::default() };
        }
        fill(book);
        debug_assert_eq!(book.version, version, "a book holds one version");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_domain::plan::Scope;

    fn tenant(n: u128) -> TenantId {
        TenantId(uuid::Uuid::from_u128(n))
    }

    fn header(id: &str) -> PlanHeader {
        PlanHeader { id: id.to_owned(), tier: "pro".to_owned(), scope: Scope::User }
    }

    fn put_base(book: &PlanBook, tenant: TenantId, version: i64, plan: &str) {
        book.store(tenant, version, |b| {
            b.settings = Some(Settings::default());
            b.free_plan = Some(None);
            b.headers.insert(plan.to_owned(), Some(header(plan)));
        });
    }

    #[test]
    fn an_entry_serves_only_its_own_version() {
        let book = PlanBook::default();
        put_base(&book, tenant(1), 3, "pro");
        assert!(book.cached_base(tenant(1), 3, &["pro"]).is_some_and(|b| b.headers.contains_key("pro")));
        assert!(book.cached_base(tenant(1), 4, &["pro"]).is_none(), "a later version misses");
        assert!(book.cached_base(tenant(1), 2, &["pro"]).is_none(), "an earlier version misses");
        assert!(book.cached_base(tenant(1), 3, &["team"]).is_none(), "a plan never read misses");
        assert!(book.cached_base(tenant(2), 3, &["pro"]).is_none(), "another tenant's book is its own");

        // What an older view read is not stored over a later version.
        book.store(tenant(1), 2, |b| b.settings = None);
        assert!(book.cached_base(tenant(1), 3, &["pro"]).is_some());
        // A later version starts the entry afresh.
        book.store(tenant(1), 5, |b| {
            b.headers.insert("team".to_owned(), None);
        });
        assert!(book.cached_base(tenant(1), 3, &["pro"]).is_none());
        assert!(book.cached_base(tenant(1), 5, &["team"]).is_none(), "settings were not read at 5");
    }

    #[test]
    fn absent_plans_and_meters_are_remembered_as_absent() {
        let book = PlanBook::default();
        put_base(&book, tenant(1), 1, "pro");
        book.store(tenant(1), 1, |b| {
            b.headers.insert("gone".to_owned(), None);
            b.terms.insert(("pro".to_owned(), "tokens".to_owned()), None);
            b.caps.insert("pro".to_owned(), vec![("tokens".to_owned(), SoftCap { window_ms: 60_000, threshold_credits: 5 })]);
        });
        let base = book.cached_base(tenant(1), 1, &["gone", "pro"]).expect("both were read");
        assert_eq!(base.headers.keys().collect::<Vec<_>>(), vec!["pro"]);
        let (terms, caps) = book.cached_terms(tenant(1), 1, &[("pro", "tokens")], &["pro"]).expect("read");
        assert!(terms.is_empty(), "the plan does not list the meter");
        assert_eq!(caps, vec![("pro".to_owned(), "tokens".to_owned(), SoftCap { window_ms: 60_000, threshold_credits: 5 })]);
        assert!(book.cached_terms(tenant(1), 1, &[("pro", "images")], &["pro"]).is_none());
    }

    #[test]
    fn a_rate_cap_of_any_plan_is_a_hint_for_its_meter() {
        let book = PlanBook::default();
        assert!(!book.may_rate_cap(tenant(1), "requests"), "nothing known");
        let capped =
            MeterTerms { rate: Some(crate::repo::plans::RateCap { limit_per_minute: 30, burst: 30, fail_open: true }), ..MeterTerms::UNLISTED };
        book.store(tenant(1), 1, |b| {
            b.terms.insert(("free".to_owned(), "requests".to_owned()), Some(capped));
            b.terms.insert(("free".to_owned(), "tokens".to_owned()), Some(MeterTerms::UNLISTED));
            b.terms.insert(("pro".to_owned(), "images".to_owned()), None);
        });
        assert!(book.may_rate_cap(tenant(1), "requests"));
        assert!(!book.may_rate_cap(tenant(1), "tokens"));
        assert!(!book.may_rate_cap(tenant(1), "images"));
        assert!(!book.may_rate_cap(tenant(2), "requests"), "another tenant's plans are not its own");
    }

    #[test]
    fn the_book_stays_bounded() {
        let book = PlanBook::default();
        for n in 0..TENANTS_MAX as u128 {
            put_base(&book, tenant(n), 1, "pro");
        }
        assert_eq!(book.lock().len(), TENANTS_MAX);
        put_base(&book, tenant(u128::MAX), 1, "pro");
        assert_eq!(book.lock().len(), TENANTS_MAX, "a tenant past the limit takes another's place");
        assert!(book.version_of(tenant(u128::MAX)).is_some());

        book.store(tenant(7), 1, |b| {
            for n in 0..ENTRIES_MAX {
                b.headers.insert(format!("plan-{n}"), None);
            }
        });
        put_base(&book, tenant(7), 1, "pro");
        let entries = book.lock()[&tenant(7)].entries();
        assert_eq!(entries, 1, "a full entry is started afresh");
    }
}
