//! The sync engine: the one task that turns specs, Key Vault versions, inventory, pins and
//! rollout progress into the set of revisions every cluster must hold, and hands those sets to
//! the fan-out ([`Fleet`]).
//!
//! ```text
//! change log (specs, clusters, pins, rollouts, revisions) ─┐
//! vault::Poller (leader only) ── VaultChange ──────────────┼─► Engine ─► render ─► store revision
//! fleet events (acks, connects) ───────────────────────────┘        └─► sync::plan ─► Fleet::set_desired
//! ```
//!
//! Only the Key Vault leader renders new revisions (and records them); every other replica
//! reproduces the revisions the change log announces by fetching the recorded versions itself
//! (one GET per version per replica) and checking the sha256. Changes are debounced so a burst
//! (a spec apply, a rotation of several keys) becomes one revision and one plan.
//!
//! Layout: this file holds the task (state, loop, warm-up); `leader.rs` the Key Vault leadership,
//! pollers and sync-now; `changelog.rs` the change-log tail and what it reloads; `inventory.rs`
//! clusters, liveness and status as the planner sees them; `revisions.rs` rendering, encoding and
//! reproducing revisions; `planning.rs` planning and handing desired sets to the fleet.
//!
//! **Invariant:** values live only in `vault::FetchedSecret` / `SecretValue` here, are rendered and
//! encoded once per revision, and never reach the store, a log line or an error.

mod changelog;
mod inventory;
mod leader;
mod planning;
mod requests;
mod revisions;
mod sources;
#[cfg(test)]
mod tests;
mod waves;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::fleet::credentials::Credentials;
use crate::fleet::{Fleet, FleetEvent};
use crate::spec::{self, DeletionPolicy};
use crate::store::{Store, StoreError};
use crate::sync::control::{ControlError, HubControl, StoreHealth, SyncNowOutcome};
use crate::sync::plan::{PlanStatus, RolloutProgress};
use crate::vault::eventgrid::KeyVaultEvents;
use crate::vault::{SourceFactory, VaultMetrics};

use inventory::Inventory;
pub use inventory::refresh_credentials;
pub(crate) use inventory::{Connectivity, plan_cluster, plan_status, rollout_progress};
use leader::{PollerRegistry, Vaults};
pub use revisions::RevisionEncoder;
use revisions::{SecretState, Values};
use waves::{Observed, Waves};

/// Shortest time between two reads of other replicas' status woken by their writes (a replica
/// writes at most every 250 ms per batch, but several replicas may).
const STATUS_READ_GAP: Duration = Duration::from_millis(100);

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// This replica's id (connected_replica in the store).
    pub replica: String,
    /// Where the Key Vault pollers count their sweeps and changes.
    pub vault_metrics: VaultMetrics,
    /// Quiet time after a change before rendering and planning.
    pub debounce: Duration,
    /// Longest a change waits while changes keep arriving.
    pub debounce_max: Duration,
    /// Change-log cursor poll: the guarantee behind NOTIFY wake-ups.
    pub tail_interval: Duration,
    /// A disconnected cluster stops counting for wave progress after this long.
    pub offline_grace: TimeDelta,
    /// Sync history and repaired drift older than this are pruned (by the leader).
    pub history_retention: TimeDelta,
    /// The leader prunes change-log entries older than this (keeping `change_log_keep` newest).
    pub change_log_retention: TimeDelta,
    /// Newest change-log entries never pruned.
    pub change_log_keep: u32,
    /// How often the leader prunes the change log.
    pub change_log_prune_interval: Duration,
    /// A follower tries to take the Key Vault leadership this often (leader loss hands over
    /// within about this long).
    pub lead_retry: Duration,
    /// The credential index and streams are checked against the store's clusters this often,
    /// whatever the change log said: a revocation is enforced even if its change was missed.
    pub credential_reconcile: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            replica: "hub".to_owned(),
            vault_metrics: VaultMetrics::default(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_millis(500),
            tail_interval: Duration::from_secs(1),
            offline_grace: TimeDelta::minutes(5),
            change_log_retention: TimeDelta::hours(24),
            history_retention: TimeDelta::days(30),
            change_log_keep: 10_000,
            change_log_prune_interval: Duration::from_secs(600),
            lead_retry: Duration::from_secs(2),
            credential_reconcile: Duration::from_secs(30),
        }
    }
}

