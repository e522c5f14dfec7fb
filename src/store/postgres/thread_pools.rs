//! One pool per connection thread for the requests' own statements (on the primary: reads,
//! keyed creates, the readiness ping; on the replica: reads). deadpool-postgres drives each
//! connection on the runtime that opened it, so a request that borrowed a connection opened on
//! another thread crossed between threads twice a statement: GET /users?limit=100 lost about
//! 15 % to it (bench/analysis.md, round 15). A thread's own pool only opens connections on that
//! thread.

use deadpool_postgres::{Pool, Status};

/// How the connection budget is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Split {
    /// The shared pool: the primary's insert batches, purge and migrations, the replica's lag
    /// watcher, and statements off the connection threads.
    pub shared: usize,
    /// Each connection thread's pool.
    pub per_thread: usize,
}

/// `max` connections: `reserved` stay shared, the rest go evenly to `threads` pools (the shared
/// pool keeps what does not divide). `None`, one shared pool for everything, when that would
/// leave a thread without a connection.
pub(super) fn split(max: usize, reserved: usize, threads: usize) -> Option<Split> {
    let per_thread = max.saturating_sub(reserved).checked_div(threads)?;
    (per_thread > 0).then(|| Split { shared: max - per_thread * threads, per_thread })
}

/// The shared pool and the threads' pools for a budget of `max` connections, as `split` shares
/// it out; `new_pool` makes a pool of the size it is given.
pub(super) fn build(
    max: usize,
    reserved: usize,
    threads: usize,
    new_pool: impl Fn(usize) -> anyhow::Result<Pool>,
) -> anyhow::Result<(Pool, ThreadPools)> {
    let shares = split(max, reserved, threads);
    let shared = new_pool(shares.map_or(max, |shares| shares.shared))?;
    let pools = match shares {
        Some(shares) => (0..threads).map(|_| new_pool(shares.per_thread)).collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    Ok((shared, ThreadPools { pools }))
}

/// Empty when the budget is not split.
pub(super) struct ThreadPools {
    pools: Vec<Pool>,
}

impl ThreadPools {
    /// The pool of the connection thread this runs on.
    pub fn current(&self) -> Option<&Pool> {
        crate::server::current_http_thread().and_then(|index| self.pools.get(index))
    }

    pub fn status(&self) -> impl Iterator<Item = Status> + '_ {
        self.pools.iter().map(Pool::status)
    }

    pub fn close(&self) {
        self.pools.iter().for_each(Pool::close);
    }
}

#[cfg(test)]
mod tests {
    use super::{Split, split};

    #[test]
    fn the_budget_left_after_the_reserve_goes_evenly_to_the_threads() {
        assert_eq!(split(10, 3, 2), Some(Split { shared: 4, per_thread: 3 }));
        assert_eq!(split(10, 3, 1), Some(Split { shared: 3, per_thread: 7 }));
        assert_eq!(split(5, 3, 2), Some(Split { shared: 3, per_thread: 1 }));
    }

    #[test]
    fn a_budget_too_small_for_a_connection_a_thread_stays_one_pool() {
        assert_eq!(split(4, 3, 2), None);
        assert_eq!(split(2, 3, 2), None);
        assert_eq!(split(10, 3, 0), None, "no connection threads (the store used outside the server)");
    }
}
