//! The checker: holds a [`History`] against the database behind the server and reports every
//! anomaly:
//! - an acknowledged operation has exactly one ledger entry (the one the response named), a
//!   denied or refused one has none, an unknown one at most one; no entry nobody asked for;
//! - a hold is committed at most once; an acknowledged release leaves no commit entry;
//! - every balance equals the sum of its ledger (its opening entry included) and `seq` runs
//!   1..n without gaps;
//! - the running balance of every meter (its ledger summed in `seq` order) never goes below minus
//!   the debt limit, and the stored debt never exceeds the limit;
//! - refunds of a charge never add up to more than the charge.
//!
//! The checker must not trust the server: it reads tables directly and never calls the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use time::OffsetDateTime;

use super::history::{History, Kind, Outcome};

/// What the checker needs to know about the workload's plan.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The plan's debt limit on every meter the workload used: the floor is its negative.
    pub debt_limit_credits: i64,
    /// "Now" for grant and hold expiry (the server's clock at the end of the run).
    pub now: OffsetDateTime,
}

/// What the check found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub operations: usize,
    pub attempts: usize,
    pub acked: usize,
    pub denied: usize,
    pub refused: usize,
    pub unknown: usize,
    /// Unknown operations that turned out to have happened (one entry or a hold).
    pub unknown_applied: usize,
    /// Attempts by label.
    pub codes: BTreeMap<String, usize>,
    pub ledger_entries: usize,
    pub meters: usize,
    pub anomalies: Vec<String>,
}

