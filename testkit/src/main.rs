//! `keyfleet-testkit`: runs keyfleet's test doubles as standalone servers.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// keyfleet's test doubles as standalone processes.
#[derive(Debug, Parser)]
#[command(name = "keyfleet-testkit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a test CA and a server certificate for localhost/127.0.0.1 into a directory
    /// (ca.pem, server.pem, server-key.pem).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Serve a fake Kubernetes API over HTTPS. Writes DIR/kubeconfig (CA inline, a token with full
    /// permissions) for the root cluster, DIR/kubeconfig-<name> for each --cluster and DIR/ca.pem,
    /// then prints `ready <server-url>`.
    KubeApi {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
        /// Directory for the kubeconfig files (created if missing).
        #[arg(long)]
        state_dir: PathBuf,
        /// Extra clusters to serve under /clusters/<name> (repeatable).
        #[arg(long = "cluster")]
        clusters: Vec<String>,
        /// Watch events kept per cluster (older resourceVersions get 410).
        #[arg(long, default_value_t = 1000)]
        watch_history: usize,
        /// Interval of watch bookmarks.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        bookmark_interval: std::time::Duration,
    },
    /// Run the Azure Key Vault + Entra emulator over HTTPS. Writes DIR/ca.pem, then prints
    /// `ready <vault-url> <authority-url>` once listening.
    Keyvault {
        /// Listen address; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
        /// Directory for ca.pem (created if missing).
        #[arg(long)]
        state_dir: PathBuf,
        /// YAML/JSON file with the tenant and its principals (default: tenant keyfleet-test,
        /// client keyfleet-hub / keyfleet-hub-secret with every permission).
        #[arg(long)]
        principals: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli.command {
        Command::KubeApi {
            addr,
            state_dir,
            clusters,
            watch_history,
            bookmark_interval,
        } => {
            let runtime = tokio::runtime::Runtime::new().context("start tokio")?;
            runtime.block_on(run_kube_api(
                keyfleet_testkit::kube::Config {
                    addr,
                    watch_history,
                    bookmark_interval,
                    ..keyfleet_testkit::kube::Config::default()
                },
                &state_dir,
                &clusters,
            ))?;
        }
        Command::Keyvault {
            addr,
            state_dir,
            principals,
        } => {
            let runtime = tokio::runtime::Runtime::new().context("start tokio")?;
            runtime.block_on(run_keyvault(addr, &state_dir, principals.as_deref()))?;
        }
        Command::Ca { state_dir } => {
            std::fs::create_dir_all(&state_dir).with_context(|| format!("create {}", state_dir.display()))?;
            let ca = keyfleet_testkit::tls::TestCa::generate("keyfleet test ca")?;
            let server = ca.issue(&["localhost", "127.0.0.1"])?;
            ca.write_cert(&state_dir.join("ca.pem"))?;
            std::fs::write(state_dir.join("server.pem"), &server.cert_pem).context("write server.pem")?;
            std::fs::write(state_dir.join("server-key.pem"), &server.key_pem)
                .context("write server-key.pem")?;
            println!("ready {}", state_dir.display());
        }
    }
    Ok(())
}

async fn run_kube_api(
    config: keyfleet_testkit::kube::Config,
    state_dir: &std::path::Path,
    clusters: &[String],
) -> anyhow::Result<()> {
    use keyfleet_testkit::kube::FakeKube;
    std::fs::create_dir_all(state_dir).with_context(|| format!("create {}", state_dir.display()))?;
    let kube = FakeKube::start(config).await?;
    let root = kube.add_cluster("default")?;
    let path = state_dir.join("kubeconfig");
    std::fs::write(&path, root.kubeconfig_yaml()).with_context(|| format!("write {}", path.display()))?;
    for name in clusters {
        let cluster = kube.add_cluster(name)?;
        let path = state_dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&path, cluster.kubeconfig_yaml())
            .with_context(|| format!("write {}", path.display()))?;
    }
    let ca = state_dir.join("ca.pem");
    std::fs::write(&ca, kube.ca_pem()).with_context(|| format!("write {}", ca.display()))?;
    println!("ready {}", root.server_url());
    use std::io::Write as _;
    std::io::stdout().flush().context("flush stdout")?;
    shutdown_signal().await;
    Ok(())
}

async fn run_keyvault(
    addr: std::net::SocketAddr,
    state_dir: &std::path::Path,
    principals: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
    let mut config = KeyVaultConfig {
        addr,
        ..KeyVaultConfig::default()
    };
    if let Some(path) = principals {
        config = config.with_principals_file(path)?;
    }
    std::fs::create_dir_all(state_dir).with_context(|| format!("create {}", state_dir.display()))?;
    let handle = KeyVaultEmulator::start(config).await?;
    let ca = state_dir.join("ca.pem");
    std::fs::write(&ca, handle.ca_pem()).with_context(|| format!("write {}", ca.display()))?;
    println!(
        "ready {} {}",
        handle.vault_url(),
        handle.authority_url().as_str().trim_end_matches('/')
    );
    use std::io::Write as _;
    std::io::stdout().flush().context("flush stdout")?;
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
