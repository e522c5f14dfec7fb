//! Metrics: after a known set of requests the counters say exactly that; /metrics is only on
//! the private listener. Its own test binary, so no other test's requests are counted.

mod kit;

use kit::app::{Backend, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_requests_sent_and_metrics_stay_off_the_public_port() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let metrics_addr = app.metrics_addr.expect("metrics listener on");

    for i in 0..3 {
        assert_eq!(app.create_user("Metric Person", &format!("m{i}@example.com")).await.status(), 201);
    }
    assert_eq!(app.create_user("Metric Person", "m0@example.com").await.status(), 400);
    assert_eq!(app.create_user("X", "bad").await.status(), 400);
    for _ in 0..4 {
        assert_eq!(app.get("/users?limit=2").await.status(), 200);
    }
    assert_eq!(app.get("/users/2").await.status(), 200);
    assert_eq!(app.get("/users/999").await.status(), 404);
    assert_eq!(app.get("/nope").await.status(), 404);
    // The public port has no /metrics.
    assert_eq!(app.get("/metrics").await.status(), 404);

    let scrape = || async {
        app.client.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap().text().await.unwrap()
    };
    let text = scrape().await;
    let count = |method: &str, route: &str, status: &str| {
        sample(&text, "http_requests_total", &[("method", method), ("route", route), ("status", status)])
    };
    assert_eq!(count("POST", "/user", "201"), Some(3.0), "{text}");
    assert_eq!(count("POST", "/user", "400"), Some(2.0));
    assert_eq!(count("GET", "/users", "200"), Some(4.0));
    assert_eq!(count("GET", "/users/{id}", "200"), Some(1.0));
    assert_eq!(count("GET", "/users/{id}", "404"), Some(1.0));
    assert_eq!(count("GET", "unmatched", "404"), Some(2.0), "/nope and /metrics on the public port");
    assert_eq!(
        sample(
            &text,
            "http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/user"), ("status", "201")]
        ),
        Some(3.0)
    );
    // Four inserts reached the writer (three stored, one duplicate); the invalid one never did.
    let batches = sample(&text, "db_write_batch_size_sum", &[]).expect("batch size histogram");
    assert_eq!(batches, 4.0, "{text}");
    // Sizes have buckets of their own: under the seconds' buckets every batch above 10 was +Inf.
    let batch_count = sample(&text, "db_write_batch_size_count", &[]);
    assert_eq!(sample(&text, "db_write_batch_size_bucket", &[("le", "512")]), batch_count, "{text}");
    assert_eq!(
        sample(&text, "db_query_duration_seconds_count", &[("operation", "insert"), ("backend", "sqlite")]),
        Some(4.0)
    );
    assert_eq!(sample(&text, "http_requests_in_flight", &[]), Some(0.0));
    assert!(sample(&text, "db_pool_max_connections", &[]).is_some_and(|v| v >= 1.0));

    // In the same test, so that its request is not counted beside another test's: a create whose
    // body is still arriving is in flight, and no longer once it is answered.
    let scrape_in_flight = || async { sample(&scrape().await, "http_requests_in_flight", &[]) };
    let body = r#"{"name":"Slow Sender","email":"slow@example.com"}"#;
    let (head, rest) = body.split_at(10);
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /user HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while scrape_in_flight().await != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "the half-sent create never showed in flight");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 201"), "{}", String::from_utf8_lossy(&answer[..n]));
    assert_eq!(scrape_in_flight().await, Some(0.0));
}

#[test]
fn a_taken_metrics_port_fails_the_start_with_the_way_out() {
    // Another process (a second instance, say) already holds the metrics port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("users.db").display());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_users-api"))
        .args(["serve", "--bind-addr", "127.0.0.1:0", "--metrics-addr", &metrics_addr])
        .args(["--database-url", &database_url])
        .env_remove("METRICS_ADDR")
        .output()
        .unwrap();
    // The fatal error is a log line (stdout); read both streams.
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "the start must fail: {said}");
    for needle in [metrics_addr.as_str(), "already in use", "METRICS_ADDR=127.0.0.1:PORT", "METRICS_ADDR=off"] {
        assert!(said.contains(needle), "{needle:?} missing from: {said}");
    }
}
