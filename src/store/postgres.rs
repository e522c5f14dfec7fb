//! PostgreSQL: a deadpool of tokio-postgres clients with cached statements.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tracing::Instrument;

mod app_role;
mod keyed;
mod replica;
mod thread_pools;

use super::postgres_writer::InsertBatcher;
use super::rekey::{self, Migration, StoredEmail};
use super::{StoreError, StoreOptions, pool_wait_span, statement_span};
use crate::domain::{NewUser, User};
use replica::{ReadPool, Replica};
use thread_pools::ThreadPools;

const MIGRATIONS: &[(i64, Migration)] = &[
    (1, Migration::Sql(include_str!("migrations/postgres/0001_users.sql"))),
    (2, Migration::RekeyEmails),
    (3, Migration::Sql(include_str!("migrations/postgres/0003_idempotency_keys.sql"))),
];
/// Insert batches sent at once: one commits while the next is sent, and the queue is not cut
/// into small batches. Five at once (half the default pool) cost the server ~70 % more CPU a row
/// on two cores, and served 20–22k inserts a second against 24–25k with two.
const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Serialises migrations of instances starting together (an arbitrary, fixed key).
const MIGRATION_LOCK_KEY: i64 = 0x7573_6572_735f_6170;

pub(super) const SYSTEM: &str = "postgresql";
const SELECT_USER: &str = "SELECT id, name, email, created_at FROM users";

pub struct PostgresStore {
    /// Insert batches, the keys' purge, migrations; requests too when `threads` is empty.
    pool: Pool,
    /// The requests' own statements, one pool per connection thread.
    threads: ThreadPools,
    /// Serves reads while it is healthy and caught up (`DATABASE_READ_URL`).
    replica: Option<Replica>,
    writer: InsertBatcher,
    timeout: Duration,
    idempotency_retention: Duration,
}

impl PostgresStore {
    pub fn connect(url: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        // Half the connections for batched inserts at most, the rest stay free for reads.
        let batches = (options.max_connections / 2).min(MAX_BATCHES_IN_FLIGHT);
        // The batches and the purge keep theirs in the shared pool.
        let (pool, threads) = thread_pools::build(options.max_connections, batches + 1, options.read_pools, |size| {
            build_pool(url, options, size, options.timeout).context("building the PostgreSQL pool")
        })?;
        let replica = match &options.replica {
            Some(replica) => Some(Replica::start(replica, options)?),
            None => None,
        };
        let writer = InsertBatcher::start(pool.clone(), options.timeout, batches);
        tokio::spawn(keyed::purge_expired_keys(pool.clone(), options.idempotency_retention, options.timeout));
        Ok(Self {
            pool,
            threads,
            replica,
            writer,
            timeout: options.timeout,
            idempotency_retention: options.idempotency_retention,
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("connecting to PostgreSQL to migrate")?;
        let tx = client.transaction().await?;
        // Migrations may outlast the per-statement bound of ordinary requests.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        for (version, migration) in MIGRATIONS {
            let applied: bool = tx
                .query_one("SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = $1)", &[version])
                .await?
                .get(0);
            if !applied {
                match migration {
                    Migration::Sql(sql) => tx.batch_execute(sql).await,
                    Migration::RekeyEmails => rekey_emails(&tx).await,
                }
                .with_context(|| format!("applying PostgreSQL migration {version}"))?;
                tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        self.writer.insert(user).await
    }

    /// From the replica when it is usable; a miss there (a user created moments ago, not yet
    /// replayed) or a failure is asked again of the primary: a 201's user is never a 404.
    pub async fn get(&self, id: i64) -> Result<Option<User>, StoreError> {
        let query = |pool: Pool, timeout| async move { select_user(&pool, timeout, id).await };
        self.read(query, Option::is_some).await
    }

    /// From the replica when it is usable (a page may lag the primary by up to the lag bound),
    /// else, or when the replica fails, from the primary.
    pub async fn page(&self, after: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        let query = |pool: Pool, timeout| async move { select_page(&pool, timeout, after, limit).await };
        self.read(query, |_| true).await
    }

    /// Runs `query` on the replica when it is usable and takes its answer when `answered` holds;
    /// otherwise (a miss, a failure, no usable replica) runs it on the primary.
    async fn read<T, F, Q>(&self, query: Q, answered: impl Fn(&T) -> bool) -> Result<T, StoreError>
    where
        Q: Fn(Pool, Duration) -> F,
        F: Future<Output = Result<T, StoreError>>,
    {
        if let Some(replica) = self.usable_replica() {
            match query(replica.pool().clone(), replica.timeout()).await {
                Ok(value) if answered(&value) => {
                    replica.served(ReadPool::Replica);
                    return Ok(value);
                }
                Ok(_) => {}
                Err(e) => replica.failed(&e),
            }
        }
        let value = query(self.request_pool().clone(), self.timeout).await;
        self.count_primary_read();
        value
    }

    /// The pool for a request's statements: its connection thread's own, when there is one.
    fn request_pool(&self) -> &Pool {
        self.threads.current().unwrap_or(&self.pool)
    }

    /// Every primary pool's connections together.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.threads.status().fold(self.pool.status(), |sum, status| deadpool_postgres::Status {
            max_size: sum.max_size + status.max_size,
            size: sum.size + status.size,
            available: sum.available + status.available,
            waiting: sum.waiting + status.waiting,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        with_client(self.request_pool(), self.timeout, "SELECT 1", async |client| {
            client.simple_query("SELECT 1").await.map(|_| ())
        })
        .await
    }

    /// Ready while reads can be served: the replica is usable (it answered the last lag poll
    /// and is within the bound), or else the primary answers.
    pub async fn ready(&self) -> Result<(), StoreError> {
        if self.usable_replica().is_some() {
            return Ok(());
        }
        self.ping().await
    }

    fn usable_replica(&self) -> Option<&Replica> {
        self.replica.as_ref().filter(|replica| replica.usable())
    }

    fn count_primary_read(&self) {
        if let Some(replica) = &self.replica {
            replica.served(ReadPool::Primary);
        }
    }

    pub fn close(&self) {
        self.pool.close();
        self.threads.close();
        if let Some(replica) = &self.replica {
            replica.close();
        }
    }
}

async fn select_user(pool: &Pool, timeout: Duration, id: i64) -> Result<Option<User>, StoreError> {
    let row = with_client(pool, timeout, "SELECT users", async |client| {
        let stmt = client.prepare_cached(&format!("{SELECT_USER} WHERE id = $1")).await?;
        client.query_opt(&stmt, &[&id]).await
    })
    .await?;
    Ok(row.as_ref().map(row_to_user))
}

async fn select_page(pool: &Pool, timeout: Duration, after: i64, limit: u32) -> Result<Vec<User>, StoreError> {
    let rows = with_client(pool, timeout, "SELECT users", async |client| {
        let stmt = client.prepare_cached(&format!("{SELECT_USER} WHERE id > $1 ORDER BY id LIMIT $2")).await?;
        client.query(&stmt, &[&after, &i64::from(limit)]).await
    })
    .await?;
    Ok(rows.iter().map(row_to_user).collect())
}

/// A pool of `max_size` connections to `url`, every step (waiting, connecting, each statement)
/// bounded by `timeout`.
fn build_pool(url: &str, options: &StoreOptions, max_size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    let mut config = super::tls::parse_url(url, options.ca_file.as_deref())?;
    if let Some(password) = &options.password {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("users-api");
    }
    let tls = super::tls::connector(options.ca_file.as_deref())?;
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .post_create(statement_timeout_hook(timeout))
        .build()?)
}

/// Gets a pooled connection and runs `query` on it, both within one time bound (`timeout`, not
/// one per step); past it the caller gets 503. `operation` names the statement's span.
async fn with_client<T>(
    pool: &Pool,
    timeout: Duration,
    operation: &'static str,
    query: impl AsyncFnOnce(&Object) -> Result<T, tokio_postgres::Error>,
) -> Result<T, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || StoreError::Unavailable("timed out waiting for the database".into());
    let client = tokio::time::timeout_at(deadline, pool.get().instrument(pool_wait_span(SYSTEM)))
        .await
        .map_err(|_| timed_out())?
        .map_err(pool_error)?;
    match tokio::time::timeout_at(deadline, query(&client).instrument(statement_span(SYSTEM, operation))).await {
        Ok(Err(e)) => {
            // The connection itself failed (no SQLSTATE, or the server ended the session): the
            // pool must not hand it out again.
            if e.code().is_none() || client.is_closed() {
                drop(Object::take(client));
            }
            Err(map_error(e))
        }
        Ok(Ok(value)) => Ok(value),
        Err(_) => {
            // Its query may still be pending: the next user of the connection would wait behind it.
            drop(Object::take(client));
            Err(timed_out())
        }
    }
}

