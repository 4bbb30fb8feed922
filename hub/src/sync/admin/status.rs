//! Status views: per FleetSecret, the current revision and its Key Vault versions, how many
//! targeted clusters applied it, are pending, failed or are offline, the rollout decision (the
//! engine's planner run over what the store records), the lagging clusters, the pins, and the
//! validity of the Key Vault versions it serves with the conditions that need attention
//! (`governance.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::governance::{
    Condition, ConditionKind, SourceView, earliest_expiry, index_served, lagging_condition, source_views,
    validity_conditions,
};
use super::{Admin, AdminError, not_found_fleet_secret};
use crate::domain::{ClusterId, ClusterState, SyncState};
use crate::store::{RevisionRecord, SyncStatus};
use crate::sync::engine::{plan_cluster, plan_status, rollout_progress};
use crate::sync::plan::{
    self, PlanCluster, PlanFleetSecret, PlanInput, PlanStatus, RevisionRef, RolloutProgress,
};

/// Lagging clusters listed when the request says 0.
pub const DEFAULT_LAGGING_LIMIT: u32 = 20;
/// Most lagging clusters listed per FleetSecret.
pub const MAX_LAGGING_LIMIT: u32 = 1_000;

/// Where a cluster stands with one FleetSecret, as the status views say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewState {
    /// It holds the revision it should.
    Applied,
    /// Connected, and not yet on its revision.
    Pending,
    /// Its agent refused the revision.
    Error,
    /// Disconnected, and not on its revision.
    Offline,
}

impl ViewState {
    /// "applied", "pending", "error" or "offline".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Pending => "pending",
            Self::Error => "error",
            Self::Offline => "offline",
        }
    }
}

/// One (cluster, FleetSecret) status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSecretView {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Cluster name.
    pub cluster: String,
    /// Revision the cluster should hold (0: none yet).
    pub desired_revision: u64,
    /// Revision it acknowledged last.
    pub applied_revision: Option<u64>,
    /// Where it stands.
    pub state: ViewState,
    /// The agent's last error (never a value).
    pub last_error: Option<String>,
    /// Delivery attempts.
    pub attempts: u32,
    /// Last status write (`None`: nothing recorded yet).
    pub updated: Option<DateTime<Utc>>,
}

impl ClusterSecretView {
    /// A stored row, for a cluster that is `connected` or not.
    pub fn of(row: &SyncStatus, connected: bool) -> Self {
        let state = match row.state {
            SyncState::Applied => ViewState::Applied,
            SyncState::Error => ViewState::Error,
            SyncState::Pending | SyncState::Undelivered if !connected => ViewState::Offline,
            SyncState::Pending | SyncState::Undelivered => ViewState::Pending,
        };
        Self {
            fleet_secret: row.fleet_secret.clone(),
            cluster: row.cluster_name.clone(),
            desired_revision: row.desired_revision,
            applied_revision: row.applied_revision,
            state,
            last_error: row.last_error.clone(),
            attempts: row.attempts,
            updated: Some(row.updated),
        }
    }
}

/// Targeted clusters by where they stand with the current revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretCounts {
    /// Clusters the FleetSecret targets (not revoked, selector matches).
    pub targeted: u32,
    /// Holding the current revision.
    pub applied: u32,
    /// Connected, not yet holding it.
    pub pending: u32,
    /// Their agent refused it.
    pub error: u32,
    /// Disconnected, not holding it.
    pub offline: u32,
}

/// A rollout decision, as the planner takes it over what the store records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutView {
    /// `none`, `progressing`, `paused`, `complete`.
    pub state: &'static str,
    /// Wave reached.
    pub current_wave: u32,
    /// Waves in all.
    pub waves: u32,
    /// Why (paused, waiting); empty when nothing to say.
    pub reason: String,
}

/// The status of one FleetSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSecretStatus {
    /// Its name.
    pub name: String,
    /// Current revision (0: none yet).
    pub revision: u64,
    /// The Key Vault versions the current revision was rendered from, with `exp`/`nbf`.
    pub sources: Vec<SourceView>,
    /// Targeted clusters by where they stand.
    pub counts: SecretCounts,
    /// The rollout decision, when it has a rollout strategy.
    pub rollout: Option<RolloutView>,
    /// Clusters not on their desired revision, oldest first.
    pub lagging: Vec<ClusterSecretView>,
    /// (remote key, pinned version).
    pub pins: Vec<(String, String)>,
    /// What needs attention: Expired, NearExpiry, NotYetValid, Paused, Lagging (in that order).
    pub conditions: Vec<Condition>,
    /// Earliest `exp` among the sources.
    pub expires: Option<DateTime<Utc>>,
    /// The `NearExpiry` threshold in force.
    pub near_expiry_threshold: std::time::Duration,
    /// Drift reported in the last [`DRIFT_WINDOW`] (and how much of it was not repaired).
    pub drift: crate::store::DriftCount,
}

