//! Graceful shutdown: on SIGTERM under load, every request already accepted completes
//! successfully, new connections are refused, an idle keep-alive connection stays open until
//! a request on it is answered with `Connection: close`, and the process exits within
//! SHUTDOWN_GRACE_SECS — also when a request never finishes.

mod kit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kit::http::{fresh_connection_client, user_body};
use kit::load::report;
use kit::process::Server;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests held open (body half sent) when SIGTERM arrives.
const SLOW_REQUESTS: usize = 12;
/// Background workers opening a new connection per request across the signal.
const BACKGROUND_WORKERS: usize = 6;

/// A POST whose headers and first half of the body are sent; the rest follows on `finish`.
struct SlowRequest {
    stream: TcpStream,
    rest: Vec<u8>,
    email: String,
}

impl SlowRequest {
    async fn begin(server: &Server, email: &str) -> Self {
        let body = serde_json::to_vec(&user_body("Slow Sender", email)).unwrap();
        let head = format!(
            "POST /users HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            server.addr,
            body.len()
        );
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..half]).await.unwrap();
        stream.flush().await.unwrap();
        Self { stream, rest: body[half..].to_vec(), email: email.to_owned() }
    }

    /// Sends the rest of the body and reads the whole answer.
    async fn finish(mut self) -> Result<kit::http::RawReply, String> {
        self.stream.write_all(&self.rest).await.map_err(|e| format!("sending the rest: {e}"))?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_to_end(&mut buf))
            .await
            .map_err(|_| "no answer within 20 s".to_owned())?
            .map_err(|e| format!("reading: {e}"))?;
        kit::http::RawReply::parse(&buf).ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))
    }
}

