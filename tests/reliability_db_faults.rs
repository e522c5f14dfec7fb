//! Database faults (PostgreSQL): connections terminated under load, and a real outage of a
//! PostgreSQL cluster of the test's own (stopped, then frozen with SIGSTOP) under load. During a
//! fault the API answers 503 problem+json with Retry-After within a bounded time, /ready fails,
//! /health stays 200; afterwards it recovers by itself, without a restart; no other 5xx.

mod kit;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use kit::http::{client, list_users};
use kit::load::{MIXED, PROBES, Sample, collect, report, spawn_load};
use kit::pg::{PgCluster, PgSchema};
use kit::process::Server;

/// DATABASE_TIMEOUT_SECS given to the API in these tests.
const DB_TIMEOUT_SECS: u64 = 2;
/// The promise: a fault is answered within the database timeout plus one second.
const FAULT_ANSWER_BOUND: Duration = Duration::from_secs(DB_TIMEOUT_SECS + 1);
/// The API must serve again this soon after the database is back.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
const WORKERS: usize = 8;

fn server_env() -> Vec<(&'static str, &'static str)> {
    vec![("DATABASE_TIMEOUT_SECS", "2"), ("DATABASE_MAX_CONNECTIONS", "4"), ("REQUEST_TIMEOUT_SECS", "10")]
}

/// Problems found in `samples`, given in which phases the database is down (/ready must fail)
/// and which must be fully healthy (2xx only); these hold for requests sent and answered within
/// one such phase. Others (transitions, requests spanning a phase change) may be 2xx or 503.
/// Every answer, in every phase, comes within the bound.
///
/// The full list is streamed: when the database fails after the 200 and the first rows went
/// out, the only honest signal left is to abort the response, so the client sees an incomplete
/// chunked body (never a complete-looking but truncated array). That is allowed unless the list
/// was sent and finished within a healthy phase (one begun while healthy may be cut off by the
/// fault that starts under it); a 200 list whose body is not a whole JSON array never is.
fn defects(samples: &[Sample], down: &[u8], healthy: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for s in samples {
        let reply = match &s.outcome {
            Ok(reply) => reply,
            Err(e)
                if s.kind == "list"
                    && e.starts_with(kit::load::BODY_ERROR)
                    && !healthy.iter().any(|p| s.within(*p)) =>
            {
                continue;
            }
            Err(e) => {
                out.push(format!("phase {}->{} {}: no answer: {e}", s.phase, s.phase_end, s.kind));
                continue;
            }
        };
        let what = format!("phase {} {} → {} in {:?}", s.phase, s.kind, reply.status, reply.latency);
        if s.kind == "health" {
            if reply.status != 200 {
                out.push(format!("{what}: /health must stay 200"));
            }
            continue;
        }
        match reply.status {
            200 | 201 => {
                if down.iter().any(|p| s.within(*p)) && s.kind == "ready" {
                    out.push(format!("{what}: /ready succeeded while the database was down"));
                }
                if s.kind == "list" && !reply.json().is_some_and(|v| v.is_array()) {
                    out.push(format!("{what}: the list is not a whole JSON array"));
                }
            }
            // The mixed load asks for ids it has not created yet too.
            404 if s.kind == "get" => {}
            503 => {
                if let Some(d) = reply.unavailable_defect() {
                    out.push(format!("{what}: malformed 503: {d}"));
                }
                if healthy.iter().any(|p| s.within(*p)) {
                    out.push(format!("{what}: 503 while the database was healthy"));
                }
            }
            // A create whose COMMIT got no answer: stored or not, never called retryable.
            504 if s.kind == "create" && !healthy.iter().any(|p| s.within(*p)) => {
                if reply.retry_after.is_some() || !reply.json().is_some_and(|v| v["code"] == "outcome_unknown") {
                    out.push(format!("{what}: a 504 must be outcome_unknown without Retry-After"));
                }
            }
            _ => out.push(format!("{what}: unexpected status, body {}", String::from_utf8_lossy(&reply.body))),
        }
        if reply.latency > FAULT_ANSWER_BOUND {
            out.push(format!("{what}: slower than the {FAULT_ANSWER_BOUND:?} bound"));
        }
    }
    out
}

/// Streamed lists cut off by a fault after the 200 went out.
fn aborted_streams(samples: &[Sample]) -> usize {
    samples.iter().filter(|s| s.outcome.as_ref().is_err_and(|e| e.starts_with(kit::load::BODY_ERROR))).count()
}

