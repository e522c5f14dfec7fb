//! Slow full-list readers (both stores): a download read at a few hundred bytes a second holds
//! no pooled connection, so every other request is still served at once; full-list streams
//! have a cap of their own, and a stream whose client stops reading is ended.

mod kit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kit::http::{client, user_body};
use kit::load::report;
use kit::pg::PgSchema;
use kit::process::Server;
use kit::sqlite::TempSqlite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEEDED_USERS: i64 = 200_000;
const SLOW_READERS: usize = 6;
/// What every other request must be answered within while the slow readers read.
const ANSWER_BOUND: Duration = Duration::from_secs(1);

fn seed_sqlite(path: &std::path::Path) {
    let conn = deadpool_sqlite::rusqlite::Connection::open(path).expect("open SQLite");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy_timeout");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO users (name, email, email_key, created_at)
         SELECT 'Seeded Reader', 'seed' || i || '@slow.test', 'seed' || i || '@slow.test', '2026-01-01T00:00:00.000000Z' FROM n",
        [SEEDED_USERS],
    )
    .expect("seeding SQLite");
}

async fn seed_postgres(schema: &PgSchema) {
    schema
        .admin()
        .execute(
            &format!(
                "INSERT INTO {}.users (name, email, email_key)
                 SELECT 'Seeded Reader', 'seed' || i || '@slow.test', 'seed' || i || '@slow.test'
                 FROM generate_series(1, $1::bigint) AS i",
                schema.schema
            ),
            &[&SEEDED_USERS],
        )
        .await
        .expect("seeding PostgreSQL");
}

/// A `GET /users` on a connection with a small receive buffer, read at `bytes_per_sec`
/// (0: never read past the head) until `stop`. Returns once the 200 head arrived.
struct SlowReader {
    stream: Option<TcpStream>,
    received: Arc<AtomicUsize>,
}

impl SlowReader {
    async fn open(server: &Server) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut stream = socket.connect(server.addr).await.expect("connect");
        stream.write_all(b"GET /users HTTP/1.1\r\nHost: slow\r\n\r\n").await.expect("send request");
        let mut head = [0_u8; 12];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
            .await
            .expect("the head of the full list arrives")
            .expect("read the head");
        assert_eq!(&head, b"HTTP/1.1 200", "a full-list download starts");
        Self { stream: Some(stream), received: Arc::new(AtomicUsize::new(12)) }
    }

    /// Reads `bytes_per_sec` in small sips until `stop`; panics if the stream ends meanwhile.
    fn read_slowly(&mut self, bytes_per_sec: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<TcpStream> {
        let mut stream = self.stream.take().expect("a stream");
        let received = self.received.clone();
        tokio::spawn(async move {
            const SIPS_PER_SEC: usize = 4;
            let mut buf = vec![0_u8; bytes_per_sec / SIPS_PER_SEC];
            while !stop.load(Ordering::Relaxed) {
                let n = stream.read(&mut buf).await.expect("slow read");
                assert!(n > 0, "a slow full-list download ended early");
                received.fetch_add(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1000 / SIPS_PER_SEC as u64)).await;
            }
            stream
        })
    }
}

