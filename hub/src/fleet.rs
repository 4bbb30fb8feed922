//! The fan-out registry: one slot per cluster (`HashMap<ClusterId, _>`, no scans per event) with
//! the cluster's desired set and, while its agent is connected, a handle to its stream.
//!
//! - [`Fleet::set_desired`] stores the desired set (connected or not) and wakes the stream; it never
//!   waits for an agent. The stream's [`Session`] plans updates against the latest set through its
//!   coalescing [`queue::Queue`] (latest revision per key wins, at most k updates in flight).
//! - [`Fleet::revoke`] and [`Fleet::drain`] tell streams to end; the gRPC layer
//!   (`grpc::sync`) turns that into a status or a `Drain` message.
//! - Everything that status needs arrives as [`FleetEvent`]s on one channel.
//!
//! Proto-free: the wire lives in `grpc::sync`.

pub mod credentials;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::domain::{ClusterId, Sha256};
pub use queue::{AckError, ItemOutcome, ItemRefusal, PlannedUpdate, QueueLimits, Settled};

/// A revision encoded for the wire once (by the engine's `RevisionEncoder`): the `SecretPayload`
/// message bytes and their content digest, shared by every stream that sends it (`Bytes` is
/// reference-counted).
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedRevision {
    /// FleetSecret name.
    pub key: String,
    /// Revision number (from the store).
    pub revision: u64,
    /// `keyfleet_proto::digest::payload_sha256` of the payload.
    pub sha256: Sha256,
    /// The encoded `SecretPayload` (contains secret data: never log it).
    pub payload: bytes::Bytes,
}

impl std::fmt::Debug for EncodedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedRevision")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .field("sha256", &self.sha256)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .finish()
    }
}

/// What removing a key does to the written Secrets (the FleetSecret's deletionPolicy).
pub type RemovalPolicy = crate::spec::DeletionPolicy;

/// What one cluster should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterDesired {
    /// Payload key (FleetSecret name) → the revision the cluster should hold, encoded once.
    pub items: BTreeMap<String, Arc<EncodedRevision>>,
    /// Policies for keys the cluster must no longer hold. A held key absent from both maps is
    /// removed with [`RemovalPolicy::Retain`] (the Secret stays, unmanaged).
    pub removals: BTreeMap<String, RemovalPolicy>,
}

impl ClusterDesired {
    /// `keyfleet_proto::digest::set_digest` of the items: what an in-sync agent reports.
    pub fn digest(&self) -> [u8; 32] {
        keyfleet_proto::digest::set_digest(
            self.items
                .iter()
                .map(|(key, item)| (key.as_str(), item.revision, &item.sha256.0[..])),
        )
    }
}

/// Why an agent refused an item (the wire's `ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NackCode {
    /// No code given.
    Unspecified,
    /// Validation failed.
    Invalid,
    /// The payload did not match its sha256.
    DigestMismatch,
    /// The existing Secret is not ours.
    NotOwned,
    /// A target namespace does not exist.
    NamespaceMissing,
    /// Kubernetes refused the write.
    Forbidden,
    /// Kubernetes did not answer.
    KubernetesUnavailable,
    /// Server-side apply field conflict.
    Conflict,
    /// The Secret is immutable and differs.
    Immutable,
    /// Anything else.
    Internal,
    /// Refused by the hub itself: the encoded item exceeds the message size limit.
    TooLarge,
}

impl NackCode {
    /// Stable lowercase name (status, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Invalid => "invalid",
            Self::DigestMismatch => "digest_mismatch",
            Self::NotOwned => "not_owned",
            Self::NamespaceMissing => "namespace_missing",
            Self::Forbidden => "forbidden",
            Self::KubernetesUnavailable => "kubernetes_unavailable",
            Self::Conflict => "conflict",
            Self::Immutable => "immutable",
            Self::Internal => "internal",
            Self::TooLarge => "too_large",
        }
    }
}

/// What happened to a managed Secret behind the agent's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// Not given.
    Unspecified,
    /// Data, type or our metadata changed.
    Modified,
    /// Deleted.
    Deleted,
}

