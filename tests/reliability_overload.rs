//! Overload: far beyond capacity the service sheds load with fast 503s (and 429s where a rate
//! limit is on) instead of queueing without bound; latency stays bounded; memory stays bounded.

mod kit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use kit::load::{Sample, percentile_ms, report, spawn_load};
use kit::process::{Server, proc_status_kib};

/// Concurrent clients, each with its own connection, against MAX_IN_FLIGHT.
const CLIENTS: usize = 400;
const MAX_IN_FLIGHT: &str = "8";
const LOAD_FOR: Duration = Duration::from_secs(6);
/// Rows in the table, so that a page of 1000 costs real work.
const PRELOAD: usize = 3000;
const HEAVY: &[&str] = &["page1000", "create", "get", "create", "page1000", "health"];
/// Peak RSS allowed for the server during the overload (debug build, 400 connections).
const RSS_BOUND_KIB: u64 = 160 * 1024;

fn many_connections_client(headers: &[(&'static str, &str)]) -> reqwest::Client {
    let mut default_headers = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        default_headers.insert(*name, value.parse().unwrap());
    }
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CLIENTS)
        .default_headers(default_headers)
        .build()
        .unwrap()
}

/// Fills the table, below MAX_IN_FLIGHT and from many addresses (below any rate limit).
async fn preload(server: &Server) {
    const WORKERS: usize = 6;
    let client = kit::http::client();
    let base = server.url("");
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                for n in (w..PRELOAD).step_by(WORKERS) {
                    let reply = client
                        .post(format!("{base}/users"))
                        .header("x-forwarded-for", format!("198.51.100.{}", n % 250))
                        .json(&kit::http::user_body("Preloaded User", &format!("preload{n}@overload.test")))
                        .send()
                        .await
                        .expect("preload");
                    assert_eq!(reply.status(), 201, "preload");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Samples the server's RSS every 100 ms until `stop`; returns the largest value seen.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(proc_status_kib(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    })
}

struct Figures {
    sent: usize,
    ok: usize,
    shed_503: usize,
    limited_429: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    shed_p99_ms: f64,
    shed_max_ms: f64,
    /// Liveness probes (GET /health) sent, and how many of them were shed.
    health_sent: usize,
    health_shed: usize,
}

/// Checks every sample against the overload promises and sums them up.
fn judge(samples: &[Sample], allow_429: bool) -> Figures {
    let mut problems = Vec::new();
    let (mut ok, mut shed, mut limited) = (0, 0, 0);
    let health_sent = samples.iter().filter(|s| s.kind == "health").count();
    let health_shed = samples.iter().filter(|s| s.kind == "health" && s.status() == Some(503)).count();
    let mut all = Vec::new();
    let mut rejected = Vec::new();
    for s in samples {
        let reply = match &s.outcome {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{}: no answer: {e}", s.kind));
                continue;
            }
        };
        all.push(reply.latency);
        match reply.status {
            200 | 201 => ok += 1,
            404 if s.kind == "get" => ok += 1,
            503 => {
                shed += 1;
                rejected.push(reply.latency);
                if let Some(d) = reply.unavailable_defect() {
                    problems.push(format!("{}: malformed 503: {d}", s.kind));
                }
            }
            429 if allow_429 => {
                limited += 1;
                rejected.push(reply.latency);
                if reply.retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_none() {
                    problems.push(format!("{}: 429 without Retry-After", s.kind));
                }
                if let Some(d) = reply.problem_defect(true) {
                    problems.push(format!("{}: malformed 429: {d}", s.kind));
                }
            }
            other => problems.push(format!("{}: unexpected {other}: {}", s.kind, String::from_utf8_lossy(&reply.body))),
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, e.g.:\n{}",
        problems.len(),
        problems[..problems.len().min(15)].join("\n")
    );
    Figures {
        sent: samples.len(),
        ok,
        shed_503: shed,
        limited_429: limited,
        p50_ms: percentile_ms(&mut all, 50.0),
        p99_ms: percentile_ms(&mut all, 99.0),
        max_ms: percentile_ms(&mut all, 100.0),
        shed_p99_ms: percentile_ms(&mut rejected, 99.0),
        shed_max_ms: percentile_ms(&mut rejected, 100.0),
        health_sent,
        health_shed,
    }
}

async fn overload(server: &Server, clients: Vec<(reqwest::Client, usize)>) -> (Vec<Sample>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_rss = Arc::new(AtomicBool::new(false));
    let rss = watch_rss(server.pid(), stop_rss.clone());
    let phase = Arc::new(AtomicU8::new(0));
    let mut load = Vec::new();
    for (client, workers) in clients {
        load.extend(spawn_load(
            client,
            server.url(""),
            HEAVY,
            Duration::ZERO,
            workers,
            kit::random_tag(),
            phase.clone(),
            stop.clone(),
        ));
    }
    tokio::time::sleep(LOAD_FOR).await;
    stop.store(true, Ordering::Relaxed);
    let samples = kit::load::collect(load).await;
    stop_rss.store(true, Ordering::Relaxed);
    (samples, rss.await.unwrap())
}

/// Latency, measured at the clients (which share the two cores with the server), stays far
/// below the request timeout: nothing waits in an unbounded queue.
fn assert_bounded(f: &Figures) {
    assert!(f.shed_p99_ms < 2000.0, "rejections p99 {:.0} ms", f.shed_p99_ms);
    assert!(f.p99_ms < 3000.0 && f.max_ms < 5000.0, "latency p99 {:.0} ms, max {:.0} ms", f.p99_ms, f.max_ms);
}

/// After the storm: the service answers at once, as if nothing happened.
async fn assert_answers_promptly(server: &Server) -> Duration {
    let client = kit::http::client();
    let started = Instant::now();
    for i in 0..20 {
        // A fresh client address each time: below any rate limit.
        let r = client
            .get(server.url("/users/1"))
            .header("x-forwarded-for", format!("192.0.2.{i}"))
            .send()
            .await
            .expect("after the overload");
        assert_eq!(r.status(), 200);
    }
    let per_request = started.elapsed() / 20;
    assert!(per_request < Duration::from_millis(100), "{per_request:?} per request after the overload");
    per_request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_beyond_capacity_the_service_sheds_with_fast_503s_and_bounded_memory() {
    let _serial = kit::load::serial().await;
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let server = Server::start(&url, &[("MAX_IN_FLIGHT", MAX_IN_FLIGHT), ("REQUEST_TIMEOUT_SECS", "10")]);
    preload(&server).await;
    let rss_before = server.vm_rss_kib();

    let (samples, rss_peak_sampled) = overload(&server, vec![(many_connections_client(&[]), CLIENTS)]).await;
    let hwm = server.vm_hwm_kib();
    let f = judge(&samples, false);
    let after = assert_answers_promptly(&server).await;

    assert!(f.shed_503 > 0, "{CLIENTS} clients against MAX_IN_FLIGHT={MAX_IN_FLIGHT} were never shed");
    assert!(f.ok > 100, "the service kept serving while shedding ({} successes)", f.ok);
    assert_bounded(&f);
    assert!(hwm < RSS_BOUND_KIB, "peak RSS {hwm} KiB exceeds the {RSS_BOUND_KIB} KiB bound");
    assert!(f.health_sent > 0, "liveness probes were part of the load");
    assert_eq!(f.health_shed, 0, "liveness is never shed: a busy but healthy task must not be replaced");

    report(
        "far_beyond_capacity_the_service_sheds_with_fast_503s_and_bounded_memory",
        &format!(
            "clients={CLIENTS} max_in_flight={MAX_IN_FLIGHT} duration={}s requests={} served={} shed_503={} \
             latency p50={:.0}ms p99={:.0}ms max={:.0}ms; 503 p99={:.0}ms max={:.0}ms; \
             rss_before={}KiB rss_peak_sampled={}KiB VmHWM={}KiB (bound {}KiB); after: {:?}/request; \
             /health shed {} of {}",
            LOAD_FOR.as_secs(),
            f.sent,
            f.ok,
            f.shed_503,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.shed_p99_ms,
            f.shed_max_ms,
            rss_before,
            rss_peak_sampled,
            hwm,
            RSS_BOUND_KIB,
            after,
            f.health_shed,
            f.health_sent
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_rate_limit_abusive_clients_get_429_and_the_rest_503_never_a_queue() {
    let _serial = kit::load::serial().await;
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let server = Server::start(
        &url,
        &[
            ("MAX_IN_FLIGHT", MAX_IN_FLIGHT),
            ("REQUEST_TIMEOUT_SECS", "10"),
            ("RATE_LIMIT_PER_SECOND", "5"),
            ("RATE_LIMIT_BURST", "10"),
            ("TRUST_FORWARDED_FOR", "true"),
        ],
    );
    preload(&server).await;

    // Four client addresses (as the proxy reports them), a hundred connections each.
    let clients = (1..=4)
        .map(|i| (many_connections_client(&[("x-forwarded-for", &format!("203.0.113.{i}"))]), CLIENTS / 4))
        .collect();
    let (samples, _) = overload(&server, clients).await;
    let hwm = server.vm_hwm_kib();
    let f = judge(&samples, true);
    let after = assert_answers_promptly(&server).await;

    assert!(f.limited_429 > 0, "clients far over 5 requests/s were never rate limited");
    assert!(f.ok > 100, "the service kept serving ({} successes)", f.ok);
    assert_bounded(&f);
    assert!(hwm < RSS_BOUND_KIB, "peak RSS {hwm} KiB exceeds the {RSS_BOUND_KIB} KiB bound");
    report(
        "with_a_rate_limit_abusive_clients_get_429_and_the_rest_503_never_a_queue",
        &format!(
            "clients={CLIENTS} (4 addresses) rate=5/s burst=10 max_in_flight={MAX_IN_FLIGHT} requests={} served={} \
             limited_429={} shed_503={} latency p50={:.0}ms p99={:.0}ms max={:.0}ms; rejections p99={:.0}ms max={:.0}ms; \
             VmHWM={hwm}KiB; after: {after:?}/request",
            f.sent, f.ok, f.limited_429, f.shed_503, f.p50_ms, f.p99_ms, f.max_ms, f.shed_p99_ms, f.shed_max_ms
        ),
    );
}

/// Connections that never finish their headers are not limited by MAX_IN_FLIGHT (no request
/// exists yet) and the API sets no header-read timeout of its own: in deployment nginx, which
/// buffers and times out slow clients, stands in front. What is promised here is that each such
/// connection costs a bounded amount of memory and that the service keeps answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_requests_costs_bounded_memory_per_connection() {
    const CONNECTIONS: usize = 500;
    const HEADER_BYTES: usize = 60 * 1024;
    /// Allowed growth per open connection holding HEADER_BYTES of unfinished headers.
    const PER_CONNECTION_KIB: u64 = 160;
    use tokio::io::AsyncWriteExt;

    let _serial = kit::load::serial().await;
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let server = Server::start(&url, &[("MAX_IN_FLIGHT", MAX_IN_FLIGHT)]);
    let rss_before = server.vm_rss_kib();
    let mut held = Vec::with_capacity(CONNECTIONS);
    let padding = "a".repeat(HEADER_BYTES);
    for _ in 0..CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
        let partial = format!("GET /users HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}");
        stream.write_all(partial.as_bytes()).await.expect("send partial headers");
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = Instant::now();
    let health = kit::http::client().get(server.url("/health")).send().await.expect("health during the flood");
    let health_latency = started.elapsed();
    assert_eq!(health.status(), 200);
    assert!(health_latency < Duration::from_millis(500), "/health took {health_latency:?} during the flood");
    let hwm = server.vm_hwm_kib();
    let per_connection = hwm.saturating_sub(rss_before) / CONNECTIONS as u64;
    assert!(
        per_connection < PER_CONNECTION_KIB,
        "{per_connection} KiB per unfinished connection (bound {PER_CONNECTION_KIB} KiB)"
    );
    drop(held);
    report(
        "a_flood_of_unfinished_requests_costs_bounded_memory_per_connection",
        &format!(
            "connections={CONNECTIONS} each holding {} KiB of unfinished headers: rss_before={rss_before}KiB \
             VmHWM={hwm}KiB => {per_connection}KiB/connection (bound {PER_CONNECTION_KIB}); /health meanwhile {:?}",
            HEADER_BYTES / 1024,
            health_latency
        ),
    );
}
