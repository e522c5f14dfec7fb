//! Command line and environment: every flag can also be set by the variable named beside it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "users-api",
    version,
    about = "Users service: create and list users over SQLite or PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub logging: LogConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default when no subcommand is given).
    Serve(Box<ServeConfig>),
    /// Apply the embedded database migrations and exit.
    Migrate(DatabaseConfig),
    /// Exit 0 when a running instance answers 200 on /health (for container health checks).
    Healthcheck(HealthcheckConfig),
}

#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter: a level (info, debug…) or tracing directives (users_api=debug,tower_http=info).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Store: sqlite://FILE (created on first start) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://users.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Password for a PostgreSQL URL given without one (e.g. injected from a secret store).
    #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<String>,
    /// Database connections in the pool (readers, for SQLite).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: usize,
    /// Seconds to wait for a connection or a statement before answering 503.
    #[arg(long, env = "DATABASE_TIMEOUT_SECS", default_value_t = 3)]
    pub database_timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address and port to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Seconds a request may take before it is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// Seconds to finish in-flight requests after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Requests handled at once; beyond this the service answers 503 at once instead of queueing.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Skip migrations at start (when `users-api migrate` runs as a separate step).
    #[arg(long, env = "SKIP_MIGRATIONS", default_value_t = false)]
    pub skip_migrations: bool,
}

impl ServeConfig {
    /// Parses `serve` flags alone (for embedding and tests); the environment still applies.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        ServeArgsParser::try_parse_from(args).map(|p| p.serve)
    }
}

#[derive(Parser)]
struct ServeArgsParser {
    #[command(flatten)]
    serve: ServeConfig,
}

impl ServeConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl DatabaseConfig {
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_connections: self.database_max_connections,
            password: self.database_password.clone(),
            timeout: Duration::from_secs(self.database_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckConfig {
    /// URL to probe; defaults to /health on BIND_ADDR (0.0.0.0 is probed on 127.0.0.1).
    #[arg(long, env = "HEALTHCHECK_URL")]
    pub url: Option<String>,
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,
    /// Seconds before the probe gives up.
    #[arg(long, default_value_t = 2)]
    pub timeout_secs: u64,
}
