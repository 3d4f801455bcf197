//! The `allot` binary: `serve` the gRPC API, `migrate` the database, run a complete local stack
//! with `dev`, and `create-tenant` to issue a tenant and its first API key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use allot_server::clock::SystemClock;
use allot_server::config::Config;
use allot_server::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

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
enum Command {
    /// Serve the gRPC API.
    Serve(Config),
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
    /// Create a tenant and print its first API key (shown once).
    CreateTenant {
        #[arg(long, env = "ALLOT_DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = if matches!(cli.command, Command::Dev { .. }) { LogFormat::Pretty } else { cli.log_format };
    telemetry::init(format);
    match cli.command {
        Command::Serve(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            let app = allot_server::server::App::connect(config, Arc::new(SystemClock)).await?;
            allot_server::server::serve(app, listener, allot_server::dev::shutdown_signal()).await
        }
        Command::Migrate { database_url } => {
            let applied = allot_server::db::migrate(&database_url).await?;
            println!("applied {} migration(s): {}", applied.len(), applied.join(", "));
            Ok(())
        }
        Command::Dev { listen, data_dir } => allot_server::dev::run(listen, data_dir).await,
        Command::CreateTenant { database_url, name } => {
            let config = Config::with_database(database_url, None);
            let pool = allot_server::db::pool(&config)?;
            let created = allot_server::seed::tenant(&pool, &name).await?;
            println!("tenant {} created\napi key (shown once): {}", created.tenant, created.api_key);
            Ok(())
        }
    }
}
