//! Command line and environment: every flag can also be set by the variable named beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "users-api",
    version,
    about = "Users service: create and list users over SQLite or PostgreSQL",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `serve` flags, accepted without the subcommand too (serving is the default).
    #[command(flatten)]
    pub serve: ServeConfig,

    #[command(flatten)]
    pub logging: LogConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default when no subcommand is given).
    Serve(Box<ServeConfig>),
    /// Apply the embedded database migrations and exit.
    Migrate(MigrateConfig),
    /// Exit 0 when a running instance answers 200 on /health (for container health checks).
    Healthcheck(HealthcheckConfig),
    /// Print an HS256 token signed with AUTH_JWT_SECRET (for local use and tests).
    Token(TokenConfig),
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

impl LogConfig {
    pub fn settings(&self) -> crate::telemetry::LogSettings {
        let format = match self.log_format {
            LogFormat::Text => crate::telemetry::LineFormat::Text,
            LogFormat::Json => crate::telemetry::LineFormat::Json,
        };
        crate::telemetry::LogSettings { filter: self.log_level.clone(), format }
    }
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
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://users.db", hide_env_values = true)]
    pub database_url: String,
    /// Password for a PostgreSQL URL given without one (e.g. injected from a secret store).
    #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<String>,
    /// CA bundle (PEM) to verify the PostgreSQL server's certificate; without it, sslmode=require
    /// encrypts without verifying (as libpq does).
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Database connections in the pool (readers, for SQLite).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: usize,
    /// Seconds to wait for a connection or a statement before answering 503.
    #[arg(long, env = "DATABASE_TIMEOUT_SECS", default_value_t = 3)]
    pub database_timeout_secs: u64,
}

/// A streaming read replica of the PostgreSQL primary: reads by id and pages go there while it
/// is within the lag bound (same credentials, DATABASE_PASSWORD and DATABASE_CA_FILE).
#[derive(Debug, Clone, Args)]
pub struct ReadReplicaConfig {
    /// Read replica: postgres://USER@HOST:PORT/DB (optional; PostgreSQL only).
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// Replay lag above which reads go to the primary, e.g. 5s, 500ms.
    #[arg(long, env = "DATABASE_READ_MAX_LAG", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_read_max_lag: Duration,
    /// Connections in the replica pool (default: DATABASE_MAX_CONNECTIONS).
    #[arg(long, env = "DATABASE_READ_MAX_CONNECTIONS")]
    pub database_read_max_connections: Option<usize>,
}

impl ReadReplicaConfig {
    /// The replica, when DATABASE_READ_URL is set and not empty.
    pub fn replica_options(&self) -> Option<crate::store::ReplicaOptions> {
        non_empty(&self.database_read_url).map(|url| crate::store::ReplicaOptions {
            url: url.to_owned(),
            max_lag: self.database_read_max_lag,
            max_connections: self.database_read_max_connections,
        })
    }

