//! Planning: from the inventory, the checked FleetSecrets with their revisions, per-cluster sync
//! status and rollout progress, decide which revision every cluster must hold, which removals are
//! due, and where every rollout stands.
//!
//! **Invariant:** pure. No IO, no async, no logging, no clock: `now` is an input. The same input
//! always gives the same plan.
//!
//! Rules:
//! - A FleetSecret targets the non-revoked clusters its `clusters` selector matches. Revoked
//!   clusters get no plan at all (their streams are refused).
//! - Without a rollout strategy every targeted cluster gets the current revision (state `none`).
//! - With waves, a targeted cluster belongs to the first wave that selects it: a selector wave by
//!   its labels, a percentage wave by the cluster's rank in a stable hash order of the targeted
//!   clusters (rank < ⌈p·n/100⌉, so the same clusters are picked every time). Clusters no wave
//!   selects form an implicit last wave. Clusters in waves up to the current one get the current
//!   revision. A wave is done when every member that can answer (enrolled, and connected or seen
//!   within `offline_grace`) has applied the revision or reported an error; the rollout then moves
//!   on, provided the wave's error rate stays at or below `pauseOnErrorRate`. Above it the rollout
//!   pauses and says why; that pause lifts itself when the rate falls back (agents retry).
//! - A manual pause ([`RolloutProgress::paused`]) holds the wave where it is, for the revision it
//!   was set on: a new revision (for instance a rollback by pin) starts a fresh rollout at wave 0.
//! - Clusters beyond the current wave keep the revision they hold when it is the current or the
//!   previous one; otherwise (nothing applied yet, or an older revision) they get the revision the
//!   completed waves have: the current one once a wave has completed, else the previous one.
//! - A (cluster, FleetSecret) status row whose FleetSecret no longer targets the cluster, or no
//!   longer exists, is a removal with the FleetSecret's `deletionPolicy` (a deleted FleetSecret's
//!   last policy comes from [`PlanInput::deleted`]; unknown ones are retained).
//!
//! Cost: O(clusters × FleetSecrets) selector checks plus one sort of the clusters by hash; no
//! lookup scans a list.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::{ClusterId, ClusterState, Labels, Sha256, SyncState};
use crate::spec::{DeletionPolicy, FleetSecretSpec, Wave};

/// A cluster as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCluster {
    /// Stable id (also the input of the wave hash).
    pub id: ClusterId,
    /// Name, for messages (shared: the runtime hands the planner its whole inventory each plan).
    pub name: Arc<str>,
    /// Hub-side inventory labels (shared, as `name`).
    pub labels: Arc<Labels>,
    /// Lifecycle state.
    pub state: ClusterState,
    /// Whether an agent stream is connected now.
    pub connected: bool,
    /// Last time the hub heard from the agent.
    pub last_seen: Option<DateTime<Utc>>,
    /// [`wave_hash`] of `id`, computed once where the cluster is loaded (not per plan).
    pub wave_hash: u64,
}

/// A rendered revision, by its number (its bytes and digest stay with the engine; the plan
/// needs neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RevisionRef {
    /// Global revision number.
    pub number: u64,
}

/// A FleetSecret with its revisions.
#[derive(Debug, Clone)]
pub struct PlanFleetSecret {
    /// The checked spec (selector, rollout, deletionPolicy).
    pub spec: Arc<FleetSecretSpec>,
    /// The newest revision; `None` until one is rendered.
    pub current: Option<RevisionRef>,
    /// The revision before it, if any.
    pub previous: Option<RevisionRef>,
}

/// What a cluster reported for one FleetSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanStatus {
    /// The cluster.
    pub cluster: ClusterId,
    /// FleetSecret name (shared: the runtime hands the planner every status row each plan).
    pub fleet_secret: Arc<str>,
    /// Revision the cluster was asked to hold when `state` was recorded.
    pub desired_revision: u64,
    /// Revision it acknowledged.
    pub applied_revision: Option<u64>,
    /// State of the desired revision.
    pub state: SyncState,
}

/// Persisted progress of one FleetSecret's rollout (what the store keeps between plans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutProgress {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Revision being rolled out.
    pub revision: u64,
    /// Zero-based wave being rolled out.
    pub current_wave: u32,
    /// Paused by an admin.
    pub paused: bool,
    /// Why it is paused (manual or error rate); empty when it is not.
    pub reason: String,
}

