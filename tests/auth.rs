//! Authentication matrix: each endpoint × {no token, bad signature, expired, wrong audience,
//! missing scope, good token}, on a live instance with HS256, issuer and audience configured.

mod kit;

use kit::app::{Backend, TestApp};
use kit::http::expect_problem;
use users_api::auth::{Claims, mint, now};

const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "users-api";

fn token(scope: &str, exp: u64, audience: &str, secret: &str) -> String {
    let claims = Claims {
        sub: Some("matrix".into()),
        exp,
        iat: Some(now()),
        iss: Some(ISSUER.into()),
        aud: Some(audience.into()),
        scope: scope.into(),
        client_id: None,
        token_use: None,
    };
    mint(secret.as_bytes(), &claims).unwrap()
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(
        Backend::Sqlite,
        &["--auth-jwt-secret", SECRET, "--auth-issuer", ISSUER, "--auth-audience", AUDIENCE],
    )
    .await
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    ListAll,
    ListPage,
    GetOne,
    CreateAtUser,
    CreateAtUsers,
}

impl Endpoint {
    const ALL: [Endpoint; 5] = [Self::ListAll, Self::ListPage, Self::GetOne, Self::CreateAtUser, Self::CreateAtUsers];

    fn scope(self) -> &'static str {
        match self {
            Self::ListAll | Self::ListPage | Self::GetOne => "users:read",
            Self::CreateAtUser | Self::CreateAtUsers => "users:write",
        }
    }

    fn other_scope(self) -> &'static str {
        if self.scope() == "users:read" { "users:write" } else { "users:read" }
    }

    async fn call(self, app: &TestApp, bearer: Option<&str>, n: usize) -> reqwest::Response {
        let body = serde_json::json!({"name": "Token Holder", "email": format!("holder{n}@example.com")});
        let request = match self {
            Self::ListAll => app.client.get(app.url("/users")),
            Self::ListPage => app.client.get(app.url("/users?limit=5")),
            Self::GetOne => app.client.get(app.url("/users/1")),
            Self::CreateAtUser => app.client.post(app.url("/user")).json(&body),
            Self::CreateAtUsers => app.client.post(app.url("/users")).json(&body),
        };
        let request = match bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request.send().await.unwrap()
    }

    fn success(self) -> u16 {
        match self {
            Self::CreateAtUser | Self::CreateAtUsers => 201,
            _ => 200,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_kind_of_token_as_documented() {
    let app = spawn().await;
    let good_all = token("users:read users:write", now() + 300, AUDIENCE, SECRET);
    // A user with id 1 exists so that GET /users/1 can succeed.
    let seeded = app
        .client
        .post(app.url("/user"))
        .bearer_auth(&good_all)
        .json(&serde_json::json!({"name": "First User", "email": "first@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(seeded.status(), 201);

    let mut n = 0;
    for endpoint in Endpoint::ALL {
        let cases: [(&str, Option<String>, u16, &str); 6] = [
            ("no token", None, 401, "unauthorized"),
            (
                "bad signature",
                Some(token(endpoint.scope(), now() + 300, AUDIENCE, "a-different-secret-of-at-least-32-bytes")),
                401,
                "unauthorized",
            ),
            ("expired", Some(token(endpoint.scope(), now() - 600, AUDIENCE, SECRET)), 401, "unauthorized"),
            ("wrong audience", Some(token(endpoint.scope(), now() + 300, "someone-else", SECRET)), 401, "unauthorized"),
            (
                "missing scope",
                Some(token(endpoint.other_scope(), now() + 300, AUDIENCE, SECRET)),
                403,
                "insufficient_scope",
            ),
            ("good", Some(token(endpoint.scope(), now() + 300, AUDIENCE, SECRET)), endpoint.success(), ""),
        ];
        for (case, bearer, status, code) in cases {
            n += 1;
            let response = endpoint.call(&app, bearer.as_deref(), n).await;
            let context = format!("{endpoint:?} with {case}");
            if code.is_empty() {
                assert_eq!(response.status().as_u16(), status, "{context}");
                continue;
            }
            let challenge = response
                .headers()
                .get("www-authenticate")
                .unwrap_or_else(|| panic!("{context}: WWW-Authenticate"))
                .to_str()
                .unwrap()
                .to_owned();
            assert!(challenge.starts_with("Bearer"), "{context}: {challenge}");
            if status == 403 {
                assert!(challenge.contains("insufficient_scope") && challenge.contains(endpoint.scope()), "{context}");
            }
            expect_problem(response, status, code).await;
        }
    }
    // Only the seeded user and the two good creates exist: refused writes stored nothing.
    let all: Vec<serde_json::Value> =
        app.client.get(app.url("/users")).bearer_auth(&good_all).send().await.unwrap().json().await.unwrap();
    assert_eq!(all.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_the_openapi_document_stay_open() {
    let app = spawn().await;
    for path in ["/health", "/ready", "/openapi.json"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["paths"]["/user"]["post"]["security"][0]["bearer"][0], "users:write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_headers_are_401() {
    let app = spawn().await;
    for header in
        ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer not.a.jwt", "Bearer a.b", "bearer x.y.z", "Token abc"]
    {
        let response = app.client.get(app.url("/users")).header("authorization", header).send().await.unwrap();
        expect_problem(response, 401, "unauthorized").await;
    }
    // alg "none" with a valid-looking payload is refused.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjk5OTk5OTk5OTksInNjb3BlIjoidXNlcnM6cmVhZCIsImF1ZCI6InVzZXJzLWFwaSIsImlzcyI6Imh0dHBzOi8vaXNzdWVyLnRlc3QifQ.";
    let response = app.client.get(app.url("/users")).bearer_auth(none).send().await.unwrap();
    expect_problem(response, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_configured_the_document_declares_no_security() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["components"]["securitySchemes"].is_null(), "{}", doc["components"]);
    assert!(doc["paths"]["/user"]["post"]["security"].is_null());
    assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    assert!(doc["paths"]["/users"]["post"].is_object(), "POST /users is documented too");
    assert_eq!(app.get("/docs/").await.status(), 200, "the docs page is served from vendored assets");
}

#[test]
fn the_token_subcommand_refuses_an_absurd_ttl_with_a_clear_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_users-api"))
        .args(["token", "--ttl", "99999999999d"])
        .env("AUTH_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("--ttl") && stderr.contains("longest lifetime accepted"), "{stderr}");
    assert!(output.stdout.is_empty(), "no token printed");
}

#[test]
fn the_token_subcommand_mints_a_token_the_service_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_users-api"))
        .args(["token", "--scope", "users:read", "--ttl", "5m"])
        .env("AUTH_JWT_SECRET", SECRET)
        .env("AUTH_ISSUER", ISSUER)
        .env("AUTH_AUDIENCE", AUDIENCE)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = spawn().await;
        let ok = app.client.get(app.url("/users")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let write = app
            .client
            .post(app.url("/user"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "Reader Only", "email": "r@example.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(write.status(), 403);
    });

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_users-api"))
        .args(["token"])
        .env("AUTH_JWT_SECRET", "short")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a short secret is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_auth_settings_leave_authentication_off() {
    // Compose passes `${AUTH_JWT_SECRET:-}` through as an empty value.
    let app = TestApp::spawn_with(Backend::Sqlite, &["--auth-jwt-secret", "", "--auth-audience", ""]).await;
    assert_eq!(app.get("/users").await.status(), 200);
}
