//! The drift watcher: keeps the value-free view of our Secrets current, repairs drift of the
//! payloads held in memory, audits them periodically and caches the namespace listing.
//! Invariant: the agent's own writes are never drift (events are handled under the write lock).
//!
//! # Drift
//! The watcher keeps a compact view of our Secrets (`ObservedSecret`: digests, never values) and
//! the resource version of each; events older than what a write already told us are ignored
//! (also for Secrets our own writes deleted or released: the watch lags behind write responses,
//! and a late event must not bring them back), and events are handled under the same lock as
//! writes.
//! A drifted Secret whose desired payload is in memory is repaired at once and reported. After a
//! restart no payload is in memory: a change to a Secret of such a key marks the key stale, drops
//! it from the applied set and asks the Sync client to reconnect, so the hub sends it again; the
//! repair is reported once that upsert succeeds. A periodic audit re-checks everything in memory
//! and re-resolves namespace selectors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Secret};
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use tokio::time::Instant;

use super::{Entry, KubeCluster, Location, describe, is_ours, observe, ours_for, refusal};
use crate::cluster::ClusterEvent;
use crate::reconcile::{
    self, CREATION_POLICY_ANNOTATION, DesiredSecret, DriftKind, FLEET_SECRET_ANNOTATION, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE, Namespace, ObservedSecret, REVISION_ANNOTATION, Refusal, SHA256_ANNOTATION,
    TARGETS_ANNOTATION,
};

/// Whether a change to one of our Secrets matters (content or our marks), for keys whose
/// payload is not in memory.
pub(super) fn meaningful_change(before: &ObservedSecret, after: &ObservedSecret) -> bool {
    before.secret_type != after.secret_type
        || before.data != after.data
        || before.immutable != after.immutable
        || [
            REVISION_ANNOTATION,
            SHA256_ANNOTATION,
            FLEET_SECRET_ANNOTATION,
            CREATION_POLICY_ANNOTATION,
            TARGETS_ANNOTATION,
        ]
        .iter()
        .any(|key| before.annotations.get(*key) != after.annotations.get(*key))
        || before.labels.get(MANAGED_BY_LABEL) != after.labels.get(MANAGED_BY_LABEL)
}

fn describe_watch(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => describe(error),
        other => {
            let mut text = other.to_string();
            crate::text::truncate_utf8(&mut text, 200);
            text
        }
    }
}

