//! Idempotency-Key on POST /user and POST /users, on both stores: replays, reused keys,
//! malformed keys, concurrent first uses, retention and purge, subject scoping.

mod kit;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kit::app::{Backend, TestApp};
use kit::http::{expect_problem, user_body};
use users_api::auth::{Claims, mint, now};

const SECRET: &str = "idempotency-test-secret-at-least-32-bytes";

/// Defines each listed scenario (`async fn(Backend)`, for scenarios that start their own app)
/// once per store.
macro_rules! per_store {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_replay_gets_the_original_status_body_and_location_and_creates_nothing,
    the_same_key_with_another_body_or_path_is_422_and_stores_nothing,
    malformed_keys_are_400_and_store_nothing,
    a_request_refused_for_its_body_leaves_the_key_free,
    twenty_concurrent_first_uses_of_one_key_create_one_user,
    a_duplicate_email_answer_is_replayed_as_email_taken,
    posts_without_a_key_are_not_deduplicated,
);

per_store!(a_key_is_free_again_after_the_retention_and_expired_keys_are_purged, keys_are_scoped_to_the_token_subject);

async fn post_keyed(app: &TestApp, path: &str, key: &str, body: &serde_json::Value) -> reqwest::Response {
    app.client.post(app.url(path)).header("idempotency-key", key).json(body).send().await.expect("request sent")
}

/// Status, body bytes, Location and Idempotent-Replayed of an answer.
async fn answer(response: reqwest::Response) -> (u16, Vec<u8>, Option<String>, Option<String>) {
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (location, replayed) = (header("location"), header("idempotent-replayed"));
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec(), location, replayed)
}

/// Rows of the idempotency table, read from the database itself.
async fn stored_keys(app: &TestApp) -> i64 {
    if let Some(schema) = app.pg_schema() {
        let sql = format!("SELECT count(*) FROM {}.idempotency_keys", schema.schema);
        return schema.admin().query_one(&sql, &[]).await.expect("count keys").get(0);
    }
    let path = app.sqlite_path().expect("an app runs on SQLite or PostgreSQL");
    let conn = deadpool_sqlite::rusqlite::Connection::open(path).expect("SQLite file opens");
    conn.query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0)).expect("count keys")
}

async fn a_replay_gets_the_original_status_body_and_location_and_creates_nothing(app: TestApp) {
    let body = user_body("Ada Lovelace", "ada@example.com");
    let (status, first, location, replayed) = answer(post_keyed(&app, "/user", "\"order-1\"", &body).await).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&first));
    assert_eq!(replayed, None, "the first answer is not a replay");
    let created: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(location.as_deref(), Some(format!("/users/{}", created["id"]).as_str()));

    // The quoted and the bare spelling name one key.
    for key in ["\"order-1\"", "order-1"] {
        let (status, again, again_location, replayed) = answer(post_keyed(&app, "/user", key, &body).await).await;
        assert_eq!(status, 201);
        assert_eq!(again, first, "the replayed body is the original, byte for byte");
        assert_eq!(again_location, location);
        assert_eq!(replayed.as_deref(), Some("true"));
    }
    assert_eq!(app.all_users().await.len(), 1, "one user, however often the request is sent");
    assert_eq!(stored_keys(&app).await, 1);
}

async fn the_same_key_with_another_body_or_path_is_422_and_stores_nothing(app: TestApp) {
    let first = post_keyed(&app, "/user", "k-1", &user_body("Ada Lovelace", "ada@example.com")).await;
    assert_eq!(first.status(), 201);
    let other_body = post_keyed(&app, "/user", "k-1", &user_body("Grace Hopper", "grace@example.com")).await;
    expect_problem(other_body, 422, "idempotency_key_reused").await;
    let other_path = post_keyed(&app, "/users", "k-1", &user_body("Ada Lovelace", "ada@example.com")).await;
    expect_problem(other_path, 422, "idempotency_key_reused").await;

    // One body spelled differently (the email's domain in capitals) is the same request.
    let respelled = post_keyed(&app, "/user", "k-1", &user_body("  Ada Lovelace ", "ada@EXAMPLE.com")).await;
    assert_eq!(respelled.status(), 201);
    assert_eq!(respelled.headers()["idempotent-replayed"], "true");

    let users = app.all_users().await;
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0]["email"], "ada@example.com");
    assert_eq!(stored_keys(&app).await, 1);
}

