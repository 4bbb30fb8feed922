//! The Kubernetes side: [`KubeCluster`] implements [`Cluster`] with `kube` (server-side apply of
//! the desired Secrets, a watcher on the Secrets it manages) and [`KubeCredentialStore`] keeps the
//! credential. Invariant: it writes only Secrets ours for the key at hand, or the one a payload names.
//!
//! # What the agent touches
//! Only Secrets labelled `app.kubernetes.io/managed-by: keyfleet` with our `keyfleet.io/*`
//! annotations, and the Secret a desired payload names (created when absent; merged into only
//! under creationPolicy Merge). Everything else is read at most (to find out that it is not ours).
//! Its own credential Secret is never a valid target.
//!
//! # Layout
//! - this file: settings, errors and their NACK mapping, the state shared by the watcher and the
//!   writer (the value-free cache of our Secrets, the payloads held in memory), [`Cluster`].
//! - `watch`: the drift watcher, the periodic audit and the namespace cache.
//! - `apply`: the writer: one plan per item, executed in order, rolled back on failure.
//! - `read_back`: the prior content of our Secrets whose payload is not in memory (for rollback).
//! - `credential`: [`KubeCredentialStore`].
//! - `events`: the Kubernetes Events on the Secrets written (Applied, DriftRepaired, ApplyFailed),
//!   aggregated and posted by their own task, never in the way of a write.

mod apply;
mod credential;
mod events;
mod read_back;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeroize::Zeroize as _;

pub use self::credential::KubeCredentialStore;
pub use self::events::REPORTING_CONTROLLER;
use self::events::{EventQueue, Occurrence, Reason};
use crate::cluster::{Cluster, ClusterEvent};
use crate::metrics::Metrics;
use crate::reconcile::{
    self, Applied, DeletionPolicy, DesiredSecret, DriftKind, ErrorCode, Namespace, ObservedSecret, Ownership,
    Refusal,
};
use crate::text::truncate_utf8;

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
            truncate_utf8(&mut message, 300);
            format!("{} {}: {message}", status.code, status.reason)
        }
        kube::Error::SerdeError(_) => "cannot decode the response".into(),
        kube::Error::HyperError(_) | kube::Error::Service(_) => "transport error".into(),
        other => {
            let mut text = other.to_string();
            truncate_utf8(&mut text, 200);
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
    /// `reportingInstance` of the Events the agent posts (the pod name).
    pub instance: String,
    /// Per (Secret, reason, note): at most one Event write per this period; occurrences in
    /// between are counted into the Event's series.
    pub event_cooldown: Duration,
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
            instance: "keyfleet-agent".into(),
            event_cooldown: Duration::from_secs(60),
        }
    }
}

type Location = (String, String);

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
    synced: tokio::sync::watch::Sender<bool>,
    events: mpsc::Sender<ClusterEvent>,
    metrics: Metrics,
    namespaces: Mutex<Option<(Instant, Arc<Vec<Namespace>>)>>,
    event_queue: EventQueue,
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
            synced: tokio::sync::watch::channel(false).0,
            events,
            metrics,
            namespaces: Mutex::new(None),
            event_queue: EventQueue::new(),
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
    pub(crate) fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
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

fn zeroize_secret(secret: &mut Secret) {
    if let Some(data) = secret.data.as_mut() {
        for value in data.values_mut() {
            value.0.zeroize();
        }
    }
}

impl Cluster for KubeCluster {
    type Error = KubeError;

    async fn applied(&self) -> Result<BTreeMap<String, Applied>, KubeError> {
        self.wait_synced().await?;
        let observed: Vec<ObservedSecret> = self
            .state()
            .cache
            .values()
            .map(|entry| entry.observed.clone())
            .collect();
        // A recorded namespace selector is resolved against the namespaces of now (see
        // `reconcile::applied`): list them only when some key needs them.
        let cluster_namespaces = if reconcile::targets_need_namespaces(&observed) {
            self.cluster_namespaces()
                .await
                .map_err(|refusal| KubeError::Api {
                    what: "list namespaces (to check the targets of managed secrets)".into(),
                    reason: refusal.message,
                })?
        } else {
            Arc::default()
        };
        let mut applied = reconcile::applied_state(&observed, &cluster_namespaces);
        let state = self.state();
        applied.retain(|key, _| !state.stale.contains_key(key));
        self.metrics
            .applied_keys
            .set(i64::try_from(applied.len()).unwrap_or(i64::MAX));
        Ok(applied)
    }

    async fn upsert(&self, desired: DesiredSecret) -> Result<(), Refusal> {
        self.upsert_item(desired).await
    }

    async fn remove(&self, key: &str, policy: DeletionPolicy) -> Result<(), Refusal> {
        self.remove_item(key, policy).await
    }
}
