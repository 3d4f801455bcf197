//! The price book and rating: writes of prices and pricing policies (each in one transaction that
//! also announces the change on `allot_prices`), estimates, and [`Pricing::rate`], the seam the
//! hot path uses to turn a SKU's usage into credits. Decisions are `allot_domain::pricing`'s.
//!
//! Look-ups are cached in-process ([`cache`]) for [`PRICE_CACHE_TTL_DEFAULT`] and forgotten as
//! soon as the [`listen`] task hears of a write on any replica; a replica that cannot listen still
//! forgets after the TTL. See docs/pricing.md for the bound.
//!
//! Pricing touches no meter and takes no meter lock; writes of one SKU are serialised by an
//! advisory lock of their own.

mod cache;

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_domain::pricing::{
    self as rules, check_price_bounds, ends_at, next_version, validate_policy, validate_unit_prices, Policy, PriceError, PriceVersion, Refusal,
    UnitPrices, Upsert,
};
pub use allot_domain::pricing::{Quantities, Sku};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

use self::cache::{Cache, SkuEntry};
use super::Ctx;
use crate::auth::Principal;
use crate::error::Error;
use crate::ids::TenantId;
use crate::repo::audit::{Audit, Subject};
use crate::repo::prices::{PolicyRecord, PriceRecord};
use crate::repo::{self};

/// How long a cached look-up is trusted when no announcement arrives (the staleness bound when
/// the listener is disconnected).
pub const PRICE_CACHE_TTL_DEFAULT: Duration = Duration::from_secs(5);
/// Versions of one SKU kept in the cache (the newest); older instants are looked up directly.
pub const VERSIONS_CACHED_MAX: usize = 16;
/// The listener's reconnection backoff, doubled after each failure.
pub const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the listener proves its connection alive, and how long it waits for the answer.
pub const LISTEN_HEARTBEAT: Duration = Duration::from_secs(10);
pub const LISTEN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// Usage of a SKU rated in credits: what the ledger records next to the charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rated {
    pub sku: Sku,
    pub quantities: Quantities,
    /// The instant rated (the price version is the one in force then).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Rounded up to a whole credit.
    pub cost_credits: i64,
    /// The price version used; 0 when `defaulted`.
    pub price_version: i64,
    /// The SKU had no price and the tenant's default price was used (counted and logged).
    pub defaulted: bool,
}

/// A new price version to write.
#[derive(Debug, Clone)]
pub struct UpsertPrice {
    pub sku: Sku,
    pub unit_prices: UnitPrices,
    /// `None` = now.
    pub effective_from: Option<OffsetDateTime>,
}

/// A page request of price versions.
#[derive(Debug, Clone)]
pub struct ListPrices {
    pub sku: Option<Sku>,
    pub current_only: bool,
    pub page_size: u32,
    /// The last (sku, version) of the previous page.
    pub after: Option<(Sku, i64)>,
}

/// The price book, the tenant's policy and rating, with cached look-ups.
#[derive(Clone)]
pub struct Pricing {
    ctx: Ctx,
    cache: Arc<Cache>,
}

impl Pricing {
    pub fn new(ctx: Ctx) -> Pricing {
        Pricing::with_cache_ttl(ctx, PRICE_CACHE_TTL_DEFAULT)
    }

    /// A zero TTL disables the cache.
    pub fn with_cache_ttl(ctx: Ctx, ttl: Duration) -> Pricing {
        Pricing { ctx, cache: Arc::new(Cache::new(ttl)) }
    }

