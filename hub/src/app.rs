//! Wiring only: builds every module from its sub-config, serves, and drains on shutdown.

use std::future::Future;

use anyhow::Context as _;

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Command, MigrateArgs, ServeConfig};
use crate::domain::Sha256;
use crate::spec;
use crate::store::{SpecKind, SpecWrite, Store};

mod serve;

/// Runs one `keyfleet` command to completion. `shutdown` ends `serve` gracefully.
pub async fn run(
    command: Command,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::serve(ServeConfig::from(args), shutdown).await,
        Command::Client(command) => {
            install_crypto_provider();
            crate::cli::run(command, &mut std::io::stdout()).await?;
            Ok(())
        }
        Command::Migrate(args) => migrate(args).await,
        Command::Import(command) => {
            crate::cli::import(
                command,
                &mut std::io::stdin(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(())
        }
        Command::Completion(args) => {
            crate::cli::completion(args.shell, &mut std::io::stdout())
                .map_err(crate::cli::CliError::Output)?;
            Ok(())
        }
        Command::Man(args) => {
            let dir = args.out_dir.as_deref();
            crate::cli::man_pages(dir, &mut std::io::stdout()).map_err(crate::cli::CliError::Output)?;
            Ok(())
        }
    }
}

/// `keyfleet migrate`: applies the pending migrations and prints them (user-facing output).
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    install_crypto_provider();
    if let Some(warning) = args.database.tls_warning() {
        tracing::warn!("{warning}");
    }
    let store = Store::connect(args.database.expose())
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

/// Writes `{"grpc_addr": …, "ops_addr": …}` atomically (temporary file + rename) once the hub
/// serves: scripts and the loadtest wait for it instead of parsing logs.
fn write_ready_file(
    path: &Path,
    grpc_addr: SocketAddr,
    ops_addr: SocketAddr,
    eventgrid_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut body =
        serde_json::json!({ "grpc_addr": grpc_addr.to_string(), "ops_addr": ops_addr.to_string() });
    if let Some(addr) = eventgrid_addr {
        body["eventgrid_addr"] = serde_json::Value::String(addr.to_string());
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, body.to_string())
        .with_context(|| format!("write the ready file {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("write the ready file {}", path.display()))
}

/// The admin tokens (names and SHA-256) of `--admin-token-file` (`config::read_admin_tokens`).
/// Without the file, only client certificates authenticate admins (`--admin-client-ca`), and
/// without either the Admin API refuses every call.
fn admin_tokens(path: Option<&Path>, client_ca: bool) -> anyhow::Result<Vec<(String, Sha256)>> {
    let Some(path) = path else {
        if client_ca {
            tracing::info!("no --admin-token-file: admins authenticate by client certificate only");
        } else {
            tracing::warn!("no --admin-token-file or --admin-client-ca: the Admin API refuses every call");
        }
        return Ok(Vec::new());
    };
    let tokens = crate::config::read_admin_tokens(path)?;
    for token in tokens.iter().filter(|token| token.derived_name) {
        tracing::warn!(
            name = %token.name,
            file = %path.display(),
            "an admin token without a name: audited as token:{}; write it as NAME:TOKEN",
            token.name
        );
    }
    let names: Vec<&str> = tokens.iter().map(|token| token.name.as_str()).collect();
    tracing::info!(tokens = ?names, "admin tokens loaded");
    Ok(tokens
        .into_iter()
        .map(|token| (token.name, token.sha256))
        .collect())
}

/// `--config-dir`: every spec in the directory is validated together and stored all or nothing
/// (as `keyfleet apply -f DIR` would, audited as actor `config-dir`), before the runtime reads
/// the store.
async fn load_config_dir(store: &Store, dir: &Path) -> anyhow::Result<()> {
    let files = spec::read_path(dir).with_context(|| format!("read --config-dir {}", dir.display()))?;
    let known: std::collections::BTreeSet<String> = store
        .list_specs()
        .await?
        .into_iter()
        .filter(|stored| stored.kind == SpecKind::SecretStore)
        .map(|stored| stored.name)
        .collect();
    let specs = spec::parse_files(&files, &known).map_err(|error| anyhow::anyhow!("{error}"))?;
    let writes: Vec<SpecWrite<'_>> = specs
        .iter()
        .map(|loaded| SpecWrite {
            kind: match loaded.spec.kind() {
                spec::Kind::SecretStore => SpecKind::SecretStore,
                spec::Kind::FleetSecret => SpecKind::FleetSecret,
            },
            name: loaded.spec.name(),
            yaml: &loaded.canonical_yaml,
        })
        .collect();
    let outcomes = store
        .apply_specs(&writes, "config-dir")
        .await
        .with_context(|| format!("store the specs of --config-dir {}", dir.display()))?;
    for ((write, outcome), loaded) in writes.iter().zip(&outcomes).zip(&specs) {
        tracing::info!(
            kind = write.kind.as_str(),
            name = write.name,
            generation = outcome.generation,
            action = outcome.action.as_str(),
            file = %loaded.file,
            "spec from --config-dir"
        );
    }
    Ok(())
}

/// Installs ring as the process-wide rustls provider (the only one in the tree). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
