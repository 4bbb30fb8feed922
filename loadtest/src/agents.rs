//! The simulated clusters' agents: the real agent code (`keyfleet_agent::AgentRuntime`), one per
//! cluster, in this process, each with its own `kube::Client` for its cluster's fake API and its
//! own TLS connection and gRPC stream to the hub. The client reaches the fake API over loopback
//! HTTPS (a path prefix of one fake API server) or in memory (the same router, no socket): see
//! [`KubeTransport`] and [`choose_transport`].

use std::sync::Arc;

use keyfleet_agent::{AgentRuntime, AgentSettings};
use keyfleet_testkit::kube::ClusterHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::config::KubeTransportArg;

/// File descriptors one agent on the loopback transport holds in this process, measured: 7,533
/// open after convergence with 1,500 clusters (the report's `fleet.open_files_connected`). They
/// are the kube client's HTTP/1.1 connections (kube-rs speaks HTTP/1.1 only, so each watch holds
/// its own), the fake API's ends of them, and the gRPC connection to the hub.
pub const LOOPBACK_FDS_PER_AGENT: u64 = 5;
/// File descriptors kept free for everything else in this process (emulator, Admin API client,
/// baseline connections, files).
const RESERVED_FDS: u64 = 1_000;
/// Assumed when `/proc/self/limits` cannot be read (the usual default soft limit).
const DEFAULT_OPEN_FILES_LIMIT: u64 = 1_024;

/// How every agent reaches its cluster's fake Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeTransport {
    /// HTTPS over 127.0.0.1 with a kubeconfig, as in a real cluster.
    Loopback,
    /// `ClusterHandle::in_memory_api`: the same routing, authentication and watches, no TLS or
    /// socket (the agent then holds one descriptor, its gRPC connection).
    Memory,
}

impl KubeTransport {
    /// `loopback` or `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Memory => "memory",
        }
    }
}

/// The transport of a run and why it was chosen (the report prints both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportChoice {
    /// The transport.
    pub transport: KubeTransport,
    /// Why, in words.
    pub reason: String,
}

/// Picks the transport for `clusters` agents: as requested, or for `auto` loopback while
/// `clusters` × [`LOOPBACK_FDS_PER_AGENT`] plus a reserve fits in `open_files_limit` (this
/// process's soft limit; `None` = unlimited; `Err` = unknown), memory above.
pub fn choose_transport(
    requested: KubeTransportArg,
    clusters: usize,
    open_files_limit: Result<Option<u64>, String>,
) -> TransportChoice {
    let needed = clusters as u64 * LOOPBACK_FDS_PER_AGENT + RESERVED_FDS;
    let (limit, limit_text) = match open_files_limit {
        Ok(Some(limit)) => (Some(limit), format!("the open-file limit of {limit}")),
        Ok(None) => (None, "no open-file limit".to_owned()),
        Err(why) => (
            Some(DEFAULT_OPEN_FILES_LIMIT),
            format!("an assumed open-file limit of {DEFAULT_OPEN_FILES_LIMIT} ({why})"),
        ),
    };
    let fits = limit.is_none_or(|limit| needed <= limit);
    let estimate = format!(
        "{clusters} loopback agents need about {needed} descriptors ({LOOPBACK_FDS_PER_AGENT} each + {RESERVED_FDS} reserved)"
    );
    match requested {
        KubeTransportArg::Loopback if fits => TransportChoice {
            transport: KubeTransport::Loopback,
            reason: format!("requested (--kube-transport loopback); {estimate}, within {limit_text}"),
        },
        KubeTransportArg::Loopback => TransportChoice {
            transport: KubeTransport::Loopback,
            reason: format!("requested (--kube-transport loopback) although {estimate}, above {limit_text}"),
        },
        KubeTransportArg::Memory => TransportChoice {
            transport: KubeTransport::Memory,
            reason: "requested (--kube-transport memory)".to_owned(),
        },
        KubeTransportArg::Auto if fits => TransportChoice {
            transport: KubeTransport::Loopback,
            reason: format!("auto: {estimate}, within {limit_text}"),
        },
        KubeTransportArg::Auto => TransportChoice {
            transport: KubeTransport::Memory,
            reason: format!("auto: {estimate}, above {limit_text}"),
        },
    }
}

