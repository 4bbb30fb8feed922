//! Wiring only: builds every module from its sub-config, serves, and drains on shutdown.

use std::future::Future;

use anyhow::Context as _;

use crate::config::{Command, MigrateArgs, ServeConfig};
use crate::ops::{self, Ops};
use crate::store::Store;

/// Runs one `keyfleet` command to completion. `shutdown` ends `serve` gracefully.
pub async fn run(
    command: Command,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(ServeConfig::from(args), shutdown).await,
        Command::Client(command) => {
            install_crypto_provider();
            crate::cli::run(command, &mut std::io::stdout()).await?;
            Ok(())
        }
        Command::Migrate(args) => migrate(args).await,
    }
}

/// `keyfleet migrate`: applies the pending migrations and prints them (user-facing output).
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    install_crypto_provider();
    let store = Store::connect(&args.database)
        .await
        .context("connect to the database given by --database")?;
    let applied = store
        .migrate_report()
        .await
        .with_context(|| format!("migrate the {} database", store.backend()))?;
    if applied.is_empty() {
        println!(
            "{}: no pending migrations, the schema is up to date",
            store.backend()
        );
    }
    for migration in &applied {
        println!(
            "{}: applied migration {:04} {}",
            store.backend(),
            migration.version,
            migration.description
        );
    }
    store.close().await;
    Ok(())
}

async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let ops = Ops::default();
    let (ops_addr, ops_server) = ops::bind(config.ops.addr, ops.clone(), shutdown)
        .await
        .with_context(|| format!("bind the operations endpoint on {}", config.ops.addr))?;
    tracing::info!(%ops_addr, "operations endpoint listening");
    ops.set_ready(true);
    ops_server.await.context("serve the operations endpoint")?;
    tracing::info!("hub stopped");
    Ok(())
}

/// Installs ring as the process-wide rustls provider (the only one in the tree). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
