//! The PostgreSQL pool and schema migrations. Every connection is set up with the timeouts that
//! keep a stuck lock or a dropped client from pinning a connection inside a transaction, and is
//! checked for durability: with `fsync=off` or `synchronous_commit=off` an acknowledged charge
//! could vanish in a crash, so such a connection is refused (unless explicitly allowed).
//!
//! Connections act as `Config::db_role` (`allot_app`: no BYPASSRLS, owns no table), so
//! PostgreSQL's row-level security applies to every statement; transactions start through
//! [`begin`] (tenant-scoped) or [`begin_all_tenants`] (named background jobs), see [`tx`].

use std::time::Duration;

use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};

use crate::config::Config;

pub mod driven;
pub mod tx;

pub use tx::{begin, begin_all_tenants, begin_batch, begin_with, Access, AllTenants, Tx};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Idle time before the first TCP keepalive probe on a database connection.
const KEEPALIVE_IDLE_S: u64 = 60;
/// Between unanswered probes.
const KEEPALIVE_INTERVAL_S: u64 = 10;
/// Unanswered probes before the connection is declared dead.
const KEEPALIVE_RETRIES: u32 = 3;

/// Builds the pool. Connections are opened lazily; a database that is down at start-up makes
/// requests answer UNAVAILABLE until it is back.
pub fn pool(config: &Config) -> anyhow::Result<Pool> {
    pool_sized(config, config.db_pool_size_max)
}

/// Most lane connections (`driven`) for a server of `db_pool_size_max` connections: a quarter of
/// them, at most [`LANE_CONNECTIONS_MAX`], none when there are fewer than two.
pub fn lane_connections(db_pool_size_max: u32) -> u32 {
    match db_pool_size_max {
        0 | 1 => 0,
        n => (n / 4).clamp(1, LANE_CONNECTIONS_MAX),
    }
}

/// Most lane connections: a debit lane has one batch at the database at a time, and a tenant
/// has two debit lanes by default.
pub const LANE_CONNECTIONS_MAX: u32 = 8;

/// `application_name` of lane connections (the main pool's are `allot`).
pub const LANE_APPLICATION_NAME: &str = "allot-lane";

/// The server's pools: `db_pool_size_max` connections in all, [`lane_connections`] of them for
/// small debit batches (polled by the batch that uses them, `driven`), the rest in the main pool.
pub fn pools(config: &Config) -> anyhow::Result<(Pool, Option<driven::DrivenPool>)> {
    let lanes = lane_connections(config.db_pool_size_max);
    let main = pool_sized(config, config.db_pool_size_max - lanes)?;
    if lanes == 0 {
        return Ok((main, None));
    }
    let mut pg = pg_config(config)?;
    // Told apart from the main pool's in `pg_stat_activity`.
    pg.application_name(LANE_APPLICATION_NAME);
    let manager = driven::DrivenManager { pg, allow_unsafe_durability: config.allow_unsafe_durability };
    let wait = Duration::from_millis(config.db_pool_wait_ms);
    let driven = driven::DrivenPool::builder(manager)
        .max_size(usize::try_from(lanes)?)
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(deadpool::Runtime::Tokio1)
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .build()?;
    Ok((main, Some(driven)))
}

/// How every connection of the server connects: its options, keepalives and role.
fn pg_config(config: &Config) -> anyhow::Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = config.database_url.parse()?;
    pg.application_name("allot");
    pg.connect_timeout(Duration::from_secs(3));
    // The pool hands out the connection used last (below), so some connections idle for long:
    // TCP keepalives find one dropped silently on the way (a NAT, a proxy's idle timeout) within
    // about a minute and a half instead of the system's two hours, so it fails fast and is replaced.
    // A database URL that sets keepalives itself keeps its own.
    if !config.database_url.contains("keepalives") {
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(KEEPALIVE_IDLE_S));
        pg.keepalives_interval(Duration::from_secs(KEEPALIVE_INTERVAL_S));
        pg.keepalives_retries(KEEPALIVE_RETRIES);
    }
    // Server-side bounds: a statement, a lock wait and an idle transaction all end on their own.
    // The role travels in the startup options too: no extra round trip, and a connection that
    // cannot take it fails instead of running with the login role's rights.
    let role = if config.db_role.is_empty() { String::new() } else { format!(" -c role={}", config.db_role) };
    pg.options(format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}{role}",
        config.db_statement_timeout_ms,
        config.db_lock_timeout_ms,
        config.db_statement_timeout_ms.saturating_mul(2),
    ));
    Ok(pg)
}

