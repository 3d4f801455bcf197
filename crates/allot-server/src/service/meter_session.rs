//! One meter of one account inside a transaction: load it (locked for changes, or as a snapshot
//! for read-only answers), bring it up to `now`, let the rules change it, then persist the state
//! and one ledger entry per effect. Every operation on a meter goes through here, so the
//! load/advance/persist sequence and the lock are written once.

use std::collections::HashMap;

use allot_domain::advance;
use allot_domain::charge::Denial as RuleDenial;
use allot_domain::ledger::Effect;
use allot_domain::meter::{Grant, MeterState};
use time::OffsetDateTime;
use uuid::Uuid;

use std::collections::BTreeMap;

use super::in_force::{InForce, Payer};
use super::outcome::{Denial, MeterView};
use super::rate::RateView;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use crate::repo::balances::BalanceRow;
use crate::repo::ledger::{EntryRefs, MeterEntries, NewEntry};
use crate::repo::usage::Rollup;
use crate::repo::{self, Tx};

/// A loaded meter and the entries its changes will write.
#[derive(Debug)]
pub struct MeterSession {
    pub tenant: TenantId,
    /// The account whose meter this is (the payer).
    pub account: AccountId,
    pub meter: Meter,
    pub in_force: InForce,
    pub state: MeterState,
    /// For pooled meters: the acting member's use this period and live holds.
    pub member_used_credits: i64,
    pub member_held_credits: i64,
    /// Set once the rate cap was decided.
    pub rate: Option<RateView>,
    last_seq: i64,
    grants_before: HashMap<Uuid, i64>,
    new_grants: Vec<(Grant, i64)>,
    entries: Vec<NewEntry>,
    member_delta_credits: i64,
    rollups: Vec<Rollup>,
    /// The period the row's overall usage belongs to (not always the row's own period: see
    /// [`BalanceRow::period_usage_start`]) and that usage, as loaded.
    stored_usage_period_start: OffsetDateTime,
    stored_usage: (i64, i64),
}

impl MeterSession {
    /// Locks the meter's row (creating it in its opening state on first use) and loads it.
    /// `also_grants` are loaded even when used up or expired (refunds return credit to them).
    pub async fn lock(
        tx: &Tx<'_>,
        tenant: TenantId,
        payer: &Payer,
        meter: &Meter,
        now: OffsetDateTime,
        also_grants: &[Uuid],
    ) -> Result<MeterSession, Error> {
        let account = &payer.payer;
        // One round trip: the plan's terms, the row lock and — sent behind the lock on the same
        // connection, so executed once it is held — the meter's grants and live holds. The terms'
        // and the lock's statements are prepared first, so both go out in the order below (a
        // statement still to be prepared would go out a round trip late, behind the reads).
        // Sent in the order they are polled, the first error `try_join!` meets is the statement
        // that failed, not one behind it that only met the transaction it aborted (a lock
        // timeout stays UNAVAILABLE).
        futures::try_join!(repo::plans::prepare_meter_terms(tx), repo::balances::prepare_lock(tx))?;
        let (in_force, locked, grants, held_credits) = futures::try_join!(
            InForce::load(tx, tenant, payer, meter),
            repo::balances::lock(tx, tenant, account, meter),
            repo::grants::for_meter(tx, tenant, account, meter, also_grants),
            repo::holds::held_total(tx, tenant, account, meter, now),
        )?;
        let mut opening = None;
        let (row, grants, held_credits) = match locked {
            Some(row) => (row, grants, held_credits),
            None => {
                let (state, effect) = advance::open(&in_force.policy, payer.period);
                if repo::balances::insert_opening(tx, tenant, account, meter, state.period, state.allowance_credits, now).await? {
                    opening = effect;
                }
                let row = repo::balances::lock(tx, tenant, account, meter)
                    .await?
                    .ok_or_else(|| Error::Internal("meter row vanished after insert".into()))?;
                // Read again under the lock of the row that now exists.
                let (grants, held_credits) = futures::try_join!(
                    repo::grants::for_meter(tx, tenant, account, meter, also_grants),
                    repo::holds::held_total(tx, tenant, account, meter, now),
                )?;
                (row, grants, held_credits)
            }
        };
        let mut session = Self::load(tx, tenant, account, meter, now, in_force, row, grants, held_credits).await?;
        if let Some(effect) = opening {
            session.record(effect, EntryRefs::default());
        }
        session.advance(now);
        Ok(session)
    }

