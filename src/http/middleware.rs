//! The layer every request passes: request id, load shedding, timeout, problem+json for
//! framework errors and panics, one log line, metrics and the request's span (when traces are on).

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;

use super::AppState;
use super::error::{ApiError, PROBLEM_JSON};
use super::request_id::{self, RequestId, X_REQUEST_ID};
use super::routes::{self, RouteLabels};
use crate::telemetry::{self, HttpMetrics, SPAN_TARGET};

pub struct Limits {
    pub admission: Admission,
    pub request_timeout: Duration,
    pub metrics: HttpMetrics,
    pub routes: RouteLabels,
    /// For its draining flag: from then on, every HTTP/1.1 answer carries `Connection: close`.
    pub state: Arc<AppState>,
}

/// The in-flight cap (`MAX_IN_FLIGHT`). A count rather than a semaphore: nothing ever waits for
/// a place (beyond the cap the answer is 503 at once), and a semaphore's release takes its
/// waiters' lock every time. The count is also what the `http_requests_in_flight` gauge shows.
pub struct Admission {
    handling: AtomicUsize,
    max: usize,
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self { handling: AtomicUsize::new(0), max }
    }

    fn try_enter(&self) -> bool {
        self.handling.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    /// Counts a request the cap lets through anyway (liveness).
    fn enter_beyond_cap(&self) {
        self.handling.fetch_add(1, Ordering::Relaxed);
    }

    fn in_flight(&self) -> usize {
        self.handling.load(Ordering::Relaxed)
    }

    fn leave(&self) {
        self.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request's share of the limits: its place under the cap, if it took one, is given back
/// once its answer is ready, or when it is dropped unanswered (the client went away).
struct Place {
    limits: Arc<Limits>,
    counted: AtomicBool,
}

impl Place {
    fn release(&self) {
        if self.counted.swap(false, Ordering::Relaxed) {
            self.limits.admission.leave();
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.release();
    }
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

impl<S> Observe<S> {
    /// Reads the requests being handled now, for the in-flight gauge.
    pub fn requests_in_flight(&self) -> impl Fn() -> usize + Clone + Send + Sync + 'static {
        let limits = self.limits.clone();
        move || limits.admission.in_flight()
    }
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
        // Liveness is exempt: an overloaded but healthy task must not be replaced for it. It is
        // still counted in flight.
        let admitted = self.limits.admission.try_enter();
        let exempt = !admitted && route == routes::HEALTH;
        if exempt {
            self.limits.admission.enter_beyond_cap();
        }
        let counted = admitted || exempt;
        let place = Place { limits: self.limits.clone(), counted: AtomicBool::new(counted) };
        let http11 = request.version() == Version::HTTP_11;
        // The inner service is always ready (axum's router) and its future owns what it needs,
        // so it is called here: no clone of it per request. Boxed: the router's future (the
        // request inside) is copied at each wrapping below, ~800 instructions a request unboxed.
        let routed = counted.then(|| Box::pin(self.inner.call(request)));
        Box::pin(async move {
            // Futures are built here and awaited once: an async fn taking a future keeps it twice
            // and every layer of wrapping copies it again.
            let handled = async {
                let Some(routed) = routed else {
                    return ApiError::Unavailable { retry_after_secs: 1 }.into_response();
                };
                let mut handled = AssertUnwindSafe(routed).catch_unwind();
                // Polled once before a timer exists: most answers are ready at once, and a timer
                // takes the runtime's handle (a reference count both cores write) and its wheel.
                let outcome = match futures_util::poll!(&mut handled) {
                    Poll::Ready(outcome) => Ok(outcome),
                    Poll::Pending => {
                        let deadline = tokio::time::Instant::from_std(started + place.limits.request_timeout);
                        tokio::time::timeout_at(deadline, handled).await
                    }
                };
                let response = match outcome {
                    Ok(Ok(Ok(response))) => response,
                    Ok(Ok(Err(never))) => match never {},
                    Ok(Err(_panic)) => ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response(),
                    Err(_) => ApiError::Timeout.into_response(),
                };
                place.release();
                as_problem(response)
            };
            let scoped = request_id::scope(id.clone(), handled);
            let response = if span.is_disabled() { scoped.await } else { scoped.instrument(span.clone()).await };
            Ok(finish(&place.limits, Observed { started, id, method, http11, route, span }, response))
        })
    }
}

/// What is known of a request before its route runs.
struct Observed {
    started: Instant,
    id: RequestId,
    method: Method,
    http11: bool,
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

/// The request id on the answer (and the close while draining), then its metrics, span status
/// and access line.
fn finish(limits: &Limits, request: Observed, mut response: Response) -> Response {
    let Observed { started, id, method, http11, route, span } = request;
    response.headers_mut().insert(&X_REQUEST_ID, id.header_value());
    // Draining: tell the client not to reuse this connection. The client closes it after reading
    // this answer, so the close can never cross a request it is sending.
    if http11 && limits.state.draining.load(Ordering::Relaxed) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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
        latency_micros: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        trace_id: trace_id.as_ref().map(|t| t as &dyn std::fmt::Display),
    });
    response
}

/// Gives the framework's own client errors (the router's 404/405, an extractor's plain-text
/// 400 outside our handlers) the contract's problem+json shape, keeping `Allow`.
fn as_problem(response: Response) -> Response {
    // The status first: most answers are not client errors, and need no header lookup.
    if !response.status().is_client_error() {
        return response;
    }
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
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

#[cfg(test)]
mod tests {
    use super::Admission;

    #[test]
    fn admission_takes_up_to_the_cap_and_a_place_left_is_taken_again() {
        let admission = Admission::new(2);
        assert!(admission.try_enter());
        assert!(admission.try_enter());
        assert!(!admission.try_enter(), "a third place under a cap of 2");
        admission.leave();
        assert!(admission.try_enter(), "the place given back is free again");
        assert!(!admission.try_enter());
    }
}
