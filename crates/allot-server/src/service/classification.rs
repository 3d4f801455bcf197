//! The misuse classifier's runs and the fair-use controls.
//!
//! `request` takes a Redis cooldown lock (`SET key token@ends NX PX ttl GET`) before anything
//! else: while the lock is held the answer is COOLDOWN, with the end the holder wrote into the
//! lock's value, at the cost of one Redis command and no database read. If Redis cannot answer,
//! the answer is COOLDOWN too (fail closed: never a stampede of expensive runs). With the lock
//! taken, a free-plan account whose credit is exhausted gets a synthetic score of 1.0 and a
//! shorter cooldown instead of a run (derived from Allot's own ledger; if that look-up fails the
//! account is treated as not exhausted). Otherwise the caller gets a single-use ticket bound to
//! the account. Nothing privilege-bearing comes from the payload. A lock found held is
//! remembered on this server for a second at most (`held_cooldowns`): the account's requests
//! meanwhile are answered COOLDOWN without Redis.

use std::time::Duration;

use allot_domain::escalation::{is_violation, Stage, SCORE_MAX_MILLI};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use super::fair_use::{self, FairUseView, Standing};
use super::held_cooldowns::HeldCooldowns;
use super::in_force;
use super::meter_session::MeterSession;
use super::Ctx;
use crate::auth::Principal;
use crate::error::Error;
use crate::ids::{AccountId, Meter, PlanId, TenantId};
use crate::repo::audit::{Audit, Subject};
use crate::repo::fair_use::{ClassificationRow, Settings};
use crate::repo::{self, Tx};

/// Gives a lock a new TTL (`ARGV[2]` ms) and value (`ARGV[3]`, naming the new end) only while
/// its value is still its owner's (`ARGV[1]`).
const EXTEND_IF_OWNER: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2]) return 1 else return 0 end";
/// Deletes a lock only while its value is still its owner's (`ARGV[1]`).
const RELEASE_IF_OWNER: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Most classifications listed in an account's history.
pub const HISTORY_MAX: i64 = 50;

/// A cooldown lock this request took: its key, its owner's token and the value it was taken with.
struct Lock<'a> {
    key: &'a str,
    token: &'a Uuid,
    value: &'a str,
}

/// A cooldown lock's value: its owner's token and the end of the cooldown in Unix milliseconds,
/// so that a request finding the lock held learns when it ends from the same answer.
fn lock_value(token: &Uuid, ends_at: OffsetDateTime) -> String {
    format!("{token}@{}", ends_at.unix_timestamp_nanos() / 1_000_000)
}

/// The answer while a cooldown lock is held (or Redis cannot tell).
fn cooldown(ends_at: Option<OffsetDateTime>) -> RequestOutcome {
    RequestOutcome { verdict: Verdict::Cooldown { ends_at }, stage: Stage::None, reason: "a classifier run happened recently".into() }
}

/// The end a held lock's value names; `None` for a value that names none.
fn lock_ends_at(value: &str) -> Option<OffsetDateTime> {
    let (_, ms) = value.rsplit_once('@')?;
    let ms: i64 = ms.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// What to tell the caller about a classifier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Run { ticket: Uuid, expires_at: OffsetDateTime },
    Cooldown { ends_at: Option<OffsetDateTime> },
    NotNeeded,
}

#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub verdict: Verdict,
    pub stage: Stage,
    pub reason: String,
}

/// An account's escalation, for GetEscalation.
#[derive(Debug, Clone)]
pub struct Escalation {
    pub stage: Stage,
    pub reason: String,
    pub violations: i64,
    pub exempt: bool,
    pub fair_use: FairUseView,
    pub history: Vec<ClassificationRow>,
}

#[derive(Clone)]
pub struct Classifier {
    ctx: Ctx,
    redis: Option<Client>,
    redis_timeout: Duration,
    /// TTL the lock is taken with before settings are read; adjusted to the tenant's after.
    default_cooldown_ms: i64,
    /// Locks this server found held, answered from memory for a moment.
    held: std::sync::Arc<HeldCooldowns>,
}