/// Everything the planner reads.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The inventory.
    pub clusters: &'a [PlanCluster],
    /// Every FleetSecret.
    pub fleet_secrets: &'a [PlanFleetSecret],
    /// FleetSecrets deleted while clusters may still hold them, with their last deletionPolicy.
    pub deleted: &'a BTreeMap<String, DeletionPolicy>,
    /// Per (cluster, FleetSecret) status.
    pub status: &'a [PlanStatus],
    /// Persisted rollout progress.
    pub rollouts: &'a [RolloutProgress],
    /// The current time.
    pub now: DateTime<Utc>,
    /// A disconnected cluster seen longer ago than this no longer holds a wave back.
    pub offline_grace: TimeDelta,
}

/// The plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One entry per non-revoked cluster, in input order.
    pub clusters: Vec<ClusterPlan>,
    /// One decision per FleetSecret, sorted by name.
    pub rollouts: Vec<RolloutDecision>,
}

/// What one cluster must hold and remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// The cluster.
    pub cluster: ClusterId,
    /// FleetSecret → revision, sorted by FleetSecret name.
    pub desired: Vec<Desired>,
    /// FleetSecrets to remove, sorted by name.
    pub removals: Vec<Removal>,
}

impl ClusterPlan {
    /// The revision this cluster must hold for `fleet_secret`, if any (the planner tests ask).
    #[cfg(test)]
    pub fn desired_for(&self, fleet_secret: &str) -> Option<RevisionRef> {
        self.desired
            .binary_search_by(|desired| (*desired.fleet_secret).cmp(fleet_secret))
            .ok()
            .map(|index| self.desired[index].revision)
    }
}

/// One FleetSecret a cluster must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Desired {
    /// FleetSecret name.
    pub fleet_secret: Arc<str>,
    /// Revision.
    pub revision: RevisionRef,
}

/// One FleetSecret a cluster must no longer hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Removal {
    /// FleetSecret name.
    pub fleet_secret: Arc<str>,
    /// What removal does to the written Secrets.
    pub deletion_policy: DeletionPolicy,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    /// Every wave has the current revision.
    Complete,
    /// A wave is being rolled out.
    Progressing,
    /// Held, manually or by the error rate.
    Paused,
    /// No rollout strategy (all at once), or nothing rendered yet.
    None,
}

impl RolloutState {
    /// Stable lowercase name, as shown and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Progressing => "progressing",
            Self::Paused => "paused",
            Self::None => "none",
        }
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The planner's decision for one FleetSecret's rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDecision {
    /// FleetSecret name.
    pub fleet_secret: Arc<str>,
    /// Revision being rolled out.
    pub revision: Option<u64>,
    /// State.
    pub state: RolloutState,
    /// Zero-based wave being rolled out (the last wave when complete).
    pub current_wave: u32,
    /// Number of waves, the implicit last one included when it has members.
    pub waves: u32,
    /// Why it is paused; empty otherwise.
    pub reason: String,
    /// Paused by an admin (kept in the progress record).
    pub manually_paused: bool,
    /// Members of the current wave.
    pub wave_size: u32,
    /// Members of the current wave that applied the revision.
    pub wave_applied: u32,
    /// Members of the current wave that reported an error for it.
    pub wave_errors: u32,
    /// While progressing: the members of the current wave the wave still waits for (they can
    /// answer, and have neither applied the revision nor refused it). The wave is done when the
    /// last of them answers, so the engine counts them down as acks arrive instead of planning
    /// again per ack.
    pub waiting: Vec<ClusterId>,
    /// While progressing: the earliest moment a disconnected member in `waiting` stops counting
    /// (its last contact plus the offline grace); the wave may be done then.
    pub offline_until: Option<DateTime<Utc>>,
}

impl RolloutDecision {
    /// The progress record to persist; `None` without a rollout strategy or a revision.
    pub fn progress(&self) -> Option<RolloutProgress> {
        if self.waves == 0 {
            return None;
        }
        Some(RolloutProgress {
            fleet_secret: self.fleet_secret.to_string(),
            revision: self.revision?,
            current_wave: self.current_wave,
            paused: self.manually_paused,
            reason: self.reason.clone(),
        })
    }
}

/// Reason recorded by a manual pause without a message.
pub const MANUAL_PAUSE_REASON: &str = "paused by admin";

