//! Sync status: turns [`FleetEvent`]s into store writes, cheaply.
//!
//! - Acks and NACKs are buffered per (cluster, key) (the newest row wins) and written with ONE
//!   `upsert_status_batch` per flush: at most `flush_interval` after the first buffered row, or
//!   as soon as `flush_rows` rows are buffered, whichever comes first.
//! - Connect and disconnect are persisted as they happen; liveness otherwise stays in memory and
//!   is refreshed coarsely (`touch_last_seen` of every connected cluster in one statement).
//! - The undelivered detector marks a (cluster, key) whose desired revision stayed unacknowledged
//!   on a stream of this process for `undelivered_after` (and was not refused: that is `error`).
//! - On connect, keys the agent already holds at their desired revision are written as applied
//!   (an ack that a dead replica had buffered is not lost).
//! - [`StatusView`] exposes, per cluster, the applied key → revision for the runtime.
//!
//! A failed write is logged (no values exist here to leak) and retried with the next flush.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::domain::{ClusterId, Sha256, SyncState};
use crate::fleet::{Fleet, FleetEvent};
use crate::store::{StatusRow, Store, StoreError};

/// Where status goes: the [`Store`] in production, a recorder in tests.
#[async_trait::async_trait]
pub trait StatusSink: Send + Sync + 'static {
    /// One statement for all rows.
    async fn upsert_status_batch(&self, rows: &[StatusRow]) -> Result<u64, StoreError>;
    /// Forgets the status of a key the cluster no longer holds.
    async fn delete_status(&self, cluster: ClusterId, key: &str) -> Result<(), StoreError>;
    /// The cluster's agent connected to `replica`.
    async fn record_connect(
        &self,
        cluster: ClusterId,
        replica: &str,
        agent_version: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The cluster's agent disconnected from `replica`.
    async fn record_disconnect(
        &self,
        cluster: ClusterId,
        replica: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// One statement for every connected cluster.
    async fn touch_last_seen(&self, ids: &[ClusterId], at: DateTime<Utc>) -> Result<(), StoreError>;
}

#[async_trait::async_trait]
impl StatusSink for Store {
    async fn upsert_status_batch(&self, rows: &[StatusRow]) -> Result<u64, StoreError> {
        Store::upsert_status_batch(self, rows).await
    }

    async fn delete_status(&self, cluster: ClusterId, key: &str) -> Result<(), StoreError> {
        Store::delete_status(self, cluster, key).await
    }

    async fn record_connect(
        &self,
        cluster: ClusterId,
        replica: &str,
        agent_version: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Store::record_connect(self, cluster, replica, agent_version, at).await
    }

    async fn record_disconnect(
        &self,
        cluster: ClusterId,
        replica: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Store::record_disconnect(self, cluster, replica, at).await
    }

    async fn touch_last_seen(&self, ids: &[ClusterId], at: DateTime<Utc>) -> Result<(), StoreError> {
        Store::touch_last_seen(self, ids, at).await
    }
}

/// Status settings.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// This replica's id (`clusters.connected_replica`).
    pub replica: String,
    /// Longest time a buffered row waits before its flush.
    pub flush_interval: Duration,
    /// A flush happens as soon as this many rows are buffered.
    pub flush_rows: usize,
    /// Coarse liveness refresh of connected clusters.
    pub liveness_interval: Duration,
    /// A desired revision unacknowledged this long is `undelivered`.
    pub undelivered_after: Duration,
    /// How often the undelivered detector looks.
    pub detector_interval: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            // The engine's default too; `serve` sets both to its `--replica-id`.
            replica: "hub".to_owned(),
            flush_interval: Duration::from_millis(250),
            flush_rows: 1_000,
            liveness_interval: Duration::from_secs(300),
            undelivered_after: Duration::from_secs(300),
            detector_interval: Duration::from_secs(30),
        }
    }
}

/// Status metrics (`keyfleet_hub_status_*`).
#[derive(Debug, Clone, Default)]
pub struct StatusMetrics {
    /// Batches written.
    pub flushes: Counter,
    /// Rows written.
    pub rows: Counter,
    /// Failed writes (retried).
    pub errors: Counter,
    /// Rows marked undelivered.
    pub undelivered: Counter,
    /// Drift repairs reported by agents.
    pub drift: Counter,
    /// Rows, deletions and connection changes held after the last flush (the store failed them).
    pub pending: Gauge,
}

