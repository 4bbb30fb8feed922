//! What the engine knows of the fleet for planning: every cluster as the planner sees it, which
//! clusters another replica serves, the status of every (cluster, fleet secret) and what was last
//! handed to the fan-out; and the one definition of "connected" ([`Connectivity`]) and of a
//! cluster's plan inputs ([`plan_cluster`], [`plan_status`], [`rollout_progress`]), which the
//! Admin status views use too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use super::waves::Observed;
use super::{Engine, EngineError};
use crate::domain::{ClusterId, ClusterState, SyncState};
use crate::fleet::credentials::Credentials;
use crate::fleet::{ClusterDesired, Fleet, FleetEvent};
use crate::store::{Cluster, ClusterLiveness, RolloutRecord, Store, StoreError, SyncStatus};
use crate::sync::plan::{PlanCluster, PlanStatus, RolloutProgress};

/// Whether a cluster answers: the one definition the engine's waves and the status views share.
///
/// A cluster is connected when its stream is on this replica, or when the store shows it on
/// another replica that refreshed it recently. A live replica refreshes `last_seen` of its
/// clusters every few minutes (the status writer's liveness interval); a replica that died for
/// good leaves them marked connected, so that mark counts only within twice the offline grace.
#[derive(Debug, Clone)]
pub struct Connectivity {
    /// This replica (`None` where no stream is served: every replica is "another").
    replica: Option<String>,
    offline_grace: TimeDelta,
}

impl Connectivity {
    /// For `replica` (`None`: a reader without streams of its own).
    pub fn new(replica: Option<String>, offline_grace: TimeDelta) -> Self {
        Self {
            replica,
            offline_grace,
        }
    }

    /// The offline grace waves use.
    pub fn offline_grace(&self) -> TimeDelta {
        self.offline_grace
    }

    /// Marks older than this no longer count.
    fn fresh_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.offline_grace * 2
    }

    /// Whether the store shows the cluster served by another replica, refreshed recently.
    pub fn served_elsewhere(
        &self,
        connected_replica: Option<&str>,
        last_seen: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> bool {
        let fresh = self.fresh_since(now);
        connected_replica.is_some_and(|replica| Some(replica) != self.replica.as_deref())
            && last_seen.is_some_and(|seen| seen >= fresh)
    }

    /// Whether the cluster is connected: its stream is here (`streamed_here`) or, by the store,
    /// on another live replica.
    pub fn connected(&self, streamed_here: bool, cluster: &Cluster, now: DateTime<Utc>) -> bool {
        streamed_here || self.served_elsewhere(cluster.connected_replica.as_deref(), cluster.last_seen, now)
    }
}

/// A cluster as the planner sees it.
pub fn plan_cluster(cluster: &Cluster, connected: bool) -> PlanCluster {
    PlanCluster {
        id: cluster.id,
        connected,
        name: Arc::from(cluster.name.as_str()),
        labels: Arc::new(cluster.labels.clone()),
        state: cluster.state,
        last_seen: cluster.last_seen,
        wave_hash: crate::sync::plan::wave_hash(cluster.id),
    }
}

/// A stored status row as the planner sees it.
pub fn plan_status(row: &SyncStatus) -> PlanStatus {
    PlanStatus {
        cluster: row.cluster,
        fleet_secret: Arc::from(row.fleet_secret.as_str()),
        desired_revision: row.desired_revision,
        applied_revision: row.applied_revision,
        state: row.state,
    }
}

/// Recorded rollout progress as the planner sees it.
pub fn rollout_progress(record: &RolloutRecord) -> RolloutProgress {
    RolloutProgress {
        fleet_secret: record.fleet_secret.clone(),
        revision: record.revision,
        current_wave: record.current_wave,
        paused: record.paused,
        reason: record.reason.clone(),
    }
}

