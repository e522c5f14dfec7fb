//! The application in-process: `Application::build` on port 0, over a temporary SQLite file or
//! a fresh schema in the shared PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::oneshot;
use users_api::config::ServeConfig;
use users_api::server::Application;

use super::pg::PgSchema;
use super::sqlite::TempSqlite;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database a `TestApp` owns and removes when it is dropped.
enum OwnedDatabase {
    Sqlite(TempSqlite),
    Postgres(PgSchema),
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The private metrics listener, when on.
    pub metrics_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    database: Option<OwnedDatabase>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the app; `extra` are additional `serve` flags.
    pub async fn spawn_with(backend: Backend, extra: &[&str]) -> Self {
        let database = match backend {
            Backend::Sqlite => OwnedDatabase::Sqlite(TempSqlite::new()),
            Backend::Postgres => OwnedDatabase::Postgres(PgSchema::create().await),
        };
        let database_url = match &database {
            OwnedDatabase::Sqlite(file) => file.url.clone(),
            OwnedDatabase::Postgres(schema) => schema.database_url(),
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
        app.database = Some(database);
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
            database: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The PostgreSQL schema behind this app, when it runs on PostgreSQL.
    pub fn pg_schema(&self) -> Option<&PgSchema> {
        match &self.database {
            Some(OwnedDatabase::Postgres(schema)) => Some(schema),
            _ => None,
        }
    }

    /// The SQLite file behind this app, when it runs on SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.database {
            Some(OwnedDatabase::Sqlite(file)) => Some(file.path.clone()),
            _ => None,
        }
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
        self.post_json("/user", &super::http::user_body(name, email)).await
    }

    pub async fn all_users(&self) -> Vec<serde_json::Value> {
        super::http::list_users(&self.client, &self.url("/users")).await
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
    }
}

pub fn serve_config(args: &[&str]) -> ServeConfig {
    ServeConfig::from_args(args).expect("valid test flags")
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
                    super::$scenario($crate::kit::app::TestApp::spawn($crate::kit::app::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::kit::app::TestApp::spawn($crate::kit::app::Backend::Postgres).await).await;
                }
            )*
        }
    };
}
