//! Pure types and rules shared by every hub module. No IO, no async, no logging.
//!
//! **Invariant:** a secret value only ever lives in a [`SecretValue`]: redacted `Debug`, no
//! `Display`, no `Serialize`, zeroized on drop.

use zeroize::Zeroizing;

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

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<redacted {} bytes>)", self.0.len())
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
}
