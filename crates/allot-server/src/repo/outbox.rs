//! `outbox_events`: events written in the same transaction as the change they describe,
//! numbered per tenant without gaps in commit order (the tenant's counter row is locked until the
//! writing transaction ends), so a consumer resuming after cursor N misses and repeats nothing.

use time::OffsetDateTime;

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, TenantId};

/// An event as stored.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub account_id: String,
    pub payload: serde_json::Value,
    pub created_at: OffsetDateTime,
}

/// Appends an event; returns its cursor.
pub async fn append(
    tx: &Tx<'_>,
    tenant: TenantId,
    kind: &str,
    account: &AccountId,
    payload: serde_json::Value,
    now: OffsetDateTime,
) -> Result<i64, Error> {
    let counter = tx
        .prepare_cached(
            "INSERT INTO outbox_counters (tenant_id, last_seq) VALUES ($1, 1) \
             ON CONFLICT (tenant_id) DO UPDATE SET last_seq = outbox_counters.last_seq + 1 RETURNING last_seq",
        )
        .await?;
    let seq: i64 = tx.query_one(&counter, &[&tenant.0]).await?.get(0);
    let insert = tx
        .prepare_cached("INSERT INTO outbox_events (tenant_id, seq, kind, account_id, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .await?;
    tx.execute(&insert, &[&tenant.0, &seq, &kind, &account.as_str(), &payload, &now]).await?;
    Ok(seq)
}

/// Events after `after`, oldest first.
pub async fn after(client: &Tx<'_>, tenant: TenantId, after: i64, limit: i64) -> Result<Vec<EventRow>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, kind, account_id, payload, created_at FROM outbox_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await?;
    let rows = client.query(&stmt, &[&tenant.0, &after, &limit]).await?;
    Ok(rows.iter().map(|r| EventRow { seq: r.get(0), kind: r.get(1), account_id: r.get(2), payload: r.get(3), created_at: r.get(4) }).collect())
}
