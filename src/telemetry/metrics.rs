use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::http::Method;
use metrics::{Counter, Histogram};

/// Request metrics, with the handles of each (route, method, status) cached: looking a labelled
/// metric up in the recorder hashes and compares its labels, ~6,000 instructions a request.
/// Requests in flight are not counted here: the in-flight cap already counts them, and the
/// gauge is read from it at each scrape (`Sampled`).
pub struct HttpMetrics {
    /// A few dozen entries at most (the router's routes, or "unmatched", times the statuses
    /// they answer), where comparing the status first beats hashing the route.
    handles: HandleCache<RequestHandles, CACHED_HANDLES>,
}

/// Metric handles found by their labels without a lock: scanned in order (a read lock writes
/// its reader count, a cache line every request on every core would share), filled in order
/// under `adding`. Beyond `N` entries, the rest are looked up in the recorder every time.
struct HandleCache<T, const N: usize> {
    slots: [OnceLock<T>; N],
    adding: Mutex<()>,
}

impl<T, const N: usize> HandleCache<T, N> {
    const fn new() -> Self {
        Self { slots: [const { OnceLock::new() }; N], adding: Mutex::new(()) }
    }

    /// Hands `record` the cached entry that `is_it` picks, or a new one from `make`.
    fn record(&self, is_it: impl Fn(&T) -> bool, make: impl FnOnce() -> T, record: impl FnOnce(&T)) {
        let cached = || self.slots.iter().map_while(OnceLock::get).find(|entry| is_it(entry));
        if let Some(found) = cached() {
            return record(found);
        }
        let _adding = self.adding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = cached() {
            return record(found);
        }
        let added = make();
        record(&added);
        if let Some(free) = self.slots.iter().find(|slot| slot.get().is_none()) {
            let _ = free.set(added);
        }
    }
}

/// Beyond this many (route, method, status) combinations, the rest are looked up every time.
const CACHED_HANDLES: usize = 64;

struct RequestHandles {
    status: u16,
    method: &'static str,
    route: &'static str,
    count: Counter,
    duration: Histogram,
}

impl RequestHandles {
    fn new(method: &'static str, route: &'static str, status: u16) -> Self {
        let labels = [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
        Self {
            status,
            method,
            route,
            count: metrics::counter!("http_requests_total", &labels),
            duration: metrics::histogram!("http_request_duration_seconds", &labels),
        }
    }

    fn is(&self, status: u16, method: &str, route: &str) -> bool {
        self.status == status && self.method == method && self.route == route
    }

    fn record(&self, seconds: f64) {
        self.count.increment(1);
        self.duration.record(seconds);
    }
}

impl HttpMetrics {
    /// Registers with the recorder installed now (none: every handle is a no-op).
    pub fn new() -> Self {
        Self { handles: HandleCache::new() }
    }

    pub fn record(&self, method: &Method, route: &'static str, status: u16, latency: Duration) {
        let method = static_method(method);
        let seconds = latency.as_secs_f64();
        self.handles.record(
            |h| h.is(status, method, route),
            || RequestHandles::new(method, route, status),
            |h| h.record(seconds),
        );
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The method as a `'static` label value; methods outside the standard set share one.
fn static_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// One write batch: how many inserts it carried and how long it took (connection, statement, commit).
pub fn record_write_batch(size: usize, duration: Duration) {
    metrics::histogram!("db_write_batch_size").record(size as f64);
    metrics::histogram!("db_write_batch_duration_seconds").record(duration.as_secs_f64());
}

/// Up to the largest batch of either store (SQLite 512 inserts, PostgreSQL 256).
const BATCH_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder once.
pub fn install_metrics_recorder() {
    PROMETHEUS.get_or_init(|| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static buckets are valid")
            // A count, not seconds: under the seconds' buckets every batch above 10 fell in +Inf.
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("db_write_batch_size".into()),
                &BATCH_SIZE_BUCKETS,
            )
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        // Histogram samples wait in memory until upkeep folds them into buckets: every second
        // keeps that to one second of traffic (every 5 s, a /health flood held 11 MB).
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        handle
    });
}

/// Connections of the database pool, as the gauges show them.
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    pub in_use: usize,
    pub idle: usize,
    pub max: usize,
}

/// What the gauges show, read from the service at each scrape rather than kept up to date on
/// every request.
#[derive(Debug, Clone, Copy)]
pub struct Sampled {
    pub pool: PoolStatus,
    pub requests_in_flight: usize,
}

/// The router of the private metrics listener: GET /metrics in Prometheus text format, with the
/// gauges read from `sample` at each scrape.
pub fn metrics_router(sample: impl Fn() -> Sampled + Clone + Send + Sync + 'static) -> axum::Router {
    use axum::http::header;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let sample = sample.clone();
            async move {
                let Sampled { pool, requests_in_flight } = sample();
                metrics::gauge!("http_requests_in_flight").set(requests_in_flight as f64);
                metrics::gauge!("db_pool_connections", "state" => "in_use").set(pool.in_use as f64);
                metrics::gauge!("db_pool_connections", "state" => "idle").set(pool.idle as f64);
                metrics::gauge!("db_pool_max_connections").set(pool.max as f64);
                let body = PROMETHEUS.get().map(|h| h.render()).unwrap_or_default();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        }),
    )
}

pub fn record_query(operation: &'static str, backend: &'static str, latency: Duration) {
    // Cached as in `HttpMetrics`: a labelled lookup in the recorder costs thousands of
    // instructions. Created at first use, after the recorder is installed.
    static HANDLES: HandleCache<(&str, &str, Histogram), 32> = HandleCache::new();
    HANDLES.record(
        |(cached_operation, cached_backend, _)| *cached_operation == operation && *cached_backend == backend,
        || {
            let histogram =
                metrics::histogram!("db_query_duration_seconds", "operation" => operation, "backend" => backend);
            (operation, backend, histogram)
        },
        |(_, _, histogram)| histogram.record(latency.as_secs_f64()),
    );
}