#[derive(Default, Debug)]
struct Background {
    created: Vec<String>,
    other_status: Vec<u16>,
    refused: usize,
    cut: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_every_accepted_request_finish_then_exits_within_the_grace_period() {
    const GRACE_SECS: u64 = 8;
    let _serial = kit::load::serial().await;
    let db = kit::sqlite::TempSqlite::new();
    let (path, url) = (db.path.clone(), db.url.clone());
    let mut server =
        Server::start(&url, &[("SHUTDOWN_GRACE_SECS", "8"), ("REQUEST_TIMEOUT_SECS", "30"), ("MAX_IN_FLIGHT", "1024")]);
    let tag = kit::random_tag();

    // An idle keep-alive connection: it must not hold the process up.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = idle.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "idle connection's first answer");

    // Background load across the signal, one connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..BACKGROUND_WORKERS)
        .map(|w| {
            let (stop, base, tag) = (stop.clone(), server.url(""), tag.clone());
            tokio::spawn(async move {
                let client = fresh_connection_client();
                let mut seen = Background::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let email = format!("{tag}.bg{w}.{n}@drain.test");
                    match client.post(format!("{base}/users")).json(&user_body("Background Load", &email)).send().await
                    {
                        Ok(r) if r.status() == 201 => seen.created.push(email),
                        Ok(r) => seen.other_status.push(r.status().as_u16()),
                        Err(e) if e.is_connect() => {
                            seen.refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => seen.cut.push(format!("{e:?}")),
                    }
                }
                seen
            })
        })
        .collect();

    let mut slow = Vec::new();
    for i in 0..SLOW_REQUESTS {
        slow.push(SlowRequest::begin(&server, &format!("{tag}.slow{i}@drain.test")).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New connections are refused while the accepted requests are still open.
    let refused = matches!(
        TcpStream::connect(server.addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    assert!(refused, "a new connection 300 ms after SIGTERM must be refused");
    // The idle keep-alive connection is left open (its client may be sending on it right now);
    // a request on it is served and answered with `Connection: close`, then it closes.
    let still_open = tokio::time::timeout(Duration::from_millis(200), idle.read(&mut first)).await.is_err();
    assert!(still_open, "the server closed an idle keep-alive connection at SIGTERM");
    idle.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).await.unwrap();
    let mut last = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut last))
        .await
        .expect("the idle connection closes after its answer")
        .expect("reading the last answer");
    let last = kit::http::RawReply::parse(&last).expect("an answer on the idle connection");
    assert_eq!((last.status, last.header("connection")), (200, Some("close")), "{last:?}");

    // The accepted requests finish well after the signal, and all succeed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let finishing: Vec<_> =
        slow.into_iter().map(|s| tokio::spawn(async move { (s.email.clone(), s.finish().await) })).collect();
    let mut slow_ok = Vec::new();
    for f in finishing {
        let (email, answer) = f.await.unwrap();
        match answer {
            Ok(reply) if reply.status == 201 => {
                let user: serde_json::Value = serde_json::from_slice(&reply.body).expect("a user");
                assert_eq!(user["email"], email.as_str());
                slow_ok.push(email);
            }
            Ok(reply) => panic!("an accepted request got {}: {}", reply.status, String::from_utf8_lossy(&reply.body)),
            Err(e) => panic!("an accepted request failed during shutdown: {e}\nlog:\n{}", server.logs()),
        }
    }
    let drained_after = signalled.elapsed();

    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(GRACE_SECS + 5));
        (status, server)
    })
    .await
    .unwrap();
    let exited_after = signalled.elapsed();
    let (status, server) = status;
    let status = status.unwrap_or_else(|| panic!("still running {GRACE_SECS} s + 5 s after SIGTERM"));
    stop.store(true, Ordering::Relaxed);
    let mut totals = Background::default();
    for b in background {
        let b = b.await.unwrap();
        totals.created.extend(b.created);
        totals.other_status.extend(b.other_status);
        totals.refused += b.refused;
        totals.cut.extend(b.cut);
    }

    assert!(status.success(), "exit status after a graceful drain: {status}\nlog:\n{}", server.logs());
    assert!(
        exited_after < Duration::from_secs(GRACE_SECS),
        "exited {exited_after:?} after SIGTERM; the grace period is {GRACE_SECS} s"
    );
    assert_eq!(slow_ok.len(), SLOW_REQUESTS);
    assert!(totals.other_status.is_empty(), "background requests answered non-201: {:?}", totals.other_status);

    // What was acknowledged is stored.
    let db = kit::sqlite::check_sqlite(&path);
    assert_eq!(db.integrity, "ok");
    let conn = deadpool_sqlite::rusqlite::Connection::open(&path).unwrap();
    for email in slow_ok.iter().chain(&totals.created) {
        let found: i64 = conn.query_row("SELECT count(*) FROM users WHERE email = ?1", [email], |r| r.get(0)).unwrap();
        assert_eq!(found, 1, "{email} acknowledged during shutdown but not stored");
    }

    report(
        "sigterm_lets_every_accepted_request_finish_then_exits_within_the_grace_period",
        &format!(
            "in_flight_at_sigterm={SLOW_REQUESTS} completed_201={} failed=0 new_connection_refused=yes idle_keepalive_answered_with_connection_close=yes \
             last_in_flight_done_after={:.2}s exited_after={:.2}s (grace {GRACE_SECS}s) exit_status={status} \
             background: created={} refused_at_connect={} cut_before_any_response={}",
            slow_ok.len(),
            drained_after.as_secs_f64(),
            exited_after.as_secs_f64(),
            totals.created.len(),
            totals.refused,
            totals.cut.len(),
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_when_the_grace_period_ends_even_if_a_request_never_finishes() {
    const GRACE_SECS: u64 = 2;
    let _serial = kit::load::serial().await;
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let mut server = Server::start(&url, &[("SHUTDOWN_GRACE_SECS", "2"), ("REQUEST_TIMEOUT_SECS", "60")]);
    let stuck = SlowRequest::begin(&server, "never.finishes@drain.test").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    let (status, server) =
        tokio::task::spawn_blocking(move || (server.wait_exit(Duration::from_secs(10)), server)).await.unwrap();
    let exited_after = signalled.elapsed();
    let status = status.expect("exited within 10 s");
    drop(stuck);

    assert!(
        exited_after >= Duration::from_millis(GRACE_SECS * 1000 - 100),
        "exited after {exited_after:?}: before the grace period, with a request still open"
    );
    assert!(
        exited_after < Duration::from_millis(GRACE_SECS * 1000 + 1000),
        "exited after {exited_after:?}: the grace period is {GRACE_SECS} s\nlog:\n{}",
        server.logs()
    );
    assert!(status.success(), "exit status {status}");
    report(
        "sigterm_exits_when_the_grace_period_ends_even_if_a_request_never_finishes",
        &format!("grace={GRACE_SECS}s exited_after={:.2}s exit_status={status}", exited_after.as_secs_f64()),
    );
}
