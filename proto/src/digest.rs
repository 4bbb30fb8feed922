//! Canonical digests both sides compute identically.
//!
//! - [`payload_sha256`]: the content digest of one `SecretPayload`, announced by the hub in
//!   `SecretPayload.sha256` and recomputed by the agent before it applies anything.
//! - [`set_digest`]: the digest of an applied set, sent in `Hello.applied_digest`, so an agent that
//!   is in sync costs one comparison.
//!
//! The encodings are length-prefixed (u32 big-endian) fields in a fixed order with map entries
//! sorted by key, so two encoders can never disagree and no field can bleed into the next.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::v1::{AppliedItem, LabelSelector, SecretPayload};

/// A 32-byte SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Digest of everything a `SecretPayload` makes the agent write: key, secret name, type,
/// namespaces (sorted) or namespace selector, data, labels, annotations (sorted by key),
/// creation and deletion policy, immutability. `revision` and `sha256` themselves are excluded.
pub fn payload_sha256(payload: &SecretPayload) -> Sha256Digest {
    let mut hasher = Sha256::new();
    field(&mut hasher, b"keyfleet.v1.SecretPayload");
    field(&mut hasher, payload.key.as_bytes());
    field(&mut hasher, payload.secret_name.as_bytes());
    field(&mut hasher, payload.r#type.as_bytes());
    let mut namespaces: Vec<&str> = payload.namespaces.iter().map(String::as_str).collect();
    namespaces.sort_unstable();
    count(&mut hasher, namespaces.len());
    for namespace in namespaces {
        field(&mut hasher, namespace.as_bytes());
    }
    selector(&mut hasher, payload.namespace_selector.as_ref());
    sorted_map(
        &mut hasher,
        payload.data.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    sorted_map(
        &mut hasher,
        payload.labels.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    sorted_map(
        &mut hasher,
        payload
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    count(&mut hasher, payload.creation_policy as usize);
    count(&mut hasher, payload.deletion_policy as usize);
    count(&mut hasher, usize::from(payload.immutable));
    hasher.finalize().into()
}

/// Digest of an applied set: the (key, revision, sha256) triples sorted by key. The empty set
/// has a digest too, so an agent holding nothing can be in sync with a cluster that should hold
/// nothing.
pub fn set_digest<'a>(items: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>) -> Sha256Digest {
    let mut sorted: Vec<(&str, u64, &[u8])> = items.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Sha256::new();
    field(&mut hasher, b"keyfleet.v1.AppliedSet");
    count(&mut hasher, sorted.len());
    for (key, revision, sha256) in sorted {
        field(&mut hasher, key.as_bytes());
        hasher.update(revision.to_be_bytes());
        field(&mut hasher, sha256);
    }
    hasher.finalize().into()
}

/// [`set_digest`] over `AppliedItem`s.
pub fn applied_items_digest(items: &[AppliedItem]) -> Sha256Digest {
    set_digest(
        items
            .iter()
            .map(|item| (item.key.as_str(), item.revision, item.sha256.as_slice())),
    )
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    count(hasher, bytes.len());
    hasher.update(bytes);
}

fn count(hasher: &mut Sha256, n: usize) {
    // Lengths above u32::MAX cannot occur under the protocol limits; saturate rather than wrap.
    hasher.update(u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn sorted_map<'a>(hasher: &mut Sha256, entries: impl Iterator<Item = (&'a str, &'a [u8])>) {
    let sorted: BTreeMap<&str, &[u8]> = entries.collect();
    count(hasher, sorted.len());
    for (key, value) in sorted {
        field(hasher, key.as_bytes());
        field(hasher, value);
    }
}

fn selector(hasher: &mut Sha256, selector: Option<&LabelSelector>) {
    let Some(selector) = selector else {
        count(hasher, 0);
        return;
    };
    count(hasher, 1);
    sorted_map(
        hasher,
        selector
            .match_labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    count(hasher, selector.match_expressions.len());
    for requirement in &selector.match_expressions {
        field(hasher, requirement.key.as_bytes());
        field(hasher, requirement.operator.as_bytes());
        let mut values: Vec<&str> = requirement.values.iter().map(String::as_str).collect();
        values.sort_unstable();
        count(hasher, values.len());
        for value in values {
            field(hasher, value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> SecretPayload {
        SecretPayload {
            key: "regcred".into(),
            revision: 7,
            secret_name: "regcred".into(),
            r#type: "kubernetes.io/dockerconfigjson".into(),
            namespaces: vec!["default".into(), "ci".into()],
            data: [(".dockerconfigjson".to_string(), b"{}".to_vec())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn payload_digest_ignores_namespace_order_and_revision() {
        let a = payload();
        let mut b = payload();
        b.namespaces.reverse();
        b.revision = 8;
        assert_eq!(payload_sha256(&a), payload_sha256(&b));
    }

    #[test]
    fn payload_digest_changes_with_data_type_and_labels() {
        let base = payload_sha256(&payload());
        let mut changed = payload();
        changed.data.insert(".dockerconfigjson".into(), b"{ }".to_vec());
        assert_ne!(base, payload_sha256(&changed));
        let mut changed = payload();
        changed.r#type = "Opaque".into();
        assert_ne!(base, payload_sha256(&changed));
        let mut changed = payload();
        changed.labels.insert("a".into(), "b".into());
        assert_ne!(base, payload_sha256(&changed));
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let mut a = payload();
        a.data = [("ab".to_string(), b"c".to_vec())].into();
        let mut b = payload();
        b.data = [("a".to_string(), b"bc".to_vec())].into();
        assert_ne!(payload_sha256(&a), payload_sha256(&b));
    }

    #[test]
    fn set_digest_is_order_independent_and_sensitive_to_revisions() {
        let sha = [1u8; 32];
        let one = set_digest([("a", 1, &sha[..]), ("b", 2, &sha[..])]);
        let two = set_digest([("b", 2, &sha[..]), ("a", 1, &sha[..])]);
        assert_eq!(one, two);
        let three = set_digest([("a", 1, &sha[..]), ("b", 3, &sha[..])]);
        assert_ne!(one, three);
        assert_ne!(set_digest([]), one);
    }
}