/// Brings the credential index and the fleet in line with the store after a cluster change made
/// anywhere (another replica's enrollment, `keyfleet cluster revoke`): credentials enrolled
/// elsewhere are added, and every cluster of `clusters` (the store's list, which the caller has
/// just read) that is revoked loses its credential and its stream (PERMISSION_DENIED) and is
/// refused from then on. Returns the clusters newly revoked here.
pub async fn refresh_credentials(
    store: &Store,
    clusters: &[Cluster],
    credentials: &Credentials,
    fleet: &Fleet,
) -> Result<Vec<ClusterId>, StoreError> {
    credentials.insert_many(&store.active_credentials().await?);
    let mut revoked = Vec::new();
    for cluster in clusters {
        if cluster.state != ClusterState::Revoked {
            continue;
        }
        let had_credential = credentials.revoke_cluster(cluster.id);
        if had_credential || !fleet.is_revoked(cluster.id) {
            fleet.revoke(cluster.id);
            tracing::info!(cluster = %cluster.id, cluster_name = %cluster.name, "cluster revoked");
            revoked.push(cluster.id);
        }
    }
    Ok(revoked)
}

/// The planner's view of the fleet, kept current by the change log, fleet events and liveness.
pub(super) struct Inventory {
    pub(super) connectivity: Connectivity,
    pub(super) clusters: HashMap<ClusterId, PlanCluster>,
    /// Clusters the store shows connected to another replica (they count as connected for waves).
    pub(super) elsewhere: HashSet<ClusterId>,
    pub(super) status: HashMap<(ClusterId, Arc<str>), PlanStatus>,
    /// What was last handed to the fleet, per cluster.
    pub(super) sent: HashMap<ClusterId, Arc<ClusterDesired>>,
    /// The planner's [`Selection`](crate::sync::plan::Selection) for the clusters in the order it
    /// was made; dropped whenever the clusters are set again.
    pub(super) selection: Option<CachedSelection>,
}

/// A [`Selection`](crate::sync::plan::Selection), the cluster order it was made for and the specs
/// it was made from (held, so that a replaced spec can never share an address with its successor).
pub(super) struct CachedSelection {
    pub(super) order: Vec<ClusterId>,
    pub(super) specs: Vec<Arc<crate::spec::FleetSecretSpec>>,
    pub(super) selection: crate::sync::plan::Selection,
}

impl Inventory {
    pub(super) fn new(connectivity: Connectivity) -> Self {
        Self {
            connectivity,
            clusters: HashMap::new(),
            elsewhere: HashSet::new(),
            status: HashMap::new(),
            sent: HashMap::new(),
            selection: None,
        }
    }

    /// Whether every known cluster has its stream on this replica.
    pub(super) fn all_connected_here(&self, fleet: &Fleet) -> bool {
        fleet.connected_count() >= self.clusters.len()
            && fleet.with_connected(|connected| self.clusters.keys().all(|id| connected(*id)))
    }

    /// Refreshes every cluster's `connected` from the fleet and `elsewhere`.
    pub(super) fn refresh_connected(&mut self, fleet: &Fleet) {
        let elsewhere = &self.elsewhere;
        fleet.with_connected(|connected| {
            for cluster in self.clusters.values_mut() {
                cluster.connected = connected(cluster.id) || elsewhere.contains(&cluster.id);
            }
        });
    }

    /// Takes which replica serves each known cluster and when it was last seen; whether that
    /// changed what the planner sees.
    fn apply_liveness(&mut self, liveness: &[ClusterLiveness], fleet: &Fleet) -> bool {
        let now = Utc::now();
        let connectivity = &self.connectivity;
        self.elsewhere = liveness
            .iter()
            .filter(|entry| {
                connectivity.served_elsewhere(entry.connected_replica.as_deref(), entry.last_seen, now)
            })
            .map(|entry| entry.id)
            .collect();
        let elsewhere = &self.elsewhere;
        let clusters = &mut self.clusters;
        fleet.with_connected(|connected_here| {
            let mut changed = false;
            for entry in liveness {
                let Some(cluster) = clusters.get_mut(&entry.id) else {
                    continue;
                };
                let connected = connected_here(entry.id) || elsewhere.contains(&entry.id);
                if cluster.connected != connected || cluster.last_seen != entry.last_seen {
                    cluster.connected = connected;
                    cluster.last_seen = entry.last_seen;
                    changed = true;
                }
            }
            changed
        })
    }

