//! The ceilings for the benchmarks: bare axum on the same tokio runtime flavour
//! (multi-threaded, `#[tokio::main]`) and the same axum version as the service. No middleware,
//! no logging, no database.
//!
//! - `GET /health`: 200 `{"status":"ok"}`, the HTTP ceiling.
//! - `GET /users?limit=100`: 100 users held in memory serialised on every request, with the
//!   `Link` header of a page: the ceiling of the list, what is left once storage costs nothing.
//! - `POST /user`: the body read as JSON and answered 201 with the user, numbered in memory: the
//!   ceiling of a create under the same load script, with no validation and no storage.
//!
//! `cargo build --release --example hello && BIND_ADDR=127.0.0.1:8001 target/release/examples/hello`

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LINK, LOCATION};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const PAGE_SIZE: i64 = 100;

/// The service's user representation: the same fields, names and string shapes.
#[derive(Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    created_at: String,
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:8001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    let app = Router::new()
        .route("/health", get(health))
        .route("/users", get(list_page))
        .route("/user", post(create_user))
        .with_state(Arc::new(page_of_users()));
    axum::serve(listener, app).await.expect("serving");
}

/// The same handler body as the service's liveness probe.
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Shaped like the rows bench/run seeds, so the body is as long as the service's page.
fn page_of_users() -> Vec<User> {
    (1..=PAGE_SIZE)
        .map(|i| User {
            id: i,
            name: "Bench User".to_owned(),
            email: format!("User{i}@example.com"),
            created_at: format!("2026-01-01T00:00:00.{:06}Z", i % 1_000_000),
        })
        .collect()
}

/// Serialises the whole page per request, as the service must (its rows change); query ignored.
async fn list_page(State(users): State<Arc<Vec<User>>>) -> impl IntoResponse {
    let body = serde_json::to_vec(users.as_slice()).expect("users serialise");
    let next = format!("</users?limit={PAGE_SIZE}&after={PAGE_SIZE}>; rel=\"next\"");
    ([(CONTENT_TYPE, "application/json".to_owned()), (LINK, next)], body)
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    email: String,
}

static NEXT_ID: AtomicI64 = AtomicI64::new(1);

/// Answers what the service answers, without checking or keeping anything.
async fn create_user(Json(new): Json<NewUser>) -> impl IntoResponse {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let user = User { id, name: new.name, email: new.email, created_at: "2026-01-01T00:00:00.000000Z".to_owned() };
    (StatusCode::CREATED, [(LOCATION, format!("/users/{id}"))], Json(user))
}
