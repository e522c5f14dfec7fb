//! Liveness and readiness probes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// Liveness: the process serves HTTP. No database call.
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers, and the instance is not draining.
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable {
            retry_after_secs: 5,
        });
    }
    state.store.ping().await?;
    Ok(Json(json!({"status": "ok"})))
}
