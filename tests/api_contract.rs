//! The HTTP contract (DESIGN.md §1), row by row, on both stores.

mod kit;

use std::time::Duration;

use kit::app::{Backend, TestApp, serve_config};
use kit::http::{expect_problem, raw_exchange};
use kit::pg::PgSchema;
use serde_json::json;

on_both_stores!(
    health_answers_ok_without_the_database,
    ready_answers_ok_when_the_database_answers,
    create_returns_201_with_location_and_the_stored_user,
    create_is_also_served_at_post_users,
    created_users_are_listed_in_id_order_and_fetchable,
    create_normalises_the_name_and_lowercases_only_the_email_domain,
    create_returns_400_for_a_duplicate_email_in_any_case,
    create_returns_400_listing_every_invalid_field,
    create_returns_400_for_malformed_empty_or_wrongly_typed_json,
    create_returns_413_for_a_body_over_64_kib,
    create_returns_415_for_a_non_json_content_type,
    unknown_paths_and_methods_are_404_and_405_problems,
    get_user_returns_404_for_unknown_or_malformed_ids,
    list_pages_by_key_with_a_next_link,
    list_returns_400_for_a_bad_limit_or_after,
    request_ids_are_echoed_or_generated,
    head_requests_are_answered_without_a_body,
);

async fn health_answers_ok_without_the_database(app: TestApp) {
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap(), json!({"status": "ok"}));
}

async fn ready_answers_ok_when_the_database_answers(app: TestApp) {
    let response = app.get("/ready").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap(), json!({"status": "ok"}));
}

async fn create_returns_201_with_location_and_the_stored_user(app: TestApp) {
    let response = app.create_user("Niccolò Rossi", "niccolo@example.it").await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["content-type"], "application/json");
    let user: serde_json::Value = response.json().await.unwrap();
    assert_eq!(user["name"], "Niccolò Rossi");
    assert_eq!(user["email"], "niccolo@example.it");
    let id = user["id"].as_i64().expect("integer id");
    assert_eq!(location, format!("/users/{id}"));
    let created_at = user["created_at"].as_str().unwrap();
    assert!(time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339).is_ok());
    assert_eq!(user.as_object().unwrap().len(), 4, "exactly id, name, email, created_at: {user}");

    let fetched: serde_json::Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched, user);
}

async fn create_is_also_served_at_post_users(app: TestApp) {
    let response = app.post_json("/users", &json!({"name": "Ada Lovelace", "email": "ada@example.com"})).await;
    assert_eq!(response.status(), 201);
    assert_eq!(app.all_users().await.len(), 1);
}

async fn created_users_are_listed_in_id_order_and_fetchable(app: TestApp) {
    assert_eq!(app.all_users().await, Vec::<serde_json::Value>::new());
    for (name, email) in [
        ("Ada Lovelace", "ada@example.com"),
        ("Alan Turing", "alan@example.com"),
        ("Grace Hopper", "grace@example.com"),
    ] {
        assert_eq!(app.create_user(name, email).await.status(), 201);
    }
    let users = app.all_users().await;
    let names: Vec<&str> = users.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Ada Lovelace", "Alan Turing", "Grace Hopper"]);
    let ids: Vec<i64> = users.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by id: {ids:?}");
    for user in &users {
        let fetched: serde_json::Value = app.get(&format!("/users/{}", user["id"])).await.json().await.unwrap();
        assert_eq!(&fetched, user);
    }
}

async fn create_normalises_the_name_and_lowercases_only_the_email_domain(app: TestApp) {
    let response = app.create_user("  Nicc\u{006F}\u{0300}lo    Rossi ", "  M.Rossi@EXAMPLE.It ").await;
    assert_eq!(response.status(), 201);
    let user: serde_json::Value = response.json().await.unwrap();
    assert_eq!(user["name"], "Niccòlo Rossi");
    assert_eq!(user["email"], "M.Rossi@example.it");
}