/// The main pool, of `size_max` connections, each polled by a task of its own.
fn pool_sized(config: &Config, size_max: u32) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(pg_config(config)?, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let wait = Duration::from_millis(config.db_pool_wait_ms);
    let mut builder = Pool::builder(manager)
        .max_size(usize::try_from(size_max)?)
        // The connection used last is handed out first: the few connections a steady load needs
        // stay warm (their PostgreSQL backends' caches, finding 29) while the others idle.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait));
    if !config.allow_unsafe_durability {
        // Every new connection: a database restarted (or reconfigured) unsafely is refused too.
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                match unsafe_durability(client).await {
                    Ok(None) => Ok(()),
                    Ok(Some(setting)) => Err(HookError::Message(refusal(&setting).into())),
                    Err(err) => Err(HookError::Backend(err)),
                }
            })
        }));
    }
    Ok(builder.build()?)
}

/// The setting that makes commits unsafe on this connection (`fsync=off`,
/// `synchronous_commit=off`), if any. Per connection, since `synchronous_commit` can be set per
/// database or role.
pub async fn unsafe_durability(client: &tokio_postgres::Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client.query_one("SELECT current_setting('fsync'), current_setting('synchronous_commit')", &[]).await?;
    let (fsync, synchronous_commit): (String, String) = (row.get(0), row.get(1));
    Ok(if fsync == "off" {
        Some("fsync=off".to_owned())
    } else if synchronous_commit == "off" {
        Some("synchronous_commit=off".to_owned())
    } else {
        None
    })
}

fn refusal(setting: &str) -> String {
    format!(
        "PostgreSQL runs with {setting}: an acknowledged charge could be lost in a crash; \
         fix the server's settings, or set ALLOT_ALLOW_UNSAFE_DURABILITY=true for a throwaway environment"
    )
}

/// At start-up: refuses an unsafe database (see [`unsafe_durability`]) unless `allow`, in which
/// case it only warns. A database that cannot be reached yet is not an error (requests answer
/// UNAVAILABLE until it is back, and every new connection is checked).
pub async fn check_durability(pool: &Pool, allow: bool) -> anyhow::Result<()> {
    match pool.get().await {
        Ok(client) => match unsafe_durability(&client).await {
            Ok(Some(setting)) if allow => {
                tracing::warn!(setting = %setting, "postgresql durability is off, allowed by ALLOT_ALLOW_UNSAFE_DURABILITY");
                Ok(())
            }
            Ok(Some(setting)) => anyhow::bail!(refusal(&setting)),
            Ok(None) => Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "could not read postgresql durability settings");
                Ok(())
            }
        },
        Err(PoolError::PostCreateHook(HookError::Message(message))) => anyhow::bail!(message.into_owned()),
        Err(err) => {
            tracing::warn!(error = %err, "database unreachable at start-up, requests answer unavailable until it is back");
            Ok(())
        }
    }
}

/// Applies pending migrations, forward only. A session-level advisory lock makes concurrent
/// migrators (several replicas starting at once) take turns.
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    migrate_up_to(database_url, None).await
}

/// [`migrate`], stopping after migration `last` (all of them: `None`). For tests of what a
/// migration does to rows written before it.
pub async fn migrate_up_to(database_url: &str, last: Option<i32>) -> anyhow::Result<Vec<String>> {
    let target = last.map_or(refinery::Target::Latest, refinery::Target::Version);
    let (mut client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    const MIGRATION_LOCK: i64 = 0x0061_6c6c_6f74; // "allot" in ASCII
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let report = embedded::migrations::runner().set_abort_divergent(true).set_target(target).run_async(&mut client).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    drop(client);
    driver.abort();
    let applied = report?.applied_migrations().iter().map(|m| m.to_string()).collect();
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::{lane_connections, LANE_CONNECTIONS_MAX};

    #[test]
    fn lane_connections_are_a_quarter_of_the_pool_within_bounds() {
        assert_eq!(lane_connections(1), 0, "a one-connection pool spares none");
        assert_eq!(lane_connections(2), 1);
        assert_eq!(lane_connections(7), 1);
        assert_eq!(lane_connections(16), 4, "the default pool");
        assert_eq!(lane_connections(256), LANE_CONNECTIONS_MAX);
        for size in 2..=256 {
            assert!((1..size).contains(&lane_connections(size)), "the main pool keeps at least one of {size}");
        }
    }
}
