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

use super::in_force::{self, InForce};
use super::outcome::{Denial, MeterView};
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use crate::repo::balances::BalanceRow;
use crate::repo::ledger::{EntryRefs, NewEntry};
use crate::repo::{self, Tx};

/// A loaded meter and the entries its changes will write.
#[derive(Debug)]
pub struct MeterSession {
    pub tenant: TenantId,
    pub account: AccountId,
    pub meter: Meter,
    pub in_force: InForce,
    pub state: MeterState,
    last_seq: i64,
    grants_before: HashMap<Uuid, i64>,
    new_grants: Vec<(Grant, i64)>,
    entries: Vec<NewEntry>,
}

impl MeterSession {
    /// Locks the meter's row (creating it in its opening state on first use) and loads it.
    /// `also_grants` are loaded even when used up or expired (refunds return credit to them).
    pub async fn lock(
        tx: &Tx<'_>,
        tenant: TenantId,
        account: &AccountId,
        meter: &Meter,
        now: OffsetDateTime,
        also_grants: &[Uuid],
    ) -> Result<MeterSession, Error> {
        let in_force = in_force::resolve(tx, tenant, account, meter, now).await?;
        let mut opening = None;
        let row = match repo::balances::lock(tx, tenant, account, meter).await? {
            Some(row) => row,
            None => {
                let (state, effect) = advance::open(&in_force.policy, in_force.period);
                if repo::balances::insert_opening(tx, tenant, account, meter, state.period, state.allowance_credits, now).await? {
                    opening = effect;
                }
                repo::balances::lock(tx, tenant, account, meter).await?.ok_or_else(|| Error::Internal("meter row vanished after insert".into()))?
            }
        };
        let mut session = Self::load(tx, tenant, account, meter, now, in_force, row, also_grants).await?;
        if let Some(effect) = opening {
            session.record(effect, EntryRefs::default());
        }
        session.advance(now);
        Ok(session)
    }

    /// Loads the meter without locking or creating anything, for answers that change nothing.
    /// Run it in a read-only repeatable-read transaction for a consistent view.
    pub async fn snapshot(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, now: OffsetDateTime) -> Result<MeterSession, Error> {
        let in_force = in_force::resolve(tx, tenant, account, meter, now).await?;
        let row = match repo::balances::read(tx, tenant, account, meter).await? {
            Some(row) => row,
            None => {
                let (state, _) = advance::open(&in_force.policy, in_force.period);
                row_of(&state, 0)
            }
        };
        let mut session = Self::load(tx, tenant, account, meter, now, in_force, row, &[]).await?;
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
        also_grants: &[Uuid],
    ) -> Result<MeterSession, Error> {
        let grants = repo::grants::for_meter(tx, tenant, account, meter, also_grants).await?;
        let held_credits = repo::holds::held_total(tx, tenant, account, meter, now).await?;
        let grants_before = grants.iter().map(|g| (g.id, g.remaining_credits)).collect();
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
        Ok(MeterSession {
            tenant,
            account: account.clone(),
            meter: meter.clone(),
            in_force,
            state,
            last_seq: row.seq,
            grants_before,
            new_grants: Vec::new(),
            entries: Vec::new(),
        })
    }

    fn advance(&mut self, now: OffsetDateTime) {
        let effects = advance::advance(&mut self.state, &self.in_force.policy, self.in_force.anchor, self.in_force.period, now);
        for effect in effects {
            self.record(effect, EntryRefs::default());
        }
    }

    /// Queues a ledger entry for an effect the rules proposed; returns the entry's id.
    pub fn record(&mut self, effect: Effect, refs: EntryRefs) -> Uuid {
        let id = Uuid::new_v4();
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
            _ if self.in_force.plan_id.is_none() => Denial::NoEntitlement,
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
            plan_id: self.in_force.plan_id.clone(),
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
    pub async fn save(self, tx: &Tx<'_>, now: OffsetDateTime) -> Result<(), Error> {
        self.state.assert_invariants();
        let seq = repo::ledger::append(tx, self.tenant, &self.account, &self.meter, self.last_seq, &self.entries, now).await?;
        repo::balances::save(tx, self.tenant, &self.account, &self.meter, &row_of(&self.state, seq), now).await?;
        for (grant, amount_credits) in &self.new_grants {
            let mut stored = grant.clone();
            stored.remaining_credits = self.state.grants.iter().find(|g| g.id == grant.id).map_or(0, |g| g.remaining_credits);
            repo::grants::insert(tx, self.tenant, &self.account, &self.meter, &stored, *amount_credits).await?;
        }
        let changed: Vec<(Uuid, i64)> = self
            .state
            .grants
            .iter()
            .filter(|g| self.grants_before.get(&g.id).is_some_and(|before| *before != g.remaining_credits))
            .map(|g| (g.id, g.remaining_credits))
            .collect();
        repo::grants::set_remaining(tx, self.tenant, &changed).await
    }
}

fn row_of(state: &MeterState, seq: i64) -> BalanceRow {
    BalanceRow {
        period: state.period,
        allowance_credits: state.allowance_credits,
        allowance_used_credits: state.allowance_used_credits,
        rollover_credits: state.rollover_credits,
        debt_credits: state.debt_credits,
        seq,
    }
}
