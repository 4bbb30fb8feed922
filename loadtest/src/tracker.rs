//! Follows what every simulated cluster actually holds, so a rotation's latency means the same for
//! both kinds of agent: per cluster, from the sync-now request until that cluster holds the new
//! revision.
//!
//! - Real agents ([`Tracker::kube`]): the target Secret in each target namespace, by the revision
//!   annotation the agent wrote, from the fake Kubernetes APIs' write notifications (with their
//!   commit instants, so latency is measured where the Secret lands).
//! - Protocol agents ([`Tracker::protocol`]): the revision each agent holds for the FleetSecret's
//!   key, from the state it publishes once it applied and acked an update
//!   ([`Tracker::follow_agent`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyfleet_testkit::agent::AgentState;
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
    /// Per slot (target namespace, or the one key of a protocol agent): the revision held and
    /// when it was taken.
    held: Vec<Option<(u64, Instant)>>,
    /// When the cluster first held the target revision in every slot.
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

/// Where the truth about each cluster comes from.
enum Source {
    /// Real agents: the target Secret in each namespace of each fake cluster.
    Kube {
        kube: Arc<FakeKube>,
        secret: Arc<str>,
        namespaces: Arc<[String]>,
    },
    /// Protocol agents: the state each publishes, by cluster name.
    Agents {
        key: Arc<str>,
        agents: Mutex<HashMap<Arc<str>, watch::Receiver<AgentState>>>,
    },
}

/// The tracker (cheap to clone).
#[derive(Clone)]
pub struct Tracker {
    source: Arc<Source>,
    state: Arc<Mutex<State>>,
    progress: watch::Sender<Progress>,
    /// Write notifications missed because the broadcast lagged (each lag rescans, and a Secret
    /// found by a rescan counts as written at the rescan: its latency is an upper bound).
    missed: Arc<AtomicU64>,
}

impl Tracker {
    /// Tracks `secret` in `namespaces` of every cluster in `clusters` (real agents).
    pub fn kube(kube: Arc<FakeKube>, clusters: &[String], secret: &str, namespaces: Vec<String>) -> Self {
        let width = namespaces.len();
        let events = kube.subscribe();
        let tracker = Self::new(
            Source::Kube {
                kube,
                secret: Arc::from(secret),
                namespaces: namespaces.into(),
            },
            clusters,
            width,
        );
        tokio::spawn(tracker.clone().follow(events));
        tracker
    }

    /// Tracks the revision of `key` each protocol agent of `clusters` holds; each agent is added
    /// by [`Tracker::follow_agent`] when it starts.
    pub fn protocol(clusters: &[String], key: &str) -> Self {
        Self::new(
            Source::Agents {
                key: Arc::from(key),
                agents: Mutex::new(HashMap::with_capacity(clusters.len())),
            },
            clusters,
            1,
        )
    }

    fn new(source: Source, clusters: &[String], width: usize) -> Self {
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
        Self {
            source: Arc::new(source),
            state: Arc::new(Mutex::new(state)),
            progress,
            missed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Follows the protocol agent of `cluster` through its published state: each new revision
    /// of the key counts as held when the agent publishes it (after it applied and acked it).
    /// Ignored for a tracker of real agents.
    pub fn follow_agent(&self, cluster: &str, mut state: watch::Receiver<AgentState>) {
        let Source::Agents { key, agents } = &*self.source else {
            return;
        };
        let name: Arc<str> = Arc::from(cluster);
        lock(agents).insert(Arc::clone(&name), state.clone());
        let key = Arc::clone(key);
        let tracker = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let revision = state.borrow_and_update().revision(&key);
                if revision != last {
                    if let Some(revision) = revision {
                        tracker.record(&name, 0, revision, Instant::now(), false);
                    }
                    last = revision;
                }
                // Ends when the agent stops (its task is dropped).
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
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

    /// The progress of the current rotation.
    pub fn progress(&self) -> watch::Receiver<Progress> {
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

    /// The revision a cluster holds: for real agents in every namespace (`None` when they differ
    /// or one is missing), for protocol agents of the key (for the status truth check).
    pub fn held(&self, cluster: &str) -> Option<u64> {
        match &*self.source {
            Source::Kube {
                kube,
                secret,
                namespaces,
            } => {
                let handle = kube.cluster(cluster)?;
                let mut revision = None;
                for namespace in namespaces.iter() {
                    let object = handle.get_secret(namespace, secret)?;
                    let held: u64 = object.meta.annotations.get(REVISION_ANNOTATION)?.parse().ok()?;
                    if revision.is_some_and(|seen| seen != held) {
                        return None;
                    }
                    revision = Some(held);
                }
                revision
            }
            Source::Agents { key, agents } => lock(agents).get(cluster)?.borrow().revision(key),
        }
    }

    /// Write notifications missed so far (0 when every latency was measured at its commit).
    pub fn missed_notifications(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    fn rescan(&self) {
        let names: Vec<Arc<str>> = self.lock().clusters.keys().cloned().collect();
        let now = Instant::now();
        match &*self.source {
            Source::Kube {
                kube,
                secret,
                namespaces,
            } => {
                for name in names {
                    let Some(handle) = kube.cluster(&name) else {
                        continue;
                    };
                    for (index, namespace) in namespaces.iter().enumerate() {
                        if let Some(revision) = handle
                            .get_secret(namespace, secret)
                            .and_then(|object| revision_of(&object))
                        {
                            self.record(&name, index, revision, now, true);
                        }
                    }
                }
            }
            Source::Agents { .. } => {
                for name in names {
                    if let Some(revision) = self.held(&name) {
                        self.record(&name, 0, revision, now, true);
                    }
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
        let Source::Kube {
            kube,
            secret,
            namespaces,
        } = &*self.source
        else {
            return;
        };
        if event.kind != Kind::Secret || event.name != **secret {
            return;
        }
        let Some(namespace) = &event.namespace else {
            return;
        };
        let Some(index) = namespaces.iter().position(|ns| ns == namespace) else {
            return;
        };
        let Some(handle) = kube.cluster(&event.cluster) else {
            return;
        };
        if let Some(revision) = handle
            .get_secret(namespace, secret)
            .and_then(|object| revision_of(&object))
        {
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

fn revision_of(object: &keyfleet_testkit::kube::Object) -> Option<u64> {
    object.meta.annotations.get(REVISION_ANNOTATION)?.parse().ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_protocol_agent_counts_when_it_publishes_the_revision() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let tracker = Tracker::protocol(&names, "regcred");
        let (a, a_rx) = watch::channel(AgentState::default());
        let (b, b_rx) = watch::channel(AgentState::default());
        tracker.follow_agent("a", a_rx);
        tracker.follow_agent("b", b_rx);
        let since = Instant::now();
        let mut progress = tracker.expect(7, since);
        let hold = |revision: u64| {
            move |state: &mut AgentState| {
                state
                    .applied
                    .insert("regcred".to_owned(), (revision, vec![0; 32]));
            }
        };
        a.send_modify(hold(6));
        b.send_modify(hold(7));
        let converged = progress
            .wait_for(|progress| progress.converged == 1)
            .await
            .expect("progress")
            .converged;
        assert_eq!(converged, 1);
        assert_eq!(tracker.held("a"), Some(6));
        assert_eq!(tracker.held("b"), Some(7));
        assert_eq!(tracker.held("c"), None);
        a.send_modify(hold(7));
        let (latencies, behind) = tracker.wait(Duration::from_secs(30)).await;
        assert_eq!(latencies.len(), 2);
        assert!(behind.is_empty(), "{behind:?}");
    }
}
