//! Traces over OTLP/HTTP: the real binary exports to a receiver started here, which decodes the
//! protobuf the way a collector does; and with no endpoint configured nothing is exported.

mod kit;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use kit::http::{client, user_body};
use kit::process::Server;
use kit::sqlite::TempSqlite;
use kit::{free_port, random_tag};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// How long the exporter may take to deliver (it batches every 100 ms here).
const DELIVERY: Duration = Duration::from_secs(15);

/// A span as received, with the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
    /// Hold every export this long before answering (a collector that has stalled).
    stall: Option<Duration>,
}

impl Receiver {
    /// Serves `POST /v1/traces` on `addr` (port 0: any free port) and returns where it listens.
    async fn start(self, addr: &str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("the test's OTLP receiver cannot bind {addr}: {e}"));
        let local = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(self);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        local
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what has arrived, or panics after DELIVERY.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + DELIVERY;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "no {what} within {DELIVERY:?}; received: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(receiver): State<Receiver>, body: Bytes) -> Vec<u8> {
    *receiver.requests.lock().unwrap() += 1;
    if let Some(stall) = receiver.stall {
        tokio::time::sleep(stall).await;
    }
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP/HTTP protobuf trace export");
    let mut spans = receiver.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let attributes = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
        let service = string_attribute(&attributes, "service.name").unwrap_or_default();
        for scope in resource_spans.scope_spans {
            spans.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
        }
    }
    Vec::new() // an empty ExportTraceServiceResponse: everything accepted
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attributes.iter().find(|kv| kv.key == key)?.value.as_ref()? {
        AnyValue { value: Some(any_value::Value::IntValue(n)) } => Some(*n),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Span> {
    spans.iter().map(|r| &r.span).filter(|s| s.name == name).collect()
}

/// The access log line of the request with `request_id`. Access lines are handed to the log
/// writer in batches (every 50 ms), so the line may come a moment after the answer.
fn access_line(server: &Server, request_id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found = server
            .logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["target"] == "users_api::access" && line["request_id"] == request_id);
        match found {
            Some(line) => return line,
            None if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(20)),
            None => panic!("no access log line for {request_id}; log:\n{}", server.logs()),
        }
    }
}

fn exporter_threads(server: &Server) -> usize {
    server.threads("OpenTelemetry").len()
}

fn traced_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_SERVICE_NAME", "users-api-under-test".to_owned()),
        // Parent-based at ratio 0: a request is exported exactly when its caller sampled it.
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", "0".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("LOG_LEVEL", "warn,users_api::server=info,users_api::access=info".to_owned()),
    ]
}

fn start(database_url: &str, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(database_url, &env)
}

#[tokio::test]
async fn a_sampled_post_on_sqlite_is_exported_with_the_callers_trace_its_request_id_and_child_spans() {
    let sqlite = TempSqlite::new();
    sampled_post_and_read_are_exported(&sqlite.url, "sqlite").await;
}

#[tokio::test]
async fn a_sampled_post_on_postgres_is_exported_with_the_callers_trace_its_request_id_and_child_spans() {
    let schema = kit::pg::PgSchema::create().await;
    sampled_post_and_read_are_exported(&schema.database_url(), "postgresql").await;
    schema.cleanup().await;
}