/// Every statement of a pooled connection is cancelled by the server past `timeout`, so a write
/// still running at its deadline is rolled back by the database itself.
fn statement_timeout_hook(timeout: Duration) -> Hook {
    let set = format!("SET statement_timeout = {}", timeout.as_millis());
    Hook::async_fn(move |client, _| {
        let set = set.clone();
        Box::pin(async move { client.batch_execute(&set).await.map_err(HookError::Backend) })
    })
}

async fn rekey_emails(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let rows = tx.query("SELECT id, email, email_key FROM users ORDER BY id", &[]).await?;
    let changes = rekey::plan(rows.iter().map(|r| StoredEmail { id: r.get(0), email: r.get(1), key: r.get(2) }));
    tracing::info!(changed = changes.len(), "recomputing email keys");
    // Without the index while rewriting: a row may take a key another row is about to give up.
    tx.batch_execute("DROP INDEX users_email_key").await?;
    let (ids, keys): (Vec<i64>, Vec<String>) = changes.into_iter().map(|c| (c.id, c.key)).unzip();
    tx.execute(
        "UPDATE users SET email_key = changed.key FROM unnest($1::bigint[], $2::text[]) AS changed(id, key) \
         WHERE users.id = changed.id",
        &[&ids, &keys],
    )
    .await?;
    tx.batch_execute("CREATE UNIQUE INDEX users_email_key ON users (email_key)").await
}

fn row_to_user(row: &Row) -> User {
    User { id: row.get(0), name: row.get(1), email: row.get(2), created_at: row.get(3) }
}

pub(super) fn pool_error(e: PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn map_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::EmailTaken;
        }
        // Class 08 (connection), 53 (resources), 57 (operator intervention, e.g. admin shutdown).
        let class = &code.code()[..2];
        if matches!(class, "08" | "53" | "57") {
            return StoreError::Unavailable(e.to_string());
        }
        return StoreError::Internal(e.into());
    }
    // No SQLSTATE: the connection itself failed or closed.
    StoreError::Unavailable(e.to_string())
}