/// What the engine works with: the store, the fan-out, the credential index, where Key Vault
/// clients come from, and how revisions are encoded for the wire (wired by `app`).
pub struct EngineDeps {
    /// The store (inventory, specs, change log, revisions, status).
    pub store: Store,
    /// The fan-out registry.
    pub fleet: Fleet,
    /// The in-memory credential index (kept in line with revocations made anywhere).
    pub credentials: Credentials,
    /// One secret source per SecretStore.
    pub sources: Arc<dyn SourceFactory>,
    /// Encodes each revision once (`grpc::convert::ProtoEncoder` in the hub).
    pub encoder: Arc<dyn RevisionEncoder>,
}

/// Errors that stop the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// A spec the store holds no longer parses (written by another version of keyfleet).
    #[error("stored {kind} {name} no longer parses")]
    StoredSpec {
        /// `SecretStore` or `FleetSecret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: spec::SpecError,
    },
}

/// What the Admin use cases ask of the engine.
enum Command {
    Changed,
    SyncNow {
        store: Option<String>,
        reply: oneshot::Sender<Result<SyncNowOutcome, ControlError>>,
    },
    SecretChanged {
        vault: String,
        secret: String,
        reply: oneshot::Sender<Result<Vec<String>, String>>,
    },
}

/// The handle the Admin use cases hold ([`HubControl`]).
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    pollers: PollerRegistry,
    store: Store,
}

#[async_trait::async_trait]
impl HubControl for EngineHandle {
    async fn changed(&self) {
        // A full queue already holds a wake-up; the change log is the truth.
        let _ = self.commands.try_send(Command::Changed);
    }

    async fn store_health(&self) -> BTreeMap<String, StoreHealth> {
        requests::store_health(&self.store, &self.pollers).await
    }

    async fn sync_now(&self, store: Option<String>) -> Result<SyncNowOutcome, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SyncNow { store, reply })
            .await
            .map_err(|_| ControlError::ShuttingDown)?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }
}

#[async_trait::async_trait]
impl KeyVaultEvents for EngineHandle {
    async fn secret_changed(&self, vault: &str, secret: &str) -> Result<Vec<String>, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SecretChanged {
                vault: vault.to_owned(),
                secret: secret.to_owned(),
                reply,
            })
            .await
            .map_err(|_| "hub is shutting down".to_owned())?;
        answer.await.map_err(|_| "hub is shutting down".to_owned())?
    }
}

/// The engine task's state.
pub struct Engine {
    config: EngineConfig,
    store: Store,
    fleet: Fleet,
    credentials: Credentials,
    encoder: Arc<dyn RevisionEncoder>,
    commands: mpsc::Receiver<Command>,
    ready: watch::Sender<bool>,
    /// Change-log position this replica has read up to.
    cursor: i64,
    /// Leadership, SecretStores with their clients and (on the leader) pollers.
    vaults: Vaults,
    /// Every FleetSecret with its current and previous revision.
    secrets: BTreeMap<String, SecretState>,
    /// Pinned versions: fleet secret → remote key → version.
    pins: BTreeMap<String, BTreeMap<String, String>>,
    /// Recorded rollout progress by fleet secret.
    rollouts: BTreeMap<String, RolloutProgress>,
    /// Fleet secrets whose rollout the last plan left progressing (or paused by errors, which lifts
    /// by itself): while any is, acks recorded by other replicas are read from the store.
    progressing: BTreeSet<String>,
    /// Deleted fleet secrets and their last deletion policy (removals due on clusters).
    deleted: BTreeMap<String, DeletionPolicy>,
    /// Clusters, liveness and status as the planner sees them; what was sent to the fleet.
    inventory: Inventory,
    /// Key Vault values and the revisions built from them.
    values: Values,
    /// Fleet secrets to render again (leader) or follow (others).
    dirty: BTreeSet<String>,
    /// Whether the next debounced rebuild must plan again.
    replan: bool,
    /// Whether the last store call failed as unreachable: the engine serves from memory and
    /// retries each tick (see [`Engine::survive`]).
    store_down: bool,
    /// Revisions recorded here whose change-log entry is still to be appended.
    unannounced: BTreeSet<String>,
    /// Key Vault versions seen while the store failed, recorded once it answers.
    unrecorded_versions: Vec<crate::store::SecretVersionRecord>,
    /// The open `rotation` span of each fleet secret a new Key Vault version made dirty: its
    /// `render` and `plan` spans are its children, and so is each `rollout.wave` it goes
    /// through; it ends once the desired sets are sent and no wave is left (a rollout that
    /// completes, or the next version's rotation, ends it).
    rotations: BTreeMap<String, tracing::Span>,
    /// The current wave of every progressing rollout, counted down as acks arrive.
    waves: Waves,
}