async fn sampled_post_and_read_are_exported(database_url: &str, system: &str) {
    let receiver = Receiver::default();
    let otlp = receiver.clone().start("127.0.0.1:0").await;
    let server = start(database_url, &traced_env(&format!("http://{otlp}")));
    assert_eq!(exporter_threads(&server), 1, "one batch export thread when an endpoint is set");

    let trace_id = format!("4bf92f3577b34da6a3ce{}", &random_tag());
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let request_id = format!("trace-test-{}", random_tag());
    let http = client();
    let created = http
        .post(server.url("/user"))
        .header("traceparent", &traceparent)
        .header("x-request-id", &request_id)
        .json(&user_body("Ada Lovelace", &format!("ada.{}@example.com", random_tag())))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let read_id = format!("trace-read-{}", random_tag());
    let read = http
        .get(server.url(&location))
        .header("traceparent", &traceparent)
        .header("x-request-id", &read_id)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    let in_trace = |spans: &[Received]| -> Vec<Received> {
        spans.iter().filter(|r| hex(&r.span.trace_id) == trace_id).cloned().collect()
    };
    let spans = receiver
        .wait_for("request, write and read spans of the caller's trace", |spans| {
            let ours = in_trace(spans);
            ["POST /user", "GET /users/{id}", "write wait", "write batch", "INSERT users", "pool wait", "SELECT users"]
                .iter()
                .all(|name| !named(&ours, name).is_empty())
        })
        .await;
    let ours = in_trace(&spans);
    assert!(ours.iter().all(|r| r.service == "users-api-under-test"), "service.name from OTEL_SERVICE_NAME: {ours:#?}");

    let post = named(&ours, "POST /user")[0];
    assert_eq!(hex(&post.parent_span_id), caller_span, "the caller's span is the parent");
    assert_eq!(post.kind, SpanKind::Server as i32);
    assert_eq!(string_attribute(&post.attributes, "request_id").as_deref(), Some(request_id.as_str()));
    assert_eq!(string_attribute(&post.attributes, "http.route").as_deref(), Some("/user"));
    assert_eq!(string_attribute(&post.attributes, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(int_attribute(&post.attributes, "http.response.status_code"), Some(201));

    // request -> write wait -> write batch -> INSERT statement
    let wait = named(&ours, "write wait")[0];
    assert_eq!(wait.parent_span_id, post.span_id);
    let batch = named(&ours, "write batch")[0];
    assert_eq!(batch.parent_span_id, wait.span_id);
    assert_eq!(int_attribute(&batch.attributes, "db.operation.batch.size"), Some(1));
    let insert = named(&ours, "INSERT users")[0];
    assert_eq!(insert.parent_span_id, batch.span_id);
    assert_eq!(string_attribute(&insert.attributes, "db.system.name").as_deref(), Some(system));

    // request -> pool wait, request -> SELECT statement
    let get = named(&ours, "GET /users/{id}")[0];
    assert_eq!(string_attribute(&get.attributes, "request_id").as_deref(), Some(read_id.as_str()));
    assert!(named(&ours, "pool wait").iter().any(|wait| wait.parent_span_id == get.span_id));
    let select = named(&ours, "SELECT users")[0];
    assert_eq!(select.parent_span_id, get.span_id);
    assert_eq!(string_attribute(&select.attributes, "db.system.name").as_deref(), Some(system));

    let line = access_line(&server, &request_id);
    assert_eq!(line["trace_id"], trace_id.as_str(), "the log line names the trace: {line}");
}

#[tokio::test]
async fn an_unsampled_request_is_not_exported_but_its_log_line_has_a_trace_id() {
    let receiver = Receiver::default();
    let otlp = receiver.clone().start("127.0.0.1:0").await;
    let sqlite = TempSqlite::new();
    let server = start(&sqlite.url, &traced_env(&format!("http://{otlp}")));

    // No traceparent: a root, sampled at ratio 0, so never exported.
    let request_id = format!("unsampled-{}", random_tag());
    let http = client();
    let response = http.get(server.url("/health")).header("x-request-id", &request_id).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // A sampled request after it: once its spans arrive, the earlier one would have too.
    let marker = format!("00-{}{}-00f067aa0ba902b7-01", "0af7651916cd43dd8448", random_tag());
    let response = http.get(server.url("/health")).header("traceparent", &marker).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let spans = receiver.wait_for("the sampled marker request", |spans| !spans.is_empty()).await;

    assert!(
        spans.iter().all(|r| string_attribute(&r.span.attributes, "request_id").as_deref() != Some(&request_id)),
        "an unsampled request was exported: {spans:#?}"
    );
    let line = access_line(&server, &request_id);
    let trace_id = line["trace_id"].as_str().unwrap_or_else(|| panic!("no trace id in {line}"));
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()) && trace_id != "0".repeat(32));
}

#[tokio::test]
async fn with_no_endpoint_configured_nothing_is_exported_and_no_exporter_runs() {
    // Were an exporter built anyway, it would send to the OTLP default, localhost:4318.
    let receiver = Receiver::default();
    receiver.clone().start("127.0.0.1:4318").await;
    let sqlite = TempSqlite::new();
    let mut env = traced_env("");
    env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", String::new()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()));
    let server = start(&sqlite.url, &env);

    let request_id = format!("untraced-{}", random_tag());
    let traceparent = format!("00-{}{}-00f067aa0ba902b7-01", "5af7651916cd43dd8448", random_tag());
    let response = client()
        .post(server.url("/user"))
        .header("traceparent", traceparent)
        .header("x-request-id", &request_id)
        .json(&user_body("Grace Hopper", &format!("grace.{}@example.com", random_tag())))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(exporter_threads(&server), 0, "no export thread without an endpoint");
    assert_eq!(*receiver.requests.lock().unwrap(), 0, "something was exported");
    let line = access_line(&server, &request_id);
    assert!(line.get("trace_id").is_none(), "a trace id without traces: {line}");
}

#[tokio::test]
async fn a_stalled_collector_never_slows_requests_and_the_spans_it_costs_are_counted() {
    let receiver = Receiver { stall: Some(Duration::from_secs(60)), ..Receiver::default() };
    let otlp = receiver.clone().start("127.0.0.1:0").await;
    let sqlite = TempSqlite::new();
    let metrics_port = free_port();
    let mut env = traced_env(&format!("http://{otlp}"));
    env.extend([
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "8".to_owned()),
        ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
    ]);
    let server = start(&sqlite.url, &env);

    let http = client();
    let mut slowest = Duration::ZERO;
    for n in 0..60 {
        let started = Instant::now();
        let response = http
            .post(server.url("/user"))
            .json(&user_body("Alan Turing", &format!("alan.{n}.{}@example.com", random_tag())))
            .send()
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 201);
    }
    // An export stalls for 60 s; a request that waited for one would take that long.
    assert!(slowest < Duration::from_secs(5), "a request waited for the exporter: {slowest:?}");

    let metrics = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let dropped: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("otel_spans_dropped_total "))
        .unwrap_or_else(|| panic!("no otel_spans_dropped_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    kit::load::report(
        "traces::a_stalled_collector_never_slows_requests",
        &format!("60 POSTs, slowest {:.1} ms; {dropped} of 240 spans dropped and counted", slowest.as_secs_f64() * 1e3),
    );
    // 60 POSTs make 240 spans; at most 8 wait and one batch of 8 is stuck in the stalled export.
    assert!((200.0..=240.0).contains(&dropped), "{dropped} spans counted as dropped");
}
