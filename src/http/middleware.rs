//! The layer every request passes: request id, load shedding, timeout, problem+json for
//! framework errors, one log line, metrics and the request's span (when traces are on).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing::field::Empty;

use super::error::{ApiError, PROBLEM_JSON};
use super::request_id::{self, X_REQUEST_ID};
use crate::telemetry::{self, HttpMetrics, SPAN_TARGET};

pub struct Limits {
    pub in_flight: Semaphore,
    pub request_timeout: Duration,
    pub metrics: HttpMetrics,
}

pub async fn observe(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id::from_request(&request);
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Disabled at the call site when traces are off: the fields are then never evaluated.
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        http.route = route.as_str(),
        http.response.status_code = Empty,
        request_id = id.as_str(),
    );
    telemetry::continue_trace(&span, request.headers());

    let mut response = request_id::scope(id.clone(), async {
        // Back-pressure: beyond capacity answer at once rather than queue without bound.
        // Liveness is exempt: an overloaded but healthy task must not be replaced for it.
        let permit = limits.in_flight.try_acquire();
        if permit.is_err() && route != "/health" {
            return ApiError::Unavailable { retry_after_secs: 1 }.into_response();
        }
        let _in_flight = limits.metrics.in_flight();
        let response = match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout.into_response(),
        };
        as_problem(response)
    })
    .instrument(span.clone())
    .await;

    response.headers_mut().insert(&X_REQUEST_ID, request_id::header_value(&id));
    let status = response.status().as_u16();
    let latency = started.elapsed();
    limits.metrics.record(&method, &route, status, latency);
    span.record("http.response.status_code", i64::from(status)); // i64: the OTel layer keeps it a number
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    tracing::info!(
        target: "users_api::access",
        request_id = id.as_str(),
        method = method.as_str(),
        route = route.as_str(),
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        trace_id = telemetry::trace_id(&span).map(tracing::field::display),
        "request"
    );
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
