//! The agent's metrics: cheap atomics, registered into a Prometheus registry only by the binary
//! (an in-process loadtest agent keeps them unregistered).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of one agent.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// 1 while a Sync stream is established (after Welcome).
    pub connected: Gauge,
    /// Sync streams that ended and were reopened.
    pub reconnects: Counter,
    /// Upserts applied (ACK).
    pub applied_ok: Counter,
    /// Upserts refused (NACK).
    pub applied_refused: Counter,
    /// Managed Secrets repaired after an edit.
    pub drift_modified: Counter,
    /// Managed Secrets recreated after a deletion.
    pub drift_deleted: Counter,
    /// Keys applied (refreshed at each Hello and each audit).
    pub applied_keys: Gauge,
    /// Writes made to the Kubernetes API (apply, delete, release).
    pub kube_writes: Counter,
    /// Items whose writes failed midway and were rolled back (or whose rollback was tried).
    pub rollbacks: Counter,
    /// Rollbacks that failed too (the cluster holds a mix until the hub's next attempt).
    pub rollback_failures: Counter,
    /// Kubernetes Event writes made (a new Event, or a series count update).
    pub events_posted: Counter,
    /// Kubernetes Events not posted: the API refused or failed, or the queue was full.
    pub events_failed: Counter,
    /// Occurrences folded into an Event's series within its cooldown (no API call).
    pub events_aggregated: Counter,
}

impl Metrics {
    /// Registers every metric under the `keyfleet_agent` prefix.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("keyfleet_agent");
        registry.register(
            "connected",
            "1 while the Sync stream to the hub is established",
            self.connected.clone(),
        );
        registry.register("reconnects", "Sync streams reopened", self.reconnects.clone());
        registry.register("applied", "Upserts applied", self.applied_ok.clone());
        registry.register("refused", "Upserts refused", self.applied_refused.clone());
        registry.register(
            "drift_modified",
            "Managed Secrets repaired after an edit",
            self.drift_modified.clone(),
        );
        registry.register(
            "drift_deleted",
            "Managed Secrets recreated after a deletion",
            self.drift_deleted.clone(),
        );
        registry.register("applied_keys", "Keys applied", self.applied_keys.clone());
        registry.register(
            "kube_writes",
            "Writes to the Kubernetes API",
            self.kube_writes.clone(),
        );
        registry.register(
            "rollbacks",
            "Items whose writes failed midway and were rolled back",
            self.rollbacks.clone(),
        );
        registry.register(
            "rollback_failures",
            "Rollbacks that failed too (fixed by the hub's next attempt)",
            self.rollback_failures.clone(),
        );
        registry.register(
            "events_posted",
            "Kubernetes Event writes (new Events and series updates)",
            self.events_posted.clone(),
        );
        registry.register(
            "events_failed",
            "Kubernetes Events not posted (API error or queue full); the write they report is unaffected",
            self.events_failed.clone(),
        );
        registry.register(
            "events_aggregated",
            "Occurrences folded into an Event series within its cooldown",
            self.events_aggregated.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// docs/metrics.md's agent table lists exactly what the agent registers, with its type.
    #[test]
    fn docs_metrics_lists_every_agent_metric() {
        let mut registry = Registry::default();
        Metrics::default().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let served: BTreeMap<String, String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .map(|(name, kind)| {
                let name = if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                (name, kind.to_owned())
            })
            .collect();
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
            .expect("docs/metrics.md");
        let documented: BTreeMap<String, String> = docs
            .lines()
            .filter_map(|line| line.strip_prefix("| `keyfleet_agent_"))
            .filter_map(|rest| {
                let (name, rest) = rest.split_once('`')?;
                let kind = rest.trim_start_matches(" |").split('|').next()?.trim().to_owned();
                Some((format!("keyfleet_agent_{name}"), kind))
            })
            .collect();
        assert_eq!(served, documented, "docs/metrics.md's Agent table is out of date");
    }
}
