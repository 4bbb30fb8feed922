//! The plain records the store hands out and takes in. No sqlx here: these are what the rest of
//! the hub sees. Only digests, ids, names and canonical spec YAML; never a secret value.

use chrono::{DateTime, Utc};

use crate::domain::{ClusterId, ClusterState, Labels, Sha256, StoredDigest, SyncState};

/// A cluster of the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Stable id.
    pub id: ClusterId,
    /// Unique name.
    pub name: String,
    /// Hub-side inventory labels.
    pub labels: Labels,
    /// Lifecycle state.
    pub state: ClusterState,
    /// Version its agent reported on its last connect.
    pub agent_version: Option<String>,
    /// The hub replica holding its stream, if connected.
    pub connected_replica: Option<String>,
    /// Last connect, disconnect or liveness refresh.
    pub last_seen: Option<DateTime<Utc>>,
    /// When it was added.
    pub created: DateTime<Utc>,
}

/// Why an enrollment token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    /// No token has this hash.
    Unknown,
    /// The token was already used.
    Used,
    /// The token expired.
    Expired,
    /// The token's cluster was revoked.
    ClusterRevoked,
}

/// Kinds of stored specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecKind {
    /// `kind: SecretStore`.
    SecretStore,
    /// `kind: FleetSecret`.
    FleetSecret,
}

impl SpecKind {
    /// The YAML `kind`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretStore => "SecretStore",
            Self::FleetSecret => "FleetSecret",
        }
    }

    /// The kind of a stored `kind` text, None for anything else.
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "SecretStore" => Some(Self::SecretStore),
            "FleetSecret" => Some(Self::FleetSecret),
            _ => None,
        }
    }
}

/// What an upsert did to a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecAction {
    /// It did not exist (generation 1).
    Created,
    /// Its YAML changed (generation + 1).
    Configured,
    /// Same YAML as stored (generation kept).
    Unchanged,
}

impl SpecAction {
    /// As kubectl prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One spec of an all-or-nothing [`crate::store::Store::apply_specs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecWrite<'a> {
    /// Its kind.
    pub kind: SpecKind,
    /// Its name.
    pub name: &'a str,
    /// Canonical YAML.
    pub yaml: &'a str,
}

impl SpecWrite<'_> {
    /// `secretstore/NAME` or `fleetsecret/NAME`: the subject of its change and audit rows.
    pub fn subject(&self) -> String {
        format!("{}/{}", self.kind.as_str().to_lowercase(), self.name)
    }
}

/// Which replica serves a cluster and when it was last heard from: the part of the inventory
/// that changes by the second ([`crate::store::Store::cluster_liveness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLiveness {
    /// Cluster id.
    pub id: ClusterId,
    /// Hub replica holding its stream, if any.
    pub connected_replica: Option<String>,
    /// Last connect, disconnect or liveness refresh.
    pub last_seen: Option<DateTime<Utc>>,
}

/// What [`crate::store::Store::apply_specs`] did to one spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecOutcome {
    /// Its generation after the call.
    pub generation: u64,
    /// Created, configured or unchanged.
    pub action: SpecAction,
}

/// A stored spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSpec {
    /// Its kind.
    pub kind: SpecKind,
    /// Its name (unique per kind).
    pub name: String,
    /// Canonical YAML (`spec::raw`), never a secret value.
    pub yaml: String,
    /// Starts at 1, + 1 on each change.
    pub generation: u64,
    /// Last change.
    pub updated: DateTime<Utc>,
}

/// One Key Vault secret version: its id and the digest of its value, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretVersionRecord {
    /// SecretStore name.
    pub store: String,
    /// Key Vault secret name.
    pub name: String,
    /// Key Vault version id.
    pub version: String,
    /// Plain SHA-256 of the value; the store writes it keyed ([`crate::domain::DigestKeys`]).
    pub sha256: Sha256,
    /// Whether Key Vault marks it enabled.
    pub enabled: bool,
    /// Key Vault's creation time.
    pub created: Option<DateTime<Utc>>,
    /// Key Vault's `exp`.
    pub expires: Option<DateTime<Utc>>,
    /// Key Vault's `nbf`.
    pub not_before: Option<DateTime<Utc>>,
}

