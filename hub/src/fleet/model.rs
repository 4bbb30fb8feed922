//! What the fleet carries and reports: encoded revisions, desired sets, agent refusals, drift,
//! events and the reasons a stream ends or is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{ClusterId, Sha256};

/// A revision encoded for the wire once (by the engine's `RevisionEncoder`): the `SecretPayload`
/// message bytes and their content digest, shared by every stream that sends it (`Bytes` is
/// reference-counted).
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedRevision {
    /// FleetSecret name.
    pub key: String,
    /// Revision number (from the store).
    pub revision: u64,
    /// `keyfleet_proto::digest::payload_sha256` of the payload.
    pub sha256: Sha256,
    /// The encoded `SecretPayload` (contains secret data: never log it).
    pub payload: bytes::Bytes,
}

impl std::fmt::Debug for EncodedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedRevision")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .field("sha256", &self.sha256)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .finish()
    }
}

/// What removing a key does to the written Secrets (the FleetSecret's deletionPolicy).
pub type RemovalPolicy = crate::spec::DeletionPolicy;

/// What one cluster should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterDesired {
    /// Payload key (FleetSecret name) → the revision the cluster should hold, encoded once.
    pub items: BTreeMap<String, Arc<EncodedRevision>>,
    /// Policies for keys the cluster must no longer hold. A held key absent from both maps is
    /// removed with [`RemovalPolicy::Retain`] (the Secret stays, unmanaged).
    pub removals: BTreeMap<String, RemovalPolicy>,
}

impl ClusterDesired {
    /// `keyfleet_proto::digest::set_digest` of the items: what an in-sync agent reports.
    pub fn digest(&self) -> [u8; 32] {
        keyfleet_proto::digest::set_digest(
            self.items
                .iter()
                .map(|(key, item)| (key.as_str(), item.revision, &item.sha256.0[..])),
        )
    }
}

/// Why an agent refused an item (the wire's `ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NackCode {
    /// No code given.
    Unspecified,
    /// Validation failed.
    Invalid,
    /// The payload did not match its sha256.
    DigestMismatch,
    /// The existing Secret is not ours.
    NotOwned,
    /// A target namespace does not exist.
    NamespaceMissing,
    /// Kubernetes refused the write.
    Forbidden,
    /// Kubernetes did not answer.
    KubernetesUnavailable,
    /// Server-side apply field conflict.
    Conflict,
    /// The Secret is immutable and differs.
    Immutable,
    /// Anything else.
    Internal,
    /// Refused by the hub itself: the encoded item exceeds the message size limit.
    TooLarge,
}

impl NackCode {
    /// Stable lowercase name (status, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Invalid => "invalid",
            Self::DigestMismatch => "digest_mismatch",
            Self::NotOwned => "not_owned",
            Self::NamespaceMissing => "namespace_missing",
            Self::Forbidden => "forbidden",
            Self::KubernetesUnavailable => "kubernetes_unavailable",
            Self::Conflict => "conflict",
            Self::Immutable => "immutable",
            Self::Internal => "internal",
            Self::TooLarge => "too_large",
        }
    }
}

/// What happened to a managed Secret behind the agent's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// Not given.
    Unspecified,
    /// Data, type or our metadata changed.
    Modified,
    /// Deleted.
    Deleted,
}

/// Everything the fleet reports, in order per stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// An agent's stream was accepted (after a valid Hello).
    Connected {
        /// Cluster (from the credential).
        cluster: ClusterId,
        /// Agent build version.
        agent_version: String,
        /// Whether its applied digest matched.
        in_sync: bool,
        /// Key → revision the agent holds at connect time.
        applied: BTreeMap<String, u64>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The stream ended (not emitted for a stream replaced by a newer one of the same cluster).
    Disconnected {
        /// Cluster.
        cluster: ClusterId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent applied a revision.
    Acked {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// Applied revision.
        revision: u64,
        /// Its digest.
        sha256: Sha256,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent removed a key.
    Removed {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent (or the hub, for [`NackCode::TooLarge`]) refused an item; the old Secret stays.
    Nacked {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// Refused revision (0 for a removal).
        revision: u64,
        /// Why.
        code: NackCode,
        /// Whether it will be retried.
        retryable: bool,
        /// The agent's reason (never secret data), at most 1,024 bytes.
        message: String,
        /// Consecutive refusals of this revision.
        attempts: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent repaired a drifted Secret.
    Drift {
        /// Cluster.
        cluster: ClusterId,
        /// FleetSecret name.
        key: String,
        /// Namespace of the Secret.
        namespace: String,
        /// What happened.
        kind: DriftKind,
        /// Restored revision.
        revision: u64,
        /// Why the agent could not repair it (`None`: repaired).
        failure: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a stream must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The cluster's credential was revoked.
    Revoked,
    /// A newer stream of the same cluster took over.
    Replaced,
    /// The hub is shutting down or rebalancing: reconnect after this delay.
    Drain {
        /// Jittered delay for the agent.
        reconnect_after: Duration,
    },
}

/// Why a stream was not admitted to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The cluster was revoked.
    #[error("cluster {0} is revoked")]
    Revoked(ClusterId),
    /// The hub is draining.
    #[error("hub is draining")]
    Draining,
}