fn latency_figures(samples: &[Sample], phases: &[u8], status: u16) -> (usize, f64, f64, f64) {
    let mut latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| phases.iter().any(|p| s.within(*p)) && s.status() == Some(status) && s.kind != "health")
        .filter_map(Sample::latency)
        .collect();
    let n = latencies.len();
    (
        n,
        kit::load::percentile_ms(&mut latencies, 50.0),
        kit::load::percentile_ms(&mut latencies, 99.0),
        kit::load::percentile_ms(&mut latencies, 100.0),
    )
}

/// Every create answered 201 is listed afterwards.
async fn assert_acknowledged_writes_present(samples: &[Sample], server: &Server) -> usize {
    let users = list_users(&client(), &server.url("/users")).await;
    let stored: HashSet<&str> = users.iter().filter_map(|u| u["email"].as_str()).collect();
    let acked: Vec<&str> =
        samples.iter().filter(|s| s.status() == Some(201)).filter_map(|s| s.email.as_deref()).collect();
    let lost: Vec<&&str> = acked.iter().filter(|e| !stored.contains(**e)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes missing: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    acked.len()
}

/// Polls with creates until one succeeds; returns how long that took.
async fn time_to_recover(server: &Server, tag: &str) -> Duration {
    let http = client();
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let email = format!("{tag}.probe{n}@recovery.test");
        if let Ok(reply) = kit::load::send(&http, &format!("http://{}", server.addr), "create", &email, 1).await
            && reply.status == 201
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "the API did not recover within {RECOVERY_BOUND:?} after the database came back; log:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_under_load_are_replaced_without_restart() {
    const HEALTHY: u8 = 0;
    const TERMINATING: u8 = 1;
    const SETTLING: u8 = 2;
    const AFTER: u8 = 3;
    const ROUNDS: usize = 15;

    let _serial = kit::load::serial().await;
    let schema = PgSchema::create().await;
    let server = Server::start(&schema.database_url(), &server_env());
    let LoadUnderFault { tag, phase, stop, load } = start_load(&server);

    tokio::time::sleep(Duration::from_millis(800)).await;
    phase.store(TERMINATING, Ordering::Relaxed);
    let mut terminated = 0;
    for _ in 0..ROUNDS {
        terminated += schema.terminate_api_connections().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase.store(SETTLING, Ordering::Relaxed);
    let recovery = time_to_recover(&server, &tag).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.store(AFTER, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;

    let problems = defects(&samples, &[], &[HEALTHY, AFTER]);
    assert!(
        problems.is_empty(),
        "{} problems, e.g.:\n{}\nlog:\n{}",
        problems.len(),
        problems[..problems.len().min(15)].join("\n"),
        server.logs()
    );
    assert!(terminated >= ROUNDS as i64, "the faults hit the API's connections ({terminated} terminated)");
    let after_ok = samples.iter().filter(|s| s.within(AFTER) && s.status().is_some_and(|c| c < 300)).count();
    assert!(after_ok > 50, "load ran after the faults ({after_ok} successes)");
    let acked = assert_acknowledged_writes_present(&samples, &server).await;
    let (rows, duplicates) = schema.users_and_duplicates().await;
    assert_eq!(duplicates, 0);

    let (n503, p50, p99, max) = latency_figures(&samples, &[TERMINATING], 503);
    report(
        "postgres_connections_terminated_under_load_are_replaced_without_restart",
        &format!(
            "requests={} backends_terminated={terminated} in_{ROUNDS}_rounds 503s_during_faults={n503} \
             (latency p50={p50:.0}ms p99={p99:.0}ms max={max:.0}ms) other_5xx=0 aborted_list_streams={} recovered_in={:.0}ms \
             acknowledged={acked} lost=0 rows={rows}",
            samples.len(),
            aborted_streams(&samples),
            recovery.as_secs_f64() * 1000.0
        ),
    );
    drop(server);
    schema.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_answered_503_quickly_and_recovers_by_itself() {
    const HEALTHY: u8 = 0;
    const STOPPING: u8 = 1;
    const DOWN: u8 = 2;
    const RESTARTING: u8 = 3;
    const HEALTHY_AGAIN: u8 = 4;
    const FREEZING: u8 = 5;
    const FROZEN: u8 = 6;
    const THAWING: u8 = 7;
    const HEALTHY_AT_END: u8 = 8;
    const OUTAGE: Duration = Duration::from_secs(5);

    let _serial = kit::load::serial().await;
    let cluster = tokio::task::spawn_blocking(PgCluster::init).await.expect("initdb");
    let app = format!("users-api-rel-{}", kit::random_tag());
    let server = Server::start(&cluster.database_url(&app), &server_env());
    let LoadUnderFault { tag, phase, stop, load } = start_load(&server);
    let cluster = Arc::new(cluster);

    // Outage 1: the server is stopped (connections refused).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    phase.store(STOPPING, Ordering::Relaxed);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediate()).await.unwrap();
    phase.store(DOWN, Ordering::Relaxed);
    tokio::time::sleep(OUTAGE).await;
    phase.store(RESTARTING, Ordering::Relaxed);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start()).await.unwrap();
    let recovered_after_restart = time_to_recover(&server, &tag).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.store(HEALTHY_AGAIN, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Outage 2: the server hangs (SIGSTOP): connections open, nothing answers.
    phase.store(FREEZING, Ordering::Relaxed);
    let frozen_processes = cluster.freeze();
    assert!(frozen_processes > 1, "froze the postmaster and its children");
    phase.store(FROZEN, Ordering::Relaxed);
    tokio::time::sleep(OUTAGE).await;
    phase.store(THAWING, Ordering::Relaxed);
    cluster.thaw();
    let recovered_after_thaw = time_to_recover(&server, &tag).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.store(HEALTHY_AT_END, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;

    let problems = defects(&samples, &[DOWN, FROZEN], &[HEALTHY, HEALTHY_AGAIN, HEALTHY_AT_END]);
    assert!(
        problems.is_empty(),
        "{} problems, e.g.:\n{}\nlog:\n{}",
        problems.len(),
        problems[..problems.len().min(60)].join("\n"),
        server.logs()
    );
    for (name, p) in [("down", DOWN), ("frozen", FROZEN)] {
        let served = samples.iter().filter(|s| s.within(p) && s.kind != "health").count();
        let unavailable = samples.iter().filter(|s| s.within(p) && s.status() == Some(503)).count();
        let ready_503 = samples.iter().filter(|s| s.within(p) && s.kind == "ready" && s.status() == Some(503)).count();
        let health_ok = samples.iter().filter(|s| s.within(p) && s.kind == "health" && s.status() == Some(200)).count();
        let unknown = samples.iter().filter(|s| s.within(p) && s.status() == Some(504)).count();
        assert!(
            served > 0 && unavailable + unknown == served,
            "{name}: {unavailable} of {served} requests answered 503 ({unknown} writes 504 outcome_unknown)"
        );
        assert!(
            ready_503 > 0 && health_ok > 0,
            "{name}: /ready 503 ({ready_503}) and /health 200 ({health_ok}) were observed"
        );
    }
    let acked = assert_acknowledged_writes_present(&samples, &server).await;

    let (down_n, down_p50, down_p99, down_max) = latency_figures(&samples, &[DOWN], 503);
    let (frozen_n, frozen_p50, frozen_p99, frozen_max) = latency_figures(&samples, &[FROZEN], 503);
    report(
        "postgres_outage_is_answered_503_quickly_and_recovers_by_itself",
        &format!(
            "requests={} stopped: 503s={down_n} latency p50={down_p50:.0}ms p99={down_p99:.0}ms max={down_max:.0}ms, \
             recovered {:.0}ms after restart; frozen: 503s={frozen_n} latency p50={frozen_p50:.0}ms p99={frozen_p99:.0}ms \
             max={frozen_max:.0}ms, recovered {:.0}ms after thaw; bound={FAULT_ANSWER_BOUND:?}; other_5xx=0 aborted_list_streams={} acknowledged={acked} lost=0",
            samples.len(),
            recovered_after_restart.as_secs_f64() * 1000.0,
            recovered_after_thaw.as_secs_f64() * 1000.0,
            aborted_streams(&samples),
        ),
    );
}

/// What a fault test drives: `WORKERS` clients of mixed requests and one readiness prober,
/// tagged with the phase (healthy, fault, after) each request was sent in.
struct LoadUnderFault {
    tag: String,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    load: Vec<tokio::task::JoinHandle<Vec<kit::load::Sample>>>,
}

/// Starts in phase 0, which every fault test calls HEALTHY.
fn start_load(server: &Server) -> LoadUnderFault {
    let tag = kit::random_tag();
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let base = format!("http://{}", server.addr);
    let mut load =
        spawn_load(client(), base.clone(), MIXED, Duration::ZERO, WORKERS, tag.clone(), phase.clone(), stop.clone());
    load.extend(spawn_load(
        client(),
        base,
        PROBES,
        Duration::from_millis(100),
        1,
        tag.clone(),
        phase.clone(),
        stop.clone(),
    ));
    LoadUnderFault { tag, phase, stop, load }
}