impl Engine {
    /// Builds the engine and the handle the Admin use cases hold.
    pub fn new(config: EngineConfig, deps: EngineDeps) -> (Self, EngineHandle) {
        let (commands_tx, commands) = mpsc::channel(64);
        let (ready, _) = watch::channel(false);
        let vaults = Vaults::new(deps.sources);
        let pollers = vaults.registry();
        let engine_store = deps.store.clone();
        let inventory = Inventory::new(Connectivity::new(
            Some(config.replica.clone()),
            config.offline_grace,
        ));
        let engine = Self {
            config,
            store: deps.store,
            fleet: deps.fleet,
            credentials: deps.credentials,
            encoder: deps.encoder,
            commands,
            ready,
            cursor: 0,
            vaults,
            secrets: BTreeMap::new(),
            pins: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            progressing: BTreeSet::new(),
            deleted: BTreeMap::new(),
            inventory,
            values: Values::default(),
            dirty: BTreeSet::new(),
            replan: false,
            store_down: false,
            unannounced: BTreeSet::new(),
            unrecorded_versions: Vec::new(),
            rotations: BTreeMap::new(),
            waves: Waves::default(),
        };
        (
            engine,
            EngineHandle {
                commands: commands_tx,
                pollers,
                store: engine_store,
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
    ) -> Result<(), EngineError> {
        self.warm_up().await?;
        let _ = self.ready.send(true);
        tracing::info!(
            clusters = self.inventory.clusters.len(),
            fleet_secrets = self.secrets.len(),
            leader = self.vaults.leads(),
            "runtime ready"
        );
        let mut wakeups = self.store.change_wakeups().await?;
        // Other replicas' status writes, read at most every `STATUS_READ_GAP` and only while a
        // wave waits for clusters another replica serves.
        let mut status_due: Option<Instant> = None;
        let mut status_read_at: Option<Instant> = None;
        let mut tail = tokio::time::interval(self.config.tail_interval);
        tail.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(self.config.change_log_prune_interval);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lead_retry = tokio::time::interval(self.config.lead_retry);
        lead_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile = tokio::time::interval(self.config.credential_reconcile);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.reset();
        let mut due: Option<(Instant, Instant)> = None;
        tokio::pin!(shutdown);
        loop {
            let deadline = due.map(|(quiet, max)| quiet.min(max));
            let offline = self.waves.offline_deadline();
            let lost = leader::lost(self.vaults.leadership.as_ref());
            let mut changed = false;
            tokio::select! {
                () = &mut shutdown => break,
                Some(command) = self.commands.recv() => match command {
                    Command::Changed => {
                        let caught_up = self.catch_up().await;
                        self.survive("read the change log", caught_up)?;
                        changed = true;
                    }
                    Command::SyncNow { store, reply } => self.sync_now(store, reply),
                    Command::SecretChanged { vault, secret, reply } => {
                        let _ = reply.send(self.secret_changed(&vault, &secret).await);
                    }
                },
                Some(change) = self.vaults.changes.recv() => {
                    self.on_vault_change(change).await;
                    changed = true;
                }
                Some(event) = events.recv() => match self.observe(event) {
                    Observed::Nothing => {}
                    Observed::Replan => {
                        self.replan = true;
                        changed = true;
                    }
                    // The wave's last member answered: the next wave starts now, not after the
                    // debounce.
                    Observed::WaveDone => {
                        self.replan = true;
                        let planned = self.plan_now().await;
                        self.survive("plan the next wave", planned)?;
                    }
                },
                () = sleep_until_opt(offline), if offline.is_some() => {
                    // An offline member of a wave stopped counting: the wave may be done.
                    self.waves.offline_fired();
                    self.replan = true;
                    let planned = self.plan_now().await;
                    self.survive("plan after an offline grace", planned)?;
                }
                Some(()) = wakeups.status.recv() => {
                    if status_due.is_none() && !self.progressing.is_empty() {
                        let now = Instant::now();
                        let earliest = status_read_at.map_or(now, |at| at + STATUS_READ_GAP);
                        status_due = Some(earliest.max(now));
                    }
                }
                () = sleep_until_opt(status_due), if status_due.is_some() => {
                    status_due = None;
                    if !self.store_down
                        && self.fleet.with_connected(|here| self.waves.waits_elsewhere(here))
                    {
                        status_read_at = Some(Instant::now());
                        let names: Vec<String> = self.progressing.iter().cloned().collect();
                        let refreshed = self.refresh_status(&names).await;
                        self.survive("read other replicas' status", refreshed)?;
                        // Their acks may end the wave: the next one starts now, not after the
                        // debounce.
                        if self.replan {
                            let planned = self.plan_now().await;
                            self.survive("plan after other replicas' acks", planned)?;
                        }
                    }
                }
                Some(()) = wakeups.changes.recv() => {
                    let caught_up = self.catch_up().await;
                    self.survive("read the change log", caught_up)?;
                    let served = self.serve_requests().await.map_err(EngineError::from);
                    self.survive("serve other replicas' poll requests", served)?;
                    changed = true;
                }
                _ = tail.tick() => {
                    let caught_up = self.catch_up().await;
                    self.survive("read the change log", caught_up)?;
                    let served = self.serve_requests().await.map_err(EngineError::from);
                    self.survive("serve other replicas' poll requests", served)?;
                    self.publish_polls().await;
                    if !self.progressing.is_empty() && !self.store_down {
                        let names: Vec<String> = self.progressing.iter().cloned().collect();
                        let refreshed = self.refresh_from_store(&names).await;
                        self.survive("read other replicas' status", refreshed)?;
                    }
                    changed = self.replan || !self.dirty.is_empty();
                }
                _ = prune.tick(), if self.vaults.leads() => self.prune_change_log().await,
                _ = lead_retry.tick(), if !self.vaults.leads() => {
                    match self.try_lead().await {
                        Ok(led) => changed |= led,
                        Err(error) => self.survive("take the Key Vault leadership", Err(error))?,
                    }
                }
                () = lost => {
                    self.vaults.lose_leadership();
                    self.config.vault_metrics.set_leader(false);
                }
                _ = reconcile.tick() => {
                    let reconciled = self.reload_clusters().await;
                    self.survive("reconcile credentials", reconciled)?;
                    changed = self.replan;
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    due = None;
                    let rebuilt = self.rebuild().await;
                    self.survive("render and plan", rebuilt)?;
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

    /// A store failure degrades the engine instead of stopping it: the fleet keeps every desired
    /// set it has (agents are served from memory, the status writer buffers), the failed step is
    /// retried on the next tick (the change-log cursor and the dirty set only move on success),
    /// and the transition is logged once each way. Any other error stops the engine.
    fn survive(&mut self, step: &'static str, result: Result<(), EngineError>) -> Result<(), EngineError> {
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.store_down) {
                    tracing::info!(step, "the store answers again; catching up");
                }
                Ok(())
            }
            Err(EngineError::Store(error)) if !error.is_unavailable() => {
                // Not an outage (a refused statement, a row that does not decode): retried like
                // one, but said every time, so a persistent fault is never quiet.
                self.store_down = true;
                tracing::error!(step, error = %error, source = ?std::error::Error::source(&error),
                    "store call failed; retrying each tick");
                Ok(())
            }
            Err(EngineError::Store(error)) => {
                if !std::mem::replace(&mut self.store_down, true) {
                    tracing::warn!(step, error = %error, source = ?std::error::Error::source(&error),
                        "store call failed; serving agents from memory and retrying each tick");
                } else {
                    tracing::debug!(step, error = %error, "store still failing");
                }
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Loads everything from the store, takes the leadership if free (then polls every store
    /// once), and plans every cluster: what must hold before agents are let in.
    async fn warm_up(&mut self) -> Result<(), EngineError> {
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
            let status: PlanStatus = plan_status(&row);
            self.inventory
                .status
                .insert((status.cluster, Arc::clone(&status.fleet_secret)), status);
        }
        self.try_lead().await?;
        if self.vaults.leads() {
            self.first_polls().await;
        }
        self.dirty.extend(self.secrets.keys().cloned());
        self.replan = true;
        self.rebuild().await
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
