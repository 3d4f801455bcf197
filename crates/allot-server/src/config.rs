//! The server's configuration: one typed struct, read once at start-up, with every limit named
//! and bounded. Sources, strongest first: command-line flags, `ALLOT_*` environment variables, an
//! optional TOML file (`--config FILE` / `ALLOT_CONFIG`, see [`layer_file`]), built-in defaults.
//! The clap definition below is the one schema: names, ranges and help text; the file layer
//! reuses its parsers, so a bad value reads the same wherever it came from. [`Config::validate`]
//! adds the checks that span fields or need parsing (URLs), run before anything connects.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Most PostgreSQL connections the server opens: a quarter of them (at most 8, none when
    /// this is 1) for the lanes of small debit batches (`db::driven`), the rest in the main pool.
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
    /// Treat `ALLOT_REDIS_URL` as a Redis Cluster seed node (a `redis-cluster://` URL is a
    /// cluster whatever this says). Keys of one account share a hash tag, so multi-key scripts
    /// stay in one slot.
    #[arg(long, env = "ALLOT_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
    /// OTLP/gRPC collector for traces, e.g. `http://otel-collector:4317`; unset = no export.
    #[arg(long, env = "ALLOT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// After SIGTERM: how long in-flight calls may finish (no new calls are accepted) before the
    /// server stops anyway. Keep it below Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, env = "ALLOT_SHUTDOWN_GRACE_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,
    /// The PostgreSQL role the server's connections act as (`SET ROLE` at connect, through the
    /// startup options): a role without BYPASSRLS that owns no table, so row-level security
    /// applies (migration V8 creates `allot_app`). Empty = act as the login role itself, which
    /// must then be such a role.
    #[arg(long, env = "ALLOT_DB_ROLE", default_value = "allot_app")]
    pub db_role: String,
    /// Accept bearer API keys (`allot_…`).
    #[arg(long, env = "ALLOT_AUTH_API_KEYS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auth_api_keys: bool,
    /// Most calls one tenant may have in flight on this server (fairness between tenants; keep
    /// it below `db_pool_size_max`).
    #[arg(long, env = "ALLOT_TENANT_CONCURRENCY_MAX", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tenant_concurrency_max: u32,
    /// Most group-commit lanes per tenant on this server, each running one transaction at a time
    /// that decides every debit queued in it. An account's debits share a lane (a hot account
    /// makes one big batch); one lane is used until batches reach `batch::WIDEN_AT_BATCH` debits,
    /// then all of them overlap the PostgreSQL round trips of many accounts. Batches that large
    /// need `tenant_concurrency_max` ≥ `batch::WIDEN_AT_BATCH`.
    #[arg(long, env = "ALLOT_DEBIT_BATCH_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub debit_batch_workers: u32,
    /// Most lanes per tenant on this server for concurrent checks, each running one read-only
    /// snapshot at a time that decides every check queued in it. One lane is used until a batch
    /// reaches `batch::CHECK_WIDEN_AT_BATCH` checks (a backlog), then all of them for a second:
    /// fewer lanes make bigger batches and PostgreSQL's work per check falls with batch size
    /// (docs/benchmarks.md, finding 27), but one lane alone drains a backlog too slowly
    /// (finding 46). Batches that large need `tenant_concurrency_max` ≥ 128.
    #[arg(long, env = "ALLOT_CHECK_BATCH_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub check_batch_workers: u32,
    /// Most calls of one tenant waiting for a slot; more are refused at once (RESOURCE_EXHAUSTED).
    #[arg(long, env = "ALLOT_TENANT_QUEUE_MAX", default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub tenant_queue_max: u32,
    /// Longest wait for a tenant slot before RESOURCE_EXHAUSTED (with this as RetryInfo).
    #[arg(long, env = "ALLOT_TENANT_QUEUE_WAIT_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub tenant_queue_wait_ms: u64,
    /// Serve TLS with this certificate chain (PEM); needs `tls_key_file`.
    #[arg(long, env = "ALLOT_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, env = "ALLOT_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// mTLS: verify client certificates against this CA (PEM) and map them to tenants with
    /// `tls_identities_file`.
    #[arg(long, env = "ALLOT_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// mTLS: client certificate names (`dns:`, `uri:`, `cn:`) → tenant and role (TOML).
    #[arg(long, env = "ALLOT_TLS_IDENTITIES_FILE")]
    pub tls_identities_file: Option<PathBuf>,
    /// mTLS: also accept connections without a client certificate (they need a bearer
    /// credential); presented certificates are verified either way.
    #[arg(long, env = "ALLOT_TLS_CLIENT_CERT_OPTIONAL", default_value_t = false)]
    pub tls_client_cert_optional: bool,
    /// A plaintext listener that serves only `grpc.health.v1.Health`, for probes that cannot
    /// speak TLS (kubelet's gRPC probes); unset = none. Carries no credential and no data.
    #[arg(long, env = "ALLOT_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// How often the TLS files are checked for changes (hot reload).
    #[arg(long, env = "ALLOT_TLS_RELOAD_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub tls_reload_interval_ms: u64,
    /// JWT: a file holding the HS256 secret (at least 32 bytes).
    #[arg(long, env = "ALLOT_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// JWT: public keys (RSA, EC or Ed25519 PEM files), comma-separated.
    #[arg(long, env = "ALLOT_JWT_PUBLIC_KEY_FILES")]
    pub jwt_public_key_files: Option<String>,
    /// JWT: the required `iss`.
    #[arg(long, env = "ALLOT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// JWT: the required `aud`.
    #[arg(long, env = "ALLOT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// JWT: clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "ALLOT_JWT_LEEWAY_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=300_000))]
    pub jwt_leeway_ms: u64,
    /// JWT: allowed algorithms, comma-separated (e.g. `RS256,ES256`); empty = those of the keys.
    #[arg(long, env = "ALLOT_JWT_ALGORITHMS", default_value = "")]
    pub jwt_algorithms: String,
    /// Serve even when PostgreSQL runs with `fsync=off` or `synchronous_commit=off` (an
    /// acknowledged charge could then be lost in a crash). For throwaway environments only.
    #[arg(long, env = "ALLOT_ALLOW_UNSAFE_DURABILITY", default_value_t = false)]
    pub allow_unsafe_durability: bool,
    /// Concurrent single-line checks share batches (`service::credits::batch::read`). Not a flag:
    /// tests turn it off to compare batched answers with answers decided alone.
    #[arg(skip = true)]
    pub check_batching: bool,
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
            redis_cluster: false,
            otlp_endpoint: None,
            shutdown_grace_ms: 20_000,
            allow_unsafe_durability: false,
            check_batching: true,
            db_role: "allot_app".into(),
            auth_api_keys: true,
            tenant_concurrency_max: 8,
            debit_batch_workers: 2,
            check_batch_workers: 2,
            tenant_queue_max: 256,
            tenant_queue_wait_ms: 1_000,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_identities_file: None,
            tls_client_cert_optional: false,
            tls_reload_interval_ms: 10_000,
            health_listen: None,
            jwt_hs256_secret_file: None,
            jwt_public_key_files: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_ms: 30_000,
            jwt_algorithms: String::new(),
        }
    }

    /// Checks what the flag parsers cannot: connection strings parse, the OTLP endpoint is a URL,
    /// the metrics address differs from the gRPC one. Never echoes a connection string (it may
    /// hold a password).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        self.database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| invalid("database_url", format!("not a PostgreSQL connection string ({e})")))?;
        if let Some(url) = &self.redis_url {
            crate::server::redis_config(url, self.redis_cluster).map_err(|e| invalid("redis_url", format!("not a Redis URL ({e})")))?;
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: tonic::codegen::http::Uri =
                endpoint.parse().map_err(|e| invalid("otlp_endpoint", format!("{endpoint:?} is not a URL ({e})")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(invalid("otlp_endpoint", format!("{endpoint:?} must look like http://collector:4317")));
            }
        }
        if !self.db_role.is_empty()
            && (self.db_role.len() > 63
                || !self.db_role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                || self.db_role.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Err(invalid("db_role", format!("{:?} must be a lowercase SQL identifier", self.db_role)));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(invalid("tls_cert_file", "tls_cert_file and tls_key_file go together".into()));
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(invalid("tls_client_ca_file", "mTLS needs tls_cert_file and tls_key_file".into()));
        }
        if self.tls_client_ca_file.is_some() != self.tls_identities_file.is_some() {
            return Err(invalid("tls_identities_file", "a client CA and an identities file go together".into()));
        }
        let jwt_keys = self.jwt_hs256_secret_file.is_some() || self.jwt_public_key_files.as_ref().is_some_and(|f| !f.trim().is_empty());
        if jwt_keys && (self.jwt_issuer.as_deref().unwrap_or("").is_empty() || self.jwt_audience.as_deref().unwrap_or("").is_empty()) {
            return Err(invalid("jwt_issuer", "JWT keys need jwt_issuer and jwt_audience".into()));
        }
        crate::auth::jwt::parse_algorithms(&self.jwt_algorithms).map_err(|e| invalid("jwt_algorithms", e.to_string()))?;
        if let Some(health) = self.health_listen {
            if health.port() != 0 && (health.port() == self.listen.port() || Some(health.port()) == self.metrics_listen.map(|m| m.port())) {
                return Err(invalid("health_listen", format!("{health} is the gRPC or metrics address too")));
            }
        }
        if let Some(metrics) = self.metrics_listen {
            if metrics.port() != 0
                && metrics.port() == self.listen.port()
                && (metrics.ip() == self.listen.ip() || metrics.ip().is_unspecified() || self.listen.ip().is_unspecified())
            {
                return Err(invalid("metrics_listen", format!("{metrics} is the gRPC address too")));
            }
        }
        Ok(())
    }
}