/// What a plan derives from the clusters' labels and states and the FleetSecrets' specs alone:
/// which clusters each FleetSecret targets and the wave of each. It does not depend on status,
/// progress, connectivity or time, so a caller may keep it while `clusters` (same clusters, same
/// order, same labels and states) and the specs stay the same, and plan many times with
/// [`plan_with`]: selector matching was a quarter of each plan at 10,000 clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Per FleetSecret (the order of [`PlanInput::fleet_secrets`]): per cluster, whether targeted.
    targeted: Vec<Vec<bool>>,
    /// Per FleetSecret with a rollout: per cluster, its wave (`None`: not targeted).
    wave_of: Vec<Option<Vec<Option<u32>>>>,
}

impl Selection {
    /// The selection of `fleet_secrets` over `clusters`.
    pub fn new(clusters: &[PlanCluster], fleet_secrets: &[PlanFleetSecret]) -> Self {
        // Stable hash order of every cluster, computed once; each FleetSecret with percentage
        // waves ranks its targeted clusters by walking it.
        let hash_order = if fleet_secrets.iter().any(|secret| {
            secret
                .spec
                .rollout
                .as_ref()
                .is_some_and(|rollout| rollout.waves.iter().any(|wave| matches!(wave, Wave::Percent(_))))
        }) {
            hash_order(clusters)
        } else {
            Vec::new()
        };
        let mut targeted = Vec::with_capacity(fleet_secrets.len());
        let mut wave_of = Vec::with_capacity(fleet_secrets.len());
        for secret in fleet_secrets {
            let selected: Vec<bool> = clusters
                .iter()
                .map(|cluster| {
                    cluster.state != ClusterState::Revoked && secret.spec.clusters.matches(&cluster.labels)
                })
                .collect();
            wave_of.push(
                secret
                    .spec
                    .rollout
                    .as_ref()
                    .map(|rollout| waves_of(clusters, &selected, &hash_order, &rollout.waves)),
            );
            targeted.push(selected);
        }
        Self { targeted, wave_of }
    }

    /// Whether this selection was made for `clusters` clusters and `fleet_secrets` FleetSecrets.
    fn fits(&self, clusters: usize, fleet_secrets: usize) -> bool {
        self.targeted.len() == fleet_secrets
            && self.targeted.iter().all(|targeted| targeted.len() == clusters)
    }
}

/// Computes the plan.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    plan_with(input, &Selection::new(input.clusters, input.fleet_secrets))
}

