//! Wiring only: builds every module from its sub-config, serves, and drains on shutdown.

use std::future::Future;

use anyhow::Context as _;

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Command, MigrateArgs, ServeConfig};
use crate::domain::Sha256;
use crate::spec;
use crate::store::{ChangeKind, SpecAction, SpecKind, Store};

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

/// Writes `{"grpc_addr": …, "ops_addr": …}` atomically (temporary file + rename) once the hub
/// serves: scripts and the loadtest wait for it instead of parsing logs.
fn write_ready_file(path: &Path, grpc_addr: SocketAddr, ops_addr: SocketAddr) -> anyhow::Result<()> {
    let body = serde_json::json!({ "grpc_addr": grpc_addr.to_string(), "ops_addr": ops_addr.to_string() });
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, body.to_string())
        .with_context(|| format!("write the ready file {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("write the ready file {}", path.display()))
}

/// The admin tokens' SHA-256 from `--admin-token-file` (one token per line; blank lines and
/// `#` comments ignored). Without the file, the Admin API refuses every call.
fn read_admin_tokens(path: Option<&Path>) -> anyhow::Result<Vec<Sha256>> {
    let Some(path) = path else {
        tracing::warn!("no --admin-token-file: the Admin API refuses every call");
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read --admin-token-file {}", path.display()))?;
    let tokens: Vec<Sha256> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|token| Sha256::of(token.as_bytes()))
        .collect();
    if tokens.is_empty() {
        anyhow::bail!("--admin-token-file {} holds no token", path.display());
    }
    Ok(tokens)
}

/// `--config-dir`: every spec in the directory is validated together and stored (as
/// `keyfleet apply -f DIR` would), before the runtime reads the store.
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
    let mut changed = false;
    for loaded in specs {
        let kind = match loaded.spec.kind() {
            spec::Kind::SecretStore => SpecKind::SecretStore,
            spec::Kind::FleetSecret => SpecKind::FleetSecret,
        };
        let (generation, action) = store
            .upsert_spec(kind, loaded.spec.name(), &loaded.canonical_yaml)
            .await?;
        tracing::info!(kind = kind.as_str(), name = loaded.spec.name(), generation, action = action.as_str(), file = %loaded.file, "spec from --config-dir");
        if action != SpecAction::Unchanged {
            store
                .append_audit(
                    "config-dir",
                    action.as_str(),
                    &format!("{}/{}", kind.as_str(), loaded.spec.name()),
                    chrono::Utc::now(),
                )
                .await?;
            changed = true;
        }
    }
    if changed {
        store.append_change(ChangeKind::Spec, "config-dir").await?;
    }
    Ok(())
}

/// Installs ring as the process-wide rustls provider (the only one in the tree). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
