//! What a batch reads of its accounts, in one statement: the tenant's configuration version,
//! which accounts belong to an org and which have fair-use state (one probe of `accounts`), and
//! their subscriptions — tables that a lone decision reads one statement each. Each account is
//! looked up on its own (lateral subqueries; see `balances::lock_many`). Folding them cut
//! PostgreSQL's work per batch, which at small batches is mostly per statement (docs/benchmarks.md,
//! finding 26). The fair-use standings, when asked, are read by a second statement for the
//! accounts marked as having any (migration V17; finding 59): nearly every account has none, and
//! reading them for every account was half of the first statement's cost.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use time::OffsetDateTime;

use super::fair_use::{self, Standings};
use super::subscriptions::{self, SubscriptionRecord};
use super::Tx;
use crate::error::Error;
use crate::ids::TenantId;

/// What [`read`] found.
#[derive(Debug)]
pub struct AccountReads {
    /// The tenant's configuration version (see `tenants::config_version`).
    pub config_version: i64,
    /// The accounts that belong to an org.
    pub members: HashSet<String>,
    /// By account; accounts without one are absent.
    pub subscriptions: HashMap<String, SubscriptionRecord>,
    /// By account, read when `violations_since` was given (as `fair_use::standings` reads them);
    /// accounts without fair-use state are absent (no exemption, no violations, no stored stage).
    pub standings: Option<Standings>,
    /// The accounts marked as having fair-use state (migration V17): the only ones whose
    /// standings are worth reading.
    pub marked: Vec<String>,
}

/// Reads [`AccountReads`] of `accounts` (at least one). Fails when the tenant's row is not
/// visible, as `tenants::config_version` does.
pub async fn read(tx: &Tx<'_>, tenant: TenantId, accounts: &[&str], violations_since: Option<OffsetDateTime>) -> Result<AccountReads, Error> {
    assert!(!accounts.is_empty(), "a batch reads at least one account");
    let stmt = tx.prepare_cached(&ACCOUNTS_SQL).await?;
    let rows = tx.query(&stmt, &[&tenant.0, &accounts]).await?;
    let config_version: Option<i64> = rows.first().and_then(|row| row.get(SUBSCRIPTION_COLUMNS + 1));
    let config_version = config_version.ok_or_else(|| Error::Internal(format!("tenant {tenant} is not visible: its transaction did not begin")))?;
    let mut reads = AccountReads { config_version, members: HashSet::new(), subscriptions: HashMap::new(), standings: None, marked: Vec::new() };
    assert_eq!(rows.len(), accounts.len(), "one row per account");
    let mut marked: Vec<&str> = Vec::new();
    for row in &rows {
        let account: &str = row.get(SUBSCRIPTION_COLUMNS);
        if row.get(SUBSCRIPTION_COLUMNS + 2) {
            reads.members.insert(account.to_owned());
        }
        if row.get(SUBSCRIPTION_COLUMNS + 3) {
            marked.push(account);
        }
        if row.get::<_, Option<&str>>(0).is_some() {
            reads.subscriptions.insert(account.to_owned(), subscriptions::from_row(row)?);
        }
    }
    if let Some(since) = violations_since {
        reads.standings = Some(fair_use::standings(tx, tenant, &marked, since).await?);
    }
    reads.marked = marked.into_iter().map(str::to_owned).collect();
    Ok(reads)
}

/// How many columns a subscription takes at the start of a row (`subscriptions::COLUMNS`).
const SUBSCRIPTION_COLUMNS: usize = 7;

/// Per account: its subscription's columns (NULL without one), its id, the
/// configuration version, whether it belongs to an org, whether it has fair-use state.
static ACCOUNTS_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = subscriptions::COLUMNS;
    assert_eq!(columns.split(',').count(), SUBSCRIPTION_COLUMNS, "the subscription's columns come first");
    format!(
        "SELECT s.*, a.id, (SELECT t.config_version FROM tenants t WHERE t.id = $1), \
           COALESCE(m.org_id IS NOT NULL, false), COALESCE(m.fair_use_marked, false) \
         FROM unnest($2::text[]) AS a(id) \
         LEFT JOIN LATERAL (SELECT org_id, fair_use_marked FROM accounts WHERE tenant_id = $1 AND id = a.id LIMIT 1) m ON true \
         LEFT JOIN LATERAL (SELECT {columns} FROM subscriptions WHERE tenant_id = $1 AND account_id = a.id LIMIT 1) s ON true"
    )
});
