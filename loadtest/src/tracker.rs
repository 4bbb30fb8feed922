//! Follows what every simulated cluster actually holds: the target Secret in each target
//! namespace, by the revision annotation the agent wrote, from the fake Kubernetes APIs' write
//! notifications (with their commit instants, so latency is measured where the Secret lands).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyfleet_testkit::kube::{FakeKube, Kind, WriteEvent};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// Annotation the agent writes on every managed Secret.
pub const REVISION_ANNOTATION: &str = "keyfleet.io/revision";

/// What a rotation's clusters must hold.
#[derive(Debug, Clone, Copy)]
struct Target {
    revision: u64,
    since: Instant,
}

#[derive(Default)]
struct ClusterState {
    /// Per target namespace: the revision held and when it was written.
    held: Vec<Option<(u64, Instant)>>,
    /// When the cluster first held the target revision in every namespace.
    converged_at: Option<Instant>,
}

struct State {
    target: Option<Target>,
    clusters: HashMap<Arc<str>, ClusterState>,
    converged: usize,
}

/// Counts of a rotation in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Clusters holding the target revision everywhere.
    pub converged: usize,
    /// Clusters tracked.
    pub total: usize,
}

/// The tracker (cheap to clone).
#[derive(Clone)]
pub struct Tracker {
    kube: Arc<FakeKube>,
    secret: Arc<str>,
    namespaces: Arc<[String]>,
    state: Arc<Mutex<State>>,
    progress: watch::Sender<Progress>,
    /// Write notifications missed because the broadcast lagged (each lag rescans, and a Secret
    /// found by a rescan counts as written at the rescan: its latency is an upper bound).
    missed: Arc<AtomicU64>,
}

impl Tracker {
    /// Tracks `secret` in `namespaces` of every cluster in `clusters`.
    pub fn start(kube: Arc<FakeKube>, clusters: &[String], secret: &str, namespaces: Vec<String>) -> Self {
        let width = namespaces.len();
        let state = State {
            target: None,
            clusters: clusters
                .iter()
                .map(|name| {
                    (
                        Arc::from(name.as_str()),
                        ClusterState {
                            held: vec![None; width],
                            converged_at: None,
                        },
                    )
                })
                .collect(),
            converged: 0,
        };
        let (progress, _) = watch::channel(Progress {
            converged: 0,
            total: clusters.len(),
        });
        let tracker = Self {
            kube: Arc::clone(&kube),
            secret: Arc::from(secret),
            namespaces: namespaces.into(),
            state: Arc::new(Mutex::new(state)),
            progress,
            missed: Arc::new(AtomicU64::new(0)),
        };
        let events = kube.subscribe();
        tokio::spawn(tracker.clone().follow(events));
        tracker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts timing a rotation to `revision` from `since`; returns the progress receiver.
    pub fn expect(&self, revision: u64, since: Instant) -> watch::Receiver<Progress> {
        {
            let mut state = self.lock();
            state.target = Some(Target { revision, since });
            state.converged = 0;
            for cluster in state.clusters.values_mut() {
                cluster.converged_at = None;
            }
            let total = state.clusters.len();
            self.progress.send_replace(Progress { converged: 0, total });
        }
        // Clusters may already hold it (a rotation that landed before the call).
        self.rescan();
        self.progress.subscribe()
    }

    /// Waits until every cluster converged or `timeout` passed; returns the per-cluster latencies
    /// of those that converged and the names of those that did not.
    pub async fn wait(&self, timeout: Duration) -> (Vec<Duration>, Vec<String>) {
        let mut progress = self.progress.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let current = *progress.borrow_and_update();
            if current.converged >= current.total {
                break;
            }
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => {
                    // Writes may have been missed only if the broadcast lagged: read the truth once.
                    self.rescan();
                    break;
                }
            }
        }
        let state = self.lock();
        let since = state.target.map(|target| target.since);
        let mut latencies = Vec::new();
        let mut behind = Vec::new();
        for (name, cluster) in &state.clusters {
            match (cluster.converged_at, since) {
                (Some(at), Some(since)) => latencies.push(at.saturating_duration_since(since)),
                _ => behind.push(name.to_string()),
            }
        }
        behind.sort();
        (latencies, behind)
    }

    /// The revision each cluster holds in every namespace, or `None` when they differ or one is
    /// missing (for the status truth check).
    pub fn held(&self, cluster: &str) -> Option<u64> {
        let handle = self.kube.cluster(cluster)?;
        let mut revision = None;
        for namespace in self.namespaces.iter() {
            let object = handle.get_secret(namespace, &self.secret)?;
            let held: u64 = object.meta.annotations.get(REVISION_ANNOTATION)?.parse().ok()?;
            if revision.is_some_and(|seen| seen != held) {
                return None;
            }
            revision = Some(held);
        }
        revision
    }

    /// Write notifications missed so far (0 when every latency was measured at its commit).
    pub fn missed_notifications(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    fn rescan(&self) {
        let names: Vec<Arc<str>> = self.lock().clusters.keys().cloned().collect();
        let now = Instant::now();
        for name in names {
            let Some(handle) = self.kube.cluster(&name) else {
                continue;
            };
            for (index, namespace) in self.namespaces.iter().enumerate() {
                let revision = handle.get_secret(namespace, &self.secret).and_then(|object| {
                    object
                        .meta
                        .annotations
                        .get(REVISION_ANNOTATION)?
                        .parse::<u64>()
                        .ok()
                });
                if let Some(revision) = revision {
                    self.record(&name, index, revision, now, true);
                }
            }
        }
    }

    async fn follow(self, mut events: broadcast::Receiver<WriteEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => self.on_write(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "write notifications lagged; rescanning");
                    self.missed.fetch_add(missed, Ordering::Relaxed);
                    self.rescan();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn on_write(&self, event: &WriteEvent) {
        if event.kind != Kind::Secret || event.name != *self.secret {
            return;
        }
        let Some(namespace) = &event.namespace else {
            return;
        };
        let Some(index) = self.namespaces.iter().position(|ns| ns == namespace) else {
            return;
        };
        let Some(handle) = self.kube.cluster(&event.cluster) else {
            return;
        };
        let revision = handle.get_secret(namespace, &self.secret).and_then(|object| {
            object
                .meta
                .annotations
                .get(REVISION_ANNOTATION)?
                .parse::<u64>()
                .ok()
        });
        if let Some(revision) = revision {
            self.record(&event.cluster, index, revision, event.instant.into(), false);
        }
    }

    fn record(&self, cluster: &str, index: usize, revision: u64, at: Instant, rescan: bool) {
        let mut state = self.lock();
        let target = state.target;
        let Some(entry) = state.clusters.get_mut(cluster) else {
            return;
        };
        let keep_earlier = rescan && entry.held[index].is_some_and(|(held, _)| held == revision);
        if !keep_earlier {
            entry.held[index] = Some((revision, at));
        }
        let Some(target) = target else {
            return;
        };
        if entry.converged_at.is_none()
            && entry
                .held
                .iter()
                .all(|held| held.is_some_and(|(held, _)| held == target.revision))
        {
            let at = entry
                .held
                .iter()
                .filter_map(|held| held.map(|(_, at)| at))
                .max()
                .unwrap_or(at);
            entry.converged_at = Some(at.max(target.since));
            state.converged += 1;
            let total = state.clusters.len();
            let converged = state.converged;
            self.progress.send_replace(Progress { converged, total });
        }
    }
}