    /// Records what `cluster` holds of `key`: applied only when it is the revision sent.
    fn set_status(&mut self, cluster: ClusterId, key: &str, applied: Option<u64>, state: SyncState) {
        let desired = self
            .sent
            .get(&cluster)
            .and_then(|desired| desired.items.get(key))
            .map_or(0, |item| item.revision);
        let state = if state == SyncState::Applied && applied != Some(desired) {
            SyncState::Pending
        } else {
            state
        };
        let name: Arc<str> = Arc::from(key);
        self.status.insert(
            (cluster, Arc::clone(&name)),
            PlanStatus {
                cluster,
                fleet_secret: name,
                desired_revision: desired,
                applied_revision: applied,
                state,
            },
        );
    }

    /// Notes a new desired set handed to the fleet: its keys become pending where not applied.
    pub(super) fn sent(&mut self, cluster: ClusterId, desired: Arc<ClusterDesired>) {
        for (key, item) in &desired.items {
            let key: Arc<str> = Arc::from(key.as_str());
            let entry = self.status.entry((cluster, Arc::clone(&key)));
            let row = entry.or_insert_with(|| PlanStatus {
                cluster,
                fleet_secret: key,
                desired_revision: item.revision,
                applied_revision: None,
                state: SyncState::Pending,
            });
            row.desired_revision = item.revision;
            if row.applied_revision != Some(item.revision) && row.state == SyncState::Applied {
                row.state = SyncState::Pending;
            }
        }
        self.sent.insert(cluster, desired);
    }
}

impl Engine {
    /// Reloads the clusters after a change: one list serves both the plan's inventory and the
    /// credential index and streams (enrolled on another replica, or revoked anywhere).
    pub(super) async fn reload_clusters(&mut self) -> Result<(), EngineError> {
        let listed = self.store.list_clusters(None).await?;
        refresh_credentials(&self.store, &listed, &self.credentials, &self.fleet).await?;
        self.set_clusters(&listed);
        Ok(())
    }

    /// Takes the store's cluster list as the plan's inventory and notes which clusters another
    /// replica serves; a cluster no longer listed loses its stream and credential here.
    pub(super) fn set_clusters(&mut self, listed: &[Cluster]) {
        let now = Utc::now();
        let connectivity = &self.inventory.connectivity;
        self.inventory.elsewhere = listed
            .iter()
            .filter(|cluster| {
                connectivity.served_elsewhere(cluster.connected_replica.as_deref(), cluster.last_seen, now)
            })
            .map(|cluster| cluster.id)
            .collect();
        let clusters: HashMap<ClusterId, PlanCluster> = self.fleet.with_connected(|connected_here| {
            listed
                .iter()
                .map(|cluster| {
                    let connected = connectivity.connected(connected_here(cluster.id), cluster, now);
                    (cluster.id, plan_cluster(cluster, connected))
                })
                .collect()
        });
        for gone in self
            .inventory
            .clusters
            .keys()
            .filter(|id| !clusters.contains_key(id))
        {
            self.fleet.revoke(*gone);
            self.credentials.revoke_cluster(*gone);
        }
        self.inventory.clusters = clusters;
        // Labels, states or membership may have changed: the planner selects again.
        self.inventory.selection = None;
    }