async fn create_returns_400_for_a_duplicate_email_in_any_case(app: TestApp) {
    assert_eq!(app.create_user("Mario Rossi", "M.Rossi@X.it").await.status(), 201);
    for duplicate in ["M.Rossi@X.it", "m.rossi@x.it", "M.ROSSI@X.IT", "  m.Rossi@x.iT  "] {
        let body = expect_problem(app.create_user("Other Person", duplicate).await, 400, "email_taken").await;
        assert!(body["detail"].as_str().unwrap().contains("already exists"));
    }
    let users = app.all_users().await;
    assert_eq!(users.len(), 1, "a rejected duplicate leaves the data untouched");
    assert_eq!(users[0]["name"], "Mario Rossi");
}

async fn create_returns_400_listing_every_invalid_field(app: TestApp) {
    let cases = [
        (json!({"name": "Al", "email": "al@example.com"}), vec!["name"]),
        (json!({"name": "R2D2 Robot", "email": "r2@example.com"}), vec!["name"]),
        (json!({"name": "Bob\tSmith", "email": "bob@example.com"}), vec!["name"]),
        (json!({"name": "Eve\u{202E}lyn", "email": "eve@example.com"}), vec!["name"]),
        (json!({"name": "x".repeat(51), "email": "long@example.com"}), vec!["name"]),
        (json!({"name": "Valid Name", "email": "not-an-email"}), vec!["email"]),
        (json!({"name": "Valid Name", "email": "a..b@example.com"}), vec!["email"]),
        (json!({"name": "Valid Name", "email": "user@localhost"}), vec!["email"]),
        (json!({"name": "Valid Name", "email": format!("{}@example.com", "a".repeat(65))}), vec!["email"]),
        (json!({"name": "!!", "email": "@"}), vec!["name", "email"]),
        (json!({"email": "x@example.com"}), vec!["name"]),
        (json!({"name": "Valid Name"}), vec!["email"]),
        (json!({}), vec!["name", "email"]),
        (json!({"name": 42, "email": ["a@b.co"]}), vec!["name", "email"]),
        (json!({"name": null, "email": "x@example.com"}), vec!["name"]),
        (json!(["Valid Name", "x@example.com"]), vec!["body"]),
        (json!("just a string"), vec!["body"]),
    ];
    for (body, fields) in cases {
        let problem = expect_problem(app.post_json("/user", &body).await, 400, "invalid_field").await;
        let reported: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("errors array for {body}: {problem}"))
            .iter()
            .map(|e| {
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
                e["field"].as_str().unwrap()
            })
            .collect();
        assert_eq!(reported, fields, "{body}");
    }
    assert!(app.all_users().await.is_empty(), "nothing invalid was stored");
}

async fn create_returns_400_for_malformed_empty_or_wrongly_typed_json(app: TestApp) {
    for body in ["", "   ", "{", "{\"name\": \"Ada\",}", "nul", "{\"name\":\"Ada Lovelace\" \"email\":\"a@b.co\"}"] {
        expect_problem(app.post_raw("/user", Some("application/json"), body).await, 400, "malformed_json").await;
    }
    let invalid_utf8 = vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'];
    expect_problem(app.post_raw("/user", Some("application/json"), invalid_utf8).await, 400, "malformed_json").await;
    assert!(app.all_users().await.is_empty());
}

