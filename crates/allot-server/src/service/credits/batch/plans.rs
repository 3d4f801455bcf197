//! What a batch — of debits (`group`) or of checks (`read`) — knows of its accounts' plans: which
//! plans' terms and soft caps to read for its meters, each meter's terms and soft caps, its
//! accounts' fair-use standings, and a meter's usage within a soft cap's window. The reads
//! themselves stay with each batch, pipelined with its own statements.

use std::collections::{BTreeSet, HashMap};

use allot_domain::escalation::SoftCap;
use time::OffsetDateTime;

use crate::error::Error;
use crate::ids::TenantId;
use crate::repo::fair_use::{counted_from, Settings};
use crate::repo::plans::MeterTerms;
use crate::repo::{self, Tx};
use crate::service::fair_use::Standing;
use crate::service::in_force::Payer;
use crate::service::plan_book::PlanBook;

/// A meter's key: `(account, meter)`.
pub type Key = (String, String);

/// Hourly usage by meter, as `repo::fair_use::hourly_since` reads it.
pub type Hourly = HashMap<Key, Vec<(OffsetDateTime, i64)>>;

/// The `(plan, meter)` pairs whose terms the meters `keys` need, and the plans whose soft caps
/// they need: sorted, each once. Accounts without a payer or a plan need none.
pub fn wanted<'a>(payers: &'a HashMap<String, Payer>, keys: &[(&str, &'a str)]) -> (Vec<(&'a str, &'a str)>, Vec<&'a str>) {
    let plan_meters: Vec<(&str, &str)> = keys
        .iter()
        .filter_map(|(account, meter)| payers.get(*account).and_then(|p| p.plan_id.as_deref()).map(|plan| (plan, *meter)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let plan_ids = plan_meters.iter().map(|(plan, _)| *plan).collect::<BTreeSet<_>>().into_iter().collect();
    (plan_meters, plan_ids)
}

/// The plans in force for a batch's accounts, with the terms and soft caps read for them.
pub struct Plans<'a> {
    pub payers: &'a HashMap<String, Payer>,
    pub terms: HashMap<Key, MeterTerms>,
    /// `(plan, meter, cap)`, in `(plan, meter, window)` order.
    pub soft_caps: Vec<(String, String, SoftCap)>,
}

impl Plans<'_> {
    fn plan_of(&self, account: &str) -> Option<&str> {
        self.payers.get(account).and_then(|p| p.plan_id.as_deref())
    }

    /// The terms of `meter` under the account's plan (a meter the plan does not list has none).
    pub fn terms_of(&self, account: &str, meter: &str) -> MeterTerms {
        self.plan_of(account).and_then(|plan| self.terms.get(&(plan.to_owned(), meter.to_owned()))).copied().unwrap_or(MeterTerms::UNLISTED)
    }

    /// The soft caps of `meter` under the account's plan, narrowest window first.
    pub fn caps_of(&self, account: &str, meter: &str) -> Vec<SoftCap> {
        let plan = self.plan_of(account);
        self.soft_caps.iter().filter(|(p, m, _)| Some(p.as_str()) == plan && m == meter).map(|(_, _, cap)| *cap).collect()
    }

    /// The hourly usage of the `capped` meters over the widest soft-cap window (nothing to read
    /// when no meter is capped).
    pub async fn hourly(&self, tx: &Tx<'_>, tenant: TenantId, capped: &[(&str, &str)], now: OffsetDateTime) -> Result<Hourly, Error> {
        if capped.is_empty() {
            return Ok(HashMap::new());
        }
        let widest_window_ms = self.soft_caps.iter().map(|(_, _, cap)| cap.window_ms).max().unwrap_or(0);
        repo::fair_use::hourly_since(tx, tenant, capped, now - time::Duration::milliseconds(widest_window_ms)).await
    }
}

/// A meter's usage in the hours that overlap a soft cap's window ending `now` (as
/// `repo::fair_use::used_since` counts it).
pub fn used_in_window(hourly: &Hourly, key: &Key, window_ms: i64, now: OffsetDateTime) -> i64 {
    let from = counted_from(now - time::Duration::milliseconds(window_ms));
    hourly.get(key).map_or(0, |hours| hours.iter().filter(|(hour, _)| *hour >= from).map(|(_, credits)| credits).sum())
}

/// The standings of accounts as `repo::fair_use::standings` reads them.
pub type StandingsRead = repo::fair_use::Standings;

/// For standings read before the batch knows its configuration version: the version whose
/// fair-use settings the plan book last held, and the start of their violation window at `now`;
/// `None` when it held none.
pub fn standings_hint(book: &PlanBook, tenant: TenantId, now: OffsetDateTime) -> Option<(i64, OffsetDateTime)> {
    book.settings_hint(tenant).map(|(version, settings)| (version, violations_since(&settings, now)))
}

/// What a batch's first read said of its accounts' fair-use standings.
pub struct EarlyStandings {
    /// Those `repo::account_reads` read with [`standings_hint`] (before the batch knows its
    /// configuration version), with the version of the settings they were read under; `None`
    /// when the book held no settings.
    read: Option<(i64, StandingsRead)>,
    /// The accounts marked as having fair-use state: the others have none.
    marked: Vec<String>,
}

/// [`EarlyStandings`] taken out of `reads`.
pub fn early_standings(hint: Option<(i64, OffsetDateTime)>, reads: &mut repo::account_reads::AccountReads) -> EarlyStandings {
    EarlyStandings {
        read: hint.zip(reads.standings.take()).map(|((version, _), standings)| (version, standings)),
        marked: std::mem::take(&mut reads.marked),
    }
}

/// The standings at `version`: those read early if they were read with its settings, else those
/// of the marked accounts read again with `settings` (the version's).
pub async fn standings_at(
    early: EarlyStandings,
    version: i64,
    settings: &Settings,
    tx: &Tx<'_>,
    tenant: TenantId,
    now: OffsetDateTime,
) -> Result<StandingsRead, Error> {
    match early.read {
        Some((read_at, standings)) if read_at == version => Ok(standings),
        _ => {
            let marked: Vec<&str> = early.marked.iter().map(String::as_str).collect();
            repo::fair_use::standings(tx, tenant, &marked, violations_since(settings, now)).await
        }
    }
}

fn violations_since(settings: &Settings, now: OffsetDateTime) -> OffsetDateTime {
    now - time::Duration::milliseconds(settings.violation_window_ms)
}

/// The standings of `accounts` from what `repo::fair_use::standings` read (an account it did not
/// return has no violations, no exemption and no stored stage).
pub fn standings<'a>(settings: &Settings, read: &StandingsRead, accounts: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, Standing> {
    accounts
        .into_iter()
        .map(|account| {
            let (exempt, violations, stored) = read.get(account).cloned().unwrap_or((false, 0, None));
            (account, Standing { settings: settings.clone(), exempt, violations, stored })
        })
        .collect()
}
