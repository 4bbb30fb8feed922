//! Keyed digests of secret material: what the hub stores instead of a plain SHA-256 of a Key
//! Vault value or of a rendered revision, so that a low-entropy value cannot be guessed offline
//! by someone who reads the database or the logs.
//!
//! A keyed digest is `HMAC-SHA256(key, plain SHA-256)`, tagged with the id of the key. Keying the
//! plain digest (not the value) lets the hub key a digest it only has as a digest: an agent's
//! acknowledged payload sha256, and rows written before digests were keyed. The key id is derived
//! from the key (8 hex characters of a domain-separated SHA-256 of it), so two different keys never
//! share an id by mistake and an id reveals nothing of its key.
//!
//! [`DigestKeys`] is the current key (every new digest) and the previous keys (digests written
//! before a rotation still compare). Pure: parsing the text of a key file is here, reading it is
//! the caller's.

use std::fmt;

use hmac::{Hmac, Mac};
use zeroize::Zeroizing;

use super::Sha256;

/// Shortest key accepted, in bytes.
pub const MIN_DIGEST_KEY_BYTES: usize = 32;

/// The id of a digest key: 8 lowercase hex characters derived from the key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DigestKeyId(String);

impl DigestKeyId {
    /// The id as stored (`digest_key` columns).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id read back from the store.
    pub fn from_stored(id: impl Into<String>) -> Self {
        Self(id.into())
    }
}

impl fmt::Display for DigestKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DigestKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key:{}", self.0)
    }
}

/// One digest key. Its bytes never leave it: `Debug` shows the id only; zeroized on drop.
#[derive(Clone)]
pub struct DigestKey {
    id: DigestKeyId,
    secret: Zeroizing<Vec<u8>>,
}

impl DigestKey {
    /// A key from its bytes; `None` under [`MIN_DIGEST_KEY_BYTES`].
    pub fn new(secret: impl Into<Vec<u8>>) -> Option<Self> {
        let secret = Zeroizing::new(secret.into());
        if secret.len() < MIN_DIGEST_KEY_BYTES {
            return None;
        }
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"keyfleet digest key id\0");
        hasher.update(&secret[..]);
        let id = DigestKeyId(hex::encode(&hasher.finalize()[..4]));
        Some(Self { id, secret })
    }

    /// Its id.
    pub fn id(&self) -> &DigestKeyId {
        &self.id
    }

    fn mac(&self, plain: &Sha256) -> [u8; 32] {
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(b"keyfleet digest v1\0");
        mac.update(&plain.0);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestKey({:?}, <redacted>)", self.id)
    }
}

/// A digest as the store holds it: keyed (the normal case) or, for a row written before digests
/// were keyed (migration 0006) or by a replica of an older version during a rolling upgrade, the
/// plain SHA-256, which still compares and is keyed at the next start of any replica.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredDigest {
    /// `HMAC-SHA256(key, plain SHA-256)` under the key `key`.
    Keyed {
        /// The key's id.
        key: DigestKeyId,
        /// The HMAC.
        mac: [u8; 32],
    },
    /// A plain SHA-256 written before keying.
    Unkeyed(Sha256),
}

impl StoredDigest {
    /// The 32 stored bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        match self {
            Self::Keyed { mac, .. } => mac,
            Self::Unkeyed(plain) => &plain.0,
        }
    }

    /// The key id, `None` for an unkeyed digest.
    pub fn key(&self) -> Option<&DigestKeyId> {
        match self {
            Self::Keyed { key, .. } => Some(key),
            Self::Unkeyed(_) => None,
        }
    }
}

impl fmt::Debug for StoredDigest {
    /// A keyed digest shows its key id and 12 hex characters (safe: guessing needs the key); an
    /// unkeyed one shows nothing of its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyed { key, mac } => write!(f, "hmac:{key}:{}", &hex::encode(mac)[..12]),
            Self::Unkeyed(_) => f.write_str("unkeyed-sha256:<redacted>"),
        }
    }
}

