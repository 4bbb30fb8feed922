//! Pure reconciliation: what the hub wants (`DesiredSecret`) and what the cluster holds
//! (`ObservedSecret`) in, one `Plan` per item (writes, priors, undos) or a [`Refusal`] out.
//! Invariant: no IO, no async, no logging; `kube/` gathers the observations and runs the plans.
//!
//! # Ownership
//! A Secret is *ours for key K* when it carries the label `app.kubernetes.io/managed-by: keyfleet`
//! and the annotation `keyfleet.io/fleet-secret: K`. Anything else is foreign: it is never written,
//! except by creationPolicy Merge, which adds only our keys (server-side apply without force) and
//! then marks the Secret with our label and annotations so a restarted agent finds it again.
//!
//! # Decisions
//! - **Force.** Server-side apply uses `force` only when the Secret is already ours for the key
//!   (an update or a drift repair of our own object: the fields in our apply configuration are
//!   ours by definition). Creating a Secret or merging into a foreign one never forces, so a field
//!   owned by another manager is a `Conflict` NACK, never an overwrite.
//! - **Retain** (and any removal of a creationPolicy Orphan Secret) *releases* the Secret: our
//!   label and `keyfleet.io/*` annotations are removed and the data stays. A released Secret is no
//!   longer in the applied set, so a restarted agent does not report it and the hub does not have
//!   to remove it again.
//! - **Delete** deletes a Secret we created (Owner). For a Merge Secret it removes only the fields
//!   we own (server-side apply of an empty configuration), never the Secret.
//! - **Immutable.** An immutable Secret whose data or type differs cannot be updated: `Immutable`
//!   NACK, the Secret is left alone.
//! - **Stale targets.** When a payload stops targeting a namespace or renames its Secret, the
//!   Secrets ours for the key that are no longer targeted are cleaned up by its deletionPolicy.
//! - **All or nothing per item.** Every refusal is found before any plan is returned. One call
//!   (`plan_upsert`, `plan_removal`) gives every write of the item together with its
//!   location's `Prior` (what it held) and the write that puts it back (`Step::undo`), so that
//!   when a write fails midway the ones already made are undone: a Secret the item created is
//!   deleted, fields it merged into a foreign Secret are removed, and a Secret that was ours gets
//!   its previous content applied again. An Apply carries its payload (`Action::Apply`).

mod applied;
mod model;

pub(crate) use self::applied::{applied_state, targets_need_namespaces};
pub use self::model::{
    Applied, CreationPolicy, DeletionPolicy, DesiredSecret, Digest, DriftKind, ErrorCode, FIELD_MANAGER,
    FLEET_SECRET_ANNOTATION, FLEET_SECRET_LABEL, KEY_VAULT_VERSIONS_ANNOTATION, MANAGED_BY_LABEL, Operator,
    REVISION_ANNOTATION, Refusal, Requirement, SHA256_ANNOTATION, SYNCED_AT_ANNOTATION, SecretBytes,
    Selector, TARGETS_ANNOTATION, Targets, fleet_secret_label_value,
};
pub(crate) use self::model::{
    CREATION_POLICY_ANNOTATION, MANAGED_BY_VALUE, Namespace, ObservedSecret, Ownership,
    RESERVED_ANNOTATION_PREFIX, value_digest,
};

use std::collections::BTreeSet;
use std::sync::Arc;

