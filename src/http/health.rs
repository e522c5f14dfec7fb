//! Liveness and readiness probes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;

use super::error::ApiError;
use super::{AppState, routes};

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route(routes::HEALTH, get(health)).route(routes::READY, get(ready))
}

/// Liveness: the process serves HTTP. No database call.
#[utoipa::path(get, path = "/health", tag = "probes", responses((status = 200, description = "Alive", body = super::openapi::Status)))]
pub(super) async fn health() -> impl IntoResponse {
    OK
}

/// The probes' one answer, as static bytes: built as a JSON value it cost ~2,000 instructions
/// on every probe.
const OK: ([(HeaderName, HeaderValue); 1], &str) =
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], r#"{"status":"ok"}"#);

/// Readiness: the instance is not draining and can serve reads: the database answers, or, with a
/// read replica, the replica is usable (a primary outage then leaves reads working and writes 503).
#[utoipa::path(get, path = "/ready", tag = "probes", responses(
    (status = 200, description = "Ready", body = super::openapi::Status),
    (status = 503, description = "Database (and read replica) unavailable, or draining", body = super::openapi::Problem, content_type = "application/problem+json"),
))]
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable { retry_after_secs: 5 });
    }
    state.store.ready().await?;
    Ok(OK)
}
