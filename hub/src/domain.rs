//! Pure types and rules shared by every hub module. No IO, no async, no logging.
//!
//! **Invariant:** a secret value only ever lives in a [`SecretValue`]: redacted `Debug`, no
//! `Display`, no `Serialize`, zeroized on drop.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

mod digest;
pub use digest::{DigestKey, DigestKeyError, DigestKeyId, DigestKeys, MIN_DIGEST_KEY_BYTES, StoredDigest};

/// `text` cut to at most `max` bytes on a character boundary (never inside a multi-byte
/// character, where slicing or `String::truncate` panics): the one string truncation of the hub,
/// for text that comes from elsewhere (agents' NACKs, replica ids).
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bytes of a secret (a Key Vault value or rendered Secret data). Cannot be printed, logged or
/// serialized by accident; the memory is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// The bytes, for the few places that must hand them on (rendering, encoding for the wire).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted {} bytes>)", self.0.len())
    }
}

/// A plain SHA-256 digest (of a rendered revision, a Key Vault value, or a random credential).
/// A digest of secret material is never stored or logged plain: the store keys it
/// ([`DigestKeys`], [`StoredDigest`]); `Debug` shows none of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// From a 32-byte slice; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:<redacted>")
    }
}

/// Stable cluster id, assigned by the hub when the cluster is added.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ClusterId(pub uuid::Uuid);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hub-side inventory labels of a cluster (also used for namespace labels).
pub type Labels = BTreeMap<String, String>;

/// A Kubernetes-style label selector; every requirement must hold. The empty selector matches
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Exact key = value matches.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    pub match_expressions: Vec<LabelRequirement>,
}

/// One set-based requirement of a [`LabelSelector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRequirement {
    /// Label key.
    pub key: String,
    /// How the values are used.
    pub operator: SelectorOperator,
    /// Values for `In`/`NotIn`.
    pub values: Vec<String>,
}

/// Operators of [`LabelRequirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    /// The label is present with one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    /// Whether this selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl LabelRequirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|value| self.values.contains(value)),
            SelectorOperator::NotIn => value.is_none_or(|value| !self.values.contains(value)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Lifecycle of a cluster in the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterState {
    /// Added; its enrollment token has not been used yet.
    Pending,
    /// Enrolled: it holds a valid credential.
    Active,
    /// Its credential was revoked; its streams are refused.
    Revoked,
}

impl ClusterState {
    /// Stable lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }
}

/// Sync state of one (cluster, FleetSecret) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// The desired revision was sent or is queued, no answer yet.
    Pending,
    /// The cluster acknowledged the desired revision.
    Applied,
    /// The cluster refused the desired revision (NACK); see the last error.
    Error,
    /// The desired revision was not acknowledged within the delivery deadline.
    Undelivered,
}

impl SyncState {
    /// Stable lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Error => "error",
            Self::Undelivered => "undelivered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let value = SecretValue::new(b"hunter2".to_vec());
        let printed = format!("{value:?} {:#?}", Some(&value));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redacted 7 bytes"), "{printed}");
    }

    #[test]
    fn truncation_never_cuts_a_multi_byte_character() {
        // "é" is 2 bytes at 4..6, "€" 3 bytes at 6..9.
        let text = "abcdé€z";
        for (max, expected) in [
            (4, "abcd"),
            (5, "abcd"),
            (6, "abcdé"),
            (7, "abcdé"),
            (8, "abcdé"),
            (9, "abcdé€"),
        ] {
            assert_eq!(truncate_utf8(text, max), expected, "max {max}");
        }
        assert_eq!(truncate_utf8("ok", 32), "ok");
        assert_eq!(truncate_utf8("🔑🔑", 0), "");
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelRequirement {
        LabelRequirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        use SelectorOperator::*;
        let prod_eu = labels(&[("env", "prod"), ("region", "eu")]);
        let cases: Vec<(LabelSelector, bool)> = vec![
            (LabelSelector::default(), true),
            (
                LabelSelector {
                    match_labels: labels(&[("env", "prod")]),
                    ..Default::default()
                },
                true,
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("env", "dev")]),
                    ..Default::default()
                },
                false,
            ),
            (
                LabelSelector {
                    match_expressions: vec![requirement("region", In, &["eu", "us"])],
                    ..Default::default()
                },
                true,
            ),
            (
                LabelSelector {
                    match_expressions: vec![requirement("region", NotIn, &["eu"])],
                    ..Default::default()
                },
                false,
            ),
            (
                LabelSelector {
                    match_expressions: vec![requirement("ring", NotIn, &["canary"])],
                    ..Default::default()
                },
                true,
            ),
            (
                LabelSelector {
                    match_expressions: vec![requirement("ring", Exists, &[])],
                    ..Default::default()
                },
                false,
            ),
            (
                LabelSelector {
                    match_expressions: vec![requirement("ring", DoesNotExist, &[])],
                    ..Default::default()
                },
                true,
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(selector.matches(&prod_eu), expected, "{selector:?}");
        }
    }

    #[test]
    fn sha256_debug_shows_no_digest_bytes() {
        let digest = Sha256::of(b"x");
        let printed = format!("{digest:?}");
        assert_eq!(printed, "sha256:<redacted>");
        assert!(!printed.contains(&digest.to_hex()[..6]), "{printed}");
        assert_eq!(Sha256::from_slice(&digest.0), Some(digest));
        assert_eq!(Sha256::from_slice(&[0; 3]), None);
    }
}
