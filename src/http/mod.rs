//! HTTP layer: routes per resource, merged here, behind one observing middleware.

mod auth;
pub mod error;
pub mod extract;
mod health;
mod idempotency;
mod list_stream;
mod middleware;
mod openapi;
mod rate_limit;
pub mod request_id;
mod user_json;
mod users;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use utoipa_swagger_ui::SwaggerUi;

pub use list_stream::ListStreams;
pub use openapi::document as openapi_document;
pub use rate_limit::RateLimiter;
pub use users::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

use crate::auth::Authenticator;
use crate::store::Store;
use error::ApiError;

pub struct AppState {
    pub store: Store,
    /// Set when shutdown begins: /ready turns 503 so load balancers stop routing here.
    pub draining: AtomicBool,
    /// Cap and stall bound of full-list downloads, apart from `MAX_IN_FLIGHT`.
    pub list_streams: ListStreams,
}

/// What stands between a client and the users routes.
pub struct Guards {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// `None`: no authentication.
    pub authenticator: Option<Arc<Authenticator>>,
    /// `None`: no per-client rate limit.
    pub rate_limiter: Option<Arc<RateLimiter>>,
}

pub fn app(state: Arc<AppState>, guards: Guards) -> Router {
    let limits = Arc::new(middleware::Limits {
        in_flight: Arc::new(tokio::sync::Semaphore::new(guards.max_in_flight)),
        request_timeout: guards.request_timeout,
        metrics: crate::telemetry::HttpMetrics::new(),
    });

    let mut users = users::router();
    if let Some(authenticator) = &guards.authenticator {
        users = users.route_layer(axum::middleware::from_fn_with_state(authenticator.clone(), auth::require_scope));
    }
    // Outside authentication, so that guessing tokens is rate limited too.
    if let Some(limiter) = &guards.rate_limiter {
        users = users.route_layer(axum::middleware::from_fn_with_state(limiter.clone(), rate_limit::limit));
    }

    let docs = SwaggerUi::new("/docs").url("/openapi.json", openapi::document(guards.authenticator.is_some()));

    Router::new()
        .merge(health::router())
        .merge(users)
        .with_state(state)
        .merge(docs)
        .fallback(|| async { ApiError::NotFound("no resource at this path") })
        .layer(middleware::ObserveLayer(limits))
}
