//! Fair-use state: settings and exemptions per tenant, classifications (violations), stored
//! stages, classifier tickets, soft caps, hourly usage and restrict-stage daily usage, and the
//! audit of control changes.

use std::collections::BTreeMap;

use allot_domain::escalation::{Ladder, SoftCap, Stage};
use time::{Date, OffsetDateTime};
use tokio_postgres::Statement;
use uuid::Uuid;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};

/// A tenant's fair-use settings (defaults when it never set any).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Settings {
    pub enabled: bool,
    pub kill_switch: bool,
    pub gate_score_milli: u32,
    #[serde(skip)]
    pub ladder: Ladder,
    pub violation_window_ms: i64,
    pub cooldown_ms: i64,
    pub exhausted_cooldown_ms: i64,
    pub ticket_ttl_ms: i64,
    pub throttle_rate_percent: u32,
    pub restrict_daily_budgets: BTreeMap<String, i64>,
    #[serde(skip)]
    pub updated_at: Option<OffsetDateTime>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            enabled: true,
            kill_switch: false,
            gate_score_milli: 700,
            ladder: Ladder { warning_after: 1, throttle_after: 2, restrict_after: 3 },
            violation_window_ms: 7 * 86_400_000,
            cooldown_ms: 12 * 3_600_000,
            exhausted_cooldown_ms: 3_600_000,
            ticket_ttl_ms: 900_000,
            throttle_rate_percent: 25,
            restrict_daily_budgets: BTreeMap::new(),
            updated_at: None,
        }
    }
}

const SETTINGS: &str = "enabled, kill_switch, gate_score_milli, warning_after, throttle_after, restrict_after, violation_window_ms, cooldown_ms, \
     exhausted_cooldown_ms, ticket_ttl_ms, throttle_rate_percent, restrict_daily_budgets, updated_at";

fn as_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub async fn settings(tx: &Tx<'_>, tenant: TenantId) -> Result<Settings, Error> {
    let sql = format!("SELECT {SETTINGS} FROM escalation_settings WHERE tenant_id = $1");
    let stmt = tx.prepare_cached(&sql).await?;
    let Some(row) = tx.query_opt(&stmt, &[&tenant.0]).await? else {
        return Ok(Settings::default());
    };
    let budgets: serde_json::Value = row.get(11);
    Ok(Settings {
        enabled: row.get(0),
        kill_switch: row.get(1),
        gate_score_milli: as_u32(row.get(2)),
        ladder: Ladder { warning_after: as_u32(row.get(3)), throttle_after: as_u32(row.get(4)), restrict_after: as_u32(row.get(5)) },
        violation_window_ms: row.get(6),
        cooldown_ms: row.get(7),
        exhausted_cooldown_ms: row.get(8),
        ticket_ttl_ms: row.get(9),
        throttle_rate_percent: as_u32(row.get(10)),
        restrict_daily_budgets: serde_json::from_value(budgets).map_err(|e| Error::Internal(format!("stored budgets: {e}")))?,
        updated_at: Some(row.get(12)),
    })
}

pub async fn save_settings(tx: &Tx<'_>, tenant: TenantId, s: &Settings, now: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO escalation_settings (tenant_id, enabled, kill_switch, gate_score_milli, warning_after, throttle_after, restrict_after, \
             violation_window_ms, cooldown_ms, exhausted_cooldown_ms, ticket_ttl_ms, throttle_rate_percent, restrict_daily_budgets, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (tenant_id) DO UPDATE SET \
             enabled = EXCLUDED.enabled, kill_switch = EXCLUDED.kill_switch, gate_score_milli = EXCLUDED.gate_score_milli, \
             warning_after = EXCLUDED.warning_after, throttle_after = EXCLUDED.throttle_after, restrict_after = EXCLUDED.restrict_after, \
             violation_window_ms = EXCLUDED.violation_window_ms, cooldown_ms = EXCLUDED.cooldown_ms, \
             exhausted_cooldown_ms = EXCLUDED.exhausted_cooldown_ms, ticket_ttl_ms = EXCLUDED.ticket_ttl_ms, \
             throttle_rate_percent = EXCLUDED.throttle_rate_percent, restrict_daily_budgets = EXCLUDED.restrict_daily_budgets, \
             updated_at = EXCLUDED.updated_at",
        )
        .await?;
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let budgets = serde_json::to_value(&s.restrict_daily_budgets).map_err(|e| Error::Internal(format!("budgets: {e}")))?;
    tx.execute(
        &stmt,
        &[
            &tenant.0,
            &s.enabled,
            &s.kill_switch,
            &int(s.gate_score_milli),
            &int(s.ladder.warning_after),
            &int(s.ladder.throttle_after),
            &int(s.ladder.restrict_after),
            &s.violation_window_ms,
            &s.cooldown_ms,
            &s.exhausted_cooldown_ms,
            &s.ticket_ttl_ms,
            &int(s.throttle_rate_percent),
            &budgets,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// An account's standing: exemption, violations since `since`, and the stored stage.
pub async fn standing(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, since: OffsetDateTime) -> Result<(bool, i64, Option<Stage>), Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM escalation_exempt WHERE tenant_id = $1 AND account_id = $2), \
             (SELECT COUNT(*) FROM classifications WHERE tenant_id = $1 AND account_id = $2 AND violation AND created_at > $3), \
             (SELECT stage FROM escalation_state WHERE tenant_id = $1 AND account_id = $2)",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&tenant.0, &account.as_str(), &since]).await?;
    let stage: Option<String> = row.get(2);
    Ok((row.get(0), row.get(1), stage.and_then(|s| Stage::parse(&s))))
}