/// Everything the fleet reports, in order per stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// An agent's stream was accepted (after a valid Hello).
    Connected {
        /// Cluster (from the credential).
        cluster: ClusterId,
        /// Agent build version.
        agent_version: String,
        /// Whether its applied digest matched.
        in_sync: bool,
        /// Key → revision the agent holds at connect time.
        applied: BTreeMap<String, u64>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The stream ended (not emitted for a stream replaced by a newer one of the same cluster).
    Disconnected {
        /// Cluster.
        cluster: ClusterId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent applied a revision.
    Acked {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// Applied revision.
        revision: u64,
        /// Its digest.
        sha256: Sha256,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent removed a key.
    Removed {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent (or the hub, for [`NackCode::TooLarge`]) refused an item; the old Secret stays.
    Nacked {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// Refused revision (0 for a removal).
        revision: u64,
        /// Why.
        code: NackCode,
        /// Whether it will be retried.
        retryable: bool,
        /// The agent's reason (never secret data), at most 1,024 bytes.
        message: String,
        /// Consecutive refusals of this revision.
        attempts: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent repaired a drifted Secret.
    Drift {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// Namespace of the Secret.
        namespace: String,
        /// What happened.
        kind: DriftKind,
        /// Restored revision.
        revision: u64,
        /// Why the agent could not repair it (`None`: repaired).
        failure: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a stream must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The cluster's credential was revoked.
    Revoked,
    /// A newer stream of the same cluster took over.
    Replaced,
    /// The hub is shutting down or rebalancing: reconnect after this delay.
    Drain {
        /// Jittered delay for the agent.
        reconnect_after: Duration,
    },
}

/// Why a stream was not admitted to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The cluster was revoked.
    #[error("cluster {0} is revoked")]
    Revoked(ClusterId),
    /// The hub is draining.
    #[error("hub is draining")]
    Draining,
}

/// Fan-out settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Unacknowledged updates per stream at most (1-16, announced in Welcome).
    pub max_inflight: u32,
    /// A stream whose oldest update is unacknowledged (or whose writes block) this long is closed.
    pub stall_timeout: Duration,
    /// First retry delay after a retryable NACK.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Hub heartbeat interval (jittered ±10 % per beat).
    pub heartbeat_interval: Duration,
    /// Drain spreads reconnects uniformly over this window.
    pub drain_window: Duration,
    /// Capacity of the event channel (a full channel slows the emitting stream, never fan-out).
    pub event_capacity: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            max_inflight: 4,
            stall_timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
            drain_window: Duration::from_secs(60),
            event_capacity: 65_536,
        }
    }
}

/// Fan-out metrics (`keyfleet_hub_fleet_*`).
#[derive(Debug, Clone, Default)]
pub struct FleetMetrics {
    /// Connected agent streams.
    pub connected: Gauge,
    /// Bytes of messages sent to agents (encoded protobuf).
    pub bytes_sent: Counter,
    /// Updates sent.
    pub updates: Counter,
    /// Items acknowledged as applied or removed.
    pub acks: Counter,
    /// Items refused.
    pub nacks: Counter,
    /// Streams closed because acks or writes stalled.
    pub stalled_closes: Counter,
    /// Streams refused by the admission limit.
    pub admission_rejects: Counter,
    /// Events dropped because the event channel was full at disconnect.
    pub events_dropped: Counter,
    /// Streams accepted whose Hello matched the desired set (Welcome{in_sync}: nothing to send).
    pub in_sync_hellos: Counter,
}

impl FleetMetrics {
    fn register(&self, registry: &mut Registry) {
        let fleet = registry.sub_registry_with_prefix("fleet");
        fleet.register(
            "connected_agents",
            "Connected agent streams",
            self.connected.clone(),
        );
        fleet.register(
            "sent_bytes",
            "Encoded bytes sent to agents",
            self.bytes_sent.clone(),
        );
        fleet.register("updates", "Updates sent to agents", self.updates.clone());
        fleet.register("acks", "Items acknowledged by agents", self.acks.clone());
        fleet.register("nacks", "Items refused by agents", self.nacks.clone());
        fleet.register(
            "stalled_closes",
            "Streams closed because acks or writes stalled",
            self.stalled_closes.clone(),
        );
        fleet.register(
            "admission_rejects",
            "New streams refused by the admission limit",
            self.admission_rejects.clone(),
        );
        fleet.register(
            "in_sync_hellos",
            "Streams accepted already in sync (Welcome{in_sync}, no update)",
            self.in_sync_hellos.clone(),
        );
        fleet.register(
            "events_dropped",
            "Fleet events dropped on a full channel",
            self.events_dropped.clone(),
        );
    }
}

/// The fan-out registry. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    config: FleetConfig,
    slots: Mutex<HashMap<ClusterId, Slot>>,
    events: mpsc::Sender<FleetEvent>,
    metrics: FleetMetrics,
    next_session: AtomicU64,
    draining: AtomicBool,
    idle: Notify,
}

