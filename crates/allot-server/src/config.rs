//! The server's configuration: one typed struct, read once at start-up from flags or `ALLOT_*`
//! environment variables, with every limit named and bounded.

use std::net::SocketAddr;

/// Everything `allot serve` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on; port 0 picks a free port.
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// PostgreSQL connection string (the source of truth for balances, holds and the ledger).
    #[arg(long, env = "ALLOT_DATABASE_URL")]
    pub database_url: String,
    /// Redis URL (cooldown locks, rate counters); optional until a feature needs it.
    #[arg(long, env = "ALLOT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Apply pending migrations before serving.
    #[arg(long, env = "ALLOT_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Most PostgreSQL connections in the pool.
    #[arg(long, env = "ALLOT_DB_POOL_SIZE_MAX", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_pool_size_max: u32,
    /// Longest wait for a pooled connection before answering UNAVAILABLE.
    #[arg(long, env = "ALLOT_DB_POOL_WAIT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub db_pool_wait_ms: u64,
    /// PostgreSQL statement_timeout for every statement.
    #[arg(long, env = "ALLOT_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub db_statement_timeout_ms: u64,
    /// PostgreSQL lock_timeout: the longest wait for a balance row lock.
    #[arg(long, env = "ALLOT_DB_LOCK_TIMEOUT_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub db_lock_timeout_ms: u64,
    /// Largest gRPC message accepted or sent.
    #[arg(long, env = "ALLOT_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1024..=4 * 1024 * 1024))]
    pub max_message_bytes: u64,
    /// Longest time one RPC may take on the server, whatever the client's deadline.
    #[arg(long, env = "ALLOT_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_timeout_ms: u64,
    /// How often expired holds are voided.
    #[arg(long, env = "ALLOT_HOLD_SWEEP_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub hold_sweep_interval_ms: u64,
    /// How often dependencies are probed for the health service.
    #[arg(long, env = "ALLOT_HEALTH_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub health_interval_ms: u64,
    /// Longest wait for Redis on a rate decision before the meter's failure policy applies.
    #[arg(long, env = "ALLOT_REDIS_TIMEOUT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=5_000))]
    pub redis_timeout_ms: u64,
    /// Address for the Prometheus `/metrics` endpoint; unset = no endpoint.
    #[arg(long, env = "ALLOT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long a verified API key is trusted before it is looked up again (revocation delay).
    #[arg(long, env = "ALLOT_AUTH_CACHE_TTL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub auth_cache_ttl_ms: u64,
}

impl Config {
    /// A configuration with every default, for tests and `allot dev`.
    pub fn with_database(database_url: String, redis_url: Option<String>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url,
            redis_url,
            migrate: false,
            db_pool_size_max: 16,
            db_pool_wait_ms: 2_000,
            db_statement_timeout_ms: 5_000,
            db_lock_timeout_ms: 3_000,
            max_message_bytes: 256 * 1024,
            request_timeout_ms: 10_000,
            hold_sweep_interval_ms: 1_000,
            health_interval_ms: 1_000,
            auth_cache_ttl_ms: 30_000,
            redis_timeout_ms: 50,
            metrics_listen: None,
        }
    }
}
