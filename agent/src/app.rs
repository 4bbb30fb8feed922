//! Wiring: the binary's `run` (config, kube client, ops endpoint) and the reusable in-process
//! entry [`run_agent`] / [`AgentRuntime`], which needs no global state (no tracing init, no env
//! reads, no spawned threads), so a loadtest can run thousands of agents in one process.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use zeroize::Zeroizing;

use crate::cluster::ClusterEvent;
use crate::config::Config;
use crate::hub::{self, Backoff, HubEndpoint, HubError, SyncClient, SyncSettings};
use crate::kube::{KubeCluster, KubeCredentialStore, KubeSettings};
use crate::metrics::Metrics;

/// Everything one agent needs besides its Kubernetes client.
#[derive(Clone)]
pub struct AgentSettings {
    /// Hub gRPC endpoint.
    pub hub_url: String,
    /// PEM of the hub's CA (required for https).
    pub hub_ca_pem: Option<String>,
    /// One-time enrollment token, used only when no credential is stored.
    pub enrollment_token: Option<Zeroizing<String>>,
    /// The agent's namespace.
    pub namespace: String,
    /// Its credential Secret.
    pub credential_secret: String,
    /// Namespaces it may write into (`None`: all).
    pub allowed_namespaces: Option<BTreeSet<String>>,
    /// Reported to the hub.
    pub agent_version: String,
    /// Drift audit period.
    pub audit_interval: Duration,
    /// `reportingInstance` of the Kubernetes Events it posts (the pod name in a cluster).
    pub instance: String,
}

impl fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSettings")
            .field("hub_url", &self.hub_url)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("namespace", &self.namespace)
            .field("credential_secret", &self.credential_secret)
            .field("allowed_namespaces", &self.allowed_namespaces)
            .finish_non_exhaustive()
    }
}

impl AgentSettings {
    /// Defaults: namespace `keyfleet-system`, credential `keyfleet-agent-credential`.
    pub fn new(hub_url: impl Into<String>, hub_ca_pem: Option<String>) -> Self {
        Self {
            hub_url: hub_url.into(),
            hub_ca_pem,
            enrollment_token: None,
            namespace: "keyfleet-system".into(),
            credential_secret: "keyfleet-agent-credential".into(),
            allowed_namespaces: None,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            audit_interval: Duration::from_secs(60),
            instance: "keyfleet-agent".into(),
        }
    }
}

/// One agent: its cluster side, metrics and readiness.
pub struct AgentRuntime {
    settings: AgentSettings,
    client: ::kube::Client,
    cluster: KubeCluster,
    events: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ClusterEvent>>,
    metrics: Metrics,
    enrolled: AtomicBool,
}

impl AgentRuntime {
    /// Builds an agent; nothing runs until [`AgentRuntime::run`].
    pub fn new(settings: AgentSettings, client: ::kube::Client) -> Self {
        let metrics = Metrics::default();
        let mut kube_settings =
            KubeSettings::new(settings.namespace.clone(), settings.credential_secret.clone());
        kube_settings.allowed_namespaces = settings.allowed_namespaces.clone();
        kube_settings.audit_interval = settings.audit_interval;
        kube_settings.instance = settings.instance.clone();
        let (cluster, events) = KubeCluster::new(client.clone(), kube_settings, metrics.clone());
        Self {
            settings,
            client,
            cluster,
            events: tokio::sync::Mutex::new(events),
            metrics,
            enrolled: AtomicBool::new(false),
        }
    }

    /// The agent's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Enrolled (credential in hand) and the managed Secrets listed.
    pub(crate) fn is_ready(&self) -> bool {
        self.enrolled.load(Ordering::Acquire) && self.cluster.is_synced()
    }

