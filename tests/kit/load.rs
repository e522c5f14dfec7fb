//! Load: mixed request loops tagged by test phase, percentiles, the lock that keeps measuring
//! tests apart, and the figures they print.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{Reply, user_body};

/// Held by each reliability test for its whole run, so that no two of them (in one test
/// binary or in several, as cargo-nextest runs them) share the two cores: their latency and
/// memory figures are their own. An flock on a file under the target directory.
pub struct Serial(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub async fn serial() -> Serial {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-suite.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let lock = tokio::task::spawn_blocking(move || nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive))
        .await
        .expect("lock task");
    Serial(lock.unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display())))
}

/// One request of a mixed load and what came of it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: &'static str,
    /// A test-defined phase (healthy, outage, …) current when the request was sent.
    pub phase: u8,
    /// The phase current when the answer (or the failure) came back.
    pub phase_end: u8,
    pub outcome: Result<Reply, String>,
    /// For creates: the email sent.
    pub email: Option<String>,
}

impl Sample {
    pub fn status(&self) -> Option<u16> {
        self.outcome.as_ref().ok().map(|r| r.status)
    }

    /// Sent and answered within one phase `p`.
    pub fn within(&self, p: u8) -> bool {
        self.phase == p && self.phase_end == p
    }

    pub fn latency(&self) -> Option<Duration> {
        self.outcome.as_ref().ok().map(|r| r.latency)
    }
}

/// The request kinds of the mixed load, cycled by each worker.
pub const MIXED: &[&str] = &["create", "get", "create", "page", "ready", "create", "health", "list"];

/// Sends one request of `kind` to the server at `base` (`http://host:port`).
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    kind: &'static str,
    email: &str,
    id: i64,
) -> Result<Reply, String> {
    let started = Instant::now();
    let request = match kind {
        "create" => client.post(format!("{base}/user")).json(&user_body("Load Tester", email)),
        "get" => client.get(format!("{base}/users/{id}")),
        "page" => client.get(format!("{base}/users?limit=20&after={}", (id - 20).max(0))),
        "list" => client.get(format!("{base}/users")),
        "page1000" => client.get(format!("{base}/users?limit=1000")),
        "ready" => client.get(format!("{base}/ready")),
        "health" => client.get(format!("{base}/health")),
        other => panic!("unknown request kind {other}"),
    };
    match request.send().await {
        Ok(response) => Reply::from_reqwest(response, started).await.map_err(|e| format!("{BODY_ERROR}: {e:?}")),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// How a sample's error starts when the status came but the body broke off.
pub const BODY_ERROR: &str = "reading the body";

/// Probes of the two health endpoints.
pub const PROBES: &[&str] = &["ready", "health"];

/// `workers` loops sending requests of `kinds` (in turn) to `base` until `stop` is set, pausing
/// `pause` after each; each sample is tagged with the value of `phase` when its request was sent
/// and when its answer came.
#[allow(clippy::too_many_arguments)]
pub fn spawn_load(
    client: reqwest::Client,
    base: String,
    kinds: &'static [&'static str],
    pause: Duration,
    workers: usize,
    tag: String,
    phase: Arc<std::sync::atomic::AtomicU8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    use std::sync::atomic::Ordering;
    (0..workers)
        .map(|w| {
            let (client, base, tag, phase, stop) =
                (client.clone(), base.clone(), tag.clone(), phase.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut last_id = 1i64;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let kind = kinds[(n + w) % kinds.len()];
                    n += 1;
                    let email = format!("{tag}.w{w}.n{n}@load.test");
                    let current = phase.load(Ordering::Relaxed);
                    let outcome = send(&client, &base, kind, &email, last_id).await;
                    if kind == "create"
                        && let Ok(reply) = &outcome
                        && reply.status == 201
                        && let Some(id) = reply.json().and_then(|u| u["id"].as_i64())
                    {
                        last_id = id;
                    }
                    samples.push(Sample {
                        kind,
                        phase: current,
                        phase_end: phase.load(Ordering::Relaxed),
                        outcome,
                        email: (kind == "create").then_some(email),
                    });
                    tokio::time::sleep(pause).await;
                    // An unavailable service answers fast; do not spin the two cores on it.
                    if samples.last().and_then(Sample::status) != Some(201)
                        && samples.last().and_then(Sample::status) != Some(200)
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                samples
            })
        })
        .collect()
}

pub async fn collect(handles: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut all = Vec::new();
    for handle in handles {
        all.extend(
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("load workers stop within 60 s")
                .expect("load worker panicked"),
        );
    }
    all
}

/// Percentile (0–100) of a list of durations, in milliseconds.
pub fn percentile_ms(latencies: &mut [Duration], p: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort();
    let rank = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
    latencies[rank.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}

/// One line a test prints for docs/RELIABILITY.md (grep `RELIABILITY` in the test output).
pub fn report(test: &str, figures: &str) {
    println!("RELIABILITY {test}: {figures}");
}
