//! Name rules shared by every kind (DNS-1123 names, Key Vault names, Secret keys, label keys and
//! values), each with the message that explains it.

/// DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub(crate) fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// DNS-1123 subdomain: at most 253 characters of dot-separated labels.
pub(crate) fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

/// What a DNS-1123 label is, naming the rejected name.
pub(super) fn dns_label_message(name: &str) -> String {
    format!(
        "invalid name {name:?}: a DNS-1123 label (1-63 characters of a-z, 0-9 and -, alphanumeric at both ends)"
    )
}

/// What a DNS-1123 subdomain is, naming the rejected name.
pub(super) fn dns_subdomain_message(name: &str) -> String {
    format!(
        "invalid name {name:?}: a DNS-1123 subdomain (at most 253 characters of a-z, 0-9, - and ., alphanumeric at both ends)"
    )
}

/// Key Vault object name: 1-127 of `[0-9a-zA-Z-]`.
pub(super) fn is_key_vault_object_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What a Key Vault secret name is, naming the rejected name.
pub(super) fn key_vault_name_message(name: &str) -> String {
    format!("invalid Key Vault secret name {name:?}: 1-127 characters of 0-9, a-z, A-Z and -")
}

/// Key Vault (vault) name: 3-24 of `[a-z0-9-]`, starts with a letter, no `--`, no trailing `-`.
pub(super) fn is_vault_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=24).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A Secret data key: 1-253 of `[-._a-zA-Z0-9]`.
pub(crate) fn is_secret_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && key != "."
        && key != ".."
}

/// What a Secret data key is, naming the rejected key.
pub(super) fn secret_key_message(key: &str) -> String {
    format!("invalid Secret key {key:?}: 1-253 characters of a-z, A-Z, 0-9, -, _ and .")
}

/// A Kubernetes qualified name (label/annotation key): optional DNS prefix + `/` + name of at most
/// 63 characters of `[-._a-zA-Z0-9]`, alphanumeric at both ends.
pub(crate) fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// What a label or annotation key is, naming the rejected key.
pub(super) fn qualified_name_message(key: &str) -> String {
    format!(
        "invalid key {key:?}: [prefix/]name, name at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends"
    )
}

/// A label value: empty, or at most 63 of `[-._a-zA-Z0-9]`, alphanumeric at both ends.
pub(crate) fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric))
}

/// What a label value is, naming the rejected value.
pub(super) fn label_value_message(value: &str) -> String {
    format!(
        "invalid label value {value:?}: at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends"
    )
}