struct Slot {
    desired: Arc<ClusterDesired>,
    digest: [u8; 32],
    revoked: bool,
    stream: Option<(u64, Arc<Shared>)>,
}

impl Slot {
    fn empty() -> Self {
        let desired = Arc::new(ClusterDesired::default());
        let digest = desired.digest();
        Self {
            desired,
            digest,
            revoked: false,
            stream: None,
        }
    }
}

/// Shared between the registry and one stream.
struct Shared {
    wake: Notify,
    close: Mutex<Option<CloseReason>>,
}

impl Shared {
    fn close(&self, reason: CloseReason) {
        let mut close = self.close.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A revocation overrides a pending drain or replacement.
        if close.is_none() || reason == CloseReason::Revoked {
            *close = Some(reason);
        }
        drop(close);
        self.wake.notify_one();
    }
}

impl Fleet {
    /// A registry and the receiving end of its events.
    pub fn new(config: FleetConfig) -> (Self, mpsc::Receiver<FleetEvent>) {
        let (events, receiver) = mpsc::channel(config.event_capacity.max(1));
        let fleet = Self {
            inner: Arc::new(Inner {
                config,
                slots: Mutex::new(HashMap::new()),
                events,
                metrics: FleetMetrics::default(),
                next_session: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                idle: Notify::new(),
            }),
        };
        (fleet, receiver)
    }

    /// Registers the fan-out metrics under `fleet_`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// The metrics (the gRPC layer counts bytes and admission rejects).
    pub fn metrics(&self) -> &FleetMetrics {
        &self.inner.metrics
    }

