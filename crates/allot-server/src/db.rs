//! The PostgreSQL pool and schema migrations. Every connection is set up with the timeouts that
//! keep a stuck lock or a dropped client from pinning a connection inside a transaction.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::config::Config;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Builds the pool. Connections are opened lazily; a database that is down at start-up makes
/// requests answer UNAVAILABLE until it is back.
pub fn pool(config: &Config) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = config.database_url.parse()?;
    pg.application_name("allot");
    pg.connect_timeout(Duration::from_secs(3));
    // Server-side bounds: a statement, a lock wait and an idle transaction all end on their own.
    pg.options(format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        config.db_statement_timeout_ms,
        config.db_lock_timeout_ms,
        config.db_statement_timeout_ms.saturating_mul(2),
    ));
    let manager = Manager::from_config(pg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let wait = Duration::from_millis(config.db_pool_wait_ms);
    let pool = Pool::builder(manager)
        .max_size(usize::try_from(config.db_pool_size_max)?)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .build()?;
    Ok(pool)
}

/// Applies pending migrations, forward only. A session-level advisory lock makes concurrent
/// migrators (several replicas starting at once) take turns.
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    let (mut client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    const MIGRATION_LOCK: i64 = 0x0061_6c6c_6f74; // "allot" in ASCII
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let report = embedded::migrations::runner().set_abort_divergent(true).run_async(&mut client).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    drop(client);
    driver.abort();
    let applied = report?.applied_migrations().iter().map(|m| m.to_string()).collect();
    Ok(applied)
}
