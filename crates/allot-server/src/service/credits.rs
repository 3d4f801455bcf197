//! The hot path: check, debit, reserve, commit, release and refund. Each mutation is one
//! transaction: lock the meter, replay or decide, persist, store the idempotent outcome, commit.

use allot_domain::charge::{self, Mode};
use allot_domain::ledger::{Bucket, EntryKind};
use allot_domain::refund::{self, Original};
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::idempotent::{self, fingerprint};
use super::meter_session::MeterSession;
use super::outcome::{ChargeOutcome, CheckOutcome, RefundOutcome, ReleaseOutcome, ReserveOutcome};
use super::Ctx;
use crate::error::Error;
use crate::ids::{AccountId, IdempotencyKey, Meter, TenantId};
use crate::repo::holds::{HoldRow, HoldStatus, NewHold};
use crate::repo::ledger::EntryRefs;
use crate::repo::{self, Tx};

#[derive(Debug, Clone)]
pub struct CheckCommand {
    pub account: AccountId,
    pub meter: Meter,
    pub amount_credits: i64,
}

#[derive(Debug, Clone)]
pub struct DebitCommand {
    pub account: AccountId,
    pub meter: Meter,
    pub amount_credits: i64,
    pub mode: Mode,
    pub key: IdempotencyKey,
}

#[derive(Debug, Clone)]
pub struct ReserveCommand {
    pub account: AccountId,
    pub meter: Meter,
    pub amount_credits: i64,
    pub ttl_ms: i64,
    pub key: IdempotencyKey,
}

#[derive(Debug, Clone)]
pub struct CommitCommand {
    pub hold_id: Uuid,
    pub actual_credits: i64,
}

#[derive(Debug, Clone)]
pub struct RefundCommand {
    pub entry_id: Uuid,
    pub amount_credits: i64,
    pub key: IdempotencyKey,
}

/// The credit operations of one server.
#[derive(Clone)]
pub struct Credits {
    ctx: Ctx,
}

/// What a keyed operation did inside its transaction.
enum Keyed<T> {
    /// A stored outcome for the same request: nothing was written.
    Replayed(T),
    /// A new outcome, saved; the transaction still has to store the key and commit.
    Decided(T),
}

impl Credits {
    pub fn new(ctx: Ctx) -> Credits {
        Credits { ctx }
    }

    /// Would the amount be allowed now, as a gate? Reads a consistent snapshot, writes nothing.
    pub async fn check(&self, tenant: TenantId, cmd: CheckCommand) -> Result<CheckOutcome, Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.pool.get().await?;
        let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await?;
        let session = MeterSession::snapshot(&tx, tenant, &cmd.account, &cmd.meter, now).await?;
        let denial = charge::check(&session.state, &session.in_force.policy, cmd.amount_credits, Mode::Gate, now).err().map(|d| session.denial(d));
        let outcome = CheckOutcome { denial, meter: session.view(now) };
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn debit(&self, tenant: TenantId, cmd: DebitCommand) -> Result<ChargeOutcome, Error> {
        let print = fingerprint("debit", &[&cmd.account, &cmd.meter, &cmd.amount_credits, &format!("{:?}", cmd.mode)]);
        self.keyed(tenant, &cmd.key, "debit", print.clone(), |tx, now| {
            let cmd = cmd.clone();
            let print = print.clone();
            Box::pin(async move {
                let mut session = MeterSession::lock(tx, tenant, &cmd.account, &cmd.meter, now, &[]).await?;
                if let Some(replayed) = idempotent::replay(tx, tenant, &cmd.key, "debit", &print).await? {
                    return Ok(Keyed::Replayed(replayed));
                }
                let policy = session.in_force.policy;
                let outcome = match charge::debit(&mut session.state, &policy, cmd.amount_credits, cmd.mode, EntryKind::Debit, now) {
                    Ok(effect) => {
                        let breakdown = effect.breakdown.clone();
                        let refs = EntryRefs { idempotency_key: Some(cmd.key.as_str().to_owned()), ..EntryRefs::default() };
                        let entry_id = session.record(effect, refs);
                        ChargeOutcome { denial: None, entry_id: Some(entry_id), breakdown, meter: session.view(now) }
                    }
                    Err(denial) => {
                        ChargeOutcome { denial: Some(session.denial(denial)), entry_id: None, breakdown: Vec::new(), meter: session.view(now) }
                    }
                };
                session.save(tx, now).await?;
                Ok(Keyed::Decided(outcome))
            })
        })
        .await
    }