async fn create_returns_413_for_a_body_over_64_kib(app: TestApp) {
    let padding = "a".repeat(64 * 1024);
    let body = json!({"name": "Ada Lovelace", "email": "ada@example.com", "padding": padding});
    for _ in 0..20 {
        expect_problem(app.post_json("/user", &body).await, 413, "payload_too_large").await;
    }

    // Without a Content-Length (chunked), the limit still holds while reading. Repeated: the 413
    // must reach the client every time, not be lost to a reset when the server closes with the
    // rest of the body unread (one run in ten before the server drained refused bodies).
    for _ in 0..20 {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
        let stream = futures_util::stream::iter(chunks);
        let response = app
            .client
            .post(app.url("/user"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        expect_problem(response, 413, "payload_too_large").await;
    }
    assert!(app.all_users().await.is_empty());
}

async fn create_returns_415_for_a_non_json_content_type(app: TestApp) {
    let valid = r#"{"name":"Ada Lovelace","email":"ada@example.com"}"#;
    for content_type in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data"), None]
    {
        expect_problem(app.post_raw("/user", content_type, valid).await, 415, "unsupported_media_type").await;
    }
    assert_eq!(app.post_raw("/user", Some("application/json; charset=utf-8"), valid).await.status(), 201);
}

async fn unknown_paths_and_methods_are_404_and_405_problems(app: TestApp) {
    expect_problem(app.get("/nope").await, 404, "not_found").await;
    expect_problem(app.get("/users/1/extra").await, 404, "not_found").await;
    let response = app.client.delete(app.url("/users")).send().await.unwrap();
    let allow = response.headers().get("allow").expect("Allow header").to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    expect_problem(response, 405, "method_not_allowed").await;
    let response = app.client.put(app.url("/user")).send().await.unwrap();
    expect_problem(response, 405, "method_not_allowed").await;
    let response = app.client.post(app.url("/health")).send().await.unwrap();
    expect_problem(response, 405, "method_not_allowed").await;
}

async fn get_user_returns_404_for_unknown_or_malformed_ids(app: TestApp) {
    for path in ["/users/1", "/users/0", "/users/-1", "/users/abc", "/users/99999999999999999999", "/users/1.5"] {
        expect_problem(app.get(path).await, 404, "not_found").await;
    }
}

async fn list_pages_by_key_with_a_next_link(app: TestApp) {
    for i in 0..7 {
        assert_eq!(app.create_user("Page Person", &format!("p{i}@example.com")).await.status(), 201);
    }
    let all = app.all_users().await;
    let mut collected = Vec::new();
    let mut next = Some("/users?limit=3".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        next = response.headers().get("link").map(|link| {
            let link = link.to_str().unwrap();
            assert!(link.ends_with("rel=\"next\""), "{link}");
            link[link.find('<').unwrap() + 1..link.find('>').unwrap()].to_owned()
        });
        let page: Vec<serde_json::Value> = response.json().await.unwrap();
        assert!(page.len() <= 3);
        collected.extend(page);
        pages += 1;
        assert!(pages <= 3, "7 users in pages of 3 take 3 pages");
    }
    assert_eq!(pages, 3);
    assert_eq!(collected, all);

    // `after` alone uses the default page size; past the end is an empty page with no link.
    let last_id = all.last().unwrap()["id"].as_i64().unwrap();
    let response = app.get(&format!("/users?after={last_id}")).await;
    assert!(response.headers().get("link").is_none());
    assert_eq!(response.json::<Vec<serde_json::Value>>().await.unwrap(), Vec::<serde_json::Value>::new());
    // An exact fit has no next link.
    let response = app.get("/users?limit=7").await;
    assert!(response.headers().get("link").is_none());
}

async fn list_returns_400_for_a_bad_limit_or_after(app: TestApp) {
    for query in [
        "limit=0",
        "limit=-1",
        "limit=1001",
        "limit=abc",
        "limit=",
        "after=-5",
        "after=x",
        "limit=2&after=1.5",
        "limit=1&limit=2",
    ] {
        expect_problem(app.get(&format!("/users?{query}")).await, 400, "invalid_query").await;
    }
    assert_eq!(app.get("/users?limit=1000").await.status(), 200);
    assert_eq!(app.get("/users?unrelated=1").await.status(), 200);
}

async fn request_ids_are_echoed_or_generated(app: TestApp) {
    let response = app.client.get(app.url("/health")).header("x-request-id", "trace-abc-123").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");

    let generated = app.get("/health").await.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    // An unreasonable id (too long for a log line) is replaced, not echoed.
    let long = "x".repeat(500);
    let response = app.client.get(app.url("/health")).header("x-request-id", &long).send().await.unwrap();
    let replaced = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(replaced).is_ok(), "a generated id, not {replaced:?}");
}

async fn head_requests_are_answered_without_a_body(app: TestApp) {
    assert_eq!(app.create_user("Head Person", "head@example.com").await.status(), 201);
    // Over a raw socket: an HTTP client never reads a body after HEAD, so only the bytes on the
    // wire can show that none was sent.
    let request = b"HEAD /users HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(app.addr, request, false, Duration::from_secs(10))
        .await
        .expect("exchange")
        .expect("a status line");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.body.is_empty(), "HEAD sent a body: {:?}", String::from_utf8_lossy(&reply.body));
}