impl Classifier {
    pub fn new(ctx: Ctx, redis: Option<Client>, redis_timeout: Duration) -> Classifier {
        Classifier { ctx, redis, redis_timeout, default_cooldown_ms: Settings::default().cooldown_ms, held: Default::default() }
    }

    fn key(tenant: TenantId, account: &AccountId) -> String {
        format!("allot:cooldown:{{{tenant}}}:{account}")
    }

    async fn redis<T>(&self, call: impl std::future::Future<Output = Result<T, fred::error::Error>>) -> Result<T, String> {
        match tokio::time::timeout(self.redis_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("timed out after {} ms", self.redis_timeout.as_millis())),
        }
    }

    /// Takes the cooldown lock; `Err(ends_at)` when it is held (or Redis cannot answer).
    async fn take_lock(&self, lock: &Lock<'_>, now: OffsetDateTime) -> Result<(), Option<OffsetDateTime>> {
        let Some(redis) = &self.redis else {
            tracing::warn!("no redis configured, classifier requests answer cooldown");
            return Err(None);
        };
        // One command (Redis 7.0 or later): `SET NX` takes a free lock and answers nil; a held
        // lock is left alone and its value answered, which names when it ends (best effort: a
        // value without an end, or an end already past on this clock, gives an answer with none).
        let set = redis.set::<Option<String>, _, _>(lock.key, lock.value, Some(Expiration::PX(self.default_cooldown_ms)), Some(SetOptions::NX), true);
        match self.redis(set).await {
            Ok(None) => Ok(()),
            Ok(Some(held)) => Err(lock_ends_at(&held).filter(|ends_at| *ends_at > now)),
            Err(err) => {
                crate::telemetry::count_cooldown_store_failure();
                tracing::warn!(error = %err, "cooldown store unavailable, failing closed");
                Err(None)
            }
        }
    }

    /// Frees `lock` while its value is still this request's.
    async fn release(&self, lock: &Lock<'_>) {
        self.owned(RELEASE_IF_OWNER, lock.key, vec![lock.value.to_owned()]).await;
    }

    /// Gives `lock` `ttl_ms` from now, its value naming the new end, while its value is still this
    /// request's.
    async fn extend(&self, lock: &Lock<'_>, ttl_ms: i64) {
        let extended = lock_value(lock.token, self.ctx.clock.now() + time::Duration::milliseconds(ttl_ms));
        self.owned(EXTEND_IF_OWNER, lock.key, vec![lock.value.to_owned(), ttl_ms.to_string(), extended]).await;
    }

    /// Runs `script` on the lock `key` with `args` (the owner's value first).
    async fn owned(&self, script: &str, key: &str, args: Vec<String>) {
        if let Some(redis) = &self.redis {
            let script = Script::from_lua(script);
            let call = script.evalsha_with_reload::<i64, _, _>(redis, vec![key.to_owned()], args);
            if let Err(err) = self.redis(call).await {
                tracing::warn!(error = %err, "cooldown lock update failed");
            }
        }
    }

    #[tracing::instrument(name = "classifier.request", skip_all, fields(tenant.id = %tenant, account.id = %account))]
    pub async fn request(&self, tenant: TenantId, account: &AccountId) -> Result<RequestOutcome, Error> {
        let now = self.ctx.clock.now();
        // One instant for the look-up and for remembering, taken before Redis is asked: what is
        // remembered never outlasts the remaining cooldown measured from `now`.
        let at = std::time::Instant::now();
        let key = Self::key(tenant, account);
        if let Some(ends_at) = self.held.ends_at(&key, at).filter(|ends_at| *ends_at > now) {
            crate::telemetry::count_cooldown_from_memory();
            return Ok(cooldown(Some(ends_at)));
        }
        // Redis and, for a run, PostgreSQL: kilobytes of future, boxed so that this one stays
        // small for the answer from memory above, the common case while a lock is held (a future
        // is copied whole each time it moves: docs/benchmarks.md, findings 48 and 65).
        Box::pin(self.request_remote(tenant, account, key, now, at)).await
    }

    /// The rest of [`Classifier::request`] once memory has no answer: takes the lock in Redis or
    /// learns how long it is held, and runs the classifier when it got the lock.
    async fn request_remote(
        &self,
        tenant: TenantId,
        account: &AccountId,
        key: String,
        now: OffsetDateTime,
        at: std::time::Instant,
    ) -> Result<RequestOutcome, Error> {
        let token = Uuid::new_v4();
        let value = lock_value(&token, now + time::Duration::milliseconds(self.default_cooldown_ms));
        let lock = Lock { key: &key, token: &token, value: &value };
        if let Err(ends_at) = self.take_lock(&lock, now).await {
            // Only a lock that names its end in the future is remembered (a failing Redis is not).
            if let Some(end) = ends_at {
                let remaining = Duration::try_from(end - now).unwrap_or_default();
                self.held.remember(&key, end, remaining, at);
            }
            return Ok(cooldown(ends_at));
        }
        let exhausted = self.free_and_exhausted(tenant, account, now).await;
        match self.decide_run(tenant, account, exhausted, &lock, now).await {
            Ok(outcome) => Ok(outcome),
            Err(err) => {
                // Nothing was recorded: free the lock so the account is not left in a cooldown
                // without a run.
                self.release(&lock).await;
                Err(err)
            }
        }
    }

    async fn decide_run(
        &self,
        tenant: TenantId,
        account: &AccountId,
        exhausted: bool,
        lock: &Lock<'_>,
        now: OffsetDateTime,
    ) -> Result<RequestOutcome, Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let mut standing = Standing::load(&tx, tenant, account, now).await?;
        if !standing.enforced() {
            tx.commit().await?;
            self.release(lock).await;
            return Ok(RequestOutcome {
                verdict: Verdict::NotNeeded,
                stage: Stage::None,
                reason: "fair use is not enforced for this account".into(),
            });
        }
        let settings = standing.settings.clone();
        let outcome = if exhausted {
            let reason = "credit exhausted on the free plan: synthetic score 1.0".to_owned();
            record(&tx, tenant, account, &mut standing, SCORE_MAX_MILLI, Vec::new(), true, &reason, now).await?;
            RequestOutcome { verdict: Verdict::NotNeeded, stage: standing.stage(), reason }
        } else {
            let ticket = Uuid::new_v4();
            let expires_at = now + time::Duration::milliseconds(settings.ticket_ttl_ms);
            repo::fair_use::insert_ticket(&tx, tenant, ticket, account, now, expires_at).await?;
            let payload = serde_json::json!({ "ticket_expires_at": expires_at.unix_timestamp() });
            repo::outbox::append(&tx, tenant, "classification_requested", account, payload, now).await?;
            RequestOutcome { verdict: Verdict::Run { ticket, expires_at }, stage: standing.stage(), reason: "run the classifier".into() }
        };
        tx.commit().await?;
        let ttl_ms = if exhausted { settings.exhausted_cooldown_ms } else { settings.cooldown_ms };
        if ttl_ms != self.default_cooldown_ms {
            self.extend(lock, ttl_ms).await;
        }
        Ok(outcome)
    }

    /// Whether the account is on the free plan with no credit left on any meter it has used.
    /// A failed look-up counts as not exhausted (fail open), logged and counted.
    async fn free_and_exhausted(&self, tenant: TenantId, account: &AccountId, now: OffsetDateTime) -> bool {
        match self.exhausted_lookup(tenant, account, now).await {
            Ok(exhausted) => exhausted,
            Err(err) => {
                crate::telemetry::count_exhaustion_lookup_failure();
                tracing::warn!(error = %err, account.id = %account, "credit look-up failed, treating the account as not exhausted");
                false
            }
        }
    }

    async fn exhausted_lookup(&self, tenant: TenantId, account: &AccountId, now: OffsetDateTime) -> Result<bool, Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::Snapshot).await?;
        let payer = in_force::resolve(&tx, tenant, account, now).await?;
        if payer.entitled || payer.plan_id.is_none() {
            return Ok(false);
        }
        let meters = repo::balances::list_meters(&tx, tenant, &payer.payer).await?;
        let mut exhausted = !meters.is_empty();
        for meter in &meters {
            let session = MeterSession::snapshot(&tx, tenant, &payer, meter, now).await?;
            if session.state.available_credits(now).is_none_or(|a| a > 0) {
                exhausted = false;
                break;
            }
        }
        tx.commit().await?;
        Ok(exhausted)
    }

    /// Records the classifier's result for a single-use ticket.
    pub async fn submit(&self, tenant: TenantId, ticket: Uuid, score_milli: u32, labels: Vec<String>) -> Result<(bool, Stage), Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let (account, expires_at, used) = repo::fair_use::lock_ticket(&tx, tenant, ticket).await?.ok_or(Error::NotFound { what: "ticket" })?;
        if used {
            return Err(Error::TicketSpent("already used"));
        }
        if expires_at <= now {
            return Err(Error::TicketSpent("expired"));
        }
        repo::fair_use::use_ticket(&tx, tenant, ticket, now).await?;
        let account = AccountId::parse(&account).map_err(|e| Error::Internal(format!("stored account: {e}")))?;
        let mut standing = Standing::load(&tx, tenant, &account, now).await?;
        let violation = is_violation(score_milli, standing.settings.gate_score_milli);
        let reason =
            format!("classifier score {:.3} (gate {:.3})", f64::from(score_milli) / 1000.0, f64::from(standing.settings.gate_score_milli) / 1000.0);
        record(&tx, tenant, &account, &mut standing, score_milli, labels, false, &reason, now).await?;
        tx.commit().await?;
        Ok((violation, standing.stage()))
    }

    pub async fn escalation(&self, tenant: TenantId, account: &AccountId) -> Result<Escalation, Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
        let standing = Standing::load(&tx, tenant, account, now).await?;
        let payer = in_force::resolve(&tx, tenant, account, now).await?;
        let caps = fair_use::triggered_caps(&tx, tenant, account, payer.plan_id.as_deref(), None, now).await?;
        let reason = repo::fair_use::stored_reason(&tx, tenant, account).await?;
        let history = repo::fair_use::history(&tx, tenant, account, HISTORY_MAX).await?;
        tx.commit().await?;
        Ok(Escalation {
            stage: standing.stage(),
            reason,
            violations: standing.violations,
            exempt: standing.exempt,
            fair_use: standing.view(caps),
            history,
        })
    }

    pub async fn settings(&self, tenant: TenantId) -> Result<Settings, Error> {
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let settings = repo::fair_use::settings(&tx, tenant).await?;
        tx.commit().await?;
        Ok(settings)
    }

    /// Replaces the settings, auditing before and after.
    pub async fn update_settings(&self, actor: &Principal, settings: Settings) -> Result<Settings, Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let audit = Audit::begin(&tx, actor, "UpdateSettings", Subject::FairUseSettings).await?;
        let before = repo::fair_use::settings(&tx, tenant).await?;
        repo::fair_use::save_settings(&tx, tenant, &settings, now).await?;
        repo::fair_use::audit(&tx, tenant, "update_settings", audit_json(&before), audit_json(&settings), now).await?;
        let stored = repo::fair_use::settings(&tx, tenant).await?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        Ok(stored)
    }

    pub async fn set_exempt(&self, actor: &Principal, account: &AccountId, exempt: bool) -> Result<bool, Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        let audit = Audit::begin(&tx, actor, "SetExempt", Subject::Exempt(account.as_str())).await?;
        if repo::fair_use::set_exempt(&tx, tenant, account, exempt).await? {
            let action = if exempt { "exempt" } else { "unexempt" };
            repo::fair_use::audit(
                &tx,
                tenant,
                action,
                serde_json::json!({ "account_id": account.as_str(), "exempt": !exempt }),
                serde_json::json!({ "account_id": account.as_str(), "exempt": exempt }),
                now,
            )
            .await?;
        }
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        Ok(exempt)
    }

    pub async fn set_soft_caps(&self, actor: &Principal, plan: &PlanId, caps: Vec<(Meter, allot_domain::escalation::SoftCap)>) -> Result<(), Error> {
        let tenant = actor.tenant;
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = crate::db::begin(&mut client, tenant).await?;
        if repo::plans::header(&tx, tenant, plan.as_str()).await?.is_none() {
            return Err(Error::NotFound { what: "plan" });
        }
        let audit = Audit::begin(&tx, actor, "SetSoftCaps", Subject::SoftCaps(plan.as_str())).await?;
        let before: Vec<serde_json::Value> = repo::fair_use::soft_caps(&tx, tenant, plan.as_str(), None)
            .await?
            .into_iter()
            .map(|(m, c)| serde_json::json!({ "meter": m, "window_ms": c.window_ms, "threshold_credits": c.threshold_credits }))
            .collect();
        repo::fair_use::replace_soft_caps(&tx, tenant, plan.as_str(), &caps).await?;
        let after: Vec<serde_json::Value> = caps
            .iter()
            .map(|(m, c)| serde_json::json!({ "meter": m.as_str(), "window_ms": c.window_ms, "threshold_credits": c.threshold_credits }))
            .collect();
        repo::fair_use::audit(
            &tx,
            tenant,
            "set_soft_caps",
            serde_json::json!({ "plan_id": plan.as_str(), "caps": before }),
            serde_json::json!({ "plan_id": plan.as_str(), "caps": after }),
            now,
        )
        .await?;
        audit.finish(&tx, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn audit_json(settings: &Settings) -> serde_json::Value {
    let mut value = serde_json::to_value(settings).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("warning_after".into(), settings.ladder.warning_after.into());
        object.insert("throttle_after".into(), settings.ladder.throttle_after.into());
        object.insert("restrict_after".into(), settings.ladder.restrict_after.into());
    }
    value
}

/// Stores a classification, counts a violation, moves the stage and writes the events.
#[allow(clippy::too_many_arguments)]
async fn record(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    standing: &mut Standing,
    score_milli: u32,
    labels: Vec<String>,
    synthetic: bool,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let violation = is_violation(score_milli, standing.settings.gate_score_milli);
    let row = ClassificationRow { score_milli, labels: labels.clone(), synthetic, violation, created_at: now };
    repo::fair_use::insert_classification(tx, tenant, account, &row).await?;
    if violation {
        standing.violations += 1;
    }
    // The stage row before the outbox counter, as on the decision path (one lock order).
    standing.sync(tx, tenant, account, if violation { reason } else { "" }, now).await?;
    let payload = serde_json::json!({ "score_milli": score_milli, "labels": labels, "synthetic": synthetic, "violation": violation });
    repo::outbox::append(tx, tenant, "classification_recorded", account, payload, now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_value_names_its_owner_and_its_end_to_the_millisecond() {
        let token = Uuid::new_v4();
        let ends_at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).expect("time");
        let value = lock_value(&token, ends_at);
        assert_eq!(value, format!("{token}@1795000000123"));
        assert_eq!(lock_ends_at(&value), Some(OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_000_000).expect("time")));
    }

    /// Most bytes a classification request's future may take: it is moved whole into the gRPC
    /// edge's box on every call (12 KB with the Redis and PostgreSQL paths inline).
    const REQUEST_FUTURE_BYTES_MAX: usize = 1_024;

    #[tokio::test]
    async fn a_classification_request_is_a_small_future() {
        // Never polled: nothing is connected.
        let classifier = Classifier::new(Ctx::unconnected(), None, Duration::from_millis(100));
        let account = AccountId::parse("acct").expect("account");
        let request = classifier.request(TenantId(Uuid::from_u128(7)), &account);
        let bytes = std::mem::size_of_val(&request);
        assert!(bytes <= REQUEST_FUTURE_BYTES_MAX, "a classification request's future takes {bytes} bytes");
    }

    #[test]
    fn a_lock_value_without_an_end_names_none() {
        for value in [Uuid::new_v4().to_string(), "x@".into(), "x@soon".into(), "x@99999999999999999999".into(), String::new()] {
            assert_eq!(lock_ends_at(&value), None, "{value:?}");
        }
    }
}
