//! The simulated clusters' agents: the real agent code (`keyfleet_agent::AgentRuntime`), one per
//! cluster, in this process, each with its own `kube::Client` pointed at its cluster's fake API
//! (a path prefix of one fake API server), its own TLS connection and gRPC stream to the hub.

use std::sync::Arc;

use keyfleet_agent::{AgentRuntime, AgentSettings};
use keyfleet_testkit::kube::ClusterHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use zeroize::Zeroizing;

/// Errors starting an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cluster {cluster}: invalid kubeconfig")]
    Kubeconfig {
        cluster: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cluster {cluster}: cannot build the Kubernetes client")]
    Client {
        cluster: String,
        #[source]
        source: kube::Error,
    },
}

/// Every running agent.
pub struct Agents {
    runtimes: Vec<Arc<AgentRuntime>>,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Agents {
    /// An empty fleet.
    pub fn new() -> Self {
        let (stop, _) = watch::channel(false);
        Self {
            runtimes: Vec::new(),
            tasks: JoinSet::new(),
            stop,
        }
    }

    /// Starts the agent of `cluster` with its one-time enrollment token.
    pub async fn start(
        &mut self,
        cluster: &ClusterHandle,
        hub_url: &str,
        hub_ca_pem: &str,
        enrollment_token: String,
    ) -> Result<(), AgentError> {
        let name = cluster.name().to_owned();
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml()).map_err(|source| {
                AgentError::Kubeconfig {
                    cluster: name.clone(),
                    source,
                }
            })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| AgentError::Kubeconfig {
                    cluster: name.clone(),
                    source,
                })?;
        let client = kube::Client::try_from(config).map_err(|source| AgentError::Client {
            cluster: name.clone(),
            source,
        })?;
        let mut settings = AgentSettings::new(hub_url, Some(hub_ca_pem.to_owned()));
        settings.enrollment_token = Some(Zeroizing::new(enrollment_token));
        let runtime = Arc::new(AgentRuntime::new(settings, client));
        self.runtimes.push(Arc::clone(&runtime));
        let mut stop = self.stop.subscribe();
        self.tasks.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = runtime.run(shutdown).await {
                tracing::error!(cluster = %name, error = %error, "agent stopped");
            }
        });
        Ok(())
    }

    /// Agents started.
    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    /// Whether none was started.
    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }

    /// Stops every agent and waits for them.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Default for Agents {
    fn default() -> Self {
        Self::new()
    }
}
