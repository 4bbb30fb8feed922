//! The values the planner works on: what the hub wants ([`DesiredSecret`], secret bytes in
//! [`SecretBytes`]), what the cluster holds ([`ObservedSecret`]: digests, never values), whose a
//! Secret is, and the refusal codes. Invariant: pure, like the planner (no IO, async or logging).

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Label marking Secrets written by keyfleet.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub(crate) const MANAGED_BY_VALUE: &str = "keyfleet";
/// Annotation: revision applied.
pub const REVISION_ANNOTATION: &str = "keyfleet.io/revision";
/// Annotation: hex `payload_sha256` of the applied payload.
pub const SHA256_ANNOTATION: &str = "keyfleet.io/sha256";
/// Annotation: the payload key (FleetSecret name). Ownership is decided by it (with
/// [`MANAGED_BY_LABEL`]), never by [`FLEET_SECRET_LABEL`].
pub const FLEET_SECRET_ANNOTATION: &str = "keyfleet.io/fleet-secret";
/// Label: the payload key, so that `kubectl get secrets -l keyfleet.io/fleet-secret=NAME` finds
/// a fleet secret's Secrets (see [`fleet_secret_label_value`] for keys over 63 characters). An
/// index for people and tools, not ownership: a Secret written by an older agent without it is
/// still ours and up to date, and gets it on its next write.
pub const FLEET_SECRET_LABEL: &str = "keyfleet.io/fleet-secret";
/// Annotation: when the agent last wrote this Secret (RFC 3339, UTC, seconds). Written with
/// every apply and never compared: it is not part of drift detection or of the up-to-date check.
pub const SYNCED_AT_ANNOTATION: &str = "keyfleet.io/synced-at";
/// Annotation: the Key Vault versions the applied revision was rendered from (JSON object,
/// Key Vault secret name → version id), when the hub sent them. Identifiers, never values; not
/// compared either (a revision's versions are fixed with it).
pub const KEY_VAULT_VERSIONS_ANNOTATION: &str = "keyfleet.io/key-vault-versions";
/// Annotation: the creationPolicy the Secret was written with (`Owner`, `Merge`, `Orphan`).
pub(crate) const CREATION_POLICY_ANNOTATION: &str = "keyfleet.io/creation-policy";
/// Annotation: the payload's targets (named namespaces or the namespace selector, JSON), written
/// on every Secret of the key, so a restarted agent knows where the key must be (see
/// `reconcile::applied`).
pub const TARGETS_ANNOTATION: &str = "keyfleet.io/targets";
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "keyfleet-agent";
/// Prefix reserved for the agent's own annotations.
pub(crate) const RESERVED_ANNOTATION_PREFIX: &str = "keyfleet.io/";

/// The value of [`FLEET_SECRET_LABEL`] for `key`. A key (a DNS-1123 subdomain) of at most 63
/// characters is a valid label value and is used as is; a longer one (label values are limited
/// to 63) becomes its first 46 characters (trailing `.`/`-` trimmed), `-`, and 16 hex digits of
/// its SHA-256: still readable, still unique in practice, and computable by anyone who has the name.
pub fn fleet_secret_label_value(key: &str) -> String {
    if key.len() <= 63 {
        return key.to_owned();
    }
    let prefix = key
        .get(..46)
        .unwrap_or(key)
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let digest = hex::encode(&value_digest(key.as_bytes())[..8]);
    format!("{prefix}-{digest}")
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of a byte string (used for data values, so observations hold no secret bytes).
pub(crate) fn value_digest(bytes: &[u8]) -> Digest {
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "Owner",
            Self::Merge => "Merge",
            Self::Orphan => "Orphan",
        }
    }

    /// Parses an annotation value; an absent or unknown value is `Owner`.
    pub(crate) fn from_annotation(value: Option<&str>) -> Self {
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
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        let bytes = Zeroizing::new(bytes);
        let digest = value_digest(&bytes);
        Self { bytes, digest }
    }

    /// The secret bytes.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the bytes.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
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
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
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

/// One key as the hub wants it, validated (see `hub/convert.rs`).
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
    /// Key Vault secret name → version id the revision was rendered from (empty when the hub
    /// did not say, or for a content read back from the cluster without the annotation).
    pub source_versions: BTreeMap<String, String>,
}

impl DesiredSecret {
    /// The labels compared by the up-to-date check: the payload's plus the managed-by label.
    pub(crate) fn full_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        labels
    }

    /// The labels we write: [`Self::full_labels`] plus [`FLEET_SECRET_LABEL`].
    pub(crate) fn written_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.full_labels();
        labels.insert(FLEET_SECRET_LABEL.into(), fleet_secret_label_value(&self.key));
        labels
    }

    /// The annotations we write at `synced_at` (RFC 3339): [`Self::full_annotations`] plus the
    /// sync time and the Key Vault versions (when known), which are never compared.
    pub(crate) fn written_annotations(&self, synced_at: &str) -> BTreeMap<String, String> {
        let mut annotations = self.full_annotations();
        annotations.insert(SYNCED_AT_ANNOTATION.into(), synced_at.to_owned());
        if !self.source_versions.is_empty() {
            // A map of strings always serializes.
            let versions = serde_json::to_string(&self.source_versions).unwrap_or_default();
            annotations.insert(KEY_VAULT_VERSIONS_ANNOTATION.into(), versions);
        }
        annotations
    }

    /// The annotations we write: the payload's plus ours.
    pub(crate) fn full_annotations(&self) -> BTreeMap<String, String> {
        let mut annotations = self.annotations.clone();
        annotations.insert(REVISION_ANNOTATION.into(), self.revision.to_string());
        annotations.insert(SHA256_ANNOTATION.into(), hex::encode(self.sha256));
        annotations.insert(FLEET_SECRET_ANNOTATION.into(), self.key.clone());
        annotations.insert(CREATION_POLICY_ANNOTATION.into(), self.creation.as_str().into());
        annotations.insert(TARGETS_ANNOTATION.into(), self.targets.annotation());
        annotations
    }
}

/// A Secret as seen in the cluster, without its values (only their digests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObservedSecret {
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
pub(crate) enum Ownership<'a> {
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

impl Applied {
    /// A key some of whose Secrets exist but which is not applied at any revision (a target
    /// namespace lacks it): revision 0, which the hub never assigns, and an all-zero digest, so
    /// the hub sends the key again (or removes it when it no longer wants it).
    pub const INCOMPLETE: Self = Self {
        revision: 0,
        sha256: [0; 32],
    };
}

impl ObservedSecret {
    /// Whose Secret this is.
    pub(crate) fn ownership(&self) -> Ownership<'_> {
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

    pub(super) fn is_ours_for(&self, key: &str) -> bool {
        matches!(self.ownership(), Ownership::Ours { key: k, .. } if k == key)
    }

    /// The (revision, sha256) recorded in our annotations, when both parse.
    pub(crate) fn applied(&self) -> Option<Applied> {
        let revision = self.annotations.get(REVISION_ANNOTATION)?.parse().ok()?;
        let sha256 = hex::decode(self.annotations.get(SHA256_ANNOTATION)?).ok()?;
        Some(Applied {
            revision,
            sha256: sha256.try_into().ok()?,
        })
    }

    pub(super) fn effective_type(&self) -> &str {
        if self.secret_type.is_empty() {
            "Opaque"
        } else {
            &self.secret_type
        }
    }
}

/// A namespace of the cluster with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}
