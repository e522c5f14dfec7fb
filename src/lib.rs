//! users-api: a users service over SQLite or PostgreSQL.

/// Bearer tokens: verification (HS256 secret or JWKS) and minting.
pub mod auth;
/// Command line and environment configuration.
pub mod config;
/// Domain types that parse, not validate: names, emails, users.
pub mod domain;
/// Container health probe (`users-api healthcheck`).
pub mod healthcheck;
/// Routes, extraction, errors and middleware.
pub mod http;
/// JSON strings and timestamps written without serde, for the hot paths.
pub mod json_text;
/// Building and running the HTTP service, graceful shutdown.
pub mod server;
/// Storage back ends: SQLite (group-committing writer) and PostgreSQL.
pub mod store;
/// Logs, metrics and traces.
pub mod telemetry;