    /// Database connections the replica pool may open (0 without a replica).
    pub fn connections(&self, database: &DatabaseConfig) -> usize {
        self.replica_options().map_or(0, |replica| replica.max_connections.unwrap_or(database.database_max_connections))
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// PostgreSQL role for the API, created or updated after the migrations: it may read and
    /// write rows, nothing more. Serve with it and SKIP_MIGRATIONS=true.
    #[arg(long, env = "DATABASE_APP_ROLE", requires = "app_password")]
    pub app_role: Option<String>,
    /// Password of DATABASE_APP_ROLE.
    #[arg(long, env = "DATABASE_APP_PASSWORD", hide_env_values = true)]
    pub app_password: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address and port to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub read_replica: ReadReplicaConfig,

    /// Seconds a request may take before it is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// Seconds to finish in-flight requests after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Seconds after SIGTERM during which the instance still accepts connections while /ready
    /// fails (for platforms that route until readiness fails, e.g. Kubernetes; 0 on ECS, where
    /// the load balancer deregisters the task before the signal).
    #[arg(long, env = "SHUTDOWN_DELAY_SECS", default_value_t = 0)]
    pub shutdown_delay_secs: u64,
    /// Requests handled at once; beyond this the service answers 503 at once instead of queueing.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Full-list downloads (`GET /users` without paging) at once, counted for their whole life
    /// and apart from MAX_IN_FLIGHT; beyond it 503 at once.
    #[arg(long, env = "MAX_LIST_STREAMS", default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_list_streams: usize,
    /// Seconds a full-list download may go without the client taking more before it is ended.
    #[arg(long, env = "LIST_STREAM_STALL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub list_stream_stall_secs: u64,

    /// How long an Idempotency-Key and its stored answer count (e.g. 24h, 90m); expired keys are
    /// ignored at once and deleted in the background.
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = parse_retention)]
    pub idempotency_retention: Duration,

    #[command(flatten)]
    pub connections: ConnectionConfig,
    /// Skip migrations at start (when `users-api migrate` runs as a separate step).
    #[arg(long, env = "SKIP_MIGRATIONS", default_value_t = false)]
    pub skip_migrations: bool,
    /// Separate listener for Prometheus `/metrics`, never the public port ("off" disables it).
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub rate_limit: RateLimitConfig,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionConfig {
    /// Seconds a client has to send a whole request head, from the connection's accept or the
    /// head's first byte; then the connection is closed.
    #[arg(long, env = "HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept open (above the ALB's 60 s idle timeout,
    /// so that the balancer, not the service, closes idle connections).
    #[arg(long, env = "KEEPALIVE_TIMEOUT_SECS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout_secs: u64,
    /// Open client connections; at the cap the longest-idle connection is closed to make room,
    /// and when none is idle the newcomer gets a 503. Lowered to fit the descriptor limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Threads serving connections, each a runtime of its own (a connection stays on one);
    /// by default one per core the process may use.
    #[arg(long, env = "HTTP_THREADS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub http_threads: Option<usize>,
}

impl ConnectionConfig {
    pub fn http_threads(&self) -> usize {
        self.http_threads.unwrap_or_else(crate::server::default_http_threads)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }
}