async fn malformed_keys_are_400_and_store_nothing(app: TestApp) {
    let too_long = "k".repeat(256);
    let quoted_too_long = format!("\"{too_long}\"");
    let malformed: [&[u8]; 8] = [
        b"",
        b"\"\"",
        too_long.as_bytes(),
        quoted_too_long.as_bytes(),
        b"\"unterminated",
        b"\"tab\there\"",
        b"bare\ttab",
        b"\"caf\xc3\xa9\"",
    ];
    for (n, raw) in malformed.into_iter().enumerate() {
        let response = app
            .client
            .post(app.url("/user"))
            .header("idempotency-key", reqwest::header::HeaderValue::from_bytes(raw).unwrap())
            .json(&user_body("Key Tester", &format!("tester{n}@example.com")))
            .send()
            .await
            .unwrap();
        expect_problem(response, 400, "invalid_idempotency_key").await;
    }
    let twice = app
        .client
        .post(app.url("/user"))
        .header("idempotency-key", "\"a\"")
        .header("idempotency-key", "\"b\"")
        .json(&user_body("Key Tester", "twice@example.com"))
        .send()
        .await
        .unwrap();
    expect_problem(twice, 400, "invalid_idempotency_key").await;

    assert_eq!(app.all_users().await.len(), 0, "a malformed key stores no user");
    assert_eq!(stored_keys(&app).await, 0);
    // The longest key accepted is 255 characters.
    let longest = "k".repeat(255);
    assert_eq!(
        post_keyed(&app, "/user", &longest, &user_body("Key Tester", "longest@example.com")).await.status(),
        201
    );
}

async fn a_request_refused_for_its_body_leaves_the_key_free(app: TestApp) {
    let invalid = post_keyed(&app, "/user", "k-2", &user_body("R2D2", "r2@example.com")).await;
    expect_problem(invalid, 400, "invalid_field").await;
    assert_eq!(stored_keys(&app).await, 0, "only definite answers (201, email_taken) are stored");
    let valid = post_keyed(&app, "/user", "k-2", &user_body("Artoo Detoo", "r2@example.com")).await;
    assert_eq!(valid.status(), 201);
    assert!(valid.headers().get("idempotent-replayed").is_none());
}

async fn twenty_concurrent_first_uses_of_one_key_create_one_user(app: TestApp) {
    let body = user_body("Race Runner", "race@example.com");
    let requests = (0..20).map(|_| async { answer(post_keyed(&app, "/user", "\"race-key\"", &body).await).await });
    let answers = join_all(requests).await;
    let created: Vec<_> = answers.iter().filter(|(status, ..)| *status == 201).collect();
    assert!(!created.is_empty(), "{answers:?}");
    let bodies: HashSet<&Vec<u8>> = created.iter().map(|(_, body, ..)| body).collect();
    assert_eq!(bodies.len(), 1, "every 201 is the one original answer");
    assert_eq!(created.iter().filter(|(.., replayed)| replayed.is_none()).count(), 1, "one original answer");
    for (status, body, ..) in &answers {
        if *status != 201 {
            assert_eq!(*status, 409, "{}", String::from_utf8_lossy(body));
            let problem: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(problem["code"], "idempotency_key_in_use");
        }
    }
    assert_eq!(app.all_users().await.len(), 1, "exactly one user");
    assert_eq!(stored_keys(&app).await, 1);
    // Once the first is done, the key answers with the stored 201.
    let (status, again, _, replayed) = answer(post_keyed(&app, "/user", "\"race-key\"", &body).await).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert!(bodies.contains(&again));
}

async fn a_duplicate_email_answer_is_replayed_as_email_taken(app: TestApp) {
    assert_eq!(app.create_user("First Owner", "owner@example.com").await.status(), 201);
    let body = user_body("Second Owner", "owner@example.com");
    let first = post_keyed(&app, "/user", "dup-1", &body).await;
    let original = expect_problem(first, 400, "email_taken").await;
    let replay = post_keyed(&app, "/user", "dup-1", &body).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.status(), 400);
    assert_eq!(replay.headers()["content-type"], "application/problem+json");
    let replayed: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(replayed, original, "the stored problem, including the first request's id");
    assert_eq!(app.all_users().await.len(), 1);
    assert_eq!(stored_keys(&app).await, 1);
}

async fn posts_without_a_key_are_not_deduplicated(app: TestApp) {
    assert_eq!(app.create_user("Plain Poster", "plain1@example.com").await.status(), 201);
    assert_eq!(app.create_user("Plain Poster", "plain2@example.com").await.status(), 201);
    assert_eq!(stored_keys(&app).await, 0, "no key, no row");
}

