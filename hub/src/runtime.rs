//! The serve runtime: the one task that turns specs, Key Vault versions, inventory, pins and
//! rollout progress into the set of revisions every cluster must hold, and hands those sets to
//! the fan-out ([`Fleet`]).
//!
//! ```text
//! change log (specs, clusters, pins, rollouts, revisions) ─┐
//! vault::Poller (leader only) ── VaultChange ──────────────┼─► Runtime ─► render ─► store revision
//! fleet events (acks, connects) ───────────────────────────┘        └─► sync::plan ─► Fleet::set_desired
//! ```
//!
//! Only the Key Vault leader renders new revisions (and records them); every other replica
//! reproduces the revisions the change log announces by fetching the recorded versions itself
//! (one GET per version per replica) and checking the sha256. Changes are debounced so a burst
//! (a spec apply, a rotation of several keys) becomes one revision and one plan.
//!
//! **Invariant:** values live only in `vault::FetchedSecret` / `SecretValue` here, are rendered and
//! encoded once per revision, and never reach the store, a log line or an error.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::domain::{ClusterId, SyncState};
use crate::fleet::credentials::Credentials;
use crate::fleet::{ClusterDesired, Fleet, FleetEvent};
use crate::grpc::admin::{HubControl, StoreHealth, SyncNowOutcome};
use crate::grpc::convert::{EncodedRevision, encode_revision, rendered_sha256};
use crate::render;
use crate::spec::{self, DataFrom, FleetSecretSpec, Kind, SecretStoreSpec, Spec};
use crate::store::{
    ChangeKind, ClusterLiveness, NewRevision, RevisionRecord, SecretVersionRecord, Store, StoreError,
};
use crate::sync::plan::{
    self, PlanCluster, PlanFleetSecret, PlanInput, PlanStatus, RevisionRef, RolloutProgress, RolloutState,
};
use crate::vault::{
    self, FetchedSecret, FindFilter, PollerHandle, SecretSource, VaultChange, VaultOptions, WatchSet,
};

mod sources;
#[cfg(test)]
mod tests;

/// Runtime settings.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// This replica's id (connected_replica in the store).
    pub replica: String,
    /// Trust and authority overrides for Key Vault (tests, the loadtest).
    pub vault: VaultOptions,
    /// Quiet time after a change before rendering and planning.
    pub debounce: Duration,
    /// Longest a change waits while changes keep arriving.
    pub debounce_max: Duration,
    /// Change-log cursor poll: the guarantee behind NOTIFY wake-ups.
    pub tail_interval: Duration,
    /// A disconnected cluster stops counting for wave progress after this long.
    pub offline_grace: TimeDelta,
    /// The leader prunes change-log entries older than this (keeping `change_log_keep` newest).
    pub change_log_retention: TimeDelta,
    /// Newest change-log entries never pruned.
    pub change_log_keep: u32,
    /// How often the leader prunes the change log.
    pub change_log_prune_interval: Duration,
    /// A follower tries to take the Key Vault leadership this often (leader loss hands over
    /// within about this long).
    pub lead_retry: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            replica: "hub".to_owned(),
            vault: VaultOptions::default(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_millis(500),
            tail_interval: Duration::from_secs(1),
            offline_grace: TimeDelta::minutes(5),
            change_log_retention: TimeDelta::hours(24),
            change_log_keep: 10_000,
            change_log_prune_interval: Duration::from_secs(600),
            lead_retry: Duration::from_secs(2),
        }
    }
}

/// Errors that stop the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("store")]
    Store(#[from] StoreError),
    #[error("stored {kind} {name} no longer parses")]
    StoredSpec {
        kind: &'static str,
        name: String,
        #[source]
        source: spec::SpecError,
    },
}

/// What the Admin service asks of the runtime.
enum Command {
    Changed,
    SyncNow {
        store: Option<String>,
        reply: oneshot::Sender<Result<SyncNowOutcome, tonic::Status>>,
    },
}

/// The handle the Admin service uses ([`HubControl`]).
#[derive(Clone)]
pub struct RuntimeHandle {
    commands: mpsc::Sender<Command>,
    pollers: PollerRegistry,
}

/// The running pollers by store, for [`HubControl::store_health`].
type PollerRegistry = Arc<std::sync::Mutex<BTreeMap<String, PollerHandle>>>;

#[async_trait::async_trait]
impl HubControl for RuntimeHandle {
    async fn changed(&self) {
        // A full queue already holds a wake-up; the change log is the truth.
        let _ = self.commands.try_send(Command::Changed);
    }

    async fn store_health(&self) -> BTreeMap<String, StoreHealth> {
        let pollers = self
            .pollers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pollers
            .iter()
            .filter_map(|(store, poller)| {
                let outcome = poller.last_outcome()?;
                Some((
                    store.clone(),
                    StoreHealth {
                        healthy: outcome.error.is_none(),
                        last_error: outcome.error.unwrap_or_default(),
                    },
                ))
            })
            .collect()
    }

    async fn sync_now(&self, store: Option<String>) -> Result<SyncNowOutcome, tonic::Status> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SyncNow { store, reply })
            .await
            .map_err(|_| tonic::Status::unavailable("hub is shutting down"))?;
        answer
            .await
            .map_err(|_| tonic::Status::unavailable("hub is shutting down"))?
    }
}

/// One SecretStore: its spec, its client and (on the leader) its poller.
struct StoreState {
    spec: SecretStoreSpec,
    generation: u64,
    source: Arc<dyn SecretSource>,
    poller: Option<PollerTask>,
}