    /// The acks other replicas record count for waves too: reloads the clusters (liveness, which
    /// replica serves them) and the status of the fleet secrets `names` from the store; plans
    /// again when anything changed. Rows of clusters connected here stay as this process knows
    /// them (it hears their acks first). Runs each tail tick while a rollout progresses, and
    /// before a wave advances.
    ///
    /// It reads only what changes by the second: each cluster's serving replica and last-seen
    /// time, and the status rows of clusters the store does not show here. (Measured at 10,000
    /// clusters: re-listing the whole inventory with labels and every status row of the fleet
    /// secret each second was ~25 % of the hub's CPU during a rotation.)
    ///
    /// When every known cluster is connected here, the store has nothing to add (this process
    /// hears each of their answers first) and nothing is read: a single replica, or one serving
    /// the whole fleet, never pays for the 10,000-row liveness read per wave.
    pub(super) async fn refresh_from_store(&mut self, names: &[String]) -> Result<(), EngineError> {
        if self.inventory.all_connected_here(&self.fleet) {
            return Ok(());
        }
        let liveness = self.store.cluster_liveness().await?;
        let changed = self.inventory.apply_liveness(&liveness, &self.fleet);
        self.replan |= changed;
        self.refresh_status(names).await
    }

    /// The status half of [`Engine::refresh_from_store`], alone: what another replica's status
    /// write (`keyfleet_status`) can have changed. Which replica serves which cluster comes with
    /// the tail tick. The caller knows some cluster is not connected here (a wave waits for one).
    pub(super) async fn refresh_status(&mut self, names: &[String]) -> Result<(), EngineError> {
        let mut changed = false;
        for name in names {
            let rows = self
                .store
                .status_served_elsewhere(name, &self.config.replica)
                .await?;
            let inventory = &mut self.inventory;
            self.fleet.with_connected(|connected_here| {
                for row in rows.iter().filter(|row| !connected_here(row.cluster)) {
                    let status = plan_status(row);
                    let slot = (row.cluster, Arc::clone(&status.fleet_secret));
                    if inventory.status.get(&slot) != Some(&status) {
                        inventory.status.insert(slot, status);
                        changed = true;
                    }
                }
            });
        }
        self.replan |= changed;
        Ok(())
    }

    /// Applies a fleet event to the in-memory status and says what it means for planning: an
    /// answer counts down its wave ([`Waves`](super::waves::Waves)); a (re)connection with what the
    /// agent holds may change any rollout's view, so it plans again (debounced).
    pub(super) fn observe(&mut self, event: FleetEvent) -> Observed {
        let secrets = &self.secrets;
        let rollout_relevant = |key: &str| secrets.get(key).is_some_and(|state| state.spec.rollout.is_some());
        let inventory = &mut self.inventory;
        match event {
            FleetEvent::Connected { cluster, applied, .. } => {
                inventory.elsewhere.remove(&cluster);
                if let Some(entry) = inventory.clusters.get_mut(&cluster) {
                    entry.connected = true;
                    entry.last_seen = Some(Utc::now());
                }
                let mut relevant = false;
                for (key, revision) in applied {
                    relevant |= rollout_relevant(&key);
                    inventory.set_status(cluster, &key, Some(revision), SyncState::Applied);
                }
                if relevant {
                    Observed::Replan
                } else {
                    Observed::Nothing
                }
            }
            FleetEvent::Disconnected { cluster, at } => {
                if let Some(entry) = inventory.clusters.get_mut(&cluster) {
                    entry.connected = false;
                    entry.last_seen = Some(at);
                }
                self.waves.disconnected(cluster, at, self.config.offline_grace);
                Observed::Nothing
            }
            FleetEvent::Acked {
                cluster,
                key,
                revision,
                ..
            } => {
                inventory.set_status(cluster, &key, Some(revision), SyncState::Applied);
                self.waves.answered(cluster, &key, revision, false)
            }
            FleetEvent::Nacked {
                cluster,
                key,
                revision,
                ..
            } => {
                let applied = inventory
                    .status
                    .get(&(cluster, Arc::from(key.as_str())))
                    .and_then(|row| row.applied_revision);
                inventory.set_status(cluster, &key, applied, SyncState::Error);
                self.waves.answered(cluster, &key, revision, true)
            }
            FleetEvent::Removed { cluster, key, .. } => {
                inventory.status.remove(&(cluster, Arc::from(key.as_str())));
                Observed::Nothing
            }
            FleetEvent::Drift { .. } => Observed::Nothing,
        }
    }
}