async fn a_key_is_free_again_after_the_retention_and_expired_keys_are_purged(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--idempotency-retention", "1s"]).await;
    let first = post_keyed(&app, "/user", "short-lived", &user_body("Early Bird", "early@example.com")).await;
    assert_eq!(first.status(), 201);
    for n in 0..3 {
        let body = user_body("Other Bird", &format!("o{n}@example.com"));
        assert_eq!(post_keyed(&app, "/user", &format!("other-{n}"), &body).await.status(), 201);
    }
    assert_eq!(stored_keys(&app).await, 4);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Past the retention, the key is new: another body creates another user, no 422.
    let reused = post_keyed(&app, "/user", "short-lived", &user_body("Late Bird", "late@example.com")).await;
    assert_eq!(reused.status(), 201);
    assert!(reused.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.all_users().await.len(), 5);

    // The purge (every second at this retention) deletes every expired row.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let left = stored_keys(&app).await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < give_up, "{left} expired keys still stored after 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.all_users().await.len(), 5, "the purge deletes keys, never users");
}

fn token(subject: &str) -> String {
    let claims = Claims {
        sub: Some(subject.into()),
        exp: now() + 600,
        iat: Some(now()),
        iss: None,
        aud: None,
        scope: "users:read users:write".into(),
        client_id: None,
        token_use: None,
    };
    mint(SECRET.as_bytes(), &claims).unwrap()
}

async fn keys_are_scoped_to_the_token_subject(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--auth-jwt-secret", SECRET]).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let post = |bearer: &str, email: &str| {
        app.client
            .post(app.url("/user"))
            .bearer_auth(bearer)
            .header("idempotency-key", "\"shared-key\"")
            .json(&user_body("Scoped Person", email))
            .send()
    };
    let alices = post(&alice, "alice@example.com").await.unwrap();
    assert_eq!(alices.status(), 201);
    let alices: serde_json::Value = alices.json().await.unwrap();
    // Bob's key of the same name is his own: a new user, not Alice's answer nor a 422.
    let bobs = post(&bob, "bob@example.com").await.unwrap();
    assert_eq!(bobs.status(), 201);
    assert!(bobs.headers().get("idempotent-replayed").is_none());
    let bobs: serde_json::Value = bobs.json().await.unwrap();
    assert_ne!(alices["id"], bobs["id"]);

    let alice_again = post(&alice, "alice@example.com").await.unwrap();
    assert_eq!(alice_again.headers()["idempotent-replayed"], "true");
    assert_eq!(alice_again.json::<serde_json::Value>().await.unwrap(), alices);
    expect_problem(post(&bob, "alice@example.com").await.unwrap(), 422, "idempotency_key_reused").await;
    assert_eq!(stored_keys(&app).await, 2);
}

/// A keyed create while PostgreSQL does not answer is a 503 that stores neither the user nor
/// the key; the retry with the same key, once the database is back, creates the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_create_answered_503_during_a_postgres_freeze_stores_nothing_and_the_retry_creates() {
    let cluster = tokio::task::spawn_blocking(kit::pg::PgCluster::init).await.expect("initdb");
    let url = cluster.database_url(&format!("idem-{}", kit::random_tag()));
    let args = [
        "users-api",
        "--bind-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "off",
        "--database-url",
        &url,
        "--database-timeout-secs",
        "1",
        "--request-timeout-secs",
        "5",
    ];
    let app = TestApp::start(kit::app::serve_config(&args)).await;
    let body = user_body("Frozen Writer", "frozen@example.com");
    // A connection in the pool, so the freeze hits a statement rather than a connect.
    assert_eq!(app.create_user("Warm Up", "warm@example.com").await.status(), 201);

    assert!(cluster.freeze() > 1, "froze the postmaster and its children");
    let during = post_keyed(&app, "/user", "frozen-key", &body).await;
    cluster.thaw();
    let status = during.status().as_u16();
    assert_eq!(status, 503, "{}", during.text().await.unwrap());

    let admin = kit::pg::pg_connect("127.0.0.1", cluster.port, "postgres").await;
    let count = |sql: &'static str| {
        let admin = &admin;
        async move { admin.query_one(sql, &[]).await.expect("count").get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM idempotency_keys").await, 0, "a 503 stores no key");
    assert_eq!(count("SELECT count(*) FROM users WHERE email = 'frozen@example.com'").await, 0, "nor a user");

    let retry = post_keyed(&app, "/user", "frozen-key", &body).await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none(), "the retry is the first answer");
    assert_eq!(count("SELECT count(*) FROM idempotency_keys").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_header_and_its_answers_on_both_post_paths() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in ["/user", "/users"] {
        let post = &doc["paths"][path]["post"];
        let parameters = post["parameters"].as_array().unwrap_or_else(|| panic!("{path}: no parameters"));
        assert!(
            parameters.iter().any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header" && p["required"] == false),
            "{path}: {parameters:?}"
        );
        for status in ["409", "422"] {
            assert!(post["responses"][status].is_object(), "{path}: no {status} response");
        }
        assert!(post["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object(), "{path}");
    }
}