    /// The settings.
    pub fn config(&self) -> &FleetConfig {
        &self.inner.config
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<ClusterId, Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets what `cluster` should hold and wakes its stream, if any. Never waits for an agent;
    /// kept for when the agent connects.
    pub fn set_desired(&self, cluster: ClusterId, desired: Arc<ClusterDesired>) {
        let digest = desired.digest();
        let mut slots = self.slots();
        Self::store_desired(&mut slots, cluster, desired, digest);
    }

    /// [`Fleet::set_desired`] for many clusters under one lock acquisition.
    pub fn set_desired_many(&self, sets: impl IntoIterator<Item = (ClusterId, Arc<ClusterDesired>)>) {
        let sets: Vec<_> = sets
            .into_iter()
            .map(|(cluster, desired)| {
                let digest = desired.digest();
                (cluster, desired, digest)
            })
            .collect();
        let mut slots = self.slots();
        for (cluster, desired, digest) in sets {
            Self::store_desired(&mut slots, cluster, desired, digest);
        }
    }

    fn store_desired(
        slots: &mut HashMap<ClusterId, Slot>,
        cluster: ClusterId,
        desired: Arc<ClusterDesired>,
        digest: [u8; 32],
    ) {
        let slot = slots.entry(cluster).or_insert_with(Slot::empty);
        slot.desired = desired;
        slot.digest = digest;
        if let Some((_, shared)) = &slot.stream {
            shared.wake.notify_one();
        }
    }

    /// What `cluster` should hold, if it was ever set.
    pub fn desired(&self, cluster: ClusterId) -> Option<Arc<ClusterDesired>> {
        self.slots().get(&cluster).map(|slot| Arc::clone(&slot.desired))
    }

    /// Every cluster's desired set (one pass, for periodic detectors; not for per-event use).
    pub fn desired_snapshot(&self) -> Vec<(ClusterId, Arc<ClusterDesired>)> {
        self.slots()
            .iter()
            .map(|(cluster, slot)| (*cluster, Arc::clone(&slot.desired)))
            .collect()
    }

    /// Ends `cluster`'s stream (the gRPC layer answers PERMISSION_DENIED) and refuses it from now
    /// on. Pair it with `Credentials::revoke_cluster`.
    pub fn revoke(&self, cluster: ClusterId) {
        let mut slots = self.slots();
        let slot = slots.entry(cluster).or_insert_with(Slot::empty);
        slot.revoked = true;
        if let Some((_, shared)) = &slot.stream {
            shared.close(CloseReason::Revoked);
        }
    }

    /// Whether `cluster` was revoked.
    pub fn is_revoked(&self, cluster: ClusterId) -> bool {
        self.slots().get(&cluster).is_some_and(|slot| slot.revoked)
    }

    /// Tells every stream to send `Drain` with a reconnect delay spread uniformly over the drain
    /// window, then close; refuses new streams from now on. Returns how many streams were told.
    pub fn drain(&self) -> usize {
        self.inner.draining.store(true, Ordering::Release);
        let window = self.inner.config.drain_window;
        let slots = self.slots();
        let mut told = 0;
        for slot in slots.values() {
            if let Some((_, shared)) = &slot.stream {
                let reconnect_after = window.mul_f64(rand::random::<f64>());
                shared.close(CloseReason::Drain { reconnect_after });
                told += 1;
            }
        }
        told
    }

    /// Whether [`Fleet::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Resolves once no stream is connected (after [`Fleet::drain`]).
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.connected_count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Connected streams.
    pub fn connected_count(&self) -> usize {
        usize::try_from(self.inner.metrics.connected.get()).unwrap_or(0)
    }

    /// Whether `cluster` has a stream.
    pub fn is_connected(&self, cluster: ClusterId) -> bool {
        self.slots()
            .get(&cluster)
            .is_some_and(|slot| slot.stream.is_some())
    }

    /// Connected clusters (one pass, for the coarse liveness refresh).
    pub fn connected_clusters(&self) -> Vec<ClusterId> {
        self.slots()
            .iter()
            .filter(|(_, slot)| slot.stream.is_some())
            .map(|(cluster, _)| *cluster)
            .collect()
    }

    /// Admits a stream for `cluster`, replacing (closing) an older one of the same cluster.
    pub fn attach(&self, cluster: ClusterId) -> Result<Session, AttachError> {
        if self.is_draining() {
            return Err(AttachError::Draining);
        }
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            close: Mutex::new(None),
        });
        let mut slots = self.slots();
        let slot = slots.entry(cluster).or_insert_with(Slot::empty);
        if slot.revoked {
            return Err(AttachError::Revoked(cluster));
        }
        match slot.stream.replace((id, Arc::clone(&shared))) {
            Some((_, old)) => old.close(CloseReason::Replaced),
            None => {
                self.inner.metrics.connected.inc();
            }
        }
        drop(slots);
        let config = &self.inner.config;
        Ok(Session {
            fleet: self.clone(),
            cluster,
            id,
            shared,
            queue: queue::Queue::new(QueueLimits {
                max_inflight: config.max_inflight.clamp(1, keyfleet_proto::limits::MAX_INFLIGHT) as usize,
                max_items: keyfleet_proto::limits::MAX_ITEMS,
                // Room for the Update/HubMessage framing and removals.
                max_bytes: keyfleet_proto::limits::MAX_MESSAGE_BYTES - 64 * 1024,
                retry_base: config.retry_base,
                retry_max: config.retry_max,
            }),
            announced: false,
        })
    }

    fn detach(&self, cluster: ClusterId, id: u64) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&cluster) else {
            return false;
        };
        if slot.stream.as_ref().is_some_and(|(current, _)| *current == id) {
            slot.stream = None;
            drop(slots);
            self.inner.metrics.connected.dec();
            self.inner.idle.notify_waiters();
            true
        } else {
            false
        }
    }

    async fn emit(&self, event: FleetEvent) {
        // A closed receiver means nobody records status (tests, shutdown): nothing to do.
        let _ = self.inner.events.send(event).await;
    }
}