#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// HS256 shared secret (at least 32 bytes). Setting it turns authentication on.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// File holding the HS256 secret (e.g. a mounted secret), instead of AUTH_JWT_SECRET.
    #[arg(long, env = "AUTH_JWT_SECRET_FILE", conflicts_with = "auth_jwt_secret")]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// JWKS URL for RS256/ES256 tokens (e.g. Cognito's). Setting it turns authentication on.
    #[arg(long, env = "AUTH_JWKS_URL", conflicts_with_all = ["auth_jwt_secret", "auth_jwt_secret_file"])]
    pub auth_jwks_url: Option<String>,
    /// Required `iss` claim (required with a JWKS; optional with a secret).
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` claim (required with a JWKS; optional with a secret).
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Clock skew tolerated on exp/nbf, in seconds (0–300).
    #[arg(long, env = "AUTH_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_leeway_secs: u64,
    /// Prefix of this resource server's scopes in the tokens (Cognito custom scopes:
    /// `users-api/` makes `users-api/users:read` count as `users:read`).
    #[arg(long, env = "AUTH_SCOPE_PREFIX")]
    pub auth_scope_prefix: Option<String>,
    /// Longest token lifetime accepted (`exp - iat`, or `exp` from now without `iat`), e.g. 1h, 24h.
    #[arg(long, env = "AUTH_MAX_TOKEN_LIFETIME", default_value = "24h", value_parser = parse_ttl)]
    pub auth_max_token_lifetime: Duration,
}

impl AuthConfig {
    /// The configured key source; `None` means authentication is off.
    /// Empty values count as unset (compose passes `${AUTH_JWT_SECRET:-}` through as "").
    pub fn key_source(&self) -> anyhow::Result<Option<crate::auth::KeySource>> {
        use crate::auth::KeySource;
        if let Some(secret) = non_empty(&self.auth_jwt_secret) {
            return Ok(Some(KeySource::Secret(secret.as_bytes().to_vec())));
        }
        if let Some(path) = self.auth_jwt_secret_file.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading AUTH_JWT_SECRET_FILE {}: {e}", path.display()))?;
            return Ok(Some(KeySource::Secret(secret.trim_end_matches(['\r', '\n']).as_bytes().to_vec())));
        }
        Ok(non_empty(&self.auth_jwks_url).map(|url| KeySource::Jwks(url.to_owned())))
    }

    pub fn issuer(&self) -> Option<&str> {
        non_empty(&self.auth_issuer)
    }

    pub fn audience(&self) -> Option<&str> {
        non_empty(&self.auth_audience)
    }

    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.auth_leeway_secs)
    }

    pub fn policy(&self) -> crate::auth::TokenPolicy {
        crate::auth::TokenPolicy {
            issuer: self.issuer().map(str::to_owned),
            audience: self.audience().map(str::to_owned),
            leeway: self.leeway(),
            scope_prefix: non_empty(&self.auth_scope_prefix).map(str::to_owned),
            max_lifetime: self.auth_max_token_lifetime,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RateLimitConfig {
    /// Requests per second allowed per client on the users endpoints (0 turns the limit off).
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub rate_limit_per_second: u32,
    /// Requests a client may send in a burst above the rate (default: one second's worth).
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Identify clients by the last X-Forwarded-For hop (only behind a proxy that sets it).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    /// Space-separated scopes to grant.
    #[arg(long, default_value = "users:read users:write")]
    pub scope: String,
    /// Lifetime, e.g. 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The token's subject (`sub`).
    #[arg(long, default_value = "local-user")]
    pub subject: String,
    #[command(flatten)]
    pub auth: AuthConfig,
}

/// The longest token lifetime `--ttl` and AUTH_MAX_TOKEN_LIFETIME take: beyond it, a typo.
const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// A lifetime such as 90s, 15m, 1h, 7d or "1h 30m".
fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 90s, 15m, 1h or 7d: {e}"))?;
    if ttl > MAX_TTL {
        return Err(format!(
            "{raw:?} is longer than the longest lifetime accepted, {}",
            humantime::format_duration(MAX_TTL)
        ));
    }
    Ok(ttl)
}

/// A key retention such as 24h or 7d: at least a second, at most what `parse_ttl` takes.
fn parse_retention(raw: &str) -> Result<Duration, String> {
    let retention = parse_ttl(raw)?;
    if retention < Duration::from_secs(1) {
        return Err(format!("{raw:?} is shorter than the shortest retention, 1s"));
    }
    Ok(retention)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_are_durations_of_at_least_a_second() {
        assert_eq!(parse_retention("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_retention("500ms").is_err());
        assert!(parse_retention("0s").is_err());
    }

    #[test]
    fn ttls_parse_as_durations_and_an_absurd_one_is_a_clear_error() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        let too_long = parse_ttl("99999999999d").unwrap_err();
        assert!(too_long.contains("longer than the longest lifetime accepted"), "{too_long}");
        let overflow = parse_ttl("99999999999999999999d").unwrap_err();
        assert!(overflow.contains("is not a duration"), "{overflow}");
        assert!(parse_ttl("soon").is_err());
    }
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

    pub fn list_stream_stall_timeout(&self) -> Duration {
        Duration::from_secs(self.list_stream_stall_secs)
    }

    /// The store's options: the database's, and the idempotency keys' retention.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            idempotency_retention: self.idempotency_retention,
            ..self.database.store_options()
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay_secs)
    }

    /// The metrics listener address, unless turned off.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.metrics_addr.trim() {
            "" | "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|e| anyhow::anyhow!("METRICS_ADDR {addr:?}: {e}")),
        }
    }

    /// Why the metrics listener could not bind, with the way out: a second instance on one
    /// host otherwise dies on the default port with a bare "address in use".
    pub fn metrics_bind_error(addr: SocketAddr, error: std::io::Error) -> anyhow::Error {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "the metrics listener {addr} is already in use (another users-api on this host?): \
                 pick another port with METRICS_ADDR=127.0.0.1:PORT (--metrics-addr), \
                 or turn metrics off with METRICS_ADDR=off"
            )
        } else {
            anyhow::Error::new(error).context(format!("binding the metrics listener {addr} (METRICS_ADDR)"))
        }
    }
}

impl DatabaseConfig {
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_connections: self.database_max_connections,
            password: self.database_password.clone(),
            timeout: Duration::from_secs(self.database_timeout_secs),
            ca_file: self.database_ca_file.clone(),
            replica: None,
            ..crate::store::StoreOptions::default()
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

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}
