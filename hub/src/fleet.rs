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
mod model;
pub mod queue;
mod session;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};

use crate::domain::ClusterId;
pub use model::{
    AttachError, CloseReason, ClusterDesired, DriftKind, EncodedRevision, FleetEvent, NackCode, RemovalPolicy,
};
pub use queue::{AckError, ItemOutcome, ItemRefusal, PlannedUpdate, QueueLimits, Settled};
pub use session::Session;
use session::Shared;
pub use settings::{FleetConfig, FleetMetrics};

/// The fan-out registry. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    config: FleetConfig,
    slots: Mutex<HashMap<ClusterId, Slot>>,
    /// Each event goes to every subscriber, in order (see [`Fleet::with_subscribers`]).
    events: Vec<mpsc::Sender<FleetEvent>>,
    metrics: FleetMetrics,
    next_session: AtomicU64,
    /// Streams attached plus streams detached, ever (see [`Fleet::stream_churn`]).
    churn: AtomicU64,
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

impl Fleet {
    /// A registry and the receiving end of its events.
    pub fn new(config: FleetConfig) -> (Self, mpsc::Receiver<FleetEvent>) {
        let (events, receiver) = mpsc::channel(config.event_capacity.max(1));
        (Self::with_subscribers(config, vec![events]), receiver)
    }

    /// A registry whose events each go to every one of `subscribers`, in order, sent by the
    /// stream task that has them (the hub's status writer, history writer and engine). No task
    /// copies them from one channel to the others (such a task, the `tee`, was one more wake-up per
    /// ack: ~3 % of the hub's samples with 10,000 real agents, within the noise of the figure). A
    /// closed subscriber is skipped; a full one holds the stream that emits, as any bounded
    /// channel does.
    pub fn with_subscribers(config: FleetConfig, subscribers: Vec<mpsc::Sender<FleetEvent>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                slots: Mutex::new(HashMap::new()),
                events: subscribers,
                metrics: FleetMetrics::default(),
                next_session: AtomicU64::new(1),
                churn: AtomicU64::new(0),
                draining: AtomicBool::new(false),
                idle: Notify::new(),
            }),
        }
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

    /// [`Fleet::set_desired`] for many clusters under one lock acquisition. Clusters sharing one
    /// set (the same `Arc`) share its digest, computed once.
    pub fn set_desired_many(&self, sets: impl IntoIterator<Item = (ClusterId, Arc<ClusterDesired>)>) {
        // Keyed by address: every set stays alive in `sets` until the end, so no address is reused.
        let mut digests: HashMap<*const ClusterDesired, [u8; 32]> = HashMap::new();
        let sets: Vec<_> = sets
            .into_iter()
            .map(|(cluster, desired)| {
                let digest = *digests
                    .entry(Arc::as_ptr(&desired))
                    .or_insert_with(|| desired.digest());
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

    /// Streams attached plus streams detached since the fleet was built: it changes whenever
    /// agents connect or leave (the hub returns the memory a burst of them freed, `app::serve`).
    pub fn stream_churn(&self) -> u64 {
        self.inner.churn.load(Ordering::Relaxed)
    }

    /// Connected streams.
    pub fn connected_count(&self) -> usize {
        usize::try_from(self.inner.metrics.connected.get()).unwrap_or(0)
    }

    /// Whether `cluster` has a stream.
    pub fn is_connected(&self, cluster: ClusterId) -> bool {
        self.with_connected(|connected| connected(cluster))
    }

    /// Answers whether each cluster has a stream, under one lock of the registry (the engine asks
    /// for every known cluster at once, each second of a rollout: one lock per cluster would
    /// contend with every stream's attach and detach).
    pub fn with_connected<R>(&self, f: impl FnOnce(&dyn Fn(ClusterId) -> bool) -> R) -> R {
        let slots = self.slots();
        f(&|cluster| slots.get(&cluster).is_some_and(|slot| slot.stream.is_some()))
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
        let shared = Arc::new(Shared::default());
        let mut slots = self.slots();
        let slot = slots.entry(cluster).or_insert_with(Slot::empty);
        if slot.revoked {
            return Err(AttachError::Revoked(cluster));
        }
        self.inner.churn.fetch_add(1, Ordering::Relaxed);
        match slot.stream.replace((id, Arc::clone(&shared))) {
            Some((_, old)) => old.close(CloseReason::Replaced),
            None => {
                self.inner.metrics.connected.inc();
            }
        }
        drop(slots);
        Ok(Session::new(self.clone(), cluster, id, shared))
    }

    fn detach(&self, cluster: ClusterId, id: u64) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&cluster) else {
            return false;
        };
        if slot.stream.as_ref().is_some_and(|(current, _)| *current == id) {
            slot.stream = None;
            drop(slots);
            self.inner.churn.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.connected.dec();
            self.inner.idle.notify_waiters();
            true
        } else {
            false
        }
    }

    async fn emit(&self, event: FleetEvent) {
        let Some((last, others)) = self.inner.events.split_last() else {
            return;
        };
        // A closed receiver means nobody records that (tests, shutdown): nothing to do.
        for subscriber in others {
            let _ = subscriber.send(event.clone()).await;
        }
        let _ = last.send(event).await;
    }

    /// [`Fleet::emit`] without waiting (from `Drop`): false when a subscriber that is still open
    /// had no room, and so did not get it.
    fn try_emit(&self, event: FleetEvent) -> bool {
        let Some((last, others)) = self.inner.events.split_last() else {
            return true;
        };
        let mut delivered = true;
        for subscriber in others {
            delivered &= subscriber.try_send(event.clone()).is_ok() || subscriber.is_closed();
        }
        delivered &= last.try_send(event).is_ok() || last.is_closed();
        delivered
    }
}