    /// Loads the meter without locking or creating anything, for answers that change nothing.
    /// Run it in a read-only repeatable-read transaction for a consistent view.
    pub async fn snapshot(tx: &Tx<'_>, tenant: TenantId, payer: &Payer, meter: &Meter, now: OffsetDateTime) -> Result<MeterSession, Error> {
        let account = &payer.payer;
        let (in_force, read, grants, held_credits) = futures::try_join!(
            InForce::load(tx, tenant, payer, meter),
            repo::balances::read(tx, tenant, account, meter),
            repo::grants::for_meter(tx, tenant, account, meter, &[]),
            repo::holds::held_total(tx, tenant, account, meter, now),
        )?;
        let row = stored_or_opened(read, &in_force);
        let mut session = Self::load(tx, tenant, account, meter, now, in_force, row, grants, held_credits).await?;
        session.advance(now);
        Ok(session)
    }

    #[allow(clippy::too_many_arguments)]
    async fn load(
        tx: &Tx<'_>,
        tenant: TenantId,
        account: &AccountId,
        meter: &Meter,
        now: OffsetDateTime,
        in_force: InForce,
        row: BalanceRow,
        grants: Vec<Grant>,
        held_credits: i64,
    ) -> Result<MeterSession, Error> {
        let (mut member_used_credits, mut member_held_credits) = (0, 0);
        if in_force.member_cap_credits.is_some() {
            let member = &in_force.payer.acting;
            member_used_credits = repo::usage::member_used(tx, tenant, account, meter, in_force.payer.period.start, member).await?;
            member_held_credits = repo::usage::member_held(tx, tenant, account, meter, member, now).await?;
        }
        let mut session = Self::assemble(tenant, account, meter, in_force, row, grants, held_credits);
        session.member_used_credits = member_used_credits;
        session.member_held_credits = member_held_credits;
        Ok(session)
    }

    /// A locked meter from rows a batch already read (its row, live grants and held total),
    /// brought up to `now`; `opening` is the entry of a row the batch just created. Only for
    /// meters without a member cap (the caller checks).
    #[allow(clippy::too_many_arguments)]
    pub fn from_locked_rows(
        tenant: TenantId,
        account: &AccountId,
        meter: &Meter,
        now: OffsetDateTime,
        in_force: InForce,
        row: BalanceRow,
        grants: Vec<Grant>,
        held_credits: i64,
        opening: Option<Effect>,
    ) -> MeterSession {
        assert!(in_force.member_cap_credits.is_none(), "a batch loads no member usage");
        let mut session = Self::assemble(tenant, account, meter, in_force, row, grants, held_credits);
        if let Some(effect) = opening {
            session.record(effect, EntryRefs::default());
        }
        session.advance(now);
        session
    }

    /// A meter of a batch of checks, from rows read on their snapshot (not locked): its stored row
    /// (`None`: never used, opened now as `snapshot` does), grants and live holds.
    #[allow(clippy::too_many_arguments)]
    pub fn from_read_rows(
        tenant: TenantId,
        account: &AccountId,
        meter: &Meter,
        now: OffsetDateTime,
        in_force: InForce,
        row: Option<BalanceRow>,
        grants: Vec<Grant>,
        held_credits: i64,
    ) -> MeterSession {
        assert!(in_force.member_cap_credits.is_none(), "a batch loads no member usage");
        let row = stored_or_opened(row, &in_force);
        let mut session = Self::assemble(tenant, account, meter, in_force, row, grants, held_credits);
        session.advance(now);
        session
    }

    fn assemble(
        tenant: TenantId,
        account: &AccountId,
        meter: &Meter,
        in_force: InForce,
        row: BalanceRow,
        grants: Vec<Grant>,
        held_credits: i64,
    ) -> MeterSession {
        let grants_before = grants.iter().map(|g| (g.id, g.remaining_credits)).collect();
        // Figures without a period are zero: any period will do.
        let stored_usage_period_start = row.period_usage_start.unwrap_or(row.period.start);
        let stored_usage = (row.period_charged_credits, row.period_charges);
        let state = MeterState {
            period: row.period,
            allowance_credits: row.allowance_credits,
            allowance_used_credits: row.allowance_used_credits,
            rollover_credits: row.rollover_credits,
            debt_credits: row.debt_credits,
            grants,
            held_credits,
        };
        state.assert_invariants();
        MeterSession {
            tenant,
            account: account.clone(),
            meter: meter.clone(),
            in_force,
            state,
            member_used_credits: 0,
            member_held_credits: 0,
            rate: None,
            last_seq: row.seq,
            grants_before,
            new_grants: Vec::new(),
            entries: Vec::new(),
            member_delta_credits: 0,
            rollups: Vec::new(),
            stored_usage_period_start,
            stored_usage,
        }
    }

    fn advance(&mut self, now: OffsetDateTime) {
        let payer = &self.in_force.payer;
        let effects = advance::advance(&mut self.state, &self.in_force.policy, payer.anchor, payer.period, now);
        for effect in effects {
            self.record(effect, EntryRefs::default());
        }
    }