    pub async fn reserve(&self, tenant: TenantId, cmd: ReserveCommand) -> Result<ReserveOutcome, Error> {
        let print = fingerprint("reserve", &[&cmd.account, &cmd.meter, &cmd.amount_credits, &cmd.ttl_ms]);
        self.keyed(tenant, &cmd.key, "reserve", print.clone(), |tx, now| {
            let cmd = cmd.clone();
            let print = print.clone();
            Box::pin(async move {
                let mut session = MeterSession::lock(tx, tenant, &cmd.account, &cmd.meter, now, &[]).await?;
                if let Some(replayed) = idempotent::replay(tx, tenant, &cmd.key, "reserve", &print).await? {
                    return Ok(Keyed::Replayed(replayed));
                }
                let policy = session.in_force.policy;
                let outcome = match charge::reserve(&mut session.state, &policy, cmd.amount_credits, now) {
                    Ok(()) => {
                        let hold_id = Uuid::new_v4();
                        let expires_at = now + time::Duration::milliseconds(cmd.ttl_ms);
                        let hold = NewHold { id: hold_id, account: &cmd.account, meter: &cmd.meter, amount_credits: cmd.amount_credits, expires_at };
                        repo::holds::insert(tx, tenant, &hold, now).await?;
                        ReserveOutcome { denial: None, hold_id: Some(hold_id), expires_at: Some(expires_at), meter: session.view(now) }
                    }
                    Err(denial) => ReserveOutcome { denial: Some(session.denial(denial)), hold_id: None, expires_at: None, meter: session.view(now) },
                };
                session.save(tx, now).await?;
                Ok(Keyed::Decided(outcome))
            })
        })
        .await
    }

