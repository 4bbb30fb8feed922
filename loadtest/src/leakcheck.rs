//! Proof that no secret value leaked: scans captured text (the hub's log) for every value the
//! simulation wrote into Key Vault, raw and in the encodings a careless log line would use.
//! Findings name the encoding and the value's index, never the value.

use base64::Engine as _;

/// How a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// The value as written.
    Raw,
    /// Standard base64 (searched unpadded).
    Base64,
    /// URL-safe base64 (searched unpadded).
    Base64Url,
    /// Lowercase hex.
    Hex,
}

/// One leaked value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Index of the value in the list the check was given.
    pub value_index: usize,
    /// How it appeared.
    pub encoding: Encoding,
    /// Byte offset of the first occurrence.
    pub offset: usize,
}

/// Values shorter than this are not searched (they would match by chance).
pub const MIN_NEEDLE: usize = 12;

/// Every occurrence class of every value in `haystack`.
pub fn scan(haystack: &[u8], values: &[Vec<u8>]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (value_index, value) in values.iter().enumerate() {
        let needles = [
            (Encoding::Raw, value.clone()),
            (
                Encoding::Base64,
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(value)
                    .into_bytes(),
            ),
            (
                Encoding::Base64Url,
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(value)
                    .into_bytes(),
            ),
            (Encoding::Hex, hex::encode(value).into_bytes()),
        ];
        for (encoding, needle) in needles {
            if needle.len() < MIN_NEEDLE {
                continue;
            }
            if let Some(offset) = find(haystack, &needle) {
                findings.push(Finding {
                    value_index,
                    encoding,
                    offset,
                });
            }
        }
    }
    findings
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_raw_and_encoded_values_and_names_only_their_index() {
        let values = vec![
            b"s3cr3t-registry-password".to_vec(),
            b"never-logged-value!".to_vec(),
        ];
        let b64 = base64::engine::general_purpose::STANDARD.encode(&values[0]);
        let log = format!("line one\nvalue={b64}\nother s3cr3t-registry-password here\n");
        let findings = scan(log.as_bytes(), &values);
        let kinds: Vec<(usize, Encoding)> = findings.iter().map(|f| (f.value_index, f.encoding)).collect();
        assert!(kinds.contains(&(0, Encoding::Raw)), "{findings:?}");
        assert!(kinds.contains(&(0, Encoding::Base64)), "{findings:?}");
        assert!(!kinds.iter().any(|(index, _)| *index == 1), "{findings:?}");
        let printed = format!("{findings:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }

    #[test]
    fn clean_text_has_no_findings_and_short_values_are_skipped() {
        let values = vec![b"a-long-enough-secret".to_vec(), b"short".to_vec()];
        assert!(scan(b"nothing to see; short", &values).is_empty());
    }
}