/// Stores `stage` for `account` if its stored stage is still `from` (`None`: no stage stored
/// yet), and says whether it did. A stage is read without a lock (with the account's
/// violations, by every decision and classification), so two transactions can both see it move
/// from the same stage; the one that stores second finds the row changed (PostgreSQL waits for
/// the first to end and checks the latest row) and leaves it, so each move is stored and
/// announced once.
pub async fn set_stage(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    from: Option<Stage>,
    stage: Stage,
    reason: &str,
    now: OffsetDateTime,
) -> Result<bool, Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO escalation_state (tenant_id, account_id, stage, reason, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, account_id) DO UPDATE SET stage = EXCLUDED.stage, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at \
             WHERE escalation_state.stage = $6::text",
        )
        .await?;
    let from = from.map(|stage| stage.as_str());
    Ok(tx.execute(&stmt, &[&tenant.0, &account.as_str(), &stage.as_str(), &reason, &now, &from]).await? == 1)
}

pub async fn stored_reason(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<String, Error> {
    let stmt = tx.prepare_cached("SELECT reason FROM escalation_state WHERE tenant_id = $1 AND account_id = $2").await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &account.as_str()]).await?.map(|r| r.get(0)).unwrap_or_default())
}

pub async fn set_exempt(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, exempt: bool) -> Result<bool, Error> {
    let sql = if exempt {
        "INSERT INTO escalation_exempt (tenant_id, account_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM escalation_exempt WHERE tenant_id = $1 AND account_id = $2"
    };
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&stmt, &[&tenant.0, &account.as_str()]).await? == 1)
}

/// A stored classification.
#[derive(Debug, Clone)]
pub struct ClassificationRow {
    pub score_milli: u32,
    pub labels: Vec<String>,
    pub synthetic: bool,
    pub violation: bool,
    pub created_at: OffsetDateTime,
}

pub async fn insert_classification(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, c: &ClassificationRow) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO classifications (tenant_id, id, account_id, score_milli, labels, synthetic, violation, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    let labels = serde_json::to_value(&c.labels).map_err(|e| Error::Internal(format!("labels: {e}")))?;
    let score = i32::try_from(c.score_milli).unwrap_or(1_000);
    tx.execute(&stmt, &[&tenant.0, &Uuid::new_v4(), &account.as_str(), &score, &labels, &c.synthetic, &c.violation, &c.created_at]).await?;
    Ok(())
}

/// The newest classifications of an account.
pub async fn history(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, limit: i64) -> Result<Vec<ClassificationRow>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT score_milli, labels, synthetic, violation, created_at FROM classifications WHERE tenant_id = $1 AND account_id = $2 \
             ORDER BY created_at DESC LIMIT $3",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &account.as_str(), &limit]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let labels: serde_json::Value = r.get(1);
            ClassificationRow {
                score_milli: as_u32(r.get(0)),
                labels: serde_json::from_value(labels).unwrap_or_default(),
                synthetic: r.get(2),
                violation: r.get(3),
                created_at: r.get(4),
            }
        })
        .collect())
}

pub async fn insert_ticket(
    tx: &Tx<'_>,
    tenant: TenantId,
    id: Uuid,
    account: &AccountId,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<(), Error> {
    let stmt =
        tx.prepare_cached("INSERT INTO classifier_tickets (tenant_id, id, account_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)").await?;
    tx.execute(&stmt, &[&tenant.0, &id, &account.as_str(), &now, &expires_at]).await?;
    Ok(())
}

/// A ticket, locked: (account, expires_at, used).
pub async fn lock_ticket(tx: &Tx<'_>, tenant: TenantId, id: Uuid) -> Result<Option<(String, OffsetDateTime, bool)>, Error> {
    let stmt = tx
        .prepare_cached("SELECT account_id, expires_at, used_at IS NOT NULL FROM classifier_tickets WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
        .await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &id]).await?.map(|r| (r.get(0), r.get(1), r.get(2))))
}