/// Computes the plan with a [`Selection`] made earlier for the same clusters and specs (one that
/// does not fit their numbers is made again).
pub fn plan_with(input: &PlanInput<'_>, selection: &Selection) -> Plan {
    let fresh;
    let selection = if selection.fits(input.clusters.len(), input.fleet_secrets.len()) {
        selection
    } else {
        fresh = Selection::new(input.clusters, input.fleet_secrets);
        &fresh
    };
    let clusters = input.clusters;
    let cluster_index: FastMap<ClusterId, usize> = clusters
        .iter()
        .enumerate()
        .map(|(index, cluster)| (cluster.id, index))
        .collect();
    let can_answer: Vec<bool> = clusters
        .iter()
        .map(|cluster| can_answer(cluster, input.now, input.offline_grace))
        .collect();

    let mut order: Vec<usize> = (0..input.fleet_secrets.len()).collect();
    order.sort_by(|a, b| {
        input.fleet_secrets[*a]
            .spec
            .name
            .cmp(&input.fleet_secrets[*b].spec.name)
    });
    let names: Vec<Arc<str>> = input
        .fleet_secrets
        .iter()
        .map(|secret| Arc::from(secret.spec.name.as_str()))
        .collect();
    let secret_index: FastMap<&str, usize> = input
        .fleet_secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| (secret.spec.name.as_str(), index))
        .collect();

    // Status by FleetSecret, then by cluster index.
    // Each status row resolved once: (cluster index, FleetSecret index when it still exists).
    let rows: Vec<Option<(usize, Option<usize>)>> = input
        .status
        .iter()
        .map(|row| {
            let cluster = *cluster_index.get(&row.cluster)?;
            Some((cluster, secret_index.get(&*row.fleet_secret).copied()))
        })
        .collect();
    // Dense status table: FleetSecret index → cluster index → row.
    let mut status_by_secret: Vec<Vec<Option<&PlanStatus>>> = vec![Vec::new(); input.fleet_secrets.len()];
    for (row, resolved) in input.status.iter().zip(&rows) {
        if let Some((cluster, Some(secret))) = *resolved {
            let table = &mut status_by_secret[secret];
            if table.is_empty() {
                table.resize(clusters.len(), None);
            }
            table[cluster] = Some(row);
        }
    }
    let progress: HashMap<&str, &RolloutProgress> = input
        .rollouts
        .iter()
        .map(|progress| (progress.fleet_secret.as_str(), progress))
        .collect();

    let mut desired: Vec<Vec<Desired>> = vec![Vec::new(); clusters.len()];
    let targeted_by_secret = &selection.targeted;
    let mut rollouts = Vec::with_capacity(input.fleet_secrets.len());
    for &secret_index in &order {
        let secret = &input.fleet_secrets[secret_index];
        let context = SecretContext {
            name: &names[secret_index],
            secret,
            clusters,
            targeted: &targeted_by_secret[secret_index],
            wave_of: selection.wave_of[secret_index].as_deref(),
            status: &status_by_secret[secret_index],
            can_answer: &can_answer,
            progress: progress.get(secret.spec.name.as_str()).copied(),
            now: input.now,
            offline_grace: input.offline_grace,
        };
        let (decision, assignments) = context.decide();
        for (cluster, revision) in assignments {
            desired[cluster].push(Desired {
                fleet_secret: Arc::clone(&names[secret_index]),
                revision,
            });
        }
        rollouts.push(decision);
    }

    let mut removals: Vec<Vec<Removal>> = vec![Vec::new(); clusters.len()];
    for (row, resolved) in input.status.iter().zip(&rows) {
        let Some((cluster, secret)) = *resolved else {
            continue;
        };
        if clusters[cluster].state == ClusterState::Revoked {
            continue;
        }
        let removal = match secret {
            Some(secret) if targeted_by_secret[secret][cluster] => None,
            Some(secret) => Some(Removal {
                fleet_secret: Arc::clone(&names[secret]),
                deletion_policy: input.fleet_secrets[secret].spec.target.deletion_policy,
            }),
            None => Some(Removal {
                fleet_secret: Arc::clone(&row.fleet_secret),
                deletion_policy: input
                    .deleted
                    .get(&*row.fleet_secret)
                    .copied()
                    .unwrap_or(DeletionPolicy::Retain),
            }),
        };
        removals[cluster].extend(removal);
    }

    let clusters = clusters
        .iter()
        .zip(desired.into_iter().zip(removals))
        .filter(|(cluster, _)| cluster.state != ClusterState::Revoked)
        .map(|(cluster, (desired, mut removals))| {
            removals.sort_by(|a, b| a.fleet_secret.cmp(&b.fleet_secret));
            removals.dedup_by(|a, b| a.fleet_secret == b.fleet_secret);
            ClusterPlan {
                cluster: cluster.id,
                desired,
                removals,
            }
        })
        .collect();
    Plan { clusters, rollouts }
}

/// A `HashMap` with [`FastHasher`]: the planner's keys (random UUIDs, short names) need no
/// protection against crafted collisions, and SipHash dominated its lookups.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Multiply-rotate hashing of 8-byte words (the FxHash scheme) with a final avalanche.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
        }
    }

    /// Ends with the murmur3 finalizer so that every input bit reaches the low bits hashbrown
    /// indexes by (sequential ids differ only in their last bytes).
    fn finish(&self) -> u64 {
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    }
}

/// Stable 64-bit hash of a cluster id (first 8 bytes of its SHA-256), the percentage wave order.
pub fn wave_hash(id: ClusterId) -> u64 {
    let digest = Sha256::of(id.0.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.0[..8]);
    u64::from_be_bytes(first)
}

/// Whether a cluster can answer now, so that a wave waits for it.
fn can_answer(cluster: &PlanCluster, now: DateTime<Utc>, offline_grace: TimeDelta) -> bool {
    cluster.state == ClusterState::Active
        && (cluster.connected || cluster.last_seen.is_some_and(|seen| now - seen <= offline_grace))
}

/// Everything needed to decide one FleetSecret.
struct SecretContext<'a> {
    name: &'a Arc<str>,
    secret: &'a PlanFleetSecret,
    clusters: &'a [PlanCluster],
    targeted: &'a [bool],
    /// The wave of every cluster, for a FleetSecret with a rollout ([`Selection`]).
    wave_of: Option<&'a [Option<u32>]>,
    /// Cluster index → status row (empty when no cluster has one).
    status: &'a [Option<&'a PlanStatus>],
    can_answer: &'a [bool],
    progress: Option<&'a RolloutProgress>,
    now: DateTime<Utc>,
    offline_grace: TimeDelta,
}

