//! The layer every request passes: request id, load shedding, timeout, problem+json for
//! framework errors and panics, one log line, metrics and the request's span (when traces are on).

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;

use super::error::{ApiError, PROBLEM_JSON};
use super::request_id::{self, RequestId, X_REQUEST_ID};
use super::routes::{self, RouteLabels};
use crate::telemetry::{self, HttpMetrics, SPAN_TARGET};

pub struct Limits {
    pub in_flight: Arc<Semaphore>,
    pub request_timeout: Duration,
    pub metrics: HttpMetrics,
    pub routes: RouteLabels,
}

/// Wraps the router in `Observe`. A tower layer of our own rather than axum's `from_fn` and
/// tower-http's `CatchPanic`: each of those boxes the service again and clones it per request.
#[derive(Clone)]
pub struct ObserveLayer(pub Arc<Limits>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, limits: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let id = RequestId::from_request(&request);
        let method = request.method().clone();
        let route = self.limits.routes.label(request.uri().path());
        let span = request_span(&method, route, &id);
        telemetry::continue_trace(&span, request.headers());
        // Back-pressure: beyond capacity answer at once rather than queue without bound.
        // Liveness is exempt: an overloaded but healthy task must not be replaced for it.
        let permit = self.limits.in_flight.clone().try_acquire_owned().ok();
        let is_liveness = route == routes::HEALTH;
        // The route was polled ready (axum's always are) and its future owns what it needs, so it
        // is called here: no clone of the route per request.
        let routed = (permit.is_some() || is_liveness).then(|| self.inner.call(request));
        let limits = self.limits.clone();
        Box::pin(async move {
            // Futures are built here and awaited once: an async fn taking a future keeps it twice
            // and every layer of wrapping copies it again.
            let handled = async {
                let Some(routed) = routed else {
                    return ApiError::Unavailable { retry_after_secs: 1 }.into_response();
                };
                let _in_flight = limits.metrics.in_flight();
                let handled = AssertUnwindSafe(routed).catch_unwind();
                let response = match tokio::time::timeout(limits.request_timeout, handled).await {
                    Ok(Ok(Ok(response))) => response,
                    Ok(Ok(Err(never))) => match never {},
                    Ok(Err(_panic)) => ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response(),
                    Err(_) => ApiError::Timeout.into_response(),
                };
                drop(permit);
                as_problem(response)
            };
            let scoped = request_id::scope(id.clone(), handled);
            let response = if span.is_disabled() { scoped.await } else { scoped.instrument(span.clone()).await };
            Ok(finish(&limits, Observed { started, id, method, route, span }, response))
        })
    }
}

/// What is known of a request before its route runs.
struct Observed {
    started: Instant,
    id: RequestId,
    method: Method,
    route: &'static str,
    span: tracing::Span,
}

/// Disabled at the call site when traces are off: the fields are then never evaluated.
fn request_span(method: &Method, route: &str, id: &RequestId) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        http.route = route,
        http.response.status_code = Empty,
        request_id = id.as_str(),
    )
}

/// The request id on the answer, then its metrics, span status and access line.
fn finish(limits: &Limits, request: Observed, mut response: Response) -> Response {
    let Observed { started, id, method, route, span } = request;
    response.headers_mut().insert(&X_REQUEST_ID, id.header_value());
    let status = response.status().as_u16();
    let latency = started.elapsed();
    limits.metrics.record(&method, route, status, latency);
    span.record("http.response.status_code", i64::from(status)); // i64: the OTel layer keeps it a number
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let trace_id = telemetry::trace_id(&span);
    telemetry::log_access(&telemetry::AccessEntry {
        request_id: id.as_str(),
        method: method.as_str(),
        route,
        status,
        latency_ms: latency.as_secs_f64() * 1000.0,
        trace_id: trace_id.as_ref().map(|t| t as &dyn std::fmt::Display),
    });
    response
}

/// Gives the framework's own client errors (the router's 404/405, an extractor's plain-text
/// 400 outside our handlers) the contract's problem+json shape, keeping `Allow`.
fn as_problem(response: Response) -> Response {
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem || !response.status().is_client_error() {
        return response;
    }
    let replacement = match response.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound("no resource at this path"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit: super::extract::MAX_BODY_BYTES },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        _ => ApiError::BadRequest,
    };
    let (parts, _) = response.into_parts();
    let mut problem = replacement.into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}