    /// Runs until `shutdown` resolves (then the stream is closed) or enrollment fails for good.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
        tokio::select! {
            () = shutdown => {
                tracing::info!("agent stopping");
                Ok(())
            }
            result = self.work() => result,
        }
    }

    async fn work(&self) -> Result<(), HubError> {
        let endpoint = HubEndpoint {
            url: self.settings.hub_url.clone(),
            ca_pem: self.settings.hub_ca_pem.clone(),
        };
        let channel = hub::channel(&endpoint)?;
        let sync = async {
            let store = KubeCredentialStore::new(
                self.client.clone(),
                &self.settings.namespace,
                &self.settings.credential_secret,
            );
            let mut backoff = Backoff::new();
            let credential = hub::ensure_credential(
                &store,
                channel.clone(),
                self.settings
                    .enrollment_token
                    .as_ref()
                    .map(|token| token.as_str()),
                &self.settings.agent_version,
                || HubError::NotEnrolled {
                    namespace: self.settings.namespace.clone(),
                    name: self.settings.credential_secret.clone(),
                },
                &mut backoff,
            )
            .await?;
            self.enrolled.store(true, Ordering::Release);
            let settings = SyncSettings::new(self.settings.agent_version.clone());
            let client = SyncClient::new(channel, &credential, &settings, &self.cluster, &self.metrics);
            let mut events = self.events.lock().await;
            backoff.reset();
            client.run(&mut events, &mut backoff).await;
            Ok(())
        };
        tokio::select! {
            result = sync => result,
            () = self.cluster.run_watcher() => {
                tracing::error!("secret watcher ended");
                Ok(())
            }
            () = self.cluster.run_events() => {
                tracing::error!("event poster ended");
                Ok(())
            }
        }
    }
}

/// Runs one agent against `client` until `shutdown` resolves.
pub async fn run_agent(
    settings: AgentSettings,
    client: ::kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    AgentRuntime::new(settings, client).run(shutdown).await
}

/// System CA bundles tried, in order, when `--hub-ca` is not given (after `SSL_CERT_FILE`).
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn system_ca_bundle() -> anyhow::Result<Option<String>> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    for path in from_env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(std::path::PathBuf::from))
    {
        if path.is_file() {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("read CA bundle {}", path.display()))?;
            return Ok(Some(pem));
        }
    }
    Ok(None)
}

/// Runs the binary until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hub_ca_pem = match &config.hub.ca {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("read --hub-ca {}", path.display()))?)
        }
        None => system_ca_bundle()?,
    };
    let client = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = ::kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read --kubeconfig {}", path.display()))?;
            let options = ::kube::config::KubeConfigOptions::default();
            let kube_config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("use --kubeconfig {}", path.display()))?;
            ::kube::Client::try_from(kube_config).context("build the kubernetes client")?
        }
        None => ::kube::Client::try_default()
            .await
            .context("build the kubernetes client (in-cluster or KUBECONFIG)")?,
    };
    config.hub.check_transport().map_err(anyhow::Error::msg)?;
    let mut settings = AgentSettings::new(config.hub.url.clone(), hub_ca_pem);
    settings.enrollment_token = config.hub.enrollment_token.clone().map(Zeroizing::new);
    settings.namespace = config.credential.namespace.clone();
    settings.credential_secret = config.credential.secret_name.clone();
    settings.allowed_namespaces = config.allowed_namespaces.clone();
    settings.audit_interval = config.audit_interval;
    settings.instance = config
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|instance| !instance.is_empty())
        .unwrap_or_else(|| "keyfleet-agent".into());
    tracing::info!(hub = %settings.hub_url, namespace = %settings.namespace, "keyfleet-agent starting");
    let runtime = std::sync::Arc::new(AgentRuntime::new(settings, client));
    let mut registry = Registry::default();
    runtime.metrics().register(&mut registry);
    let ready = runtime.clone();
    let ops = crate::ops::Ops::new(registry, move || ready.is_ready());
    let (addr, server) = crate::ops::bind(config.ops_addr, ops)
        .await
        .with_context(|| format!("bind --ops-addr {}", config.ops_addr))?;
    tracing::info!(%addr, "ops endpoint listening");
    tokio::select! {
        result = runtime.run(shutdown) => result.context("agent")?,
        result = server => result.context("ops endpoint")?,
    }
    Ok(())
}