#[tokio::test]
async fn postgres_unreachable_gives_503_with_retry_after_quickly() {
    let config = serve_config(&[
        "users-api",
        "--bind-addr",
        "127.0.0.1:0",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test",
        "--skip-migrations",
        "--metrics-addr",
        "off",
        "--database-timeout-secs",
        "1",
    ]);
    let app = TestApp::start(config).await;
    let started = std::time::Instant::now();
    let response = app.create_user("Ada Lovelace", "ada@example.com").await;
    assert!(response.headers().contains_key("retry-after"));
    let body = expect_problem(response, 503, "service_unavailable").await;
    assert!(!body["detail"].as_str().unwrap().contains("127.0.0.1"), "no internals leak: {body}");
    for path in ["/users", "/users/1", "/users?limit=5", "/ready"] {
        expect_problem(app.get(path).await, 503, "service_unavailable").await;
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "503s come quickly, not after a hang");
    assert_eq!(app.get("/health").await.status(), 200, "liveness does not depend on the database");
}

#[tokio::test]
async fn an_unexpected_failure_is_a_generic_500_that_leaks_nothing() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    // Break the schema behind the service's back: inserts now fail in a way no input can cause.
    let path = app.sqlite_path().unwrap();
    let conn = deadpool_sqlite::rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE users").unwrap();
    drop(conn);

    let response = app.create_user("Ada Lovelace", "ada@example.com").await;
    let body = expect_problem(response, 500, "internal_error").await;
    let text = body.to_string();
    assert!(!text.contains("users") && !text.contains("table") && !text.contains("sqlite"), "{text}");
    assert_eq!(body["detail"], "an unexpected error occurred");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_sslmode_require_talks_tls() {
    let schema = PgSchema::create().await;
    let url = format!("{}&sslmode=require", schema.database_url());
    let config =
        serve_config(&["users-api", "--bind-addr", "127.0.0.1:0", "--metrics-addr", "off", "--database-url", &url]);
    let app = TestApp::start(config).await;
    assert_eq!(app.create_user("Tls User", "tls@example.com").await.status(), 201);

    let row = schema
        .admin()
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&schema.application_name],
        )
        .await
        .unwrap();
    let (encrypted, total): (i64, i64) = (row.get(0), row.get(1));
    assert!(total >= 1 && encrypted == total, "{encrypted} of {total} connections use TLS");
    app.stop().await;
    schema.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_refuses_a_server_certificate_the_ca_file_does_not_vouch_for() {
    // A CA that did not sign the server's certificate: verification must fail, quickly, as 503.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not-the-server"])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl runs");
    assert!(status.status.success());
    let url = format!("{}?sslmode=require", kit::pg::PG_ADMIN_URL);
    let ca_arg = ca.to_str().unwrap();
    let config = serve_config(&[
        "users-api",
        "--bind-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "off",
        "--skip-migrations",
        "--database-url",
        &url,
        "--database-ca-file",
        ca_arg,
        "--database-timeout-secs",
        "2",
    ]);
    let app = TestApp::start(config).await;
    expect_problem(app.get("/ready").await, 503, "service_unavailable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_subcommand_exits_0_only_when_health_answers_200() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_users-api"))
                .args(["healthcheck", "--url", &url, "--timeout-secs", "5"])
                .output()
                .expect("healthcheck runs")
        })
    };
    let healthy = probe(app.url("/health")).await.unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));

    let not_found = probe(app.url("/nope")).await.unwrap();
    assert!(!not_found.status.success());
    assert!(String::from_utf8_lossy(&not_found.stderr).contains("404"), "{not_found:?}");

    let nobody = probe(format!("http://127.0.0.1:{}/health", kit::free_port())).await.unwrap();
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("unreachable"), "{nobody:?}");
}
