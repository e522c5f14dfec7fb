//! SQLite: one writer thread that group-commits, a pool of readers, WAL with durable commits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool::Runtime;
use deadpool::managed::{Metrics, Pool, RecycleResult};
use deadpool_sqlite::rusqlite::{self, Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::mpsc;

use super::idempotency::{KeyedCreate, KeyedOutcome, PURGE_BATCH, StoredAnswer, purge_interval};
use super::rekey::{self, Migration, StoredEmail};
use tracing::Instrument;

use super::{
    StoreError, StoreOptions, WriteJob, await_write, format_timestamp, parse_timestamp, pool_wait_span, statement_span,
    truncate_to_micros, write_batch_span,
};
use crate::domain::{NewUser, User, UserRef};

const MIGRATIONS: &[(i64, Migration)] = &[
    (1, Migration::Sql(include_str!("migrations/sqlite/0001_users.sql"))),
    (2, Migration::RekeyEmails),
    (3, Migration::Sql(include_str!("migrations/sqlite/0003_idempotency_keys.sql"))),
];

/// Pending writes beyond this are refused with 503 rather than queued without bound.
const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Inserts committed together in one transaction at most.
const MAX_BATCH: usize = 512;
/// Page cache of each pooled reader, in KiB.
const READER_CACHE_KIB: u32 = 512;

const SELECT_USER: &str = "SELECT id, name, email, created_at FROM users";
const SYSTEM: &str = "sqlite";

enum WriterMessage {
    Insert(Job),
    /// Delete expired idempotency keys, a bounded batch at a time, while no insert waits.
    Purge,
    Shutdown,
}

/// One insert of a batch: a plain one, or one with an idempotency key written beside it.
enum Job {
    Plain(WriteJob),
    Keyed(WriteJob<KeyedOutcome>, Box<KeyedCreate>),
}

impl Job {
    fn deadline(&self) -> Instant {
        match self {
            Self::Plain(job) => job.deadline,
            Self::Keyed(job, _) => job.deadline,
        }
    }

    fn span(&self) -> &tracing::Span {
        match self {
            Self::Plain(job) => &job.span,
            Self::Keyed(job, _) => &job.span,
        }
    }

    fn unless_expired(self, now: Instant) -> Option<Self> {
        match self {
            Self::Plain(job) => job.unless_expired(now).map(Self::Plain),
            Self::Keyed(job, keyed) => job.unless_expired(now).map(|job| Self::Keyed(job, keyed)),
        }
    }

    fn fail(self, error: StoreError) {
        match self {
            Self::Plain(job) => {
                let _ = job.reply.send(Err(error));
            }
            Self::Keyed(job, _) => {
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

/// A job's result inside the batch's transaction, sent once the commit succeeded.
enum JobResult {
    /// The new user's id.
    Plain(Result<i64, StoreError>),
    Keyed(Result<KeyedOutcome, StoreError>),
}

/// Keys (subject, key) of keyed creates being written by this process: a second request with
/// one of them is answered 409 instead of waiting. One process writes a SQLite file.
type InFlightKeys = Arc<Mutex<HashSet<(String, String)>>>;

/// Holds a key in the in-flight set until dropped.
struct InFlightKey {
    keys: InFlightKeys,
    entry: Option<(String, String)>,
}

impl InFlightKey {
    fn claim(keys: &InFlightKeys, subject: &str, key: &str) -> Option<Self> {
        let entry = (subject.to_owned(), key.to_owned());
        let fresh = keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(entry.clone());
        fresh.then(|| Self { keys: keys.clone(), entry: Some(entry) })
    }
}

impl Drop for InFlightKey {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&entry);
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    readers: Pool<Readers>,
    writer: mpsc::Sender<WriterMessage>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
    in_flight_keys: InFlightKeys,
    /// The runtime that opened the store: its bounded blocking pool runs the full list's
    /// reads, whichever connection thread asks.
    blocking: tokio::runtime::Handle,
}

impl SqliteStore {
    pub async fn open(path: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        let path = PathBuf::from(path);
        let writer_conn = open_writer(&path)?;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let retention = options.idempotency_retention;
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, queue, retention))
            .context("spawning the SQLite writer thread")?;
        tokio::spawn(request_purges(writer.downgrade(), purge_interval(retention)));
        let readers = Pool::builder(Readers { path: path.clone() })
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .build()
            .context("building the SQLite read pool")?;
        Ok(Self {
            path,
            readers,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            timeout: options.timeout,
            in_flight_keys: InFlightKeys::default(),
            blocking: tokio::runtime::Handle::current(),
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_writer(&path)?;
            migrate(&mut conn)
        })
        .await
        .context("migration task panicked")?
    }

    pub async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        let (job, outcome) = WriteJob::new(user, self.timeout);
        let (deadline, span) = (job.deadline, job.span.clone());
        self.send(Job::Plain(job))?;
        await_write(outcome, deadline, span).await
    }

    /// The key is looked up and written by the writer, in the user's transaction, so the
    /// stored answer is authoritative; the in-flight set only turns a concurrent duplicate into
    /// a quick 409 instead of a wait.
    pub async fn create_keyed(&self, user: NewUser, keyed: KeyedCreate) -> Result<KeyedOutcome, StoreError> {
        let Some(_in_flight) = InFlightKey::claim(&self.in_flight_keys, &keyed.subject, &keyed.key) else {
            return Ok(KeyedOutcome::InFlight);
        };
        let (job, outcome) = WriteJob::new(user, self.timeout);
        let (deadline, span) = (job.deadline, job.span.clone());
        self.send(Job::Keyed(job, Box::new(keyed)))?;
        await_write(outcome, deadline, span).await
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.writer.try_send(WriterMessage::Insert(job)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable("writer stopped".into()),
        })
    }

    pub async fn get(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.read("SELECT users", move |conn| {
            conn.prepare_cached(&format!("{SELECT_USER} WHERE id = ?1"))?.query_row([id], row_to_user).optional()
        })
        .await
    }

    /// Up to `limit` users with ids above `after`, in id order, each handed to `visit` as read.
    pub async fn visit_page<F>(&self, after: i64, limit: u32, mut visit: F) -> Result<(), StoreError>
    where
        F: FnMut(UserRef<'_>) + Send,
    {
        self.read("SELECT users", move |conn| {
            let mut rows = conn.prepare_cached(SELECT_PAGE)?;
            let mut rows = rows.query([after])?;
            for _ in 0..limit {
                let Some(row) = rows.next()? else { break };
                visit(row_to_user_ref(row)?);
            }
            Ok(())
        })
        .await
    }

    /// As `visit_page`, collected, read on a blocking thread: for the full-list stream's
    /// batches, which run beside requests and may walk pages no request has touched lately.
    pub async fn page(&self, after: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        let conn = self.reader().await?;
        let read = self
            .blocking
            .spawn_blocking(move || select_page(&conn, after, limit as usize))
            .instrument(statement_span(SYSTEM, "SELECT users"));
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(outcome)) => outcome.map_err(map_error),
            Ok(Err(e)) => Err(StoreError::Internal(anyhow::anyhow!("read task failed: {e}"))),
            Err(_) => Err(StoreError::Unavailable("query timed out".into())),
        }
    }

    pub fn pool_status(&self) -> deadpool_sqlite::Status {
        self.readers.status()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read("SELECT 1", |conn| conn.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    pub async fn close(&self) {
        let _ = self.writer.send(WriterMessage::Shutdown).await;
        let handle = self.writer_thread.lock().expect("writer handle lock").take();
        if let Some(handle) = handle {
            let _ = self.blocking.spawn_blocking(move || handle.join()).await;
        }
        self.readers.close();
    }

    /// A pooled reader, waited for at most the store's timeout.
    async fn reader(&self) -> Result<deadpool::managed::Object<Readers>, StoreError> {
        self.readers.get().instrument(pool_wait_span(SYSTEM)).await.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Runs `query` on a pooled reader, on this task: a read of a bounded number of rows from a
    /// WAL database takes microseconds, less than handing it to a blocking thread and back.
    /// `operation` names the statement's span.
    async fn read<T, F>(&self, operation: &'static str, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T>,
    {
        let conn = self.reader().await?;
        let _statement = statement_span(SYSTEM, operation).entered();
        query(&conn).map_err(map_error)
    }
}

/// The pooled readers. Nothing is checked before a reader is reused: a connection to a local
/// file does not go stale (deadpool-sqlite's manager runs a query on a blocking thread first).
struct Readers {
    path: PathBuf,
}

impl deadpool::managed::Manager for Readers {
    type Type = Connection;
    type Error = rusqlite::Error;

    async fn create(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        // Full-table streams pass through these readers: SQLite's default page cache (2 MiB
        // each) would keep what they scanned.
        conn.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB}"))?;
        Ok(conn)
    }

    async fn recycle(&self, _: &mut Connection, _: &Metrics) -> RecycleResult<rusqlite::Error> {
        Ok(())
    }
}

const SELECT_PAGE: &str = "SELECT id, name, email, created_at FROM users WHERE id > ?1 ORDER BY id";

/// Up to `limit` users with ids above `after`, in id order.
fn select_page(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<User>> {
    // No `LIMIT ?2`: the bundled SQLite (built with STAT4) marks a statement whose LIMIT is a
    // bound parameter as expired at every bind and re-prepares it on every run (~80k
    // instructions a request); the cursor stops after `limit` rows instead.
    conn.prepare_cached(SELECT_PAGE)?.query_map([after], row_to_user)?.take(limit).collect()
}

fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening SQLite database {}", path.display()))?;
    // WAL lets readers run beside the writer; FULL syncs the WAL on every commit,
    // so an acknowledged insert survives kill -9 and power loss.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
        .context("configuring SQLite (WAL, synchronous=FULL)")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )?;
    for (version, migration) in MIGRATIONS {
        let applied: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)", [version], |r| r.get(0))?;
        if !applied {
            match migration {
                Migration::Sql(sql) => tx.execute_batch(sql),
                Migration::RekeyEmails => rekey_emails(&tx),
            }
            .with_context(|| format!("applying SQLite migration {version}"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, format_timestamp(time::OffsetDateTime::now_utc())],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn rekey_emails(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let rows = tx
        .prepare("SELECT id, email, email_key FROM users ORDER BY id")?
        .query_map([], |r| Ok(StoredEmail { id: r.get(0)?, email: r.get(1)?, key: r.get(2)? }))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let changes = rekey::plan(rows);
    tracing::info!(changed = changes.len(), "recomputing email keys");
    // Without the index while rewriting: a row may take a key another row is about to give up.
    tx.execute_batch("DROP INDEX users_email_key")?;
    let mut update = tx.prepare("UPDATE users SET email_key = ?2 WHERE id = ?1")?;
    for change in changes {
        update.execute(params![change.id, change.key])?;
    }
    tx.execute_batch("CREATE UNIQUE INDEX users_email_key ON users (email_key)")
}

/// Asks the writer to purge expired keys every `interval`, until the writer is gone. A full
/// queue skips a tick: the writer is busy and the next tick comes soon enough.
async fn request_purges(writer: mpsc::WeakSender<WriterMessage>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        let Some(writer) = writer.upgrade() else { return };
        if let Err(mpsc::error::TrySendError::Closed(_)) = writer.try_send(WriterMessage::Purge) {
            return;
        }
    }
}

/// Takes every queued insert, commits them in one transaction, then answers each. Between
/// batches, when nothing is queued, deletes expired idempotency keys in bounded batches.
fn writer_loop(conn: Connection, mut queue: mpsc::Receiver<WriterMessage>, retention: Duration) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut purge_pending = false;
    let mut shutting_down = false;
    while !shutting_down {
        let first = if purge_pending {
            match queue.try_recv() {
                Ok(message) => Some(message),
                Err(mpsc::error::TryRecvError::Empty) => {
                    purge_pending = purge_expired_keys(&conn, retention);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            queue.blocking_recv()
        };
        match first {
            Some(WriterMessage::Insert(job)) => batch.push(job),
            Some(WriterMessage::Purge) => {
                purge_pending = true;
                continue;
            }
            Some(WriterMessage::Shutdown) | None => break,
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(WriterMessage::Insert(job)) => batch.push(job),
                Ok(WriterMessage::Purge) => purge_pending = true,
                Ok(WriterMessage::Shutdown) => {
                    shutting_down = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch, retention);
    }
}

/// Milliseconds since the Unix epoch: the idempotency table's clock.
fn unix_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes up to `PURGE_BATCH` expired keys in one short transaction of its own (the statement's
/// autocommit); returns whether more may remain. A held write lock (another process) skips it.
fn purge_expired_keys(conn: &Connection, retention: Duration) -> bool {
    let cutoff = unix_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let deleted = conn.busy_timeout(Duration::from_millis(50)).and_then(|()| {
        conn.prepare_cached(&format!(
            "DELETE FROM idempotency_keys WHERE (subject, key) IN \
             (SELECT subject, key FROM idempotency_keys WHERE created_at <= ?1 LIMIT {PURGE_BATCH})"
        ))?
        .execute([cutoff])
    });
    match deleted {
        Ok(deleted) => {
            if deleted > 0 {
                tracing::debug!(deleted, "expired idempotency keys purged");
            }
            deleted == PURGE_BATCH
        }
        Err(e) => {
            tracing::warn!(error = %e, "purging expired idempotency keys failed; retried at the next tick");
            false
        }
    }
}

/// Commits the batch's jobs that are still in time. The wait for the write lock ends before the
/// earliest deadline (busy_timeout), so a job either starts in time or is answered 503 with
/// nothing written; once the lock is held, the outcome is the commit's own.
fn commit_batch(conn: &Connection, batch: &mut Vec<Job>, retention: Duration) {
    let now = Instant::now();
    let jobs: Vec<Job> = batch.drain(..).filter_map(|job| job.unless_expired(now)).collect();
    let Some(start_by) = jobs.iter().map(Job::deadline).min() else { return };
    let span = write_batch_span(SYSTEM, jobs.iter().map(Job::span));
    span.record("db.operation.batch.size", jobs.len() as i64);
    let _entered = span.enter();
    let started = Instant::now();
    // Microseconds: what the column keeps, so a 201 and a later read show the same instant.
    let created_at = truncate_to_micros(time::OffsetDateTime::now_utc());
    let stored_created_at = format_timestamp(created_at);
    let mut reached_commit = false;
    let outcome = (|| -> rusqlite::Result<Vec<JobResult>> {
        conn.busy_timeout(start_by.saturating_duration_since(Instant::now()))?;
        let tx = WriteTransaction::begin(conn)?;
        let mut results = Vec::with_capacity(jobs.len());
        {
            let _statement = statement_span(SYSTEM, "INSERT users").entered();
            let mut insert =
                conn.prepare_cached("INSERT INTO users (name, email, email_key, created_at) VALUES (?1, ?2, ?3, ?4)")?;
            // A failed statement rolls back only itself; the rest of the batch commits.
            let mut insert_user = |user: &NewUser| {
                insert
                    .execute(params![user.name.as_str(), user.email.as_str(), user.email.key(), stored_created_at])
                    .map(|_| conn.last_insert_rowid())
                    .map_err(map_error)
            };
            for job in &jobs {
                results.push(match job {
                    Job::Plain(job) => JobResult::Plain(insert_user(&job.user)),
                    Job::Keyed(job, keyed) => JobResult::Keyed(insert_keyed(conn, keyed, retention, || {
                        insert_user(&job.user).map(|id| User {
                            id,
                            name: job.user.name.as_str().to_owned(),
                            email: job.user.email.as_str().to_owned(),
                            created_at,
                        })
                    })),
                });
            }
        }
        reached_commit = true;
        tx.commit()?;
        Ok(results)
    })();
    crate::telemetry::record_write_batch(jobs.len(), started.elapsed());
    match outcome {
        Ok(results) => {
            for (job, result) in jobs.into_iter().zip(results) {
                match (job, result) {
                    (Job::Plain(job), JobResult::Plain(id)) => {
                        // The request's own strings become the stored user's: no copy.
                        let _ = job.reply.send(id.map(|id| job.user.into_user(id, created_at)));
                    }
                    (Job::Keyed(job, _), JobResult::Keyed(result)) => {
                        let _ = job.reply.send(result);
                    }
                    (job, _) => job.fail(StoreError::Internal(anyhow::anyhow!("a job got another kind's result"))),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = jobs.len(), "SQLite batch commit failed");
            let failure = commit_failure(&e, reached_commit);
            for job in jobs {
                job.fail(failure.clone_for_reply());
            }
        }
    }
}

/// What a failed batch tells its requests. Before `COMMIT`, nothing was written. An I/O error
/// at `COMMIT` may come after the WAL got the batch's frames, commit frame included (a failed
/// `fsync`): the connection then drops them, but a crash before the next commit leaves them for
/// recovery to keep, so the batch may or may not be stored, and 503 ("nothing happened") would
/// not be true.
fn commit_failure(e: &rusqlite::Error, reached_commit: bool) -> StoreError {
    if reached_commit && e.sqlite_error_code() == Some(ErrorCode::SystemIoFailure) {
        StoreError::OutcomeUnknown(format!("COMMIT failed on I/O: {e}"))
    } else if is_unavailable(e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(anyhow::anyhow!("commit failed: {e}"))
    }
}

/// The batch's transaction, begun and committed through cached statements: rusqlite's
/// `Transaction` parses `BEGIN` and `COMMIT` from text on every batch (~900 instructions a
/// POST under callgrind). Dropped uncommitted, it rolls back, as `Transaction` does.
struct WriteTransaction<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTransaction<'c> {
    /// IMMEDIATE: the write lock is taken here, once, not by the first insert.
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self { conn })
    }

    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl Drop for WriteTransaction<'_> {
    fn drop(&mut self) {
        // Still open only when the batch failed before or at its COMMIT.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Inside the batch's transaction: the stored answer for the key when there is one in the
/// retention; otherwise the insert and the key's row, under a savepoint so that a failure takes
/// back both and nothing else of the batch.
fn insert_keyed(
    conn: &Connection,
    keyed: &KeyedCreate,
    retention: Duration,
    insert_user: impl FnOnce() -> Result<User, StoreError>,
) -> Result<KeyedOutcome, StoreError> {
    let now = unix_millis();
    let oldest = now - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let stored = conn
        .prepare_cached(
            "SELECT fingerprint, status, body, user_id FROM idempotency_keys \
             WHERE subject = ?1 AND key = ?2 AND created_at > ?3",
        )
        .and_then(|mut select| {
            select
                .query_row(params![keyed.subject, keyed.key, oldest], |row| {
                    let fingerprint: Vec<u8> = row.get(0)?;
                    let answer = StoredAnswer { status: row.get(1)?, body: row.get(2)?, user_id: row.get(3)? };
                    Ok((fingerprint, answer))
                })
                .optional()
        })
        .map_err(map_error)?;
    if let Some((fingerprint, answer)) = stored {
        return Ok(KeyedOutcome::from_stored(&fingerprint, &keyed.fingerprint, answer));
    }
    conn.execute_batch("SAVEPOINT keyed_create").map_err(map_error)?;
    let result = insert_user();
    let stored = match keyed.answer(&result) {
        None => Err(result.err().unwrap_or_else(|| StoreError::Internal(anyhow::anyhow!("no answer to store")))),
        Some(answer) => conn
            .prepare_cached(
                "INSERT INTO idempotency_keys (subject, key, fingerprint, status, body, user_id, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (subject, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                 status = excluded.status, body = excluded.body, user_id = excluded.user_id, \
                 created_at = excluded.created_at",
            )
            .and_then(|mut upsert| {
                upsert.execute(params![
                    keyed.subject,
                    keyed.key,
                    keyed.fingerprint,
                    answer.status,
                    answer.body,
                    answer.user_id,
                    now
                ])
            })
            .map(|_| KeyedOutcome::Fresh(answer))
            .map_err(map_error),
    };
    let end = if stored.is_ok() { "RELEASE keyed_create" } else { "ROLLBACK TO keyed_create; RELEASE keyed_create" };
    conn.execute_batch(end).map_err(map_error)?;
    stored
}

fn row_to_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let user = row_to_user_ref(row)?;
    Ok(User { id: user.id, name: user.name.to_owned(), email: user.email.to_owned(), created_at: user.created_at })
}

fn row_to_user_ref<'a>(row: &'a rusqlite::Row<'_>) -> rusqlite::Result<UserRef<'a>> {
    let created_at = parse_timestamp(row.get_ref(3)?.as_str()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?;
    Ok(UserRef { id: row.get(0)?, name: row.get_ref(1)?.as_str()?, email: row.get_ref(2)?.as_str()?, created_at })
}

fn is_unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
        )
    )
}

fn map_error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == ErrorCode::ConstraintViolation
        && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    {
        return StoreError::EmailTaken;
    }
    if is_unavailable(&e) { StoreError::Unavailable(e.to_string()) } else { StoreError::Internal(e.into()) }
}
