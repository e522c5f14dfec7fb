//! Logs (tracing, one JSON or text line per event), metrics (the `metrics` facade, rendered
//! by the private metrics listener) and traces (OpenTelemetry over OTLP/HTTP, off by default).

mod json_lines;
mod logs;
mod metrics;
mod traces;

pub use json_lines::AccessEntry;
pub use logs::{ACCESS_TARGET, LineFormat, LogGuard, LogSettings, init_logging, log_access};
pub use metrics::{
    HttpMetrics, PoolStatus, Sampled, install_metrics_recorder, metrics_router, record_query, record_write_batch,
};
pub use traces::{SPAN_TARGET, TraceExport, continue_trace, link_to, trace_id, traces_requested};
