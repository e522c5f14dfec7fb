use std::process::ExitCode;

use clap::Parser;
use users_api::auth::{Claims, KeySource};
use users_api::config::{Cli, Command, ServeConfig, TokenConfig};
use users_api::server::{Application, shutdown_signal};
use users_api::store::Store;
use users_api::{auth, healthcheck, telemetry};

/// Threads for blocking work: SQLite reads and migrations. Tokio's default (512) let the short
/// reads of full-list streams leave ~50 idle threads behind, each with its own allocator arena
/// (glibc keeps what each arena freed). The reads are CPU work on cached pages, so more threads
/// than twice the cores of a task add arenas, not speed: 16 full-list streams peaked at 28–29 MB
/// with 16 threads, 26–27 MB with 8, 25 MB with 4, and finished as fast.
const MAX_BLOCKING_THREADS: usize = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime: the exporter's blocking HTTP client must not be built or dropped in it.
    // Traces are for serving; a misconfigured exporter is reported and the service runs without.
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    let traces = (serving && telemetry::traces_requested()).then(telemetry::TraceExport::from_env);
    let (traces, traces_error) = match traces {
        Some(Ok(traces)) => (Some(traces), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let _log_writer = telemetry::init_logging(&cli.logging.settings(), traces.as_ref());
    if let Some(e) = traces_error {
        tracing::error!(error = format!("{e:#}"), "traces are off: the OTLP exporter cannot be configured");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(MAX_BLOCKING_THREADS).build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::Healthcheck(config)) => match healthcheck::probe(&config).await {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        Some(Command::Migrate(config)) => migrate(&config).await,
        Some(Command::Token(config)) => match token(&config) {
            Ok(token) => {
                println!("{token}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("cannot mint a token: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        Some(Command::Serve(config)) => serve(*config).await,
        None => serve(cli.serve).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    Application::build(config).await?.run_until(shutdown_signal()).await
}

async fn migrate(config: &users_api::config::MigrateConfig) -> anyhow::Result<()> {
    let database = &config.database;
    let store = Store::connect(&database.database_url, &database.store_options()).await?;
    store.migrate().await?;
    tracing::info!("migrations applied");
    if let (Some(role), Some(password)) = (&config.app_role, &config.app_password) {
        let Store::Postgres(postgres) = &store else {
            anyhow::bail!("DATABASE_APP_ROLE applies to PostgreSQL only");
        };
        postgres.ensure_app_role(role, password).await?;
        tracing::info!(role, "API role ready: rows of this schema's tables, nothing else");
    }
    store.close().await;
    Ok(())
}

fn token(config: &TokenConfig) -> anyhow::Result<String> {
    let Some(KeySource::Secret(secret)) = config.auth.key_source()? else {
        anyhow::bail!("set AUTH_JWT_SECRET or AUTH_JWT_SECRET_FILE: only HS256 tokens can be minted here");
    };
    anyhow::ensure!(
        secret.len() >= auth::MIN_SECRET_BYTES,
        "the secret must be at least {} bytes",
        auth::MIN_SECRET_BYTES
    );
    anyhow::ensure!(
        config.ttl <= config.auth.auth_max_token_lifetime,
        "--ttl is longer than AUTH_MAX_TOKEN_LIFETIME: the service would refuse the token"
    );
    let now = auth::now();
    let claims = Claims {
        sub: Some(config.subject.clone()),
        exp: now + config.ttl.as_secs(),
        iat: Some(now),
        iss: config.auth.issuer().map(str::to_owned),
        aud: config.auth.audience().map(Into::into),
        scope: config.scope.clone(),
        client_id: None,
        token_use: None,
    };
    auth::mint(&secret, &claims)
}
