//! Prometheus metrics of the vault module (bounded labels: store, operation, outcome).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    throttled: Family<StoreLabels, Counter>,
    polls: Family<PollLabels, Counter>,
    changes: Family<StoreLabels, Counter>,
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
            "Key Vault wire requests by store, operation (get, list_secrets, list_versions, token) and outcome",
            self.inner.calls.clone(),
        );
        registry.register(
            "throttled",
            "Key Vault 429 answers by store",
            self.inner.throttled.clone(),
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
        if outcome == "throttled" {
            self.inner
                .throttled
                .get_or_create(&StoreLabels {
                    store: store.to_owned(),
                })
                .inc();
        }
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
            .map(|outcome| {
                self.inner
                    .calls
                    .get_or_create(&CallLabels {
                        store: store.to_owned(),
                        operation: operation.to_owned(),
                        outcome: (*outcome).to_owned(),
                    })
                    .get()
            })
            .sum()
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
            throttled: self
                .inner
                .throttled
                .get_or_create(&StoreLabels {
                    store: store.to_owned(),
                })
                .get(),
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
        assert!(
            text.contains("keyfleet_hub_vault_throttled_total{store=\"kv\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keyfleet_hub_vault_calls_total{store=\"kv\",operation=\"get\",outcome=\"ok\"} 1"),
            "{text}"
        );
    }
}
