//! Traces: OpenTelemetry over OTLP/HTTP (protobuf), configured by the standard `OTEL_*`
//! variables and off unless an endpoint is set. Off, the spans of `SPAN_TARGET` are disabled at
//! their call sites: no span is built, nothing allocated, no exporter exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, propagation::TextMapPropagator};
use opentelemetry_http::{Bytes, HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, Span as SdkSpan, SpanData, SpanExporter,
    SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span meant for export: the log filter turns exactly these on or off.
pub const SPAN_TARGET: &str = "users_api::span";

/// Spans ended but not yet handed to the exporter, unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
const DEFAULT_QUEUE_SPANS: usize = 2048;
/// Per export request, unless `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds) says otherwise.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const SERVICE_NAME: &str = "users-api";

/// True when the environment asks for traces: an OTLP endpoint (general or for traces) is set,
/// and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns them off.
pub fn traces_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) && !disabled && !no_exporter
}

/// The installed exporter. Keep it until exit: dropping it flushes the queued spans.
#[must_use = "dropping the tracer provider stops the export"]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Builds the exporter from the environment. Call it outside any async runtime: the
    /// blocking HTTP client it creates owns one of its own.
    pub fn from_env() -> anyhow::Result<Self> {
        let timeout = env_number("OTEL_EXPORTER_OTLP_TIMEOUT").map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis);
        let client =
            reqwest::blocking::Client::builder().timeout(timeout).build().context("building the OTLP HTTP client")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp(client))
            .with_timeout(timeout)
            .build()
            .context("configuring the OTLP trace exporter from OTEL_* variables")?;
        let queue_spans = env_number("OTEL_BSP_MAX_QUEUE_SIZE").map_or(DEFAULT_QUEUE_SPANS, |n| n as usize).max(1);
        let queued = Arc::new(AtomicUsize::new(0));
        // The processor's own queue is as large as the gate in front of it, so it never drops a
        // span itself; every drop happens (and is counted) in `CountedQueue`.
        let batches = BatchSpanProcessor::builder(Dequeued { inner: exporter, queued: queued.clone() })
            .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(queue_spans).build())
            .build();
        let resource = opentelemetry_sdk::Resource::builder().build();
        let named = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
        let resource = if named {
            resource
        } else {
            opentelemetry_sdk::Resource::builder().with_service_name(SERVICE_NAME).build()
        };
        // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default:
        // parent-based, always on), read by the SDK's default configuration.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountedQueue { inner: batches, queued, capacity: queue_spans })
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("users-api")
    }
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing traces at exit: {e}");
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Continues the caller's trace (a W3C `traceparent`) in `span`, before it is first entered.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// The trace id of `span`, when traces are on (sampled or not: the log line names it either way).
pub fn trace_id(span: &tracing::Span) -> Option<TraceId> {
    if span.is_disabled() {
        return None;
    }
    let context: Context = span.context();
    let trace_id = context.span().span_context().trace_id();
    (trace_id != TraceId::INVALID).then_some(trace_id)
}

/// Links `span` to the spans of the other requests it serves (a write batch has one parent).
pub fn link_to<'a>(span: &tracing::Span, others: impl Iterator<Item = &'a tracing::Span>) {
    if span.is_disabled() {
        return;
    }
    for other in others {
        span.add_link(other.context().span().span_context().clone());
    }
}

/// Gate in front of the batch processor: at most `capacity` spans wait for export; one more is
/// dropped and counted (`otel_spans_dropped_total`) rather than waited for. Ending a span never blocks.
#[derive(Debug)]
struct CountedQueue<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for CountedQueue<P> {
    fn on_start(&self, span: &mut SdkSpan, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted =
            self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1));
        if admitted.is_ok() {
            self.inner.on_end(span);
        } else {
            metrics::counter!("otel_spans_dropped_total").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, releasing the gate's places as batches leave the queue; failed exports are counted.
#[derive(Debug)]
struct Dequeued<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Dequeued<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            metrics::counter!("otel_spans_export_failed_total").increment(spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The service's reqwest as the exporter's client. Blocking: the batch processor exports from
/// its own thread, outside the async runtime.
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

/// Collectors answer OTLP with a small status message; more is not read.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for BlockingHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        use std::io::Read;
        let (parts, body) = request.into_parts();
        let response =
            self.0.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body.to_vec()).send()?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut bytes = Vec::new();
        response.take(MAX_RESPONSE_BYTES).read_to_end(&mut bytes)?;
        let mut reply = Response::builder().status(status).body(Bytes::from(bytes))?;
        *reply.headers_mut() = headers;
        Ok(reply)
    }
}
