//! Streams a tenant's outbox to a consumer: everything after its cursor, then new events as they
//! are committed (polled). Cursors are per tenant, gap-free and in commit order, so resuming
//! from the last cursor received loses and repeats nothing.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Ctx;
use crate::error::Error;
use crate::ids::TenantId;
use crate::repo::outbox::EventRow;

/// Events read per query.
pub const BATCH_MAX: i64 = 500;
/// How often an idle stream looks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Events buffered per stream before the reader waits for the consumer.
pub const BUFFER_EVENTS: usize = 256;

/// Starts a stream after `cursor`. It ends when the receiver is dropped.
pub fn watch(ctx: Ctx, tenant: TenantId, mut cursor: i64) -> mpsc::Receiver<Result<EventRow, Error>> {
    let (tx, rx) = mpsc::channel(BUFFER_EVENTS);
    tokio::spawn(async move {
        loop {
            let batch = async {
                let mut client = ctx.pool.get().await?;
                let tx = crate::db::begin_with(&mut client, tenant, crate::db::Access::ReadOnly).await?;
                let rows = crate::repo::outbox::after(&tx, tenant, cursor, BATCH_MAX).await?;
                tx.commit().await?;
                Ok::<_, Error>(rows)
            }
            .await;
            match batch {
                Ok(rows) if rows.is_empty() => {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Ok(rows) => {
                    for row in rows {
                        cursor = row.seq;
                        if tx.send(Ok(row)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        }
    });
    rx
}
