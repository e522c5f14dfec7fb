//! Logs (tracing) and metrics (the `metrics` facade; rendered by the metrics listener).

use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; logs go to stdout, one line per event.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!("invalid LOG_LEVEL {:?} ({e}); using info", config.log_level);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn record_request(method: &str, route: &str, status: u16, latency: Duration) {
    let labels = [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(latency.as_secs_f64());
}

pub fn record_write_batch(size: usize) {
    metrics::histogram!("db_write_batch_size").record(size as f64);
}

/// Counts a request in the in-flight gauge for as long as it lives.
pub struct InFlightGuard;

impl InFlightGuard {
    pub fn enter() -> Self {
        metrics::gauge!("http_requests_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        metrics::gauge!("http_requests_in_flight").decrement(1.0);
    }
}

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder once.
pub fn install_metrics_recorder() {
    PROMETHEUS.get_or_init(|| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        handle
    });
}

/// The router of the private metrics listener: GET /metrics in Prometheus text format.
pub fn metrics_router(state: std::sync::Arc<crate::http::AppState>) -> axum::Router {
    use axum::http::header;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                let pool = state.store.pool_status();
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
    metrics::histogram!("db_query_duration_seconds", "operation" => operation, "backend" => backend)
        .record(latency.as_secs_f64());
}
