//! Batched inserts for PostgreSQL: concurrent POSTs become one multi-row INSERT, one commit.
//!
//! A collector task takes whatever is queued (up to `MAX_BATCH`) as soon as a connection slot is
//! free, so under load batches grow by themselves and a lone request still goes out at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use super::postgres::{SYSTEM, map_error, pool_error};
use super::{COMMIT_GRACE, StoreError, WriteJob, await_write, pool_wait_span, statement_span, write_batch_span};
use crate::domain::{NewUser, User};

const QUEUE_CAPACITY: usize = 4096;
const MAX_BATCH: usize = 256;

/// ON CONFLICT skips duplicates (also duplicates inside the batch) instead of failing the batch;
/// a request whose row did not come back was a duplicate.
const INSERT_BATCH: &str = "INSERT INTO users (name, email, email_key) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
     ON CONFLICT (email_key) DO NOTHING \
     RETURNING id, email_key, created_at";

pub struct InsertBatcher {
    queue: mpsc::Sender<WriteJob>,
    timeout: Duration,
}

impl InsertBatcher {
    /// Starts the collector; at most `concurrency` batches use connections at once.
    pub fn start(pool: Pool, timeout: Duration, concurrency: usize) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(collect(pool, concurrency.max(1), jobs));
        Self { queue, timeout }
    }

    pub async fn insert(&self, user: NewUser) -> Result<User, StoreError> {
        let (job, outcome) = WriteJob::new(user, self.timeout);
        let (deadline, span) = (job.deadline, job.span.clone());
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable("insert batcher stopped".into()),
        })?;
        await_write(outcome, deadline, span).await
    }
}

/// Sends COMMIT and waits for its answer up to the commit grace after `start_by`. An error the
/// server answered means not committed; a lost connection or no answer is `OutcomeUnknown`.
pub(super) async fn commit(client: Object, start_by: Instant) -> Result<(), StoreError> {
    let grace = tokio::time::Instant::from_std(start_by.max(Instant::now()) + COMMIT_GRACE);
    match tokio::time::timeout_at(grace, client.batch_execute("COMMIT")).await {
        Ok(Ok(())) => Ok(()),
        // The server answered: not committed.
        Ok(Err(e)) if e.code().is_some() => Err(map_error(e)),
        Ok(Err(e)) => {
            drop(Object::take(client));
            Err(StoreError::OutcomeUnknown(format!("connection lost during COMMIT: {e}")))
        }
        Err(_) => {
            drop(Object::take(client));
            Err(StoreError::OutcomeUnknown("no answer to COMMIT within the grace".into()))
        }
    }
}

async fn collect(pool: Pool, concurrency: usize, mut jobs: mpsc::Receiver<WriteJob>) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(first) = jobs.recv().await {
        // Waiting for a slot lets the queue fill: the next batch is larger when the database is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let batch = take_batch(first, &mut jobs);
        if batch.is_empty() {
            continue;
        }
        let pool = pool.clone();
        let span = write_batch_span(SYSTEM, batch.iter().map(|job| &job.span));
        span.record("db.operation.batch.size", batch.len() as i64);
        tokio::spawn(
            async move {
                insert_batch(&pool, batch).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// `first` and whatever else is queued, up to `MAX_BATCH`, less the jobs past their deadline
/// (answered 503) and the requests that gave up.
fn take_batch(first: WriteJob, jobs: &mut mpsc::Receiver<WriteJob>) -> Vec<WriteJob> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    let now = Instant::now();
    batch.into_iter().filter_map(|job| job.unless_expired(now)).collect()
}

/// One transaction for the batch. Until COMMIT is sent, a failure or the earliest deadline
/// passing rolls everything back (the connection is discarded, so the server aborts the
/// transaction even if it only sees the rest later): 503, nothing stored. Once COMMIT is sent,
/// the batch waits for the server's answer up to the commit grace; without one, its outcome is
/// unknown.
async fn insert_batch(pool: &Pool, batch: Vec<WriteJob>) {
    let started = Instant::now();
    let start_by = batch.iter().map(|job| job.deadline).min().expect("a batch is never empty");
    let keys: Vec<String> = batch.iter().map(|job| job.user.email.key().to_owned()).collect();
    let names: Vec<&str> = batch.iter().map(|job| job.user.name.as_str()).collect();
    let emails: Vec<&str> = batch.iter().map(|job| job.user.email.as_str()).collect();

    let outcome = async {
        let client = tokio::time::timeout_at(start_by.into(), pool.get().instrument(pool_wait_span(SYSTEM)))
            .await
            .map_err(|_| StoreError::Unavailable("no connection before the write's deadline".into()))?
            .map_err(pool_error)?;
        let inserted = tokio::time::timeout_at(
            start_by.into(),
            async {
                let statement = client.prepare_cached(INSERT_BATCH).await?;
                // BEGIN and the INSERT go out together, one round trip: tokio-postgres sends
                // concurrent requests on a connection in the order they are first polled, and
                // `biased` polls BEGIN first (the default rotates which future starts). Sent the
                // other way round, the INSERT would commit by itself and a later 503 would lie.
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&names, &emails, &keys];
                Ok(tokio::join!(biased; client.batch_execute("BEGIN"), client.query(&statement, &params)))
            }
            .instrument(statement_span(SYSTEM, "INSERT users")),
        )
        .await;
        let rows = match inserted {
            Ok(Ok((Ok(()), Ok(rows)))) => rows,
            // Without its BEGIN the INSERT ran on its own and may have committed by itself.
            Ok(Ok((Err(begin_failed), Ok(_)))) => {
                drop(Object::take(client));
                return Err(StoreError::OutcomeUnknown(format!("BEGIN failed but the INSERT ran: {begin_failed}")));
            }
            failed => {
                // Never back to the pool mid-transaction; dropping it ends the transaction.
                drop(Object::take(client));
                return Err(match failed {
                    Ok(Err(e) | Ok((Err(e), _) | (_, Err(e)))) => map_error(e),
                    _ => StoreError::Unavailable("the database did not answer before the write's deadline".into()),
                });
            }
        };
        commit(client, start_by).await.map(|()| rows)
    }
    .await;
    crate::telemetry::record_write_batch(batch.len(), started.elapsed());

    let rows = match outcome {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, batch = batch.len(), "batch insert not committed");
            for job in batch {
                let _ = job.reply.send(Err(e.clone_for_reply()));
            }
            return;
        }
    };
    let mut inserted: HashMap<String, (i64, time::OffsetDateTime)> =
        rows.iter().map(|row| (row.get::<_, String>(1), (row.get(0), row.get(2)))).collect();
    for (job, key) in batch.into_iter().zip(keys) {
        // The first request for a key takes its row; any other was a duplicate.
        let result = match inserted.remove(&key) {
            Some((id, created_at)) => Ok(User {
                id,
                name: job.user.name.as_str().to_owned(),
                email: job.user.email.as_str().to_owned(),
                created_at,
            }),
            None => Err(StoreError::EmailTaken),
        };
        let _ = job.reply.send(result);
    }
}