/// One admitted stream's side of the registry. Dropping it detaches the stream.
pub struct Session {
    fleet: Fleet,
    cluster: ClusterId,
    id: u64,
    shared: Arc<Shared>,
    queue: queue::Queue,
    announced: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cluster", &self.cluster)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The cluster this stream serves.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The fleet's settings.
    pub fn config(&self) -> &FleetConfig {
        self.fleet.config()
    }

    /// The fleet's metrics.
    pub fn metrics(&self) -> &FleetMetrics {
        self.fleet.metrics()
    }

    fn desired_and_digest(&self) -> (Arc<ClusterDesired>, [u8; 32]) {
        let slots = self.fleet.slots();
        match slots.get(&self.cluster) {
            Some(slot) => (Arc::clone(&slot.desired), slot.digest),
            None => {
                let empty = ClusterDesired::default();
                let digest = empty.digest();
                (Arc::new(empty), digest)
            }
        }
    }

    /// If `applied_digest` equals the digest of the desired set, records that the agent holds the
    /// desired set and returns true.
    pub fn accept_if_in_sync(&mut self, applied_digest: &[u8]) -> bool {
        let (desired, digest) = self.desired_and_digest();
        if applied_digest == digest {
            self.queue.set_held_from(&desired);
            true
        } else {
            false
        }
    }

    /// Records what the agent reported (VersionPages).
    pub fn set_applied(&mut self, items: impl IntoIterator<Item = (String, u64, Sha256)>) {
        self.queue.set_held(items);
    }

    /// Emits `Connected` once the handshake is done.
    pub async fn announce(&mut self, agent_version: &str, in_sync: bool) {
        self.announced = true;
        if in_sync {
            self.fleet.metrics().in_sync_hellos.inc();
        }
        self.fleet
            .emit(FleetEvent::Connected {
                cluster: self.cluster,
                agent_version: agent_version.to_owned(),
                in_sync,
                applied: self.queue.held(),
                at: Utc::now(),
            })
            .await;
    }

    /// Resolves when the desired set changed or the stream must close (see [`Session::close_reason`]).
    pub async fn woken(&self) {
        self.shared.wake.notified().await;
    }

    /// Re-arms a wake-up that was consumed by a wait that could not act on it.
    pub fn rewake(&self) {
        self.shared.wake.notify_one();
    }

    /// Whether (and why) the stream must end.
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self
            .shared
            .close
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next update to send, if any is due and the in-flight limit allows. Items too large for
    /// one message are reported as `Nacked{TooLarge}` and skipped.
    pub async fn next_update(&mut self, now: Instant) -> Option<PlannedUpdate> {
        let (desired, _) = self.desired_and_digest();
        let mut too_large = Vec::new();
        let update = self.queue.next_update(&desired, now, &mut too_large);
        for item in too_large {
            tracing::warn!(cluster = %self.cluster, key = %item.key, revision = item.revision,
                bytes = item.payload.len(), "revision exceeds the message size limit; not sent");
            self.fleet.inner.metrics.nacks.inc();
            self.fleet
                .emit(FleetEvent::Nacked {
                    cluster: self.cluster,
                    key: item.key.clone(),
                    revision: item.revision,
                    code: NackCode::TooLarge,
                    retryable: false,
                    message: format!(
                        "encoded revision is {} bytes, above the {} byte message limit",
                        item.payload.len(),
                        keyfleet_proto::limits::MAX_MESSAGE_BYTES
                    ),
                    attempts: 1,
                    at: Utc::now(),
                })
                .await;
        }
        if update.is_some() {
            self.fleet.inner.metrics.updates.inc();
        }
        update
    }