impl KubeCluster {
    /// Watches our Secrets (label selector), repairs drift and audits periodically. Runs until
    /// dropped.
    pub async fn run_watcher(&self) {
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
        // With an allow-list, one namespaced watch per namespace: the agent then needs Secret
        // rights in those namespaces only (RBAC cannot narrow a cluster-wide list by label).
        let scopes: Vec<Option<String>> = match &self.settings.allowed_namespaces {
            Some(namespaces) => namespaces.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        let streams = scopes.iter().enumerate().map(|(index, scope)| {
            let api: Api<Secret> = match scope {
                Some(namespace) => Api::namespaced(self.client.clone(), namespace),
                None => Api::all(self.client.clone()),
            };
            let stream =
                kube::runtime::WatchStreamExt::default_backoff(watcher::watcher(api, config.clone()));
            stream.map(move |event| (index, event)).boxed()
        });
        let mut stream = futures::stream::select_all(streams);
        let mut audit = tokio::time::interval(self.settings.audit_interval);
        audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffers: Vec<Option<BTreeMap<Location, Entry>>> = scopes.iter().map(|_| None).collect();
        let mut listed = vec![false; scopes.len()];
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some((index, Ok(event))) => {
                        let initial_done = matches!(event, watcher::Event::InitDone);
                        self.on_event(scopes[index].as_deref(), event, &mut buffers[index]).await;
                        if initial_done && !listed[index] {
                            listed[index] = true;
                            if listed.iter().all(|listed| *listed) {
                                self.synced.send_replace(true);
                                tracing::debug!(secrets = self.state().cache.len(), "managed secrets listed");
                            }
                        }
                    }
                    Some((_, Err(error))) => {
                        tracing::warn!(error = %describe_watch(&error), "secret watch failed, retrying");
                    }
                    None => return,
                },
                _ = audit.tick() => {
                    if self.is_synced() {
                        let _guard = self.write_lock.lock().await;
                        self.audit().await;
                    }
                }
            }
        }
    }

    /// One watch event from the watch of `scope` (a namespace, or `None` for all).
    async fn on_event(
        &self,
        scope: Option<&str>,
        event: watcher::Event<Secret>,
        buffer: &mut Option<BTreeMap<Location, Entry>>,
    ) {
        match event {
            watcher::Event::Init => *buffer = Some(BTreeMap::new()),
            watcher::Event::InitApply(secret) => {
                if let (Some(buffer), Some((location, entry))) = (buffer.as_mut(), observe(secret)) {
                    buffer.insert(location, entry);
                }
            }
            watcher::Event::InitDone => {
                let fresh = buffer.take().unwrap_or_default();
                let _guard = self.write_lock.lock().await;
                let in_scope = |location: &Location| scope.is_none_or(|namespace| location.0 == namespace);
                let previous: BTreeMap<Location, Entry> = {
                    let mut state = self.state();
                    let (previous, other) = std::mem::take(&mut state.cache)
                        .into_iter()
                        .partition(|(location, _)| in_scope(location));
                    state.cache = other;
                    // A listing can predate our latest removals (it was taken before them).
                    let fresh: Vec<(Location, Entry)> = fresh
                        .into_iter()
                        .filter(|(location, entry)| {
                            in_scope(location) && !state.is_old_news(location, entry.resource_version)
                        })
                        .collect();
                    state.cache.extend(fresh);
                    previous
                };
                let locations: BTreeSet<Location> = {
                    let state = self.state();
                    previous
                        .keys()
                        .chain(state.cache.keys().filter(|location| in_scope(location)))
                        .cloned()
                        .collect()
                };
                for location in locations {
                    let before = previous.get(&location).map(|entry| entry.observed.clone());
                    self.changed(&location, before).await;
                }
            }
            watcher::Event::Apply(secret) => {
                let Some((location, entry)) = observe(secret) else {
                    return;
                };
                let _guard = self.write_lock.lock().await;
                let before = {
                    let mut state = self.state();
                    let old_news = state.is_old_news(&location, entry.resource_version);
                    state.watch_reached(scope, entry.resource_version);
                    if old_news {
                        return;
                    }
                    let before = state.cache.get(&location).map(|entry| entry.observed.clone());
                    if is_ours(&entry.observed) {
                        state.cache.insert(location.clone(), entry);
                    } else {
                        state.cache.remove(&location);
                    }
                    before
                };
                self.changed(&location, before).await;
            }
            watcher::Event::Delete(secret) => {
                let Some((location, entry)) = observe(secret) else {
                    return;
                };
                let _guard = self.write_lock.lock().await;
                let before = {
                    let mut state = self.state();
                    // A deletion older than our latest write (we recreated the Secret since).
                    let old_news = state.is_old_news(&location, entry.resource_version);
                    state.watch_reached(scope, entry.resource_version);
                    if old_news {
                        return;
                    }
                    state.cache.remove(&location)
                };
                let Some(before) = before else {
                    return;
                };
                self.changed(&location, Some(before.observed)).await;
            }
        }
    }

    /// Reacts to a change at `location` (the cache already holds the new state, or nothing).
    async fn changed(&self, location: &Location, before: Option<ObservedSecret>) {
        let (namespace, name) = location;
        let (repair, stale) = {
            let mut state = self.state();
            let after = state.cache.get(location).map(|entry| entry.observed.clone());
            let key = after
                .as_ref()
                .and_then(ours_for)
                .or_else(|| before.as_ref().and_then(ours_for))
                .map(str::to_owned);
            let held_key = state
                .held
                .iter()
                .find(|(_, held)| &held.desired.secret_name == name && held.namespaces.contains(namespace))
                .map(|(key, _)| key.clone());
            match (held_key, key) {
                (Some(key), _) => {
                    let held = &state.held[&key];
                    let drift = reconcile::check_drift(&held.desired, namespace, after.as_ref());
                    (drift.map(|drift| (held.desired.clone(), drift)), None)
                }
                (None, Some(key)) if !state.held.contains_key(&key) => {
                    let kind = match (&before, &after) {
                        (Some(_), None) => Some(DriftKind::Deleted),
                        (Some(before), Some(after)) if meaningful_change(before, after) => {
                            Some(DriftKind::Modified)
                        }
                        _ => None,
                    };
                    let stale = kind.map(|kind| {
                        state
                            .stale
                            .entry(key.clone())
                            .or_default()
                            .push((namespace.clone(), kind));
                        key
                    });
                    (None, stale)
                }
                _ => (None, None),
            }
        };
        if let Some(key) = stale {
            tracing::warn!(%key, %namespace, %name, "managed secret changed while its payload is not in memory; asking the hub again");
            if self.events.try_send(ClusterEvent::Resync).is_err() {
                tracing::debug!("resync already pending");
            }
        }
        if let Some((desired, drift)) = repair {
            self.repair(&desired, namespace, drift).await;
        }
    }

    #[tracing::instrument(name = "agent.repair", skip_all, fields(key = %desired.key, revision = desired.revision, namespace = %namespace, kind = ?drift.kind))]
    async fn repair(&self, desired: &Arc<DesiredSecret>, namespace: &str, drift: reconcile::Drift) {
        let key = &desired.key;
        let Some(action) = drift.repair else {
            tracing::warn!(%key, %namespace, kind = ?drift.kind, "managed secret drifted and cannot be repaired");
            self.report_unrepaired(
                desired,
                namespace,
                drift.kind,
                "the Secret cannot be repaired in place".to_owned(),
            );
            return;
        };
        match self.execute(action).await {
            Ok(()) => {
                self.count_drift(drift.kind);
                tracing::info!(%key, %namespace, kind = ?drift.kind, revision = desired.revision, "repaired drift");
                let note = format!(
                    "The Secret was {}; wrote revision {} of fleet secret {key} back",
                    super::apply::drift_word(drift.kind),
                    desired.revision
                );
                self.record_event(super::Occurrence::new(
                    namespace,
                    &desired.secret_name,
                    super::Reason::DriftRepaired,
                    note,
                ));
                let event = ClusterEvent::Drift {
                    key: key.clone(),
                    namespace: namespace.to_owned(),
                    kind: drift.kind,
                    revision: desired.revision,
                };
                if self.events.try_send(event).is_err() {
                    tracing::warn!(%key, %namespace, "drift report dropped: queue full");
                }
            }
            Err(refusal) => {
                tracing::warn!(%key, %namespace, code = ?refusal.code, message = %refusal.message, "drift repair failed");
                self.report_unrepaired(desired, namespace, drift.kind, refusal.message);
            }
        }
    }

    /// Tells the hub that a drifted Secret could not be repaired (its drift report shows it).
    fn report_unrepaired(
        &self,
        desired: &DesiredSecret,
        namespace: &str,
        kind: reconcile::DriftKind,
        failure: String,
    ) {
        let event = ClusterEvent::DriftUnrepaired {
            key: desired.key.clone(),
            namespace: namespace.to_owned(),
            kind,
            revision: desired.revision,
            failure,
        };
        if self.events.try_send(event).is_err() {
            tracing::warn!(key = %desired.key, %namespace, "drift report dropped: queue full");
        }
    }

    /// Re-resolves namespace selectors (namespaces come and go, labels change) and writes or
    /// cleans up where the set changed.
    async fn follow_selectors(&self) {
        let selected: Vec<(Arc<DesiredSecret>, Vec<String>)> = self
            .state()
            .held
            .values()
            .filter(|held| matches!(held.desired.targets, reconcile::Targets::Selector(_)))
            .map(|held| (held.desired.clone(), held.namespaces.clone()))
            .collect();
        if selected.is_empty() {
            return;
        }
        let cluster_namespaces = match self.cluster_namespaces().await {
            Ok(namespaces) => namespaces,
            Err(refusal) => {
                tracing::warn!(message = %refusal.message, "cannot re-resolve namespace selectors");
                return;
            }
        };
        for (desired, current) in selected {
            let key = &desired.key;
            let result = async {
                let namespaces =
                    reconcile::resolve_namespaces(&desired.targets, &cluster_namespaces)?;
                if namespaces == current {
                    return Ok(());
                }
                self.check_allowed(&desired, &namespaces)?;
                let observed = self.observe_targets(&desired, &namespaces).await?;
                // A selector follow-up is not rolled back: only the plan's writes are needed.
                let plan = reconcile::plan_upsert(&desired, &namespaces, &observed, Some(&desired))?;
                for action in plan.into_actions() {
                    self.execute(action).await?;
                }
                tracing::info!(%key, from = current.len(), to = namespaces.len(), "namespace selector now matches other namespaces");
                if let Some(held) = self.state().held.get_mut(key)
                    && held.desired.revision == desired.revision
                {
                    held.namespaces = namespaces;
                }
                Ok::<(), Refusal>(())
            }
            .await;
            if let Err(refusal) = result {
                tracing::warn!(%key, code = ?refusal.code, message = %refusal.message, "cannot follow the namespace selector");
            }
        }
    }

    /// Re-checks every payload in memory against the cache.
    async fn audit(&self) {
        self.follow_selectors().await;
        let applied: BTreeSet<String> = self
            .state()
            .cache
            .values()
            .filter_map(|entry| ours_for(&entry.observed).map(str::to_owned))
            .collect();
        self.metrics
            .applied_keys
            .set(i64::try_from(applied.len()).unwrap_or(i64::MAX));
        let checks: Vec<(Arc<DesiredSecret>, String, reconcile::Drift)> = {
            let state = self.state();
            state
                .held
                .values()
                .flat_map(|held| {
                    held.namespaces.iter().filter_map(|namespace| {
                        let observed = state
                            .cache
                            .get(&(namespace.clone(), held.desired.secret_name.clone()))
                            .map(|entry| &entry.observed);
                        reconcile::check_drift(&held.desired, namespace, observed)
                            .map(|drift| (held.desired.clone(), namespace.clone(), drift))
                    })
                })
                .collect()
        };
        for (desired, namespace, drift) in checks {
            self.repair(&desired, &namespace, drift).await;
        }
    }

    /// The cluster's namespaces with their labels, listed at most once per `namespace_cache_ttl`.
    pub(super) async fn cluster_namespaces(&self) -> Result<Arc<Vec<Namespace>>, Refusal> {
        if let Some((at, namespaces)) = self
            .namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < self.settings.namespace_cache_ttl
        {
            return Ok(namespaces.clone());
        }
        let api: Api<KubeNamespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|error| refusal("list namespaces", &error))?;
        let namespaces: Arc<Vec<Namespace>> = Arc::new(
            list.items
                .into_iter()
                .filter_map(|ns| {
                    Some(Namespace {
                        name: ns.metadata.name?,
                        labels: ns.metadata.labels.unwrap_or_default(),
                    })
                })
                .collect(),
        );
        *self
            .namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), namespaces.clone()));
        Ok(namespaces)
    }

    /// Counts a repaired drift by kind.
    pub(super) fn count_drift(&self, kind: DriftKind) {
        match kind {
            DriftKind::Modified => self.metrics.drift_modified.inc(),
            DriftKind::Deleted => self.metrics.drift_deleted.inc(),
        };
    }
}
