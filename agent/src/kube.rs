//! The Kubernetes side: server-side apply of the desired Secrets, a watcher on the Secrets the
//! agent manages (drift repair), and the credential Secret.
//!
//! # What the agent touches
//! Only Secrets labelled `app.kubernetes.io/managed-by: keyfleet` with our `keyfleet.io/*`
//! annotations, and the Secret a desired payload names (created when absent; merged into only
//! under creationPolicy Merge). Everything else is read at most (to find out that it is not ours).
//! Its own credential Secret is never a valid target.
//!
//! # Writes
//! - Apply: server-side apply, field manager `keyfleet-agent`, `force` only when the Secret is
//!   already ours for the key (see `reconcile`). Owner/Orphan write data, type, labels,
//!   annotations and `immutable`; Merge writes data, labels and annotations only.
//! - Release (Retain): JSON merge patch removing our label and annotations; the data stays (and
//!   stays recorded as applied by `keyfleet-agent` in managedFields).
//! - RemoveFields (Delete of a Merge): server-side apply of an empty configuration, which drops
//!   exactly the fields we own.
//! - Delete (Delete of an Owner): DELETE with the Secret's uid as precondition.
//!
//! # Items are all or nothing
//! An upsert or a removal touches several namespaces one write at a time. Before the first write,
//! the prior of every location is known (`reconcile::prior_sources`): nothing there, a foreign
//! Secret, or ours with a known content — the payload held in memory when the Secret still holds
//! it, else the content read back from the cluster (one GET; the fields our managedFields entry
//! owns). When a write fails, the writes already made (and the failed one, when the API's answer
//! leaves open whether it happened) are undone in reverse order (`reconcile::undo`) and the item is
//! NACKed with the reason and what was rolled back. A rollback that fails too is named in the
//! NACK (then retryable), logged and counted (`rollback_failures`); the key leaves the applied
//! state, so the hub sends it again and that attempt converges.
//!
//! # Drift
//! The watcher keeps a compact view of our Secrets (`ObservedSecret`: digests, never values) and
//! the resource version of each; events older than what a write already told us are ignored
//! (also for Secrets our own writes deleted or released: the watch lags behind write responses,
//! and a late event must not bring them back), and events are handled under the same lock as
//! writes, so the agent's own writes are never drift.
//! A drifted Secret whose desired payload is in memory is repaired at once and reported. After a
//! restart no payload is in memory: a change to a Secret of such a key marks the key stale, drops
//! it from the applied set and asks the Sync client to reconnect, so the hub sends it again; the
//! repair is reported once that upsert succeeds. A periodic audit re-checks everything in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use zeroize::{Zeroize as _, Zeroizing};

use crate::hub::{ClusterEvent, Credential, CredentialStore};
use crate::metrics::Metrics;
use crate::reconcile::{
    self, Action, Applied, CREATION_POLICY_ANNOTATION, CreationPolicy, DeletionPolicy, DesiredSecret,
    DriftKind, ErrorCode, FIELD_MANAGER, FLEET_SECRET_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    Namespace, ObservedSecret, Ownership, Prior, PriorSource, RESERVED_ANNOTATION_PREFIX,
    REVISION_ANNOTATION, Refusal, SHA256_ANNOTATION, SecretBytes, Targets, Undo,
};

/// Errors of the Kubernetes side.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {what} failed: {reason}")]
    Api {
        /// What was attempted, naming the object.
        what: String,
        /// Why, without response bodies.
        reason: String,
    },
    /// The managed Secrets could not be listed in time (see the watcher's warnings).
    #[error("managed secrets not listed after {0:?} (check RBAC and the API server)")]
    NotSynced(Duration),
    /// The credential Secret exists but is unusable.
    #[error("credential secret {namespace}/{name}: {reason}")]
    Credential {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Describes a kube error without response bodies (a decode error could quote a Secret).
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let mut message = status.message.clone();
            message.truncate(300);
            format!("{} {}: {message}", status.code, status.reason)
        }
        kube::Error::SerdeError(_) => "cannot decode the response".into(),
        kube::Error::HyperError(_) | kube::Error::Service(_) => "transport error".into(),
        other => {
            let mut text = other.to_string();
            text.truncate(200);
            text
        }
    }
}

fn api_error(what: impl Into<String>, error: &kube::Error) -> KubeError {
    KubeError::Api {
        what: what.into(),
        reason: describe(error),
    }
}

/// Maps a failed write to the NACK the hub gets.
fn refusal(what: &str, error: &kube::Error) -> Refusal {
    let reason = describe(error);
    let message = format!("{what}: {reason}");
    match error {
        kube::Error::Api(status) => match status.code {
            403 => Refusal::new(ErrorCode::Forbidden, true, message),
            404 => Refusal::new(ErrorCode::NamespaceMissing, true, message),
            409 => Refusal::new(ErrorCode::Conflict, true, message),
            422 if status.message.contains("immutable") => Refusal::new(ErrorCode::Immutable, false, message),
            400 | 413 | 422 => Refusal::new(ErrorCode::Invalid, false, message),
            408 | 429 | 500..=599 => Refusal::new(ErrorCode::KubernetesUnavailable, true, message),
            _ => Refusal::new(ErrorCode::Internal, true, message),
        },
        _ => Refusal::new(ErrorCode::KubernetesUnavailable, true, message),
    }
}