/// A write to make. An Apply carries the payload it writes, so none can be built without one.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Server-side apply `payload` into `namespace`.
    Apply {
        /// Namespace.
        namespace: String,
        /// Force conflicts (only when the Secret is already ours for the key).
        force: bool,
        /// What is written (the desired payload, or a prior content put back).
        payload: Arc<DesiredSecret>,
    },
    /// Delete a Secret we created.
    Delete {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// Remove our label and annotations, keep the data (Retain, Orphan).
    Release {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// Remove only the fields we own from a Merge Secret (Delete of a Merge).
    RemoveFields {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
}

impl Action {
    /// Server-side apply of `payload` into `namespace`.
    pub(crate) fn apply(payload: &Arc<DesiredSecret>, namespace: &str, force: bool) -> Self {
        Self::Apply {
            namespace: namespace.to_owned(),
            force,
            payload: payload.clone(),
        }
    }

    /// The namespace and Secret name the action writes (an Apply writes its payload's Secret).
    pub(crate) fn location(&self) -> (&str, &str) {
        match self {
            Self::Apply {
                namespace, payload, ..
            } => (namespace, &payload.secret_name),
            Self::Delete { namespace, name }
            | Self::Release { namespace, name }
            | Self::RemoveFields { namespace, name } => (namespace, name),
        }
    }
}

/// Two Applies are equal when they write the same payload (same key, revision, Secret name and
/// digest; the digest covers the data) the same way; secret bytes are never compared.
impl PartialEq for Action {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Apply {
                    namespace,
                    force,
                    payload,
                },
                Self::Apply {
                    namespace: other_namespace,
                    force: other_force,
                    payload: other_payload,
                },
            ) => {
                namespace == other_namespace
                    && force == other_force
                    && (
                        payload.key.as_str(),
                        payload.revision,
                        payload.secret_name.as_str(),
                        payload.sha256,
                    ) == (
                        other_payload.key.as_str(),
                        other_payload.revision,
                        other_payload.secret_name.as_str(),
                        other_payload.sha256,
                    )
            }
            (
                Self::Delete { namespace, name },
                Self::Delete {
                    namespace: ns,
                    name: other,
                },
            )
            | (
                Self::Release { namespace, name },
                Self::Release {
                    namespace: ns,
                    name: other,
                },
            )
            | (
                Self::RemoveFields { namespace, name },
                Self::RemoveFields {
                    namespace: ns,
                    name: other,
                },
            ) => (namespace, name) == (ns, other),
            _ => false,
        }
    }
}

impl Eq for Action {}

/// The namespaces a payload writes into: the named ones (each must exist, else a retryable
/// `NamespaceMissing`) or those the selector matches (possibly none).
pub(crate) fn resolve_namespaces(targets: &Targets, cluster: &[Namespace]) -> Result<Vec<String>, Refusal> {
    match targets {
        Targets::Namespaces(names) => {
            let existing: BTreeSet<&str> = cluster.iter().map(|ns| ns.name.as_str()).collect();
            let missing: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|name| !existing.contains(name))
                .collect();
            if missing.is_empty() {
                Ok(names.clone())
            } else {
                Err(Refusal::new(
                    ErrorCode::NamespaceMissing,
                    true,
                    format!("namespace(s) not found: {}", missing.join(", ")),
                ))
            }
        }
        Targets::Selector(selector) => Ok(cluster
            .iter()
            .filter(|ns| selector.matches(&ns.labels))
            .map(|ns| ns.name.clone())
            .collect()),
    }
}

fn data_and_type_match(desired: &DesiredSecret, observed: &ObservedSecret) -> bool {
    let type_ok =
        desired.creation == CreationPolicy::Merge || observed.effective_type() == desired.secret_type;
    type_ok
        && desired
            .data
            .iter()
            .all(|(key, value)| observed.data.get(key) == Some(value.digest()))
}

/// Whether `observed` holds everything we would write for `desired` (extra foreign keys, labels
/// and annotations are not ours and do not count).
pub(crate) fn is_up_to_date(desired: &DesiredSecret, observed: &ObservedSecret) -> bool {
    let immutable_ok = desired.creation == CreationPolicy::Merge || !desired.immutable || observed.immutable;
    observed.is_ours_for(&desired.key)
        && data_and_type_match(desired, observed)
        && immutable_ok
        && desired
            .full_labels()
            .iter()
            .all(|(k, v)| observed.labels.get(k) == Some(v))
        // The fleet-secret label: absent is fine (an older agent wrote the Secret; the next write
        // adds it), another value is an edit of ours.
        && observed
            .labels
            .get(FLEET_SECRET_LABEL)
            .is_none_or(|value| *value == model::fleet_secret_label_value(&desired.key))
        && desired
            .full_annotations()
            .iter()
            .all(|(k, v)| observed.annotations.get(k) == Some(v))
}

