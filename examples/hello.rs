//! The HTTP ceiling for the benchmarks: a bare axum hello-world on the same tokio runtime
//! flavour (multi-threaded, `#[tokio::main]`) and the same axum version as the service.
//! It answers `GET /health` with 200 `{"status":"ok"}` and nothing else: no middleware,
//! no logging, no state.
//!
//! `cargo build --release --example hello && BIND_ADDR=127.0.0.1:8001 target/release/examples/hello`

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let addr = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:8001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    let app = Router::new().route("/health", get(health));
    axum::serve(listener, app).await.expect("serving");
}

/// The same handler body as the service's liveness probe.
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
