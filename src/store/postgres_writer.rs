//! Batched inserts for PostgreSQL: concurrent POSTs become one multi-row INSERT, one commit.
//!
//! A collector task takes whatever is queued (up to `MAX_BATCH`) as soon as a connection slot is
//! free, so under load batches grow by themselves and a lone request still goes out at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::postgres::{SYSTEM, map_error, pool_error};
use super::{StoreError, format_timestamp, pool_wait_span, statement_span, write_batch_span, write_wait_span};
use crate::domain::{NewUser, User};

const QUEUE_CAPACITY: usize = 4096;
const MAX_BATCH: usize = 256;

/// ON CONFLICT skips duplicates (also duplicates inside the batch) instead of failing the batch;
/// a request whose row did not come back was a duplicate.
const INSERT_BATCH: &str = "INSERT INTO users (name, email, email_key) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
     ON CONFLICT (email_key) DO NOTHING \
     RETURNING id, email_key, created_at";

/// A user to insert, where to answer, and the request's `write wait` span (the batch's parent or link).
type Job = (NewUser, oneshot::Sender<Result<User, StoreError>>, tracing::Span);

pub struct InsertBatcher {
    queue: mpsc::Sender<Job>,
    timeout: Duration,
}

impl InsertBatcher {
    /// Starts the collector; at most `concurrency` batches use connections at once.
    pub fn start(pool: Pool, timeout: Duration, concurrency: usize) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(collect(pool, timeout, concurrency.max(1), jobs));
        Self { queue, timeout }
    }

    pub async fn insert(&self, user: NewUser) -> Result<User, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let wait = write_wait_span();
        self.queue.try_send((user, reply, wait.clone())).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable("insert batcher stopped".into()),
        })?;
        // One bound for the whole wait (queue, connection, statement): past it, 503. A request
        // given up on here is dropped from any batch not yet sent (see `take_batch`).
        match tokio::time::timeout(self.timeout, outcome).instrument(wait).await {
            Ok(reply) => reply.map_err(|_| StoreError::Unavailable("insert batcher stopped".into()))?,
            Err(_) => Err(StoreError::Unavailable("insert timed out".into())),
        }
    }
}

async fn collect(pool: Pool, timeout: Duration, concurrency: usize, mut jobs: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(first) = jobs.recv().await {
        // Waiting for a slot lets the queue fill: the next batch is larger when the database is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let batch = take_batch(first, &mut jobs);
        if batch.is_empty() {
            continue;
        }
        let pool = pool.clone();
        let span = write_batch_span(SYSTEM, batch.iter().map(|(_, _, wait)| wait));
        span.record("db.operation.batch.size", batch.len() as i64);
        tokio::spawn(
            async move {
                insert_batch(&pool, timeout, batch).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// `first` and whatever else is queued, up to `MAX_BATCH`, less the requests that gave up.
fn take_batch(first: Job, jobs: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch.retain(|(_, reply, _)| !reply.is_closed());
    batch
}

async fn insert_batch(pool: &Pool, timeout: Duration, batch: Vec<Job>) {
    let started = std::time::Instant::now();
    let keys: Vec<String> = batch.iter().map(|(user, _, _)| user.email.key()).collect();
    let names: Vec<&str> = batch.iter().map(|(user, _, _)| user.name.as_str()).collect();
    let emails: Vec<&str> = batch.iter().map(|(user, _, _)| user.email.as_str()).collect();

    let outcome = tokio::time::timeout(timeout, async {
        let client = pool.get().instrument(pool_wait_span(SYSTEM)).await.map_err(pool_error)?;
        async {
            let statement = client.prepare_cached(INSERT_BATCH).await?;
            client.query(&statement, &[&names, &emails, &keys]).await
        }
        .instrument(statement_span(SYSTEM, "INSERT users"))
        .await
        .map_err(map_error)
    })
    .await
    .unwrap_or_else(|_| Err(StoreError::Unavailable("insert timed out".into())));
    crate::telemetry::record_write_batch(batch.len(), started.elapsed());

    let rows = match outcome {
        Ok(rows) => rows,
        Err(e) => {
            let reason = e.to_string();
            let unavailable = matches!(e, StoreError::Unavailable(_));
            for (_, reply, _) in batch {
                let _ = reply.send(Err(if unavailable {
                    StoreError::Unavailable(reason.clone())
                } else {
                    StoreError::Internal(anyhow::anyhow!("batch insert failed: {reason}"))
                }));
            }
            return;
        }
    };
    let mut inserted: HashMap<String, (i64, time::OffsetDateTime)> =
        rows.iter().map(|row| (row.get::<_, String>(1), (row.get(0), row.get(2)))).collect();
    for ((user, reply, _), key) in batch.into_iter().zip(keys) {
        // The first request for a key takes its row; any other was a duplicate.
        let result = match inserted.remove(&key) {
            Some((id, created_at)) => Ok(User {
                id,
                name: user.name.as_str().to_owned(),
                email: user.email.as_str().to_owned(),
                created_at: format_timestamp(created_at),
            }),
            None => Err(StoreError::EmailTaken),
        };
        let _ = reply.send(result);
    }
}