impl fmt::Display for StoredDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why the text of a digest key file is refused. Names the line, never its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestKeyError {
    /// No key line at all.
    #[error("holds no key (one key per line: 64 hex characters or base64 of 32+ random bytes)")]
    Empty,
    /// A line is neither hex nor base64.
    #[error("line {line}: not a key: expected hex or base64 of 32+ random bytes")]
    Encoding {
        /// 1-based line number.
        line: usize,
    },
    /// A line decodes to fewer than [`MIN_DIGEST_KEY_BYTES`] bytes.
    #[error("line {line}: the key is {bytes} bytes; at least {MIN_DIGEST_KEY_BYTES} are required")]
    Short {
        /// 1-based line number.
        line: usize,
        /// Decoded length.
        bytes: usize,
    },
    /// The same key twice.
    #[error("line {line}: the same key as line {first}")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// Line of its first occurrence.
        first: usize,
    },
}

/// The hub's digest keys: the current one keys every new digest, the previous ones still verify
/// what they keyed. Every replica must hold the same keys.
#[derive(Clone)]
pub struct DigestKeys {
    current: DigestKey,
    previous: Vec<DigestKey>,
}

impl fmt::Debug for DigestKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestKeys")
            .field("current", self.current.id())
            .field(
                "previous",
                &self.previous.iter().map(DigestKey::id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DigestKeys {
    /// The keys of a key file: one per line, the first is current, the others previous; blank
    /// lines and `#` comments ignored. A key is hex (only hex digits, even length) or base64
    /// (standard or URL-safe, padding optional) of at least 32 bytes.
    pub fn parse(text: &str) -> Result<Self, DigestKeyError> {
        let mut keys: Vec<DigestKey> = Vec::new();
        let mut lines = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = decode_key(line).ok_or(DigestKeyError::Encoding { line: line_number })?;
            let length = bytes.len();
            let key = DigestKey::new(bytes).ok_or(DigestKeyError::Short {
                line: line_number,
                bytes: length,
            })?;
            if let Some(first) = keys.iter().position(|known| known.id == key.id) {
                return Err(DigestKeyError::Duplicate {
                    line: line_number,
                    first: lines[first],
                });
            }
            keys.push(key);
            lines.push(line_number);
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or(DigestKeyError::Empty)?;
        Ok(Self {
            current,
            previous: keys.collect(),
        })
    }

    /// One fresh random key (32 bytes), and its key file text (hex, one line).
    pub fn generate() -> (Self, Zeroizing<String>) {
        use rand::RngCore as _;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut bytes[..]);
        let text = Zeroizing::new(format!("{}\n", hex::encode(&bytes[..])));
        let keys = Self::parse(&text).expect("a generated key parses");
        (keys, text)
    }

    /// The key new digests are made with.
    pub fn current(&self) -> &DigestKeyId {
        self.current.id()
    }

    /// The previous keys' ids, as listed.
    pub fn previous(&self) -> impl Iterator<Item = &DigestKeyId> {
        self.previous.iter().map(DigestKey::id)
    }

    /// Whether `id` is one of these keys.
    pub fn knows(&self, id: &DigestKeyId) -> bool {
        self.find(id).is_some()
    }

    /// `plain` keyed with the current key: what the store writes.
    pub fn key(&self, plain: &Sha256) -> StoredDigest {
        StoredDigest::Keyed {
            key: self.current.id.clone(),
            mac: self.current.mac(plain),
        }
    }

    /// Whether `stored` is the digest of `plain`: keyed with a key held here (current or
    /// previous), or unkeyed and equal. A digest under a key no longer held never matches
    /// (treated as unknown). Constant time in the bytes.
    pub fn matches(&self, stored: &StoredDigest, plain: &Sha256) -> bool {
        match stored {
            StoredDigest::Keyed { key, mac } => self
                .find(key)
                .is_some_and(|known| constant_time_eq(&known.mac(plain), mac)),
            StoredDigest::Unkeyed(unkeyed) => constant_time_eq(&unkeyed.0, &plain.0),
        }
    }

    /// Every stored form that [`DigestKeys::matches`] accepts for `plain`: keyed with each key
    /// held, and unkeyed (for a store that compares in SQL).
    pub fn candidates(&self, plain: &Sha256) -> Vec<StoredDigest> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| StoredDigest::Keyed {
                key: key.id.clone(),
                mac: key.mac(plain),
            })
            .chain(std::iter::once(StoredDigest::Unkeyed(*plain)))
            .collect()
    }

    fn find(&self, id: &DigestKeyId) -> Option<&DigestKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| &key.id == id)
    }
}

