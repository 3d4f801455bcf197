//! One transaction for a batch of single-line debits (credits, or usage rated before it was
//! queued) over any accounts of one tenant: in one round trip, who pays for every account and
//! its fair-use standing, every meter's row lock (one statement, `(account, meter)` order) and,
//! executed after the lock, the grants, holds and idempotency records of all of them; then each
//! debit decided on its own in arrival order, then every write (`repo::batch_writes`) and the
//! `COMMIT` behind them, sent together: two round trips in all for a batch of meters in use.
//!
//! Debits it leaves to be decided alone (their result is `None`): a member of an org (pooled
//! meters, member caps), a meter with a per-minute rate cap (one Redis decision per debit would
//! hold every lock for as many round trips), a meter already in a later
//! period (decided again at a fresh time on the ordinary path) and a meter under a restrict-stage
//! daily budget.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use allot_domain::ledger::EntryKind;
use allot_domain::{advance, charge};
use time::OffsetDateTime;

use super::plans::{self, Key, Plans};
use super::{Queued, Results};
use crate::error::Error;
use crate::repo::idempotency::NewRecord;
use crate::repo::ledger::MeterEntries;
use crate::repo::{self, Tx};
use crate::service::credits::{count, debit_print, refs, Credits, DebitCommand};
use crate::service::idempotent;
use crate::service::in_force::{self, InForce};
use crate::service::meter_session::MeterSession;
use crate::service::outcome::{Decision, MeterOutcome};

fn key_of(cmd: &DebitCommand) -> Key {
    (cmd.account.as_str().to_owned(), cmd.lines[0].0.as_str().to_owned())
}

impl Credits {
    /// Decides `commands` in one transaction. `Err` means nothing was written and every debit
    /// must be decided alone.
    /// Per debit, its decision or the error it alone gets (a reused key) in `Results`.
    pub(super) async fn debit_group(&self, tenant: crate::ids::TenantId, queued: &[&Queued]) -> Result<Results, Error> {
        self.ctx.batch_db(queued.len(), async |client| self.debit_group_on(client, tenant, queued).await).await
    }

