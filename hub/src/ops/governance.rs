//! The per-FleetSecret metrics a platform team alerts on (`docs/metrics.md`): rollout counts at
//! the current revision, the revision, wave and pause, the expiry of every served Key Vault
//! version, and a histogram of the time from a version being seen to its rotation applied in
//! every targeted cluster. Read from the store every `--metrics-refresh` by every replica
//! ([`crate::sync::admin::Admin::governance`]: four small reads, no status row scan), so any
//! replica's `/metrics` shows them; aggregate across replicas with `max by (fleet_secret, …)`.
//! Also `keyfleet_hub_build_info`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::sync::admin::{Admin, GovernanceView};
use crate::vault::VaultMetrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SecretLabels {
    fleet_secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClusterLabels {
    fleet_secret: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KeyLabels {
    fleet_secret: String,
    remote_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Buckets of the rotation histogram: 100 ms to 6 h.
const ROTATION_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1_800.0, 3_600.0, 21_600.0,
];

struct Inner {
    revision: Family<SecretLabels, Gauge>,
    clusters: Family<ClusterLabels, Gauge>,
    wave: Family<SecretLabels, Gauge>,
    paused: Family<SecretLabels, Gauge>,
    threshold: Family<SecretLabels, Gauge>,
    expiry: Family<KeyLabels, FloatGauge>,
    not_before: Family<KeyLabels, FloatGauge>,
    rotation: Histogram,
    refresh_errors: Counter,
    build_info: Family<BuildLabels, Gauge>,
}

/// The governance metrics. Cheap to clone; register once with [`GovernanceMetrics::register`].
#[derive(Clone)]
pub struct GovernanceMetrics {
    inner: Arc<Inner>,
}

impl Default for GovernanceMetrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                revision: Family::default(),
                clusters: Family::default(),
                wave: Family::default(),
                paused: Family::default(),
                threshold: Family::default(),
                expiry: Family::default(),
                not_before: Family::default(),
                rotation: Histogram::new(ROTATION_BUCKETS),
                refresh_errors: Counter::default(),
                build_info: Family::default(),
            }),
        }
    }
}

impl std::fmt::Debug for GovernanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernanceMetrics").finish_non_exhaustive()
    }
}

impl GovernanceMetrics {
    /// Registers every family at the root of `registry` (prefix `keyfleet_hub`).
    pub fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        inner
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the hub's version as a label",
            inner.build_info.clone(),
        );
        registry.register(
            "fleet_secret_revision",
            "Current revision number of each FleetSecret",
            inner.revision.clone(),
        );
        registry.register(
            "fleet_secret_clusters",
            "Clusters of each FleetSecret by state at its current revision: applied (acknowledged it), \
             failed (refused it), pending (not on it yet: in flight or held back by the waves)",
            inner.clusters.clone(),
        );
        registry.register(
            "fleet_secret_rollout_wave",
            "Wave the FleetSecret's rollout reached (0 without waves)",
            inner.wave.clone(),
        );
        registry.register(
            "fleet_secret_rollout_paused",
            "1 while the FleetSecret's rollout is paused (by an admin or by its error rate)",
            inner.paused.clone(),
        );
        registry.register(
            "fleet_secret_near_expiry_threshold_seconds",
            "The NearExpiry threshold in force for the FleetSecret",
            inner.threshold.clone(),
        );
        registry.register(
            "secret_expiry_timestamp_seconds",
            "Key Vault exp (Unix time) of the version each FleetSecret serves, by remote key (absent: no exp)",
            inner.expiry.clone(),
        );
        registry.register(
            "secret_not_before_timestamp_seconds",
            "Key Vault nbf (Unix time) of the version each FleetSecret serves, by remote key (absent: no nbf)",
            inner.not_before.clone(),
        );
        registry.register(
            "rotation_duration_seconds",
            "Seconds from a new Key Vault version seen (or a spec change rendered) to its revision \
             applied in every targeted cluster, one observation per completed revision (leader only)",
            inner.rotation.clone(),
        );
        registry.register(
            "governance_refresh_errors",
            "Failed reads of the per-FleetSecret metrics from the store (retried next refresh)",
            inner.refresh_errors.clone(),
        );
    }
}

