//! Test support (feature `testkit`): one throwaway PostgreSQL and Redis per test process, a
//! migrated template database cloned into a fresh database per test, and a real server started
//! on `127.0.0.1:0` with an injected clock and gRPC clients that carry the test tenant's key.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use allot_proto::v1::admin_client::AdminClient;
use allot_proto::v1::entitlements_client::EntitlementsClient;
use allot_proto::v1::fair_use_client::FairUseClient;
use time::OffsetDateTime;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::clock::ManualClock;
use crate::config::Config;
use crate::localstack::{LocalPostgres, LocalRedis};
use crate::seed::TenantKey;
use crate::server::{serve, App};

const TEMPLATE_DB: &str = "allot_template";

/// The servers shared by every test of one process.
pub struct Stack {
    pub postgres: LocalPostgres,
    pub redis: LocalRedis,
    _root: tempfile::TempDir,
}

/// Starts (once per process) PostgreSQL and Redis, and migrates the template database.
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        // Server logs in test output when RUST_LOG is set (e.g. RUST_LOG=allot_server=debug).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
        }
        let root = tempfile::Builder::new().prefix("allot-test-").tempdir().expect("temp dir");
        let postgres = LocalPostgres::start(root.path()).expect("start postgres (run scripts/setup)");
        let redis = LocalRedis::start(root.path()).expect("start redis (run scripts/setup)");
        let admin = postgres.dsn("postgres");
        let template = postgres.dsn(TEMPLATE_DB);
        // A runtime of its own: the caller may be inside any test's runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                crate::dev::create_database(&admin, TEMPLATE_DB).await.expect("create template");
                crate::db::migrate(&template).await.expect("migrate template");
            });
        })
        .join()
        .expect("template set-up");
        Stack { postgres, redis, _root: root }
    })
}

/// Creates a fresh, migrated database for one test and returns its URL.
pub async fn fresh_database() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let stack = stack();
    let name = format!("t{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let (client, connection) = tokio_postgres::connect(&stack.postgres.dsn("postgres"), tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let mut attempt = 0;
    loop {
        match client.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")).await {
            Ok(()) => break,
            // Two clones of one template at the same instant can collide; take turns.
            Err(err) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(error = %err, "retrying database clone");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(err) => panic!("create test database: {err}"),
        }
    }
    drop(client);
    driver.abort();
    stack.postgres.dsn(&name)
}

