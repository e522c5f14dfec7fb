//! Persistence: one `Store` over SQLite (embedded default) or PostgreSQL.

mod idempotency;
mod postgres;
mod postgres_writer;
mod rekey;
mod sqlite;
mod tls;

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::domain::{NewUser, User, UserRef};

pub use idempotency::{KeyedCreate, KeyedOutcome, StoredAnswer};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Tuning shared by both back ends.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: usize,
    /// Overrides the password in a PostgreSQL URL (injected from a secret store).
    pub password: Option<String>,
    /// Upper bound on waiting for a connection or a statement before answering 503.
    pub timeout: Duration,
    /// CA bundle to verify the PostgreSQL server's certificate against (TLS is used when
    /// the URL's sslmode asks for it; without a bundle it encrypts without verifying).
    pub ca_file: Option<std::path::PathBuf>,
    /// A PostgreSQL read replica for reads by id and pages (PostgreSQL only).
    pub replica: Option<ReplicaOptions>,
    /// How long an idempotency key and its stored answer count; older ones are ignored, then purged.
    pub idempotency_retention: Duration,
    /// Connection threads that get a PostgreSQL pool of their own out of `max_connections`
    /// (0: one shared pool).
    pub read_pools: usize,
}

/// Where reads go when they can: a streaming replica of the primary, with the same credentials
/// and CA bundle.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub url: String,
    /// Above this replay lag, reads go to the primary.
    pub max_lag: Duration,
    /// The replica pool's size; the primary's when unset.
    pub max_connections: Option<usize>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            password: None,
            timeout: Duration::from_secs(3),
            ca_file: None,
            replica: None,
            idempotency_retention: Duration::from_secs(24 * 3600),
            read_pools: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email already registered")]
    EmailTaken,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("write queue is full")]
    Overloaded,
    /// The write reached the database and no answer came back (connection lost or hung during
    /// the commit), or SQLite's commit failed on I/O after the log may have got it: it may or
    /// may not be stored. Never reported as "unavailable, retry".
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    /// The same error for each of several requests (a failed batch answers all of its jobs).
    pub(crate) fn clone_for_reply(&self) -> Self {
        match self {
            Self::EmailTaken => Self::EmailTaken,
            Self::Unavailable(reason) => Self::Unavailable(reason.clone()),
            Self::Overloaded => Self::Overloaded,
            Self::OutcomeUnknown(reason) => Self::OutcomeUnknown(reason.clone()),
            Self::Internal(e) => Self::Internal(anyhow::anyhow!("batch insert failed: {e:#}")),
        }
    }
}

pub use crate::telemetry::PoolStatus;

/// The configured back end. An enum rather than a trait object: two variants, static dispatch.
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the store named by `url` (`sqlite://path` or `postgres://…`) without migrating.
    pub async fn connect(url: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PostgresStore::connect(url, options)?))
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            anyhow::ensure!(options.replica.is_none(), "DATABASE_READ_URL needs a PostgreSQL DATABASE_URL");
            let path = path.trim_start_matches("//");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            anyhow::ensure!(!path.is_empty(), "DATABASE_URL names no SQLite file: {url:?}");
            Ok(Self::Sqlite(SqliteStore::open(path, options).await?))
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite: or postgres:// (got {:?})", redact(url))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.migrate().await,
            Self::Postgres(s) => s.migrate().await,
        }
    }

    pub async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        self.timed("insert", async {
            match self {
                Self::Sqlite(s) => s.create(user).await,
                // Boxed: PostgreSQL's future is three times SQLite's, and every create's handler
                // future would carry (and move, and box) room for it.
                Self::Postgres(s) => Box::pin(s.create(user)).await,
            }
        })
        .await
    }

    /// A create with an idempotency key: the user and the key's answer in one transaction, or
    /// the answer stored for the key, or a refusal (key reused, or in flight).
    pub async fn create_keyed(&self, user: NewUser, keyed: KeyedCreate) -> Result<KeyedOutcome, StoreError> {
        self.timed("insert_keyed", async {
            match self {
                Self::Sqlite(s) => s.create_keyed(user, keyed).await,
                Self::Postgres(s) => Box::pin(s.create_keyed(user, keyed)).await,
            }
        })
        .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.timed("get", async {
            match self {
                Self::Sqlite(s) => s.get(id).await,
                Self::Postgres(s) => s.get(id).await,
            }
        })
        .await
    }

    /// Up to `limit` users with `id > after`, ascending.
    pub async fn page(&self, after: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        self.timed("page", async {
            match self {
                Self::Sqlite(s) => s.page(after, limit).await,
                Self::Postgres(s) => s.page(after, limit).await,
            }
        })
        .await
    }

    /// Up to `limit` users with `id > after`, ascending, each handed to `visit` in order; on
    /// SQLite straight from the row, without a `User` (and its strings) per row.
    pub async fn visit_page<F>(&self, after: i64, limit: u32, mut visit: F) -> Result<(), StoreError>
    where
        F: FnMut(UserRef<'_>) + Send,
    {
        self.timed("page", async {
            match self {
                Self::Sqlite(s) => s.visit_page(after, limit, visit).await,
                Self::Postgres(s) => {
                    s.page(after, limit).await.map(|users| users.iter().for_each(|user| visit(user.into())))
                }
            }
        })
        .await
    }

    /// Connections of the pool (the read pool, for SQLite) for the metrics gauges.
    pub fn pool_status(&self) -> PoolStatus {
        let status = match self {
            Self::Sqlite(s) => s.pool_status(),
            Self::Postgres(s) => s.pool_status(),
        };
        PoolStatus {
            in_use: status.size.saturating_sub(status.available),
            idle: status.available,
            max: status.max_size,
        }
    }

    /// Records how long `query` takes. Not an async fn: one keeps its future argument and the
    /// future it awaits side by side, which doubled every handler's future.
    fn timed<F: Future>(&self, operation: &'static str, query: F) -> impl Future<Output = F::Output> + use<F> {
        let (backend, started) = (self.backend(), Instant::now());
        query.map(move |result| {
            crate::telemetry::record_query(operation, backend, started.elapsed());
            result
        })
    }

    /// Readiness: the store can serve reads. With a read replica that is usable, that holds
    /// even while the primary does not answer (writes then answer 503).
    pub async fn ready(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::Postgres(s) => s.ready().await,
        }
    }

    /// Flushes pending writes and closes connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close(),
        }
    }
}

