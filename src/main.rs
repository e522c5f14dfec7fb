use std::process::ExitCode;

use clap::Parser;
use users_api::config::{Cli, Command, ServeConfig};
use users_api::server::{Application, shutdown_signal};
use users_api::store::Store;
use users_api::{healthcheck, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(&cli.logging);
    let result = match cli.command {
        Some(Command::Healthcheck(config)) => match healthcheck::probe(&config).await {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        Some(Command::Migrate(database)) => migrate(&database).await,
        Some(Command::Serve(config)) => serve(*config).await,
        None => match ServeConfig::from_args(["users-api"]) {
            Ok(config) => serve(config).await,
            Err(e) => e.exit(),
        },
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
    Application::build(config)
        .await?
        .run_until(shutdown_signal())
        .await
}

async fn migrate(database: &users_api::config::DatabaseConfig) -> anyhow::Result<()> {
    let store = Store::connect(&database.database_url, &database.store_options()).await?;
    store.migrate().await?;
    store.close().await;
    tracing::info!("migrations applied");
    Ok(())
}
