//! Prometheus metrics of the vault module (bounded labels: store, operation, outcome).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    store: String,
    operation: String,
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PollLabels {
    store: String,
    outcome: String,
}

#[derive(Default)]
struct Inner {
    calls: Family<CallLabels, Counter>,
    polls: Family<PollLabels, Counter>,
    changes: Family<StoreLabels, Counter>,
    /// Unix time of each store's last successful sweep (on the replica that polled it).
    last_poll: Family<StoreLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while this replica leads the Key Vault pollers.
    leader: Gauge,
}

/// The vault module's metrics. Cheap to clone; register once with [`VaultMetrics::register`].
#[derive(Clone, Default)]
pub struct VaultMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VaultMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultMetrics").finish_non_exhaustive()
    }
}

/// A snapshot of one store's figures (tests, the loadtest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollerStats {
    /// Wire requests that read a value (`GET /secrets/{name}/{version}`), any outcome.
    pub get_calls: u64,
    /// Wire requests of `GET /secrets` pages, any outcome.
    pub list_calls: u64,
    /// Wire requests of `GET /secrets/{name}/versions` pages, any outcome.
    pub list_versions_calls: u64,
    /// 429 answers received.
    pub throttled: u64,
    /// Completed sweeps.
    pub polls_ok: u64,
    /// Sweeps that failed (vault down, throttled, denied).
    pub polls_failed: u64,
    /// Changes emitted.
    pub changes: u64,
}

/// Outcomes of one wire request.
pub(crate) const OUTCOMES: &[&str] = &[
    "ok",
    "challenge",
    "unauthorized",
    "forbidden",
    "not_found",
    "throttled",
    "server_error",
    "client_error",
    "transport_error",
    "circuit_open",
];

impl VaultMetrics {
    /// Registers the families under `registry` (give it a `vault` sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "calls",
            "Key Vault wire requests by store, operation (get, list_secrets, list_versions, other) and outcome (429s: outcome=\"throttled\")",
            self.inner.calls.clone(),
        );
        registry.register(
            "polls",
            "Change-detection sweeps by store and outcome (ok, failed)",
            self.inner.polls.clone(),
        );
        registry.register(
            "changes",
            "New secret versions emitted by store",
            self.inner.changes.clone(),
        );
        registry.register(
            "last_successful_poll_timestamp_seconds",
            "Unix time of the last successful change-detection sweep by store (only the leader polls)",
            self.inner.last_poll.clone(),
        );
    }

    /// Registers `leader` at the root of `registry` (`keyfleet_hub_leader`).
    pub fn register_leader(&self, registry: &mut Registry) {
        registry.register(
            "leader",
            "1 while this replica leads the Key Vault pollers (records versions, revisions, rollout progress)",
            self.inner.leader.clone(),
        );
    }

    /// Whether this replica leads the pollers (as last set by the engine).
    pub fn is_leader(&self) -> bool {
        self.inner.leader.get() == 1
    }

    /// Set by the engine when it takes or loses the leadership.
    pub(crate) fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    pub(crate) fn call(&self, store: &str, operation: &str, outcome: &str) {
        self.inner
            .calls
            .get_or_create(&CallLabels {
                store: store.to_owned(),
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub(crate) fn poll(&self, store: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.inner
            .polls
            .get_or_create(&PollLabels {
                store: store.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            self.inner
                .last_poll
                .get_or_create(&StoreLabels {
                    store: store.to_owned(),
                })
                .set(now);
        }
    }

    pub(crate) fn change(&self, store: &str) {
        self.inner
            .changes
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
            })
            .inc();
    }

    fn calls_of(&self, store: &str, operation: &str) -> u64 {
        OUTCOMES
            .iter()
            .map(|outcome| self.calls_with(store, operation, outcome))
            .sum()
    }

    fn calls_with(&self, store: &str, operation: &str, outcome: &str) -> u64 {
        self.inner
            .calls
            .get_or_create(&CallLabels {
                store: store.to_owned(),
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    /// The figures of one store.
    pub fn stats(&self, store: &str) -> PollerStats {
        let poll = |outcome: &str| {
            self.inner
                .polls
                .get_or_create(&PollLabels {
                    store: store.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .get()
        };
        PollerStats {
            get_calls: self.calls_of(store, "get"),
            list_calls: self.calls_of(store, "list_secrets"),
            list_versions_calls: self.calls_of(store, "list_versions"),
            // 429s are `calls_total{outcome="throttled"}` (no separate counter).
            throttled: ["get", "list_secrets", "list_versions", "other"]
                .iter()
                .map(|operation| self.calls_with(store, operation, "throttled"))
                .sum(),
            polls_ok: poll("ok"),
            polls_failed: poll("failed"),
            changes: self
                .inner
                .changes
                .get_or_create(&StoreLabels {
                    store: store.to_owned(),
                })
                .get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_text_exposition() {
        let metrics = VaultMetrics::default();
        let mut registry = Registry::with_prefix("keyfleet_hub");
        metrics.register(registry.sub_registry_with_prefix("vault"));
        metrics.call("kv", "get", "ok");
        metrics.call("kv", "get", "throttled");
        metrics.call("kv", "list_secrets", "ok");
        metrics.poll("kv", true);
        metrics.change("kv");
        let stats = metrics.stats("kv");
        assert_eq!(
            (
                stats.get_calls,
                stats.list_calls,
                stats.throttled,
                stats.polls_ok,
                stats.changes
            ),
            (2, 1, 1, 1, 1)
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(!text.contains("vault_throttled"), "{text}");
        assert!(
            text.contains(
                "keyfleet_hub_vault_calls_total{store=\"kv\",operation=\"get\",outcome=\"throttled\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("keyfleet_hub_vault_last_successful_poll_timestamp_seconds{store=\"kv\"} "),
            "{text}"
        );
        assert!(
            text.contains("keyfleet_hub_vault_calls_total{store=\"kv\",operation=\"get\",outcome=\"ok\"} 1"),
            "{text}"
        );
    }
}
