//! Connection threads: each serves the connections given to it on a single-threaded runtime of
//! its own, so a request is read, handled and answered on one core. On the shared work-stealing
//! runtime, a POST's answer (woken by the SQLite writer) was often written by the other core,
//! which then fetched the connection's memory from the first: 5–24 % of POST's throughput
//! (bench/analysis.md, round 15). actix-web serves the same way.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the connection thread this runs on (`None` off them), for state kept one per
/// thread: the PostgreSQL read pools, whose connections are driven on the thread that opened them.
pub fn current() -> Option<usize> {
    CURRENT.get()
}

pub(super) struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

struct ConnectionThread {
    runtime: Handle,
    /// Connections this thread serves now.
    open: Arc<AtomicUsize>,
    /// Dropped (with the pool) to stop the runtime: its remaining tasks are dropped with it.
    _stop: oneshot::Sender<()>,
    _thread: JoinHandle<()>,
}

/// A connection's place on its thread, given back when the connection ends.
pub(super) struct Placement {
    open: Arc<AtomicUsize>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionThreads {
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let threads = (0..count.max(1)).map(ConnectionThread::start).collect::<anyhow::Result<_>>()?;
        Ok(Self { threads })
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// The thread serving the fewest connections: long-lived keep-alive connections (a proxy's
    /// pool) stay spread when others come and go.
    pub fn least_loaded(&self) -> (&Handle, Placement) {
        let thread = self.threads.iter().min_by_key(|t| t.open.load(Ordering::Relaxed)).expect("at least one thread");
        thread.open.fetch_add(1, Ordering::Relaxed);
        (&thread.runtime, Placement { open: thread.open.clone() })
    }
}

impl ConnectionThread {
    fn start(index: usize) -> anyhow::Result<Self> {
        // Blocking work of a request (a DNS lookup for a JWKS refresh) is rare here; the SQLite
        // full list's reads go to the main runtime's pool.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .build()
            .context("building a connection thread's runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                CURRENT.set(Some(index));
                let _ = runtime.block_on(stopped);
            })
            .context("spawning a connection thread")?;
        Ok(Self { runtime: handle, open: Arc::default(), _stop: stop, _thread: thread })
    }
}

/// One thread per core the process may use (a container's CPU quota included).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::ConnectionThreads;

    #[test]
    fn connections_go_to_the_thread_with_fewest_and_a_place_left_is_taken_again() {
        let threads = ConnectionThreads::start(2).expect("threads start");
        let (first, a) = threads.least_loaded();
        let (second, b) = threads.least_loaded();
        assert!(!std::ptr::eq(first, second), "the second connection went to the busier thread");
        drop(a);
        let (third, _c) = threads.least_loaded();
        assert!(std::ptr::eq(third, first), "the place given back was not the one taken");
        drop(b);
    }

    #[test]
    fn a_connection_thread_runs_what_it_is_given_on_its_own_thread() {
        let threads = ConnectionThreads::start(1).expect("threads start");
        let (runtime, _place) = threads.least_loaded();
        let name = runtime.block_on(runtime.spawn(async { std::thread::current().name().map(str::to_owned) }));
        assert_eq!(name.expect("task ran").as_deref(), Some("http-0"));
        let index = runtime.block_on(runtime.spawn(async { super::current() }));
        assert_eq!(index.expect("task ran"), Some(0));
        assert_eq!(super::current(), None, "the test's own thread is no connection thread");
    }
}