/// A running poller: dropping it stops the poller.
struct PollerTask {
    handle: PollerHandle,
    watch: watch::Sender<WatchSet>,
    _stop: tokio_util::sync::DropGuard,
}

/// A revision built in this process.
#[derive(Clone)]
struct Built {
    reference: RevisionRef,
    encoded: Arc<EncodedRevision>,
}

struct SecretState {
    spec: Arc<FleetSecretSpec>,
    generation: u64,
    current: Option<Built>,
    /// The revision before `current` (its bytes are in `Runtime::built` when this process could
    /// build or reproduce them).
    previous: Option<RevisionRef>,
    /// The `current` number whose previous revision was looked up in the store already.
    previous_looked_up: Option<u64>,
}

/// The runtime task's state.
pub struct Runtime {
    config: RuntimeConfig,
    store: Store,
    fleet: Fleet,
    credentials: Credentials,
    commands: mpsc::Receiver<Command>,
    leadership: Option<crate::store::Leadership>,
    cursor: i64,
    stores: BTreeMap<String, StoreState>,
    secrets: BTreeMap<String, SecretState>,
    /// The current and previous revision of every fleet secret as built (or reproduced) here, by
    /// (fleet secret, number): clusters beyond a rollout's wave still hold the previous one.
    built: HashMap<(String, u64), Arc<EncodedRevision>>,
    /// Latest value of every watched Key Vault secret, by (store, key).
    latest: HashMap<(String, String), FetchedSecret>,
    /// Values at fixed, pinned or recorded versions, by (store, key, version).
    versioned: HashMap<(String, String, String), FetchedSecret>,
    clusters: HashMap<ClusterId, PlanCluster>,
    /// Clusters the store shows connected to another replica (they count as connected for waves).
    elsewhere: HashSet<ClusterId>,
    status: HashMap<(ClusterId, Arc<str>), PlanStatus>,
    pins: BTreeMap<String, BTreeMap<String, String>>,
    rollouts: BTreeMap<String, RolloutProgress>,
    /// Fleet secrets whose rollout the last plan left progressing (or paused by errors, which lifts
    /// by itself): while any is, acks recorded by other replicas are read from the store.
    progressing: BTreeSet<String>,
    deleted: BTreeMap<String, spec::DeletionPolicy>,
    /// What was last handed to the fleet, per cluster.
    sent: HashMap<ClusterId, Arc<ClusterDesired>>,
    dirty: BTreeSet<String>,
    replan: bool,
    vault_tx: mpsc::Sender<VaultChange>,
    vault_rx: mpsc::Receiver<VaultChange>,
    ready: watch::Sender<bool>,
    pollers: PollerRegistry,
}

impl Runtime {
    /// Builds the runtime and the handle the Admin service uses.
    pub fn new(
        config: RuntimeConfig,
        store: Store,
        fleet: Fleet,
        credentials: Credentials,
    ) -> (Self, RuntimeHandle) {
        let (commands_tx, commands) = mpsc::channel(64);
        let (vault_tx, vault_rx) = mpsc::channel(4096);
        let (ready, _) = watch::channel(false);
        let pollers = PollerRegistry::default();
        let runtime = Self {
            config,
            store,
            fleet,
            credentials,
            commands,
            leadership: None,
            cursor: 0,
            stores: BTreeMap::new(),
            secrets: BTreeMap::new(),
            built: HashMap::new(),
            latest: HashMap::new(),
            versioned: HashMap::new(),
            clusters: HashMap::new(),
            elsewhere: HashSet::new(),
            status: HashMap::new(),
            pins: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            progressing: BTreeSet::new(),
            deleted: BTreeMap::new(),
            sent: HashMap::new(),
            dirty: BTreeSet::new(),
            replan: false,
            vault_tx,
            vault_rx,
            ready,
            pollers: Arc::clone(&pollers),
        };
        (
            runtime,
            RuntimeHandle {
                commands: commands_tx,
                pollers,
            },
        )
    }