/// Settings of the Kubernetes side.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// The agent's namespace (its credential Secret lives there).
    pub namespace: String,
    /// Name of the credential Secret.
    pub credential_secret: String,
    /// Namespaces the agent may write into; `None` means all.
    pub allowed_namespaces: Option<BTreeSet<String>>,
    /// How often everything in memory is re-checked against the watcher's view.
    pub audit_interval: Duration,
    /// How long a namespace listing is reused.
    pub namespace_cache_ttl: Duration,
    /// How long a write or a Hello waits for the first listing of the managed Secrets.
    pub sync_timeout: Duration,
}

impl KubeSettings {
    /// Defaults for the given namespace and credential Secret.
    pub fn new(namespace: impl Into<String>, credential_secret: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            credential_secret: credential_secret.into(),
            allowed_namespaces: None,
            audit_interval: Duration::from_secs(60),
            namespace_cache_ttl: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(30),
        }
    }
}

type Location = (String, String);

/// Who holds a Secret right before we delete it (with its resourceVersion when present).
enum Current {
    Absent,
    /// Ours, with its uid (the delete's precondition).
    Ours(Option<String>, u64),
    Foreign(u64),
}

struct Entry {
    observed: ObservedSecret,
    resource_version: u64,
}

struct Held {
    desired: Arc<DesiredSecret>,
    namespaces: Vec<String>,
}

#[derive(Default)]
struct State {
    /// Our Secrets as last seen (watch events and write responses).
    cache: BTreeMap<Location, Entry>,
    /// Keys whose desired payload is in memory.
    held: BTreeMap<String, Held>,
    /// Keys that drifted while no payload was in memory: (namespace, kind) per drifted Secret.
    stale: BTreeMap<String, Vec<(String, DriftKind)>>,
    /// Locations our own writes took out of the cache (deleted, released, fields removed), with
    /// the resourceVersion those writes left: a watch event at or below it is older news (the
    /// watch lags behind write responses) and must not bring the Secret back. Dropped once the
    /// watch of that scope delivers an event at or above it (a watch is ordered).
    removed: BTreeMap<Location, u64>,
}

impl State {
    /// Takes `location` out of the cache after our own write left it at `resource_version`
    /// (0 when the response did not say; the cached one is the lower bound then).
    fn forget(&mut self, location: Location, resource_version: u64) {
        let cached = self
            .cache
            .remove(&location)
            .map_or(0, |entry| entry.resource_version);
        let known = resource_version.max(cached);
        if known != 0 {
            let mark = self.removed.entry(location).or_insert(known);
            *mark = (*mark).max(known);
        }
    }

    /// Whether a watch event at `resource_version` for `location` is older than what the cache
    /// or our own removals already told us.
    fn is_old_news(&self, location: &Location, resource_version: u64) -> bool {
        if resource_version == 0 {
            return false;
        }
        let known = match self.cache.get(location) {
            Some(entry) => entry.resource_version,
            None => self.removed.get(location).copied().unwrap_or(0),
        };
        known != 0 && resource_version <= known
    }

    /// A watch of `scope` delivered an event at `resource_version`: it will never deliver an
    /// older one, so removals at or below it need no guard any more.
    fn watch_reached(&mut self, scope: Option<&str>, resource_version: u64) {
        if self.removed.is_empty() || resource_version == 0 {
            return;
        }
        self.removed.retain(|(namespace, _), mark| {
            !(scope.is_none_or(|scope| scope == namespace) && *mark <= resource_version)
        });
    }
}

/// The cluster as the Sync client sees it, backed by the Kubernetes API.
pub struct KubeCluster {
    client: kube::Client,
    settings: KubeSettings,
    state: Mutex<State>,
    write_lock: tokio::sync::Mutex<()>,
    synced: watch::Sender<bool>,
    events: mpsc::Sender<ClusterEvent>,
    metrics: Metrics,
    namespaces: Mutex<Option<(Instant, Arc<Vec<Namespace>>)>>,
}

fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// The compact, value-free view of a Secret (the bytes are zeroized here).
fn observe(mut secret: Secret) -> Option<(Location, Entry)> {
    let namespace = secret.metadata.namespace.clone()?;
    let name = secret.metadata.name.clone()?;
    let resource_version = resource_version(&secret.metadata);
    let data = secret
        .data
        .as_mut()
        .map(|data| {
            data.iter_mut()
                .map(|(key, value)| {
                    let digest = reconcile::value_digest(&value.0);
                    value.0.zeroize();
                    (key.clone(), digest)
                })
                .collect()
        })
        .unwrap_or_default();
    let observed = ObservedSecret {
        namespace: namespace.clone(),
        name: name.clone(),
        secret_type: secret.type_.take().unwrap_or_default(),
        labels: secret.metadata.labels.take().unwrap_or_default(),
        annotations: secret.metadata.annotations.take().unwrap_or_default(),
        data,
        immutable: secret.immutable.unwrap_or(false),
    };
    Some((
        (namespace, name),
        Entry {
            observed,
            resource_version,
        },
    ))
}

fn is_ours(observed: &ObservedSecret) -> bool {
    matches!(observed.ownership(), Ownership::Ours { .. })
}

fn ours_for(observed: &ObservedSecret) -> Option<&str> {
    match observed.ownership() {
        Ownership::Ours { key, .. } => Some(key),
        Ownership::Foreign => None,
    }
}

