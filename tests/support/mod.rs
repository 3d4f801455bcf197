//! Shared by the root fault tests (`faults_process.rs`, `faults_soak.rs`): a fresh database with a
//! tenant and the workload's plan, served by a child `allot serve` process on a fixed free port.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use allot_proto::v1::admin_client::AdminClient;
use allot_server::config::Config;
use allot_server::faults::process::AllotProcess;
use allot_server::faults::workload::{self, Bearer, Client};

/// Longest anything without a bound of its own may take (a guard against hanging).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Where child logs go (kept for post-mortems).
pub fn logs() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults")
}

/// A served database.
pub struct Served {
    pub process: AllotProcess,
    pub pool: deadpool_postgres::Pool,
    pub database_url: String,
    pub api_key: String,
    pub client: Client,
}

/// The `allot` binary `cargo test` built for this package (with the `failpoints` feature).
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_allot"))
}

/// A fresh database with a tenant, served by `allot serve` with `env` added; the free plan gives
/// `meter` `allowance` credits a period and debt down to `-debt_limit`.
pub async fn serve(label: &str, env: &[(&str, &str)], meter: &str, allowance: i64, debt_limit: i64) -> Served {
    let database_url = allot_server::testkit::fresh_database().await;
    serve_on(label, database_url, env, meter, allowance, debt_limit).await
}

/// Like [`serve`], on an existing migrated database.
pub async fn serve_on(label: &str, database_url: String, env: &[(&str, &str)], meter: &str, allowance: i64, debt_limit: i64) -> Served {
    // As the login role (not held to row-level security): the checks read every tenant's rows.
    let pool = allot_server::db::pool(&Config { db_role: String::new(), ..Config::with_database(database_url.clone(), None) }).expect("pool");
    let api_key = allot_server::seed::tenant(&pool, "faults").await.expect("tenant").api_key;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], allot_server::localstack::free_port().expect("free port")));
    let redis = allot_server::testkit::stack().redis.url();
    let mut all: Vec<(&str, &str)> = vec![("ALLOT_DATABASE_URL", &database_url), ("ALLOT_REDIS_URL", &redis)];
    all.extend_from_slice(env);
    let mut process = AllotProcess::start(binary(), label, &logs(), listen, &all);
    let channel = workload::lazy_channel(listen);
    let client = workload::client(channel.clone(), &api_key);
    let took = process.until_serving(&client, "probe", meter, PATIENCE).await;
    assert!(took.is_some(), "allot never served; stderr:\n{}", process.stderr());
    AdminClient::with_interceptor(channel, Bearer::new(&api_key))
        .upsert_plan(workload::plan_request(meter, allowance, debt_limit))
        .await
        .expect("plan");
    Served { process, pool, database_url, api_key, client }
}

/// The number of sessions of `database_url`'s database idle inside a transaction, after giving
/// them up to `within` to finish.
pub async fn idle_in_transaction(db: &deadpool_postgres::tokio_postgres::Client, database_url: &str, within: Duration) -> i64 {
    let database = database_url.rsplit('/').next().expect("database name").to_owned();
    let started = std::time::Instant::now();
    loop {
        let stuck: i64 = db
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if stuck == 0 || started.elapsed() >= within {
            return stuck;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
