//! Pure reconciliation: what the hub wants (`DesiredSecret`) and what the cluster holds
//! (`ObservedSecret`) in, the writes to make (`Action`) or the reason to refuse (`Refusal`) out.
//!
//! No IO, no async, no logging: `kube.rs` gathers the observations and executes the actions.
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
//! - **All or nothing per item.** Every refusal is found before any action is returned. Before
//!   the first write, every location the item touches gets its [`Prior`] (what it held), so that
//!   when a write fails midway the ones already made are put back ([`undo`]): a Secret the item
//!   created is deleted, fields it merged into a foreign Secret are removed, and a Secret that
//!   was ours gets its previous content applied again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Label marking Secrets written by keyfleet.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "keyfleet";
/// Annotation: revision applied.
pub const REVISION_ANNOTATION: &str = "keyfleet.io/revision";
/// Annotation: hex `payload_sha256` of the applied payload.
pub const SHA256_ANNOTATION: &str = "keyfleet.io/sha256";
/// Annotation: the payload key (FleetSecret name).
pub const FLEET_SECRET_ANNOTATION: &str = "keyfleet.io/fleet-secret";
/// Annotation: the creationPolicy the Secret was written with (`Owner`, `Merge`, `Orphan`).
pub const CREATION_POLICY_ANNOTATION: &str = "keyfleet.io/creation-policy";
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "keyfleet-agent";
/// Prefix reserved for the agent's own annotations.
pub const RESERVED_ANNOTATION_PREFIX: &str = "keyfleet.io/";

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of a byte string (used for data values, so observations hold no secret bytes).
pub fn value_digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// What to do when the target Secret exists already (ESO creationPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreationPolicy {
    /// Create and own; a foreign Secret is never overwritten.
    Owner,
    /// Merge our keys into an existing Secret.
    Merge,
    /// Create, but never delete.
    Orphan,
}

impl CreationPolicy {
    /// Annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "Owner",
            Self::Merge => "Merge",
            Self::Orphan => "Orphan",
        }
    }

    /// Parses an annotation value; an absent or unknown value is `Owner`.
    pub fn from_annotation(value: Option<&str>) -> Self {
        match value {
            Some("Merge") => Self::Merge,
            Some("Orphan") => Self::Orphan,
            _ => Self::Owner,
        }
    }
}

/// What removal of a key does to the written Secrets (ESO deletionPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Leave the Secret in place, released.
    Retain,
    /// Delete what we own.
    Delete,
}

/// Kinds of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// Data, type, or our labels/annotations changed.
    Modified,
    /// The Secret was deleted.
    Deleted,
}

/// Why an item is refused (mirrors the wire `ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Failed validation.
    Invalid,
    /// Announced sha256 differs from the payload.
    DigestMismatch,
    /// A Secret of that name exists and is not ours.
    NotOwned,
    /// A target namespace does not exist.
    NamespaceMissing,
    /// The Kubernetes API refused for lack of permission.
    Forbidden,
    /// The Kubernetes API failed or did not answer.
    KubernetesUnavailable,
    /// Server-side apply field conflict.
    Conflict,
    /// The existing Secret is immutable and differs.
    Immutable,
    /// Anything else.
    Internal,
}

/// A refused item: code, whether the hub should retry, and a message without secret data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Reason.
    pub code: ErrorCode,
    /// Retry later.
    pub retryable: bool,
    /// Human-readable; names keys, namespaces and Secret names, never values.
    pub message: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(code: ErrorCode, retryable: bool, message: impl Into<String>) -> Self {
        Self {
            code,
            retryable,
            message: message.into(),
        }
    }
}

/// Secret bytes: zeroized on drop, redacted in `Debug`, with their digest for comparisons.
#[derive(Clone)]
pub struct SecretBytes {
    bytes: Zeroizing<Vec<u8>>,
    digest: Digest,
}