/// How far back the status counts reported drift.
pub const DRIFT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A status view is served again, without reading the store's rows, for at most this long while
/// the store's inputs stand still: what depends on the clock alone (a disconnected cluster's
/// offline grace, expiry conditions, the Lagging condition's age) is at most this old.
pub const STATUS_SNAPSHOT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Most status views kept (one per FleetSecret asked and lagging limit).
const STATUS_SNAPSHOTS: usize = 64;

/// The status views last computed on this replica, each with the store inputs
/// ([`crate::store::Store::status_inputs`]) it was computed from.
///
/// **Why a snapshot and not counters in memory:** every replica must answer the same, and only
/// the store holds every replica's acks; a replica's own counters would miss the others'. So a
/// call costs one small read of two numbers, and the full computation (every cluster and status
/// row of the FleetSecret, and the planner's rollout decision) runs once per status flush of any
/// replica (or change-log entry), however many callers (`rollout status --watch`, dashboards,
/// scripts) ask in between. The lock also makes concurrent callers on a stale snapshot wait for
/// one computation instead of each running it.
#[derive(Default)]
pub struct StatusCache {
    snapshots: HashMap<(Option<String>, u32), Snapshot>,
    /// Views computed from the store (tests and the debug log read it).
    computed: u64,
}

struct Snapshot {
    inputs: (i64, i64),
    at: std::time::Instant,
    statuses: Vec<FleetSecretStatus>,
}

impl Admin {
    /// Status of the named FleetSecrets (all when `only` is `None`), listing at most
    /// `lagging_limit` lagging clusters each (0: [`DEFAULT_LAGGING_LIMIT`]); from the snapshot
    /// of an earlier call while the store's inputs stand still ([`StatusCache`]).
    pub async fn statuses(
        &self,
        only: Option<&str>,
        lagging_limit: u32,
    ) -> Result<Vec<FleetSecretStatus>, AdminError> {
        if lagging_limit > MAX_LAGGING_LIMIT {
            return Err(super::invalid(
                "lagging_limit",
                format!("at most {MAX_LAGGING_LIMIT}"),
            ));
        }
        let mut cache = self.status_cache.lock().await;
        let inputs = self.store.status_inputs().await?;
        let slot = (only.map(str::to_owned), lagging_limit);
        if let Some(snapshot) = cache.snapshots.get(&slot)
            && snapshot.inputs == inputs
            && snapshot.at.elapsed() < STATUS_SNAPSHOT_MAX_AGE
        {
            return Ok(snapshot.statuses.clone());
        }
        let statuses = self.compute_statuses(only, lagging_limit).await?;
        // Inputs read before the computation: a write during it leaves the snapshot stale for the
        // next call, never the other way round.
        if cache.snapshots.len() >= STATUS_SNAPSHOTS {
            cache.snapshots.clear();
        }
        cache.computed += 1;
        cache.snapshots.insert(
            slot,
            Snapshot {
                inputs,
                at: std::time::Instant::now(),
                statuses: statuses.clone(),
            },
        );
        Ok(statuses)
    }

    /// Status views computed from the store so far (not served from a snapshot).
    #[cfg(test)]
    pub(crate) async fn statuses_computed(&self) -> u64 {
        self.status_cache.lock().await.computed
    }

