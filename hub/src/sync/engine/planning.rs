//! Planning: the pure planner over what the engine knows, the desired sets that changed handed to
//! the fleet, and (leader only) rollout progress recorded with a change-log entry followers plan
//! from. Before a wave advances, what other replicas recorded is read first.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::Utc;

use super::inventory::CachedSelection;
use super::{Engine, EngineError};
use crate::fleet::ClusterDesired;
use crate::store::{ChangeKind, RolloutRecord};
use crate::sync::plan::{
    self, PlanCluster, PlanFleetSecret, PlanInput, PlanStatus, RolloutProgress, RolloutState,
};

/// The actor of what the hub itself does (waves, Key Vault versions) in the audit log.
pub(super) const AUDIT_ACTOR: &str = "hub";

impl Engine {
    /// Plans every cluster and hands changed desired sets to the fleet; the leader persists
    /// rollout progress.
    pub(super) async fn plan_and_send(&mut self) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.replan) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut plan = self.compute_plan();
        let advancing: Vec<String> = plan
            .rollouts
            .iter()
            .filter(|decision| self.advances(decision))
            .map(|decision| decision.fleet_secret.to_string())
            .collect();
        if !advancing.is_empty() {
            // A wave is about to advance: first count what other replicas recorded (their acks,
            // which clusters they serve), so that no wave moves on without their clusters; plan
            // again only if that changed what the planner sees.
            self.refresh_from_store(&advancing).await?;
            if std::mem::take(&mut self.replan) {
                plan = self.compute_plan();
            }
        }
        let changed = self.send_plan(&plan);
        tracing::debug!(
            clusters = plan.clusters.len(),
            changed,
            wave_advancing = !advancing.is_empty(),
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "planned"
        );
        self.waves.reset(&plan);
        self.record_progress(&plan).await
    }

    /// Plans at once (a wave's last member answered, or an offline grace ended), without
    /// rendering; a failure leaves the plan to the next debounced rebuild.
    pub(super) async fn plan_now(&mut self) -> Result<(), EngineError> {
        let span = match self.rotations.values().next() {
            Some(rotation) => tracing::info_span!(parent: rotation, "plan", wave_done = true),
            None => tracing::info_span!("plan", wave_done = true),
        };
        let planned = tracing::Instrument::instrument(self.plan_and_send(), span).await;
        if planned.is_err() {
            self.replan = true;
        }
        planned
    }

    /// Whether `decision` moves its rollout past the wave recorded for its revision.
    fn advances(&self, decision: &plan::RolloutDecision) -> bool {
        let Some(revision) = decision.revision else {
            return false;
        };
        let recorded = self
            .rollouts
            .get(&*decision.fleet_secret)
            .filter(|progress| progress.revision == revision)
            .map_or(0, |progress| progress.current_wave);
        decision.waves > 0 && decision.current_wave > recorded
    }

    /// The plan for the current inventory, revisions, status and rollout progress. Which clusters
    /// each FleetSecret targets and their waves are selected once per set of clusters and specs
    /// ([`plan::Selection`]), not per plan.
    fn compute_plan(&mut self) -> plan::Plan {
        self.inventory.refresh_connected(&self.fleet);
        let fleet_secrets: Vec<PlanFleetSecret> = self
            .secrets
            .values()
            .map(|state| PlanFleetSecret {
                spec: Arc::clone(&state.spec),
                current: state.current.as_ref().map(|built| built.reference),
                previous: state.previous,
            })
            .collect();
        let inventory = &mut self.inventory;
        let fits = inventory.selection.as_ref().is_some_and(|cached| {
            cached.order.len() == inventory.clusters.len()
                && cached.specs.len() == fleet_secrets.len()
                && cached
                    .specs
                    .iter()
                    .zip(&fleet_secrets)
                    .all(|(spec, secret)| Arc::ptr_eq(spec, &secret.spec))
        });
        let clusters: Vec<PlanCluster> = match inventory.selection.as_ref().filter(|_| fits) {
            Some(cached) => cached
                .order
                .iter()
                .filter_map(|id| inventory.clusters.get(id).cloned())
                .collect(),
            None => {
                let clusters: Vec<PlanCluster> = inventory.clusters.values().cloned().collect();
                inventory.selection = Some(CachedSelection {
                    order: clusters.iter().map(|cluster| cluster.id).collect(),
                    specs: fleet_secrets
                        .iter()
                        .map(|secret| Arc::clone(&secret.spec))
                        .collect(),
                    selection: plan::Selection::new(&clusters, &fleet_secrets),
                });
                clusters
            }
        };
        let status: Vec<PlanStatus> = self.inventory.status.values().cloned().collect();
        let rollouts: Vec<RolloutProgress> = self.rollouts.values().cloned().collect();
        let input = PlanInput {
            clusters: &clusters,
            fleet_secrets: &fleet_secrets,
            deleted: &self.deleted,
            status: &status,
            rollouts: &rollouts,
            now: Utc::now(),
            offline_grace: self.config.offline_grace,
        };
        match &self.inventory.selection {
            // Every cluster of the order is still known (else the counts differ and `plan_with`
            // selects again).
            Some(cached) => plan::plan_with(&input, &cached.selection),
            None => plan::plan(&input),
        }
    }

    /// Hands every changed desired set to the fleet; returns how many changed. Clusters that
    /// must hold the same revisions and removals share one desired set (and the fleet computes
    /// its digest once): a wave of 9,000 clusters builds one set, not 9,000.
    fn send_plan(&mut self, plan: &plan::Plan) -> usize {
        let mut changed = Vec::new();
        let mut not_built: BTreeSet<(&str, u64)> = BTreeSet::new();
        let mut shared: HashMap<(&[plan::Desired], &[plan::Removal]), Arc<ClusterDesired>> = HashMap::new();
        for cluster_plan in &plan.clusters {
            // Most clusters' sets do not change from one plan to the next (a wave moves a share of
            // the fleet): compare before building anything.
            let sent = self.inventory.sent.get(&cluster_plan.cluster);
            if sent.is_some_and(|sent| Self::unchanged(sent, cluster_plan)) {
                continue;
            }
            let key = (cluster_plan.desired.as_slice(), cluster_plan.removals.as_slice());
            if let Some(desired) = shared.get(&key) {
                if sent.is_none_or(|sent| !Arc::ptr_eq(sent, desired) && **sent != **desired) {
                    changed.push((cluster_plan.cluster, Arc::clone(desired)));
                }
                continue;
            }
            let mut desired = ClusterDesired::default();
            for item in &cluster_plan.desired {
                let name: &str = &item.fleet_secret;
                let encoded = self
                    .values
                    .built
                    .get(&(name.to_owned(), item.revision.number))
                    .cloned()
                    .or_else(|| {
                        // A previous revision that could not be reproduced here (see
                        // `restore_previous`): move the cluster forward rather than leave it
                        // without the key.
                        not_built.insert((name, item.revision.number));
                        self.secrets
                            .get(name)
                            .and_then(|state| state.current.as_ref())
                            .map(|built| Arc::clone(&built.encoded))
                    });
                if let Some(encoded) = encoded {
                    desired.items.insert(name.to_owned(), encoded);
                }
            }
            for removal in &cluster_plan.removals {
                desired
                    .removals
                    .insert(removal.fleet_secret.to_string(), removal.deletion_policy);
            }
            let desired = Arc::new(desired);
            shared.insert(key, Arc::clone(&desired));
            if sent.is_none_or(|sent| **sent != *desired) {
                changed.push((cluster_plan.cluster, desired));
            }
        }
        for (name, revision) in not_built {
            tracing::warn!(
                fleet_secret = name,
                revision,
                "revision not built here; sending the current one instead"
            );
        }
        for (cluster, desired) in &changed {
            self.inventory.sent(*cluster, Arc::clone(desired));
        }
        let count = changed.len();
        if count > 0 {
            self.fleet.set_desired_many(changed);
        }
        count
    }

    /// Whether `sent` already is what `cluster_plan` asks for: the same revision of every key (a
    /// revision number is global and its encoded bytes never change) and the same removals.
    fn unchanged(sent: &ClusterDesired, cluster_plan: &plan::ClusterPlan) -> bool {
        sent.items.len() == cluster_plan.desired.len()
            && sent.removals.len() == cluster_plan.removals.len()
            && cluster_plan.desired.iter().all(|item| {
                sent.items
                    .get(&*item.fleet_secret)
                    .is_some_and(|encoded| encoded.revision == item.revision.number)
            })
            && cluster_plan
                .removals
                .iter()
                .all(|removal| sent.removals.get(&*removal.fleet_secret) == Some(&removal.deletion_policy))
    }

    /// Notes which rollouts progress and, on the leader, records their progress (and an audit row
    /// per wave reached and per automatic pause, actor [`AUDIT_ACTOR`]).
    async fn record_progress(&mut self, plan: &plan::Plan) -> Result<(), EngineError> {
        self.progressing = plan
            .rollouts
            .iter()
            .filter(|decision| {
                decision.state == RolloutState::Progressing
                    || (decision.state == RolloutState::Paused && !decision.manually_paused)
            })
            .map(|decision| decision.fleet_secret.to_string())
            .collect();
        // Only the leader records progress (one writer); followers plan from what it recorded
        // and hear of each step through the change log.
        if !self.vaults.leads() {
            return Ok(());
        }
        for decision in &plan.rollouts {
            let Some(progress) = decision.progress() else {
                continue;
            };
            if self.rollouts.get(progress.fleet_secret.as_str()) != Some(&progress) {
                // A wave started (or paused): a short span, child of the rotation that started the
                // rollout when this leader saw it (else of the plan that took the step).
                let wave = match self.rotations.get(progress.fleet_secret.as_str()) {
                    Some(rotation) => tracing::info_span!(parent: rotation, "rollout.wave",
                        fleet_secret = %progress.fleet_secret, revision = progress.revision,
                        wave = progress.current_wave, paused = progress.paused),
                    None => tracing::info_span!("rollout.wave", fleet_secret = %progress.fleet_secret,
                        revision = progress.revision, wave = progress.current_wave, paused = progress.paused),
                };
                drop(wave.entered());
                self.store
                    .set_rollout(&RolloutRecord {
                        fleet_secret: progress.fleet_secret.clone(),
                        revision: progress.revision,
                        current_wave: progress.current_wave,
                        paused: progress.paused,
                        reason: progress.reason.clone(),
                    })
                    .await?;
                self.store
                    .append_change(ChangeKind::Rollout, &progress.fleet_secret)
                    .await?;
                if progress.paused {
                    tracing::warn!(fleet_secret = %progress.fleet_secret, reason = %progress.reason, "rollout paused");
                }
                // Each wave reached is an audit row (`keyfleet rollout history` reads them).
                let previous = self.rollouts.get(progress.fleet_secret.as_str());
                let advanced = previous.is_none_or(|previous| {
                    previous.revision != progress.revision || previous.current_wave != progress.current_wave
                });
                if advanced {
                    self.store
                        .append_audit(
                            AUDIT_ACTOR,
                            "rollout.wave",
                            &format!(
                                "fleetsecret/{} revision {} wave {}",
                                progress.fleet_secret,
                                progress.revision,
                                progress.current_wave + 1
                            ),
                            chrono::Utc::now(),
                        )
                        .await?;
                }
                if progress.paused && previous.is_none_or(|previous| !previous.paused) {
                    self.store
                        .append_audit(
                            AUDIT_ACTOR,
                            "rollout.paused",
                            &format!(
                                "fleetsecret/{} revision {}: {}",
                                progress.fleet_secret, progress.revision, progress.reason
                            ),
                            chrono::Utc::now(),
                        )
                        .await?;
                }
                self.rollouts.insert(progress.fleet_secret.clone(), progress);
                // Waves advance as acks arrive: plan again once they do.
            }
        }
        // A rotation whose rollout has no wave left ends here (its span closes); one whose
        // version is not rendered yet (a plan between the version and its render) has not begun.
        let (progressing, dirty) = (&self.progressing, &self.dirty);
        self.rotations
            .retain(|name, _| progressing.contains(name) || dirty.contains(name));
        Ok(())
    }
}
