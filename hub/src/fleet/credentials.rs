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
#[derive(Clone, Default)]
pub struct Credentials {
    index: Arc<RwLock<HashMap<Sha256, ClusterId>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("count", &self.len()).finish()
    }
}

impl Credentials {
    /// An index holding `entries` (from `store.active_credentials()`).
    pub fn from_entries(entries: impl IntoIterator<Item = (Sha256, ClusterId)>) -> Self {
        Self {
            index: Arc::new(RwLock::new(entries.into_iter().collect())),
        }
    }

    /// Replaces the whole index (a reload from the store).
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (Sha256, ClusterId)>) {
        let fresh: HashMap<_, _> = entries.into_iter().collect();
        *self.write() = fresh;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Sha256, ClusterId>> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Sha256, ClusterId>> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `hash` the credential of `cluster`, dropping any previous one of that cluster.
    pub fn insert(&self, hash: Sha256, cluster: ClusterId) {
        let mut index = self.write();
        index.retain(|_, owner| *owner != cluster);
        index.insert(hash, cluster);
    }

    /// Forgets every credential of `cluster` (revocation). Returns whether one was held.
    pub fn revoke_cluster(&self, cluster: ClusterId) -> bool {
        let mut index = self.write();
        let before = index.len();
        index.retain(|_, owner| *owner != cluster);
        index.len() != before
    }

    /// The cluster whose credential this is, by its sha256.
    pub fn lookup(&self, credential: &str) -> Option<ClusterId> {
        if !is_well_formed(credential) {
            return None;
        }
        self.read().get(&Sha256::of(credential.as_bytes())).copied()
    }

    /// Number of active credentials.
    pub fn len(&self) -> usize {
        self.read().len()
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
    }
}