    async fn debit_group_on(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tenant: crate::ids::TenantId,
        queued: &[&Queued],
    ) -> Result<Results, Error> {
        assert!(
            queued.iter().all(|q| q.amount_credits > 0 && q.cmd.lines.len() == 1 && q.cmd.subsidy.is_none()),
            "only batchable debits are grouped"
        );
        let commands: Vec<&DebitCommand> = queued.iter().map(|q| &q.cmd).collect();
        let now = self.ctx.clock.now();
        let tx = crate::db::begin_batch(client, tenant, crate::db::Access::ReadWrite)?;
        let accounts: Vec<&str> = commands.iter().map(|c| c.account.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        let asked: Vec<(&str, &str)> =
            commands.iter().map(|c| (c.account.as_str(), c.lines[0].0.as_str())).collect::<BTreeSet<_>>().into_iter().collect();
        // One round trip (`BEGIN` included): who pays (and which accounts have fair-use state:
        // their standings under the fair-use settings the plan book last held follow in a second
        // round trip, only for those, and are read again below if those settings turn out not to
        // be the current version's), every meter asked locked, and — sent after the lock on the
        // same connection, so executed once it is held — the meters' grants and live holds and
        // the batch's idempotency records. tokio-postgres sends a statement when its future is
        // first polled and `try_join!` polls in order; PostgreSQL runs one
        // connection's statements in order — provided the lock's statement is prepared, or its
        // Execute would follow the reads by a round trip, hence `prepare_lock_many` first
        // (`group_commit::a_batch_reads_holds_after_its_locks_even_on_a_connection_new_to_locking`).
        // An org member's own rows are locked too and left unused: its debit is decided alone,
        // after this batch commits.
        let book = &self.ctx.plan_book;
        let command_keys: Vec<&str> = commands.iter().map(|c| c.key.as_str()).collect();
        repo::balances::prepare_lock_many(&tx).await?;
        let hint = plans::standings_hint(book, tenant, now);
        let (mut account_reads, mut rows, meter_reads, stored) = futures::try_join!(
            repo::account_reads::read(&tx, tenant, &accounts, hint.map(|(_, since)| since)),
            repo::balances::lock_many(&tx, tenant, &asked),
            repo::meter_reads::holds_and_grants(&tx, tenant, &asked, now),
            repo::idempotency::find_many(&tx, tenant, &command_keys),
        )?;
        let early_standings = plans::early_standings(hint, &mut account_reads);
        let resolved = in_force::resolve_many(&tx, tenant, &accounts, account_reads, now, book).await?;
        let in_force::ResolvedMany { payers, config_version, settings } = resolved;
        let repo::meter_reads::MeterReads { mut grants, mut held, .. } = meter_reads;
        let keys: Vec<(&str, &str)> = asked.iter().copied().filter(|(account, _)| payers.contains_key(*account)).collect();
        let (plan_meters, plan_ids) = plans::wanted(&payers, &keys);
        let (terms, soft_caps) = book.terms(&tx, tenant, config_version, &plan_meters, &plan_ids).await?;
        let plans = Plans { payers: &payers, terms, soft_caps };
        // Meters used for the first time get their opening row, then are locked like the others,
        // and their grants and holds read again under that lock. Not those with a rate cap: they
        // are decided (and opened) alone. A row created here is saved with its opening entry even
        // when its debit is then left to the ordinary path.
        let mut openings = HashMap::new();
        let missing: Vec<(&str, &str)> = keys
            .iter()
            .copied()
            .filter(|(a, m)| !rows.contains_key(&((*a).to_owned(), (*m).to_owned())) && plans.terms_of(a, m).rate.is_none())
            .collect();
        if !missing.is_empty() {
            let mut opened = Vec::with_capacity(missing.len());
            let mut effects = HashMap::new();
            for (account, meter) in &missing {
                let (state, effect) = advance::open(&plans.terms_of(account, meter).policy, payers[*account].period);
                opened.push((*account, *meter, state.period, state.allowance_credits));
                effects.insert(((*account).to_owned(), (*meter).to_owned()), effect);
            }
            for key in repo::balances::insert_openings(&tx, tenant, &opened, now).await? {
                let effect = effects.remove(&key).ok_or_else(|| Error::Internal("opened a meter nobody asked for".into()))?;
                openings.insert(key, effect);
            }
            let (locked_now, read_now) = futures::try_join!(
                repo::balances::lock_many(&tx, tenant, &missing),
                repo::meter_reads::holds_and_grants(&tx, tenant, &missing, now),
            )?;
            let repo::meter_reads::MeterReads { grants: grants_now, held: held_now, .. } = read_now;
            for (account, meter) in &missing {
                let key = ((*account).to_owned(), (*meter).to_owned());
                grants.remove(&key);
                held.remove(&key);
            }
            rows.extend(locked_now);
            grants.extend(grants_now);
            held.extend(held_now);
        }
        let locked: Vec<(&str, &str)> = keys
            .iter()
            .copied()
            .filter(|(a, m)| rows.contains_key(&((*a).to_owned(), (*m).to_owned())) && plans.terms_of(a, m).rate.is_none())
            .collect();
        let capped: Vec<(&str, &str)> = locked.iter().copied().filter(|(a, m)| !plans.caps_of(a, m).is_empty()).collect();
        // Hourly usage is kept for soft caps only (as `fair_use::record_usage` keeps it).
        let capped_keys: BTreeSet<(&str, &str)> = capped.iter().copied().collect();
        let locked_accounts: Vec<&str> = locked.iter().map(|(a, _)| *a).collect::<BTreeSet<_>>().into_iter().collect();
        // Standings read again only when the book's settings were not this version's; hourly
        // usage only for soft-capped meters.
        let (standings, hourly) = futures::try_join!(
            plans::standings_at(early_standings, config_version, &settings, &tx, tenant, now),
            plans.hourly(&tx, tenant, &capped, now),
        )?;
        let mut standing_of = plans::standings(&settings, &standings, locked_accounts.iter().copied());
        let mut sessions: BTreeMap<Key, MeterSession> = BTreeMap::new();
        // Meters this batch opened but does not decide: saved (row and opening entry) only.
        let mut opened_only: BTreeMap<Key, MeterSession> = BTreeMap::new();
        for (account, meter) in &locked {
            let key: Key = ((*account).to_owned(), (*meter).to_owned());
            let payer = &payers[*account];
            let row = rows.remove(&key).expect("a locked row");
            let in_force = InForce { payer: payer.clone(), policy: plans.terms_of(account, meter).policy, rate: None, member_cap_credits: None };
            let (account_id, meter_id) = (payer.acting.clone(), crate::ids::Meter::parse(meter).map_err(|e| Error::Internal(format!("meter: {e}")))?);
            let opening = openings.remove(&key);
            let opened = opening.is_some();
            let session = MeterSession::from_locked_rows(
                tenant,
                &account_id,
                &meter_id,
                now,
                in_force,
                row,
                grants.remove(&key).unwrap_or_default(),
                held.get(&key).copied().unwrap_or(0),
                opening.flatten(),
            );
            let budgeted = standing_of[account].daily_budget(&meter_id).is_some();
            if !super::super::moved_on(payer, std::slice::from_ref(&session)) && !budgeted {
                sessions.insert(key, session);
            } else if opened {
                opened_only.insert(key, session);
            }
        }
        assert!(openings.is_empty(), "every row this batch opened is saved");
        // A stage that moved is stored with its event, as on the ordinary path.
        for (account, standing) in standing_of.iter_mut() {
            if sessions.keys().any(|(a, _)| a == account) {
                standing.sync(&tx, tenant, &payers[*account].acting, "", now).await?;
            }
        }

        let mut results: Results = commands.iter().map(|_| None).collect();
        let mut fresh: HashMap<&str, (Vec<u8>, usize)> = HashMap::new();
        // Credits charged per soft-capped meter, for its hourly usage.
        let mut used: BTreeMap<Key, i64> = BTreeMap::new();
        let mut funded = Vec::new();
        for (i, cmd) in commands.iter().enumerate() {
            let key = key_of(cmd);
            let Some(session) = sessions.get_mut(&key) else { continue };
            let print = debit_print(cmd);
            if let Some(record) = stored.get(cmd.key.as_str()) {
                results[i] = Some(idempotent::replay_record(record.clone(), "debit", &print));
                continue;
            }
            if let Some((first_print, index)) = fresh.get(cmd.key.as_str()) {
                // A retry that arrived while its first try was queued: the same answer (copied
                // again below, once the first has its fair-use figures).
                results[i] = Some(match &results[*index] {
                    Some(Ok(decision)) if *first_print == print => Ok(decision.clone()),
                    _ => Err(Error::IdempotencyKeyReused),
                });
                continue;
            }
            let payer = &payers[cmd.account.as_str()];
            let amount = queued[i].amount_credits;
            let policy = session.in_force.policy;
            let denial = charge::check(&session.state, &policy, amount, cmd.mode, now).err().map(|d| session.denial(d));
            let mut outcome = MeterOutcome {
                denial,
                entry_id: None,
                breakdown: Vec::new(),
                retry_after_ms: 0,
                meter: session.view(now),
                rating: queued[i].rating.clone(),
                subsidy: None,
            };
            if denial.is_none() {
                let effect = charge::debit(&mut session.state, &policy, amount, cmd.mode, EntryKind::Debit, now)
                    .map_err(|d| Error::Internal(format!("a checked debit was denied: {d:?}")))?;
                outcome.breakdown = effect.breakdown.clone();
                let entry_id = session.record(effect, refs(payer, Some(&cmd.key), None, &cmd.attributes, queued[i].rating.as_ref()));
                outcome.entry_id = Some(entry_id);
                if crate::service::subsidy::pays(payer) {
                    funded.push((session.meter.clone(), amount, entry_id));
                }
                session.roll_up(session.state.period.start, cmd.attributes.clone(), amount, 1);
                outcome.meter = session.view(now);
                if capped_keys.contains(&(cmd.account.as_str(), cmd.lines[0].0.as_str())) {
                    *used.entry(key).or_default() += amount;
                }
            }
            fresh.insert(cmd.key.as_str(), (print, i));
            results[i] = Some(Ok(Decision { meters: vec![outcome], fair_use: None, trial: payer.trial(now), subsidy: None }));
        }

        // Soft caps: each allowed debit sees the usage before this batch plus what the batch
        // charged up to and including it; crossing a threshold writes one event.
        let mut charged_so_far: HashMap<Key, i64> = HashMap::new();
        for (i, cmd) in commands.iter().enumerate() {
            let Some(Ok(decision)) = &mut results[i] else { continue };
            if decision.fair_use.is_some() || fresh.get(cmd.key.as_str()).is_none_or(|(_, first)| *first != i) {
                continue; // a replay, or a retry copied below
            }
            let key = key_of(cmd);
            let mut triggered = Vec::new();
            if decision.denial().is_none() {
                let so_far = charged_so_far.entry(key.clone()).or_default();
                let amount = queued[i].amount_credits;
                for cap in plans.caps_of(&key.0, &key.1) {
                    let before = plans::used_in_window(&hourly, &key, cap.window_ms, now);
                    let after = before + *so_far + amount;
                    if cap.newly_triggered(after - amount, after) {
                        let payload = serde_json::json!({ "meter": key.1, "window_ms": cap.window_ms, "threshold_credits": cap.threshold_credits, "used_credits": after });
                        repo::outbox::append(&tx, tenant, "soft_cap_triggered", &cmd.account, payload, now).await?;
                    }
                    if cap.is_triggered(after) {
                        triggered.push(format!("{}/{}", key.1, cap.window_ms));
                    }
                }
                *so_far += amount;
            }
            decision.fair_use = Some(standing_of[cmd.account.as_str()].view(triggered));
        }
        // Retries inside the batch got a copy before the fair-use figures were filled in.
        for (i, cmd) in commands.iter().enumerate() {
            if let Some((_, first)) = fresh.get(cmd.key.as_str()).filter(|(_, first)| *first != i) {
                if let (Some(Ok(_)), Some(Ok(decision))) = (&results[i], &results[*first]) {
                    results[i] = Some(Ok(decision.clone()));
                }
            }
        }

        sessions.append(&mut opened_only);
        self.commit_group(tx, tenant, sessions, &used, &fresh, &results, &funded, now).await?;
        for decision in results.iter().flatten().flatten() {
            count("debit", decision);
        }
        Ok(results)
    }

    /// Writes a decided batch and commits it: ledger entries, balance rows and idempotency records
    /// in one statement, grants, rollups and hourly usage in one each, and `COMMIT` behind them,
    /// all sent together (one round trip). A write that fails aborts the transaction, and the
    /// `COMMIT` then rolls it all back. A batch that funds subsidy pools (a statement per pool,
    /// one after another) commits once its writes have answered.
    #[allow(clippy::too_many_arguments)]
    async fn commit_group(
        &self,
        tx: Tx<'_>,
        tenant: crate::ids::TenantId,
        sessions: BTreeMap<Key, MeterSession>,
        used: &BTreeMap<Key, i64>,
        fresh: &HashMap<&str, (Vec<u8>, usize)>,
        results: &Results,
        funded: &[(crate::ids::Meter, i64, uuid::Uuid)],
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        let changes = sessions.into_values().map(MeterSession::into_changes).collect::<Result<Vec<_>, _>>()?;
        let entries: Vec<MeterEntries> =
            changes.iter().map(|c| MeterEntries { account: &c.account, meter: &c.meter, last_seq: c.last_seq, entries: &c.entries }).collect();
        let rows: Vec<_> = changes.iter().map(|c| (&c.account, &c.meter, c.row.clone())).collect();
        let grants_remaining: Vec<(uuid::Uuid, i64)> = changes.iter().flat_map(|c| c.grants_remaining.iter().copied()).collect();
        let rollups: Vec<_> = changes.iter().flat_map(|c| c.rollups.iter().map(move |r| (&c.account, &c.meter, r.clone()))).collect();
        let hourly: Vec<(&str, &str, i64)> = used.iter().map(|((a, m), credits)| (a.as_str(), m.as_str(), *credits)).collect();
        // Every new outcome under its key (all of them: a batch decides no rate cap, so none is
        // transient).
        let mut records = Vec::with_capacity(fresh.len());
        for (key, (print, index)) in fresh {
            if let Some(Ok(decision)) = &results[*index] {
                assert!(!decision.is_transient(), "a batched decision is never rate limited");
                let response_json = serde_json::to_string(decision).map_err(|e| Error::Internal(format!("outcome: {e}")))?;
                records.push(NewRecord { key, operation: "debit", request_sha256: print, response_json });
            }
        }
        // Every statement prepared before the first write is sent (`repo::batch_writes`); each
        // write checks its own row count in SQL (a key stored concurrently fails the batch).
        let statements = repo::batch_writes::BatchStatements::prepare(&tx).await?;
        let (entry_columns, balance_columns, record_columns) =
            (repo::ledger::EntryColumns::of(&entries)?, repo::balances::BalanceColumns::of(&rows), repo::idempotency::RecordColumns::of(&records));
        let tx = &tx;
        let writes = async {
            futures::try_join!(
                repo::batch_writes::write(tx, &statements, tenant, now, &entry_columns, &balance_columns, &record_columns),
                repo::grants::set_remaining_with(tx, &statements.grants, tenant, &grants_remaining),
                repo::usage::roll_up_many(tx, &statements.rollups, tenant, &rollups),
                repo::fair_use::add_hourly_many(tx, &statements.hourly, tenant, &hourly, now),
            )
        };
        if funded.is_empty() {
            futures::try_join!(writes, async { tx.commit_behind().await.map_err(Error::from) })?;
        } else {
            writes.await?;
            for (meter, amount, entry_id) in funded {
                crate::service::subsidy::fund(tx, tenant, meter, *amount, *entry_id, now).await?;
            }
            tx.commit_behind().await?;
        }
        Ok(())
    }
}