    /// Settles a hold with the actual amount, at most once. A retry of the same commit gets the
    /// original answer; a denied commit (floor) leaves the hold in place.
    pub async fn commit(&self, tenant: TenantId, cmd: CommitCommand) -> Result<ChargeOutcome, Error> {
        let now = self.ctx.clock.now();
        let print = fingerprint("commit", &[&cmd.hold_id, &cmd.actual_credits]);
        let mut client = self.ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let (mut session, hold) = lock_hold(&tx, tenant, cmd.hold_id, now).await?;
        match hold.status {
            HoldStatus::Committed if hold.settlement_request_sha256.as_deref() == Some(print.as_slice()) => return stored(hold),
            HoldStatus::Committed | HoldStatus::Released => return Err(Error::HoldSettled { status: hold.status.as_str() }),
            HoldStatus::Expired => return Err(Error::HoldExpired),
            HoldStatus::Held if hold.expires_at <= now => return Err(Error::HoldExpired),
            HoldStatus::Held => {}
        }
        let policy = session.in_force.policy;
        let outcome = match charge::commit(&mut session.state, &policy, hold.amount_credits, cmd.actual_credits, now) {
            Ok(effect) => {
                let breakdown = effect.as_ref().map(|e| e.breakdown.clone()).unwrap_or_default();
                let refs = EntryRefs { hold_id: Some(hold.id), ..EntryRefs::default() };
                let entry_id = effect.map(|e| session.record(e, refs));
                let outcome = ChargeOutcome { denial: None, entry_id, breakdown, meter: session.view(now) };
                let response = serde_json::to_value(&outcome).map_err(|e| Error::Internal(format!("outcome: {e}")))?;
                repo::holds::settle(&tx, tenant, hold.id, HoldStatus::Committed, &print, &response, now).await?;
                outcome
            }
            Err(denial) => ChargeOutcome { denial: Some(session.denial(denial)), entry_id: None, breakdown: Vec::new(), meter: session.view(now) },
        };
        session.save(&tx, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Voids a hold. Releasing a hold twice answers the same; releasing an expired hold says so.
    pub async fn release(&self, tenant: TenantId, hold_id: Uuid) -> Result<ReleaseOutcome, Error> {
        let now = self.ctx.clock.now();
        let print = fingerprint("release", &[&hold_id]);
        let mut client = self.ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let (mut session, hold) = lock_hold(&tx, tenant, hold_id, now).await?;
        let outcome = match hold.status {
            HoldStatus::Released => return stored(hold),
            HoldStatus::Committed => return Err(Error::HoldSettled { status: hold.status.as_str() }),
            HoldStatus::Expired => ReleaseOutcome { status: HoldStatus::Expired, meter: session.view(now) },
            HoldStatus::Held if hold.expires_at <= now => ReleaseOutcome { status: HoldStatus::Expired, meter: session.view(now) },
            HoldStatus::Held => {
                session.state.held_credits -= hold.amount_credits;
                let outcome = ReleaseOutcome { status: HoldStatus::Released, meter: session.view(now) };
                let response = serde_json::to_value(&outcome).map_err(|e| Error::Internal(format!("outcome: {e}")))?;
                repo::holds::settle(&tx, tenant, hold.id, HoldStatus::Released, &print, &response, now).await?;
                outcome
            }
        };
        session.save(&tx, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Returns all or part of a debit or commit to the buckets it came from.
    pub async fn refund(&self, tenant: TenantId, cmd: RefundCommand) -> Result<RefundOutcome, Error> {
        let print = fingerprint("refund", &[&cmd.entry_id, &cmd.amount_credits]);
        self.keyed(tenant, &cmd.key, "refund", print.clone(), |tx, now| {
            let cmd = cmd.clone();
            let print = print.clone();
            Box::pin(async move {
                let original = repo::ledger::get(tx, tenant, cmd.entry_id).await?.ok_or(Error::NotFound { what: "ledger entry" })?;
                if !matches!(original.kind, EntryKind::Debit | EntryKind::Commit) {
                    return Err(Error::FailedPrecondition(format!("a {} entry cannot be refunded: only debits and commits", original.kind.as_str())));
                }
                let account = AccountId::parse(&original.account_id).map_err(|e| Error::Internal(format!("stored account: {e}")))?;
                let meter = Meter::parse(&original.meter).map_err(|e| Error::Internal(format!("stored meter: {e}")))?;
                let grant_ids: Vec<Uuid> = original
                    .breakdown
                    .iter()
                    .filter_map(|p| match p.bucket {
                        Bucket::Grant { id, .. } => Some(id),
                        _ => None,
                    })
                    .collect();
                let mut session = MeterSession::lock(tx, tenant, &account, &meter, now, &grant_ids).await?;
                if let Some(replayed) = idempotent::replay(tx, tenant, &cmd.key, "refund", &print).await? {
                    return Ok(Keyed::Replayed(replayed));
                }
                let refunded_credits = repo::ledger::refunded_total(tx, tenant, original.id).await?;
                let effects = refund::refund(
                    &mut session.state,
                    Original { breakdown: &original.breakdown, period: original.period, refunded_credits },
                    cmd.amount_credits,
                    now,
                )
                .map_err(|e| match e {
                    refund::Error::ExceedsRefundable { refundable_credits } => Error::RefundExceedsCharge { refundable_credits },
                    refund::Error::NotACharge => Error::FailedPrecondition("the entry is not a charge".into()),
                    refund::Error::GrantMissing(id) => Error::Internal(format!("grant {id} of a charge is missing")),
                })?;
                let mut effects = effects.into_iter();
                let refund_effect = effects.next().ok_or_else(|| Error::Internal("refund proposed no effect".into()))?;
                let breakdown = refund_effect.breakdown.clone();
                let refs = EntryRefs { refunds_entry_id: Some(original.id), idempotency_key: Some(cmd.key.as_str().to_owned()), hold_id: None };
                let entry_id = session.record(refund_effect, refs);
                for effect in effects {
                    session.record(effect, EntryRefs::default());
                }
                let outcome =
                    RefundOutcome { entry_id, breakdown, refunded_total_credits: refunded_credits + cmd.amount_credits, meter: session.view(now) };
                session.save(tx, now).await?;
                Ok(Keyed::Decided(outcome))
            })
        })
        .await
    }

    /// Runs a keyed operation in one transaction: `decide` locks, replays or decides and saves;
    /// then the outcome is stored under the key and committed. When a concurrent request with
    /// the same key stored first, the outcome is replayed from a fresh transaction.
    async fn keyed<T, F>(&self, tenant: TenantId, key: &IdempotencyKey, operation: &str, print: Vec<u8>, decide: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: for<'a> Fn(&'a Tx<'a>, OffsetDateTime) -> futures::future::BoxFuture<'a, Result<Keyed<T>, Error>>,
    {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.pool.get().await?;
        {
            let tx = client.transaction().await?;
            match decide(&tx, now).await? {
                Keyed::Replayed(outcome) => return Ok(outcome),
                Keyed::Decided(outcome) => {
                    if idempotent::store(&tx, tenant, key, operation, print.clone(), &outcome).await? {
                        tx.commit().await?;
                        return Ok(outcome);
                    }
                }
            }
        }
        let tx = client.transaction().await?;
        let replayed = idempotent::replay(&tx, tenant, key, operation, &print).await?;
        tx.commit().await?;
        replayed.ok_or_else(|| Error::Internal("idempotency conflict without a stored outcome".into()))
    }
}

/// Finds a hold, locks its meter and then the hold itself (the lock order).
async fn lock_hold(tx: &Tx<'_>, tenant: TenantId, hold_id: Uuid, now: OffsetDateTime) -> Result<(MeterSession, HoldRow), Error> {
    let hold = repo::holds::get(tx, tenant, hold_id, false).await?.ok_or(Error::NotFound { what: "hold" })?;
    let account = AccountId::parse(&hold.account_id).map_err(|e| Error::Internal(format!("stored account: {e}")))?;
    let meter = Meter::parse(&hold.meter).map_err(|e| Error::Internal(format!("stored meter: {e}")))?;
    let session = MeterSession::lock(tx, tenant, &account, &meter, now, &[]).await?;
    let hold = repo::holds::get(tx, tenant, hold_id, true).await?.ok_or(Error::NotFound { what: "hold" })?;
    Ok((session, hold))
}

/// The outcome a settled hold stored.
fn stored<T: DeserializeOwned>(hold: HoldRow) -> Result<T, Error> {
    let response = hold.settlement_response.ok_or_else(|| Error::Internal("settled hold without a response".into()))?;
    serde_json::from_value(response).map_err(|e| Error::Internal(format!("stored outcome: {e}")))
}