    /// Applies an `Ack`, emitting one event per item. A bad ack emits nothing.
    pub async fn ack(&mut self, nonce: u64, results: Vec<ItemOutcome>, now: Instant) -> Result<(), AckError> {
        let settled = self.queue.ack(nonce, results, now)?;
        let at = Utc::now();
        for item in settled {
            let event = match item {
                Settled::Applied {
                    key,
                    revision,
                    sha256,
                } => {
                    self.fleet.inner.metrics.acks.inc();
                    FleetEvent::Acked {
                        cluster: self.cluster,
                        key,
                        revision,
                        sha256,
                        at,
                    }
                }
                Settled::Removed { key } => {
                    self.fleet.inner.metrics.acks.inc();
                    FleetEvent::Removed {
                        cluster: self.cluster,
                        key,
                        at,
                    }
                }
                Settled::Refused {
                    key,
                    revision,
                    refusal,
                    attempts,
                } => {
                    self.fleet.inner.metrics.nacks.inc();
                    tracing::info!(cluster = %self.cluster, %key, revision, code = refusal.code.as_str(),
                        retryable = refusal.retryable, attempts, "agent refused an item");
                    FleetEvent::Nacked {
                        cluster: self.cluster,
                        key,
                        revision,
                        code: refusal.code,
                        retryable: refusal.retryable,
                        message: refusal.message,
                        attempts,
                        at,
                    }
                }
            };
            self.fleet.emit(event).await;
        }
        Ok(())
    }

    /// Reports a drift the agent repaired (or could not: `failure`).
    pub async fn drift(
        &self,
        key: String,
        namespace: String,
        kind: DriftKind,
        revision: u64,
        failure: Option<String>,
    ) {
        self.fleet
            .emit(FleetEvent::Drift {
                cluster: self.cluster,
                key,
                namespace,
                kind,
                revision,
                failure,
                at: Utc::now(),
            })
            .await;
    }

