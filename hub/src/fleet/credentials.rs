//! The in-memory credential index: sha256 of a cluster credential → cluster. Loaded from
//! `store.active_credentials()` at start, updated on enroll and revoke. Only hashes are held.
//!
//! A credential is `kfc_` followed by 43 base64url characters (32 random bytes).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;

use crate::domain::{ClusterId, Sha256};

/// Prefix of a cluster credential.
pub const CREDENTIAL_PREFIX: &str = "kfc_";
/// Base64url characters after the prefix.
const CREDENTIAL_CHARS: usize = 43;

/// A fresh credential: `kfc_` + 32 random bytes in unpadded base64url. Shown once, never logged.
pub fn new_credential() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{CREDENTIAL_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Whether `text` has the shape of a credential (prefix, length, alphabet).
pub fn is_well_formed(text: &str) -> bool {
    text.strip_prefix(CREDENTIAL_PREFIX).is_some_and(|rest| {
        rest.len() == CREDENTIAL_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Credential hash → cluster, shared by every stream. Cheap to clone.
///
/// A cluster holds at most one credential: the index keeps both directions so that enrolling,
/// revoking and the periodic reload from the store cost O(1) per cluster, never a scan of the
/// whole fleet (a scan per insert made each reload O(clusters²): at 10,000 clusters ~100 million
/// steps under the write lock every credential reconcile, with every stream admission waiting).
#[derive(Clone, Default)]
pub struct Credentials {
    index: Arc<RwLock<Index>>,
}

#[derive(Default)]
struct Index {
    by_hash: HashMap<Sha256, ClusterId>,
    by_cluster: HashMap<ClusterId, Sha256>,
}

impl Index {
    fn insert(&mut self, hash: Sha256, cluster: ClusterId) {
        if let Some(previous) = self.by_cluster.insert(cluster, hash)
            && previous != hash
        {
            self.by_hash.remove(&previous);
        }
        if let Some(owner) = self.by_hash.insert(hash, cluster)
            && owner != cluster
        {
            // The same hash held by another cluster (not possible with random credentials):
            // that cluster no longer has it.
            self.by_cluster.remove(&owner);
        }
    }

    fn remove_cluster(&mut self, cluster: ClusterId) -> bool {
        match self.by_cluster.remove(&cluster) {
            Some(hash) => {
                self.by_hash.remove(&hash);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("count", &self.len()).finish()
    }
}

impl Credentials {
    /// An index holding `entries` (from `store.active_credentials()`).
    pub fn from_entries(entries: impl IntoIterator<Item = (Sha256, ClusterId)>) -> Self {
        let credentials = Self::default();
        credentials.replace_all(entries);
        credentials
    }

    /// Replaces the whole index (a reload from the store).
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (Sha256, ClusterId)>) {
        let mut fresh = Index::default();
        for (hash, cluster) in entries {
            fresh.insert(hash, cluster);
        }
        *self.write() = fresh;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `hash` the credential of `cluster`, dropping any previous one of that cluster.
    pub fn insert(&self, hash: Sha256, cluster: ClusterId) {
        self.write().insert(hash, cluster);
    }

    /// [`Credentials::insert`] for many entries: takes the write lock only if one of them is not
    /// held yet (the periodic reconcile usually finds every credential in place).
    pub fn insert_many(&self, entries: &[(Sha256, ClusterId)]) {
        let missing = {
            let index = self.read();
            entries
                .iter()
                .any(|(hash, cluster)| index.by_hash.get(hash) != Some(cluster))
        };
        if missing {
            let mut index = self.write();
            for (hash, cluster) in entries {
                index.insert(*hash, *cluster);
            }
        }
    }

    /// Forgets every credential of `cluster` (revocation). Returns whether one was held.
    pub fn revoke_cluster(&self, cluster: ClusterId) -> bool {
        self.write().remove_cluster(cluster)
    }

    /// The cluster whose credential this is, by its sha256.
    pub fn lookup(&self, credential: &str) -> Option<ClusterId> {
        if !is_well_formed(credential) {
            return None;
        }
        self.read()
            .by_hash
            .get(&Sha256::of(credential.as_bytes()))
            .copied()
    }

    /// Number of active credentials.
    pub fn len(&self) -> usize {
        self.read().by_hash.len()
    }

    /// Whether no credential is active.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_have_the_documented_shape_and_are_unique() {
        let one = new_credential();
        let two = new_credential();
        assert!(is_well_formed(&one), "{one}");
        assert_eq!(one.len(), 4 + 43);
        assert_ne!(one, two);
        assert!(!is_well_formed("kfc_short"));
        assert!(!is_well_formed(&one.replace("kfc_", "kfe_")));
        assert!(!is_well_formed(&format!("{}!", &one[..one.len() - 1])));
    }

    #[test]
    fn lookup_is_by_hash_and_revocation_forgets_the_cluster() {
        let cluster = ClusterId(uuid::Uuid::from_u128(7));
        let credential = new_credential();
        let credentials = Credentials::default();
        credentials.insert(Sha256::of(credential.as_bytes()), cluster);
        assert_eq!(credentials.lookup(&credential), Some(cluster));
        assert_eq!(credentials.lookup(&new_credential()), None);
        // Re-enrollment replaces the old credential.
        let rotated = new_credential();
        credentials.insert(Sha256::of(rotated.as_bytes()), cluster);
        assert_eq!(credentials.lookup(&credential), None);
        assert_eq!(credentials.lookup(&rotated), Some(cluster));
        assert!(credentials.revoke_cluster(cluster));
        assert_eq!(credentials.lookup(&rotated), None);
        assert!(credentials.is_empty());
        assert!(!credentials.revoke_cluster(cluster));
    }

    #[test]
    fn a_reload_keeps_one_credential_per_cluster_and_a_bulk_insert_replaces_old_ones() {
        let clusters: Vec<ClusterId> = (0..3).map(|n| ClusterId(uuid::Uuid::from_u128(n))).collect();
        let old: Vec<String> = clusters.iter().map(|_| new_credential()).collect();
        let credentials = Credentials::from_entries(
            old.iter()
                .zip(&clusters)
                .map(|(credential, cluster)| (Sha256::of(credential.as_bytes()), *cluster)),
        );
        assert_eq!(credentials.len(), 3);
        let new = new_credential();
        credentials.insert_many(&[
            (Sha256::of(old[0].as_bytes()), clusters[0]),
            (Sha256::of(new.as_bytes()), clusters[1]),
        ]);
        assert_eq!(credentials.len(), 3);
        assert_eq!(credentials.lookup(&old[0]), Some(clusters[0]));
        assert_eq!(credentials.lookup(&old[1]), None, "replaced by the bulk insert");
        assert_eq!(credentials.lookup(&new), Some(clusters[1]));
        assert_eq!(credentials.lookup(&old[2]), Some(clusters[2]));
        credentials.replace_all([(Sha256::of(new.as_bytes()), clusters[2])]);
        assert_eq!(credentials.len(), 1);
        assert_eq!(credentials.lookup(&new), Some(clusters[2]));
        assert!(!credentials.revoke_cluster(clusters[1]));
        assert!(credentials.revoke_cluster(clusters[2]));
        assert!(credentials.is_empty());
    }
}