impl StatusMetrics {
    /// Registers under `status_`.
    pub fn register(&self, registry: &mut Registry) {
        let status = registry.sub_registry_with_prefix("status");
        status.register("flushes", "Status batches written", self.flushes.clone());
        status.register("rows", "Status rows written", self.rows.clone());
        status.register(
            "write_errors",
            "Failed status writes (retried)",
            self.errors.clone(),
        );
        status.register(
            "undelivered",
            "Rows marked undelivered by the detector",
            self.undelivered.clone(),
        );
        status.register(
            "pending",
            "Status writes held after the last flush because the store failed them (retried)",
            self.pending.clone(),
        );
        status.register(
            "drift_reports",
            "Drift repairs reported by agents",
            self.drift.clone(),
        );
    }
}

/// Per cluster: key → (applied revision, its digest when known).
type Applied = HashMap<ClusterId, Held>;

/// What one cluster holds: key → (applied revision, its digest when known), sorted by key. A
/// cluster holds a handful of keys, so a sorted vector: a `BTreeMap` allocates an 11-slot node
/// (~0.8 KiB here) for the first key, which was 0.8 KiB of hub memory per connected agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Held(Vec<(String, (u64, Option<Sha256>))>);

impl Held {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| held.as_str().cmp(key))
    }

    fn get(&self, key: &str) -> Option<&(u64, Option<Sha256>)> {
        self.position(key).ok().map(|index| &self.0[index].1)
    }

    fn insert(&mut self, key: String, value: (u64, Option<Sha256>)) {
        match self.position(&key) {
            Ok(index) => self.0[index].1 = value,
            Err(index) => {
                // One slot at a time: a vector's first growth would reserve four.
                self.0.reserve_exact(1);
                self.0.insert(index, (key, value));
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(index) = self.position(key) {
            self.0.remove(index);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &(u64, Option<Sha256>))> {
        self.0.iter().map(|(key, value)| (key, value))
    }
}

/// Per cluster, what its agent holds: key → (revision, digest when known). Cheap to clone.
#[derive(Clone, Default)]
pub struct StatusView {
    inner: Arc<RwLock<Applied>>,
}

impl StatusView {
    /// Key → applied revision of `cluster` (as last reported on this replica).
    pub fn applied(&self, cluster: ClusterId) -> Option<BTreeMap<String, u64>> {
        self.read().get(&cluster).map(|keys| {
            keys.iter()
                .map(|(key, (revision, _))| (key.clone(), *revision))
                .collect()
        })
    }

    /// The revision of `key` applied in `cluster`.
    pub fn applied_revision(&self, cluster: ClusterId, key: &str) -> Option<u64> {
        self.read()
            .get(&cluster)
            .and_then(|keys| keys.get(key))
            .map(|(revision, _)| *revision)
    }

    fn applied_full(&self, cluster: ClusterId, key: &str) -> Option<(u64, Option<Sha256>)> {
        self.read().get(&cluster).and_then(|keys| keys.get(key)).copied()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The status writer. Build it, take [`StatusWriter::view`], then [`StatusWriter::run`] it.
pub struct StatusWriter<S> {
    sink: S,
    fleet: Fleet,
    config: StatusConfig,
    metrics: StatusMetrics,
    view: StatusView,
    buffer: HashMap<(ClusterId, String), StatusRow>,
    deletes: Vec<(ClusterId, String)>,
    flush_at: Option<Instant>,
    /// (cluster, key) → (desired revision, first seen unacknowledged, already marked).
    waiting: HashMap<(ClusterId, String), (u64, Instant, bool)>,
    /// (cluster, key, revision) refused by the agent: `error`, never `undelivered`.
    refused: HashSet<(ClusterId, String, u64)>,
    /// Connects and disconnects the store failed to record (it was unreachable), the newest per
    /// cluster: written again at every flush until they land, so the store's view of who is
    /// connected is right once it answers again.
    transitions: HashMap<ClusterId, Transition>,
}

/// A connect or disconnect still to be recorded.
#[derive(Debug, Clone)]
enum Transition {
    Connected {
        agent_version: String,
        at: DateTime<Utc>,
    },
    Disconnected {
        at: DateTime<Utc>,
    },
}

impl<S: StatusSink> StatusWriter<S> {
    /// A writer reading desired revisions from `fleet`.
    pub fn new(sink: S, fleet: Fleet, config: StatusConfig) -> Self {
        Self {
            sink,
            fleet,
            config,
            metrics: StatusMetrics::default(),
            view: StatusView::default(),
            buffer: HashMap::new(),
            deletes: Vec::new(),
            flush_at: None,
            waiting: HashMap::new(),
            refused: HashSet::new(),
            transitions: HashMap::new(),
        }
    }

    /// The in-memory applied view (kept current while the writer runs).
    pub fn view(&self) -> StatusView {
        self.view.clone()
    }

    /// The metrics, to register.
    pub fn metrics(&self) -> &StatusMetrics {
        &self.metrics
    }

    /// Consumes events until the channel closes (the fleet is gone), then flushes what is left.
    pub async fn run(self, events: mpsc::Receiver<FleetEvent>) {
        self.run_until(events, std::future::pending()).await;
    }

    /// Like [`StatusWriter::run`], but also stops when `shutdown` resolves: the events already
    /// queued are taken, then the last flush is written (for shutdown while `Fleet` clones live).
    pub async fn run_until(
        mut self,
        mut events: mpsc::Receiver<FleetEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let start = Instant::now();
        let mut liveness_at = start + self.config.liveness_interval;
        let mut detect_at = start + self.config.detector_interval;
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        self.handle(event).await;
                        if self.buffer.len() >= self.config.flush_rows {
                            self.flush().await;
                        }
                    }
                    None => break,
                },
                () = sleep_until(flush_at.unwrap_or(start)), if flush_at.is_some() => {
                    self.flush().await;
                }
                () = sleep_until(liveness_at) => {
                    liveness_at = Instant::now() + self.config.liveness_interval;
                    self.refresh_liveness().await;
                }
                () = sleep_until(detect_at) => {
                    detect_at = Instant::now() + self.config.detector_interval;
                    self.detect_undelivered(Instant::now());
                }
                () = &mut shutdown => {
                    while let Ok(event) = events.try_recv() {
                        self.handle(event).await;
                    }
                    break;
                }
            }
        }
        self.flush().await;
    }

    fn buffer(&mut self, row: StatusRow) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.config.flush_interval);
        }
        self.buffer.insert((row.cluster, row.fleet_secret.clone()), row);
    }

    fn desired_revision(&self, cluster: ClusterId, key: &str) -> Option<u64> {
        self.fleet
            .desired(cluster)
            .and_then(|desired| desired.items.get(key).map(|item| item.revision))
    }

    async fn handle(&mut self, event: FleetEvent) {
        match event {
            FleetEvent::Acked {
                cluster,
                key,
                revision,
                sha256,
                at,
            } => {
                self.view
                    .write()
                    .entry(cluster)
                    .or_default()
                    .insert(key.clone(), (revision, Some(sha256)));
                self.waiting.remove(&(cluster, key.clone()));
                let desired = self.desired_revision(cluster, &key).unwrap_or(revision);
                self.buffer(StatusRow {
                    cluster,
                    fleet_secret: key,
                    desired_revision: desired,
                    applied_revision: Some(revision),
                    applied_sha256: Some(sha256),
                    state: if desired == revision {
                        SyncState::Applied
                    } else {
                        SyncState::Pending
                    },
                    last_error: None,
                    attempts: 0,
                    at,
                });
            }
            FleetEvent::Nacked {
                cluster,
                key,
                revision,
                code,
                message,
                attempts,
                at,
                ..
            } => {
                if revision == 0 {
                    // A refused removal: the key stays; nothing to record beyond the log.
                    return;
                }
                self.refused.insert((cluster, key.clone(), revision));
                let applied = self.view.applied_full(cluster, &key);
                let desired = self.desired_revision(cluster, &key).unwrap_or(revision);
                let last_error = if message.is_empty() {
                    code.as_str().to_owned()
                } else {
                    format!("{}: {message}", code.as_str())
                };
                self.buffer(StatusRow {
                    cluster,
                    fleet_secret: key,
                    desired_revision: desired,
                    applied_revision: applied.map(|(revision, _)| revision),
                    applied_sha256: applied.and_then(|(_, sha)| sha),
                    state: SyncState::Error,
                    last_error: Some(last_error),
                    attempts,
                    at,
                });
            }
            FleetEvent::Removed { cluster, key, .. } => {
                if let Some(keys) = self.view.write().get_mut(&cluster) {
                    keys.remove(&key);
                }
                self.buffer.remove(&(cluster, key.clone()));
                self.waiting.remove(&(cluster, key.clone()));
                self.deletes.push((cluster, key));
                if self.flush_at.is_none() {
                    self.flush_at = Some(Instant::now() + self.config.flush_interval);
                }
            }
            FleetEvent::Connected {
                cluster,
                agent_version,
                applied,
                at,
                ..
            } => {
                // What the agent holds at its desired revision is applied, whether or not its ack
                // reached the store: an ack buffered by a replica that died is recorded here. Keys
                // this process already knew at that revision are not written again.
                let desired = self.fleet.desired(cluster);
                let known = self.view.read().get(&cluster).cloned().unwrap_or_default();
                let mut held = Held::default();
                for (key, revision) in applied {
                    let item = desired
                        .as_ref()
                        .and_then(|desired| desired.items.get(&key))
                        .filter(|item| item.revision == revision);
                    let sha256 = item.map(|item| item.sha256);
                    let recorded = known
                        .get(&key)
                        .is_some_and(|(known_revision, _)| *known_revision == revision);
                    if let Some(sha256) = sha256
                        && !recorded
                    {
                        self.buffer(StatusRow {
                            cluster,
                            fleet_secret: key.clone(),
                            desired_revision: revision,
                            applied_revision: Some(revision),
                            applied_sha256: Some(sha256),
                            state: SyncState::Applied,
                            last_error: None,
                            attempts: 0,
                            at,
                        });
                    }
                    held.insert(key, (revision, sha256));
                }
                self.view.write().insert(cluster, held);
                self.record_transition(cluster, Transition::Connected { agent_version, at })
                    .await;
            }
            FleetEvent::Disconnected { cluster, at } => {
                self.record_transition(cluster, Transition::Disconnected { at })
                    .await;
            }
            FleetEvent::Drift { .. } => {
                self.metrics.drift.inc();
            }
        }
    }

    /// Records a connect or disconnect (replacing one still pending for the cluster); keeps it
    /// for the next flush when the store fails.
    async fn record_transition(&mut self, cluster: ClusterId, transition: Transition) {
        self.transitions.remove(&cluster);
        if let Err(error) = self.write_transition(cluster, &transition).await {
            self.metrics.errors.inc();
            tracing::warn!(%cluster, error = %error, "cannot record a connect or disconnect; retrying");
            self.transitions.insert(cluster, transition);
            if self.flush_at.is_none() {
                self.flush_at = Some(Instant::now() + self.config.flush_interval);
            }
        }
    }

    async fn write_transition(&self, cluster: ClusterId, transition: &Transition) -> Result<(), StoreError> {
        match transition {
            Transition::Connected { agent_version, at } => {
                self.sink
                    .record_connect(cluster, &self.config.replica, agent_version, *at)
                    .await
            }
            Transition::Disconnected { at } => {
                self.sink
                    .record_disconnect(cluster, &self.config.replica, *at)
                    .await
            }
        }
    }

    /// Writes the buffer: one batch statement, then the (rare) deletions and the connects and
    /// disconnects still pending.
    pub async fn flush(&mut self) {
        self.flush_at = None;
        if !self.buffer.is_empty() {
            let rows: Vec<StatusRow> = self.buffer.values().cloned().collect();
            match self.sink.upsert_status_batch(&rows).await {
                Ok(_) => {
                    self.buffer.clear();
                    self.metrics.flushes.inc();
                    self.metrics.rows.inc_by(rows.len() as u64);
                }
                Err(error) => {
                    self.metrics.errors.inc();
                    tracing::warn!(rows = rows.len(), error = %error, "status flush failed; retrying");
                    self.flush_at = Some(Instant::now() + self.config.flush_interval);
                }
            }
        }
        let deletes = std::mem::take(&mut self.deletes);
        for (cluster, key) in deletes {
            if let Err(error) = self.sink.delete_status(cluster, &key).await {
                self.metrics.errors.inc();
                tracing::warn!(%cluster, %key, error = %error, "cannot delete a status row; retrying");
                self.deletes.push((cluster, key));
                self.flush_at = Some(Instant::now() + self.config.flush_interval);
            }
        }
        let transitions: Vec<(ClusterId, Transition)> = self.transitions.drain().collect();
        for (cluster, transition) in transitions {
            if let Err(error) = self.write_transition(cluster, &transition).await {
                tracing::debug!(%cluster, error = %error, "connect or disconnect still not recorded");
                self.transitions.insert(cluster, transition);
                self.flush_at = Some(Instant::now() + self.config.flush_interval);
            }
        }
        self.metrics.pending.set(
            i64::try_from(self.buffer.len() + self.deletes.len() + self.transitions.len())
                .unwrap_or(i64::MAX),
        );
    }

    async fn refresh_liveness(&mut self) {
        let connected = self.fleet.connected_clusters();
        if connected.is_empty() {
            return;
        }
        if let Err(error) = self.sink.touch_last_seen(&connected, Utc::now()).await {
            self.metrics.errors.inc();
            tracing::warn!(clusters = connected.len(), error = %error, "liveness refresh failed");
        }
    }

    /// One pass of the undelivered detector: buffers an `undelivered` row for every desired
    /// revision that a stream of this process has been offered, unacknowledged, for at least
    /// `undelivered_after` (once per revision). The deadline runs from the first pass that saw the
    /// revision wanted on a connected stream here: a cluster that is offline, or served by another
    /// replica, is never marked by this one, and after a restart every deadline starts afresh.
    pub fn detect_undelivered(&mut self, now: Instant) {
        let connected: HashSet<ClusterId> = self.fleet.connected_clusters().into_iter().collect();
        let snapshot = self.fleet.desired_snapshot();
        let mut waiting = HashMap::with_capacity(self.waiting.len());
        let mut rows = Vec::new();
        {
            let view = self.view.read();
            for (cluster, desired) in snapshot.iter().filter(|(cluster, _)| connected.contains(cluster)) {
                let applied = view.get(cluster);
                for (key, item) in &desired.items {
                    let held = applied.and_then(|keys| keys.get(key));
                    if held.is_some_and(|(revision, _)| *revision == item.revision) {
                        continue;
                    }
                    let pair = (*cluster, key.clone());
                    let entry = match self.waiting.get(&pair) {
                        Some(entry) if entry.0 == item.revision => *entry,
                        _ => (item.revision, now, false),
                    };
                    let refused = self.refused.contains(&(*cluster, key.clone(), item.revision));
                    let due = now.duration_since(entry.1) >= self.config.undelivered_after;
                    let mark = due && !entry.2 && !refused;
                    if mark {
                        rows.push(StatusRow {
                            cluster: *cluster,
                            fleet_secret: key.clone(),
                            desired_revision: item.revision,
                            applied_revision: held.map(|(revision, _)| *revision),
                            applied_sha256: held.and_then(|(_, sha)| *sha),
                            state: SyncState::Undelivered,
                            last_error: Some(format!(
                                "revision {} not acknowledged within {:?}",
                                item.revision, self.config.undelivered_after
                            )),
                            attempts: 0,
                            at: Utc::now(),
                        });
                    }
                    waiting.insert(pair, (entry.0, entry.1, entry.2 || mark));
                }
            }
        }
        self.waiting = waiting;
        self.refused
            .retain(|(cluster, key, _)| self.waiting.contains_key(&(*cluster, key.clone())));
        self.metrics.undelivered.inc_by(rows.len() as u64);
        for row in rows {
            tracing::info!(cluster = %row.cluster, key = %row.fleet_secret,
                revision = row.desired_revision, "desired revision undelivered");
            self.buffer(row);
        }
    }
}

#[cfg(test)]
mod tests;