/// Errors starting an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Loading the cluster's kubeconfig failed.
    #[error("cluster {cluster}: invalid kubeconfig")]
    Kubeconfig {
        /// The cluster name.
        cluster: String,
        /// The kubeconfig error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Building the Kubernetes client from the kubeconfig failed.
    #[error("cluster {cluster}: cannot build the Kubernetes client")]
    Client {
        /// The cluster name.
        cluster: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Every running agent.
pub struct Agents {
    transport: KubeTransport,
    runtimes: Vec<Arc<AgentRuntime>>,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Agents {
    /// An empty fleet whose agents will reach their clusters over `transport`.
    pub fn new(transport: KubeTransport) -> Self {
        let (stop, _) = watch::channel(false);
        Self {
            transport,
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
        let client = match self.transport {
            KubeTransport::Loopback => loopback_client(cluster).await?,
            KubeTransport::Memory => memory_client(cluster),
        };
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

/// A client for `cluster` from its kubeconfig, as `keyfleet-agent --kubeconfig` builds it.
async fn loopback_client(cluster: &ClusterHandle) -> Result<kube::Client, AgentError> {
    let name = cluster.name();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml()).map_err(|source| {
        AgentError::Kubeconfig {
            cluster: name.to_owned(),
            source,
        }
    })?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|source| AgentError::Kubeconfig {
                cluster: name.to_owned(),
                source,
            })?;
    kube::Client::try_from(config).map_err(|source| AgentError::Client {
        cluster: name.to_owned(),
        source,
    })
}

/// A client for `cluster` over its in-memory API, with the middleware `kube::Client::try_from`
/// puts around a connection that still applies in memory: the retry of 429/503/504 (auth and
/// the base URI are the service's job; there is no connection to time out).
fn memory_client(cluster: &ClusterHandle) -> kube::Client {
    let service = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(
            kube::client::retry::RetryPolicy::server_retry(),
        ))
        .map_err(|never: std::convert::Infallible| -> tower::BoxError { match never {} })
        .service(cluster.in_memory_api());
    // The namespace a kubeconfig from `ClusterHandle::kubeconfig_yaml` names too.
    kube::Client::new(service, "default")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        requested: KubeTransportArg,
        clusters: usize,
        limit: Result<Option<u64>, String>,
        expected: KubeTransport,
        reason_has: &str,
    ) {
        let choice = choose_transport(requested, clusters, limit);
        assert_eq!(choice.transport, expected, "{choice:?}");
        assert!(choice.reason.contains(reason_has), "{choice:?}");
    }

    #[test]
    fn auto_uses_loopback_while_the_fleet_fits_in_the_open_file_limit() {
        use KubeTransport::{Loopback, Memory};
        use KubeTransportArg::Auto;
        check(
            Auto,
            1_500,
            Ok(Some(20_000)),
            Loopback,
            "auto: 1500 loopback agents",
        );
        check(
            Auto,
            1_500,
            Ok(Some(20_000)),
            Loopback,
            "within the open-file limit of 20000",
        );
        check(
            Auto,
            10_000,
            Ok(Some(20_000)),
            Memory,
            "above the open-file limit of 20000",
        );
        check(Auto, 10_000, Ok(None), Loopback, "no open-file limit");
        check(
            Auto,
            4,
            Err("no /proc".into()),
            Loopback,
            "assumed open-file limit of 1024 (no /proc)",
        );
        check(Auto, 1_000, Err("no /proc".into()), Memory, "assumed");
    }

    #[test]
    fn an_explicit_transport_is_kept_and_says_so() {
        use KubeTransport::{Loopback, Memory};
        check(KubeTransportArg::Memory, 4, Ok(Some(20_000)), Memory, "requested");
        check(
            KubeTransportArg::Loopback,
            4,
            Ok(Some(20_000)),
            Loopback,
            "within",
        );
        check(
            KubeTransportArg::Loopback,
            10_000,
            Ok(Some(20_000)),
            Loopback,
            "although",
        );
    }
}
