//! Command line and environment (`KEYFLEET_AGENT_*`), parsed by clap into per-module sub-configs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::telemetry::LogFormat;

/// `keyfleet-agent`: keeps this cluster's Secrets in sync with the keyfleet hub. `Debug` hides
/// the enrollment token.
#[derive(Parser)]
#[command(name = "keyfleet-agent", version, about, long_about = None)]
pub struct Cli {
    /// Hub gRPC endpoint, e.g. `https://keyfleet.example.com:7443`.
    #[arg(long, env = "KEYFLEET_AGENT_HUB_URL")]
    pub hub_url: String,
    /// PEM file with the CA that signed the hub's certificate (pinned: the only root trusted).
    /// Default: `SSL_CERT_FILE` or the system CA bundle.
    #[arg(long, env = "KEYFLEET_AGENT_HUB_CA")]
    pub hub_ca: Option<PathBuf>,
    /// Accept a plaintext `http://` hub URL (local tests only: the credential would cross the
    /// network in clear). Without it, `http://` is refused.
    #[arg(long, env = "KEYFLEET_AGENT_INSECURE")]
    pub insecure: bool,
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
    /// Name reported as the `reportingInstance` of the Kubernetes Events the agent posts (the
    /// chart sets the pod name). Default: `HOSTNAME`, else `keyfleet-agent`.
    #[arg(long, env = "KEYFLEET_AGENT_INSTANCE")]
    pub instance: Option<String>,
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
    /// OTLP/gRPC collector endpoint, e.g. `http://otel-collector:4317`: exports the agent's
    /// traces (`agent.update` per Update from the hub, `agent.apply` / `agent.remove` per item,
    /// `agent.repair` per drift repaired; names, revisions and counts, never a value). The service
    /// name is `OTEL_SERVICE_NAME` (default keyfleet-agent). Metrics are not exported over OTLP:
    /// scrape /metrics. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// How to reach and authenticate to the hub. `Debug` hides the enrollment token.
#[derive(Clone)]
pub struct HubConfig {
    /// Hub endpoint.
    pub url: String,
    /// Pinned CA file.
    pub ca: Option<PathBuf>,
    /// Enrollment token, if the agent is not enrolled yet.
    pub enrollment_token: Option<String>,
    /// Whether a plaintext `http://` hub URL is accepted.
    pub insecure: bool,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl HubConfig {
    /// Refuses a plaintext hub URL unless `--insecure` was given.
    pub fn check_transport(&self) -> Result<(), String> {
        if self.url.starts_with("http://") && !self.insecure {
            return Err(format!(
                "--hub-url {} is plaintext http://: the cluster credential would cross the network \
                 in clear; use https://, or --insecure for a local test hub",
                self.url
            ));
        }
        Ok(())
    }
}

/// Where the agent keeps its credential.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    /// Agent namespace.
    pub namespace: String,
    /// Credential Secret name.
    pub secret_name: String,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("hub_url", &self.hub_url)
            .field("hub_ca", &self.hub_ca)
            .field("insecure", &self.insecure)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("namespace", &self.namespace)
            .field("credential_secret", &self.credential_secret)
            .field("allowed_namespaces", &self.allowed_namespaces)
            .field("audit_interval", &self.audit_interval)
            .field("instance", &self.instance)
            .field("kubeconfig", &self.kubeconfig)
            .field("ops_addr", &self.ops_addr)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .finish()
    }
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
    /// `reportingInstance` of the agent's Events (`None`: `HOSTNAME`, else `keyfleet-agent`).
    pub instance: Option<String>,
}

impl From<Cli> for Config {
    fn from(cli: Cli) -> Self {
        Self {
            hub: HubConfig {
                url: cli.hub_url,
                ca: cli.hub_ca,
                enrollment_token: cli.enrollment_token,
                insecure: cli.insecure,
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
            instance: cli.instance,
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
            "https://hub:7443",
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
        assert_eq!(config.hub.url, "https://hub:7443");
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
    fn the_enrollment_token_never_prints() {
        let cli = parse(&[
            "--hub-url",
            "https://hub:7443",
            "--enrollment-token",
            "kfe_secret",
        ])
        .expect("valid flags");
        assert!(!format!("{cli:?}").contains("kfe_secret"));
        let config = Config::from(cli);
        assert!(!format!("{config:?}").contains("kfe_secret"));
    }

    #[test]
    fn a_plaintext_hub_url_needs_insecure() {
        let plain = Config::from(parse(&["--hub-url", "http://hub:7443"]).expect("valid flags"));
        let error = plain.hub.check_transport().expect_err("http:// refused");
        assert!(error.contains("--insecure"), "{error}");
        let allowed =
            Config::from(parse(&["--hub-url", "http://hub:7443", "--insecure"]).expect("valid flags"));
        allowed.hub.check_transport().expect("explicitly allowed");
        let tls = Config::from(parse(&["--hub-url", "https://hub:7443"]).expect("valid flags"));
        tls.hub.check_transport().expect("https is fine");
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
