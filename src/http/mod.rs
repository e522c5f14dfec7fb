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
mod routes;
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

/// The whole application as one service: the router behind the observing middleware, which
/// wraps it whole (see `routes` for why not per route).
pub type App = middleware::Observe<Router>;

pub fn app(state: Arc<AppState>, guards: Guards) -> App {
    let limits = Arc::new(middleware::Limits {
        admission: middleware::Admission::new(guards.max_in_flight),
        request_timeout: guards.request_timeout,
        metrics: crate::telemetry::HttpMetrics::new(),
        routes: routes::RouteLabels::new(),
        state: state.clone(),
    });
    tower::Layer::layer(&middleware::ObserveLayer(limits), router(state, &guards))
}

fn router(state: Arc<AppState>, guards: &Guards) -> Router {
    let mut users = users::router();
    if let Some(authenticator) = &guards.authenticator {
        users = users.route_layer(axum::middleware::from_fn_with_state(authenticator.clone(), auth::require_scope));
    }
    // Outside authentication, so that guessing tokens is rate limited too.
    if let Some(limiter) = &guards.rate_limiter {
        users = users.route_layer(axum::middleware::from_fn_with_state(limiter.clone(), rate_limit::limit));
    }

    let docs = SwaggerUi::new(routes::DOCS).url(routes::OPENAPI, openapi::document(guards.authenticator.is_some()));

    Router::new()
        .merge(health::router())
        .merge(users)
        .with_state(state)
        .merge(docs)
        .fallback(|| async { ApiError::NotFound("no resource at this path") })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::{MatchedPath, Request};
    use axum::http::{HeaderValue, Method};
    use tower::ServiceExt;

    use super::*;

    /// The label found before routing is the template the router matches, for every route and
    /// for paths near them; `unmatched` exactly where the router falls back.
    #[tokio::test]
    async fn route_labels_are_the_routers_matched_paths() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("labels.db").display());
        let store = Store::connect(&url, &crate::store::StoreOptions::default()).await.unwrap();
        store.migrate().await.unwrap();
        let state = Arc::new(AppState {
            store,
            draining: AtomicBool::new(false),
            list_streams: ListStreams::new(1, Duration::from_secs(1)),
        });
        let guards = Guards {
            max_in_flight: 8,
            request_timeout: Duration::from_secs(5),
            authenticator: None,
            rate_limiter: None,
        };
        let router = router(state, &guards).layer(axum::middleware::from_fn(
            |request: Request, next: axum::middleware::Next| async move {
                let matched = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
                let mut response = next.run(request).await;
                if let Some(matched) = matched {
                    response.headers_mut().insert("x-matched", HeaderValue::from_str(&matched).unwrap());
                }
                response
            },
        ));
        let labels = routes::RouteLabels::new();
        let paths = [
            "/health",
            "/ready",
            "/users",
            "/user",
            "/users/1",
            "/users/abc",
            "/users/",
            "/users/1/",
            "/users/1/x",
            "/user/1",
            "/openapi.json",
            "/docs",
            "/docs/",
            "/docs/index.html",
            "/docs/a/b",
            "/",
            "/nope",
            "/HEALTH",
            "/health/",
            "//health",
            "/users%2F1",
        ];
        for path in paths {
            for method in [Method::GET, Method::POST, Method::DELETE] {
                let request = Request::builder().method(method.clone()).uri(path).body(Body::empty()).unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let matched = response.headers().get("x-matched").map(|v| v.to_str().unwrap().to_owned());
                let expected = matched.as_deref().unwrap_or(routes::UNMATCHED);
                assert_eq!(labels.label(path), expected, "{method} {path}");
            }
        }
    }
}