    /// Rates usage of `sku` at `at`: the cost in credits, the price version used, and whether the
    /// tenant's default price was used (then counted and logged). Changes nothing.
    ///
    /// For the hot path, map the errors to denials:
    /// - [`Error::PriceUnknown`] → `PRICE_UNKNOWN` (no price in force and the policy refuses: strict,
    ///   high-value pattern, no default price, SKU retired or not yet priced at `at`, or a used
    ///   dimension without a unit price);
    /// - [`Error::PriceAnomaly`] → `PRICE_ANOMALY` (the price lies outside the tenant's bounds);
    /// - [`Error::InvalidArgument`] (field `quantities`) for a cost above 10^15 credits or a quantity
    ///   out of range; anything else (`Unavailable`, `Internal`) is a failure, not a denial.
    ///
    /// A cache hit takes no database connection; a miss takes one briefly from the pool, so call
    /// it before opening the transaction that holds meter locks.
    pub async fn rate(&self, tenant: TenantId, sku: &Sku, quantities: &Quantities, at: OffsetDateTime) -> Result<Rated, Error> {
        let rated = self.rate_quietly(tenant, sku, quantities, at).await;
        match &rated {
            Ok(r) if r.defaulted => {
                metrics::counter!("allot_price_defaulted_total").increment(1);
                tracing::warn!(tenant.id = %tenant, sku = %sku, cost_credits = r.cost_credits, "unpriced sku rated at the default price");
            }
            Err(Error::PriceUnknown { why, .. }) => {
                metrics::counter!("allot_price_refusals_total", "reason" => "unknown").increment(1);
                tracing::info!(tenant.id = %tenant, sku = %sku, why = %why, "unpriced sku refused");
            }
            Err(Error::PriceAnomaly { why, .. }) => {
                metrics::counter!("allot_price_refusals_total", "reason" => "anomaly").increment(1);
                tracing::error!(tenant.id = %tenant, sku = %sku, why = %why, "price anomaly refused");
            }
            _ => {}
        }
        rated
    }

    /// What usage would cost at `at` (default now), without counting it as a rating.
    pub async fn estimate(&self, tenant: TenantId, sku: &Sku, quantities: &Quantities, at: Option<OffsetDateTime>) -> Result<Rated, Error> {
        let at = at.unwrap_or_else(|| self.ctx.clock.now());
        self.rate_quietly(tenant, sku, quantities, at).await
    }

    async fn rate_quietly(&self, tenant: TenantId, sku: &Sku, quantities: &Quantities, at: OffsetDateTime) -> Result<Rated, Error> {
        quantities.validate().map_err(|e| Error::invalid("quantities", e))?;
        let versions = self.versions_at(tenant, sku, at).await?;
        let policy = self.policy_cached(tenant).await?;
        let rating = rules::rate(sku, quantities, at, &versions, &policy.policy).map_err(|refusal| refused(sku, refusal))?;
        Ok(Rated {
            sku: sku.clone(),
            quantities: *quantities,
            at,
            cost_credits: rating.cost_credits,
            price_version: rating.price_version,
            defaulted: rating.defaulted,
        })
    }

    /// The SKU's versions that matter at `at`: from the cache when it covers `at`, else loaded.
    async fn versions_at(&self, tenant: TenantId, sku: &Sku, at: OffsetDateTime) -> Result<Arc<[PriceVersion]>, Error> {
        if let Some(entry) = self.cache.sku(tenant, sku) {
            if entry.covers(at) {
                return Ok(entry.versions);
            }
        }
        let generation = self.cache.generation();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
        let latest = repo::prices::latest(&tx, tenant, sku, VERSIONS_CACHED_MAX as i64).await?;
        let entry = SkuEntry::new(latest, VERSIONS_CACHED_MAX);
        self.cache.put_sku(generation, tenant, sku.clone(), entry.clone());
        if entry.covers(at) {
            return Ok(entry.versions);
        }
        // Older than every cached version: the one in force then, or (none) the newest ones,
        // which are not in force at `at` and say the SKU is known.
        let found = repo::prices::in_force_at(&tx, tenant, sku, at).await?;
        tx.commit().await?;
        match found {
            Some(version) => Ok(Arc::from(vec![version])),
            None => Ok(entry.versions),
        }
    }

    async fn policy_cached(&self, tenant: TenantId) -> Result<Arc<PolicyRecord>, Error> {
        if let Some(policy) = self.cache.policy(tenant) {
            return Ok(policy);
        }
        let generation = self.cache.generation();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
        let policy = Arc::new(repo::prices::policy(&tx, tenant).await?);
        tx.commit().await?;
        self.cache.put_policy(generation, tenant, policy.clone());
        Ok(policy)
    }

