//! The writer: one plan per item (`reconcile::plan_upsert`, `plan_removal`), its writes made in
//! order and, when one fails, the ones made put back in reverse order before the item is NACKed.
//! Invariant: no item is half-applied (all of it, or nothing new, or a NACK saying what is left).
//!
//! # Writes
//! - Apply: server-side apply, field manager `keyfleet-agent`, `force` only when the Secret is
//!   already ours for the key (see `reconcile`). Owner/Orphan write data, type, labels,
//!   annotations and `immutable`; Merge writes data, labels and annotations only.
//! - Labels `app.kubernetes.io/managed-by: keyfleet` and `keyfleet.io/fleet-secret: <key>`;
//!   annotations `keyfleet.io/*`, among them `synced-at` (the time of this write) and
//!   `key-vault-versions` (when the hub sent them), which are never compared (see `reconcile`).
//! - Release (Retain): JSON merge patch removing our labels and annotations; the data stays (and
//!   stays recorded as applied by `keyfleet-agent` in managedFields).
//! - RemoveFields (Delete of a Merge): server-side apply of an empty configuration, which drops
//!   exactly the fields we own.
//! - Delete (Delete of an Owner): DELETE with the Secret's uid as precondition.
//!
//! # Items are all or nothing
//! An upsert or a removal touches several namespaces one write at a time. Before the first write,
//! the plan knows the prior of every location and the write that puts it back: nothing there, a
//! foreign Secret, or ours with a known content — the payload held in memory when the Secret still
//! holds it, else the content read back from the cluster (`read_back`: one GET; the fields our
//! managedFields entry owns). When a write fails, the writes already made (and the failed one,
//! when the API's answer leaves open whether it happened) are undone in reverse order and the
//! item is NACKed with the reason and what was rolled back. A rollback that fails too is named in the NACK (then
//! retryable), logged and counted (`rollback_failures`); the key leaves the applied state, so the
//! hub sends it again and that attempt converges.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};

use super::{
    Held, KubeCluster, Occurrence, Reason, is_ours, observe, ours_for, refusal, resource_version,
    zeroize_secret,
};
use crate::cluster::ClusterEvent;
use crate::reconcile::{
    self, Action, CREATION_POLICY_ANNOTATION, CreationPolicy, DeletionPolicy, DesiredSecret, DriftKind,
    ErrorCode, FIELD_MANAGER, FLEET_SECRET_ANNOTATION, FLEET_SECRET_LABEL, KEY_VAULT_VERSIONS_ANNOTATION,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObservedSecret, Prior, REVISION_ANNOTATION, Refusal,
    SHA256_ANNOTATION, SYNCED_AT_ANNOTATION, Step, TARGETS_ANNOTATION, Targets,
};