pub async fn use_ticket(tx: &Tx<'_>, tenant: TenantId, id: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    let stmt = tx.prepare_cached("UPDATE classifier_tickets SET used_at = $3 WHERE tenant_id = $1 AND id = $2 AND used_at IS NULL").await?;
    if tx.execute(&stmt, &[&tenant.0, &id, &now]).await? != 1 {
        return Err(Error::Internal("ticket used twice under its lock".into()));
    }
    Ok(())
}

/// The UTC day of an instant (restrict-stage budgets are per UTC day).
pub fn day_of(t: OffsetDateTime) -> Date {
    t.to_offset(time::UtcOffset::UTC).date()
}

pub async fn restrict_used(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, day: Date) -> Result<i64, Error> {
    let stmt =
        tx.prepare_cached("SELECT used_credits FROM restrict_usage WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 AND day = $4").await?;
    Ok(tx.query_opt(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &day]).await?.map_or(0, |r| r.get(0)))
}

/// Adds to (or, negative, takes from; never below zero) a day's restricted usage.
pub async fn add_restrict_used(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    meter: &Meter,
    day: Date,
    delta_credits: i64,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO restrict_usage (tenant_id, account_id, meter, day, used_credits) VALUES ($1, $2, $3, $4, GREATEST($5::bigint, 0)) \
             ON CONFLICT (tenant_id, account_id, meter, day) DO UPDATE SET used_credits = GREATEST(restrict_usage.used_credits + $5, 0)",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &day, &delta_credits]).await?;
    Ok(())
}

/// The hour an instant falls in.
fn hour_of(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_minute(0).and_then(|t| t.replace_second(0)).and_then(|t| t.replace_nanosecond(0)).unwrap_or(t)
}

pub async fn add_hourly(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, at: OffsetDateTime, credits: i64) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO usage_hourly (tenant_id, account_id, meter, hour, used_credits) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, account_id, meter, hour) DO UPDATE SET used_credits = usage_hourly.used_credits + EXCLUDED.used_credits",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &hour_of(at), &credits]).await?;
    Ok(())
}

/// Usage of a meter in the hours that overlap `(since, now]` (hour granularity).
pub async fn used_since(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, meter: &Meter, since: OffsetDateTime) -> Result<i64, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(used_credits), 0)::bigint FROM usage_hourly WHERE tenant_id = $1 AND account_id = $2 AND meter = $3 AND hour >= $4",
        )
        .await?;
    Ok(tx.query_one(&stmt, &[&tenant.0, &account.as_str(), &meter.as_str(), &hour_of(since)]).await?.get(0))
}

/// Soft caps of a plan, optionally for one meter.
pub async fn soft_caps(tx: &Tx<'_>, tenant: TenantId, plan_id: &str, meter: Option<&Meter>) -> Result<Vec<(String, SoftCap)>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT meter, window_ms, threshold_credits FROM soft_caps WHERE tenant_id = $1 AND plan_id = $2 AND ($3::text IS NULL OR meter = $3) \
             ORDER BY meter, window_ms",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &plan_id, &meter.map(Meter::as_str)]).await?;
    Ok(rows.iter().map(|r| (r.get(0), SoftCap { window_ms: r.get(1), threshold_credits: r.get(2) })).collect())
}

pub async fn replace_soft_caps(tx: &Tx<'_>, tenant: TenantId, plan_id: &str, caps: &[(Meter, SoftCap)]) -> Result<(), Error> {
    let delete = tx.prepare_cached("DELETE FROM soft_caps WHERE tenant_id = $1 AND plan_id = $2").await?;
    tx.execute(&delete, &[&tenant.0, &plan_id]).await?;
    let insert =
        tx.prepare_cached("INSERT INTO soft_caps (tenant_id, plan_id, meter, window_ms, threshold_credits) VALUES ($1, $2, $3, $4, $5)").await?;
    for (meter, cap) in caps {
        tx.execute(&insert, &[&tenant.0, &plan_id, &meter.as_str(), &cap.window_ms, &cap.threshold_credits]).await?;
    }
    Ok(())
}

/// Records a control change.
pub async fn audit(
    tx: &Tx<'_>,
    tenant: TenantId,
    action: &str,
    before: serde_json::Value,
    after: serde_json::Value,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let stmt = tx.prepare_cached("INSERT INTO escalation_audit (tenant_id, action, before, after, created_at) VALUES ($1, $2, $3, $4, $5)").await?;
    tx.execute(&stmt, &[&tenant.0, &action, &before, &after, &now]).await?;
    Ok(())
}

/// Standings of several accounts, by account: whether it is exempt, its violations since a time,
/// and its stored stage.
pub type Standings = std::collections::HashMap<String, (bool, i64, Option<Stage>)>;

