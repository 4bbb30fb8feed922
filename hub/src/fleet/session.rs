//! One admitted stream's side of the registry: its [`Session`] plans updates through its queue,
//! turns acks into [`FleetEvent`]s and detaches the stream when dropped.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::queue::{self, AckError, ItemOutcome, PlannedUpdate, QueueLimits, Settled};
use super::{CloseReason, ClusterDesired, DriftKind, Fleet, FleetConfig, FleetEvent, FleetMetrics, NackCode};
use crate::domain::{ClusterId, Sha256};

/// Shared between the registry and one stream.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) wake: Notify,
    close: Mutex<Option<CloseReason>>,
}

impl Shared {
    pub(super) fn close(&self, reason: CloseReason) {
        let mut close = self.close.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A revocation overrides a pending drain or replacement.
        if close.is_none() || reason == CloseReason::Revoked {
            *close = Some(reason);
        }
        drop(close);
        self.wake.notify_one();
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
    /// A session for stream `id` of `cluster`, with an empty queue sized by the fleet's settings.
    pub(super) fn new(fleet: Fleet, cluster: ClusterId, id: u64, shared: Arc<Shared>) -> Self {
        let config = fleet.config();
        let queue = queue::Queue::new(QueueLimits {
            max_inflight: config.max_inflight.clamp(1, keyfleet_proto::limits::MAX_INFLIGHT) as usize,
            max_items: keyfleet_proto::limits::MAX_ITEMS,
            // Room for the Update/HubMessage framing and removals.
            max_bytes: keyfleet_proto::limits::MAX_MESSAGE_BYTES - 64 * 1024,
            retry_base: config.retry_base,
            retry_max: config.retry_max,
        });
        Self {
            fleet,
            cluster,
            id,
            shared,
            queue,
            announced: false,
        }
    }

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
            if !self.fleet.try_emit(event) {
                self.fleet.inner.metrics.events_dropped.inc();
                tracing::warn!(cluster = %self.cluster, "event channel full: disconnect not recorded");
            }
        }
    }
}