/// The Secret we apply for `desired` into `namespace` (data copied; zeroize it after use).
fn secret_for(desired: &DesiredSecret, namespace: &str) -> Secret {
    let merge = desired.creation == CreationPolicy::Merge;
    Secret {
        metadata: ObjectMeta {
            name: Some(desired.secret_name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(desired.full_labels()),
            annotations: Some(desired.full_annotations()),
            ..ObjectMeta::default()
        },
        type_: (!merge).then(|| desired.secret_type.clone()),
        data: Some(
            desired
                .data
                .iter()
                .map(|(key, value)| (key.clone(), ByteString(value.expose().to_vec())))
                .collect(),
        ),
        immutable: (!merge && desired.immutable).then_some(true),
        ..Secret::default()
    }
}

fn zeroize_secret(secret: &mut Secret) {
    if let Some(data) = secret.data.as_mut() {
        for value in data.values_mut() {
            value.0.zeroize();
        }
    }
}

/// The child field names under `path` in a managedFields `fieldsV1` tree (`f:` stripped).
fn owned_names(fields: &serde_json::Value, path: &[&str]) -> BTreeSet<String> {
    let mut node = fields;
    for step in path {
        match node.get(format!("f:{step}")) {
            Some(child) => node = child,
            None => return BTreeSet::new(),
        }
    }
    node.as_object()
        .map(|children| {
            children
                .keys()
                .filter_map(|name| name.strip_prefix("f:"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The content a Secret ours for `key` holds, as the payload that writes it again: the fields of
/// our server-side apply entry in managedFields (without one: every data key, the type and
/// `immutable`, and only our own label and annotations). The bytes move out of `secret`.
fn prior_content(mut secret: Secret, key: &str) -> DesiredSecret {
    let owned = secret
        .metadata
        .managed_fields
        .as_ref()
        .and_then(|entries| {
            entries.iter().find(|entry| {
                entry.manager.as_deref() == Some(FIELD_MANAGER) && entry.operation.as_deref() == Some("Apply")
            })
        })
        .and_then(|entry| entry.fields_v1.as_ref())
        .map(|fields| fields.0.clone());
    let (data_keys, label_keys, annotation_keys, owns_immutable) = match &owned {
        Some(fields) => (
            Some(owned_names(fields, &["data"])),
            owned_names(fields, &["metadata", "labels"]),
            owned_names(fields, &["metadata", "annotations"]),
            fields.get("f:immutable").is_some(),
        ),
        None => (None, BTreeSet::new(), BTreeSet::new(), true),
    };
    let mut data = secret.data.take().unwrap_or_default();
    let content_data = data
        .iter_mut()
        .filter(|(name, _)| data_keys.as_ref().is_none_or(|keys| keys.contains(*name)))
        .map(|(name, value)| (name.clone(), SecretBytes::new(std::mem::take(&mut value.0))))
        .collect();
    for value in data.values_mut() {
        value.0.zeroize();
    }
    let annotations = secret.metadata.annotations.take().unwrap_or_default();
    let labels = secret.metadata.labels.take().unwrap_or_default();
    let namespace = secret.metadata.namespace.take().unwrap_or_default();
    let sha256 = annotations
        .get(SHA256_ANNOTATION)
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or([0; 32]);
    DesiredSecret {
        key: key.to_owned(),
        revision: annotations
            .get(REVISION_ANNOTATION)
            .and_then(|revision| revision.parse().ok())
            .unwrap_or(0),
        sha256,
        secret_name: secret.metadata.name.take().unwrap_or_default(),
        secret_type: secret.type_.take().unwrap_or_else(|| "Opaque".into()),
        targets: Targets::Namespaces(vec![namespace]),
        data: content_data,
        labels: labels
            .into_iter()
            .filter(|(name, _)| name != MANAGED_BY_LABEL && label_keys.contains(name))
            .collect(),
        creation: CreationPolicy::from_annotation(
            annotations.get(CREATION_POLICY_ANNOTATION).map(String::as_str),
        ),
        annotations: annotations
            .into_iter()
            .filter(|(name, _)| {
                !name.starts_with(RESERVED_ANNOTATION_PREFIX) && annotation_keys.contains(name)
            })
            .collect(),
        // Only written back, never removed again: the policy does not matter here.
        deletion: DeletionPolicy::Retain,
        immutable: secret.immutable == Some(true) && owns_immutable,
    }
}

/// What happened when an item's writes were undone.
enum Rollback {
    /// Every location is back to its prior (the names of those written back).
    Complete(Vec<String>),
    /// These undo writes failed (the others succeeded).
    Incomplete(Vec<String>),
}

/// The NACK for an item whose write failed, saying what the rollback did.
fn with_rollback(mut refusal: Refusal, rollback: &Rollback) -> Refusal {
    match rollback {
        Rollback::Complete(undone) if undone.is_empty() => {}
        Rollback::Complete(undone) => {
            refusal.message = format!(
                "{}; rolled back to their previous state: {}",
                refusal.message,
                undone.join(", ")
            );
        }
        Rollback::Incomplete(failures) => {
            let more = match failures.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            refusal.message = format!(
                "{}; rollback incomplete, the next attempt repairs it: {}{more}",
                refusal.message,
                failures.first().map(String::as_str).unwrap_or_default(),
            );
            refusal.retryable = true;
        }
    }
    refusal
}

/// Whether a failed write may still have happened (no answer, or an answer that does not say).
fn may_have_happened(refusal: &Refusal) -> bool {
    refusal.code == ErrorCode::KubernetesUnavailable
}

/// Whether a change to one of our Secrets matters (content or our marks), for keys whose
/// payload is not in memory.
fn meaningful_change(before: &ObservedSecret, after: &ObservedSecret) -> bool {
    before.secret_type != after.secret_type
        || before.data != after.data
        || before.immutable != after.immutable
        || [
            REVISION_ANNOTATION,
            SHA256_ANNOTATION,
            FLEET_SECRET_ANNOTATION,
            CREATION_POLICY_ANNOTATION,
        ]
        .iter()
        .any(|key| before.annotations.get(*key) != after.annotations.get(*key))
        || before.labels.get(MANAGED_BY_LABEL) != after.labels.get(MANAGED_BY_LABEL)
}

impl KubeCluster {
    /// Builds the cluster side; the receiver carries drift reports and resync requests to the
    /// Sync client. Nothing happens until [`KubeCluster::run_watcher`] runs.
    pub fn new(
        client: kube::Client,
        settings: KubeSettings,
        metrics: Metrics,
    ) -> (Self, mpsc::Receiver<ClusterEvent>) {
        let (events, receiver) = mpsc::channel(64);
        let cluster = Self {
            client,
            settings,
            state: Mutex::new(State::default()),
            write_lock: tokio::sync::Mutex::new(()),
            synced: watch::channel(false).0,
            events,
            metrics,
            namespaces: Mutex::new(None),
        };
        (cluster, receiver)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the agent; keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the watcher has listed the managed Secrets at least once.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

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

    async fn repair(&self, desired: &Arc<DesiredSecret>, namespace: &str, drift: reconcile::Drift) {
        let key = &desired.key;
        let Some(action) = drift.repair else {
            tracing::warn!(%key, %namespace, kind = ?drift.kind, "managed secret drifted and cannot be repaired");
            return;
        };
        match self.execute(desired, action).await {
            Ok(()) => {
                self.count_drift(drift.kind);
                tracing::info!(%key, %namespace, kind = ?drift.kind, revision = desired.revision, "repaired drift");
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
            }
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
                let actions = reconcile::plan_upsert(&desired, &namespaces, &observed)?;
                for action in actions {
                    self.execute(&desired, action).await?;
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

    async fn cluster_namespaces(&self) -> Result<Arc<Vec<Namespace>>, Refusal> {
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

    fn check_allowed(&self, desired: &DesiredSecret, namespaces: &[String]) -> Result<(), Refusal> {
        for namespace in namespaces {
            if namespace == &self.settings.namespace && desired.secret_name == self.settings.credential_secret
            {
                return Err(Refusal::new(
                    ErrorCode::Invalid,
                    false,
                    format!(
                        "{namespace}/{} is the agent's own credential",
                        desired.secret_name
                    ),
                ));
            }
            if let Some(allowed) = &self.settings.allowed_namespaces
                && !allowed.contains(namespace)
            {
                return Err(Refusal::new(
                    ErrorCode::Invalid,
                    false,
                    format!("namespace {namespace} is not one this agent may write"),
                ));
            }
        }
        Ok(())
    }

    /// Current state of the targets: cache for ours, GET for the rest.
    async fn observe_targets(
        &self,
        desired: &DesiredSecret,
        namespaces: &[String],
    ) -> Result<Vec<ObservedSecret>, Refusal> {
        let (mut observed, unknown): (Vec<ObservedSecret>, Vec<String>) = {
            let state = self.state();
            let ours: Vec<ObservedSecret> = state
                .cache
                .values()
                .filter(|entry| ours_for(&entry.observed) == Some(desired.key.as_str()))
                .map(|entry| entry.observed.clone())
                .collect();
            let unknown = namespaces
                .iter()
                .filter(|namespace| {
                    !state
                        .cache
                        .contains_key(&((*namespace).clone(), desired.secret_name.clone()))
                })
                .cloned()
                .collect();
            let mut observed = ours;
            for namespace in namespaces {
                if let Some(entry) = state.cache.get(&(namespace.clone(), desired.secret_name.clone()))
                    && ours_for(&entry.observed) != Some(desired.key.as_str())
                {
                    observed.push(entry.observed.clone());
                }
            }
            (observed, unknown)
        };
        for namespace in unknown {
            let found = self
                .secrets(&namespace)
                .get_opt(&desired.secret_name)
                .await
                .map_err(|error| {
                    refusal(
                        &format!("read Secret {namespace}/{}", desired.secret_name),
                        &error,
                    )
                })?;
            if let Some((_, entry)) = found.and_then(observe) {
                observed.push(entry.observed);
            }
        }
        Ok(observed)
    }

    /// Executes an action of `desired`'s plan (Apply writes `desired`).
    async fn execute(&self, desired: &DesiredSecret, action: Action) -> Result<(), Refusal> {
        let Action::Apply { namespace, force } = action else {
            return self.cleanup(action).await;
        };
        let mut secret = secret_for(desired, &namespace);
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        let result = self
            .secrets(&namespace)
            .patch(&desired.secret_name, &params, &Patch::Apply(&secret))
            .await;
        zeroize_secret(&mut secret);
        let applied = result.map_err(|error| {
            refusal(
                &format!("apply Secret {namespace}/{}", desired.secret_name),
                &error,
            )
        })?;
        self.metrics.kube_writes.inc();
        self.record(applied);
        Ok(())
    }

    /// Executes a Delete, Release or RemoveFields (an Apply needs a payload: refused).
    async fn cleanup(&self, action: Action) -> Result<(), Refusal> {
        match action {
            Action::Apply { namespace, .. } => Err(Refusal::new(
                ErrorCode::Internal,
                false,
                format!("apply into {namespace} without a payload"),
            )),
            Action::Delete { namespace, name } => {
                let (uid, mut known) = match self.current_owner(&namespace, &name).await? {
                    Current::Ours(uid, resource_version) => (uid, resource_version),
                    Current::Absent => {
                        self.state().forget((namespace, name), 0);
                        return Ok(());
                    }
                    Current::Foreign(resource_version) => {
                        tracing::warn!(%namespace, %name, "not deleting a Secret that is no longer ours");
                        self.state().forget((namespace, name), resource_version);
                        return Ok(());
                    }
                };
                let params = DeleteParams::default().preconditions(Preconditions {
                    uid,
                    resource_version: None,
                });
                match self.secrets(&namespace).delete(&name, &params).await {
                    Ok(deleted) => {
                        self.metrics.kube_writes.inc();
                        // The deleted object (when the API returns it rather than a Status)
                        // carries the deletion's resourceVersion.
                        if let Some(mut deleted) = deleted.left() {
                            known = known.max(resource_version(&deleted.metadata));
                            zeroize_secret(&mut deleted);
                        }
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        return Err(refusal(&format!("delete Secret {namespace}/{name}"), &error));
                    }
                }
                self.state().forget((namespace, name), known);
                Ok(())
            }
            Action::Release { namespace, name } => {
                let mut labels = serde_json::Map::new();
                labels.insert(MANAGED_BY_LABEL.into(), serde_json::Value::Null);
                let mut annotations = serde_json::Map::new();
                for key in [
                    REVISION_ANNOTATION,
                    SHA256_ANNOTATION,
                    FLEET_SECRET_ANNOTATION,
                    CREATION_POLICY_ANNOTATION,
                ] {
                    annotations.insert(key.into(), serde_json::Value::Null);
                }
                let patch = serde_json::json!({
                    "metadata": { "labels": labels, "annotations": annotations }
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                let known = match self
                    .secrets(&namespace)
                    .patch(&name, &params, &Patch::Merge(&patch))
                    .await
                {
                    Ok(mut released) => {
                        zeroize_secret(&mut released);
                        self.metrics.kube_writes.inc();
                        resource_version(&released.metadata)
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => 0,
                    Err(error) => {
                        return Err(refusal(&format!("release Secret {namespace}/{name}"), &error));
                    }
                };
                self.state().forget((namespace, name), known);
                Ok(())
            }
            Action::RemoveFields { namespace, name } => {
                let empty = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": { "name": name, "namespace": namespace },
                });
                let known = match self
                    .secrets(&namespace)
                    .patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&empty))
                    .await
                {
                    Ok(mut remaining) => {
                        zeroize_secret(&mut remaining);
                        self.metrics.kube_writes.inc();
                        resource_version(&remaining.metadata)
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => 0,
                    Err(error) => {
                        return Err(refusal(
                            &format!("remove our fields from Secret {namespace}/{name}"),
                            &error,
                        ));
                    }
                };
                self.state().forget((namespace, name), known);
                Ok(())
            }
        }
    }

    /// Resolves the prior of every action's location, reading back from the cluster the content
    /// of our Secrets whose payload is not in memory. Runs before the item's first write: a
    /// failure here refuses the item with nothing written.
    async fn priors(
        &self,
        key: &str,
        sources: Vec<PriorSource>,
        actions: &[Action],
        secret_name: &str,
    ) -> Result<Vec<Prior>, Refusal> {
        let mut priors = Vec::with_capacity(sources.len());
        for (source, action) in sources.into_iter().zip(actions) {
            priors.push(match source {
                PriorSource::Known(prior) => prior,
                PriorSource::ReadBack => {
                    let (namespace, name) = action.location(secret_name);
                    self.read_back(key, namespace, name).await?
                }
            });
        }
        Ok(priors)
    }

    /// What `namespace`/`name` holds now, for putting it back later.
    async fn read_back(&self, key: &str, namespace: &str, name: &str) -> Result<Prior, Refusal> {
        let found = self.secrets(namespace).get_opt(name).await.map_err(|error| {
            refusal(
                &format!("read Secret {namespace}/{name} before writing (to roll back on failure)"),
                &error,
            )
        })?;
        let Some(mut secret) = found else {
            return Ok(Prior::Absent);
        };
        let ours = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_BY_LABEL))
            .is_some_and(|value| value == MANAGED_BY_VALUE)
            && secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(FLEET_SECRET_ANNOTATION))
                .is_some_and(|owner| owner == key);
        if !ours {
            zeroize_secret(&mut secret);
            return Ok(Prior::Foreign);
        }
        Ok(Prior::Ours(Arc::new(prior_content(secret, key))))
    }

    /// Executes an item's actions in order (`desired` is the payload an Apply writes). When one
    /// fails, puts back what was written and returns the refusal with what the rollback did.
    async fn write_item(
        &self,
        desired: Option<&DesiredSecret>,
        actions: Vec<Action>,
        priors: Vec<Prior>,
    ) -> Result<(), (Refusal, Rollback)> {
        let secret_name = desired
            .map(|desired| desired.secret_name.as_str())
            .unwrap_or_default();
        let mut undos: Vec<Undo> = Vec::new();
        for (action, prior) in actions.into_iter().zip(priors) {
            let undo = reconcile::undo(&action, secret_name, &prior);
            let result = match desired {
                Some(desired) => self.execute(desired, action).await,
                None => self.cleanup(action).await,
            };
            if let Err(refusal) = result {
                if may_have_happened(&refusal) {
                    undos.push(undo);
                }
                let rollback = self.roll_back(undos).await;
                return Err((refusal, rollback));
            }
            undos.push(undo);
        }
        Ok(())
    }

    /// Undoes writes, the last one first; every undo is tried even when one fails.
    async fn roll_back(&self, undos: Vec<Undo>) -> Rollback {
        let mut undone = Vec::new();
        let mut failures = Vec::new();
        for undo in undos.into_iter().rev() {
            let (location, result) = match undo {
                Undo::Cleanup(action) => {
                    let (namespace, name) = action.location("");
                    let location = format!("{namespace}/{name}");
                    (location, self.cleanup(action).await)
                }
                Undo::Restore {
                    content,
                    namespace,
                    force,
                } => {
                    let location = format!("{namespace}/{}", content.secret_name);
                    let action = Action::Apply { namespace, force };
                    (location, self.execute(&content, action).await)
                }
            };
            match result {
                Ok(()) => undone.push(location),
                Err(refusal) => failures.push(refusal.message),
            }
        }
        if failures.is_empty() {
            undone.reverse();
            Rollback::Complete(undone)
        } else {
            Rollback::Incomplete(failures)
        }
    }

    /// Bookkeeping after a failed item: the payload held before it is held again when the
    /// rollback put everything back; after a failed rollback nothing is held (the cluster holds
    /// neither payload everywhere) and, for an upsert, the key leaves the applied state so the
    /// hub sends it again.
    fn after_failed_item(&self, key: &str, previous: Option<Held>, rollback: &Rollback, upsert: bool) {
        match rollback {
            Rollback::Complete(undone) => {
                if !undone.is_empty() {
                    self.metrics.rollbacks.inc();
                    tracing::info!(%key, secrets = undone.len(), "write failed midway; rolled back");
                }
                let mut state = self.state();
                match previous {
                    Some(previous) => state.held.insert(key.to_owned(), previous),
                    None => state.held.remove(key),
                };
            }
            Rollback::Incomplete(failures) => {
                self.metrics.rollbacks.inc();
                self.metrics.rollback_failures.inc();
                tracing::error!(
                    %key,
                    failed = failures.len(),
                    first = %failures.first().map(String::as_str).unwrap_or_default(),
                    "write failed midway and the rollback failed too; the hub's next attempt repairs it"
                );
                let mut state = self.state();
                state.held.remove(key);
                if upsert {
                    state.stale.entry(key.to_owned()).or_default();
                }
            }
        }
    }

    async fn current_owner(&self, namespace: &str, name: &str) -> Result<Current, Refusal> {
        let found = self
            .secrets(namespace)
            .get_opt(name)
            .await
            .map_err(|error| refusal(&format!("read Secret {namespace}/{name}"), &error))?;
        let Some(mut secret) = found else {
            return Ok(Current::Absent);
        };
        zeroize_secret(&mut secret);
        let known = resource_version(&secret.metadata);
        let ours = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_BY_LABEL))
            .is_some_and(|value| value == MANAGED_BY_VALUE);
        Ok(if ours {
            Current::Ours(secret.metadata.uid, known)
        } else {
            Current::Foreign(known)
        })
    }

    fn record(&self, secret: Secret) {
        if let Some((location, entry)) = observe(secret) {
            let mut state = self.state();
            if is_ours(&entry.observed) {
                state.removed.remove(&location);
                state.cache.insert(location, entry);
            } else {
                state.forget(location, entry.resource_version);
            }
        }
    }

    fn count_drift(&self, kind: DriftKind) {
        match kind {
            DriftKind::Modified => self.metrics.drift_modified.inc(),
            DriftKind::Deleted => self.metrics.drift_deleted.inc(),
        };
    }

    /// Waits (bounded) until the watcher has listed our Secrets: nothing is planned from a
    /// partial view.
    async fn wait_synced(&self) -> Result<(), KubeError> {
        let mut synced = self.synced.subscribe();
        // The sender lives in self, so `wait_for` only ends once the watcher has listed.
        match tokio::time::timeout(self.settings.sync_timeout, synced.wait_for(|synced| *synced)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(KubeError::NotSynced(self.settings.sync_timeout)),
        }
    }
}

fn describe_watch(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => describe(error),
        other => {
            let mut text = other.to_string();
            text.truncate(200);
            text
        }
    }
}

impl crate::hub::Cluster for KubeCluster {
    type Error = KubeError;

    async fn applied(&self) -> Result<BTreeMap<String, Applied>, KubeError> {
        self.wait_synced().await?;
        let state = self.state();
        let observed: Vec<ObservedSecret> =
            state.cache.values().map(|entry| entry.observed.clone()).collect();
        let mut applied = reconcile::applied_state(&observed);
        applied.retain(|key, _| !state.stale.contains_key(key));
        self.metrics
            .applied_keys
            .set(i64::try_from(applied.len()).unwrap_or(i64::MAX));
        Ok(applied)
    }

    async fn upsert(&self, desired: DesiredSecret) -> Result<(), Refusal> {
        self.wait_synced()
            .await
            .map_err(|error| Refusal::new(ErrorCode::KubernetesUnavailable, true, error.to_string()))?;
        let _guard = self.write_lock.lock().await;
        let cluster_namespaces = self.cluster_namespaces().await?;
        let namespaces = reconcile::resolve_namespaces(&desired.targets, &cluster_namespaces)?;
        self.check_allowed(&desired, &namespaces)?;
        let observed = self.observe_targets(&desired, &namespaces).await?;
        let actions = reconcile::plan_upsert(&desired, &namespaces, &observed)?;
        let key = desired.key.clone();
        let held_payload = self.state().held.get(&key).map(|held| held.desired.clone());
        let priors = self
            .priors(
                &key,
                reconcile::prior_sources(
                    &key,
                    &desired.secret_name,
                    &actions,
                    &observed,
                    held_payload.as_ref(),
                ),
                &actions,
                &desired.secret_name,
            )
            .await?;
        let desired = Arc::new(desired);
        let previous = self.state().held.insert(
            key.clone(),
            Held {
                desired: desired.clone(),
                namespaces: namespaces.clone(),
            },
        );
        if let Err((refusal, rollback)) = self.write_item(Some(&desired), actions, priors).await {
            self.after_failed_item(&key, previous, &rollback, true);
            return Err(with_rollback(refusal, &rollback));
        }
        let drifted = self.state().stale.remove(&key).unwrap_or_default();
        for (namespace, kind) in drifted {
            self.count_drift(kind);
            tracing::info!(%key, %namespace, ?kind, revision = desired.revision, "repaired drift after resync");
            let event = ClusterEvent::Drift {
                key: key.clone(),
                namespace,
                kind,
                revision: desired.revision,
            };
            if self.events.try_send(event).is_err() {
                tracing::warn!(%key, "drift report dropped: queue full");
            }
        }
        tracing::debug!(%key, revision = desired.revision, namespaces = namespaces.len(), "applied");
        Ok(())
    }

    async fn remove(&self, key: &str, policy: DeletionPolicy) -> Result<(), Refusal> {
        self.wait_synced()
            .await
            .map_err(|error| Refusal::new(ErrorCode::KubernetesUnavailable, true, error.to_string()))?;
        let _guard = self.write_lock.lock().await;
        let observed: Vec<ObservedSecret> = self
            .state()
            .cache
            .values()
            .filter(|entry| ours_for(&entry.observed) == Some(key))
            .map(|entry| entry.observed.clone())
            .collect();
        let actions = reconcile::plan_removal(key, policy, &observed);
        let held_payload = self.state().held.get(key).map(|held| held.desired.clone());
        let secret_name = held_payload
            .as_ref()
            .map(|payload| payload.secret_name.clone())
            .unwrap_or_default();
        let priors = self
            .priors(
                key,
                reconcile::prior_sources(key, &secret_name, &actions, &observed, held_payload.as_ref()),
                &actions,
                &secret_name,
            )
            .await?;
        let previous = {
            let mut state = self.state();
            state.stale.remove(key);
            state.held.remove(key)
        };
        if let Err((refusal, rollback)) = self.write_item(None, actions, priors).await {
            // The key is (partly) still there: it stays in the applied state, so the hub keeps
            // asking for its removal.
            self.after_failed_item(key, previous, &rollback, false);
            return Err(with_rollback(refusal, &rollback));
        }
        tracing::debug!(%key, ?policy, secrets = observed.len(), "removed");
        Ok(())
    }
}

/// Keeps the hub credential in a Secret in the agent's namespace.
pub struct KubeCredentialStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

const CREDENTIAL_KEY: &str = "credential";
const CLUSTER_NAME_KEY: &str = "cluster-name";
const CLUSTER_ID_KEY: &str = "cluster-id";

impl KubeCredentialStore {
    /// The store for `namespace`/`name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn invalid(&self, reason: &'static str) -> KubeError {
        KubeError::Credential {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        }
    }
}

impl CredentialStore for KubeCredentialStore {
    type Error = KubeError;

    async fn load(&self) -> Result<Option<Credential>, KubeError> {
        let Some(mut secret) =
            self.api.get_opt(&self.name).await.map_err(|error| {
                api_error(format!("read Secret {}/{}", self.namespace, self.name), &error)
            })?
        else {
            return Ok(None);
        };
        let mut data = secret.data.take().unwrap_or_default();
        let mut take = |key: &str| -> Option<Zeroizing<String>> {
            let bytes = Zeroizing::new(std::mem::take(&mut data.get_mut(key)?.0));
            std::str::from_utf8(&bytes)
                .ok()
                .map(|text| Zeroizing::new(text.to_owned()))
        };
        let secret_value = take(CREDENTIAL_KEY).ok_or_else(|| self.invalid("no utf-8 `credential` key"))?;
        let cluster_name = take(CLUSTER_NAME_KEY)
            .map(|name| name.to_string())
            .unwrap_or_default();
        let cluster_id = take(CLUSTER_ID_KEY).map(|id| id.to_string()).unwrap_or_default();
        for value in data.values_mut() {
            value.0.zeroize();
        }
        if secret_value.is_empty() {
            return Err(self.invalid("empty `credential` key"));
        }
        Ok(Some(Credential {
            cluster_name,
            cluster_id,
            secret: secret_value,
        }))
    }

    async fn save(&self, credential: &Credential) -> Result<(), KubeError> {
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        ("app.kubernetes.io/name".to_string(), "keyfleet-agent".to_string()),
                        (
                            "app.kubernetes.io/component".to_string(),
                            "credential".to_string(),
                        ),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    (CREDENTIAL_KEY, credential.secret.as_bytes()),
                    (CLUSTER_NAME_KEY, credential.cluster_name.as_bytes()),
                    (CLUSTER_ID_KEY, credential.cluster_id.as_bytes()),
                ]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), ByteString(value.to_vec())))
                .collect(),
            ),
            ..Secret::default()
        };
        let result = self
            .api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await;
        zeroize_secret(&mut secret);
        match result {
            Ok(mut stored) => {
                zeroize_secret(&mut stored);
                Ok(())
            }
            Err(error) => Err(api_error(
                format!("store Secret {}/{}", self.namespace, self.name),
                &error,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(creation: CreationPolicy) -> DesiredSecret {
        DesiredSecret {
            key: "regcred".into(),
            revision: 9,
            sha256: [1; 32],
            secret_name: "regcred".into(),
            secret_type: "kubernetes.io/dockerconfigjson".into(),
            targets: Targets::Namespaces(vec!["a".into()]),
            data: [(".dockerconfigjson".to_string(), SecretBytes::new(b"{}".to_vec()))].into(),
            labels: BTreeMap::new(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            creation,
            deletion: DeletionPolicy::Delete,
            immutable: true,
        }
    }

    #[test]
    fn owner_applies_everything_merge_only_data_and_marks() {
        let owner = secret_for(&desired(CreationPolicy::Owner), "a");
        assert_eq!(owner.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(owner.immutable, Some(true));
        let annotations = owner.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations.get(REVISION_ANNOTATION).map(String::as_str),
            Some("9")
        );
        assert_eq!(annotations.get("note").map(String::as_str), Some("x"));
        let merge = secret_for(&desired(CreationPolicy::Merge), "a");
        assert_eq!(merge.type_, None, "merge never claims the type");
        assert_eq!(merge.immutable, None, "merge never claims immutability");
        assert_eq!(
            merge
                .metadata
                .labels
                .expect("labels")
                .get(MANAGED_BY_LABEL)
                .map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );
    }

    #[test]
    fn observing_keeps_digests_only() {
        let mut secret = secret_for(&desired(CreationPolicy::Owner), "a");
        secret.metadata.resource_version = Some("42".into());
        let ((namespace, name), entry) = observe(secret).expect("named");
        assert_eq!((namespace.as_str(), name.as_str()), ("a", "regcred"));
        assert_eq!(entry.resource_version, 42);
        assert_eq!(
            entry.observed.data.get(".dockerconfigjson"),
            Some(&reconcile::value_digest(b"{}"))
        );
        assert!(entry.observed.immutable);
    }

    #[test]
    fn read_back_content_is_what_our_apply_entry_owns() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

        let mut secret = secret_for(&desired(CreationPolicy::Owner), "a");
        let data = secret.data.get_or_insert_default();
        data.insert("extra".into(), ByteString(b"theirs".to_vec()));
        secret
            .metadata
            .labels
            .get_or_insert_default()
            .insert("audited".into(), "yes".into());
        let ours = serde_json::json!({
            "f:data": {"f:.dockerconfigjson": {}},
            "f:immutable": {},
            "f:metadata": {
                "f:annotations": {"f:note": {}, "f:keyfleet.io/revision": {}},
                "f:labels": {"f:app.kubernetes.io/managed-by": {}},
            },
            "f:type": {},
        });
        let entry = |manager: &str, operation: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        };
        secret.metadata.managed_fields = Some(vec![
            entry(
                "kubectl",
                "Update",
                serde_json::json!({"f:data": {"f:extra": {}}, "f:metadata": {"f:labels": {"f:audited": {}}}}),
            ),
            // Our release patch is an Update: only the Apply entry counts.
            entry(
                FIELD_MANAGER,
                "Update",
                serde_json::json!({"f:data": {"f:extra": {}}}),
            ),
            entry(FIELD_MANAGER, "Apply", ours),
        ]);
        let content = prior_content(secret.clone(), "regcred");
        assert_eq!(content.data.keys().collect::<Vec<_>>(), [".dockerconfigjson"]);
        assert_eq!(content.data[".dockerconfigjson"].expose(), b"{}");
        assert!(content.labels.is_empty(), "{:?}", content.labels);
        assert_eq!(
            content.annotations,
            [("note".to_string(), "x".to_string())].into()
        );
        assert_eq!((content.revision, content.sha256), (9, [1; 32]));
        assert_eq!(content.secret_type, "kubernetes.io/dockerconfigjson");
        assert_eq!(content.creation, CreationPolicy::Owner);
        assert!(content.immutable);
        assert_eq!(content.targets, Targets::Namespaces(vec!["a".into()]));

        // Without our apply entry: every data key, none of the other labels.
        secret.metadata.managed_fields = None;
        let content = prior_content(secret, "regcred");
        assert_eq!(
            content.data.keys().collect::<Vec<_>>(),
            [".dockerconfigjson", "extra"]
        );
        assert!(content.labels.is_empty());
        assert!(content.annotations.is_empty());
    }

    #[test]
    fn kubernetes_errors_map_to_nack_codes() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: message.into(),
                reason: "Reason".into(),
                ..Default::default()
            }))
        };
        let cases = [
            (api(403, "forbidden"), ErrorCode::Forbidden, true),
            (
                api(404, "namespaces \"x\" not found"),
                ErrorCode::NamespaceMissing,
                true,
            ),
            (api(409, "conflict with kubectl"), ErrorCode::Conflict, true),
            (api(422, "field is immutable"), ErrorCode::Immutable, false),
            (api(422, "data: invalid"), ErrorCode::Invalid, false),
            (api(429, "slow down"), ErrorCode::KubernetesUnavailable, true),
            (api(503, "unavailable"), ErrorCode::KubernetesUnavailable, true),
        ];
        for (error, code, retryable) in cases {
            let refusal = refusal("apply Secret a/regcred", &error);
            assert_eq!(
                (refusal.code, refusal.retryable),
                (code, retryable),
                "{}",
                refusal.message
            );
            assert!(refusal.message.starts_with("apply Secret a/regcred: "));
        }
    }

    #[test]
    fn meaningful_changes_ignore_foreign_metadata() {
        let ((_, _), entry) = observe(secret_for(&desired(CreationPolicy::Owner), "a")).expect("named");
        let before = entry.observed;
        let mut after = before.clone();
        after.labels.insert("someone".into(), "else".into());
        assert!(!meaningful_change(&before, &after));
        after.annotations.insert(SHA256_ANNOTATION.into(), "00".into());
        assert!(meaningful_change(&before, &after));
        let mut after = before.clone();
        after.data.insert(".dockerconfigjson".into(), [0; 32]);
        assert!(meaningful_change(&before, &after));
    }
}
