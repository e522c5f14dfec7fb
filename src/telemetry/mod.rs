//! Logs (tracing, one JSON or text line per event) and metrics (the `metrics` facade, rendered
//! by the private metrics listener).

mod json_lines;
mod logs;
mod metrics;

pub use logs::init_logging;
pub use metrics::{
    HttpMetrics, InFlightGuard, install_metrics_recorder, metrics_router, record_query, record_write_batch,
};