/// A configuration that cannot be used; the message names the key and the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: {reason}", .path.display())]
    File { path: PathBuf, reason: String },
    #[error("config file {}: `{key}`: {reason}", .path.display())]
    FileValue { path: PathBuf, key: String, reason: String },
    #[error("configuration `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The file named by `--config FILE` / `--config=FILE` in `args`, else by `ALLOT_CONFIG`.
pub fn file_from_args(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("ALLOT_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Layers the TOML file at `path` under the flags and environment of `command` (whose arguments
/// include [`Config`]'s): every key becomes its argument's default, so a flag or an `ALLOT_*`
/// variable still wins. Keys are the flag names with underscores (`db_pool_size_max = 32`).
/// Each value is checked by the argument's own parser first; an unknown key, a value of the
/// wrong kind or out of range is an error naming the file and the key.
pub fn layer_file(mut command: clap::Command, path: &Path) -> Result<clap::Command, ConfigError> {
    let file_error = |reason: String| ConfigError::File { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot be read ({e})")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.to_string().trim_end().to_owned()))?;
    let known: Vec<String> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !matches!(a.get_id().as_str(), "help" | "version" | "config_file"))
        .map(|a| a.get_id().to_string())
        .collect();
    for (key, value) in table {
        let value_error = |reason: String| ConfigError::FileValue { path: path.to_owned(), key: key.clone(), reason };
        if !known.contains(&key) {
            return Err(value_error(format!("unknown key (known keys: {})", known.join(", "))));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => return Err(value_error(format!("must be a string, an integer or a boolean, not {}", other.type_str()))),
        };
        let arg = command.get_arguments().find(|a| a.get_id() == key.as_str()).ok_or_else(|| value_error("unknown key".into()))?;
        check_value(arg, &text).map_err(value_error)?;
        command = command.mut_arg(key.as_str(), |a| a.required(false).default_value(text));
    }
    Ok(command)
}

/// Runs `value` through `arg`'s own parser (as if given on the command line), so a file value
/// meets the same types and ranges as a flag.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse) {
        // A switch (`migrate`, `redis_cluster`, …): a boolean.
        return match value {
            "true" | "false" => Ok(()),
            other => Err(format!("{other:?} is not a boolean")),
        };
    }
    let long = arg.get_long().ok_or_else(|| "not a setting".to_owned())?;
    let probe = clap::Command::new("allot").no_binary_name(true).arg(arg.clone().required(false));
    match probe.try_get_matches_from([OsString::from(format!("--{long}={value}"))]) {
        Ok(_) => Ok(()),
        Err(err) => {
            let message = err.to_string();
            Err(message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _};

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        config: Config,
    }

    /// Parses `args` with `text` as the configuration file.
    fn load(text: &str, args: &[&str]) -> Result<Config, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("allot-config-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config file");
        let command = layer_file(Serve::command(), &path);
        let _ = std::fs::remove_file(&path);
        let command = command.map_err(|e| e.to_string())?;
        let matches = command.no_binary_name(true).try_get_matches_from(args).map_err(|e| e.to_string())?;
        Ok(Serve::from_arg_matches(&matches).map_err(|e| e.to_string())?.config)
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let text = "database_url = \"postgresql://a@h/db\"\ndb_pool_size_max = 32\nmigrate = true\nmetrics_listen = \"127.0.0.1:9090\"\nshutdown_grace_ms = 5000\n";
        let config = load(text, &[]).expect("valid file");
        assert_eq!(config.database_url, "postgresql://a@h/db", "a required setting may come from the file");
        assert_eq!((config.db_pool_size_max, config.migrate, config.shutdown_grace_ms), (32, true, 5_000));
        assert_eq!(config.metrics_listen, Some("127.0.0.1:9090".parse().expect("addr")));
        assert_eq!(config.db_pool_wait_ms, 2_000, "unset keys keep their defaults");
        let config = load(text, &["--db-pool-size-max", "8"]).expect("valid");
        assert_eq!(config.db_pool_size_max, 8, "a flag overrides the file");
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        let cases = [
            ("db_pool_size_max = 0", "`db_pool_size_max`: invalid value '0'"),
            ("db_pool_size_max = \"many\"", "`db_pool_size_max`: invalid value 'many'"),
            ("db_pool_sise_max = 8", "`db_pool_sise_max`: unknown key"),
            ("listen = \"nowhere\"", "`listen`: invalid value 'nowhere'"),
            ("migrate = \"yes\"", "`migrate`: \"yes\" is not a boolean"),
            ("redis_url = [\"a\"]", "`redis_url`: must be a string, an integer or a boolean"),
            ("listen = ", "TOML parse error"),
        ];
        for (text, wanted) in cases {
            let err = load(&format!("database_url = \"postgresql://a@h/db\"\n{text}\n"), &[]).expect_err(text);
            assert!(err.contains("config file ") && err.contains(wanted), "{text:?}: {err}");
        }
        let err = layer_file(Serve::command(), Path::new("/nonexistent/allot.toml")).expect_err("missing file").to_string();
        assert!(err.contains("/nonexistent/allot.toml") && err.contains("cannot be read"), "{err}");
    }

    #[test]
    fn validation_names_the_key_and_never_the_secret() {
        let mut config = Config::with_database("postgresql://allot:s3cret@[::1".into(), None);
        let err = config.validate().expect_err("bad url").to_string();
        assert!(err.contains("database_url") && !err.contains("s3cret"), "{err}");
        config.database_url = "postgresql://allot@127.0.0.1/allot".into();
        config.validate().expect("valid");
        config.otlp_endpoint = Some("collector:4317".into());
        assert!(config.validate().expect_err("no scheme").to_string().contains("otlp_endpoint"));
        config.otlp_endpoint = Some("http://collector:4317".into());
        config.validate().expect("valid endpoint");
        config.listen = "127.0.0.1:9000".parse().expect("addr");
        config.metrics_listen = Some("0.0.0.0:9000".parse().expect("addr"));
        assert!(config.validate().expect_err("same port").to_string().contains("metrics_listen"));
        config.metrics_listen = None;
        config.redis_url = Some("not a url".into());
        assert!(config.validate().expect_err("bad redis").to_string().contains("redis_url"));
        config.redis_url = Some("redis://127.0.0.1:6379".into());
        config.redis_cluster = true;
        config.validate().expect("a seed node for a cluster");
    }

    #[test]
    fn the_config_file_is_found_in_args_or_env() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(file_from_args(&args(&["allot", "serve", "--config", "/a.toml"])), Some(PathBuf::from("/a.toml")));
        assert_eq!(file_from_args(&args(&["allot", "serve", "--config=/b.toml"])), Some(PathBuf::from("/b.toml")));
    }
}