/// The span of waiting for a pooled connection (disabled, and free, when traces are off).
pub(crate) fn pool_wait_span(system: &'static str) -> tracing::Span {
    tracing::info_span!(target: crate::telemetry::SPAN_TARGET, "pool wait", db.system.name = system)
}

/// The span of one statement; `operation` names it ("SELECT users").
pub(crate) fn statement_span(system: &'static str, operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "statement",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = system,
        db.query.summary = operation,
    )
}

/// The span of a request's insert, from queueing to the writer's answer.
pub(crate) fn write_wait_span() -> tracing::Span {
    tracing::info_span!(target: crate::telemetry::SPAN_TARGET, "write wait")
}

/// The span of one write batch: a child of the first request's `write wait`, linked to the others'.
pub(crate) fn write_batch_span<'a>(
    system: &'static str,
    mut requests: impl Iterator<Item = &'a tracing::Span>,
) -> tracing::Span {
    let Some(first) = requests.next() else { return tracing::Span::none() };
    let span = tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        parent: first,
        "write batch",
        db.system.name = system,
        db.operation.batch.size = tracing::field::Empty,
    );
    crate::telemetry::link_to(&span, requests);
    span
}

/// After a write's deadline, how long the commit of a write already handed to the database
/// may take before its outcome is reported unknown.
pub const COMMIT_GRACE: Duration = Duration::from_millis(750);

/// An insert handed to a store's writer, answered with an `R`. A job not started by `deadline`
/// is answered `Unavailable` without touching the database; once started, the writer answers
/// with the database's own outcome.
pub(crate) struct WriteJob<R = User> {
    pub user: NewUser,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<R, StoreError>>,
    /// The request's `write wait` span: the batch's parent or link.
    pub span: tracing::Span,
}

impl<R> WriteJob<R> {
    pub fn new(user: NewUser, timeout: Duration) -> (Self, oneshot::Receiver<Result<R, StoreError>>) {
        let (reply, outcome) = oneshot::channel();
        (Self { user, deadline: Instant::now() + timeout, reply, span: write_wait_span() }, outcome)
    }

    /// Answers 503 when the deadline passed before the job started, or its requester is gone.
    /// Returns the job when it may still start.
    pub fn unless_expired(self, now: Instant) -> Option<Self> {
        if self.reply.is_closed() {
            return None;
        }
        if now >= self.deadline {
            let _ =
                self.reply.send(Err(StoreError::Unavailable("the write was not started before its deadline".into())));
            return None;
        }
        Some(self)
    }
}

/// Waits for the writer's answer. The writer answers every job by its deadline plus the commit
/// grace; past that (a writer stuck in a commit) the outcome is unknown, not "retry".
pub(crate) async fn await_write<R>(
    outcome: oneshot::Receiver<Result<R, StoreError>>,
    deadline: Instant,
    span: tracing::Span,
) -> Result<R, StoreError> {
    use tracing::Instrument;
    let bound = tokio::time::Instant::from_std(deadline + COMMIT_GRACE + Duration::from_millis(500));
    match tokio::time::timeout_at(bound, outcome).instrument(span).await {
        Ok(Ok(result)) => result,
        // Dropped unanswered only when the writer stopped; a started batch always answers.
        Ok(Err(_)) => Err(StoreError::Unavailable("writer stopped".into())),
        Err(_) => Err(StoreError::OutcomeUnknown("no answer from the writer".into())),
    }
}

/// A URL safe to print: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A timestamp as SQLite's text column keeps it: RFC 3339, UTC.
pub(crate) fn format_timestamp(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC timestamp of this era has an RFC 3339 form")
}

/// A timestamp SQLite's text column holds (any RFC 3339 form, as earlier releases wrote it too).
pub(crate) fn parse_timestamp(text: &str) -> Result<time::OffsetDateTime, time::error::Parse> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
}

/// `t` without its sub-microsecond part: the precision both stores keep.
pub(crate) fn truncate_to_micros(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.replace_nanosecond(t.microsecond() * 1_000).expect("a whole number of microseconds is a valid nanosecond")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite://users.db"), "sqlite://users.db");
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.123456789 UTC);
        let stored = truncate_to_micros(t);
        assert_eq!(format_timestamp(stored), "2026-01-02T03:04:05.123456Z");
        assert_eq!(parse_timestamp(&format_timestamp(stored)).unwrap(), stored);
        // Rows written by earlier releases (always six digits) read back the same.
        assert_eq!(parse_timestamp("2026-01-02T03:04:05.120000Z").unwrap().microsecond(), 120_000);
    }
}