/// The Secret we apply for `desired` into `namespace` at `synced_at` (RFC 3339; data copied:
/// zeroize it after use).
pub(super) fn secret_for(desired: &DesiredSecret, namespace: &str, synced_at: &str) -> Secret {
    let merge = desired.creation == CreationPolicy::Merge;
    Secret {
        metadata: ObjectMeta {
            name: Some(desired.secret_name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(desired.written_labels()),
            annotations: Some(desired.written_annotations(synced_at)),
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

/// Most `ApplyFailed` Events one refused item posts (one per target Secret, the first ones).
const MAX_FAILURE_EVENTS: usize = 20;

/// What an upsert wrote: the namespaces it applied the Secret in, and the drift it repaired.
struct Written {
    applied: Vec<String>,
    repaired: Vec<(String, DriftKind)>,
}

/// "modified" or "deleted", for Event notes.
pub(super) fn drift_word(kind: DriftKind) -> &'static str {
    match kind {
        DriftKind::Modified => "modified",
        DriftKind::Deleted => "deleted",
    }
}

/// The time written in [`SYNCED_AT_ANNOTATION`]: now, RFC 3339, UTC, whole seconds.
pub(super) fn synced_at_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
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

/// Who holds a Secret right before we delete it (with its resourceVersion when present).
enum Current {
    Absent,
    /// Ours, with its uid (the delete's precondition).
    Ours(Option<String>, u64),
    Foreign(u64),
}

impl KubeCluster {
    /// [`crate::cluster::Cluster::upsert`]: plans the item, reads back the priors it needs,
    /// writes; then queues the item's Events (`Applied` per Secret written, `DriftRepaired` per
    /// Secret repaired after a resync, `ApplyFailed` per target Secret on a refusal).
    #[tracing::instrument(name = "agent.apply", skip_all, fields(key = %desired.key, revision = desired.revision))]
    pub(super) async fn upsert_item(&self, desired: DesiredSecret) -> Result<(), Refusal> {
        let (key, secret, revision) = (desired.key.clone(), desired.secret_name.clone(), desired.revision);
        let sha256 = hex::encode(&desired.sha256[..6]);
        let mut targets = Vec::new();
        match self.upsert_writes(desired, &mut targets).await {
            Ok(Written { applied, repaired }) => {
                for namespace in applied {
                    let note =
                        format!("Applied revision {revision} (sha256 {sha256}…) of fleet secret {key}");
                    self.record_event(Occurrence::new(&namespace, &secret, Reason::Applied, note));
                }
                for (namespace, kind) in repaired {
                    let note = format!(
                        "The Secret was {}; wrote revision {revision} of fleet secret {key} back",
                        drift_word(kind)
                    );
                    self.record_event(Occurrence::new(&namespace, &secret, Reason::DriftRepaired, note));
                }
                Ok(())
            }
            Err(refusal) => {
                let note = format!(
                    "Fleet secret {key} revision {revision} not applied ({:?}): {}",
                    refusal.code, refusal.message
                );
                for namespace in targets.iter().take(MAX_FAILURE_EVENTS) {
                    self.record_event(Occurrence::new(
                        namespace,
                        &secret,
                        Reason::ApplyFailed,
                        note.clone(),
                    ));
                }
                Err(refusal)
            }
        }
    }

    /// The writes of an upsert. `targets` receives the namespaces a refusal's Events go to (those
    /// of the item that exist and that the agent may write) as soon as they are known.
    async fn upsert_writes(
        &self,
        desired: DesiredSecret,
        targets: &mut Vec<String>,
    ) -> Result<Written, Refusal> {
        self.wait_synced()
            .await
            .map_err(|error| Refusal::new(ErrorCode::KubernetesUnavailable, true, error.to_string()))?;
        let _guard = self.write_lock.lock().await;
        let cluster_namespaces = self.cluster_namespaces().await?;
        let allowed = |namespace: &String| {
            self.settings
                .allowed_namespaces
                .as_ref()
                .is_none_or(|allowed| allowed.contains(namespace))
        };
        if let Targets::Namespaces(named) = &desired.targets {
            targets.extend(
                named
                    .iter()
                    .filter(|name| cluster_namespaces.iter().any(|ns| &&ns.name == name))
                    .filter(|name| allowed(name))
                    .cloned(),
            );
        }
        let namespaces = reconcile::resolve_namespaces(&desired.targets, &cluster_namespaces)?;
        targets.clear();
        targets.extend(namespaces.iter().filter(|name| allowed(name)).cloned());
        self.check_allowed(&desired, &namespaces)?;
        let observed = self.observe_targets(&desired, &namespaces).await?;
        let desired = Arc::new(desired);
        let key = desired.key.clone();
        let held_payload = self.state().held.get(&key).map(|held| held.desired.clone());
        let plan = reconcile::plan_upsert(&desired, &namespaces, &observed, held_payload.as_ref())?;
        let steps = self.read_back_priors(&key, plan).await?;
        let applied: Vec<String> = steps
            .iter()
            .filter_map(|step| match &step.action {
                Action::Apply { namespace, .. } => Some(namespace.clone()),
                _ => None,
            })
            .collect();
        let previous = self.state().held.insert(
            key.clone(),
            Held {
                desired: desired.clone(),
                namespaces: namespaces.clone(),
            },
        );
        if let Err((refusal, rollback)) = self.write_item(steps).await {
            self.after_failed_item(&key, previous, &rollback, true);
            return Err(with_rollback(refusal, &rollback));
        }
        let drifted = self.state().stale.remove(&key).unwrap_or_default();
        for (namespace, kind) in &drifted {
            self.count_drift(*kind);
            tracing::info!(%key, %namespace, ?kind, revision = desired.revision, "repaired drift after resync");
            let event = ClusterEvent::Drift {
                key: key.clone(),
                namespace: namespace.clone(),
                kind: *kind,
                revision: desired.revision,
            };
            if self.events.try_send(event).is_err() {
                tracing::warn!(%key, "drift report dropped: queue full");
            }
        }
        tracing::debug!(%key, revision = desired.revision, namespaces = namespaces.len(), "applied");
        Ok(Written {
            applied,
            repaired: drifted,
        })
    }

    /// [`crate::cluster::Cluster::remove`]: plans the removal, reads back the priors it needs, writes.
    #[tracing::instrument(name = "agent.remove", skip_all, fields(key = %key, policy = ?policy))]
    pub(super) async fn remove_item(&self, key: &str, policy: DeletionPolicy) -> Result<(), Refusal> {
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
        let held_payload = self.state().held.get(key).map(|held| held.desired.clone());
        let plan = reconcile::plan_removal(key, policy, &observed, held_payload.as_ref());
        let steps = self.read_back_priors(key, plan).await?;
        let previous = {
            let mut state = self.state();
            state.stale.remove(key);
            state.held.remove(key)
        };
        if let Err((refusal, rollback)) = self.write_item(steps).await {
            // The key is (partly) still there: it stays in the applied state, so the hub keeps
            // asking for its removal.
            self.after_failed_item(key, previous, &rollback, false);
            return Err(with_rollback(refusal, &rollback));
        }
        tracing::debug!(%key, ?policy, secrets = observed.len(), "removed");
        Ok(())
    }

    /// Refuses targets the agent may not write: its own credential, namespaces off the allow-list.
    pub(super) fn check_allowed(
        &self,
        desired: &DesiredSecret,
        namespaces: &[String],
    ) -> Result<(), Refusal> {
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
    pub(super) async fn observe_targets(
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

    /// Makes one write: an Apply writes its payload, the others clean up what we own.
    pub(super) async fn execute(&self, action: Action) -> Result<(), Refusal> {
        match action {
            Action::Apply {
                namespace,
                force,
                payload,
            } => self.apply(&payload, &namespace, force).await,
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
                labels.insert(FLEET_SECRET_LABEL.into(), serde_json::Value::Null);
                let mut annotations = serde_json::Map::new();
                for key in [
                    REVISION_ANNOTATION,
                    SHA256_ANNOTATION,
                    FLEET_SECRET_ANNOTATION,
                    CREATION_POLICY_ANNOTATION,
                    TARGETS_ANNOTATION,
                    SYNCED_AT_ANNOTATION,
                    KEY_VAULT_VERSIONS_ANNOTATION,
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

    /// Server-side applies `desired` into `namespace`.
    async fn apply(&self, desired: &DesiredSecret, namespace: &str, force: bool) -> Result<(), Refusal> {
        let mut secret = secret_for(desired, namespace, &synced_at_now());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        let result = self
            .secrets(namespace)
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

    /// Makes an item's writes in order. When one fails, puts back what was written and returns
    /// the refusal with what the rollback did.
    async fn write_item(&self, steps: Vec<Step>) -> Result<(), (Refusal, Rollback)> {
        let mut made: Vec<(Prior, Action)> = Vec::new();
        for Step { action, prior, undo } in steps {
            if let Err(refusal) = self.execute(action).await {
                if may_have_happened(&refusal) {
                    made.push((prior, undo));
                }
                let rollback = self.roll_back(made).await;
                return Err((refusal, rollback));
            }
            made.push((prior, undo));
        }
        Ok(())
    }

    /// Puts back what the writes made had replaced (each its prior, by its undo), the last one
    /// first; every undo is tried even when one fails.
    async fn roll_back(&self, made: Vec<(Prior, Action)>) -> Rollback {
        let mut undone = Vec::new();
        let mut failures = Vec::new();
        for (prior, undo) in made.into_iter().rev() {
            let (namespace, name) = undo.location();
            let location = format!("{namespace}/{name}");
            match self.execute(undo).await {
                Ok(()) => {
                    let held = match &prior {
                        Prior::Absent => "nothing".to_owned(),
                        Prior::Foreign => "a foreign Secret".to_owned(),
                        Prior::Ours(content) => format!("revision {}", content.revision),
                    };
                    tracing::debug!(%location, %held, "put back what the location held");
                    undone.push(location);
                }
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
}
