//! Building and running the service: bind, migrate, serve, drain on a signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::http::{AppState, HttpLimits, app};
use crate::store::{Store, redact};

pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    config: ServeConfig,
}

impl Application {
    /// Connects and migrates the store, then binds (port 0 picks a free port; see `local_addr`).
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let database = &config.database;
        let store = Store::connect(&database.database_url, &database.store_options()).await?;
        if !config.skip_migrations {
            store
                .migrate()
                .await
                .with_context(|| format!("migrating {}", redact(&database.database_url)))?;
        }
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("binding {}", config.bind_addr))?;
        tracing::info!(
            addr = %listener.local_addr()?,
            store = store.backend(),
            database = %redact(&database.database_url),
            "listening"
        );
        let state = Arc::new(AppState {
            store,
            draining: AtomicBool::new(false),
        });
        Ok(Self {
            listener,
            state,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// for up to the grace period, and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            config,
        } = self;
        let router = app(
            state.clone(),
            &HttpLimits {
                max_in_flight: config.max_in_flight,
                request_timeout: config.request_timeout(),
            },
        );
        let (signalled_tx, signalled_rx) = tokio::sync::watch::channel(false);
        let draining_state = state.clone();
        let graceful = async move {
            shutdown.await;
            draining_state.draining.store(true, Ordering::Relaxed);
            tracing::info!("shutdown requested; draining in-flight requests");
            let _ = signalled_tx.send(true);
        };
        let server =
            axum::serve(listener, router.into_make_service()).with_graceful_shutdown(graceful);

        let grace = config.shutdown_grace();
        let mut signalled = signalled_rx;
        let deadline = async move {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.context("HTTP server failed")?,
            () = deadline => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; exiting with requests still open"),
        }
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM (what ECS and Docker send) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
