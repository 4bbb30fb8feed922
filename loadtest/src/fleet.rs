//! The simulated fleet of a run, either kind (`--agents`): real agents, each with its fake
//! Kubernetes API ([`crate::agents`]), or protocol-level agents ([`crate::protocol`]). Both are
//! spread over the hub replicas round-robin by cluster index and followed by one [`Tracker`].

use std::sync::Arc;

use anyhow::Context as _;
use keyfleet_testkit::agent::HubAddress;
use keyfleet_testkit::kube::{ClusterHandle, FakeKube};

use crate::agents::{Agents, TransportChoice};
use crate::config::AgentsArg;
use crate::protocol::ProtocolAgents;
use crate::replicas::Replicas;
use crate::tracker::Tracker;

/// The agents of a run.
pub enum Fleet {
    /// Real agent code against fake Kubernetes APIs.
    Real {
        /// The fake API server every cluster lives in.
        kube: Arc<FakeKube>,
        /// Each cluster's handle, by index.
        handles: Vec<ClusterHandle>,
        /// The running agents.
        agents: Agents,
        /// How they reach their APIs, and why.
        transport: TransportChoice,
    },
    /// Protocol-level agents, in memory.
    Protocol {
        /// The running agents.
        agents: ProtocolAgents,
    },
}

impl Fleet {
    /// Real agents: starts the fake API server with every cluster (namespaces created) and a
    /// tracker of the target Secret `secret` in `namespaces`.
    pub async fn real(
        names: &[String],
        secret: &str,
        namespaces: &[String],
        transport: TransportChoice,
    ) -> anyhow::Result<(Self, Tracker)> {
        let kube = Arc::new(
            FakeKube::start(keyfleet_testkit::kube::Config {
                // The tracker must see every write of a burst (a rotation writes the Secret in
                // every namespace of every cluster at once; enrollment adds a credential Secret
                // each).
                write_notifications: (names.len() * (namespaces.len() + 2)).max(4096),
                ..keyfleet_testkit::kube::Config::default()
            })
            .await
            .context("start the fake Kubernetes API server")?,
        );
        let mut handles = Vec::with_capacity(names.len());
        for name in names {
            let handle = kube
                .add_cluster(name)
                .with_context(|| format!("add fake cluster {name}"))?;
            for namespace in namespaces.iter().map(String::as_str).chain(["keyfleet-system"]) {
                if namespace != "default" {
                    let _ = handle.create_namespace(namespace);
                }
            }
            handles.push(handle);
        }
        let tracker = Tracker::kube(Arc::clone(&kube), names, secret, namespaces.to_vec());
        let agents = Agents::new(transport.transport);
        Ok((
            Self::Real {
                kube,
                handles,
                agents,
                transport,
            },
            tracker,
        ))
    }

    /// Protocol agents knowing every replica, tracked by the revision of `key` they hold.
    pub fn protocol(names: &[String], key: &str, replicas: &Replicas) -> (Self, Tracker) {
        let hubs = replicas
            .grpc_addrs()
            .into_iter()
            .map(|addr| HubAddress::new(addr, replicas.ca_pem()))
            .collect();
        (
            Self::Protocol {
                agents: ProtocolAgents::new(hubs),
            },
            Tracker::protocol(names, key),
        )
    }

    /// Which kind.
    pub fn kind(&self) -> AgentsArg {
        match self {
            Self::Real { .. } => AgentsArg::Real,
            Self::Protocol { .. } => AgentsArg::Protocol,
        }
    }

    /// Starts the agent of cluster `index` with its enrollment token, on replica
    /// `index % replicas` (a real agent knows only that one; a protocol agent falls back to the
    /// others).
    pub async fn start(
        &mut self,
        index: usize,
        name: &str,
        token: String,
        replicas: &Replicas,
        tracker: &Tracker,
    ) -> anyhow::Result<()> {
        match self {
            Self::Real { handles, agents, .. } => {
                let url = replicas.url(index % replicas.len().max(1));
                agents
                    .start(&handles[index], &url, replicas.ca_pem(), token)
                    .await?;
            }
            Self::Protocol { agents } => agents.start(index, name, token, tracker),
        }
        Ok(())
    }

    /// The fake clusters (real agents only; drift is tampered with through them).
    pub fn handles(&self) -> Option<&[ClusterHandle]> {
        match self {
            Self::Real { handles, .. } => Some(handles),
            Self::Protocol { .. } => None,
        }
    }

    /// The Kubernetes API transport (real agents only).
    pub fn transport(&self) -> Option<&TransportChoice> {
        match self {
            Self::Real { transport, .. } => Some(transport),
            Self::Protocol { .. } => None,
        }
    }

    /// The fleet in words, for the report.
    pub fn describe(&self, clusters: usize, replicas: usize) -> String {
        let spread = if replicas > 1 {
            format!(", spread round-robin over {replicas} hub replicas")
        } else {
            String::new()
        };
        match self {
            Self::Real { transport, .. } => format!(
                "real agent code (keyfleet_agent::AgentRuntime) × {clusters}, each with its own kube client to its own fake Kubernetes API ({}){spread}{}",
                match transport.transport {
                    crate::agents::KubeTransport::Loopback => "over loopback HTTPS",
                    crate::agents::KubeTransport::Memory =>
                        "in memory: the fake API's router called in process",
                },
                if replicas > 1 {
                    " (one hub address each: they reconnect to their replica)"
                } else {
                    ""
                }
            ),
            Self::Protocol { .. } => format!(
                "protocol-level agents (keyfleet_testkit::agent::RunningAgent) × {clusters}: one TLS connection and Sync stream each, Updates applied and acked in memory, no Kubernetes API{spread}{}",
                if replicas > 1 {
                    " (each knows every replica and fails over)"
                } else {
                    ""
                }
            ),
        }
    }

    /// Stops every agent (and the fake API server).
    pub async fn stop(self) {
        match self {
            Self::Real { kube, agents, .. } => {
                agents.stop().await;
                drop(kube);
            }
            Self::Protocol { agents } => agents.stop(),
        }
    }
}
