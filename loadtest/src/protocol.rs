//! Protocol-level agents (`--agents protocol`): per cluster one
//! `keyfleet_testkit::agent::RunningAgent`, a task with one TLS connection and one Sync stream
//! that enrolls with its token, applies and acks every Update in memory (key → revision, sha256,
//! each payload's sha256 checked) and reconnects with jittered backoff, moving to the next hub
//! replica after a failure or a Drain. No Kubernetes API, no fake API server: the fleet process
//! stays small enough for 10,000 clusters on 2 cores, so the hub is what is measured.
//!
//! The tracker follows each agent's published state ([`Tracker::follow_agent`]): a cluster holds
//! a revision once its agent applied and acked it.

use keyfleet_testkit::agent::{AgentConfig, HubAddress, Identity, RunningAgent};

use crate::tracker::Tracker;

/// Every running protocol agent. Dropping it (or [`ProtocolAgents::stop`]) stops them.
pub struct ProtocolAgents {
    hubs: Vec<HubAddress>,
    agents: Vec<RunningAgent>,
}

impl ProtocolAgents {
    /// An empty fleet whose agents know `hubs` (the replicas; an agent starts on one and falls
    /// back to the others).
    pub fn new(hubs: Vec<HubAddress>) -> Self {
        Self {
            hubs,
            agents: Vec::new(),
        }
    }

    /// Starts the agent of cluster `index` (`name`) with its one-time enrollment token, first on
    /// replica `index % replicas`, followed by `tracker`.
    pub fn start(&mut self, index: usize, name: &str, token: String, tracker: &Tracker) {
        let first = index % self.hubs.len().max(1);
        let config = AgentConfig::new(self.hubs.clone(), first, Identity::Token(token));
        let agent = RunningAgent::start(config);
        tracker.follow_agent(name, agent.watch());
        self.agents.push(agent);
    }

    /// Agents started.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether none was started.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Agents with a stream open now (after a Welcome).
    pub fn connected(&self) -> usize {
        self.agents
            .iter()
            .filter(|agent| agent.watch().borrow().connected_to.is_some())
            .count()
    }

    /// Stops every agent (their tasks are aborted; the hub sees the streams end).
    pub fn stop(self) {
        drop(self.agents);
    }
}