/// [`standing`] of several accounts at once (a batch of debits), by account; none, and no
/// statement, for no accounts.
pub async fn standings(tx: &Tx<'_>, tenant: TenantId, accounts: &[&str], since: OffsetDateTime) -> Result<Standings, Error> {
    if accounts.is_empty() {
        return Ok(Standings::new());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT a.id, EXISTS (SELECT 1 FROM escalation_exempt x WHERE x.tenant_id = $1 AND x.account_id = a.id), \
             (SELECT COUNT(*) FROM classifications c WHERE c.tenant_id = $1 AND c.account_id = a.id AND c.violation AND c.created_at > $3), \
             (SELECT s.stage FROM escalation_state s WHERE s.tenant_id = $1 AND s.account_id = a.id) \
             FROM unnest($2::text[]) AS a(id)",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &accounts, &since]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let stage: Option<String> = row.get(3);
            (row.get(0), (row.get(1), row.get(2), stage.and_then(|s| Stage::parse(&s))))
        })
        .collect())
}

/// [`add_hourly_many`]'s statement.
pub const ADD_HOURLY_MANY_SQL: &str = "INSERT INTO usage_hourly (tenant_id, account_id, meter, hour, used_credits) \
     SELECT $1, account_id, meter, $2, used_credits FROM unnest($3::text[], $4::text[], $5::bigint[]) AS u(account_id, meter, used_credits) \
     ON CONFLICT (tenant_id, account_id, meter, hour) DO UPDATE SET used_credits = usage_hourly.used_credits + EXCLUDED.used_credits";

/// [`add_hourly`] for several meters at once, `(account, meter, credits)`, in one statement
/// ([`ADD_HOURLY_MANY_SQL`], prepared already: sent when first polled); one meter may appear
/// more than once (its amounts are summed first).
pub async fn add_hourly_many(tx: &Tx<'_>, stmt: &Statement, tenant: TenantId, usage: &[(&str, &str, i64)], at: OffsetDateTime) -> Result<(), Error> {
    let mut merged: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (account, meter, credits) in usage {
        *merged.entry((account, meter)).or_default() += credits;
    }
    if merged.is_empty() {
        return Ok(());
    }
    let accounts: Vec<&str> = merged.keys().map(|k| k.0).collect();
    let meters: Vec<&str> = merged.keys().map(|k| k.1).collect();
    let credits: Vec<i64> = merged.values().copied().collect();
    tx.execute(stmt, &[&tenant.0, &hour_of(at), &accounts, &meters, &credits]).await?;
    Ok(())
}

/// Hourly usage of several meters since `since` (hour granularity), by `(account, meter)`, as
/// `(hour, credits)` rows: a batch sums them per soft-cap window.
pub async fn hourly_since(
    tx: &Tx<'_>,
    tenant: TenantId,
    keys: &[(&str, &str)],
    since: OffsetDateTime,
) -> Result<std::collections::HashMap<(String, String), Vec<(OffsetDateTime, i64)>>, Error> {
    let stmt = tx
        .prepare_cached(
            // One lookup per key (see `balances::lock_many`); the LIMIT (more hours than the
            // longest soft-cap window, 31 days, has) keeps the subquery from being merged into a join.
            "SELECT u.* FROM unnest($2::text[], $3::text[]) AS k(account_id, meter) \
             CROSS JOIN LATERAL (SELECT account_id, meter, hour, used_credits FROM usage_hourly \
               WHERE tenant_id = $1 AND account_id = k.account_id AND meter = k.meter AND hour >= $4 LIMIT 1000) u",
        )
        .await?;
    let (accounts, meters): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let mut by_meter: std::collections::HashMap<(String, String), Vec<(OffsetDateTime, i64)>> = std::collections::HashMap::new();
    for row in tx.query(&stmt, &[&tenant.0, &accounts, &meters, &hour_of(since)]).await? {
        by_meter.entry((row.get(0), row.get(1))).or_default().push((row.get(2), row.get(3)));
    }
    Ok(by_meter)
}

/// The first instant of the hour `since` falls in: usage in hours from there on counts.
pub fn counted_from(since: OffsetDateTime) -> OffsetDateTime {
    hour_of(since)
}

/// Soft caps of several plans at once, as `(plan, meter, cap)`.
pub async fn soft_caps_of(tx: &Tx<'_>, tenant: TenantId, plan_ids: &[&str]) -> Result<Vec<(String, String, SoftCap)>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT plan_id, meter, window_ms, threshold_credits FROM soft_caps WHERE tenant_id = $1 AND plan_id = ANY ($2) \
             ORDER BY plan_id, meter, window_ms",
        )
        .await?;
    let rows = tx.query(&stmt, &[&tenant.0, &plan_ids]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), SoftCap { window_ms: r.get(2), threshold_credits: r.get(3) })).collect())
}
