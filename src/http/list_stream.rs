//! `GET /users` without paging: the whole table as one JSON array, streamed in keyset batches.
//!
//! Nothing is held at the client's pace: each batch is read on a pooled connection taken and
//! returned at once, a stream that cannot hand its next chunk to the client within the stall
//! time is ended, and streams have a cap of their own for their whole life.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::error::ApiError;
use super::user_json::UserJson;
use crate::domain::User;
use crate::store::StoreError;

/// Users read per pooled query.
const BATCH_USERS: u32 = 256;
/// Users serialised into one body chunk (hyper queues up to 16 chunks per connection).
const CHUNK_USERS: usize = 64;

/// The cap on concurrent full-list streams and how long one may stall.
pub struct ListStreams {
    permits: Arc<Semaphore>,
    stall_timeout: Duration,
}

impl ListStreams {
    pub fn new(max_streams: usize, stall_timeout: Duration) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_streams)), stall_timeout }
    }
}

/// Answers 503 at once beyond the cap; reads the first batch before the 200 is committed, so an
/// unavailable database is still a clean 503.
pub async fn respond(state: Arc<AppState>) -> Result<Response, ApiError> {
    let permit = state.list_streams.permits.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!("full-list stream cap reached; refusing");
        ApiError::StreamsBusy { retry_after_secs: 2 }
    })?;
    let first = state.store.page(0, BATCH_USERS).await?;
    let (chunks, received) = mpsc::channel(1);
    let finished = Arc::new(AtomicBool::new(false));
    tokio::spawn(produce(state, first, chunks, finished.clone(), permit));

    // A stream the producer gave up on ends in an error, so hyper aborts the response: the
    // client never sees a complete-looking but truncated array.
    let ending = stream::once(async move {
        (!finished.load(Ordering::Acquire))
            .then(|| Err(StoreError::Internal(anyhow::anyhow!("full-list stream ended early"))))
    })
    .filter_map(std::future::ready);
    let body = ReceiverStream::new(received).chain(ending);
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], Body::from_stream(body))
        .into_response())
}

/// Reads batch after batch and hands the chunks to the body; returns (dropping the permit) when
/// the table is done, the database fails, the client is gone or the client stalls.
async fn produce(
    state: Arc<AppState>,
    first: Vec<User>,
    chunks: mpsc::Sender<Result<Bytes, StoreError>>,
    finished: Arc<AtomicBool>,
    _permit: OwnedSemaphorePermit,
) {
    let stall = state.list_streams.stall_timeout;
    let send = async |chunk: Result<Bytes, StoreError>| match chunks.send_timeout(chunk, stall).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            tracing::warn!(stall_secs = stall.as_secs(), "full-list stream made no progress; ending it");
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    };
    let mut batch = first;
    let mut wrote_one = false;
    let mut opening = Some(b'[');
    loop {
        let last_id = batch.last().map(|u| u.id);
        let complete = batch.len() < BATCH_USERS as usize;
        for users in batch.chunks(CHUNK_USERS) {
            let mut buf = Vec::with_capacity(users.len() * 112 + 1);
            buf.extend(opening.take());
            for user in users {
                if wrote_one {
                    buf.push(b',');
                }
                wrote_one = true;
                UserJson::of(user).write_to(&mut buf);
            }
            if !send(Ok(Bytes::from(buf))).await {
                return;
            }
        }
        if complete {
            break;
        }
        // A full batch has a last user.
        let Some(after) = last_id else { break };
        batch = match next_batch(&state, after).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "full-list stream failed after the 200; aborting it");
                let _ = send(Err(e)).await;
                return;
            }
        };
    }
    let mut closing = Vec::with_capacity(2);
    closing.extend(opening.take());
    closing.push(b']');
    if send(Ok(Bytes::from(closing))).await {
        finished.store(true, Ordering::Release);
    }
}

/// The batch after `after`. A read is safe to repeat, so a connection found dead (one left from
/// before a database restart, failing at once) costs a retry on another, not the stream the
/// client has begun. After a restart every pooled connection may be dead, so up to one attempt
/// per pooled connection plus a fresh one, within a short window; a database that does not
/// answer is not waited for twice.
async fn next_batch(state: &AppState, after: i64) -> Result<Vec<User>, StoreError> {
    const QUICK_FAILURE: Duration = Duration::from_millis(500);
    const RETRY_WINDOW: Duration = Duration::from_secs(1);
    let attempts = state.store.pool_status().max + 1;
    let began = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        let started = std::time::Instant::now();
        match state.store.page(after, BATCH_USERS).await {
            Err(StoreError::Unavailable(reason))
                if attempt < attempts && started.elapsed() < QUICK_FAILURE && began.elapsed() < RETRY_WINDOW =>
            {
                tracing::info!(%reason, attempt, "full-list batch failed at once; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => return outcome,
        }
    }
}