fn cleanup(observed: &ObservedSecret, policy: DeletionPolicy) -> Option<Action> {
    let Ownership::Ours { creation, .. } = observed.ownership() else {
        return None;
    };
    let namespace = observed.namespace.clone();
    let name = observed.name.clone();
    Some(match (creation, policy) {
        (CreationPolicy::Owner, DeletionPolicy::Delete) => Action::Delete { namespace, name },
        (CreationPolicy::Merge, DeletionPolicy::Delete) => Action::RemoveFields { namespace, name },
        (CreationPolicy::Orphan, _) | (_, DeletionPolicy::Retain) => Action::Release { namespace, name },
    })
}

/// Plans an upsert: its writes, each location's prior and each write's undo, or the refusal.
/// `namespaces` are the resolved targets; `observed` holds the Secrets named
/// `desired.secret_name` in those namespaces and every Secret ours for `desired.key`; `held` is the
/// key's payload held in memory.
pub(crate) fn plan_upsert(
    desired: &Arc<DesiredSecret>,
    namespaces: &[String],
    observed: &[ObservedSecret],
    held: Option<&Arc<DesiredSecret>>,
) -> Result<Plan, Refusal> {
    let actions = upsert_actions(desired, namespaces, observed)?;
    Ok(plan(&desired.key, actions, observed, held))
}

/// The writes of an upsert, in order; every refusal is found before the first one is returned.
fn upsert_actions(
    desired: &Arc<DesiredSecret>,
    namespaces: &[String],
    observed: &[ObservedSecret],
) -> Result<Vec<Action>, Refusal> {
    let mut actions = Vec::new();
    for namespace in namespaces {
        let existing = observed
            .iter()
            .find(|o| &o.namespace == namespace && o.name == desired.secret_name);
        let location = format!("{namespace}/{}", desired.secret_name);
        let Some(existing) = existing else {
            if desired.creation == CreationPolicy::Merge {
                return Err(Refusal::new(
                    ErrorCode::Invalid,
                    true,
                    format!("creationPolicy Merge needs an existing Secret {location}"),
                ));
            }
            actions.push(Action::apply(desired, namespace, false));
            continue;
        };
        match existing.ownership() {
            Ownership::Ours { key, .. } if key == desired.key => {
                if is_up_to_date(desired, existing) {
                    continue;
                }
                if existing.immutable && !data_and_type_match(desired, existing) {
                    return Err(Refusal::new(
                        ErrorCode::Immutable,
                        false,
                        format!("Secret {location} is immutable and its data differs"),
                    ));
                }
                actions.push(Action::apply(desired, namespace, true));
            }
            Ownership::Ours { key, .. } => {
                return Err(Refusal::new(
                    ErrorCode::NotOwned,
                    true,
                    format!("Secret {location} is managed by keyfleet for fleet secret {key}"),
                ));
            }
            Ownership::Foreign if desired.creation == CreationPolicy::Merge => {
                if existing.immutable {
                    return Err(Refusal::new(
                        ErrorCode::Immutable,
                        false,
                        format!("Secret {location} is immutable; cannot merge into it"),
                    ));
                }
                actions.push(Action::apply(desired, namespace, false));
            }
            Ownership::Foreign => {
                return Err(Refusal::new(
                    ErrorCode::NotOwned,
                    true,
                    format!(
                        "Secret {location} exists and is not managed by keyfleet \
                         (creationPolicy {})",
                        desired.creation.as_str()
                    ),
                ));
            }
        }
    }
    for stale in observed.iter().filter(|o| {
        o.is_ours_for(&desired.key) && !(o.name == desired.secret_name && namespaces.contains(&o.namespace))
    }) {
        actions.extend(cleanup(stale, desired.deletion));
    }
    Ok(actions)
}

/// Plans the removal of `key`: every Secret ours for it is deleted or released per policy, each
/// with its prior and undo. `held` is the key's payload held in memory.
pub(crate) fn plan_removal(
    key: &str,
    policy: DeletionPolicy,
    observed: &[ObservedSecret],
    held: Option<&Arc<DesiredSecret>>,
) -> Plan {
    let actions = observed
        .iter()
        .filter(|o| o.is_ours_for(key))
        .filter_map(|o| cleanup(o, policy))
        .collect();
    plan(key, actions, observed, held)
}