/// A rendered revision to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRevision {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Plain digest of the encoded revision (`payload_sha256`); the store writes it keyed.
    pub sha256: Sha256,
    /// Generation of the FleetSecret spec it was rendered from.
    pub spec_generation: u64,
    /// (remote key, Key Vault version) of every source value.
    pub sources: Vec<(String, String)>,
}

/// A recorded revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionRecord {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Global, increasing number.
    pub revision: u64,
    /// Keyed digest of the encoded revision: check a rendering against it with
    /// [`crate::domain::DigestKeys::matches`].
    pub digest: StoredDigest,
    /// Spec generation it was rendered from.
    pub spec_generation: u64,
    /// (remote key, Key Vault version) of every source value.
    pub sources: Vec<(String, String)>,
    /// When it was recorded.
    pub created: DateTime<Utc>,
}

/// A pinned Key Vault version for one remote key of a fleet secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRecord {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Remote key (Key Vault secret name).
    pub remote_key: String,
    /// Pinned version id.
    pub version: String,
}

/// The rollout state of one fleet secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Revision being rolled out (must exist).
    pub revision: u64,
    /// Wave reached.
    pub current_wave: u32,
    /// Whether it is paused.
    pub paused: bool,
    /// Why (paused, halted, …); empty when nothing to say.
    pub reason: String,
}

/// One status write for a (cluster, fleet secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRow {
    /// Cluster.
    pub cluster: ClusterId,
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Revision the cluster should hold.
    pub desired_revision: u64,
    /// Revision it acknowledged last.
    pub applied_revision: Option<u64>,
    /// Plain digest it acknowledged last (the wire's payload sha256); the store writes it keyed.
    pub applied_sha256: Option<Sha256>,
    /// Sync state.
    pub state: SyncState,
    /// Agent's error (truncated to 1,024 bytes by the store).
    pub last_error: Option<String>,
    /// Delivery attempts of the desired revision.
    pub attempts: u32,
    /// When this was observed.
    pub at: DateTime<Utc>,
}

/// The stored status of a (cluster, fleet secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStatus {
    /// Cluster.
    pub cluster: ClusterId,
    /// Its name.
    pub cluster_name: String,
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Revision the cluster should hold.
    pub desired_revision: u64,
    /// Revision it acknowledged last.
    pub applied_revision: Option<u64>,
    /// Keyed digest of what it acknowledged last.
    pub applied_digest: Option<StoredDigest>,
    /// Sync state.
    pub state: SyncState,
    /// Agent's last error.
    pub last_error: Option<String>,
    /// Delivery attempts.
    pub attempts: u32,
    /// Last write.
    pub updated: DateTime<Utc>,
    /// When the applied revision was first acknowledged.
    pub applied_at: Option<DateTime<Utc>>,
}

/// What a change-log entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A spec was created, changed or deleted.
    Spec,
    /// A new revision was recorded.
    Revision,
    /// A cluster was added, relabelled or revoked.
    Cluster,
    /// A pin changed.
    Pin,
    /// A rollout changed.
    Rollout,
}

impl ChangeKind {
    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spec => "spec",
            Self::Revision => "revision",
            Self::Cluster => "cluster",
            Self::Pin => "pin",
            Self::Rollout => "rollout",
        }
    }

    /// The kind of a stored name, None for anything else.
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "spec" => Some(Self::Spec),
            "revision" => Some(Self::Revision),
            "cluster" => Some(Self::Cluster),
            "pin" => Some(Self::Pin),
            "rollout" => Some(Self::Rollout),
            _ => None,
        }
    }
}

/// One change-log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Sequence number (the cursor replicas keep).
    pub seq: i64,
    /// What changed.
    pub kind: ChangeKind,
    /// Its name (cluster, spec, fleet secret).
    pub subject: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One audit event: who did what to which subject, when. Never values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A migration the store applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Version (the file's number).
    pub version: i64,
    /// Description (the file's name after the number).
    pub description: String,
}

/// Digests [`crate::store::Store::key_unkeyed_digests`] keyed, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyedRows {
    /// `secret_versions` rows.
    pub secret_versions: u64,
    /// `revisions` rows.
    pub revisions: u64,
    /// `sync_status` rows.
    pub sync_status: u64,
}

impl KeyedRows {
    /// All rows keyed.
    pub fn total(&self) -> u64 {
        self.secret_versions + self.revisions + self.sync_status
    }
}
