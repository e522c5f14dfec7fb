//! The accept loop: admits connections up to a cap (closing the longest-idle one to make
//! room), and drives the drain: stop accepting, let every connection finish, bounded by grace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::connection::{self, Activity, Timeouts};
use super::threads::ConnectionThreads;
use crate::http::error::ApiError;
use crate::http::{App, AppState};

pub(super) struct Settings {
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// After the signal, how long to keep accepting while /ready fails.
    pub shutdown_delay: Duration,
    /// After accepting stops, how long open connections have to finish.
    pub grace: Duration,
}

/// Connections turned away at the cap are answered and read from briefly before closing (so
/// the answer is not destroyed by a reset); this many at once, beyond it they are just closed.
const MAX_LINGERING_REFUSALS: usize = 256;
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

struct Registry {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    cap: usize,
}

impl Registry {
    /// Registers a new connection, closing the most evictable one if the cap is reached;
    /// `None` when every open connection is serving a request.
    fn admit(&self, id: u64, peer: SocketAddr) -> Option<Arc<Activity>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.cap {
            let victim = open.values().filter_map(|a| a.eviction_rank().map(|rank| (rank, a))).min_by_key(|(r, _)| *r);
            victim?.1.evict();
        }
        let activity = Activity::new(peer);
        open.insert(id, activity.clone());
        metrics::gauge!("http_connections_open").set(open.len() as f64);
        Some(activity)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
        metrics::gauge!("http_connections_open").set(open.len() as f64);
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    threads: &ConnectionThreads,
    app: App,
    state: Arc<AppState>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry { open: Mutex::new(HashMap::new()), cap: settings.max_connections });
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut accept = |stream: TcpStream, remote: SocketAddr, tasks: &mut JoinSet<()>| {
        next_id += 1;
        let id = next_id;
        let _ = stream.set_nodelay(true);
        let Some(activity) = registry.admit(id, remote) else {
            refuse(stream, &lingering);
            return;
        };
        // The socket leaves this runtime's reactor for its connection thread's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a connection thread");
                registry.remove(id);
                return;
            }
        };
        let (runtime, placement) = threads.least_loaded();
        let (app, registry) = (app.clone(), registry.clone());
        let timeouts = settings.timeouts;
        let serve = async move {
            let _placement = placement;
            let end = match TcpStream::from_std(stream) {
                Ok(stream) => connection::serve(stream, app, activity, timeouts).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a connection thread cannot take a connection");
                    connection::End::Finished
                }
            };
            registry.remove(id);
            metrics::counter!("http_connections_closed_total", "reason" => end.label()).increment(1);
        };
        tasks.spawn_on(serve, runtime);
    };

    accept_until(&listener, &mut tasks, &mut accept, shutdown).await;

    // Drain: /ready fails and every answer carries `Connection: close` from here on.
    state.draining.store(true, Ordering::Relaxed);
    tracing::info!(
        open_connections = tasks.len(),
        delay_secs = settings.shutdown_delay.as_secs(),
        "shutdown requested; draining"
    );
    accept_until(&listener, &mut tasks, &mut accept, tokio::time::sleep(settings.shutdown_delay)).await;
    // Connections the kernel has completed but we have not accepted would be reset by the
    // close, after their client may have sent a request: take them all first. (One completed
    // between this last accept and the close is still reset: microseconds; behind a balancer
    // that deregistered the task first, nothing arrives then.)
    match listener.into_std() {
        Ok(listener) => {
            while let Ok((stream, remote)) = listener.accept() {
                match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
                    Ok(stream) => accept(stream, remote, &mut tasks),
                    Err(e) => tracing::warn!(error = %e, "cannot serve a connection accepted while draining"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot sweep the accept queue"),
    }

    // Idle keep-alive connections are not closed here: a client may be sending a request on
    // one at this very moment. Each closes when its client closes it (after an answer with
    // `Connection: close`, or by itself), or when the grace period ends.
    let mut grace = std::pin::pin!(tokio::time::sleep(settings.grace));
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = &mut grace => {
                tracing::warn!(
                    grace_secs = settings.grace.as_secs(),
                    open_connections = tasks.len(),
                    "grace period over; closing the connections still open"
                );
                break;
            }
        }
    }
    tasks.abort_all();
}

/// Accepts (and reaps finished connections) until `until` resolves.
async fn accept_until(
    listener: &TcpListener,
    tasks: &mut JoinSet<()>,
    accept: &mut impl FnMut(TcpStream, SocketAddr, &mut JoinSet<()>),
    until: impl Future<Output = ()>,
) {
    let mut until = std::pin::pin!(until);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => accept(stream, remote, tasks),
                Err(e) => accept_failed(e).await,
            },
            Some(_) = tasks.join_next() => {}
            () = &mut until => return,
        }
    }
}

/// Out of descriptors (or another transient accept error): pause instead of spinning.
async fn accept_failed(error: std::io::Error) {
    metrics::counter!("http_accept_errors_total").increment(1);
    tracing::warn!(error = %error, "accept failed; pausing 50 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// At the cap with every connection busy: a 503 problem+json, then a short lingering close.
fn refuse(stream: TcpStream, lingering: &Arc<Semaphore>) {
    metrics::counter!("http_connections_refused_total").increment(1);
    let (answer, _) = super::refusals::problem_response(&ApiError::Unavailable { retry_after_secs: 1 });
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        let _ = stream.try_write(&answer);
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}
