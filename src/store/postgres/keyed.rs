//! Keyed creates on PostgreSQL: each in a transaction of its own, outside the insert batches,
//! serialised per (subject, key) across every instance sharing the database by a transaction
//! advisory lock, and the expired keys' purge.

use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tracing::Instrument;

use super::super::idempotency::{KeyedCreate, KeyedOutcome, PURGE_BATCH, StoredAnswer, purge_interval};
use super::super::postgres_writer::commit;
use super::super::{StoreError, pool_wait_span, statement_span};
use super::{PostgresStore, SYSTEM, map_error, pool_error};
use crate::domain::{NewUser, User};

/// Not acquired: another transaction, here or on another instance, holds the key.
const TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";
const SELECT_KEY: &str = "SELECT fingerprint, status, body, user_id FROM idempotency_keys \
     WHERE subject = $1 AND key = $2 AND created_at > now() - $3::bigint * interval '1 microsecond'";
/// A duplicate email is an answer (400 email_taken), not a failure of the transaction.
const INSERT_USER: &str = "INSERT INTO users (name, email, email_key) VALUES ($1, $2, $3) \
     ON CONFLICT (email_key) DO NOTHING RETURNING id, created_at";
/// An expired row of the same key (not purged yet) is replaced.
const UPSERT_KEY: &str = "INSERT INTO idempotency_keys (subject, key, fingerprint, status, body, user_id) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (subject, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, \
     body = EXCLUDED.body, user_id = EXCLUDED.user_id, created_at = now()";
/// SKIP LOCKED: instances purging at once, or a keyed create replacing an expired row, are not
/// waited for.
const PURGE: &str = "DELETE FROM idempotency_keys WHERE (subject, key) IN \
     (SELECT subject, key FROM idempotency_keys WHERE created_at <= now() - $1::bigint * interval '1 microsecond' \
      LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// What the transaction came to before COMMIT.
enum Step {
    /// Nothing written (a replay, a reused key, a key in flight): the transaction is rolled back.
    Answered(KeyedOutcome),
    /// The user (or the email_taken answer) and the key's row are written: commit them.
    Commit(StoredAnswer),
}

impl PostgresStore {
    /// Same bounds as the batched inserts: nothing is sent after the deadline, a failure before
    /// COMMIT discards the connection (the server rolls back: 503, neither user nor key
    /// stored), and a COMMIT without an answer within the grace is `OutcomeUnknown`.
    pub async fn create_keyed(&self, user: NewUser, keyed: KeyedCreate) -> Result<KeyedOutcome, StoreError> {
        let start_by = Instant::now() + self.timeout;
        let deadline = tokio::time::Instant::from_std(start_by);
        let client = tokio::time::timeout_at(deadline, self.request_pool().get().instrument(pool_wait_span(SYSTEM)))
            .await
            .map_err(|_| StoreError::Unavailable("no connection before the write's deadline".into()))?
            .map_err(pool_error)?;
        let retention = retention_micros(self.idempotency_retention);
        let step = tokio::time::timeout_at(
            deadline,
            keyed_transaction(&client, &user, &keyed, retention).instrument(statement_span(SYSTEM, "INSERT users")),
        )
        .await;
        match step {
            Ok(Ok(Step::Commit(answer))) => commit(client, start_by).await.map(|()| KeyedOutcome::Fresh(answer)),
            Ok(Ok(Step::Answered(outcome))) => {
                // Only read: the answer holds whatever becomes of the rollback.
                let rolled_back = tokio::time::timeout_at(deadline, client.batch_execute("ROLLBACK")).await;
                if !matches!(rolled_back, Ok(Ok(()))) {
                    drop(Object::take(client));
                }
                Ok(outcome)
            }
            Ok(Err(e)) => {
                // Never back to the pool mid-transaction; dropping it ends the transaction.
                drop(Object::take(client));
                Err(map_error(e))
            }
            Err(_) => {
                drop(Object::take(client));
                Err(StoreError::Unavailable("the database did not answer before the write's deadline".into()))
            }
        }
    }
}

async fn keyed_transaction(
    client: &Object,
    user: &NewUser,
    keyed: &KeyedCreate,
    retention_micros: i64,
) -> Result<Step, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let locked: bool = client.query_one(&client.prepare_cached(TRY_LOCK).await?, &[&keyed.lock_id()]).await?.get(0);
    if !locked {
        return Ok(Step::Answered(KeyedOutcome::InFlight));
    }
    let select = client.prepare_cached(SELECT_KEY).await?;
    if let Some(row) = client.query_opt(&select, &[&keyed.subject, &keyed.key, &retention_micros]).await? {
        let fingerprint: Vec<u8> = row.get(0);
        let status: i32 = row.get(1);
        let answer =
            StoredAnswer { status: u16::try_from(status).unwrap_or(500), body: row.get(2), user_id: row.get(3) };
        return Ok(Step::Answered(KeyedOutcome::from_stored(&fingerprint, &keyed.fingerprint, answer)));
    }
    let insert = client.prepare_cached(INSERT_USER).await?;
    let email_key = user.email.key();
    let inserted = client.query_opt(&insert, &[&user.name.as_str(), &user.email.as_str(), &email_key]).await?;
    let result = match inserted {
        Some(row) => Ok(User {
            id: row.get(0),
            name: user.name.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            created_at: row.get(1),
        }),
        None => Err(StoreError::EmailTaken),
    };
    let answer = keyed.answer(&result).expect("a created user and a taken email both have an answer");
    let upsert = client.prepare_cached(UPSERT_KEY).await?;
    client
        .execute(
            &upsert,
            &[&keyed.subject, &keyed.key, &keyed.fingerprint, &i32::from(answer.status), &answer.body, &answer.user_id],
        )
        .await?;
    Ok(Step::Commit(answer))
}

fn retention_micros(retention: Duration) -> i64 {
    i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)
}

/// Deletes expired keys every purge interval, `PURGE_BATCH` rows a statement, until the pool
/// closes. Lookups ignore expired rows anyway, so a late or failed purge costs only space.
pub(super) async fn purge_expired_keys(pool: Pool, retention: Duration, timeout: Duration) {
    let interval = purge_interval(retention);
    let retention = retention_micros(retention);
    let limit = PURGE_BATCH as i64;
    loop {
        tokio::time::sleep(interval).await;
        if pool.is_closed() {
            return;
        }
        loop {
            let deleted = tokio::time::timeout(timeout, async {
                let client = pool.get().await.map_err(pool_error)?;
                let purge = client.prepare_cached(PURGE).await.map_err(map_error)?;
                client.execute(&purge, &[&retention, &limit]).await.map_err(map_error)
            })
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("purge timed out".into())));
            match deleted {
                Ok(deleted) if deleted == PURGE_BATCH as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "purging expired idempotency keys failed; retried at the next tick");
                    break;
                }
            }
        }
    }
}