impl Report {
    /// Panics with every anomaly (at most 50 listed) unless there is none.
    pub fn assert_clean(&self) {
        if !self.anomalies.is_empty() {
            let listed: Vec<&String> = self.anomalies.iter().take(50).collect();
            panic!("{} anomalies:\n{listed:#?}\n{self}", self.anomalies.len());
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| operations | attempts | acked | denied | refused | unknown (applied) | ledger entries | meters | anomalies |")?;
        writeln!(f, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
        writeln!(
            f,
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            self.operations,
            self.attempts,
            self.acked,
            self.denied,
            self.refused,
            self.unknown,
            self.unknown_applied,
            self.ledger_entries,
            self.meters,
            self.anomalies.len()
        )?;
        let codes: Vec<String> = self.codes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "attempts by result: {}", codes.join(", "))
    }
}

/// A ledger entry as the checker needs it.
struct Entry {
    id: String,
    kind: String,
    key: Option<String>,
    hold_id: Option<String>,
    refunds: Option<String>,
    delta: i64,
    account: String,
    meter: String,
}

/// Holds `history` against the database behind the server.
pub async fn check(history: &History, db: &tokio_postgres::Client, expect: &Expect) -> Result<Report, tokio_postgres::Error> {
    let (operations, mut anomalies) = history.snapshot();
    let entries: Vec<Entry> = db
        .query(
            "SELECT id::text, kind, idempotency_key, hold_id::text, refunds_entry_id::text, delta_credits, account_id, meter \
             FROM ledger_entries ORDER BY account_id, meter, seq",
            &[],
        )
        .await?
        .iter()
        .map(|r| Entry {
            id: r.get(0),
            kind: r.get(1),
            key: r.get(2),
            hold_id: r.get(3),
            refunds: r.get(4),
            delta: r.get(5),
            account: r.get(6),
            meter: r.get(7),
        })
        .collect();
    let holds: HashMap<String, String> =
        db.query("SELECT DISTINCT id::text, status FROM holds", &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();

    let mut by_key: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    let mut commits: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &entries {
        match (e.kind.as_str(), &e.key, &e.hold_id) {
            ("debit" | "refund", Some(key), _) => by_key.entry((e.kind.as_str(), key.as_str())).or_default().push(&e.id),
            ("commit", _, Some(hold)) => commits.entry(hold.as_str()).or_default().push(&e.id),
            ("debit" | "refund" | "commit", _, _) => anomalies.push(format!("{} entry {} has no key or hold", e.kind, e.id)),
            _ => {}
        }
    }

    let mut report = Report { operations: operations.len(), ledger_entries: entries.len(), ..Report::default() };
    let mut asked_keys: HashSet<(&str, &str)> = HashSet::new();
    let mut asked_holds: HashSet<&str> = HashSet::new();
    let mut acked_holds: HashSet<String> = HashSet::new();
    let mut unknown_reserves = 0usize;
    for op in &operations {
        report.attempts += op.attempts.len();
        for a in &op.attempts {
            *report.codes.entry(a.attempt.label()).or_insert(0) += 1;
        }
        if let Some(contradiction) = op.contradictions() {
            anomalies.push(contradiction);
        }
        let outcome = op.outcome();
        match &outcome {
            Outcome::Acked { .. } => report.acked += 1,
            Outcome::Denied => report.denied += 1,
            Outcome::Refused => report.refused += 1,
            Outcome::Unknown => report.unknown += 1,
        }
        let name = op.name();
        // The entries this operation may have written.
        let written: Vec<&str> = match op.kind {
            Kind::Debit | Kind::Refund => {
                let kind = if op.kind == Kind::Debit { "debit" } else { "refund" };
                asked_keys.insert((kind, name));
                by_key.get(&(kind, name)).cloned().unwrap_or_default()
            }
            Kind::Commit | Kind::Release => {
                asked_holds.insert(name);
                commits.get(name).cloned().unwrap_or_default()
            }
            Kind::Reserve => {
                if let Outcome::Acked { id: Some(hold) } = &outcome {
                    acked_holds.insert(hold.clone());
                    if !holds.contains_key(hold) {
                        anomalies.push(format!("reserve {name}: acknowledged hold {hold} is not stored"));
                    }
                } else if outcome == Outcome::Unknown {
                    unknown_reserves += 1;
                }
                continue;
            }
        };
        let what = format!("{} {name} ({:?})", op.kind.as_str(), outcome);
        match (&outcome, op.kind) {
            (Outcome::Acked { .. }, Kind::Release) => {
                if !written.is_empty() {
                    anomalies.push(format!("{what}: released hold has commit entries {written:?}"));
                }
                if holds.get(name).map(String::as_str) != Some("released") {
                    anomalies.push(format!("{what}: hold is {:?}, not released", holds.get(name)));
                }
            }
            (Outcome::Acked { id }, _) => {
                if written.len() != 1 || id.as_deref() != written.first().copied() {
                    anomalies.push(format!("{what}: acknowledged entry {id:?}, ledger has {written:?}"));
                }
                if op.kind == Kind::Commit && holds.get(name).map(String::as_str) != Some("committed") {
                    anomalies.push(format!("{what}: hold is {:?}, not committed", holds.get(name)));
                }
            }
            (Outcome::Denied | Outcome::Refused, _) => {
                if !written.is_empty() {
                    anomalies.push(format!("{what}: not acknowledged, yet ledger has {written:?}"));
                }
            }
            (Outcome::Unknown, _) => {
                if written.len() > 1 {
                    anomalies.push(format!("{what}: unknown outcome applied {} times: {written:?}", written.len()));
                }
                report.unknown_applied += usize::from(written.len() == 1);
            }
        }
    }
    // Nothing nobody asked for, nothing twice.
    for ((kind, key), ids) in &by_key {
        if !asked_keys.contains(&(*kind, *key)) {
            anomalies.push(format!("{kind} entries {ids:?} under key {key} that no client sent"));
        } else if ids.len() > 1 {
            anomalies.push(format!("{kind} key {key} has {} entries: {ids:?}", ids.len()));
        }
    }
    for (hold, ids) in &commits {
        if !asked_holds.contains(hold) {
            anomalies.push(format!("commit entries {ids:?} of hold {hold} that no client settled"));
        } else if ids.len() > 1 {
            anomalies.push(format!("hold {hold} committed {} times: {ids:?}", ids.len()));
        }
    }
    let stray_holds = holds.keys().filter(|h| !acked_holds.contains(*h)).count();
    if stray_holds > unknown_reserves {
        anomalies.push(format!("{stray_holds} stored holds were never acknowledged, but only {unknown_reserves} reserves had unknown outcomes"));
    }
    report.unknown_applied += stray_holds;

    check_refunds(&entries, &mut anomalies);
    check_floor(&entries, expect, &mut anomalies);
    report.meters = check_balances(db, expect, &mut anomalies).await?;
    report.anomalies = anomalies;
    Ok(report)
}

/// Refunds of one charge add up to at most the charge.
fn check_refunds(entries: &[Entry], anomalies: &mut Vec<String>) {
    let charges: HashMap<&str, i64> = entries.iter().filter(|e| e.kind == "debit" || e.kind == "commit").map(|e| (e.id.as_str(), -e.delta)).collect();
    let mut refunded: HashMap<&str, i64> = HashMap::new();
    for e in entries.iter().filter(|e| e.kind == "refund") {
        match e.refunds.as_deref() {
            Some(original) => *refunded.entry(original).or_insert(0) += e.delta,
            None => anomalies.push(format!("refund {} names no charge", e.id)),
        }
    }
    for (original, total) in refunded {
        match charges.get(original) {
            Some(charged) if total <= *charged => {}
            Some(charged) => anomalies.push(format!("charge {original} of {charged} credits refunded {total}")),
            None => anomalies.push(format!("refunds of {original}, which is not a charge")),
        }
    }
}

/// The running balance of each meter (its ledger in `seq` order) stays at or above the floor.
fn check_floor(entries: &[Entry], expect: &Expect, anomalies: &mut Vec<String>) {
    let mut running: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for e in entries {
        let balance = running.entry((e.account.as_str(), e.meter.as_str())).or_insert(0);
        *balance += e.delta;
        if *balance < -expect.debt_limit_credits {
            anomalies
                .push(format!("{}/{}: balance {} below the floor -{} after entry {}", e.account, e.meter, balance, expect.debt_limit_credits, e.id));
        }
    }
}

/// Every stored balance is explained by its ledger, `seq` has no gaps, debt stays within the
/// limit and the net balance is not below the floor. (Live holds are not subtracted: a record may
/// lawfully take the net into debt while holds are live; gates keep availability ≥ 0 as they
/// decide.) Returns the meters checked.
async fn check_balances(db: &tokio_postgres::Client, expect: &Expect, anomalies: &mut Vec<String>) -> Result<usize, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT b.account_id, b.meter, b.allowance_credits, b.allowance_used_credits, b.rollover_credits, b.debt_credits, b.seq, \
               (SELECT COALESCE(SUM(remaining_credits), 0)::bigint FROM grants g WHERE g.tenant_id = b.tenant_id AND g.account_id = b.account_id \
                  AND g.meter = b.meter AND (g.expires_at IS NULL OR g.expires_at > $1)), \
               (SELECT COALESCE(SUM(delta_credits), 0)::bigint FROM ledger_entries l WHERE l.tenant_id = b.tenant_id AND l.account_id = b.account_id AND l.meter = b.meter), \
               (SELECT COUNT(*) FROM ledger_entries l WHERE l.tenant_id = b.tenant_id AND l.account_id = b.account_id AND l.meter = b.meter), \
               (SELECT COALESCE(MAX(seq), 0) FROM ledger_entries l WHERE l.tenant_id = b.tenant_id AND l.account_id = b.account_id AND l.meter = b.meter), \
               (SELECT COALESCE(SUM(amount_credits), 0)::bigint FROM holds h WHERE h.tenant_id = b.tenant_id AND h.account_id = b.account_id \
                  AND h.meter = b.meter AND h.status = 'held' AND h.expires_at > $1) \
             FROM meter_balances b",
            &[&expect.now],
        )
        .await?;
    for row in &rows {
        let name = format!("{}/{}", row.get::<_, String>(0), row.get::<_, String>(1));
        let allowance: Option<i64> = row.get(2);
        let (used, rollover, debt, seq, grants, ledger_sum, count, max_seq, held): (i64, i64, i64, i64, i64, i64, i64, i64, i64) =
            (row.get(3), row.get(4), row.get(5), row.get(6), row.get(7), row.get(8), row.get(9), row.get(10), row.get(11));
        if seq != count || max_seq != count {
            anomalies.push(format!("{name}: seq {seq}, {count} entries, highest seq {max_seq}: a gap"));
        }
        if debt > expect.debt_limit_credits {
            anomalies.push(format!("{name}: debt {debt} beyond the limit {}", expect.debt_limit_credits));
        }
        if let Some(allowance) = allowance {
            let net = allowance - used + rollover + grants - debt;
            if ledger_sum != net {
                anomalies.push(format!("{name}: ledger sums to {ledger_sum}, balance is {net}"));
            }
            if net < -expect.debt_limit_credits {
                anomalies.push(format!("{name}: net {net} below the floor (held {held})"));
            }
            if held < 0 {
                anomalies.push(format!("{name}: negative live holds {held}"));
            }
        }
    }
    Ok(rows.len())
}