    /// [`Admin::statuses`] computed from the store.
    async fn compute_statuses(
        &self,
        only: Option<&str>,
        lagging_limit: u32,
    ) -> Result<Vec<FleetSecretStatus>, AdminError> {
        let mut secrets = self.fleet_secrets().await?;
        if let Some(name) = only {
            secrets.retain(|key, _| key == name);
            if secrets.is_empty() {
                return Err(not_found_fleet_secret(name));
            }
        }
        let clusters = self.store.list_clusters(None).await?;
        let rows = match only {
            Some(name) => self.store.status_for_fleet_secret(name).await,
            None => self.store.all_status().await,
        }?;
        let revisions: HashMap<String, RevisionRecord> = self
            .store
            .latest_revisions()
            .await?
            .into_iter()
            .map(|revision| (revision.fleet_secret.clone(), revision))
            .collect();
        let rollouts: Vec<RolloutProgress> = self
            .store
            .rollouts()
            .await?
            .iter()
            .map(rollout_progress)
            .collect();
        let pins = self.store.pins().await?;
        let served = index_served(self.store.served_versions().await?);
        let now = Utc::now();
        let drift = self.store.drift_counts(now - DRIFT_WINDOW).await?;

        let connected: HashMap<ClusterId, bool> = clusters
            .iter()
            .map(|cluster| (cluster.id, self.connectivity.connected(false, cluster, now)))
            .collect();
        let plan_clusters: Vec<PlanCluster> = clusters
            .iter()
            .map(|cluster| plan_cluster(cluster, connected[&cluster.id]))
            .collect();
        let plan_secrets: Vec<PlanFleetSecret> = secrets
            .values()
            .map(|(_, secret)| PlanFleetSecret {
                spec: Arc::clone(secret),
                current: revisions.get(&secret.name).map(|revision| RevisionRef {
                    number: revision.revision,
                }),
                previous: None,
            })
            .collect();
        let plan_rows: Vec<PlanStatus> = rows.iter().map(plan_status).collect();
        let deleted = BTreeMap::new();
        let plan = plan::plan(&PlanInput {
            clusters: &plan_clusters,
            fleet_secrets: &plan_secrets,
            deleted: &deleted,
            status: &plan_rows,
            rollouts: &rollouts,
            now,
            offline_grace: self.connectivity.offline_grace(),
        });

        let mut rows_by_secret: HashMap<&str, HashMap<ClusterId, &SyncStatus>> = HashMap::new();
        for row in &rows {
            rows_by_secret
                .entry(row.fleet_secret.as_str())
                .or_default()
                .insert(row.cluster, row);
        }
        let limit = match lagging_limit {
            0 => DEFAULT_LAGGING_LIMIT,
            limit => limit,
        } as usize;
        let empty = HashMap::new();
        let mut out = Vec::with_capacity(secrets.len());
        for (name, (_, secret)) in &secrets {
            let revision = revisions.get(name);
            let current = revision.map_or(0, |revision| revision.revision);
            let rows = rows_by_secret.get(name.as_str()).unwrap_or(&empty);
            let mut counts = SecretCounts::default();
            for cluster in &clusters {
                if cluster.state == ClusterState::Revoked || !secret.clusters.matches(&cluster.labels) {
                    continue;
                }
                counts.targeted += 1;
                let row = rows.get(&cluster.id);
                if current != 0 && row.is_some_and(|row| row.applied_revision == Some(current)) {
                    counts.applied += 1;
                } else if row.is_some_and(|row| row.state == SyncState::Error) {
                    counts.error += 1;
                } else if !connected[&cluster.id] {
                    counts.offline += 1;
                } else {
                    counts.pending += 1;
                }
            }
            // The rows not on their desired revision, oldest first (the store's lagging order),
            // from the rows already read: no query per FleetSecret.
            let mut lagging: Vec<&SyncStatus> = rows
                .values()
                .copied()
                .filter(|row| row.applied_revision != Some(row.desired_revision))
                .collect();
            lagging.sort_by(|a, b| {
                (a.updated, &a.cluster_name, &a.fleet_secret).cmp(&(
                    b.updated,
                    &b.cluster_name,
                    &b.fleet_secret,
                ))
            });
            let lagging_count = lagging.len();
            let oldest = lagging
                .first()
                .map(|row| (row.cluster_name.as_str(), row.updated));
            let lagging_now = lagging_condition(lagging_count, oldest, now);
            lagging.truncate(limit);
            let decision = plan
                .rollouts
                .iter()
                .find(|decision| *decision.fleet_secret == **name);
            let sources = revision
                .map(|revision| source_views(name, &revision.sources, &served))
                .unwrap_or_default();
            let threshold = self.threshold_for(secret.near_expiry_threshold);
            let mut conditions = validity_conditions(&sources, threshold, now);
            if let Some(decision) = decision
                && decision.state == plan::RolloutState::Paused
            {
                conditions.push(Condition {
                    kind: ConditionKind::Paused,
                    message: if decision.reason.is_empty() {
                        "rollout paused".to_owned()
                    } else {
                        decision.reason.clone()
                    },
                });
            }
            conditions.extend(lagging_now);
            out.push(FleetSecretStatus {
                drift: drift.get(name.as_str()).copied().unwrap_or_default(),
                name: name.clone(),
                revision: current,
                expires: earliest_expiry(&sources),
                sources,
                conditions,
                near_expiry_threshold: threshold,
                counts,
                rollout: decision.map(|decision| RolloutView {
                    state: decision.state.as_str(),
                    current_wave: decision.current_wave,
                    waves: decision.waves,
                    reason: decision.reason.clone(),
                }),
                lagging: lagging
                    .into_iter()
                    .map(|row| {
                        ClusterSecretView::of(row, connected.get(&row.cluster).copied().unwrap_or(false))
                    })
                    .collect(),
                pins: pins
                    .iter()
                    .filter(|pin| pin.fleet_secret == *name)
                    .map(|pin| (pin.remote_key.clone(), pin.version.clone()))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Status of one FleetSecret.
    pub async fn status_of(&self, name: &str) -> Result<FleetSecretStatus, AdminError> {
        self.statuses(Some(name), DEFAULT_LAGGING_LIMIT)
            .await?
            .pop()
            .ok_or_else(|| not_found_fleet_secret(name))
    }
}

#[cfg(test)]
mod tests;