/// Keeps [`GovernanceMetrics`] in line with the store.
pub struct GovernanceRefresher {
    metrics: GovernanceMetrics,
    vault: VaultMetrics,
    /// Label sets exported by the last refresh (to remove those that went away).
    secrets: HashSet<String>,
    keys: HashSet<(String, String)>,
    /// Revisions already complete (observed, or complete before this process looked).
    complete: HashMap<String, u64>,
    first: bool,
}

impl GovernanceRefresher {
    /// Refreshes `metrics`; observes rotations only while `vault` says this replica leads.
    pub fn new(metrics: GovernanceMetrics, vault: VaultMetrics) -> Self {
        Self {
            metrics,
            vault,
            secrets: HashSet::new(),
            keys: HashSet::new(),
            complete: HashMap::new(),
            first: true,
        }
    }

    /// Refreshes every `interval` until `stop`.
    pub async fn run(mut self, admin: Admin, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match admin.governance().await {
                Ok(views) => self.apply(&views),
                Err(error) => {
                    self.metrics.inner.refresh_errors.inc();
                    tracing::warn!(error = %error, "cannot refresh the FleetSecret metrics from the store; retrying");
                }
            }
        }
    }

    /// Sets every gauge from `views` and removes the series of what went away.
    pub fn apply(&mut self, views: &[GovernanceView]) {
        let inner = Arc::clone(&self.metrics.inner);
        let mut secrets = HashSet::new();
        let mut keys = HashSet::new();
        for view in views {
            let secret = SecretLabels {
                fleet_secret: view.name.clone(),
            };
            secrets.insert(view.name.clone());
            inner.revision.get_or_create(&secret).set(gauge(view.revision));
            for (state, value) in [
                ("applied", view.applied),
                ("pending", view.pending),
                ("failed", view.failed),
            ] {
                inner
                    .clusters
                    .get_or_create(&ClusterLabels {
                        fleet_secret: view.name.clone(),
                        state,
                    })
                    .set(gauge(value));
            }
            inner.wave.get_or_create(&secret).set(i64::from(view.wave));
            inner.paused.get_or_create(&secret).set(i64::from(view.paused));
            inner
                .threshold
                .get_or_create(&secret)
                .set(gauge(view.near_expiry_threshold.as_secs()));
            for source in &view.sources {
                let labels = KeyLabels {
                    fleet_secret: view.name.clone(),
                    remote_key: source.remote_key.clone(),
                };
                match source.expires {
                    Some(at) => {
                        inner.expiry.get_or_create(&labels).set(unix(at));
                    }
                    None => {
                        inner.expiry.remove(&labels);
                    }
                }
                match source.not_before {
                    Some(at) => {
                        inner.not_before.get_or_create(&labels).set(unix(at));
                    }
                    None => {
                        inner.not_before.remove(&labels);
                    }
                }
                keys.insert((view.name.clone(), source.remote_key.clone()));
            }
            self.rotation(view);
        }
        for gone in self.secrets.difference(&secrets) {
            let secret = SecretLabels {
                fleet_secret: gone.clone(),
            };
            inner.revision.remove(&secret);
            inner.wave.remove(&secret);
            inner.paused.remove(&secret);
            inner.threshold.remove(&secret);
            for state in ["applied", "pending", "failed"] {
                inner.clusters.remove(&ClusterLabels {
                    fleet_secret: gone.clone(),
                    state,
                });
            }
            self.complete.remove(gone);
        }
        for (fleet_secret, remote_key) in self.keys.difference(&keys) {
            let labels = KeyLabels {
                fleet_secret: fleet_secret.clone(),
                remote_key: remote_key.clone(),
            };
            inner.expiry.remove(&labels);
            inner.not_before.remove(&labels);
        }
        self.secrets = secrets;
        self.keys = keys;
        self.first = false;
    }

    /// Observes a revision once, when every cluster with its status applied it.
    fn rotation(&mut self, view: &GovernanceView) {
        let done = view.revision != 0 && view.applied > 0 && view.pending == 0 && view.failed == 0;
        if !done || self.complete.get(&view.name) == Some(&view.revision) {
            return;
        }
        self.complete.insert(view.name.clone(), view.revision);
        // Complete before this process looked: not measured here.
        if self.first || !self.vault.is_leader() {
            return;
        }
        if let (Some(seen), Some(applied)) = (view.seen, view.last_applied) {
            let seconds = (applied - seen).num_milliseconds().max(0) as f64 / 1_000.0;
            self.metrics.inner.rotation.observe(seconds);
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unix(at: chrono::DateTime<chrono::Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::sync::admin::SourceView;

    fn view(name: &str, revision: u64, applied: u64, pending: u64) -> GovernanceView {
        let now = Utc::now();
        GovernanceView {
            name: name.to_owned(),
            revision,
            revision_created: Some(now - TimeDelta::seconds(3)),
            seen: Some(now - TimeDelta::seconds(3)),
            applied,
            pending,
            failed: 0,
            last_applied: Some(now),
            wave: 1,
            paused: false,
            sources: vec![SourceView {
                remote_key: "acr-pull".to_owned(),
                version: "v1".to_owned(),
                expires: Some(now + TimeDelta::days(10)),
                not_before: None,
            }],
            near_expiry_threshold: Duration::from_secs(30 * 86_400),
        }
    }

    fn text(metrics: &GovernanceMetrics) -> String {
        let mut registry = Registry::with_prefix("keyfleet_hub");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn gauges_follow_the_store_and_series_of_deleted_secrets_go_away() {
        let metrics = GovernanceMetrics::default();
        let vault = VaultMetrics::default();
        let mut refresher = GovernanceRefresher::new(metrics.clone(), vault);
        refresher.apply(&[view("regcred", 7, 3, 2), view("db", 2, 5, 0)]);
        let out = text(&metrics);
        assert!(
            out.contains("keyfleet_hub_fleet_secret_revision{fleet_secret=\"regcred\"} 7"),
            "{out}"
        );
        assert!(
            out.contains("keyfleet_hub_fleet_secret_clusters{fleet_secret=\"regcred\",state=\"pending\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("keyfleet_hub_secret_expiry_timestamp_seconds{fleet_secret=\"regcred\",remote_key=\"acr-pull\"} "),
            "{out}"
        );
        assert!(out.contains("keyfleet_hub_build_info{version=\""), "{out}");
        refresher.apply(&[view("db", 2, 5, 0)]);
        let out = text(&metrics);
        assert!(!out.contains("fleet_secret=\"regcred\""), "{out}");
        assert!(out.contains("fleet_secret=\"db\""), "{out}");
    }

    #[test]
    fn a_rotation_is_observed_once_on_the_leader_when_every_cluster_applied() {
        let metrics = GovernanceMetrics::default();
        let vault = VaultMetrics::default();
        let mut refresher = GovernanceRefresher::new(metrics.clone(), vault.clone());
        // Complete before the first look: not observed.
        refresher.apply(&[view("regcred", 1, 3, 0)]);
        vault.set_leader(true);
        refresher.apply(&[view("regcred", 2, 1, 2)]);
        refresher.apply(&[view("regcred", 2, 3, 0)]);
        refresher.apply(&[view("regcred", 2, 3, 0)]);
        let out = text(&metrics);
        assert!(
            out.contains("keyfleet_hub_rotation_duration_seconds_count 1"),
            "{out}"
        );
        assert!(
            out.contains("keyfleet_hub_rotation_duration_seconds_bucket{le=\"5.0\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("keyfleet_hub_rotation_duration_seconds_bucket{le=\"2.5\"} 0"),
            "{out}"
        );
        // A follower does not observe.
        vault.set_leader(false);
        refresher.apply(&[view("regcred", 3, 3, 0)]);
        assert!(text(&metrics).contains("keyfleet_hub_rotation_duration_seconds_count 1"));
    }
}
