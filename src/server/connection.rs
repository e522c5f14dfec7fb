//! One client connection: what it is doing (fresh, idle, sending a head, busy), the timeouts
//! that follow from that, and the service wrapper that keeps it up to date.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;

use super::refusals::ConnectionIo;
use crate::http::App;

#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// From accept (first request) or from a head's first byte to the end of the head.
    pub header: Duration,
    /// An idle keep-alive connection, from the end of its last response.
    pub keepalive: Duration,
}

const FRESH: u8 = 0;
const IDLE: u8 = 1;
const HEAD: u8 = 2;

/// Shared between the connection's task and the accept loop (which closes the longest-idle
/// connection when the cap is reached).
pub(super) struct Activity {
    /// FRESH, IDLE or HEAD; only meaningful while no request is in flight.
    phase: AtomicU8,
    /// When `phase` began, in milliseconds since `epoch()`.
    since_ms: AtomicU64,
    /// Requests dispatched whose response (or refused body's drain) is not finished.
    busy: AtomicUsize,
    closing: AtomicBool,
    close: Notify,
    /// The client's address, as the socket reports it.
    peer: SocketAddr,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Client or server closed it in the ordinary way (or it failed).
    Finished,
    HeaderTimeout,
    KeepaliveTimeout,
    /// Closed to make room for a newcomer at the connection cap.
    Evicted,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::HeaderTimeout => "header_timeout",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::Evicted => "evicted",
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Activity {
    pub fn new(peer: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(FRESH),
            since_ms: AtomicU64::new(now_ms()),
            busy: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            peer,
        })
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Bytes arrived: between requests, that starts a new head and its timeout.
    pub fn on_read(&self) {
        if !self.is_busy() && self.phase.load(Ordering::Relaxed) != HEAD {
            self.enter(HEAD);
        }
    }

    /// How readily the accept loop may close this connection to make room: idle ones first
    /// (longest idle first), then ones stuck in a head; never one serving a request.
    pub fn eviction_rank(&self) -> Option<(u8, u64)> {
        if self.is_busy() || self.closing.load(Ordering::Relaxed) {
            return None;
        }
        let rank = u8::from(self.phase.load(Ordering::Relaxed) == HEAD);
        Some((rank, self.since_ms.load(Ordering::Relaxed)))
    }

    pub fn evict(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }

    /// When this connection times out if nothing changes, and as what; `None` while busy.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, End)> {
        if self.is_busy() {
            return None;
        }
        let since = epoch() + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some(match self.phase.load(Ordering::Relaxed) {
            IDLE => (since + timeouts.keepalive, End::KeepaliveTimeout),
            _ => (since + timeouts.header, End::HeaderTimeout),
        })
    }
}

tokio::task_local! {
    /// The connection served by the running task: hyper runs each request's handler inside its
    /// connection's task. A task-local rather than a request extension: axum already puts three
    /// in the map, and a fourth made it grow (a second allocation and a rehash) on every request.
    static CONNECTION: Arc<Activity>;
}

/// The client's address on the current connection; `None` outside a connection's task.
pub fn peer() -> Option<SocketAddr> {
    CONNECTION.try_with(|activity| activity.peer).ok()
}

/// Keeps its connection busy while it lives: one per request (held by the response body)
/// and one per refused body still being drained.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }

    /// Keeps the current connection busy; `None` outside a connection's task.
    pub fn current() -> Option<Self> {
        CONNECTION.try_with(|activity| Self::new(activity.clone())).ok()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.enter(IDLE);
        }
    }
}

/// Serves one HTTP/1.1 connection until it ends, times out or is evicted.
pub(super) async fn serve(stream: TcpStream, app: App, activity: Arc<Activity>, timeouts: Timeouts) -> End {
    let service_activity = activity.clone();
    // The connection's own copy of the application, called in place: cloning it per request
    // (two reference counts, shared by every connection) cost more than the call.
    let app = RefCell::new(app);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::new(service_activity.clone());
        // No `poll_ready` first: the application is always ready (axum's router and `Observe`).
        let routed = app.borrow_mut().call(request.map(Body::new));
        async move {
            let response = routed.await.unwrap_or_else(|never: Infallible| match never {});
            // The guard rides in a wrapper that keeps the body's size hint (`map_frame` hides it),
            // so hyper sends a body of known size with its length, never chunked.
            Ok::<_, Infallible>(response.map(move |body| {
                body.map_err(move |error| {
                    let _busy_until_the_body_ends = &in_flight;
                    error
                })
            }))
        }
    });

    let io = TokioIo::new(ConnectionIo::new(stream, activity.clone()));
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let connection = CONNECTION.scope(activity.clone(), connection);
    let mut connection = std::pin::pin!(connection);
    let mut timer = std::pin::pin!(tokio::time::sleep(timeouts.header));
    let mut evicted = std::pin::pin!(activity.close.notified());
    std::future::poll_fn(|cx| {
        if connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Finished);
        }
        if evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Evicted);
        }
        // Every change of activity happens inside the connection's poll above, so the deadline
        // read here is current; while busy, the connection's own progress wakes this task.
        if let Some((deadline, end)) = activity.deadline(timeouts) {
            // The timer may ring before the deadline, never after it. A deadline that moved
            // later (every request moves it) is left for the ring to pick up, so a busy
            // connection re-registers its timer once a timeout period, not once a request.
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            while timer.as_mut().poll(cx).is_ready() {
                if timer.deadline() >= deadline {
                    return Poll::Ready(end);
                }
                timer.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await
}