/// Counts of one wave against one revision.
#[derive(Default)]
struct WaveCounts {
    size: u32,
    applied: u32,
    errors: u32,
    waiting: u32,
}

impl SecretContext<'_> {
    fn status_of(&self, cluster: usize) -> Option<&PlanStatus> {
        self.status.get(cluster).copied().flatten()
    }

    fn targeted(&self) -> impl Iterator<Item = usize> + '_ {
        self.targeted
            .iter()
            .enumerate()
            .filter_map(|(index, targeted)| targeted.then_some(index))
    }

    fn decision(&self, revision: Option<u64>, state: RolloutState) -> RolloutDecision {
        RolloutDecision {
            fleet_secret: Arc::clone(self.name),
            revision,
            state,
            current_wave: 0,
            waves: 0,
            reason: String::new(),
            manually_paused: false,
            wave_size: 0,
            wave_applied: 0,
            wave_errors: 0,
            waiting: Vec::new(),
            offline_until: None,
        }
    }

    /// The rollout decision and the (cluster index, revision) assignments.
    fn decide(&self) -> (RolloutDecision, Vec<(usize, RevisionRef)>) {
        let Some(current) = self.secret.current else {
            let mut decision = self.decision(None, RolloutState::None);
            decision.reason = "no revision rendered yet".to_owned();
            let assignments = match self.secret.previous {
                Some(previous) => self.targeted().map(|cluster| (cluster, previous)).collect(),
                None => Vec::new(),
            };
            return (decision, assignments);
        };
        let Some(rollout) = &self.secret.spec.rollout else {
            let assignments = self.targeted().map(|cluster| (cluster, current)).collect();
            return (
                self.decision(Some(current.number), RolloutState::None),
                assignments,
            );
        };

        let computed;
        let wave_of = match self.wave_of {
            Some(wave_of) => wave_of,
            None => {
                computed = waves_of(
                    self.clusters,
                    self.targeted,
                    &hash_order(self.clusters),
                    &rollout.waves,
                );
                &computed
            }
        };
        let explicit = u32::try_from(rollout.waves.len()).unwrap_or(u32::MAX);
        let implicit_used = wave_of.contains(&Some(explicit));
        let waves = explicit + u32::from(implicit_used);
        let mut counts: Vec<WaveCounts> = (0..waves).map(|_| WaveCounts::default()).collect();
        for (cluster, wave) in wave_of.iter().enumerate() {
            let Some(wave) = wave else { continue };
            let counts = &mut counts[*wave as usize];
            counts.size += 1;
            let status = self.status_of(cluster);
            if status.is_some_and(|status| status.applied_revision == Some(current.number)) {
                counts.applied += 1;
            } else if status.is_some_and(|status| {
                status.desired_revision == current.number && status.state == SyncState::Error
            }) {
                counts.errors += 1;
            } else if self.can_answer[cluster] {
                counts.waiting += 1;
            }
        }

        let same_revision = self
            .progress
            .filter(|progress| progress.revision == current.number);
        let mut decision = self.decision(Some(current.number), RolloutState::Progressing);
        decision.waves = waves;
        let mut wave = same_revision.map_or(0, |progress| progress.current_wave.min(waves.saturating_sub(1)));
        if let Some(progress) = same_revision.filter(|progress| progress.paused) {
            decision.state = RolloutState::Paused;
            decision.manually_paused = true;
            decision.reason = if progress.reason.is_empty() {
                MANUAL_PAUSE_REASON.to_owned()
            } else {
                progress.reason.clone()
            };
        } else {
            loop {
                let Some(wave_counts) = counts.get(wave as usize) else {
                    decision.state = RolloutState::Complete;
                    break;
                };
                if wave_counts.size > 0
                    && f64::from(wave_counts.errors) / f64::from(wave_counts.size)
                        > rollout.pause_on_error_rate
                {
                    decision.state = RolloutState::Paused;
                    decision.reason = format!(
                        "error rate {}/{} ({:.1}%) above {:.1}% in wave {}",
                        wave_counts.errors,
                        wave_counts.size,
                        f64::from(wave_counts.errors) * 100.0 / f64::from(wave_counts.size),
                        rollout.pause_on_error_rate * 100.0,
                        wave + 1,
                    );
                    break;
                }
                if wave_counts.waiting > 0 {
                    break;
                }
                if wave + 1 == waves {
                    decision.state = RolloutState::Complete;
                    break;
                }
                wave += 1;
            }
        }
        decision.current_wave = wave.min(waves.saturating_sub(1));
        if let Some(wave_counts) = counts.get(decision.current_wave as usize) {
            decision.wave_size = wave_counts.size;
            decision.wave_applied = wave_counts.applied;
            decision.wave_errors = wave_counts.errors;
        }
        if decision.state == RolloutState::Progressing {
            self.note_waiting(&mut decision, wave_of, current.number);
        }

        // Waves up to the current one get the current revision; a complete rollout gives it to all.
        let complete = decision.state == RolloutState::Complete;
        let baseline = if complete || decision.current_wave > 0 {
            Some(current)
        } else {
            self.secret.previous
        };
        let previous = self.secret.previous;
        let mut assignments = Vec::new();
        for (cluster, wave) in wave_of.iter().enumerate() {
            let Some(wave) = wave else { continue };
            if complete || *wave <= decision.current_wave {
                assignments.push((cluster, current));
                continue;
            }
            let held = self.status_of(cluster).and_then(|status| status.applied_revision);
            let keep = match held {
                Some(number) if number == current.number => Some(current),
                Some(number) if previous.is_some_and(|previous| previous.number == number) => previous,
                _ => baseline,
            };
            assignments.extend(keep.map(|revision| (cluster, revision)));
        }
        (decision, assignments)
    }

    /// Fills [`RolloutDecision::waiting`] and [`RolloutDecision::offline_until`] for the current
    /// wave (the same test as the wave counts: can answer, neither applied nor refused).
    fn note_waiting(&self, decision: &mut RolloutDecision, wave_of: &[Option<u32>], current: u64) {
        for (cluster, wave) in wave_of.iter().enumerate() {
            if *wave != Some(decision.current_wave) || !self.can_answer[cluster] {
                continue;
            }
            let status = self.status_of(cluster);
            let answered = status.is_some_and(|status| {
                status.applied_revision == Some(current)
                    || (status.desired_revision == current && status.state == SyncState::Error)
            });
            if answered {
                continue;
            }
            let member = &self.clusters[cluster];
            decision.waiting.push(member.id);
            if !member.connected
                && let Some(seen) = member.last_seen
            {
                let until = seen + self.offline_grace;
                if until > self.now {
                    decision.offline_until = Some(decision.offline_until.map_or(until, |at| at.min(until)));
                }
            }
        }
    }
}

