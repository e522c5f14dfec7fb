//! Building and running the service: bind, migrate, serve, drain on a signal.

mod accept;
mod connection;
mod descriptors;
mod refusals;
mod threads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::ServeConfig;
use crate::http::{AppState, Guards, ListStreams, RateLimiter, app};
use crate::store::{Store, StoreOptions, redact};

pub use connection::{InFlight, peer};
pub use threads::{current as current_http_thread, default_count as default_http_threads};

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    authenticator: Option<Arc<Authenticator>>,
    config: ServeConfig,
    /// The open-file limit after raising it; `None` when it cannot be read.
    descriptor_limit: Option<u64>,
    /// Connection threads, resolved once: the PostgreSQL pools are split for this many.
    http_threads: usize,
}

impl Application {
    /// Connects and migrates the store, then binds (port 0 picks a free port; see `local_addr`).
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let descriptor_limit = descriptors::raise_limit();
        let http_threads = config.connections.http_threads();
        let database = &config.database;
        // A write may take its database timeout to start and the commit grace to finish: the
        // request timeout must outlast both, or its 503 could be sent for a stored write.
        let write_bound = database.store_options().timeout + crate::store::COMMIT_GRACE + Duration::from_millis(500);
        anyhow::ensure!(
            config.request_timeout() > write_bound,
            "REQUEST_TIMEOUT_SECS ({}) must exceed DATABASE_TIMEOUT_SECS ({}) by more than 1.25 s",
            config.request_timeout_secs,
            database.database_timeout_secs
        );
        let options = StoreOptions {
            replica: config.read_replica.replica_options(),
            read_pools: http_threads,
            ..config.store_options()
        };
        let store = Store::connect(&database.database_url, &options).await?;
        if !config.skip_migrations {
            store.migrate().await.with_context(|| format!("migrating {}", redact(&database.database_url)))?;
        }
        let authenticator = match config.auth.key_source()? {
            Some(source) => {
                let authenticator = Authenticator::new(source, config.auth.policy())?;
                authenticator.warm_up().await;
                Some(Arc::new(authenticator))
            }
            None => None,
        };
        let listener =
            TcpListener::bind(config.bind_addr).await.with_context(|| format!("binding {}", config.bind_addr))?;
        let metrics_listener = match config.metrics_addr()? {
            Some(addr) => {
                crate::telemetry::install_metrics_recorder();
                Some(TcpListener::bind(addr).await.map_err(|e| ServeConfig::metrics_bind_error(addr, e))?)
            }
            None => None,
        };
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            metrics = ?metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
            store = store.backend(),
            database = %redact(&database.database_url),
            read_replica = options.replica.as_ref().map(|r| redact(&r.url)),
            auth = authenticator.is_some(),
            descriptor_limit,
            "listening"
        );
        if authenticator.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "AUTHENTICATION IS OFF on a non-loopback address: anyone who reaches this port can read and \
                 create users. Set AUTH_JWT_SECRET or AUTH_JWKS_URL."
            );
        }
        let list_streams = ListStreams::new(config.max_list_streams, config.list_stream_stall_timeout());
        let state = Arc::new(AppState { store, draining: AtomicBool::new(false), list_streams });
        Ok(Self { listener, metrics_listener, state, authenticator, config, descriptor_limit, http_threads })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where /metrics is served, when the metrics listener is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains (see `accept::serve`) and closes the store.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { listener, metrics_listener, state, authenticator, config, descriptor_limit, http_threads } = self;
        let limits = &config.rate_limit;
        let guards = Guards {
            max_in_flight: config.max_in_flight,
            request_timeout: config.request_timeout(),
            authenticator,
            rate_limiter: RateLimiter::new(
                limits.rate_limit_per_second,
                limits.rate_limit_burst,
                limits.trust_forwarded_for,
            ),
        };
        let app = app(state.clone(), guards);
        if let Some(metrics_listener) = metrics_listener {
            let pool_state = state.clone();
            let requests_in_flight = app.requests_in_flight();
            let metrics = crate::telemetry::metrics_router(move || crate::telemetry::Sampled {
                pool: pool_state.store.pool_status(),
                requests_in_flight: requests_in_flight(),
            });
            tokio::spawn(async move {
                if let Err(e) = axum::serve(metrics_listener, metrics).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }

        let connections = &config.connections;
        let settings = accept::Settings {
            timeouts: connection::Timeouts {
                header: connections.header_timeout(),
                keepalive: connections.keepalive_timeout(),
            },
            max_connections: descriptors::connection_cap(
                connections.max_connections,
                descriptor_limit,
                config.database.database_max_connections + config.read_replica.connections(&config.database),
            ),
            shutdown_delay: config.shutdown_delay(),
            grace: config.shutdown_grace(),
        };
        let threads = threads::ConnectionThreads::start(http_threads)?;
        tracing::debug!(threads = threads.len(), "connection threads started");
        accept::serve(listener, &threads, app, state.clone(), settings, shutdown).await;
        // The store first: a PostgreSQL connection opened by a request runs on its thread.
        state.store.close().await;
        drop(threads);
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
