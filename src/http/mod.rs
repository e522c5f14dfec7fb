//! HTTP layer: routes per resource, merged here, behind one observing middleware.

pub mod error;
pub mod extract;
mod health;
mod middleware;
pub mod request_id;
mod users;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;

pub use users::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

use crate::store::Store;
use error::ApiError;

pub struct AppState {
    pub store: Store,
    /// Set when shutdown begins: /ready turns 503 so load balancers stop routing here.
    pub draining: AtomicBool,
}

pub struct HttpLimits {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

pub fn app(state: Arc<AppState>, limits: &HttpLimits) -> Router {
    let limits = Arc::new(middleware::Limits {
        in_flight: tokio::sync::Semaphore::new(limits.max_in_flight),
        request_timeout: limits.request_timeout,
    });
    Router::new()
        .merge(health::router())
        .merge(users::router())
        .fallback(|| async { ApiError::NotFound("no resource at this path") })
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            middleware::observe,
        ))
}