    /// Writes a new price version (or nothing, when the latest open-ended version already has
    /// these prices) and returns the version in force from `effective_from`.
    pub async fn upsert_price(&self, actor: &Principal, cmd: UpsertPrice) -> Result<PriceRecord, Error> {
        let tenant = actor.tenant;
        validate_unit_prices(&cmd.unit_prices, false).map_err(|e| Error::invalid("unit_prices", e))?;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        repo::prices::lock_sku(&tx, tenant, &cmd.sku).await?;
        let audit = Audit::begin(&tx, actor, "UpsertPrice", Subject::Price(cmd.sku.as_str())).await?;
        let policy = repo::prices::policy(&tx, tenant).await?;
        check_price_bounds(&cmd.unit_prices, &policy.policy.bounds).map_err(|e| out_of_bounds("unit_prices", e))?;
        let latest = repo::prices::latest(&tx, tenant, &cmd.sku, 1).await?.into_iter().next();
        let version = match next_version(latest.as_ref(), &cmd.unit_prices, cmd.effective_from, now) {
            Ok(Upsert::Unchanged { version }) => version,
            Ok(Upsert::New { version, effective_from }) => {
                for (number, to) in ends_at(&repo::prices::not_ended_by(&tx, tenant, &cmd.sku, effective_from).await?, effective_from) {
                    repo::prices::set_end(&tx, tenant, &cmd.sku, number, to).await?;
                }
                let new = PriceVersion { version, effective_from, effective_to: None, unit_prices: cmd.unit_prices };
                repo::prices::insert(&tx, tenant, &cmd.sku, &new, now).await?;
                repo::prices::notify(&tx, tenant, Some(&cmd.sku)).await?;
                version
            }
            Err(PriceError::InPast) => return Err(Error::invalid("effective_from", PriceError::InPast)),
            Err(e) => return Err(Error::FailedPrecondition(e.to_string())),
        };
        let record = repo::prices::get(&tx, tenant, &cmd.sku, version).await?.ok_or_else(|| Error::Internal("written price not found".into()))?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        self.cache.forget_sku(tenant, &cmd.sku);
        tracing::info!(tenant.id = %tenant, sku = %cmd.sku, price.version = version, "price written");
        Ok(record)
    }

    /// Ends the SKU's price at `at` (default now); returns its latest version. Retiring what is
    /// already retired by then changes nothing.
    pub async fn retire_price(&self, actor: &Principal, sku: &Sku, at: Option<OffsetDateTime>) -> Result<PriceRecord, Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let at = at.unwrap_or(now);
        if at < now {
            return Err(Error::invalid("at", "must not be in the past"));
        }
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        repo::prices::lock_sku(&tx, tenant, sku).await?;
        let latest = repo::prices::latest(&tx, tenant, sku, 1).await?.into_iter().next().ok_or(Error::NotFound { what: "price" })?;
        let audit = Audit::begin(&tx, actor, "RetirePrice", Subject::Price(sku.as_str())).await?;
        let ends = ends_at(&repo::prices::not_ended_by(&tx, tenant, sku, at).await?, at);
        for &(number, to) in &ends {
            repo::prices::set_end(&tx, tenant, sku, number, to).await?;
        }
        if !ends.is_empty() {
            repo::prices::notify(&tx, tenant, Some(sku)).await?;
        }
        let record = repo::prices::get(&tx, tenant, sku, latest.version).await?.ok_or_else(|| Error::Internal("retired price not found".into()))?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        self.cache.forget_sku(tenant, sku);
        Ok(record)
    }

    /// A page of price versions in (sku, version) order, and the next page's token ("" at the end).
    pub async fn list_prices(&self, tenant: TenantId, req: ListPrices) -> Result<(Vec<PriceRecord>, String), Error> {
        let current_at = req.current_only.then(|| self.ctx.clock.now());
        let after = req.after.as_ref().map(|(sku, version)| (sku.as_str(), *version)).unwrap_or(("", 0));
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
        let mut prices = repo::prices::page(&tx, tenant, req.sku.as_ref(), current_at, after, i64::from(req.page_size) + 1).await?;
        tx.commit().await?;
        let page_size = usize::try_from(req.page_size).unwrap_or(usize::MAX);
        if prices.len() > page_size {
            prices.truncate(page_size);
            let next = prices.last().map(|p| page_token(&p.sku, p.version.version)).unwrap_or_default();
            return Ok((prices, next));
        }
        Ok((prices, String::new()))
    }

    /// The tenant's policy, read through (not from the cache).
    pub async fn policy(&self, tenant: TenantId) -> Result<PolicyRecord, Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
        let policy = repo::prices::policy(&tx, tenant).await?;
        tx.commit().await?;
        Ok(policy)
    }

    /// Replaces the tenant's policy. Prices already written are not re-checked against new bounds
    /// here; a rating outside them is refused as PRICE_ANOMALY.
    pub async fn update_policy(&self, actor: &Principal, policy: Policy) -> Result<PolicyRecord, Error> {
        let tenant = actor.tenant;
        validate_policy(&policy).map_err(|e| match e {
            PriceError::OutOfBounds { .. } => out_of_bounds("policy.default_unit_prices", e),
            PriceError::BadBounds(d) => Error::invalid(format!("policy.bounds[{d}]"), e),
            PriceError::TooManyPatterns => Error::invalid("policy.high_value_sku_patterns", e),
            other => Error::invalid("policy.default_unit_prices", other),
        })?;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let audit = Audit::begin(&tx, actor, "UpdatePricingPolicy", Subject::PricingPolicy).await?;
        let version = repo::prices::save_policy(&tx, tenant, &policy, now).await?;
        repo::prices::notify(&tx, tenant, None).await?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        self.cache.forget_policy(tenant);
        tracing::info!(tenant.id = %tenant, policy.version = version, "pricing policy written");
        Ok(PolicyRecord { policy, version, updated_at: Some(now) })
    }
}

