//! Black-box tests of `allot serve`'s life cycle, on the real binary:
//!
//! - `sigterm_drains_an_in_flight_call_then_exits`: a call waiting on a row lock when SIGTERM
//!   arrives still completes OK, then the process exits 0 (settings from a `--config` file).
//! - `sigterm_stops_after_the_grace_window`: with a call that cannot finish, the process exits
//!   once `shutdown_grace_ms` has passed.
//! - `start_up_errors_name_their_source`: a bad configuration file, an unknown key, an invalid
//!   connection string and a PostgreSQL running with `fsync=off` each stop start-up with a
//!   message naming the file, the key or the setting.
//!
//! Children run with every inherited `ALLOT_*` variable removed, are stopped by their own PID
//! (SIGTERM, or SIGKILL on drop if a test fails) and write their output to files under
//! `CARGO_TARGET_TMPDIR/operations-tests/`, kept when a test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_proto::v1::admin_client::AdminClient;
use allot_proto::v1::entitlements_client::EntitlementsClient;
use allot_server::config::Config;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

/// Longest wait for anything without a bound of its own (a guard against hanging).
const PATIENCE: Duration = Duration::from_secs(30);

fn scratch(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operations-tests");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir.join(format!("{name}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// A running `allot` child; killed by its own PID (and reaped) if still running when dropped.
struct Child {
    process: std::process::Child,
    stderr: PathBuf,
    files: Vec<PathBuf>,
}

impl Child {
    fn spawn(label: &str, args: &[&str], env: &[(&str, &str)], files: Vec<PathBuf>) -> Child {
        let stem = scratch(label);
        let stdout = stem.with_extension("stdout");
        let stderr = stem.with_extension("stderr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_allot"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ALLOT_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let process = command.spawn().unwrap_or_else(|e| panic!("spawn allot {args:?}: {e}"));
        let mut files = files;
        files.extend([stdout, stderr.clone()]);
        Child { process, stderr, files }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_wait().expect("try_wait")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn wait_for_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(started.elapsed() < PATIENCE, "allot (pid {}) still running; stderr:\n{}", self.pid(), self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until stderr contains `text`.
    async fn wait_for_log(&mut self, text: &str) {
        let started = Instant::now();
        while !self.stderr().contains(text) {
            assert!(self.exited().is_none(), "allot exited before logging {text:?}; stderr:\n{}", self.stderr());
            assert!(started.elapsed() < PATIENCE, "no {text:?} in stderr:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
        if !std::thread::panicking() {
            for file in &self.files {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}

fn write_config(label: &str, text: &str) -> PathBuf {
    let path = scratch(label).with_extension("toml");
    std::fs::write(&path, text).expect("write config file");
    path
}

fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii key"));
    request
}

fn debit(amount: i64, key: &str) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: "acct".into(),
        meter: "tokens".into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        mode: pb::DebitMode::Gate as i32,
        ..Default::default()
    }
}

async fn connect(server: &mut Child, listen: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{listen}")).expect("endpoint");
    let started = Instant::now();
    loop {
        assert!(server.exited().is_none(), "allot serve exited early; stderr:\n{}", server.stderr());
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(started.elapsed() < PATIENCE, "allot serve never accepted on {listen}; stderr:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A served database with a tenant, a `tokens` plan and one debit; then `acct`'s row lock taken
/// by the test and a second debit (`k1`) started, waiting on that lock.
struct Blocked {
    server: Child,
    pool: deadpool_postgres::Pool,
    blocker: deadpool_postgres::Client,
    call: tokio::task::JoinHandle<Result<pb::DebitResponse, tonic::Status>>,
}

async fn serve_with_a_blocked_call(label: &str, shutdown_grace_ms: u64) -> Blocked {
    let url = allot_server::testkit::fresh_database().await;
    // As the login role (not held to row-level security), so the blocker can lock any row.
    let pool = allot_server::db::pool(&Config { db_role: String::new(), ..Config::with_database(url.clone(), None) }).expect("pool");
    let key = allot_server::seed::tenant(&pool, "acme").await.expect("tenant").api_key;
    let listen = format!("127.0.0.1:{}", allot_server::localstack::free_port().expect("free port"));
    let config = write_config(
        label,
        &format!("listen = \"{listen}\"\ndatabase_url = \"{url}\"\nshutdown_grace_ms = {shutdown_grace_ms}\ndb_lock_timeout_ms = 60000\n"),
    );
    let config_arg = config.to_string_lossy().into_owned();
    let mut server = Child::spawn(label, &["serve", "--config", &config_arg], &[("ALLOT_LOG_FORMAT", "json")], vec![config]);
    let channel = connect(&mut server, &listen).await;

    let plan = pb::Plan {
        plan_id: "free".into(),
        tier: "free".into(),
        name: "Free".into(),
        meters: vec![pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(100), ..Default::default() }],
        is_free_default: true,
        ..Default::default()
    };
    AdminClient::new(channel.clone()).upsert_plan(authed(&key, pb::UpsertPlanRequest { plan: Some(plan) })).await.expect("plan");
    let mut entitlements = EntitlementsClient::new(channel);
    let first = entitlements.debit(authed(&key, debit(10, "k0"))).await.expect("debit").into_inner();
    assert_eq!(first.decision, pb::Decision::Allowed as i32);

    let blocker = pool.get().await.expect("connection");
    blocker.batch_execute("BEGIN; SELECT 1 FROM meter_balances WHERE account_id = 'acct' FOR UPDATE").await.expect("lock");
    let call = tokio::spawn(async move { entitlements.debit(authed(&key, debit(5, "k1"))).await.map(|r| r.into_inner()) });
    let database = url.rsplit('/').next().expect("db name").to_owned();
    let started = Instant::now();
    loop {
        let waiting: i64 = blocker
            .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", &[&database])
            .await
            .expect("activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the debit never waited on the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Blocked { server, pool, blocker, call }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_call_then_exits() {
    let Blocked { mut server, pool, blocker, call } = serve_with_a_blocked_call("drain", 30_000).await;

    sigterm(server.pid());
    server.wait_for_log("draining in-flight calls").await;
    assert!(server.exited().is_none() && !call.is_finished(), "the call is in flight and the server waits for it");
    blocker.batch_execute("ROLLBACK").await.expect("unlock");

    let response = call.await.expect("task").expect("the in-flight call completes after SIGTERM");
    assert_eq!(response.decision, pb::Decision::Allowed as i32);
    let status = server.wait_for_exit().await;
    assert!(status.success(), "exit {status}; stderr:\n{}", server.stderr());
    let entries: i64 =
        pool.get().await.expect("db").query_one("SELECT COUNT(*) FROM ledger_entries WHERE idempotency_key = 'k1'", &[]).await.expect("count").get(0);
    assert_eq!(entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_after_the_grace_window() {
    let Blocked { mut server, pool: _pool, blocker, call } = serve_with_a_blocked_call("grace", 1_000).await;

    sigterm(server.pid());
    let status = server.wait_for_exit().await;
    assert!(status.success(), "exit {status}; stderr:\n{}", server.stderr());
    assert!(server.stderr().contains("drain window over"), "stderr:\n{}", server.stderr());
    let cut = call.await.expect("task");
    assert!(cut.is_err(), "a call still running at the end of the window is cut off: {cut:?}");
    blocker.batch_execute("ROLLBACK").await.expect("unlock");
}

/// Runs `allot serve` expecting it to refuse to start; returns its stderr.
async fn refused(label: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Child::spawn(label, args, env, Vec::new());
    let status = child.wait_for_exit().await;
    let stderr = child.stderr();
    assert!(!status.success(), "allot {args:?} started; stderr:\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_name_their_source() {
    let url = allot_server::testkit::fresh_database().await;
    let listen = format!("127.0.0.1:{}", allot_server::localstack::free_port().expect("port"));

    // A value out of range in the file: the file, the key and the range.
    let file = write_config("range", &format!("database_url = \"{url}\"\nlisten = \"{listen}\"\ndb_pool_size_max = 0\n"));
    let path = file.to_string_lossy().into_owned();
    let stderr = refused("range", &["serve", "--config", &path], &[]).await;
    assert!(stderr.contains(&path) && stderr.contains("db_pool_size_max") && stderr.contains("1..=256"), "{stderr}");
    let _ = std::fs::remove_file(&file);

    // A misspelt key.
    let file = write_config("unknown", &format!("database_url = \"{url}\"\ndb_pool_sise_max = 8\n"));
    let path = file.to_string_lossy().into_owned();
    let stderr = refused("unknown", &["serve"], &[("ALLOT_CONFIG", &path)]).await;
    assert!(stderr.contains(&path) && stderr.contains("db_pool_sise_max") && stderr.contains("unknown key"), "{stderr}");
    let _ = std::fs::remove_file(&file);

    // A file that cannot be read.
    let missing = scratch("missing").with_extension("toml").to_string_lossy().into_owned();
    let stderr = refused("missing", &["serve", "--config", &missing], &[]).await;
    assert!(stderr.contains(&missing) && stderr.contains("cannot be read"), "{stderr}");

    // An environment variable that is not a connection string: named, not echoed.
    let stderr = refused("dsn", &["serve", "--listen", &listen], &[("ALLOT_DATABASE_URL", "postgresql://allot:s3cret@[::1")]).await;
    assert!(stderr.contains("database_url") && !stderr.contains("s3cret"), "{stderr}");

    // A PostgreSQL that could lose acknowledged commits.
    let root = scratch("fsync-off");
    let postgres_root = root.clone();
    let mut postgres = tokio::task::spawn_blocking(move || allot_server::localstack::LocalPostgres::start_with(&postgres_root, &[("fsync", "off")]))
        .await
        .expect("join")
        .expect("start postgres");
    let unsafe_url = postgres.dsn("postgres");
    let stderr = refused("fsync", &["serve", "--listen", &listen], &[("ALLOT_DATABASE_URL", &unsafe_url)]).await;
    assert!(stderr.contains("fsync=off") && stderr.contains("ALLOT_ALLOW_UNSAFE_DURABILITY"), "{stderr}");
    tokio::task::block_in_place(|| postgres.stop());
    let _ = std::fs::remove_dir_all(&root);
}