impl SecretBytes {
    /// Takes ownership of the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        let bytes = Zeroizing::new(bytes);
        let digest = value_digest(&bytes);
        Self { bytes, digest }
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.bytes.len())
    }
}

/// Selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Value in the set.
    In,
    /// Label absent or value not in the set.
    NotIn,
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
}

/// One set-based requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values for In/NotIn.
    pub values: Vec<String>,
}

/// A label selector (every requirement must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Exact matches.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` satisfy the selector (Kubernetes semantics).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|requirement| {
                let value = labels.get(&requirement.key);
                match requirement.operator {
                    Operator::In => value.is_some_and(|v| requirement.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !requirement.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Where a payload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Named namespaces (each must exist).
    Namespaces(Vec<String>),
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// One key as the hub wants it, validated (see `hub.rs`).
#[derive(Debug, Clone)]
pub struct DesiredSecret {
    /// FleetSecret name.
    pub key: String,
    /// Revision.
    pub revision: u64,
    /// `payload_sha256`, verified.
    pub sha256: Digest,
    /// Target Secret name.
    pub secret_name: String,
    /// Secret type.
    pub secret_type: String,
    /// Target namespaces.
    pub targets: Targets,
    /// Data.
    pub data: BTreeMap<String, SecretBytes>,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Extra annotations.
    pub annotations: BTreeMap<String, String>,
    /// creationPolicy.
    pub creation: CreationPolicy,
    /// deletionPolicy.
    pub deletion: DeletionPolicy,
    /// Write `immutable: true`.
    pub immutable: bool,
}

impl DesiredSecret {
    /// The labels we write: the payload's plus the managed-by label.
    pub fn full_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        labels
    }

    /// The annotations we write: the payload's plus ours.
    pub fn full_annotations(&self) -> BTreeMap<String, String> {
        let mut annotations = self.annotations.clone();
        annotations.insert(REVISION_ANNOTATION.into(), self.revision.to_string());
        annotations.insert(SHA256_ANNOTATION.into(), hex::encode(self.sha256));
        annotations.insert(FLEET_SECRET_ANNOTATION.into(), self.key.clone());
        annotations.insert(CREATION_POLICY_ANNOTATION.into(), self.creation.as_str().into());
        annotations
    }
}

/// A Secret as seen in the cluster, without its values (only their digests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSecret {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Type (empty means Opaque).
    pub secret_type: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Data key -> SHA-256 of the value.
    pub data: BTreeMap<String, Digest>,
    /// `immutable: true`.
    pub immutable: bool,
}

/// Who a Secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership<'a> {
    /// Not written by keyfleet.
    Foreign,
    /// Written by keyfleet for `key`.
    Ours {
        /// Payload key.
        key: &'a str,
        /// creationPolicy it was written with.
        creation: CreationPolicy,
    },
}

/// One applied key, as rebuilt from annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Revision.
    pub revision: u64,
    /// Payload digest.
    pub sha256: Digest,
}

impl ObservedSecret {
    /// Whose Secret this is.
    pub fn ownership(&self) -> Ownership<'_> {
        let labelled = self.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE);
        match self.annotations.get(FLEET_SECRET_ANNOTATION) {
            Some(key) if labelled => Ownership::Ours {
                key,
                creation: CreationPolicy::from_annotation(
                    self.annotations
                        .get(CREATION_POLICY_ANNOTATION)
                        .map(String::as_str),
                ),
            },
            _ => Ownership::Foreign,
        }
    }

    fn is_ours_for(&self, key: &str) -> bool {
        matches!(self.ownership(), Ownership::Ours { key: k, .. } if k == key)
    }

    /// The (revision, sha256) recorded in our annotations, when both parse.
    pub fn applied(&self) -> Option<Applied> {
        let revision = self.annotations.get(REVISION_ANNOTATION)?.parse().ok()?;
        let sha256 = hex::decode(self.annotations.get(SHA256_ANNOTATION)?).ok()?;
        Some(Applied {
            revision,
            sha256: sha256.try_into().ok()?,
        })
    }

    fn effective_type(&self) -> &str {
        if self.secret_type.is_empty() {
            "Opaque"
        } else {
            &self.secret_type
        }
    }
}