/// The token of the page after (sku, version): SKUs cannot contain a space.
pub fn page_token(sku: &Sku, version: i64) -> String {
    format!("{} {version}", sku.as_str())
}

fn refused(sku: &Sku, refusal: Refusal) -> Error {
    match refusal {
        Refusal::Unknown(why) => Error::PriceUnknown { sku: sku.to_string(), why: why.to_string() },
        Refusal::DimensionUnpriced(d) => Error::PriceUnknown { sku: sku.to_string(), why: format!("{d} has no unit price") },
        Refusal::Anomaly(e) => Error::PriceAnomaly { sku: sku.to_string(), why: e.to_string() },
        Refusal::TooLarge => Error::invalid("quantities", Refusal::TooLarge),
    }
}

fn out_of_bounds(field: &str, e: PriceError) -> Error {
    match e {
        PriceError::OutOfBounds { dimension, .. } => Error::PriceOutOfBounds { field: format!("{field}[{dimension}]"), description: e.to_string() },
        other => Error::invalid(field, other),
    }
}

/// Keeps this replica's cache in step with writes on every replica: LISTENs on `allot_prices`
/// over a connection of its own, forgets what each announcement names, and on every (re)connect
/// forgets everything (announcements may have been missed). Reconnects with backoff; a heartbeat
/// detects a silently dead connection. Runs until `shutdown`.
pub async fn listen(pricing: Pricing, database_url: String, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    loop {
        let started = Instant::now();
        match listen_once(&pricing.cache, &database_url, &mut shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, backoff_ms = backoff.as_millis() as u64, "price listener disconnected, cached prices expire by ttl")
            }
        }
        if started.elapsed() > LISTEN_BACKOFF_MAX {
            backoff = LISTEN_BACKOFF_MIN;
        }
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 4));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// One connection's life: `Ok` on shutdown, `Err` when the connection fails.
async fn listen_once(cache: &Arc<Cache>, database_url: &str, shutdown: &mut watch::Receiver<bool>) -> Result<(), String> {
    if *shutdown.borrow() {
        return Ok(());
    }
    let mut config: tokio_postgres::Config = database_url.parse().map_err(|e| format!("database url: {e}"))?;
    config.application_name("allot-price-listener");
    config.connect_timeout(LISTEN_HEARTBEAT_TIMEOUT);
    let (client, mut connection) = tokio::select! {
        connected = config.connect(tokio_postgres::NoTls) => connected.map_err(|e| e.to_string())?,
        _ = shutdown.changed() => return Ok(()),
    };
    let announcements = cache.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => announcements.apply(n.payload()),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_owned()
    });
    let listening = async {
        let statement = format!("LISTEN {}", repo::prices::CHANNEL);
        let listen = client.batch_execute(&statement);
        tokio::time::timeout(LISTEN_HEARTBEAT_TIMEOUT, listen).await.map_err(|_| "LISTEN timed out".to_owned())?.map_err(|e| e.to_string())?;
        cache.clear();
        tracing::info!("price listener connected");
        let mut heartbeat = tokio::time::interval(LISTEN_HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(LISTEN_HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err("heartbeat timed out".to_owned()),
                    }
                }
            }
        }
    };
    let result = tokio::select! {
        result = listening => result,
        ended = &mut driver => Err(ended.unwrap_or_else(|e| format!("listener task: {e}"))),
    };
    driver.abort();
    result
}