    /// Whether the acting member may use `amount_credits` more of a pooled meter.
    pub fn within_member_cap(&self, amount_credits: i64) -> bool {
        allot_domain::plan::within_member_cap(self.in_force.member_cap_credits, self.member_used_credits, self.member_held_credits, amount_credits)
    }

    /// Counts a charge (or, negative, a refund) against the acting member of a pooled meter, in
    /// the period it was made in.
    pub fn add_member_use(&mut self, delta_credits: i64) {
        if self.in_force.payer.pooled() {
            self.member_delta_credits += delta_credits;
            self.member_used_credits = (self.member_used_credits + delta_credits).max(0);
        }
    }

    /// Adds a charge (`charges` 1) or a refund (0, negative total) to the usage roll-ups.
    pub fn roll_up(&mut self, period_start: OffsetDateTime, attributes: BTreeMap<String, String>, total_credits: i64, charges: i64) {
        self.rollups.push(Rollup { period_start, attributes, total_credits, charges, overall: true });
    }

    /// Queues a ledger entry for an effect the rules proposed; returns the entry's id. Ids are
    /// ordered by time to the millisecond (UUIDv7): the ledger only grows, and each tenant's part
    /// of its `(tenant_id, id)` index then takes new entries at its right edge rather than on a
    /// random page each (docs/benchmarks.md, finding 66). The rest of the id is random, not the
    /// `uuid` crate's process-wide counter: ids a tenant gets back would otherwise tell how many
    /// entries other tenants made in between.
    pub fn record(&mut self, effect: Effect, refs: EntryRefs) -> Uuid {
        let id = Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext));
        self.entries.push(NewEntry { id, effect, period: self.state.period, refs });
        id
    }

    /// Adds a new grant of `amount_credits` to the state; it is inserted on [`Self::save`].
    pub fn add_grant(&mut self, grant: Grant, amount_credits: i64) {
        self.state.grants.push(grant.clone());
        self.new_grants.push((grant, amount_credits));
    }

    /// The rules' denial, or "no entitlement" when no plan is in force.
    pub fn denial(&self, denial: RuleDenial) -> Denial {
        match denial {
            _ if self.in_force.payer.plan_id.is_none() => Denial::NoEntitlement,
            RuleDenial::QuotaExhausted => Denial::QuotaExhausted,
            RuleDenial::InsufficientCredit => Denial::InsufficientCredit,
            RuleDenial::DebtLimitReached => Denial::DebtLimitReached,
        }
    }

    /// The meter's figures at `now`.
    pub fn view(&self, now: OffsetDateTime) -> MeterView {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        MeterView {
            meter: self.meter.as_str().to_owned(),
            plan_id: self.in_force.payer.plan_id.clone(),
            payer_account_id: self.account.as_str().to_owned(),
            member_cap_credits: self.in_force.member_cap_credits,
            member_used_credits: self.member_used_credits,
            rate: self.rate.clone(),
            limit_credits: self.state.allowance_credits,
            used_credits: self.state.allowance_used_credits,
            remaining_credits: self.state.net_credits(now).map(clamp),
            available_credits: self.state.available_credits(now).map(clamp),
            held_credits: self.state.held_credits,
            debt_credits: self.state.debt_credits,
            rollover_credits: self.state.rollover_credits,
            period_start: self.state.period.start,
            period_end: self.state.period.end,
        }
    }

    /// Writes the ledger entries, the meter's row and changed grants. Only for locked sessions.
    pub async fn save(mut self, tx: &Tx<'_>, now: OffsetDateTime) -> Result<(), Error> {
        let (tenant, account, meter) = (self.tenant, self.account.clone(), self.meter.clone());
        let new_grants = self.take_new_grants();
        let member = (self.member_delta_credits != 0)
            .then(|| (self.in_force.payer.period.start, self.in_force.payer.acting.clone(), self.member_delta_credits));
        let changes = self.take_changes()?;
        // The entries and the row in one pipelined round trip (the row's `seq` is known before).
        let entries = [MeterEntries { account: &account, meter: &meter, last_seq: changes.last_seq, entries: &changes.entries }];
        futures::try_join!(
            repo::ledger::append_many(tx, tenant, &entries, now),
            repo::balances::save(tx, tenant, &account, &meter, &changes.row, now),
        )?;
        for (stored, amount_credits) in &new_grants {
            repo::grants::insert(tx, tenant, &account, &meter, stored, *amount_credits).await?;
        }
        repo::grants::set_remaining(tx, tenant, &changes.grants_remaining).await?;
        if let Some((period_start, acting, delta_credits)) = member {
            repo::usage::add_member_used(tx, tenant, &account, &meter, period_start, &acting, delta_credits).await?;
        }
        for rollup in &changes.rollups {
            repo::usage::roll_up(tx, tenant, &account, &meter, rollup).await?;
        }
        Ok(())
    }

    /// The roll-ups to write and the row's overall usage of its (current) period. The current
    /// period's overall usage stays on the row; a period the meter has left gets the row's
    /// figures in its overall roll-up, as do refunds of such a period. Changes with the same
    /// period and attributes (a batch) are one upsert.
    fn period_usage(&mut self) -> (Vec<Rollup>, (i64, i64)) {
        let current = self.state.period.start;
        let mut usage = if self.stored_usage_period_start == current { self.stored_usage } else { (0, 0) };
        let mut changes = std::mem::take(&mut self.rollups);
        if self.stored_usage_period_start != current && self.stored_usage != (0, 0) {
            let (total_credits, charges) = self.stored_usage;
            changes.push(Rollup { period_start: self.stored_usage_period_start, attributes: BTreeMap::new(), total_credits, charges, overall: true });
        }
        let mut rollups: Vec<Rollup> = Vec::with_capacity(changes.len());
        for mut rollup in changes {
            if rollup.period_start == current {
                usage.0 += rollup.total_credits;
                usage.1 += rollup.charges;
                rollup.overall = false;
                if rollup.attributes.is_empty() {
                    continue;
                }
            }
            match rollups.iter_mut().find(|m| m.period_start == rollup.period_start && m.attributes == rollup.attributes) {
                Some(m) => {
                    m.total_credits += rollup.total_credits;
                    m.charges += rollup.charges;
                }
                None => rollups.push(rollup),
            }
        }
        assert!(usage.1 >= 0, "a period counts no fewer than zero charges");
        (rollups, usage)
    }

    /// New grants as they are to be stored (with what is left of them now), taken out of the session.
    fn take_new_grants(&mut self) -> Vec<(Grant, i64)> {
        let state = &self.state;
        std::mem::take(&mut self.new_grants)
            .into_iter()
            .map(|(mut stored, amount_credits)| {
                stored.remaining_credits = state.grants.iter().find(|g| g.id == stored.id).map_or(0, |g| g.remaining_credits);
                (stored, amount_credits)
            })
            .collect()
    }

    /// What saving this session writes, for a batch that writes many sessions together
    /// (`repo::batch_writes`). Refused for sessions with new grants or pooled-member usage (a batch has none).
    pub fn into_changes(self) -> Result<SessionChanges, Error> {
        if !self.new_grants.is_empty() || self.member_delta_credits != 0 {
            return Err(Error::Internal("a session with new grants or member usage is saved on its own".into()));
        }
        self.take_changes()
    }

    /// The entries, row, grant changes and roll-ups to write (new grants and member usage are
    /// the caller's to take first).
    fn take_changes(mut self) -> Result<SessionChanges, Error> {
        self.state.assert_invariants();
        let seq = self.last_seq + i64::try_from(self.entries.len()).map_err(|_| Error::Internal("entry count".into()))?;
        let (rollups, period_usage) = self.period_usage();
        let row = row_of(&self.state, seq, period_usage);
        let grants_remaining: Vec<(Uuid, i64)> = self
            .state
            .grants
            .iter()
            .filter(|g| self.grants_before.get(&g.id).is_some_and(|before| *before != g.remaining_credits))
            .map(|g| (g.id, g.remaining_credits))
            .collect();
        Ok(SessionChanges {
            account: self.account,
            meter: self.meter,
            last_seq: self.last_seq,
            entries: self.entries,
            row,
            grants_remaining,
            rollups,
        })
    }
}