    /// Turns true once every cluster has its desired set: the gRPC listener opens only then, so
    /// no agent is ever compared against an empty set.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` resolves. `events` are the fleet's events (a copy of what the status
    /// writer gets): acks drive wave progress.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<FleetEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        self.warm_up().await?;
        let _ = self.ready.send(true);
        tracing::info!(
            clusters = self.clusters.len(),
            fleet_secrets = self.secrets.len(),
            leader = self.leadership.is_some(),
            "runtime ready"
        );
        let mut wakeups = self.store.change_wakeups().await?;
        let mut tail = tokio::time::interval(self.config.tail_interval);
        tail.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(self.config.change_log_prune_interval);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lead_retry = tokio::time::interval(self.config.lead_retry);
        lead_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due: Option<(Instant, Instant)> = None;
        tokio::pin!(shutdown);
        loop {
            let deadline = due.map(|(quiet, max)| quiet.min(max));
            let lost = async {
                match &self.leadership {
                    Some(leadership) => leadership.lost().await,
                    None => std::future::pending().await,
                }
            };
            let mut changed = false;
            tokio::select! {
                () = &mut shutdown => break,
                Some(command) = self.commands.recv() => match command {
                    Command::Changed => {
                        self.catch_up().await?;
                        changed = true;
                    }
                    Command::SyncNow { store, reply } => self.sync_now(store, reply),
                },
                Some(change) = self.vault_rx.recv() => {
                    self.on_vault_change(change).await;
                    changed = true;
                }
                Some(event) = events.recv() => {
                    // An ack may complete a wave: plan again (debounced) so the next wave starts.
                    if self.observe(event) {
                        self.replan = true;
                        changed = true;
                    }
                }
                Some(()) = wakeups.recv() => {
                    self.catch_up().await?;
                    changed = true;
                }
                _ = tail.tick() => {
                    self.catch_up().await?;
                    if !self.progressing.is_empty() {
                        let names: Vec<String> = self.progressing.iter().cloned().collect();
                        self.refresh_from_store(&names).await?;
                    }
                    changed = self.replan || !self.dirty.is_empty();
                }
                _ = prune.tick(), if self.leadership.is_some() => self.prune_change_log().await,
                _ = lead_retry.tick(), if self.leadership.is_none() => {
                    if self.try_lead().await? {
                        changed = true;
                    }
                }
                () = lost => {
                    tracing::warn!("lost the Key Vault leadership; stopping pollers");
                    self.leadership = None;
                    for state in self.stores.values_mut() {
                        state.poller = None;
                    }
                    self.pollers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    due = None;
                    self.rebuild().await?;
                }
            }
            if changed && (self.replan || !self.dirty.is_empty()) {
                let now = Instant::now();
                due = Some(match due {
                    Some((_, max)) => (now + self.config.debounce, max),
                    None => (now + self.config.debounce, now + self.config.debounce_max),
                });
            }
        }
        Ok(())
    }

    async fn warm_up(&mut self) -> Result<(), RuntimeError> {
        self.credentials
            .replace_all(self.store.active_credentials().await?);
        let cleared = self.store.clear_replica(&self.config.replica).await?;
        if cleared > 0 {
            tracing::info!(clusters = cleared, "cleared stale connections of this replica");
        }
        self.cursor = self.store.latest_change().await?;
        self.load_specs().await?;
        let listed = self.store.list_clusters(None).await?;
        self.set_clusters(&listed);
        self.load_pins().await?;
        self.load_rollouts().await?;
        for row in self.store.all_status().await? {
            let key: Arc<str> = Arc::from(row.fleet_secret.as_str());
            self.status.insert(
                (row.cluster, Arc::clone(&key)),
                PlanStatus {
                    cluster: row.cluster,
                    fleet_secret: key,
                    desired_revision: row.desired_revision,
                    applied_revision: row.applied_revision,
                    state: row.state,
                },
            );
        }
        self.try_lead().await?;
        if self.leadership.is_some() {
            // The first poll of every store fetches every watched key once.
            let polls: Vec<_> = self
                .stores
                .iter()
                .filter_map(|(name, state)| {
                    state
                        .poller
                        .as_ref()
                        .map(|poller| (name.clone(), poller.handle.first_sweep()))
                })
                .collect();
            for (name, poll) in polls {
                if let Some(vault::SweepOutcome {
                    error: Some(error), ..
                }) = poll.await
                {
                    tracing::warn!(store = %name, error = %error, "initial Key Vault poll failed; retrying in the background");
                }
            }
            while let Ok(change) = self.vault_rx.try_recv() {
                self.on_vault_change(change).await;
            }
        }
        self.dirty.extend(self.secrets.keys().cloned());
        self.replan = true;
        self.rebuild().await
    }

    /// Takes the Key Vault leadership if free; the leader runs the pollers.
    async fn try_lead(&mut self) -> Result<bool, RuntimeError> {
        if self.leadership.is_some() {
            return Ok(false);
        }
        let Some(leadership) = self.store.try_lead("keyfleet-vault-pollers").await? else {
            return Ok(false);
        };
        tracing::info!(replica = %self.config.replica, "this replica leads the Key Vault pollers");
        self.leadership = Some(leadership);
        let names: Vec<String> = self.stores.keys().cloned().collect();
        for name in names {
            self.start_poller(&name);
        }
        // A new leader renders whatever changed while nobody led.
        self.dirty.extend(self.secrets.keys().cloned());
        Ok(true)
    }

    fn start_poller(&mut self, name: &str) {
        let (watch, watch_rx) = watch::channel(self.watch_set(name));
        let tx = self.vault_tx.clone();
        let metrics = self.config.vault.metrics.clone();
        if let Some(state) = self.stores.get_mut(name) {
            let (poller, handle) = vault::Poller::new(
                name,
                Arc::clone(&state.source),
                state.spec.poll_interval,
                watch_rx,
                tx,
                metrics,
            );
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(poller.run(stop.clone()));
            self.pollers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_owned(), handle.clone());
            state.poller = Some(PollerTask {
                handle,
                watch,
                _stop: stop.drop_guard(),
            });
        }
    }

    /// The keys and `find` filters of every FleetSecret reading from `store`.
    fn watch_set(&self, store: &str) -> WatchSet {
        let mut set = WatchSet::default();
        for state in self
            .secrets
            .values()
            .filter(|state| state.spec.store_ref == store)
        {
            for key in state.spec.remote_keys() {
                set.keys.insert(key.to_owned());
            }
            for from in &state.spec.data_from {
                if let DataFrom::Find(find) = from {
                    set.finds.push(FindFilter {
                        name: find.name.clone(),
                        tags: find.tags.clone(),
                    });
                }
            }
        }
        set
    }

    fn update_watch_sets(&mut self) {
        let sets: Vec<(String, WatchSet)> = self
            .stores
            .keys()
            .map(|name| (name.clone(), self.watch_set(name)))
            .collect();
        for (name, set) in sets {
            if let Some(poller) = self.stores.get(&name).and_then(|state| state.poller.as_ref()) {
                poller.watch.send_replace(set);
            }
        }
    }

    fn sync_now(&self, store: Option<String>, reply: oneshot::Sender<Result<SyncNowOutcome, tonic::Status>>) {
        if self.leadership.is_none() {
            let _ = reply.send(Err(tonic::Status::failed_precondition(
                "this replica does not lead the Key Vault pollers; send sync-now to the leader",
            )));
            return;
        }
        if let Some(name) = &store
            && !self.stores.contains_key(name)
        {
            let _ = reply.send(Err(tonic::Status::not_found(format!(
                "no SecretStore named {name:?}"
            ))));
            return;
        }
        let polls: Vec<(String, _)> = self
            .stores
            .iter()
            .filter(|(name, _)| store.as_ref().is_none_or(|wanted| wanted == *name))
            .filter_map(|(name, state)| {
                state
                    .poller
                    .as_ref()
                    .map(|poller| (name.clone(), poller.handle.sweep()))
            })
            .collect();
        // Polls run on their own tasks: the runtime keeps consuming what they send meanwhile.
        tokio::spawn(async move {
            let mut outcome = SyncNowOutcome::default();
            for (name, poll) in polls {
                match poll.await {
                    Ok(changes) => {
                        outcome.new_versions += u32::try_from(changes).unwrap_or(u32::MAX);
                        outcome.stores.push(name);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(tonic::Status::unavailable(format!(
                            "polling SecretStore {name:?} failed: {error}"
                        ))));
                        return;
                    }
                }
            }
            let _ = reply.send(Ok(outcome));
        });
    }

    async fn on_vault_change(&mut self, change: VaultChange) {
        let VaultChange { store, key, secret } = change;
        let record = SecretVersionRecord {
            store: store.clone(),
            name: key.clone(),
            version: secret.version.clone(),
            sha256: crate::domain::Sha256::of(secret.value.expose()),
            enabled: secret.enabled,
            created: secret.created,
            expires: secret.expires,
            not_before: secret.not_before,
        };
        if let Err(error) = self.store.upsert_secret_version(&record).await {
            tracing::warn!(store = %store, key = %key, error = %error, "cannot record the Key Vault version");
        }
        tracing::info!(store = %store, key = %key, version = %secret.version, "new Key Vault version");
        for (name, state) in &self.secrets {
            if state.spec.store_ref == store && sources::reads(&state.spec, &key, &secret.tags) {
                self.dirty.insert(name.clone());
            }
        }
        self.versioned.insert(
            (store.clone(), key.clone(), secret.version.clone()),
            secret.clone(),
        );
        self.latest.insert((store, key), secret);
    }

    /// Applies a fleet event to the in-memory status; true when a rollout may advance.
    fn observe(&mut self, event: FleetEvent) -> bool {
        let rollout_relevant = |secrets: &BTreeMap<String, SecretState>, key: &str| {
            secrets.get(key).is_some_and(|state| state.spec.rollout.is_some())
        };
        match event {
            FleetEvent::Connected { cluster, applied, .. } => {
                self.elsewhere.remove(&cluster);
                if let Some(entry) = self.clusters.get_mut(&cluster) {
                    entry.connected = true;
                    entry.last_seen = Some(Utc::now());
                }
                let mut relevant = false;
                for (key, revision) in applied {
                    relevant |= rollout_relevant(&self.secrets, &key);
                    self.set_status(cluster, &key, Some(revision), SyncState::Applied);
                }
                relevant
            }
            FleetEvent::Disconnected { cluster, at } => {
                if let Some(entry) = self.clusters.get_mut(&cluster) {
                    entry.connected = false;
                    entry.last_seen = Some(at);
                }
                false
            }
            FleetEvent::Acked {
                cluster,
                key,
                revision,
                ..
            } => {
                let relevant = rollout_relevant(&self.secrets, &key);
                self.set_status(cluster, &key, Some(revision), SyncState::Applied);
                relevant
            }
            FleetEvent::Nacked { cluster, key, .. } => {
                let relevant = rollout_relevant(&self.secrets, &key);
                let applied = self
                    .status
                    .get(&(cluster, Arc::from(key.as_str())))
                    .and_then(|row| row.applied_revision);
                self.set_status(cluster, &key, applied, SyncState::Error);
                relevant
            }
            FleetEvent::Removed { cluster, key, .. } => {
                self.status.remove(&(cluster, Arc::from(key.as_str())));
                false
            }
            FleetEvent::Drift { .. } => false,
        }
    }

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

    /// The leader keeps the change log bounded; a failure is only logged (the next tick retries).
    async fn prune_change_log(&self) {
        let older_than = Utc::now() - self.config.change_log_retention;
        match self
            .store
            .prune_changes(older_than, self.config.change_log_keep)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned the change log"),
            Err(error) => tracing::warn!(error = %error, "cannot prune the change log"),
        }
    }

    /// Reloads everything the change log could name: for a cursor the log was pruned past.
    async fn reload_all(&mut self) -> Result<(), RuntimeError> {
        self.load_specs().await?;
        self.load_pins().await?;
        self.load_rollouts().await?;
        self.reload_clusters().await?;
        if self.leadership.is_none() {
            self.follow_revisions().await?;
        }
        self.replan = true;
        Ok(())
    }

    /// Reads the change log from the cursor and reloads what it names.
    async fn catch_up(&mut self) -> Result<(), RuntimeError> {
        loop {
            let changes = self.store.changes_since(self.cursor, 1000).await?;
            // Read after the page, so entries pruned while it was read are noticed too.
            if self.cursor < self.store.change_horizon().await? {
                let latest = self.store.latest_change().await?;
                tracing::warn!(
                    cursor = self.cursor,
                    latest,
                    "the change log was pruned past this replica's cursor; reloading everything"
                );
                self.cursor = latest;
                self.reload_all().await?;
                continue;
            }
            let Some(last) = changes.last() else {
                return Ok(());
            };
            self.cursor = last.seq;
            let mut specs = false;
            let mut pins = false;
            let mut rollouts = false;
            let mut revisions = false;
            let mut clusters = false;
            for change in &changes {
                match change.kind {
                    ChangeKind::Spec => specs = true,
                    ChangeKind::Pin => pins = true,
                    ChangeKind::Rollout => rollouts = true,
                    ChangeKind::Revision => revisions = true,
                    ChangeKind::Cluster => clusters = true,
                }
            }
            if specs {
                self.load_specs().await?;
            }
            if pins {
                self.load_pins().await?;
            }
            if rollouts {
                self.load_rollouts().await?;
                self.replan = true;
            }
            if clusters {
                self.reload_clusters().await?;
                self.replan = true;
            }
            if revisions && self.leadership.is_none() {
                self.follow_revisions().await?;
            }
            if changes.len() < 1000 {
                return Ok(());
            }
        }
    }

    async fn load_specs(&mut self) -> Result<(), RuntimeError> {
        let stored = self.store.list_specs().await?;
        let mut stores = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for row in stored {
            let kind = match row.kind {
                crate::store::SpecKind::SecretStore => Kind::SecretStore,
                crate::store::SpecKind::FleetSecret => Kind::FleetSecret,
            };
            let parsed = spec::parse_stored(kind, &row.name, &row.yaml).map_err(|source| {
                RuntimeError::StoredSpec {
                    kind: kind.as_str(),
                    name: row.name.clone(),
                    source,
                }
            })?;
            match parsed {
                Spec::SecretStore(spec) => {
                    stores.insert(row.name, (spec, row.generation));
                }
                Spec::FleetSecret(spec) => {
                    secrets.insert(row.name, (spec, row.generation));
                }
            }
        }
        // Stores: keep the client and poller of an unchanged store.
        let old_stores = std::mem::take(&mut self.stores);
        let mut old_stores = old_stores;
        for (name, (spec, generation)) in stores {
            if let Some(state) = old_stores.remove(&name)
                && state.generation == generation
            {
                self.stores.insert(name, state);
                continue;
            }
            match vault::AzureKeyVault::new(&spec, &self.config.vault) {
                Ok(source) => {
                    self.stores.insert(
                        name.clone(),
                        StoreState {
                            spec,
                            generation,
                            source: Arc::new(source),
                            poller: None,
                        },
                    );
                    if self.leadership.is_some() {
                        self.start_poller(&name);
                    }
                }
                Err(error) => {
                    tracing::error!(store = %name, error = %error, "cannot build the Key Vault client");
                }
            }
        }
        let live: BTreeSet<String> = self.stores.keys().cloned().collect();
        self.pollers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name, _| live.contains(name));
        // Fleet secrets: a new generation renders again; a removed one is removed from clusters.
        let mut old = std::mem::take(&mut self.secrets);
        for (name, (spec, generation)) in secrets {
            self.deleted.remove(&name);
            match old.remove(&name) {
                Some(mut state) => {
                    if state.generation != generation {
                        state.spec = Arc::new(spec);
                        state.generation = generation;
                        self.dirty.insert(name.clone());
                    }
                    self.secrets.insert(name, state);
                }
                None => {
                    self.secrets.insert(
                        name.clone(),
                        SecretState {
                            spec: Arc::new(spec),
                            generation,
                            current: None,
                            previous: None,
                            previous_looked_up: None,
                        },
                    );
                    self.dirty.insert(name);
                }
            }
        }
        for (name, state) in old {
            tracing::info!(fleet_secret = %name, "FleetSecret deleted; removing it from clusters");
            self.deleted.insert(name, state.spec.target.deletion_policy);
        }
        self.replan = true;
        self.update_watch_sets();
        Ok(())
    }

    /// Reloads the clusters after a change: one list serves both the plan's inventory and the
    /// credential index and streams (enrolled on another replica, or revoked anywhere).
    async fn reload_clusters(&mut self) -> Result<(), RuntimeError> {
        let listed = self.store.list_clusters(None).await?;
        crate::grpc::enroll::refresh_credentials(&self.store, &listed, &self.credentials, &self.fleet)
            .await?;
        self.set_clusters(&listed);
        Ok(())
    }

    /// Takes the store's cluster list as the plan's inventory and notes which clusters another
    /// replica serves; a cluster no longer listed loses its stream and credential here.
    fn set_clusters(&mut self, listed: &[crate::store::Cluster]) {
        let fresh = self.fresh_since();
        self.elsewhere = listed
            .iter()
            .filter(|cluster| {
                self.served_elsewhere(cluster.connected_replica.as_deref(), cluster.last_seen, fresh)
            })
            .map(|cluster| cluster.id)
            .collect();
        let clusters: HashMap<ClusterId, PlanCluster> = listed
            .iter()
            .map(|cluster| (cluster.id, self.plan_cluster(cluster)))
            .collect();
        for gone in self.clusters.keys().filter(|id| !clusters.contains_key(id)) {
            self.fleet.revoke(*gone);
            self.credentials.revoke_cluster(*gone);
        }
        self.clusters = clusters;
    }

    /// A live replica refreshes `last_seen` of its clusters every few minutes (the status
    /// writer's liveness interval); a replica that died for good leaves them marked connected, so
    /// that mark counts only while it is this fresh.
    fn fresh_since(&self) -> DateTime<Utc> {
        Utc::now() - self.config.offline_grace * 2
    }

    /// Whether the store shows a cluster served by another live replica.
    fn served_elsewhere(
        &self,
        connected_replica: Option<&str>,
        last_seen: Option<DateTime<Utc>>,
        fresh: DateTime<Utc>,
    ) -> bool {
        connected_replica.is_some_and(|replica| replica != self.config.replica)
            && last_seen.is_some_and(|seen| seen >= fresh)
    }

    /// A cluster as the planner sees it: connected when a stream is here or, by the store,
    /// on another replica (either way it answers, so its wave waits for it).
    fn plan_cluster(&self, cluster: &crate::store::Cluster) -> PlanCluster {
        PlanCluster {
            id: cluster.id,
            connected: self.fleet.is_connected(cluster.id) || self.elsewhere.contains(&cluster.id),
            name: Arc::from(cluster.name.as_str()),
            labels: Arc::new(cluster.labels.clone()),
            state: cluster.state,
            last_seen: cluster.last_seen,
        }
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
    async fn refresh_from_store(&mut self, names: &[String]) -> Result<(), RuntimeError> {
        let liveness = self.store.cluster_liveness().await?;
        let mut changed = self.apply_liveness(&liveness);
        for name in names {
            let key: Arc<str> = Arc::from(name.as_str());
            for row in self
                .store
                .status_served_elsewhere(name, &self.config.replica)
                .await?
            {
                if self.fleet.is_connected(row.cluster) {
                    continue;
                }
                let status = PlanStatus {
                    cluster: row.cluster,
                    fleet_secret: Arc::clone(&key),
                    desired_revision: row.desired_revision,
                    applied_revision: row.applied_revision,
                    state: row.state,
                };
                let slot = (row.cluster, Arc::clone(&key));
                if self.status.get(&slot) != Some(&status) {
                    self.status.insert(slot, status);
                    changed = true;
                }
            }
        }
        self.replan |= changed;
        Ok(())
    }

    /// Takes which replica serves each known cluster and when it was last seen; whether that
    /// changed what the planner sees.
    fn apply_liveness(&mut self, liveness: &[ClusterLiveness]) -> bool {
        let fresh = self.fresh_since();
        self.elsewhere = liveness
            .iter()
            .filter(|entry| self.served_elsewhere(entry.connected_replica.as_deref(), entry.last_seen, fresh))
            .map(|entry| entry.id)
            .collect();
        let mut changed = false;
        for entry in liveness {
            let Some(cluster) = self.clusters.get_mut(&entry.id) else {
                continue;
            };
            let connected = self.fleet.is_connected(entry.id) || self.elsewhere.contains(&entry.id);
            if cluster.connected != connected || cluster.last_seen != entry.last_seen {
                cluster.connected = connected;
                cluster.last_seen = entry.last_seen;
                changed = true;
            }
        }
        changed
    }

    async fn load_pins(&mut self) -> Result<(), RuntimeError> {
        let mut pins: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for pin in self.store.pins().await? {
            pins.entry(pin.fleet_secret)
                .or_default()
                .insert(pin.remote_key, pin.version);
        }
        for name in self.secrets.keys() {
            if pins.get(name) != self.pins.get(name) {
                self.dirty.insert(name.clone());
            }
        }
        self.pins = pins;
        Ok(())
    }

    async fn load_rollouts(&mut self) -> Result<(), RuntimeError> {
        self.rollouts = self
            .store
            .rollouts()
            .await?
            .into_iter()
            .map(|record| {
                (
                    record.fleet_secret.clone(),
                    RolloutProgress {
                        fleet_secret: record.fleet_secret,
                        revision: record.revision,
                        current_wave: record.current_wave,
                        paused: record.paused,
                        reason: record.reason,
                    },
                )
            })
            .collect();
        Ok(())
    }

    /// Renders dirty fleet secrets (leader) and plans.
    async fn rebuild(&mut self) -> Result<(), RuntimeError> {
        let dirty = std::mem::take(&mut self.dirty);
        if self.leadership.is_some() {
            for name in dirty {
                self.render_one(&name).await?;
            }
        } else if !dirty.is_empty() {
            self.follow_revisions().await?;
        }
        self.restore_previous().await?;
        self.plan_and_send().await
    }

    /// Renders one fleet secret from the values at the versions it uses; records a revision when
    /// the result differs.
    async fn render_one(&mut self, name: &str) -> Result<(), RuntimeError> {
        let Some(state) = self.secrets.get(name) else {
            return Ok(());
        };
        let spec = Arc::clone(&state.spec);
        let generation = state.generation;
        let Some(store_state) = self.stores.get(&spec.store_ref) else {
            tracing::warn!(fleet_secret = %name, store = %spec.store_ref, "FleetSecret refers to an unknown SecretStore");
            return Ok(());
        };
        let source = Arc::clone(&store_state.source);
        let pins = self.pins.get(name).cloned().unwrap_or_default();
        let wanted = sources::wanted_versions(&spec, &pins);
        // Fetch what is not cached: fixed and pinned versions.
        for (key, version) in &wanted {
            let Some(version) = version else {
                continue;
            };
            let cache_key = (spec.store_ref.clone(), key.clone(), version.clone());
            if let std::collections::hash_map::Entry::Vacant(entry) = self.versioned.entry(cache_key) {
                match source.get(key, Some(version)).await {
                    Ok(secret) => {
                        entry.insert(secret);
                    }
                    Err(error) => {
                        tracing::warn!(fleet_secret = %name, key = %key, version = %version, error = %error, "cannot fetch a pinned or fixed version");
                        return Ok(());
                    }
                }
            }
        }
        let sources = match sources::assemble(&spec, &wanted, &self.latest, &self.versioned) {
            Ok(sources) => sources,
            Err(missing) => {
                tracing::info!(fleet_secret = %name, key = %missing, "waiting for the first value of a Key Vault secret");
                return Ok(());
            }
        };
        let rendered = match render::render(&spec, &sources) {
            Ok(rendered) => rendered,
            Err(error) => {
                tracing::error!(fleet_secret = %name, error = %error, "cannot render; clusters keep the previous revision");
                return Ok(());
            }
        };
        let sha256 = rendered_sha256(&rendered);
        let unchanged = self
            .secrets
            .get(name)
            .and_then(|state| state.current.as_ref())
            .is_some_and(|current| current.reference.sha256 == sha256);
        if unchanged {
            return Ok(());
        }
        let number = self
            .store
            .upsert_revision(&NewRevision {
                fleet_secret: name.to_owned(),
                sha256,
                spec_generation: generation,
                sources: sources.versions(),
            })
            .await?;
        let encoded = Arc::new(encode_revision(&rendered, number));
        self.install(name, number, encoded);
        self.store.append_change(ChangeKind::Revision, name).await?;
        tracing::info!(fleet_secret = %name, revision = number, sha256 = %sha256.to_hex(), "new revision");
        Ok(())
    }

    /// Makes `number` the current revision of `name`; the current one becomes the previous one.
    /// Only these two stay built.
    fn install(&mut self, name: &str, number: u64, encoded: Arc<EncodedRevision>) {
        let Some(state) = self.secrets.get_mut(name) else {
            return;
        };
        if let Some(current) = &state.current
            && current.reference.number != number
        {
            state.previous = Some(current.reference);
            state.previous_looked_up = Some(number);
        }
        state.current = Some(Built {
            reference: RevisionRef {
                number,
                sha256: encoded.sha256,
            },
            encoded: Arc::clone(&encoded),
        });
        let previous = state.previous.map(|previous| previous.number);
        self.built.retain(|(built_name, built_number), _| {
            built_name != name || *built_number == number || Some(*built_number) == previous
        });
        self.built.insert((name.to_owned(), number), encoded);
        self.replan = true;
    }

    /// Follower: reproduce the revisions the leader recorded, from the recorded versions.
    async fn follow_revisions(&mut self) -> Result<(), RuntimeError> {
        for record in self.store.latest_revisions().await? {
            let Some(state) = self.secrets.get(&record.fleet_secret) else {
                continue;
            };
            if state
                .current
                .as_ref()
                .is_some_and(|current| current.reference.number == record.revision)
            {
                continue;
            }
            if let Some(encoded) = self.reproduce(&record).await {
                self.install(&record.fleet_secret, record.revision, encoded);
            }
        }
        Ok(())
    }

    /// Gives every fleet secret whose previous revision is unknown here (after a start or a
    /// failover, when the process that built it is gone) the revision the store recorded before
    /// its current one, reproduced from its recorded Key Vault versions: clusters beyond a
    /// rollout's current wave keep it. When it cannot be reproduced (rendered from an older spec,
    /// or its versions are gone), its reference still holds those clusters where they are, and a
    /// cluster that needs its bytes gets the current revision (`plan_and_send`).
    async fn restore_previous(&mut self) -> Result<(), RuntimeError> {
        let missing: Vec<(String, u64)> = self
            .secrets
            .iter()
            .filter(|(_, state)| state.previous.is_none())
            .filter_map(|(name, state)| {
                let current = state.current.as_ref()?.reference.number;
                (state.previous_looked_up != Some(current)).then(|| (name.clone(), current))
            })
            .collect();
        for (name, current) in missing {
            if let Some(state) = self.secrets.get_mut(&name) {
                state.previous_looked_up = Some(current);
            }
            let Some(record) = self.store.revision_before(&name, current).await? else {
                continue;
            };
            let encoded = self.reproduce(&record).await;
            let Some(state) = self.secrets.get_mut(&name) else {
                continue;
            };
            let still_current = state
                .current
                .as_ref()
                .is_some_and(|built| built.reference.number == current);
            if state.previous.is_some() || !still_current {
                continue;
            }
            state.previous = Some(RevisionRef {
                number: record.revision,
                sha256: record.sha256,
            });
            tracing::info!(
                fleet_secret = %name,
                revision = record.revision,
                reproduced = encoded.is_some(),
                "previous revision restored"
            );
            if let Some(encoded) = encoded {
                self.built.insert((name, record.revision), encoded);
            }
            self.replan = true;
        }
        Ok(())
    }

    /// Rebuilds a recorded revision from the Key Vault versions it was rendered from (one GET per
    /// version not cached here) and checks its sha256; `None`, logged, when it cannot.
    async fn reproduce(&mut self, record: &RevisionRecord) -> Option<Arc<EncodedRevision>> {
        let name = &record.fleet_secret;
        let state = self.secrets.get(name)?;
        let spec = Arc::clone(&state.spec);
        let Some(store_state) = self.stores.get(&spec.store_ref) else {
            tracing::warn!(fleet_secret = %name, store = %spec.store_ref, "FleetSecret refers to an unknown SecretStore");
            return None;
        };
        let source = Arc::clone(&store_state.source);
        for (key, version) in &record.sources {
            let cache_key = (spec.store_ref.clone(), key.clone(), version.clone());
            if self.versioned.contains_key(&cache_key) {
                continue;
            }
            match source.get(key, Some(version)).await {
                Ok(secret) => {
                    self.versioned.insert(cache_key, secret);
                }
                Err(error) => {
                    tracing::warn!(fleet_secret = %name, revision = record.revision, key = %key, version = %version, error = %error, "cannot fetch a recorded version");
                    return None;
                }
            }
        }
        let sources = sources::recorded(&spec, &record.sources, &spec.store_ref, &self.versioned);
        let rendered = match render::render(&spec, &sources) {
            Ok(rendered) => rendered,
            Err(error) => {
                tracing::error!(fleet_secret = %name, revision = record.revision, error = %error, "cannot reproduce a recorded revision");
                return None;
            }
        };
        if rendered_sha256(&rendered) != record.sha256 {
            tracing::warn!(fleet_secret = %name, revision = record.revision, "reproduced revision differs from the recorded sha256 (rendered from another spec)");
            return None;
        }
        Some(Arc::new(encode_revision(&rendered, record.revision)))
    }

    /// Plans every cluster and hands changed desired sets to the fleet; the leader persists
    /// rollout progress.
    async fn plan_and_send(&mut self) -> Result<(), RuntimeError> {
        if !std::mem::take(&mut self.replan) {
            return Ok(());
        }
        let mut plan = self.compute_plan();
        let advancing: Vec<String> = plan
            .rollouts
            .iter()
            .filter(|decision| self.advances(decision))
            .map(|decision| decision.fleet_secret.to_string())
            .collect();
        if !advancing.is_empty() {
            // A wave is about to advance: first count what other replicas recorded (their acks,
            // which clusters they serve), so that no wave moves on without their clusters.
            self.refresh_from_store(&advancing).await?;
            self.replan = false;
            plan = self.compute_plan();
        }
        self.send_plan(&plan);
        self.record_progress(&plan).await
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

    /// The plan for the current inventory, revisions, status and rollout progress.
    fn compute_plan(&mut self) -> plan::Plan {
        for cluster in self.clusters.values_mut() {
            cluster.connected = self.fleet.is_connected(cluster.id) || self.elsewhere.contains(&cluster.id);
        }
        let clusters: Vec<PlanCluster> = self.clusters.values().cloned().collect();
        let fleet_secrets: Vec<PlanFleetSecret> = self
            .secrets
            .values()
            .map(|state| PlanFleetSecret {
                spec: Arc::clone(&state.spec),
                current: state.current.as_ref().map(|built| built.reference),
                previous: state.previous,
            })
            .collect();
        let status: Vec<PlanStatus> = self.status.values().cloned().collect();
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
        plan::plan(&input)
    }

    /// Hands every changed desired set to the fleet.
    fn send_plan(&mut self, plan: &plan::Plan) {
        let mut changed = Vec::new();
        let mut not_built: BTreeSet<(&str, u64)> = BTreeSet::new();
        for cluster_plan in &plan.clusters {
            let mut desired = ClusterDesired::default();
            for item in &cluster_plan.desired {
                let name: &str = &item.fleet_secret;
                let encoded = self
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
            if self
                .sent
                .get(&cluster_plan.cluster)
                .is_none_or(|sent| **sent != desired)
            {
                changed.push((cluster_plan.cluster, Arc::new(desired)));
            }
        }
        for (name, revision) in not_built {
            tracing::warn!(
                fleet_secret = name,
                revision,
                "revision not built here; sending the current one instead"
            );
        }
        if !changed.is_empty() {
            tracing::debug!(clusters = changed.len(), "desired sets changed");
            for (cluster, desired) in &changed {
                self.sent.insert(*cluster, Arc::clone(desired));
                for (key, item) in &desired.items {
                    let key: Arc<str> = Arc::from(key.as_str());
                    let entry = self.status.entry((*cluster, Arc::clone(&key)));
                    let row = entry.or_insert_with(|| PlanStatus {
                        cluster: *cluster,
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
            }
            self.fleet.set_desired_many(changed);
        }
    }

    /// Notes which rollouts progress and, on the leader, records their progress.
    async fn record_progress(&mut self, plan: &plan::Plan) -> Result<(), RuntimeError> {
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
        if self.leadership.is_none() {
            return Ok(());
        }
        for decision in &plan.rollouts {
            let Some(progress) = decision.progress() else {
                continue;
            };
            if self.rollouts.get(progress.fleet_secret.as_str()) != Some(&progress) {
                self.store
                    .set_rollout(&crate::store::RolloutRecord {
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
                self.rollouts.insert(progress.fleet_secret.clone(), progress);
                // Waves advance as acks arrive: plan again once they do.
            }
        }
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