    /// When the stream must look at its queue again (stall or retry), if ever.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        self.queue.deadline(now, self.fleet.inner.config.stall_timeout)
    }

    /// Whether the oldest update went unacknowledged for the stall timeout.
    pub fn stalled(&self, now: Instant) -> bool {
        self.queue.stalled(now, self.fleet.inner.config.stall_timeout)
    }

    /// Counts a stall close.
    pub fn record_stall(&self) {
        self.fleet.inner.metrics.stalled_closes.inc();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.fleet.detach(self.cluster, self.id) && self.announced {
            let event = FleetEvent::Disconnected {
                cluster: self.cluster,
                at: Utc::now(),
            };
            if self.fleet.inner.events.try_send(event).is_err() && !self.fleet.inner.events.is_closed() {
                self.fleet.inner.metrics.events_dropped.inc();
                tracing::warn!(cluster = %self.cluster, "event channel full: disconnect not recorded");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn cluster(n: u128) -> ClusterId {
        ClusterId(uuid::Uuid::from_u128(n))
    }

    fn desired(key: &str, revision: u64) -> Arc<ClusterDesired> {
        let item = Arc::new(EncodedRevision {
            key: key.to_owned(),
            revision,
            sha256: Sha256::of(key.as_bytes()),
            payload: Bytes::from_static(b"payload"),
        });
        Arc::new(ClusterDesired {
            items: [(key.to_owned(), item)].into(),
            removals: BTreeMap::new(),
        })
    }

    #[tokio::test]
    async fn desired_sets_are_kept_for_disconnected_clusters_and_seen_on_connect() {
        let (fleet, _events) = Fleet::new(FleetConfig::default());
        fleet.set_desired(cluster(1), desired("a", 3));
        assert!(!fleet.is_connected(cluster(1)));
        let mut session = fleet.attach(cluster(1)).expect("attach");
        assert!(fleet.is_connected(cluster(1)));
        assert_eq!(fleet.connected_count(), 1);
        let update = session.next_update(Instant::now()).await.expect("update");
        assert_eq!(update.upserts[0].revision, 3);
        drop(session);
        assert_eq!(fleet.connected_count(), 0);
        assert!(!fleet.is_connected(cluster(1)));
    }

    #[tokio::test]
    async fn in_sync_digest_is_accepted_and_nothing_is_sent() {
        let (fleet, _events) = Fleet::new(FleetConfig::default());
        let want = desired("a", 3);
        fleet.set_desired(cluster(1), Arc::clone(&want));
        let mut session = fleet.attach(cluster(1)).expect("attach");
        assert!(!session.accept_if_in_sync(&[0u8; 32]));
        assert!(session.accept_if_in_sync(&want.digest()));
        assert!(session.next_update(Instant::now()).await.is_none());
    }

    #[tokio::test]
    async fn a_second_stream_replaces_the_first_and_revoke_refuses_later_ones() {
        let (fleet, mut events) = Fleet::new(FleetConfig::default());
        let mut first = fleet.attach(cluster(1)).expect("attach");
        first.announce("0.1.0", true).await;
        let second = fleet.attach(cluster(1)).expect("attach");
        assert_eq!(first.close_reason(), Some(CloseReason::Replaced));
        assert_eq!(fleet.connected_count(), 1);
        drop(first);
        assert!(
            fleet.is_connected(cluster(1)),
            "the replaced stream does not detach the new one"
        );
        assert!(matches!(events.recv().await, Some(FleetEvent::Connected { .. })));
        assert!(
            events.try_recv().is_err(),
            "no Disconnected for a replaced stream"
        );
        fleet.revoke(cluster(1));
        assert_eq!(second.close_reason(), Some(CloseReason::Revoked));
        tokio::time::timeout(Duration::from_secs(1), second.woken())
            .await
            .expect("woken by revoke");
        assert_eq!(
            fleet.attach(cluster(1)).err(),
            Some(AttachError::Revoked(cluster(1)))
        );
    }

    #[tokio::test]
    async fn drain_tells_every_stream_with_jittered_delays_and_refuses_new_ones() {
        let (fleet, _events) = Fleet::new(FleetConfig {
            drain_window: Duration::from_secs(10),
            ..FleetConfig::default()
        });
        let sessions: Vec<Session> = (0..20)
            .map(|n| fleet.attach(cluster(n)).expect("attach"))
            .collect();
        assert_eq!(fleet.drain(), 20);
        let delays: std::collections::HashSet<Duration> = sessions
            .iter()
            .map(|session| match session.close_reason() {
                Some(CloseReason::Drain { reconnect_after }) => {
                    assert!(reconnect_after <= Duration::from_secs(10));
                    reconnect_after
                }
                other => panic!("expected drain, got {other:?}"),
            })
            .collect();
        assert!(delays.len() > 1, "delays are jittered");
        assert_eq!(fleet.attach(cluster(99)).err(), Some(AttachError::Draining));
        let idle = fleet.clone();
        let waiter = tokio::spawn(async move { idle.idle().await });
        drop(sessions);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle after the last stream")
            .expect("task");
    }

    #[tokio::test]
    async fn set_desired_wakes_the_stream_without_waiting_for_it() {
        let (fleet, _events) = Fleet::new(FleetConfig::default());
        let session = fleet.attach(cluster(1)).expect("attach");
        for revision in 1..=1000 {
            fleet.set_desired(cluster(1), desired("a", revision));
        }
        tokio::time::timeout(Duration::from_secs(1), session.woken())
            .await
            .expect("woken");
        assert_eq!(fleet.desired(cluster(1)).expect("set").items["a"].revision, 1000);
    }

    #[test]
    fn metrics_register_under_the_fleet_prefix() {
        let (fleet, _events) = Fleet::new(FleetConfig::default());
        let mut registry = Registry::with_prefix("keyfleet_hub");
        fleet.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("keyfleet_hub_fleet_connected_agents"), "{text}");
        assert!(text.contains("keyfleet_hub_fleet_stalled_closes_total"), "{text}");
    }
}