/// Timed `GET /users/{id}`, a page, `POST /user` and `/ready` in turns for `duration`; returns
/// the slowest answer of each kind and panics on any non-2xx.
async fn probe_everything(server: &Server, duration: Duration) -> Vec<(&'static str, Duration, usize)> {
    let http = client();
    let tag = kit::random_tag();
    let mut slowest = vec![
        ("get", Duration::ZERO, 0),
        ("page", Duration::ZERO, 0),
        ("create", Duration::ZERO, 0),
        ("ready", Duration::ZERO, 0),
    ];
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < duration {
        n += 1;
        for (kind, worst, count) in slowest.iter_mut() {
            let sent = Instant::now();
            let request = match *kind {
                "get" => http.get(server.url("/users/1")),
                "page" => http.get(server.url("/users?limit=100&after=1000")),
                "create" => {
                    http.post(server.url("/user")).json(&user_body("Probe Person", &format!("{tag}.{n}@probe.test")))
                }
                _ => http.get(server.url("/ready")),
            };
            let response = request.send().await.unwrap_or_else(|e| panic!("{kind}: no answer: {e}"));
            let status = response.status();
            let body = response.bytes().await.expect("body");
            let latency = sent.elapsed();
            assert!(
                status.is_success(),
                "{kind} answered {status} while slow readers were reading: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(latency < ANSWER_BOUND, "{kind} took {latency:?} while slow readers were reading");
            *worst = (*worst).max(latency);
            *count += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slowest
}

async fn slow_readers_starve_nothing(server: &Server, store: &str) {
    let mut readers = Vec::new();
    for _ in 0..SLOW_READERS {
        readers.push(SlowReader::open(server).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reading: Vec<_> = readers.iter_mut().map(|r| r.read_slowly(400, stop.clone())).collect();
    // Let the socket buffers fill: from here on every stream waits for its client.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let slowest = probe_everything(server, Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    for handle in reading {
        // Each reader was still inside its download when the probes ended.
        drop(handle.await.expect("slow reader"));
    }
    let received: usize = readers.iter().map(|r| r.received.load(Ordering::Relaxed)).sum();
    assert!(
        received < SLOW_READERS * 4_000_000,
        "the readers were slow ({received} bytes in all, of {} MB each)",
        SEEDED_USERS * 100 / 1_000_000
    );
    let figures: Vec<String> = slowest
        .iter()
        .map(|(kind, worst, n)| format!("{kind}: {n}× max {:.0}ms", worst.as_secs_f64() * 1000.0))
        .collect();
    report(
        &format!("{store}_slow_full_list_readers_do_not_starve_other_requests"),
        &format!(
            "pool=4, {SLOW_READERS} readers at 400 B/s of a {SEEDED_USERS}-user list; every probe 2xx under {ANSWER_BOUND:?}: {}",
            figures.join(", ")
        ),
    );
}

fn pool_of_four() -> Vec<(&'static str, &'static str)> {
    vec![("DATABASE_MAX_CONNECTIONS", "4"), ("DATABASE_TIMEOUT_SECS", "3")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_slow_full_list_readers_do_not_starve_other_requests() {
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let (path, url) = (db.path.clone(), db.url.clone());
    let server = Server::start(&url, &pool_of_four());
    seed_sqlite(&path);
    slow_readers_starve_nothing(&server, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_full_list_readers_do_not_starve_other_requests() {
    let _serial = kit::load::serial().await;
    let schema = PgSchema::create().await;
    let server = Server::start(&schema.database_url(), &pool_of_four());
    seed_postgres(&schema).await;
    slow_readers_starve_nothing(&server, "postgres").await;
    drop(server);
    schema.cleanup().await;
}

/// With a cap of 2 streams and a 2 s stall bound: two clients that stop reading fill the cap
/// (a third download is a quick 503 with Retry-After, pages are still served); after the stall
/// bound their streams end, a new download gets the whole list, and a stalled client that reads
/// on finds its body aborted, never a complete-looking array.
async fn stalled_streams_are_capped_then_ended(server: &Server, store: &str) {
    let mut stalled = vec![SlowReader::open(server).await, SlowReader::open(server).await];
    let opened = Instant::now();

    let http = client();
    let sent = Instant::now();
    let refused = http.get(server.url("/users")).send().await.expect("third download answered");
    let refused_in = sent.elapsed();
    assert_eq!(refused.status(), 503, "a third download beyond MAX_LIST_STREAMS=2");
    assert!(refused.headers().contains_key("retry-after"), "the 503 says when to retry");
    let problem: serde_json::Value = refused.json().await.expect("problem+json");
    assert_eq!(problem["code"], "list_streams_busy");
    assert!(refused_in < ANSWER_BOUND, "refused at once, not queued ({refused_in:?})");
    let page = http.get(server.url("/users?limit=10")).send().await.expect("page");
    assert_eq!(page.status(), 200, "pages are not counted against the stream cap");

    // The cap is freed once the stalled streams are ended.
    let freed_in = loop {
        let response = http.get(server.url("/users")).send().await.expect("download answered");
        if response.status() == 200 {
            let freed_in = opened.elapsed();
            let users: Vec<serde_json::Value> = response.json().await.expect("a whole JSON array");
            assert_eq!(users.len() as i64, SEEDED_USERS, "the whole list");
            break freed_in;
        }
        assert_eq!(response.status(), 503);
        assert!(opened.elapsed() < Duration::from_secs(20), "stalled streams were never ended");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(freed_in >= Duration::from_secs(2), "not ended before the stall bound ({freed_in:?})");

    let mut stream = stalled.pop().and_then(|mut r| r.stream.take()).expect("stream");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
    assert!(!rest.ends_with(b"]\r\n0\r\n\r\n"), "an ended stream must not look like a complete array");
    report(
        &format!("{store}_stalled_full_list_streams_are_capped_then_ended"),
        &format!(
            "cap 2: third download 503 list_streams_busy in {:.0}ms; stall bound 2 s: cap free again {:.1}s after the stall began; stalled body aborted",
            refused_in.as_secs_f64() * 1000.0,
            freed_in.as_secs_f64()
        ),
    );
}

fn capped_env() -> Vec<(&'static str, &'static str)> {
    vec![("MAX_LIST_STREAMS", "2"), ("LIST_STREAM_STALL_SECS", "2")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stalled_full_list_streams_are_capped_then_ended() {
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let (path, url) = (db.path.clone(), db.url.clone());
    let server = Server::start(&url, &capped_env());
    seed_sqlite(&path);
    stalled_streams_are_capped_then_ended(&server, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_full_list_streams_are_capped_then_ended() {
    let _serial = kit::load::serial().await;
    let schema = PgSchema::create().await;
    let server = Server::start(&schema.database_url(), &capped_env());
    seed_postgres(&schema).await;
    stalled_streams_are_capped_then_ended(&server, "postgres").await;
    drop(server);
    schema.cleanup().await;
}
