//! Authentication against a JWKS (as with Amazon Cognito): ES256 tokens verified with keys
//! fetched from a JWKS server on loopback, and the forgeries such a setup must refuse.

mod kit;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::app::{Backend, TestApp};
use kit::http::expect_problem;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};
use users_api::auth::{Claims, now};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "users-api";
const KID: &str = "test-key-1";

/// A fixed P-256 key (any scalar below the group order is one); `seed` picks which.
fn signing_key(seed: u8) -> p256::SecretKey {
    p256::SecretKey::from_slice(&[seed; 32]).expect("a valid P-256 scalar")
}

fn jwks(key: &p256::SecretKey) -> Value {
    let mut jwk: Value = serde_json::from_str(&key.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = json!(KID);
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    json!({ "keys": [jwk] })
}

fn claims(scope: &str, audience: &str) -> Claims {
    Claims {
        sub: Some("jwks".into()),
        exp: now() + 300,
        iat: Some(now()),
        iss: Some(ISSUER.into()),
        aud: Some(audience.into()),
        scope: scope.into(),
        client_id: None,
        token_use: None,
    }
}

fn es256(key: &p256::SecretKey, kid: Option<&str>, claims: &impl serde::Serialize) -> String {
    let der = key.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
}

/// Serves `keys` at /jwks.json on a free loopback port; counts the fetches.
async fn jwks_server(keys: Value) -> (String, Arc<AtomicUsize>) {
    let (url, fetches, _) = slow_jwks_server(keys, Duration::ZERO).await;
    (url, fetches)
}

/// As `jwks_server`, each answer `delay` late; the keys served can be swapped (rotation).
async fn slow_jwks_server(keys: Value, delay: Duration) -> (String, Arc<AtomicUsize>, Arc<Mutex<Value>>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(Mutex::new(keys));
    let (counter, current) = (fetches.clone(), served.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let keys = current.lock().unwrap().clone();
            async move {
                tokio::time::sleep(delay).await;
                Json(keys)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fetches, served)
}

/// A page, not the full-list download: twenty of those at once would meet MAX_LIST_STREAMS (16).
async fn get_users(app: &TestApp, token: &str) -> reqwest::Response {
    app.client.get(app.url("/users?limit=100")).bearer_auth(token).send().await.unwrap()
}

async fn create_user(app: &TestApp, token: &str, email: &str) -> reqwest::Response {
    let body = json!({"name": "Key Holder", "email": email});
    app.client.post(app.url("/user")).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn es256_tokens_are_verified_against_the_jwks_and_forgeries_refused() {
    let key = signing_key(7);
    let (url, fetches) = jwks_server(jwks(&key)).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &["--auth-jwks-url", &url, "--auth-issuer", ISSUER, "--auth-audience", AUDIENCE],
    )
    .await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the keys are fetched once at start");

    let good = es256(&key, Some(KID), &claims("users:read users:write", AUDIENCE));
    assert_eq!(get_users(&app, &good).await.status(), 200);
    assert_eq!(create_user(&app, &good, "holder@example.com").await.status(), 201);

    let read_only = es256(&key, Some(KID), &claims("users:read", AUDIENCE));
    expect_problem(create_user(&app, &read_only, "other@example.com").await, 403, "insufficient_scope").await;

    let forgeries = [
        (
            "signed by another key under the same kid",
            es256(&signing_key(9), Some(KID), &claims("users:read", AUDIENCE)),
        ),
        ("no kid", es256(&key, None, &claims("users:read", AUDIENCE))),
        ("an unknown kid", es256(&key, Some("other-key"), &claims("users:read", AUDIENCE))),
        ("another audience", es256(&key, Some(KID), &claims("users:read", "someone-else"))),
        ("HS256 keyed with the public JWK (algorithm confusion)", {
            let public = jwks(&key)["keys"][0].to_string();
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(KID.into());
            let claims = claims("users:read", AUDIENCE);
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(public.as_bytes())).unwrap()
        }),
        ("alg none", {
            let unsigned = good.rsplit_once('.').unwrap().0.to_owned();
            let payload = unsigned.split_once('.').unwrap().1;
            format!("eyJhbGciOiJub25lIiwia2lkIjoidGVzdC1rZXktMSJ9.{payload}.")
        }),
    ];
    for (what, token) in &forgeries {
        let response = get_users(&app, token).await;
        assert_eq!(response.status(), 401, "a token {what} must be refused");
        assert!(response.headers().contains_key("www-authenticate"), "{what}: WWW-Authenticate");
    }
    // An unknown kid may trigger one refetch (key rotation), not one per request.
    assert!(fetches.load(Ordering::SeqCst) <= 2, "JWKS fetched {} times", fetches.load(Ordering::SeqCst));
    let users: Vec<Value> = get_users(&app, &good).await.json().await.unwrap();
    assert_eq!(users.len(), 1, "only the authorised create stored a user");
}

/// What Amazon Cognito issues: an access token names the app client in `client_id` (no `aud`),
/// says `token_use: access`, and carries custom scopes under the resource server's identifier.
fn cognito_access_token(key: &p256::SecretKey, scope: &str, client_id: &str) -> String {
    let now = now();
    let claims = json!({
        "sub": "cognito-user", "iss": ISSUER, "client_id": client_id, "token_use": "access",
        "scope": scope, "iat": now, "exp": now + 3600, "auth_time": now, "jti": "x", "username": "ada",
    });
    es256(key, Some(KID), &claims)
}

#[tokio::test]
async fn cognito_access_tokens_audience_arrays_scope_prefixes_and_lifetimes() {
    let key = signing_key(7);
    let (url, _) = jwks_server(jwks(&key)).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            "--auth-jwks-url",
            &url,
            "--auth-issuer",
            ISSUER,
            "--auth-audience",
            AUDIENCE,
            "--auth-scope-prefix",
            "users-api/",
        ],
    )
    .await;
    let both = "users-api/users:read users-api/users:write";

    let access = cognito_access_token(&key, both, AUDIENCE);
    assert_eq!(get_users(&app, &access).await.status(), 200);
    assert_eq!(create_user(&app, &access, "cognito@example.com").await.status(), 201);
    let read_only = cognito_access_token(&key, "openid users-api/users:read", AUDIENCE);
    assert_eq!(get_users(&app, &read_only).await.status(), 200);
    expect_problem(create_user(&app, &read_only, "ro@example.com").await, 403, "insufficient_scope").await;
    let unprefixed = cognito_access_token(&key, "users:read users:write", AUDIENCE);
    expect_problem(get_users(&app, &unprefixed).await, 403, "insufficient_scope").await;

    let array_aud = |auds: Value| {
        let now = now();
        es256(
            &key,
            Some(KID),
            &json!({"sub": "x", "iss": ISSUER, "aud": auds, "scope": both, "iat": now, "exp": now + 60}),
        )
    };
    assert_eq!(get_users(&app, &array_aud(json!(["another-api", AUDIENCE]))).await.status(), 200);

    let day = 86_400;
    let now = now();
    let refused = [
        ("an access token of another app client", cognito_access_token(&key, both, "another-client")),
        ("an array audience without us", array_aud(json!(["another-api", "a-third"]))),
        ("an ID token, even addressed to us", {
            let claims = json!({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "token_use": "id", "scope": both, "iat": now, "exp": now + 60});
            es256(&key, Some(KID), &claims)
        }),
        ("client_id without token_use", {
            let claims =
                json!({"sub": "x", "iss": ISSUER, "client_id": AUDIENCE, "scope": both, "iat": now, "exp": now + 60});
            es256(&key, Some(KID), &claims)
        }),
        ("a lifetime of 2 days (default maximum 24 h)", {
            let claims =
                json!({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "scope": both, "iat": now, "exp": now + 2 * day});
            es256(&key, Some(KID), &claims)
        }),
        ("no iat and an expiry 10 years away", {
            let claims = json!({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "scope": both, "exp": now + 3650 * day});
            es256(&key, Some(KID), &claims)
        }),
    ];
    for (what, token) in &refused {
        expect_problem(get_users(&app, token).await, 401, "unauthorized").await;
        assert_eq!(create_user(&app, token, "refused@example.com").await.status(), 401, "{what}");
    }
    let users: Vec<Value> = get_users(&app, &access).await.json().await.unwrap();
    assert_eq!(users.len(), 1, "only the authorised create stored a user");
}

#[tokio::test]
async fn requests_with_a_rotated_key_share_one_jwks_fetch_and_all_succeed() {
    let (old_key, new_key) = (signing_key(7), signing_key(11));
    let (url, fetches, served) = slow_jwks_server(jwks(&old_key), Duration::from_millis(400)).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &["--auth-jwks-url", &url, "--auth-issuer", ISSUER, "--auth-audience", AUDIENCE],
    )
    .await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once at start");

    // The issuer rotates: the new key under a new kid; tokens signed with it arrive at once.
    let mut rotated = jwks(&new_key);
    rotated["keys"][0]["kid"] = json!("rotated-key");
    *served.lock().unwrap() = rotated;
    let token = es256(&new_key, Some("rotated-key"), &claims("users:read", AUDIENCE));
    let requests = (0..20).map(|_| get_users(&app, &token));
    let statuses: Vec<u16> =
        futures_util::future::join_all(requests).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200; 20], "every request waits for the one fetch and uses its keys");
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "one fetch for all twenty");
}
