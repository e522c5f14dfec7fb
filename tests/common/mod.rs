//! Black-box harness: the real application on a real socket (port 0), over a temporary
//! SQLite file or a fresh schema in the PostgreSQL at 127.0.0.1:5432.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::sync::oneshot;
use users_api::config::ServeConfig;
use users_api::server::Application;

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The private metrics listener, when on.
    pub metrics_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    sqlite_dir: Option<tempfile::TempDir>,
    postgres_schema: Option<String>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the app; `extra` are additional `serve` flags.
    pub async fn spawn_with(backend: Backend, extra: &[&str]) -> Self {
        let (database_url, sqlite_dir, postgres_schema) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("users.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                admin_execute(&format!("CREATE SCHEMA {schema}")).await;
                let url = format!("{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}");
                (url, None, Some(schema))
            }
        };
        let mut args = vec![
            "users-api",
            "--bind-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--database-url",
            &database_url,
        ];
        args.extend_from_slice(extra);
        let mut app = Self::start(serve_config(&args)).await;
        app.sqlite_dir = sqlite_dir;
        app.postgres_schema = postgres_schema;
        app
    }

    /// Starts the app with a fully specified configuration.
    pub async fn start(config: ServeConfig) -> Self {
        let database_url = config.database.database_url.clone();
        let application = Application::build(config).await.expect("application builds");
        let addr = application.local_addr();
        let metrics_addr = application.metrics_addr();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async {
            let _ = signal.await;
        }));
        Self {
            addr,
            metrics_addr,
            client: reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client"),
            database_url,
            shutdown: Some(shutdown),
            server: Some(server),
            sqlite_dir: None,
            postgres_schema: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The SQLite file behind this app, when it runs on SQLite.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self.sqlite_dir.as_ref().map(|d| d.path().join("users.db"))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request sent")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send().await.expect("request sent")
    }

    pub async fn create_user(&self, name: &str, email: &str) -> reqwest::Response {
        self.post_json("/user", &serde_json::json!({"name": name, "email": email})).await
    }

    pub async fn all_users(&self) -> Vec<serde_json::Value> {
        let response = self.get("/users").await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("a JSON array")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server exits cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(schema) = self.postgres_schema.take() {
            // Drop cannot await: clean up on a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(admin_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")));
            })
            .join();
        }
    }
}

pub fn serve_config(args: &[&str]) -> ServeConfig {
    ServeConfig::from_args(args).expect("valid test flags")
}

/// Runs SQL as the PostgreSQL superuser; fails the test loudly when PostgreSQL is down.
pub async fn admin_execute(sql: &str) {
    let (client, connection) = tokio_postgres::connect(POSTGRES_ADMIN_URL, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at 127.0.0.1:5432 for these tests: {e}"));
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = task.await;
}

/// Asserts a problem+json answer with this status and code; returns the body.
pub async fn expect_problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response.headers().get("content-type").expect("content type").to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let header_id = response.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(), "{body}");
    assert_eq!(body["request_id"], header_id.as_str(), "problem carries the request id");
    body
}

/// Defines each listed scenario (`async fn(TestApp)`) once per store:
/// `sqlite::<name>` and `postgres::<name>`.
#[macro_export]
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::TestApp::spawn($crate::common::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::TestApp::spawn($crate::common::Backend::Postgres).await).await;
                }
            )*
        }
    };
}
