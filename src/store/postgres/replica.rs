//! The read replica (`DATABASE_READ_URL`): a pool of its own, and a watcher that polls its
//! replay lag every second and decides whether reads may go there.
//!
//! The replica is asked first only while its last poll answered within the lag bound; any
//! failure on it sends the read to the primary. Its attempts are bounded more tightly than the
//! primary's, so a dead replica costs a fraction of the request's time before the fallback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use metrics::Counter;

use super::thread_pools::{self, ThreadPools};
use super::{build_pool, with_client};
use crate::store::{ReplicaOptions, StoreError, StoreOptions, redact};

/// How often the replica's lag is measured.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a replica attempt (or a lag poll) may take: a read that the replica cannot
/// answer in this time still has the primary's full timeout left within the request's bound.
const ATTEMPT_BOUND: Duration = Duration::from_secs(1);

/// Seconds of replay lag. Zero when everything received is replayed: on an idle primary the last
/// replayed transaction grows old without the replica falling behind. Zero on a server not in
/// recovery (a URL naming a primary is never behind itself).
const LAG_QUERY: &str = "SELECT CASE \
       WHEN NOT pg_is_in_recovery() THEN 0::float8 \
       WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
       ELSE COALESCE(GREATEST(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, 0), \
                     'Infinity'::float8) \
     END";

/// Which pool answered a read, for `db_reads_total{pool}`.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) enum ReadPool {
    Replica,
    Primary,
}

pub(in crate::store) struct Replica {
    /// The lag watcher's; reads too when `threads` is empty.
    pool: Pool,
    /// Reads, one pool per connection thread, as on the primary.
    threads: ThreadPools,
    timeout: Duration,
    usable: Arc<AtomicBool>,
    watcher: tokio::task::AbortHandle,
    /// Registered at the first read: the metrics recorder is installed after the store connects.
    counters: OnceLock<ReadCounters>,
}

struct ReadCounters {
    replica: Counter,
    primary: Counter,
    replica_failures: Counter,
}

impl Replica {
    /// Builds the pool and starts the lag watcher; reads stay on the primary until its first
    /// poll finds the replica within `max_lag`.
    pub fn start(replica: &ReplicaOptions, options: &StoreOptions) -> anyhow::Result<Self> {
        let timeout = options.timeout.min(ATTEMPT_BOUND);
        let max_size = replica.max_connections.unwrap_or(options.max_connections);
        // The watcher keeps one connection in the shared pool.
        let (pool, threads) = thread_pools::build(max_size, 1, options.read_pools, |size| {
            build_pool(&replica.url, options, size, timeout)
                .map_err(|e| e.context(format!("building the replica pool for {}", redact(&replica.url))))
        })?;
        let usable = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch(pool.clone(), timeout, replica.max_lag, usable.clone())).abort_handle();
        Ok(Self { pool, threads, timeout, usable, watcher, counters: OnceLock::new() })
    }

    /// The pool for a read: its connection thread's own, when there is one.
    pub fn pool(&self) -> &Pool {
        self.threads.current().unwrap_or(&self.pool)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    pub fn served(&self, by: ReadPool) {
        let counters = self.counters();
        match by {
            ReadPool::Replica => counters.replica.increment(1),
            ReadPool::Primary => counters.primary.increment(1),
        }
    }

    /// A read failed on the replica and goes to the primary. A connection failure or timeout
    /// takes the replica out of the rotation until the watcher's next good poll, so that the
    /// requests in between do not each pay the attempt bound.
    pub fn failed(&self, error: &StoreError) {
        self.counters().replica_failures.increment(1);
        if matches!(error, StoreError::Unavailable(_)) && self.usable.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "read replica unavailable; reading from the primary");
        } else {
            tracing::debug!(%error, "replica read failed; reading from the primary");
        }
    }

    pub fn close(&self) {
        self.watcher.abort();
        self.usable.store(false, Ordering::Relaxed);
        self.pool.close();
        self.threads.close();
    }

    fn counters(&self) -> &ReadCounters {
        self.counters.get_or_init(|| ReadCounters {
            replica: metrics::counter!("db_reads_total", "pool" => "replica"),
            primary: metrics::counter!("db_reads_total", "pool" => "primary"),
            replica_failures: metrics::counter!("db_replica_read_failures_total"),
        })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The replay timestamp overstates the lag of the first write after an idle spell (the last
/// replayed transaction is old): the replica cannot be further behind than the last poll that
/// found it caught up.
fn lag_since_caught_up(
    seconds: f64,
    polled_at: std::time::Instant,
    caught_up_at: &mut Option<std::time::Instant>,
) -> f64 {
    if seconds == 0.0 {
        *caught_up_at = Some(polled_at);
        return 0.0;
    }
    caught_up_at.map_or(seconds, |at| seconds.min(polled_at.duration_since(at).as_secs_f64()))
}

/// Polls the replica's lag every `POLL_INTERVAL`: usable while it answers within `max_lag`.
async fn watch(pool: Pool, timeout: Duration, max_lag: Duration, usable: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut caught_up_at: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let polled_at = std::time::Instant::now();
        let lag = with_client(&pool, timeout, "replica lag", async |client| {
            let statement = client.prepare_cached(LAG_QUERY).await?;
            client.query_one(&statement, &[]).await.map(|row| row.get::<_, f64>(0))
        })
        .await
        .map(|seconds| lag_since_caught_up(seconds, polled_at, &mut caught_up_at));
        let now_usable = match &lag {
            Ok(seconds) => {
                metrics::gauge!("db_replica_lag_seconds").set(*seconds);
                *seconds <= max_lag.as_secs_f64()
            }
            Err(_) => false,
        };
        metrics::gauge!("db_replica_usable").set(f64::from(u8::from(now_usable)));
        let was_usable = usable.swap(now_usable, Ordering::Relaxed);
        match (&lag, was_usable, now_usable) {
            (_, false, true) => tracing::info!(lag_seconds = lag.as_ref().ok(), "reading from the replica"),
            (Ok(seconds), true, false) => {
                tracing::warn!(
                    lag_seconds = seconds,
                    max_lag_seconds = max_lag.as_secs_f64(),
                    "replica lags; reading from the primary"
                );
            }
            (Err(error), true, false) => tracing::warn!(%error, "read replica unavailable; reading from the primary"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::lag_since_caught_up;

    #[test]
    fn the_lag_is_bounded_by_the_last_poll_that_found_the_replica_caught_up() {
        let start = Instant::now();
        let mut caught_up_at = None;
        // Never seen caught up: the replay timestamp is all there is.
        assert_eq!(lag_since_caught_up(600.0, start, &mut caught_up_at), 600.0);
        assert_eq!(lag_since_caught_up(0.0, start, &mut caught_up_at), 0.0);
        // The first write after ten idle minutes: behind by at most the second since.
        let next = start + Duration::from_secs(1);
        assert_eq!(lag_since_caught_up(600.0, next, &mut caught_up_at), 1.0);
        // A smaller replay lag is taken as it is.
        assert_eq!(lag_since_caught_up(0.25, next, &mut caught_up_at), 0.25);
        // Still not caught up ten seconds later: the bound grows with it.
        let later = start + Duration::from_secs(10);
        assert_eq!(lag_since_caught_up(600.0, later, &mut caught_up_at), 10.0);
    }
}
