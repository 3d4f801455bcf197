//! The `allot` binary: `serve` the gRPC API, `migrate` the database, run a complete local stack
//! with `dev`, `create-tenant` to issue a tenant and its first (admin) API key, and
//! `create-key` / `revoke-key` for keys of a role.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use allot_server::clock::SystemClock;
use allot_server::config::Config;
use allot_server::telemetry::{self, LogFormat};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// mimalloc instead of glibc malloc: allocation was the largest single cost of a gRPC call, and
/// glibc's arenas contended between the tokio workers (docs/benchmarks.md, finding 8).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Build identity, set by build.rs.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ALLOT_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(name = "allot", version = VERSION, about = "Allot: credits, holds and entitlements over gRPC")]
struct Cli {
    /// Log format (json for production, pretty for people).
    #[arg(long, env = "ALLOT_LOG_FORMAT", value_enum, default_value = "json", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up; boxing `serve`'s settings would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serve the gRPC API.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, env = "ALLOT_DATABASE_URL")]
        database_url: String,
    },
    /// Run a throwaway local stack (PostgreSQL, Redis, demo data) and serve on it.
    Dev {
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Where the local servers keep their data (default: a fresh temporary folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Measure Allot against the raw PostgreSQL/Redis baseline on throwaway local servers and print a
    /// Markdown table (ratios Allot / raw per scenario and concurrency).
    Bench {
        /// Seconds per scenario and concurrency level.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
        /// Concurrency levels, space-separated.
        #[arg(long, default_value = "16 64")]
        clients: String,
        /// The baseline runner (pgbench/redis-benchmark scripts).
        #[arg(long, default_value = "../shared/baseline/run")]
        baseline: std::path::PathBuf,
        /// Also write the table to this file.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only these scenarios, space-separated (default: all; an unknown name is refused with
        /// the list of scenarios).
        #[arg(long)]
        scenarios: Option<String>,
    },
    /// Create a tenant and print its first API key, of role admin (shown once).
    CreateTenant {
        #[arg(long, env = "ALLOT_DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        name: String,
    },
    /// Create an API key of a role (check, charge or admin) for a tenant and print it (shown once).
    CreateKey {
        #[arg(long, env = "ALLOT_DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        tenant_id: uuid::Uuid,
        #[arg(long)]
        role: allot_server::auth::Role,
        /// What the key is for (e.g. the calling service).
        #[arg(long)]
        name: String,
    },
    /// Revoke an API key (servers stop accepting it within ALLOT_AUTH_CACHE_TTL_MS).
    RevokeKey {
        #[arg(long, env = "ALLOT_DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        tenant_id: uuid::Uuid,
        #[arg(long)]
        key_id: uuid::Uuid,
    },
}

/// `allot serve`'s settings: an optional file under the flags and `ALLOT_*` variables.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file of settings, keyed by flag name with underscores (`db_pool_size_max = 32`);
    /// flags and ALLOT_* variables override it.
    #[arg(long = "config", env = "ALLOT_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    config: Config,
}

/// Parses the command line; for `serve`, the configuration file (if any) is layered under the
/// flags and the environment first, so a bad file fails here with its name and key.
fn parse(args: Vec<OsString>) -> anyhow::Result<Cli> {
    let mut command = Cli::command();
    if args.iter().skip(1).any(|arg| arg == "serve") {
        if let Some(path) = allot_server::config::file_from_args(&args) {
            let serve = command.find_subcommand("serve").cloned().ok_or_else(|| anyhow::anyhow!("no serve command"))?;
            let serve = allot_server::config::layer_file(serve, &path)?;
            command = command.mut_subcommand("serve", |_| serve);
        }
    }
    let matches = command.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit()))
}

fn main() -> anyhow::Result<()> {
    let tuning = allot_server::runtime::Tuning::from_env()?;
    allot_server::runtime::build(tuning)?.block_on(run(tuning))
}

async fn run(tuning: allot_server::runtime::Tuning) -> anyhow::Result<()> {
    let cli = parse(std::env::args_os().collect())?;
    let format = if matches!(cli.command, Command::Dev { .. }) { LogFormat::Pretty } else { cli.log_format };
    let mut otlp_endpoint = None;
    if let Command::Serve(args) = &cli.command {
        args.config.validate()?;
        otlp_endpoint = args.config.otlp_endpoint.clone();
    }
    let telemetry = telemetry::init(format, otlp_endpoint.as_deref())?;
    if tuning != allot_server::runtime::Tuning::DEFAULT {
        tracing::info!(
            tokio.lifo_slot = tuning.lifo_slot,
            tokio.event_interval = tuning.event_interval,
            "tokio tuned by {} and {}",
            allot_server::runtime::LIFO_SLOT_VAR,
            allot_server::runtime::EVENT_INTERVAL_VAR
        );
    }
    let result = match cli.command {
        Command::Serve(ServeArgs { config, config_file }) => {
            if let Some(file) = config_file {
                tracing::info!(config.file = %file.display(), "configuration file layered under flags and environment");
            }
            let result = serve(config).await;
            if let Err(err) = &result {
                tracing::error!(error = format!("{err:#}"), "allot serve failed");
            }
            result
        }
        Command::Migrate { database_url } => {
            let applied = allot_server::db::migrate(&database_url).await?;
            println!("applied {} migration(s): {}", applied.len(), applied.join(", "));
            Ok(())
        }
        Command::Dev { listen, data_dir } => allot_server::dev::run(listen, data_dir).await,
        Command::Bench { seconds, clients, baseline, out, scenarios } => {
            let clients = clients
                .split_whitespace()
                .map(|c| c.parse::<usize>().ok().filter(|c| (1..=1_000).contains(c)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| anyhow::anyhow!("--clients takes numbers from 1 to 1000"))?;
            let scenarios = scenarios.map(|s| s.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
            let options = allot_server::bench::Options { seconds, clients, baseline: Some(baseline), out, scenarios };
            let report = allot_server::bench::run(options).await?;
            println!("{report}");
            Ok(())
        }
        Command::CreateTenant { database_url, name } => {
            let config = Config::with_database(database_url, None);
            let pool = allot_server::db::pool(&config)?;
            let created = allot_server::seed::tenant(&pool, &name).await?;
            println!("tenant {} created\napi key {} (role admin, shown once): {}", created.tenant, created.key_id, created.api_key);
            Ok(())
        }
        Command::CreateKey { database_url, tenant_id, role, name } => {
            let pool = allot_server::db::pool(&Config::with_database(database_url, None))?;
            let key = allot_server::seed::api_key(&pool, allot_server::ids::TenantId(tenant_id), &name, role).await?;
            println!("api key {} (role {}, shown once): {}", key.id, key.role, key.key);
            Ok(())
        }
        Command::RevokeKey { database_url, tenant_id, key_id } => {
            let pool = allot_server::db::pool(&Config::with_database(database_url, None))?;
            if !allot_server::seed::revoke_api_key(&pool, allot_server::ids::TenantId(tenant_id), key_id).await? {
                anyhow::bail!("no live api key {key_id} in tenant {tenant_id}");
            }
            println!("api key {key_id} revoked");
            Ok(())
        }
    };
    // Export the last spans; the exporter blocks, so off the async workers.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    result
}

/// `allot serve`: bind, connect (validating, migrating when asked, refusing unsafe durability),
/// serve until SIGTERM or Ctrl-C, then drain within the grace window.
async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let app = allot_server::server::App::connect(config, Arc::new(SystemClock)).await?;
    allot_server::server::serve(app, listener, allot_server::dev::shutdown_signal()).await
}
