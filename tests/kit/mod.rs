//! The black-box test kit: the real service on a real socket, over a real SQLite file or the
//! real PostgreSQL, and the clients, fault injectors and load that drive it.
//!
//! - [`app`]: the application in-process on port 0 (`TestApp`, `on_both_stores!`);
//! - [`process`]: the `users-api` binary as a child process (`Server`), to signal and kill;
//! - [`pg`]: a schema per test in the shared PostgreSQL, private clusters (`PgCluster`);
//! - [`sqlite`]: temporary database files, an operator's check of one, a WAL whose `fsync` fails;
//! - [`http`]: clients, raw HTTP exchanges, problem+json assertions, list helpers;
//! - [`load`]: mixed load generation, percentiles, the serial lock, reported figures.
#![allow(dead_code, unused_imports)]

pub mod app;
pub mod http;
pub mod load;
pub mod pg;
pub mod process;
pub mod sqlite;

/// A random lowercase hex tag, for unique schema names, emails and application names.
pub fn random_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding port 0").port()
}