/// Everything a locked session writes when saved (see [`MeterSession::into_changes`]).
pub struct SessionChanges {
    pub account: AccountId,
    pub meter: Meter,
    /// The `seq` of the meter's last entry before this session's.
    pub last_seq: i64,
    pub entries: Vec<NewEntry>,
    pub row: BalanceRow,
    /// Grants whose remaining credit changed: `(id, remaining)`.
    pub grants_remaining: Vec<(Uuid, i64)>,
    pub rollups: Vec<Rollup>,
}

/// A meter's stored row, or for a meter never used the row it would open with (read-only paths
/// compute it without writing it).
fn stored_or_opened(read: Option<BalanceRow>, in_force: &InForce) -> BalanceRow {
    read.unwrap_or_else(|| row_of(&advance::open(&in_force.policy, in_force.payer.period).0, 0, (0, 0)))
}

fn row_of(state: &MeterState, seq: i64, (period_charged_credits, period_charges): (i64, i64)) -> BalanceRow {
    BalanceRow {
        period_usage_start: Some(state.period.start),
        period_charged_credits,
        period_charges,
        period: state.period,
        allowance_credits: state.allowance_credits,
        allowance_used_credits: state.allowance_used_credits,
        rollover_credits: state.rollover_credits,
        debt_credits: state.debt_credits,
        seq,
    }
}