/// Adds the test tenant's bearer key to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// Sends `api_key` as a bearer credential.
    pub fn new(api_key: &str) -> Bearer {
        Bearer(format!("Bearer {api_key}").parse().expect("ascii key"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Entitlements = EntitlementsClient<InterceptedService<Channel, Bearer>>;
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;
pub type FairUse = FairUseClient<InterceptedService<Channel, Bearer>>;

/// A real server on a fresh database, with a manual clock.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub database_url: String,
    pub clock: Arc<ManualClock>,
    /// Connections as the login role (not held to row-level security), for tests' own SQL.
    pub pool: deadpool_postgres::Pool,
    /// The server's own pool (acting as `Config::db_role`).
    pub app_pool: deadpool_postgres::Pool,
    /// The server's TLS configuration, when it serves TLS (to trigger a reload).
    pub tls: Option<Arc<crate::tls::Reloadable>>,
    /// Connections the server's services took (see `Ctx::db`).
    pub db_checkouts: Arc<std::sync::atomic::AtomicU64>,
    /// The server's cache of tenants' configuration (see `service::plan_book`).
    pub plan_book: Arc<crate::service::plan_book::PlanBook>,
    pub tenant: TenantKey,
    /// The configuration the server was started with.
    pub config: Config,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server whose clock reads `now` until moved.
    pub async fn start_at(now: OffsetDateTime) -> TestServer {
        Self::start_with(now, |_| {}).await
    }

    /// Starts a server at the current time.
    pub async fn start() -> TestServer {
        Self::start_at(OffsetDateTime::now_utc()).await
    }

    /// Starts a server with configuration changes applied.
    pub async fn start_with(now: OffsetDateTime, tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_on(fresh_database().await, now, tweak).await
    }

    /// Starts a server on `database_url` (migrated, or with `config.migrate` set by `tweak`) and
    /// creates the test tenant there. Redis is the shared test Redis unless `tweak` changes it.
    pub async fn start_on(database_url: String, now: OffsetDateTime, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::with_database(database_url, Some(stack().redis.url()));
        // Tests race hundreds of calls on a busy 2-core machine: give the live Redis room so a
        // slow answer is not mistaken for an outage. Tests of outages point at a closed port
        // (and set a short timeout themselves).
        config.redis_timeout_ms = 1_000;
        // Likewise for races on one row: dozens of callers queue for a connection and the lock.
        config.db_pool_wait_ms = 10_000;
        config.db_lock_timeout_ms = 10_000;
        // The statement timeout bounds a lock wait too: below the lock timeout it would cut the
        // queue short first (seen on a loaded machine: 100 racing debits of one account).
        config.db_statement_timeout_ms = 20_000;
        // Tests race hundreds of calls of one tenant; the fairness tests set their own limits.
        config.tenant_concurrency_max = 1_000;
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(now));
        let app = App::connect(config, clock.clone()).await.expect("connect");
        let tenant = crate::seed::tenant(&app.ctx.pool, "test").await.expect("tenant");
        Self::run(app, clock, tenant).await
    }

    /// Another replica of this server: a server of its own (its own pool, Redis connection,
    /// listener and background tasks) on the same database and Redis, with the same tenant and
    /// clock; `tweak` adjusts a copy of this server's configuration.
    pub async fn replica(&self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = self.config.clone();
        tweak(&mut config);
        let app = App::connect(config, self.clock.clone()).await.expect("connect replica");
        Self::run(app, self.clock.clone(), self.tenant.clone()).await
    }

    async fn run(app: App, clock: Arc<ManualClock>, tenant: TenantKey) -> TestServer {
        let config = app.config.clone();
        let database_url = config.database_url.clone();
        // The tests' own connections act as the login role (a superuser here), so they can check
        // invariants across tenants behind the server's back; the server's pool acts as
        // `allot_app`, held to row-level security.
        let pool = crate::db::pool(&Config { db_role: String::new(), ..config.clone() }).expect("test pool");
        let app_pool = app.ctx.pool.clone();
        let tls = app.tls.clone();
        let db_checkouts = app.ctx.db_checkouts.clone();
        let plan_book = app.ctx.plan_book.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(app, listener, async {
            let _ = rx.await;
        }));
        TestServer { addr, database_url, clock, pool, app_pool, tls, db_checkouts, plan_book, tenant, config, shutdown: Some(tx), task: Some(task) }
    }

    /// A new API key of `role` for the test tenant (the default clients carry an admin key).
    pub async fn key(&self, role: crate::auth::Role) -> String {
        crate::seed::api_key(&self.app_pool, self.tenant.tenant, &format!("test-{role}"), role).await.expect("api key").key
    }

    /// Clients authenticated with a new key of `role` for the test tenant.
    pub async fn clients_as(&self, role: crate::auth::Role) -> (Entitlements, Admin) {
        let key = self.key(role).await;
        self.clients_for(&key).await
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).expect("endpoint");
        for _ in 0..100 {
            if let Ok(channel) = endpoint.connect().await {
                return channel;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server at {} did not accept connections", self.addr);
    }

    /// Clients authenticated with `api_key`.
    /// An authenticated channel for any Allot client: `XClient::with_interceptor(channel, bearer)`.
    pub async fn channel_for(&self, api_key: &str) -> (Channel, Bearer) {
        (self.channel().await, Bearer::new(api_key))
    }

    pub async fn clients_for(&self, api_key: &str) -> (Entitlements, Admin) {
        let channel = self.channel().await;
        let bearer = Bearer(format!("Bearer {api_key}").parse().expect("ascii key"));
        (EntitlementsClient::with_interceptor(channel.clone(), bearer.clone()), AdminClient::with_interceptor(channel, bearer))
    }

    /// A FairUse client authenticated with `api_key`.
    pub async fn fair_use_for(&self, api_key: &str) -> FairUse {
        let bearer = Bearer(format!("Bearer {api_key}").parse().expect("ascii key"));
        FairUseClient::with_interceptor(self.channel().await, bearer)
    }

    /// Clients authenticated as the test tenant.
    pub async fn clients(&self) -> (Entitlements, Admin) {
        self.clients_for(&self.tenant.api_key).await
    }

    /// A direct database connection, for checking invariants behind the API's back.
    pub async fn sql(&self) -> deadpool_postgres::Client {
        self.pool.get().await.expect("database connection")
    }

    /// Asks the server to shut down (as SIGTERM does) without waiting: it stops accepting calls
    /// and drains the ones in flight.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the server's `serve` returns (after [`TestServer::begin_shutdown`]) and gives
    /// its result.
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("server task");
        task.await.expect("server task")
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