fn decode_key(line: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if line.len().is_multiple_of(2) && line.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(line).ok();
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines.iter().find_map(|engine| engine.decode(line).ok())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B_BASE64: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn keyed_digests_verify_under_current_and_previous_keys() {
        let plain = Sha256::of(b"hunter2");
        let old = DigestKeys::parse(KEY_A).unwrap();
        let under_old = old.key(&plain);
        assert_ne!(under_old.bytes(), &plain.0, "keyed is not the plain digest");
        let rotated = DigestKeys::parse(&format!("# new first\n{KEY_B_BASE64}\n\n{KEY_A}\n")).unwrap();
        assert_ne!(rotated.current(), old.current());
        assert_eq!(rotated.previous().collect::<Vec<_>>(), [old.current()]);
        assert!(rotated.matches(&under_old, &plain), "previous key still verifies");
        let under_new = rotated.key(&plain);
        assert_eq!(under_new.key(), Some(rotated.current()));
        assert!(rotated.matches(&under_new, &plain));
        assert!(!rotated.matches(&under_new, &Sha256::of(b"hunter3")));
        assert!(!old.matches(&under_new, &plain), "an unknown key never matches");
        assert!(rotated.matches(&StoredDigest::Unkeyed(plain), &plain));
        let candidates = rotated.candidates(&plain);
        assert_eq!(candidates.len(), 3);
        assert!(candidates.contains(&under_old) && candidates.contains(&under_new));
        assert!(candidates.iter().all(|stored| rotated.matches(stored, &plain)));
        assert!(!rotated.matches(&StoredDigest::Unkeyed(plain), &Sha256::of(b"x")));
    }

    #[test]
    fn the_key_id_and_mac_do_not_depend_on_the_encoding() {
        let hex_key = DigestKeys::parse(KEY_A).unwrap();
        let bytes: Vec<u8> = (0u8..32).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let b64_key = DigestKeys::parse(&b64).unwrap();
        assert_eq!(hex_key.current(), b64_key.current());
        let plain = Sha256::of(b"v");
        assert_eq!(hex_key.key(&plain), b64_key.key(&plain));
        assert_eq!(hex_key.current().as_str().len(), 8);
    }

    #[test]
    fn bad_key_files_are_refused_by_line_never_by_content() {
        let short = "00112233445566778899aabbccddeeff";
        let cases = [
            ("", DigestKeyError::Empty),
            ("# only a comment\n\n", DigestKeyError::Empty),
            (short, DigestKeyError::Short { line: 1, bytes: 16 }),
            ("# c\nnot a key!", DigestKeyError::Encoding { line: 2 }),
            (
                &*format!("{KEY_A}\n{KEY_A}"),
                DigestKeyError::Duplicate { line: 2, first: 1 },
            ),
        ];
        for (text, expected) in cases {
            let error = DigestKeys::parse(text).unwrap_err();
            assert_eq!(error, expected, "{text:?}");
            let message = error.to_string();
            assert!(!message.contains(short) && !message.contains(KEY_A), "{message}");
        }
    }

    #[test]
    fn debug_never_shows_key_bytes_or_plain_digests() {
        let (keys, text) = DigestKeys::generate();
        let printed = format!("{keys:?} {:?}", keys.current);
        assert!(!printed.contains(text.trim()), "{printed}");
        assert!(printed.contains(keys.current().as_str()), "{printed}");
        let plain = Sha256::of(b"hunter2");
        let unkeyed = format!("{:?}", StoredDigest::Unkeyed(plain));
        assert!(!unkeyed.contains(&plain.to_hex()[..8]), "{unkeyed}");
        let keyed = format!("{:?}", keys.key(&plain));
        assert!(keyed.starts_with(&format!("hmac:{}:", keys.current())), "{keyed}");
        assert!(!keyed.contains(&plain.to_hex()[..8]), "{keyed}");
    }
}
