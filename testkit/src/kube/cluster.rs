//! The clusters of one server: each cluster's state behind its mutex, its token and wake-up, and
//! the notifications of stored changes. The API, watches and handles all reach clusters here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, broadcast, watch};

use super::error::Error;
use super::model::Kind;
use super::store::{Committed, EventType, Permissions, State};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (port 0 picks one).
    pub addr: SocketAddr,
    /// Watch events kept per cluster; resuming from an older resourceVersion gets 410.
    pub watch_history: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Write notifications ([`FakeKube::subscribe`]) buffered for a subscriber; one that falls
    /// further behind lags (misses the oldest). Size it for the burst of writes it must not miss.
    pub write_notifications: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            watch_history: 1000,
            bookmark_interval: Duration::from_secs(5),
            write_notifications: 4096,
        }
    }
}

/// A change stored through the API or the handle, with when it happened.
#[derive(Debug, Clone)]
pub struct WriteEvent {
    /// The cluster's name.
    pub cluster: Arc<str>,
    /// Secret or Namespace.
    pub kind: Kind,
    /// Namespace (None for Namespaces).
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// Added, modified or deleted.
    pub change: EventType,
    /// The resourceVersion the change produced.
    pub resource_version: u64,
    /// The field manager, None for writes through the handle.
    pub manager: Option<String>,
    /// Wall-clock time of the commit.
    pub at: SystemTime,
    /// Monotonic time of the commit (for latency measurements).
    pub instant: Instant,
}

/// One simulated cluster.
pub(super) struct Cluster {
    pub(super) name: Arc<str>,
    state: Mutex<State>,
    /// Woken on every commit and when watches are dropped.
    pub(super) changed: Notify,
    /// The bearer token with full permissions, handed out by [`super::ClusterHandle::token`].
    pub(super) token: String,
    /// Counts Event creates, patches and deletes ([`super::ClusterHandle::until_events`]).
    pub(super) event_writes: watch::Sender<u64>,
}

impl Cluster {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every mutation is a single
        // insert/remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An Event was created, patched or deleted (call without holding the state lock).
    pub(super) fn event_written(&self) {
        self.event_writes.send_modify(|count| *count += 1);
    }
}

/// Every cluster of one server, and what the transports and handles share.
pub(super) struct Inner {
    clusters: RwLock<HashMap<Arc<str>, Arc<Cluster>>>,
    pub(super) config: Config,
    /// The CA certificate (PEM) that signed the server certificate.
    pub(super) ca_pem: String,
    /// `https://127.0.0.1:PORT`, the root cluster's URL.
    pub(super) base_url: String,
    writes: broadcast::Sender<WriteEvent>,
    admin: Arc<Permissions>,
}

impl Inner {
    /// A server without clusters; write notifications are buffered as `config` says.
    pub(super) fn new(config: Config, ca_pem: String, base_url: String) -> Arc<Self> {
        let (writes, _) = broadcast::channel(config.write_notifications.max(1));
        Arc::new(Self {
            clusters: RwLock::new(HashMap::new()),
            config,
            ca_pem,
            base_url,
            writes,
            admin: Arc::new(Permissions::admin()),
        })
    }

    pub(super) fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Wakes watchers and reports `committed` changes to subscribers.
    pub(super) fn publish(&self, cluster: &Cluster, committed: Vec<Committed>, manager: Option<&str>) {
        if committed.is_empty() {
            return;
        }
        cluster.changed.notify_waiters();
        if self.writes.receiver_count() == 0 {
            return;
        }
        let (at, instant) = (SystemTime::now(), Instant::now());
        for change in committed {
            let object = &change.event.object;
            // No receiver left is fine: nobody is measuring.
            let _ = self.writes.send(WriteEvent {
                cluster: cluster.name.clone(),
                kind: object.kind(),
                namespace: object.meta.namespace.clone(),
                name: object.meta.name.clone(),
                change: change.event.kind,
                resource_version: change.event.resource_version,
                manager: manager.map(str::to_owned),
                at,
                instant,
            });
        }
    }

    /// Adds the cluster `name`, or returns it if it exists.
    pub(super) fn add_cluster(self: &Arc<Self>, name: &str) -> Result<Arc<Cluster>, Error> {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(Error::ClusterName(name.to_owned()));
        }
        let mut clusters = self
            .clusters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = clusters.get(name) {
            return Ok(existing.clone());
        }
        let token = random_token();
        let mut state = State::new(self.config.watch_history);
        state.add_token_shared(token.clone(), self.admin.clone());
        let cluster = Arc::new(Cluster {
            name: Arc::from(name),
            state: Mutex::new(state),
            changed: Notify::new(),
            token,
            event_writes: watch::Sender::new(0),
        });
        clusters.insert(cluster.name.clone(), cluster.clone());
        Ok(cluster)
    }

    /// Number of clusters served.
    pub(super) fn cluster_count(&self) -> usize {
        self.clusters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Every stored change from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<WriteEvent> {
        self.writes.subscribe()
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}
