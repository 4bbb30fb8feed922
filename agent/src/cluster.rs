//! The agent's two sides meet here: the [`Cluster`] and [`CredentialStore`] traits the hub client
//! drives and the Kubernetes side implements, and the values they exchange (besides the pure
//! domain types of [`crate::reconcile`]). It names neither proto nor Kubernetes types.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use zeroize::Zeroizing;

use crate::reconcile::{Applied, DeletionPolicy, DesiredSecret, DriftKind, Refusal};

/// The cluster credential from enrollment. `Debug` shows the cluster, never the credential.
#[derive(Clone)]
pub struct Credential {
    /// Cluster name.
    pub cluster_name: String,
    /// Cluster id.
    pub cluster_id: String,
    /// Bearer credential (`kfc_…`).
    pub secret: Zeroizing<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("cluster_name", &self.cluster_name)
            .field("cluster_id", &self.cluster_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where the credential is kept (a Kubernetes Secret in production).
pub trait CredentialStore: Send + Sync {
    /// Error type.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The stored credential, if any.
    fn load(&self) -> impl Future<Output = Result<Option<Credential>, Self::Error>> + Send;
    /// Stores the credential.
    fn save(&self, credential: &Credential) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Something the cluster side reports on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A managed Secret drifted and was repaired.
    Drift {
        /// Payload key.
        key: String,
        /// Namespace.
        namespace: String,
        /// What happened.
        kind: DriftKind,
        /// Revision restored.
        revision: u64,
    },
    /// A managed Secret drifted and the agent could not repair it (reported so that the hub's
    /// drift report shows it; the key also leaves the applied state, see `Resync`).
    DriftUnrepaired {
        /// Payload key.
        key: String,
        /// Namespace.
        namespace: String,
        /// What happened.
        kind: DriftKind,
        /// Revision the agent tried to restore.
        revision: u64,
        /// Why it could not (the Kubernetes error; never a value).
        failure: String,
    },
    /// The applied state changed outside an Update (a drifted key the agent cannot repair by
    /// itself): reconnect so the hub compares digests again and resends what differs.
    Resync,
}

/// The cluster, as the Sync client sees it: rebuild the applied state, apply, remove.
pub trait Cluster: Send + Sync {
    /// Error type for [`Cluster::applied`].
    type Error: std::error::Error + Send + Sync + 'static;
    /// Every applied key with its (revision, sha256).
    fn applied(&self) -> impl Future<Output = Result<BTreeMap<String, Applied>, Self::Error>> + Send;
    /// Applies one validated payload; all of it or, on refusal, nothing new.
    fn upsert(&self, desired: DesiredSecret) -> impl Future<Output = Result<(), Refusal>> + Send;
    /// Removes a key.
    fn remove(&self, key: &str, policy: DeletionPolicy) -> impl Future<Output = Result<(), Refusal>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_debug_is_redacted() {
        let credential = Credential {
            cluster_name: "c1".into(),
            cluster_id: "id".into(),
            secret: Zeroizing::new("kfc_supersecretvalue".into()),
        };
        let rendered = format!("{credential:?}");
        assert!(!rendered.contains("supersecret"), "{rendered}");
        assert!(rendered.contains("c1"));
    }
}
