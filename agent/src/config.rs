//! Command line and environment (`KEYFLEET_AGENT_*`), parsed by clap into per-module sub-configs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::telemetry::LogFormat;

/// `keyfleet-agent`: keeps this cluster's Secrets in sync with the keyfleet hub.
#[derive(Debug, Parser)]
#[command(name = "keyfleet-agent", version, about, long_about = None)]
pub struct Cli {
    /// Hub gRPC endpoint, e.g. `https://keyfleet.example.com:8443`.
    #[arg(long, env = "KEYFLEET_AGENT_HUB_URL")]
    pub hub_url: String,
    /// PEM file with the CA that signed the hub's certificate (pinned: the only root trusted).
    /// Default: `SSL_CERT_FILE` or the system CA bundle.
    #[arg(long, env = "KEYFLEET_AGENT_HUB_CA")]
    pub hub_ca: Option<PathBuf>,
    /// One-time enrollment token from `keyfleet cluster add`; used only when no credential is
    /// stored yet.
    #[arg(long, env = "KEYFLEET_AGENT_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
    /// Namespace the agent runs in; its credential Secret lives there.
    #[arg(long, env = "KEYFLEET_AGENT_NAMESPACE", default_value = "keyfleet-system")]
    pub namespace: String,
    /// Name of the Secret that stores the agent's hub credential.
    #[arg(
        long,
        env = "KEYFLEET_AGENT_CREDENTIAL_SECRET",
        default_value = "keyfleet-agent-credential"
    )]
    pub credential_secret: String,
    /// Namespaces the agent may write Secrets into (comma-separated); all when unset.
    #[arg(long, env = "KEYFLEET_AGENT_ALLOWED_NAMESPACES", value_delimiter = ',')]
    pub allowed_namespaces: Option<Vec<String>>,
    /// How often the managed Secrets are re-checked (and namespace selectors re-resolved), on
    /// top of the watch.
    #[arg(long, env = "KEYFLEET_AGENT_AUDIT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub audit_interval: Duration,
    /// Kubeconfig file; in-cluster config (or `KUBECONFIG`) when unset.
    #[arg(long, env = "KEYFLEET_AGENT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the operations endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "KEYFLEET_AGENT_OPS_ADDR", default_value = "0.0.0.0:9091")]
    pub ops_addr: SocketAddr,
    /// Log filter in `RUST_LOG` syntax.
    #[arg(long, env = "KEYFLEET_AGENT_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, env = "KEYFLEET_AGENT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How to reach and authenticate to the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Hub endpoint.
    pub url: String,
    /// Pinned CA file.
    pub ca: Option<PathBuf>,
    /// Enrollment token, if the agent is not enrolled yet.
    pub enrollment_token: Option<String>,
}

/// Where the agent keeps its credential.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    /// Agent namespace.
    pub namespace: String,
    /// Credential Secret name.
    pub secret_name: String,
}

/// The agent's configuration, split by module.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hub connection.
    pub hub: HubConfig,
    /// Credential storage.
    pub credential: CredentialConfig,
    /// Operations endpoint address.
    pub ops_addr: SocketAddr,
    /// Namespaces the agent may write into (`None`: all).
    pub allowed_namespaces: Option<BTreeSet<String>>,
    /// Kubeconfig file (`None`: in-cluster or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Drift audit period.
    pub audit_interval: Duration,
}

impl From<Cli> for Config {
    fn from(cli: Cli) -> Self {
        Self {
            hub: HubConfig {
                url: cli.hub_url,
                ca: cli.hub_ca,
                enrollment_token: cli.enrollment_token,
            },
            credential: CredentialConfig {
                namespace: cli.namespace,
                secret_name: cli.credential_secret,
            },
            ops_addr: cli.ops_addr,
            allowed_namespaces: cli
                .allowed_namespaces
                .map(|namespaces| namespaces.into_iter().collect()),
            kubeconfig: cli.kubeconfig,
            audit_interval: cli.audit_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyfleet-agent").chain(args.iter().copied()))
    }

    #[test]
    fn flags_land_in_their_sub_configs() {
        let cli = parse(&[
            "--hub-url",
            "https://hub:8443",
            "--enrollment-token",
            "kfe_x",
            "--namespace",
            "kf",
            "--allowed-namespaces",
            "a,b",
            "--audit-interval",
            "5m",
        ])
        .expect("valid flags");
        let config = Config::from(cli);
        assert_eq!(config.hub.url, "https://hub:8443");
        assert_eq!(config.hub.enrollment_token.as_deref(), Some("kfe_x"));
        assert_eq!(config.credential.namespace, "kf");
        assert_eq!(config.credential.secret_name, "keyfleet-agent-credential");
        assert_eq!(config.audit_interval, Duration::from_secs(300));
        assert_eq!(
            config.allowed_namespaces,
            Some(["a".to_string(), "b".to_string()].into())
        );
    }

    #[test]
    fn missing_hub_url_is_a_usage_error() {
        let error = parse(&[]).expect_err("hub url is required");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--hub-url"), "{error}");
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        let error = parse(&["--hub-url", "x", "--bogus"]).expect_err("unknown flag");
        assert_eq!(error.exit_code(), 2);
    }
}