/// What a location held before an item's first write there: what a rollback puts back.
#[derive(Debug, Clone)]
pub(crate) enum Prior {
    /// No Secret of that name: a rollback deletes what the item created.
    Absent,
    /// A Secret not ours for the key (only creationPolicy Merge writes into one): a rollback
    /// removes the fields the item merged in.
    Foreign,
    /// Ours for the key: a rollback applies this content again.
    Ours(Arc<DesiredSecret>),
}

/// Everything one item does, decided by one call: its writes in order, each with the prior of its
/// location and the write that puts that prior back.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// The writes, in the order they are made.
    pub steps: Vec<Planned>,
}

impl Plan {
    /// The writes alone, in order (for writes that are not rolled back: selector follow-ups).
    pub(crate) fn into_actions(self) -> Vec<Action> {
        self.steps
            .into_iter()
            .map(|planned| match planned {
                Planned::Ready(step) => step.action,
                Planned::ReadBack(action) => action,
            })
            .collect()
    }
}

/// One write of a `Plan`.
#[derive(Debug, Clone)]
pub(crate) enum Planned {
    /// The location's prior is known from the observation and the payload held in memory.
    Ready(Step),
    /// The location is ours for the key, but no payload in memory is known to be its content
    /// (after a restart, or after drift): its content is read back from the cluster before the
    /// item's first write, and [`Step::new`] completes the step.
    ReadBack(Action),
}

/// A write, what its location held before, and the write that puts that back.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// The write.
    pub action: Action,
    /// What its location held before the item's first write.
    pub prior: Prior,
    /// The write that puts `prior` back. Undoing is idempotent: it also serves when the action
    /// may or may not have happened.
    pub undo: Action,
}

impl Step {
    /// The step writing `action` where `prior` was, with its undo: delete what the item created,
    /// remove the fields it merged, or apply the prior content again (forced, since those fields
    /// were ours, except after a Delete, which recreates).
    pub(crate) fn new(action: Action, prior: Prior) -> Self {
        let (namespace, name) = action.location();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        let undo = match &prior {
            Prior::Absent => Action::Delete { namespace, name },
            Prior::Foreign => Action::RemoveFields { namespace, name },
            Prior::Ours(content) => Action::Apply {
                namespace,
                force: !matches!(action, Action::Delete { .. }),
                payload: content.clone(),
            },
        };
        Self { action, prior, undo }
    }
}

/// Pairs each action of `key`'s item with its prior: known from `observed` and the payload `held`
/// in memory (when the Secret still holds it), else to be read back.
fn plan(
    key: &str,
    actions: Vec<Action>,
    observed: &[ObservedSecret],
    held: Option<&Arc<DesiredSecret>>,
) -> Plan {
    let steps = actions
        .into_iter()
        .map(|action| {
            let (namespace, name) = action.location();
            let prior = match observed
                .iter()
                .find(|o| o.namespace == namespace && o.name == name)
            {
                None => Prior::Absent,
                Some(existing) if !existing.is_ours_for(key) => Prior::Foreign,
                Some(existing) => match held {
                    Some(held) if held.secret_name == name && is_up_to_date(held, existing) => {
                        Prior::Ours(held.clone())
                    }
                    _ => return Planned::ReadBack(action),
                },
            };
            Planned::Ready(Step::new(action, prior))
        })
        .collect();
    Plan { steps }
}

/// Drift found on one Secret we applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drift {
    /// What happened.
    pub kind: DriftKind,
    /// The repair, if one is possible (a deleted Merge target or an immutable Secret whose data
    /// changed cannot be repaired by the agent).
    pub repair: Option<Action>,
}

/// Compares a Secret we applied for `desired` in `namespace` with what the cluster now holds.
pub(crate) fn check_drift(
    desired: &Arc<DesiredSecret>,
    namespace: &str,
    observed: Option<&ObservedSecret>,
) -> Option<Drift> {
    let Some(observed) = observed else {
        let repair =
            (desired.creation != CreationPolicy::Merge).then(|| Action::apply(desired, namespace, false));
        return Some(Drift {
            kind: DriftKind::Deleted,
            repair,
        });
    };
    if is_up_to_date(desired, observed) {
        return None;
    }
    let repair = (!observed.immutable || data_and_type_match(desired, observed))
        .then(|| Action::apply(desired, namespace, true));
    Some(Drift {
        kind: DriftKind::Modified,
        repair,
    })
}

#[cfg(test)]
mod tests;