/// Every cluster by its stable hash ([`wave_hash`], then id): the order percentage waves rank
/// targeted clusters in.
fn hash_order(clusters: &[PlanCluster]) -> Vec<(u64, ClusterId, usize)> {
    let mut order: Vec<(u64, ClusterId, usize)> = clusters
        .iter()
        .enumerate()
        .map(|(index, cluster)| (cluster.wave_hash, cluster.id, index))
        .collect();
    order.sort_unstable();
    order
}

/// The wave of every cluster (`None` when not targeted); `waves.len()` is the implicit wave.
/// `hash_order` is [`hash_order`] of `clusters`, needed (and read) only for percentage waves.
fn waves_of(
    clusters: &[PlanCluster],
    targeted: &[bool],
    hash_order: &[(u64, ClusterId, usize)],
    waves: &[Wave],
) -> Vec<Option<u32>> {
    let targeted_count = targeted.iter().filter(|targeted| **targeted).count();
    let mut rank: Vec<usize> = vec![usize::MAX; clusters.len()];
    if waves.iter().any(|wave| matches!(wave, Wave::Percent(_))) {
        let mut next = 0;
        for &(_, _, cluster) in hash_order {
            if targeted[cluster] {
                rank[cluster] = next;
                next += 1;
            }
        }
    }
    let cutoffs: Vec<usize> = waves
        .iter()
        .map(|wave| match wave {
            Wave::Percent(percent) => (targeted_count * usize::from(*percent)).div_ceil(100),
            Wave::Selector(_) => 0,
        })
        .collect();
    let implicit = u32::try_from(waves.len()).unwrap_or(u32::MAX);
    (0..clusters.len())
        .map(|cluster| {
            if !targeted[cluster] {
                return None;
            }
            let labels = &clusters[cluster].labels;
            let wave = waves
                .iter()
                .zip(&cutoffs)
                .position(|(wave, cutoff)| match wave {
                    Wave::Selector(selector) => selector.matches(labels),
                    Wave::Percent(_) => rank[cluster] < *cutoff,
                })
                .map_or(implicit, |position| u32::try_from(position).unwrap_or(implicit));
            Some(wave)
        })
        .collect()
}

#[cfg(test)]
mod tests;
