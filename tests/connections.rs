//! Connection hygiene without a proxy, against the real binary: heads that never finish are
//! closed at the header timeout, the connection cap makes room by closing idle connections,
//! the framework's own refusals are problem+json, and a refused oversized body reads its 413
//! with common clients (Python's http.client and requests, curl).

mod kit;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kit::http::{RawReply, raw_exchange};
use kit::load::report;
use kit::pg::PgSchema;
use kit::process::Server;
use kit::sqlite::TempSqlite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The access log too: refusals must be logged with the request id the client got.
const LOG_LEVEL: (&str, &str) = ("LOG_LEVEL", "warn,users_api::server=info,users_api::access=info");

/// Reads until the server closes the connection; the time it took, or `None` past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

async fn health_latency(server: &Server) -> Duration {
    let started = Instant::now();
    let reply = raw_exchange(
        server.addr,
        format!("GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr).as_bytes(),
        false,
        Duration::from_secs(5),
    )
    .await
    .expect("/health answers")
    .expect("/health sends a status line");
    assert_eq!(reply.status, 200, "/health");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_are_closed_at_the_header_timeout_while_health_keeps_answering() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    const SLOW_CLIENTS: usize = 200;
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let server = Server::start(&db.url, &[("HEADER_TIMEOUT_SECS", "2")]);

    let mut slow = Vec::new();
    for _ in 0..SLOW_CLIENTS {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(b"GET /users HTTP/1.1\r\nHost: slow\r\nX-Slow: ").await.expect("half a head");
        slow.push((stream, Instant::now()));
    }
    let sent = Instant::now();
    let closes: Vec<_> = slow
        .into_iter()
        .map(|(mut s, its_sent)| {
            tokio::spawn(async move { closed_within(&mut s, HEADER_TIMEOUT * 5).await.map(|_| its_sent.elapsed()) })
        })
        .collect();

    let mut health = Vec::new();
    while sent.elapsed() < HEADER_TIMEOUT {
        health.push(health_latency(&server).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut closed_after = Vec::new();
    for close in closes {
        closed_after.push(close.await.unwrap().expect("a half-sent head still open 5 header timeouts after sending"));
    }
    let earliest = closed_after.iter().min().copied().unwrap_or_default();
    let latest = closed_after.iter().max().copied().unwrap_or_default();
    // Closed by the header timeout, not before it and not long after.
    // (Less 50 ms: the server's clock starts when it reads the bytes, timers round to 1 ms.)
    assert!(
        earliest >= HEADER_TIMEOUT - Duration::from_millis(50),
        "one closed after {earliest:?}, before the {HEADER_TIMEOUT:?} header timeout"
    );
    assert!(latest < HEADER_TIMEOUT * 3, "the last half-sent head closed {latest:?} after sending");
    let worst_health = health.iter().max().copied().unwrap_or_default();
    assert!(health.len() >= 5, "too few /health probes: {}", health.len());
    assert!(worst_health < Duration::from_secs(1), "/health took {worst_health:?} with {SLOW_CLIENTS} slow heads open");
    report(
        "half_sent_heads_are_closed_at_the_header_timeout_while_health_keeps_answering",
        &format!(
            "{SLOW_CLIENTS} half-sent heads, header timeout {HEADER_TIMEOUT:?}: all closed between {:.2}s and {:.2}s; \
             /health {} probes meanwhile, slowest {:.1} ms",
            earliest.as_secs_f64(),
            latest.as_secs_f64(),
            health.len(),
            worst_health.as_secs_f64() * 1000.0
        ),
    );
}

/// One keep-alive request on `stream`; panics unless it is answered 200.
async fn keepalive_health(stream: &mut TcpStream) {
    assert_eq!(keepalive_get(stream, "/health").await, 200);
}

/// One GET on a kept-alive connection, read to the end of its body; the answer's status.
async fn keepalive_get(stream: &mut TcpStream, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: keepalive\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send a request");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .expect("read the answer");
        assert!(n > 0, "closed while a request was waiting: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
        if let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let reply = RawReply::parse(&answer).expect("an HTTP answer");
            let length: usize = reply.header("content-length").expect("a Content-Length").parse().expect("a length");
            if answer.len() >= head_end + 4 + length {
                return reply.status;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_use_outlives_the_header_timeout_and_an_idle_one_closes_at_the_keepalive_timeout() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
    const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let server = Server::start(&db.url, &[("HEADER_TIMEOUT_SECS", "1"), ("KEEPALIVE_TIMEOUT_SECS", "3")]);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");

    // Requests for three header timeouts: each one moves the deadline, and the connection's
    // timer rings at an old one in between; the connection must stay open through it.
    let busy = Instant::now();
    let mut requests = 0;
    let mut last_answer = Instant::now();
    while busy.elapsed() < HEADER_TIMEOUT * 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        keepalive_health(&mut stream).await;
        last_answer = Instant::now();
        requests += 1;
    }
    // Then idle: closed at the keep-alive timeout, not at the header timeout and not long after.
    closed_within(&mut stream, KEEPALIVE_TIMEOUT * 3).await.expect("an idle connection is closed");
    let closed = last_answer.elapsed();
    assert!(
        closed >= KEEPALIVE_TIMEOUT - Duration::from_millis(50),
        "an idle connection closed after {closed:?}, before the {KEEPALIVE_TIMEOUT:?} keep-alive timeout"
    );
    assert!(
        closed < KEEPALIVE_TIMEOUT + Duration::from_secs(1),
        "an idle connection closed {closed:?} after its last answer"
    );
    report(
        "a_connection_in_use_outlives_the_header_timeout_and_an_idle_one_closes_at_the_keepalive_timeout",
        &format!(
            "{requests} requests on one connection over {:.1}s (header timeout {HEADER_TIMEOUT:?}); idle, it closed after {:.2}s \
             (keep-alive timeout {KEEPALIVE_TIMEOUT:?})",
            busy.elapsed().as_secs_f64(),
            closed.as_secs_f64()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_shared_out_among_the_http_threads() {
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let default = Server::start(&db.url, &[]);
    // The threads start with serving, after the listener is bound: one answer means they run.
    health_latency(&default).await;
    let cores = std::thread::available_parallelism().expect("the core count").get();
    assert_eq!(default.threads("http-").len(), cores, "one connection thread per core by default");
    drop(default);

    let server = Server::start(&db.url, &[("HTTP_THREADS", "3")]);
    health_latency(&server).await;
    let before = server.threads("http-");
    let names: Vec<&str> = before.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["http-0", "http-1", "http-2"]);
    // Six keep-alive connections, open together: two on each thread. A thread that serves a
    // connection sleeps between its requests (a voluntary switch each); one that serves none
    // never wakes.
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    for _ in 0..200 {
        for stream in &mut streams {
            keepalive_health(stream).await;
        }
    }
    let after = server.threads("http-");
    let woke: Vec<u64> = before.iter().zip(&after).map(|((_, was), (_, is))| is - was).collect();
    assert!(woke.iter().all(|&n| n >= 100), "a connection thread served no connection: wake-ups {woke:?}");
    report(
        "connections_are_shared_out_among_the_http_threads",
        &format!("{cores} threads by default; with HTTP_THREADS=3, six connections woke each thread {woke:?} times"),
    );
}

/// On PostgreSQL each connection thread runs its requests' statements on connections it opened
/// itself (deadpool-postgres drives a connection on the runtime that opened it): a thread that
/// serves no request is not woken by another thread's reads, on the primary's pools or on a read
/// replica's. The threads' pools and the shared one stay within their connection budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_stay_on_the_connection_thread_that_serves_them() {
    let _serial = kit::load::serial().await;
    let schema = PgSchema::create().await;
    let primary = schema.database_url();
    let env = [("HTTP_THREADS", "2"), ("DATABASE_MAX_CONNECTIONS", "10")];
    let server = Server::start(&primary, &env);
    let on_primary = reads_on_one_thread(&server).await;
    let primary_backends = backends(&schema, &schema.application_name).await;
    drop(server);
    assert!((2..=10).contains(&primary_backends), "{primary_backends} backends for DATABASE_MAX_CONNECTIONS=10");

    // The primary named as the replica too (never behind itself), under another application name.
    let replica_name = format!("{}-replica", schema.application_name);
    let replica = primary.replace(&schema.application_name, &replica_name);
    let replica_env = [env[0], env[1], ("DATABASE_READ_URL", replica.as_str()), ("DATABASE_READ_MAX_CONNECTIONS", "6")];
    let server = Server::start(&primary, &replica_env);
    let on_replica = reads_on_one_thread(&server).await;
    let replica_backends = backends(&schema, &replica_name).await;
    drop(server);
    // The lag watcher's connection and one in each thread's pool at least.
    assert!(
        (3..=6).contains(&replica_backends),
        "{replica_backends} replica backends for DATABASE_READ_MAX_CONNECTIONS=6"
    );
    report(
        "postgres_reads_stay_on_the_connection_thread_that_serves_them",
        &format!(
            "{READS_ON_ONE_THREAD} reads on one thread woke (it, every other thread): primary {on_primary:?}, \
             replica {on_replica:?}; backends: {primary_backends} of 10, replica {replica_backends} of 6"
        ),
    );
    schema.cleanup().await;
}

const READS_ON_ONE_THREAD: u64 = 300;

/// Two kept-alive connections read together (one on each thread, so both threads open database
/// connections), then one of them reads alone: the wake-ups of the thread serving it and of every
/// other thread while it does. Panics if the others woke for its reads.
async fn reads_on_one_thread(server: &Server) -> (u64, u64) {
    let mut kept = TcpStream::connect(server.addr).await.expect("connect");
    let mut dropped = TcpStream::connect(server.addr).await.expect("connect");
    for _ in 0..50 {
        let (a, b) =
            tokio::join!(keepalive_get(&mut kept, "/users?limit=10"), keepalive_get(&mut dropped, "/users?limit=10"));
        assert_eq!((a, b), (200, 200));
    }
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = server.threads("");
    for _ in 0..READS_ON_ONE_THREAD {
        assert_eq!(keepalive_get(&mut kept, "/users?limit=10").await, 200);
    }
    let after = server.threads("");
    let connection_threads = |threads: &[(String, u64)]| -> Vec<u64> {
        threads.iter().filter(|(name, _)| name.starts_with("http-")).map(|(_, n)| *n).collect()
    };
    let http: Vec<u64> =
        connection_threads(&after).iter().zip(connection_threads(&before)).map(|(is, was)| is - was).collect();
    let serving = http.iter().copied().max().expect("two connection threads");
    // Totals, not thread by thread: same-named threads (the runtime's workers) may swap places in
    // the sorted lists, and a blocking thread may come or go.
    let total = |threads: &[(String, u64)]| threads.iter().map(|(_, n)| n).sum::<u64>();
    let elsewhere = total(&after).saturating_sub(total(&before)).saturating_sub(serving);
    assert!(serving >= READS_ON_ONE_THREAD, "the serving thread slept less than once a read: wake-ups {http:?}");
    assert!(
        elsewhere < READS_ON_ONE_THREAD / 10,
        "other threads were woken {elsewhere} times by one thread's {READS_ON_ONE_THREAD} reads (connection threads {http:?})"
    );
    (serving, elsewhere)
}

/// The API's connections to the test database under `application_name`.
async fn backends(schema: &PgSchema, application_name: &str) -> i64 {
    schema
        .admin()
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&application_name])
        .await
        .expect("count the API's backends")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_from_one_client_do_not_keep_a_new_client_out() {
    const CAP: usize = 300;
    const IDLE: usize = 3000;
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let server = Server::start(&db.url, &[("MAX_CONNECTIONS", "300")]);

    // Every other connection has been used once (an idle keep-alive); the rest never sent a byte.
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        if i % 2 == 0 {
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: idle\r\n\r\n").await.unwrap();
            let mut answer = [0u8; 512];
            // A connection evicted before its request is served reads 0 bytes: allowed here.
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
        }
        idle.push(stream);
    }
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).map(|d| d.count()).unwrap_or(0);

    // A new client is served at once.
    let started = Instant::now();
    let client = kit::http::client();
    let response = client.get(server.url("/users?limit=5")).send().await.expect("a new client is served");
    let latency = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(latency < Duration::from_secs(2), "a new client waited {latency:?}");
    let health = health_latency(&server).await;

    // The oldest idle connections were closed to make room.
    let mut closed = 0;
    for stream in idle.iter_mut().take(IDLE / 2) {
        if closed_within(stream, Duration::from_millis(200)).await.is_some() {
            closed += 1;
        }
    }
    assert!(closed >= IDLE / 2 - CAP, "only {closed} of the oldest {} idle connections were closed", IDLE / 2);
    assert!(open_fds < CAP + 100, "{open_fds} descriptors open with a cap of {CAP} connections");
    report(
        "thousands_of_idle_connections_from_one_client_do_not_keep_a_new_client_out",
        &format!(
            "{IDLE} idle connections (half used once) against MAX_CONNECTIONS={CAP}: server holds {open_fds} descriptors; \
             a new client served in {:.1} ms, /health {:.1} ms; {closed} of the oldest {} closed",
            latency.as_secs_f64() * 1000.0,
            health.as_secs_f64() * 1000.0,
            IDLE / 2
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_newcomer_gets_a_503_problem() {
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let server = Server::start(&db.url, &[("MAX_CONNECTIONS", "4"), LOG_LEVEL]);

    // Four requests whose bodies are half sent: busy, not evictable.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"POST /user HTTP/1.1\r\nHost: busy\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = raw_exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: new\r\n\r\n", false, Duration::from_secs(5))
        .await
        .expect("an answer")
        .expect("a status line");
    if let Some(defect) = reply.as_reply().unavailable_defect() {
        panic!("the refusal at the cap: {defect}: {reply:?}");
    }
    assert_request_id_logged(&server, &reply);

    // Room again once a busy connection goes.
    drop(busy.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(health_latency(&server).await < Duration::from_secs(1), "/health once a busy connection closed");
}

fn assert_request_id_logged(server: &Server, reply: &RawReply) {
    let id = reply.header("x-request-id").expect("an x-request-id header").to_owned();
    let problem: serde_json::Value = serde_json::from_slice(&reply.body).expect("a JSON body");
    assert_eq!(problem["request_id"], id.as_str(), "the body's request id is the header's");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !server.logs().contains(&id) {
        assert!(Instant::now() < deadline, "request id {id} not in the log:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_http_parser_refuses_get_problem_json_with_a_logged_request_id() {
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let server = Server::start(&db.url, &[LOG_LEVEL]);
    let many_headers: String = (0..120).map(|i| format!("X-Header-{i}: value\r\n")).collect();
    let long_path = "a".repeat(70_000);
    let cases: [(&str, String, u16, &str); 3] = [
        (
            "~120 headers",
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            431,
            "header_fields_too_large",
        ),
        (
            "a malformed header line",
            "GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        ("a 70 kB request target", format!("GET /{long_path} HTTP/1.1\r\nHost: x\r\n\r\n"), 414, "uri_too_long"),
    ];
    for (what, request, status, code) in cases {
        let reply = raw_exchange(server.addr, request.as_bytes(), false, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        if let Some(defect) = reply.as_reply().problem_defect(true) {
            panic!("{what}: {defect}");
        }
        assert_eq!(reply.as_reply().json().unwrap()["code"], code, "{what}");
        assert_request_id_logged(&server, &reply);
    }
    // The service is unharmed.
    assert!(health_latency(&server).await < Duration::from_secs(1));
}

/// Sends `count` oversized bodies of `size` bytes with `client`; how many read a 413.
fn oversized_posts(client: &str, url: &str, size: usize, count: usize) -> String {
    let script = r#"
import sys
kind, url, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = b'{"name": "' + b'a' * size + b'", "email": "big@example.com"}'
outcomes = {}
def note(outcome):
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
if kind == "http.client":
    import http.client, urllib.parse
    u = urllib.parse.urlsplit(url)
    for _ in range(count):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            c.request("POST", u.path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            note(str(r.status) + " " + r.getheader("Content-Type", ""))
        except Exception as e:
            note(type(e).__name__)
        finally:
            c.close()
else:
    import requests
    session = requests.Session()
    for _ in range(count):
        try:
            r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
            note(str(r.status_code) + " " + r.headers.get("Content-Type", ""))
        except Exception as e:
            note(type(e).__name__)
print(" ".join(f"{k.replace(' ', '|')}={v}" for k, v in sorted(outcomes.items())))
"#;
    if client == "curl" {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![b'a'; size]).unwrap();
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..count {
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}|%{content_type}", "--max-time", "60"])
                .args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.path().display()))
                .arg(url)
                .output()
                .expect("curl runs (install curl: this test needs it)");
            let outcome = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            *outcomes
                .entry(if out.status.success() { outcome } else { format!("curl-exit-{}", out.status) })
                .or_default() += 1;
        }
        outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    } else {
        // The project's venv (scripts/test makes it, with requests) when there is one.
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        let python = if venv.is_file() { venv } else { PathBuf::from("python3") };
        let out = Command::new(python)
            .args(["-c", script, client, url, &size.to_string(), &count.to_string()])
            .output()
            .expect("python3 runs (this test needs python3 with requests)");
        assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_read_their_413_with_python_and_curl_clients() {
    const COUNT: usize = 20;
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let server = Server::start(&db.url, &[]);
    let target = server.url("/user");
    let expected = format!("413|application/problem+json={COUNT}");
    let mut figures = Vec::new();
    for size in [3_000_000, 20_000_000] {
        for client in ["http.client", "requests", "curl"] {
            let target = target.clone();
            let started = Instant::now();
            let outcomes =
                tokio::task::spawn_blocking(move || oversized_posts(client, &target, size, COUNT)).await.unwrap();
            assert_eq!(outcomes, expected, "{client}, {size} bytes, {COUNT} times\nlog:\n{}", server.logs());
            figures.push(format!(
                "{client} {} MB: {COUNT}/{COUNT} read 413 ({:.1}s)",
                size / 1_000_000,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    assert_eq!(kit::sqlite::check_sqlite(&db.path).rows, 0, "a refused body stored something");
    assert!(health_latency(&server).await < Duration::from_secs(1));
    report("oversized_bodies_read_their_413_with_python_and_curl_clients", &figures.join("; "));
}
