//! What a batch reads of its accounts, in one statement: the tenant's configuration version,
//! which accounts belong to an org, their subscriptions and, when asked, their fair-use
//! standings — four tables that a lone decision reads one statement each. Each account is looked
//! up on its own (lateral subqueries; see `balances::lock_many`). Folding them cut PostgreSQL's
//! work per batch, which at small batches is mostly per statement (docs/benchmarks.md,
//! finding 26).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use time::OffsetDateTime;

use super::fair_use::Standings;
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
    /// By account, read when `violations_since` was given (as `fair_use::standings` reads them).
    pub standings: Option<Standings>,
}

/// Reads [`AccountReads`] of `accounts` (at least one). Fails when the tenant's row is not
/// visible, as `tenants::config_version` does.
pub async fn read(tx: &Tx<'_>, tenant: TenantId, accounts: &[&str], violations_since: Option<OffsetDateTime>) -> Result<AccountReads, Error> {
    assert!(!accounts.is_empty(), "a batch reads at least one account");
    let rows = match violations_since {
        Some(since) => {
            let stmt = tx.prepare_cached(&WITH_STANDINGS_SQL).await?;
            tx.query(&stmt, &[&tenant.0, &accounts, &since]).await?
        }
        None => {
            let stmt = tx.prepare_cached(&WITHOUT_STANDINGS_SQL).await?;
            tx.query(&stmt, &[&tenant.0, &accounts]).await?
        }
    };
    let config_version: Option<i64> = rows.first().and_then(|row| row.get(SUBSCRIPTION_COLUMNS + 1));
    let config_version = config_version.ok_or_else(|| Error::Internal(format!("tenant {tenant} is not visible: its transaction did not begin")))?;
    let mut reads = AccountReads {
        config_version,
        members: HashSet::new(),
        subscriptions: HashMap::new(),
        standings: violations_since.map(|_| HashMap::with_capacity(rows.len())),
    };
    for row in &rows {
        let account: String = row.get(SUBSCRIPTION_COLUMNS);
        if row.get(SUBSCRIPTION_COLUMNS + 2) {
            reads.members.insert(account.clone());
        }
        if row.get::<_, Option<&str>>(0).is_some() {
            reads.subscriptions.insert(account.clone(), subscriptions::from_row(row)?);
        }
        if let Some(standings) = &mut reads.standings {
            let stage: Option<String> = row.get(SUBSCRIPTION_COLUMNS + 5);
            let stage = stage.and_then(|s| allot_domain::escalation::Stage::parse(&s));
            standings.insert(account, (row.get(SUBSCRIPTION_COLUMNS + 3), row.get(SUBSCRIPTION_COLUMNS + 4), stage));
        }
    }
    Ok(reads)
}

/// How many columns a subscription takes at the start of a row (`subscriptions::COLUMNS`).
const SUBSCRIPTION_COLUMNS: usize = 7;

static WITHOUT_STANDINGS_SQL: LazyLock<String> = LazyLock::new(|| accounts_sql(""));
static WITH_STANDINGS_SQL: LazyLock<String> = LazyLock::new(|| {
    accounts_sql(
        ", EXISTS (SELECT 1 FROM escalation_exempt x WHERE x.tenant_id = $1 AND x.account_id = a.id), \
         (SELECT COUNT(*) FROM classifications c WHERE c.tenant_id = $1 AND c.account_id = a.id AND c.violation AND c.created_at > $3), \
         (SELECT e.stage FROM escalation_state e WHERE e.tenant_id = $1 AND e.account_id = a.id)",
    )
});

/// Per account: its subscription's columns (NULL without one), its id, the configuration version,
/// whether it belongs to an org, then `more`.
fn accounts_sql(more: &str) -> String {
    let columns = subscriptions::COLUMNS;
    assert_eq!(columns.split(',').count(), SUBSCRIPTION_COLUMNS, "the subscription's columns come first");
    format!(
        "SELECT s.*, a.id, (SELECT t.config_version FROM tenants t WHERE t.id = $1), \
           EXISTS (SELECT 1 FROM accounts m WHERE m.tenant_id = $1 AND m.id = a.id AND m.org_id IS NOT NULL){more} \
         FROM unnest($2::text[]) AS a(id) \
         LEFT JOIN LATERAL (SELECT {columns} FROM subscriptions WHERE tenant_id = $1 AND account_id = a.id LIMIT 1) s ON true"
    )
}