/// A write to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Server-side apply the desired Secret into `namespace`.
    Apply {
        /// Namespace.
        namespace: String,
        /// Force conflicts (only when the Secret is already ours for the key).
        force: bool,
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
    /// The namespace and Secret name the action writes (an Apply writes `secret_name`).
    pub fn location<'a>(&'a self, secret_name: &'a str) -> (&'a str, &'a str) {
        match self {
            Self::Apply { namespace, .. } => (namespace, secret_name),
            Self::Delete { namespace, name }
            | Self::Release { namespace, name }
            | Self::RemoveFields { namespace, name } => (namespace, name),
        }
    }
}

/// A namespace of the cluster with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// The namespaces a payload writes into: the named ones (each must exist, else a retryable
/// `NamespaceMissing`) or those the selector matches (possibly none).
pub fn resolve_namespaces(targets: &Targets, cluster: &[Namespace]) -> Result<Vec<String>, Refusal> {
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
pub fn is_up_to_date(desired: &DesiredSecret, observed: &ObservedSecret) -> bool {
    let immutable_ok = desired.creation == CreationPolicy::Merge || !desired.immutable || observed.immutable;
    observed.is_ours_for(&desired.key)
        && data_and_type_match(desired, observed)
        && immutable_ok
        && desired
            .full_labels()
            .iter()
            .all(|(k, v)| observed.labels.get(k) == Some(v))
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

/// Plans an upsert. `namespaces` are the resolved targets; `observed` holds the Secrets named
/// `desired.secret_name` in those namespaces and every Secret ours for `desired.key`.
pub fn plan_upsert(
    desired: &DesiredSecret,
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
            actions.push(Action::Apply {
                namespace: namespace.clone(),
                force: false,
            });
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
                actions.push(Action::Apply {
                    namespace: namespace.clone(),
                    force: true,
                });
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
                actions.push(Action::Apply {
                    namespace: namespace.clone(),
                    force: false,
                });
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

/// Plans the removal of `key`: every Secret ours for it is deleted or released per policy.
pub fn plan_removal(key: &str, policy: DeletionPolicy, observed: &[ObservedSecret]) -> Vec<Action> {
    observed
        .iter()
        .filter(|o| o.is_ours_for(key))
        .filter_map(|o| cleanup(o, policy))
        .collect()
}

/// What a location held before an item's first write there: what a rollback puts back.
#[derive(Debug, Clone)]
pub enum Prior {
    /// No Secret of that name: a rollback deletes what the item created.
    Absent,
    /// A Secret not ours for the key (only creationPolicy Merge writes into one): a rollback
    /// removes the fields the item merged in.
    Foreign,
    /// Ours for the key: a rollback applies this content again.
    Ours(Arc<DesiredSecret>),
}

/// Where a location's [`Prior`] comes from.
#[derive(Debug, Clone)]
pub enum PriorSource {
    /// Known from the observation and the payload held in memory.
    Known(Prior),
    /// Ours for the key, but no payload in memory is known to be its content (after a restart,
    /// or after drift): its content must be read back from the cluster before the first write.
    ReadBack,
}

/// For each action (same order), where the prior of the location it writes comes from.
/// `observed` is what the plan was made from; `previous` is the key's payload held in memory.
pub fn prior_sources(
    key: &str,
    secret_name: &str,
    actions: &[Action],
    observed: &[ObservedSecret],
    previous: Option<&Arc<DesiredSecret>>,
) -> Vec<PriorSource> {
    actions
        .iter()
        .map(|action| {
            let (namespace, name) = action.location(secret_name);
            let Some(existing) = observed
                .iter()
                .find(|o| o.namespace == namespace && o.name == name)
            else {
                return PriorSource::Known(Prior::Absent);
            };
            if !existing.is_ours_for(key) {
                return PriorSource::Known(Prior::Foreign);
            }
            match previous {
                Some(previous) if previous.secret_name == name && is_up_to_date(previous, existing) => {
                    PriorSource::Known(Prior::Ours(previous.clone()))
                }
                _ => PriorSource::ReadBack,
            }
        })
        .collect()
}

/// A write that puts one location back to its prior.
#[derive(Debug, Clone)]
pub enum Undo {
    /// Run this cleanup (`Delete` of what the item created, `RemoveFields` of what it merged).
    Cleanup(Action),
    /// Server-side apply `content` into `namespace` again.
    Restore {
        /// The prior content.
        content: Arc<DesiredSecret>,
        /// Namespace.
        namespace: String,
        /// Force conflicts: the fields were ours (not after a Delete, which recreates).
        force: bool,
    },
}

/// The write that undoes `action` (of a plan for `secret_name`) given its location's prior.
/// Undoing is idempotent: it also serves when the action may or may not have happened.
pub fn undo(action: &Action, secret_name: &str, prior: &Prior) -> Undo {
    let (namespace, name) = action.location(secret_name);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    match prior {
        Prior::Absent => Undo::Cleanup(Action::Delete { namespace, name }),
        Prior::Foreign => Undo::Cleanup(Action::RemoveFields { namespace, name }),
        Prior::Ours(content) => Undo::Restore {
            content: content.clone(),
            namespace,
            force: !matches!(action, Action::Delete { .. }),
        },
    }
}

/// Drift found on one Secret we applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// What happened.
    pub kind: DriftKind,
    /// The repair, if one is possible (a deleted Merge target or an immutable Secret whose data
    /// changed cannot be repaired by the agent).
    pub repair: Option<Action>,
}

/// Compares a Secret we applied for `desired` in `namespace` with what the cluster now holds.
pub fn check_drift(
    desired: &DesiredSecret,
    namespace: &str,
    observed: Option<&ObservedSecret>,
) -> Option<Drift> {
    let Some(observed) = observed else {
        let repair = (desired.creation != CreationPolicy::Merge).then(|| Action::Apply {
            namespace: namespace.into(),
            force: false,
        });
        return Some(Drift {
            kind: DriftKind::Deleted,
            repair,
        });
    };
    if is_up_to_date(desired, observed) {
        return None;
    }
    let repair = (!observed.immutable || data_and_type_match(desired, observed)).then(|| Action::Apply {
        namespace: namespace.into(),
        force: true,
    });
    Some(Drift {
        kind: DriftKind::Modified,
        repair,
    })
}

/// The applied state, rebuilt from the annotations of the Secrets ours: key -> (revision,
/// sha256). When a key's Secrets disagree (a write failed halfway), the lowest revision wins, so
/// the digest differs from the hub's and the hub sends the key again.
pub fn applied_state(observed: &[ObservedSecret]) -> BTreeMap<String, Applied> {
    let mut state: BTreeMap<String, Applied> = BTreeMap::new();
    for secret in observed {
        let Ownership::Ours { key, .. } = secret.ownership() else {
            continue;
        };
        let Some(applied) = secret.applied() else {
            continue;
        };
        state
            .entry(key.to_owned())
            .and_modify(|current| {
                if (applied.revision, applied.sha256) < (current.revision, current.sha256) {
                    *current = applied.clone();
                }
            })
            .or_insert(applied);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: Digest = [7; 32];

    fn desired(creation: CreationPolicy, deletion: DeletionPolicy) -> DesiredSecret {
        DesiredSecret {
            key: "regcred".into(),
            revision: 5,
            sha256: SHA,
            secret_name: "regcred".into(),
            secret_type: "Opaque".into(),
            targets: Targets::Namespaces(vec!["a".into(), "b".into()]),
            data: [("token".to_string(), SecretBytes::new(b"s3cr3t".to_vec()))].into(),
            labels: [("team".to_string(), "x".to_string())].into(),
            annotations: BTreeMap::new(),
            creation,
            deletion,
            immutable: false,
        }
    }

    fn owner() -> DesiredSecret {
        desired(CreationPolicy::Owner, DeletionPolicy::Delete)
    }

    /// The Secret exactly as the agent writes `desired` into `namespace`.
    fn written(desired: &DesiredSecret, namespace: &str) -> ObservedSecret {
        ObservedSecret {
            namespace: namespace.into(),
            name: desired.secret_name.clone(),
            secret_type: desired.secret_type.clone(),
            labels: desired.full_labels(),
            annotations: desired.full_annotations(),
            data: desired
                .data
                .iter()
                .map(|(k, v)| (k.clone(), *v.digest()))
                .collect(),
            immutable: desired.immutable,
        }
    }

    fn foreign(namespace: &str, name: &str) -> ObservedSecret {
        ObservedSecret {
            namespace: namespace.into(),
            name: name.into(),
            secret_type: "Opaque".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            data: [("other".to_string(), value_digest(b"x"))].into(),
            immutable: false,
        }
    }

    fn ns(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn apply(namespace: &str, force: bool) -> Action {
        Action::Apply {
            namespace: namespace.into(),
            force,
        }
    }

    #[test]
    fn upsert_table() {
        let base = owner();
        let mut older = owner();
        older.revision = 4;
        older.sha256 = [4; 32];
        let mut edited = written(&base, "a");
        edited.data.insert("token".into(), value_digest(b"edited"));
        let mut stripped = written(&base, "a");
        stripped.annotations.remove(SHA256_ANNOTATION);
        let mut other_key = written(&base, "a");
        other_key
            .annotations
            .insert(FLEET_SECRET_ANNOTATION.into(), "other".into());
        let mut immutable_old = written(&older, "a");
        immutable_old.immutable = true;
        immutable_old.data.insert("token".into(), value_digest(b"old"));
        let mut immutable_same_data = written(&older, "a");
        immutable_same_data.immutable = true;
        let mut renamed_stale = written(&base, "a");
        renamed_stale.name = "old-name".into();

        type Expected = Result<Vec<Action>, (ErrorCode, bool)>;
        let cases: Vec<(&str, DesiredSecret, Vec<ObservedSecret>, Expected)> = vec![
            (
                "absent everywhere: create without force",
                owner(),
                vec![],
                Ok(vec![apply("a", false), apply("b", false)]),
            ),
            (
                "up to date in both: nothing",
                owner(),
                vec![written(&base, "a"), written(&base, "b")],
                Ok(vec![]),
            ),
            (
                "older revision: forced update of our own",
                owner(),
                vec![written(&older, "a"), written(&base, "b")],
                Ok(vec![apply("a", true)]),
            ),
            (
                "edited data: repair",
                owner(),
                vec![edited, written(&base, "b")],
                Ok(vec![apply("a", true)]),
            ),
            (
                "missing annotation: repair",
                owner(),
                vec![stripped, written(&base, "b")],
                Ok(vec![apply("a", true)]),
            ),
            (
                "foreign secret, Owner: not owned, nothing written",
                owner(),
                vec![foreign("a", "regcred")],
                Err((ErrorCode::NotOwned, true)),
            ),
            (
                "foreign secret, Orphan: not owned",
                desired(CreationPolicy::Orphan, DeletionPolicy::Retain),
                vec![foreign("b", "regcred")],
                Err((ErrorCode::NotOwned, true)),
            ),
            (
                "ours for another key: not owned",
                owner(),
                vec![other_key],
                Err((ErrorCode::NotOwned, true)),
            ),
            (
                "foreign secret, Merge: apply our keys without force",
                desired(CreationPolicy::Merge, DeletionPolicy::Retain),
                vec![foreign("a", "regcred"), foreign("b", "regcred")],
                Ok(vec![apply("a", false), apply("b", false)]),
            ),
            (
                "Merge with a missing target: retryable refusal",
                desired(CreationPolicy::Merge, DeletionPolicy::Retain),
                vec![foreign("a", "regcred")],
                Err((ErrorCode::Invalid, true)),
            ),
            (
                "immutable with other data: refused",
                owner(),
                vec![immutable_old],
                Err((ErrorCode::Immutable, false)),
            ),
            (
                "immutable with same data: annotations can move",
                owner(),
                vec![immutable_same_data, written(&base, "b")],
                Ok(vec![apply("a", true)]),
            ),
            (
                "renamed: old name cleaned up by deletionPolicy",
                owner(),
                vec![written(&base, "a"), written(&base, "b"), renamed_stale],
                Ok(vec![Action::Delete {
                    namespace: "a".into(),
                    name: "old-name".into(),
                }]),
            ),
            (
                "namespace dropped, Retain: released",
                desired(CreationPolicy::Owner, DeletionPolicy::Retain),
                vec![written(
                    &desired(CreationPolicy::Owner, DeletionPolicy::Retain),
                    "c",
                )],
                Ok(vec![
                    apply("a", false),
                    apply("b", false),
                    Action::Release {
                        namespace: "c".into(),
                        name: "regcred".into(),
                    },
                ]),
            ),
        ];
        for (name, desired, observed, expected) in cases {
            let got = plan_upsert(&desired, &ns(&["a", "b"]), &observed)
                .map_err(|refusal| (refusal.code, refusal.retryable));
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn refusal_comes_before_any_action() {
        // Namespace a would be created, b is foreign: nothing at all may be written.
        let result = plan_upsert(&owner(), &ns(&["a", "b"]), &[foreign("b", "regcred")]);
        let refusal = result.expect_err("b is not ours");
        assert!(refusal.message.contains("b/regcred"), "{}", refusal.message);
    }

    /// A compact name for a prior source, for table tests.
    fn source_name(source: &PriorSource) -> String {
        match source {
            PriorSource::Known(Prior::Absent) => "absent".into(),
            PriorSource::Known(Prior::Foreign) => "foreign".into(),
            PriorSource::Known(Prior::Ours(content)) => format!("held r{}", content.revision),
            PriorSource::ReadBack => "read back".into(),
        }
    }

    #[test]
    fn prior_sources_table() {
        let mut older = owner();
        older.revision = 4;
        older.sha256 = [4; 32];
        let older = Arc::new(older);
        let mut drifted = written(&older, "b");
        drifted.data.insert("token".into(), value_digest(b"edited"));
        let mut renamed = (*older).clone();
        renamed.secret_name = "old-name".into();
        let renamed = Arc::new(renamed);
        let release_c = Action::Release {
            namespace: "c".into(),
            name: "regcred".into(),
        };
        type Case<'a> = (
            &'a str,
            Vec<Action>,
            Vec<ObservedSecret>,
            Option<&'a Arc<DesiredSecret>>,
            Vec<&'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "created where nothing was",
                vec![apply("a", false)],
                vec![],
                None,
                vec!["absent"],
            ),
            (
                "merged into a foreign Secret",
                vec![apply("a", false)],
                vec![foreign("a", "regcred")],
                None,
                vec!["foreign"],
            ),
            (
                "ours and the held payload is its content",
                vec![apply("a", true), release_c.clone()],
                vec![written(&older, "a"), written(&older, "c")],
                Some(&older),
                vec!["held r4", "held r4"],
            ),
            (
                "ours but nothing held (after a restart)",
                vec![apply("a", true)],
                vec![written(&older, "a")],
                None,
                vec!["read back"],
            ),
            (
                "ours but drifted from the held payload",
                vec![apply("b", true)],
                vec![drifted],
                Some(&older),
                vec!["read back"],
            ),
            (
                "the held payload names another Secret",
                vec![apply("a", true)],
                vec![written(&older, "a")],
                Some(&renamed),
                vec!["read back"],
            ),
        ];
        for (name, actions, observed, previous, expected) in cases {
            let got: Vec<String> = prior_sources("regcred", "regcred", &actions, &observed, previous)
                .iter()
                .map(source_name)
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn undo_table() {
        let content = Arc::new(owner());
        let delete_a = Action::Delete {
            namespace: "a".into(),
            name: "regcred".into(),
        };
        let release_a = Action::Release {
            namespace: "a".into(),
            name: "regcred".into(),
        };
        let cases = [
            (apply("a", false), Prior::Absent, "delete a/regcred"),
            (apply("a", false), Prior::Foreign, "remove fields a/regcred"),
            (
                apply("a", true),
                Prior::Ours(content.clone()),
                "apply r5 into a, force",
            ),
            (
                delete_a,
                Prior::Ours(content.clone()),
                "apply r5 into a, no force",
            ),
            (release_a, Prior::Ours(content), "apply r5 into a, force"),
        ];
        for (action, prior, expected) in cases {
            let got = match undo(&action, "regcred", &prior) {
                Undo::Cleanup(Action::Delete { namespace, name }) => format!("delete {namespace}/{name}"),
                Undo::Cleanup(Action::RemoveFields { namespace, name }) => {
                    format!("remove fields {namespace}/{name}")
                }
                Undo::Cleanup(other) => format!("unexpected {other:?}"),
                Undo::Restore {
                    content,
                    namespace,
                    force,
                } => format!(
                    "apply r{} into {namespace}, {}",
                    content.revision,
                    if force { "force" } else { "no force" }
                ),
            };
            assert_eq!(got, expected, "{action:?} after {prior:?}");
        }
    }

    #[test]
    fn removal_table() {
        let owner_delete = written(&owner(), "a");
        let merge = written(&desired(CreationPolicy::Merge, DeletionPolicy::Delete), "b");
        let orphan = written(&desired(CreationPolicy::Orphan, DeletionPolicy::Delete), "c");
        let observed = vec![owner_delete, merge, orphan, foreign("d", "regcred")];
        let cases = [
            (
                DeletionPolicy::Delete,
                vec![
                    Action::Delete {
                        namespace: "a".into(),
                        name: "regcred".into(),
                    },
                    Action::RemoveFields {
                        namespace: "b".into(),
                        name: "regcred".into(),
                    },
                    Action::Release {
                        namespace: "c".into(),
                        name: "regcred".into(),
                    },
                ],
            ),
            (
                DeletionPolicy::Retain,
                ["a", "b", "c"]
                    .iter()
                    .map(|n| Action::Release {
                        namespace: (*n).into(),
                        name: "regcred".into(),
                    })
                    .collect(),
            ),
        ];
        for (policy, expected) in cases {
            assert_eq!(plan_removal("regcred", policy, &observed), expected, "{policy:?}");
        }
        assert!(plan_removal("other", DeletionPolicy::Delete, &observed).is_empty());
    }

    #[test]
    fn drift_table() {
        let base = owner();
        let mut edited = written(&base, "a");
        edited.data.insert("token".into(), value_digest(b"edited"));
        let mut relabelled = written(&base, "a");
        relabelled.labels.remove(MANAGED_BY_LABEL);
        let mut extra_key = written(&base, "a");
        extra_key.data.insert("extra".into(), value_digest(b"x"));
        let merge = desired(CreationPolicy::Merge, DeletionPolicy::Retain);
        let mut immutable_edited = written(&base, "a");
        immutable_edited.immutable = true;
        immutable_edited
            .data
            .insert("token".into(), value_digest(b"other"));
        let cases: Vec<(&str, &DesiredSecret, Option<ObservedSecret>, Option<Drift>)> = vec![
            ("intact", &base, Some(written(&base, "a")), None),
            ("foreign extra key is not drift", &base, Some(extra_key), None),
            (
                "deleted: recreated",
                &base,
                None,
                Some(Drift {
                    kind: DriftKind::Deleted,
                    repair: Some(apply("a", false)),
                }),
            ),
            (
                "edited: forced repair",
                &base,
                Some(edited),
                Some(Drift {
                    kind: DriftKind::Modified,
                    repair: Some(apply("a", true)),
                }),
            ),
            (
                "label removed: repaired",
                &base,
                Some(relabelled),
                Some(Drift {
                    kind: DriftKind::Modified,
                    repair: Some(apply("a", true)),
                }),
            ),
            (
                "merge target deleted: not ours to recreate",
                &merge,
                None,
                Some(Drift {
                    kind: DriftKind::Deleted,
                    repair: None,
                }),
            ),
            (
                "immutable with other data: cannot repair",
                &base,
                Some(immutable_edited),
                Some(Drift {
                    kind: DriftKind::Modified,
                    repair: None,
                }),
            ),
        ];
        for (name, desired, observed, expected) in cases {
            assert_eq!(check_drift(desired, "a", observed.as_ref()), expected, "{name}");
        }
    }

    #[test]
    fn applied_state_takes_the_lowest_revision_and_skips_foreign() {
        let base = owner();
        let mut older = owner();
        older.revision = 3;
        let mut broken = written(&base, "c");
        broken
            .annotations
            .insert(REVISION_ANNOTATION.into(), "not-a-number".into());
        let state = applied_state(&[
            written(&base, "a"),
            written(&older, "b"),
            broken,
            foreign("a", "x"),
        ]);
        assert_eq!(state.len(), 1);
        assert_eq!(
            state.get("regcred"),
            Some(&Applied {
                revision: 3,
                sha256: SHA
            })
        );
    }

    #[test]
    fn namespaces_resolve_by_name_or_selector() {
        let cluster = vec![
            Namespace {
                name: "a".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
            },
            Namespace {
                name: "b".into(),
                labels: [("env".to_string(), "dev".to_string())].into(),
            },
            Namespace {
                name: "c".into(),
                labels: BTreeMap::new(),
            },
        ];
        let named = Targets::Namespaces(ns(&["a", "zz", "yy"]));
        let refusal = resolve_namespaces(&named, &cluster).expect_err("zz is missing");
        assert_eq!(
            (refusal.code, refusal.retryable),
            (ErrorCode::NamespaceMissing, true)
        );
        assert!(refusal.message.contains("zz, yy"), "{}", refusal.message);
        let selector = |operator, values: &[&str]| {
            Targets::Selector(Selector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![Requirement {
                    key: "env".into(),
                    operator,
                    values: ns(values),
                }],
            })
        };
        let cases = [
            (selector(Operator::In, &["prod", "dev"]), ns(&["a", "b"])),
            (selector(Operator::NotIn, &["prod"]), ns(&["b", "c"])),
            (selector(Operator::Exists, &[]), ns(&["a", "b"])),
            (selector(Operator::DoesNotExist, &[]), ns(&["c"])),
            (
                Targets::Selector(Selector {
                    match_labels: [("env".to_string(), "dev".to_string())].into(),
                    match_expressions: vec![],
                }),
                ns(&["b"]),
            ),
        ];
        for (targets, expected) in cases {
            assert_eq!(
                resolve_namespaces(&targets, &cluster).expect("selector"),
                expected,
                "{targets:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let rendered = format!("{:?}", owner());
        assert!(!rendered.contains("s3cr3t"), "{rendered}");
        assert!(rendered.contains("redacted 6 bytes"), "{rendered}");
    }
}
