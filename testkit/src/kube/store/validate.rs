//! The apiserver's validation of Secrets and Namespaces: names, label and annotation keys, data
//! keys and size, per-type Secret rules and immutability.

use serde_json::Value;

use crate::kube::model::{Kind, Object, SecretBody};
use crate::kube::status::{ApiError, Cause};

/// Largest total Secret data size the apiserver accepts.
pub(crate) const MAX_SECRET_BYTES: usize = 1024 * 1024;

fn invalid_cause(field: &str, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message,
        field: field.to_owned(),
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_qualified_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// The apiserver's validation for Secrets and Namespaces (names, label keys and values, data
/// keys and size, immutability).
pub(super) fn validate(live: Option<&Object>, object: &Object) -> Result<(), ApiError> {
    let kind = object.kind();
    let name = &object.meta.name;
    let mut causes = Vec::new();
    let valid_name = match kind {
        Kind::Secret | Kind::Event => is_dns_subdomain(name),
        Kind::Namespace => is_dns_label(name),
    };
    if !valid_name {
        causes.push(invalid_cause(
            "metadata.name",
            format!("Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    for (key, value) in &object.meta.labels {
        if !is_qualified_key(key) {
            causes.push(invalid_cause("metadata.labels", format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
        }
        if !value.is_empty() && !is_label_name(value) {
            causes.push(invalid_cause("metadata.labels", format!("Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
    }
    for key in object.meta.annotations.keys() {
        if !is_qualified_key(key) {
            causes.push(invalid_cause("metadata.annotations", format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
        }
    }
    if let Some(secret) = object.secret() {
        causes.extend(type_rules(object, secret));
        let mut total = 0usize;
        for (key, value) in &secret.data {
            total += value.expose().len();
            let valid = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid {
                causes.push(invalid_cause(
                    &format!("data[{key}]"),
                    format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
        }
        if total > MAX_SECRET_BYTES {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: must have at most {MAX_SECRET_BYTES} bytes"),
                field: "data".to_owned(),
            });
        }
        if let Some(live_secret) = live.and_then(Object::secret) {
            if live_secret.type_ != secret.type_ {
                causes.push(invalid_cause(
                    "type",
                    format!(
                        "Invalid value: {:?}: field is immutable",
                        secret.type_.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if live_secret.immutable == Some(true) {
                if live_secret.data != secret.data {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: field is immutable when `immutable` is set".to_owned(),
                        field: "data".to_owned(),
                    });
                }
                if secret.immutable != Some(true) {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: field is immutable when `immutable` is set".to_owned(),
                        field: "immutable".to_owned(),
                    });
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind.name(), kind.resource(), name, causes))
    }
}

fn required_key(key: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: "Required value".to_owned(),
        field: format!("data[{key}]"),
    }
}

/// The apiserver's per-type Secret rules (`ValidateSecret`).
fn type_rules(object: &Object, secret: &SecretBody) -> Vec<Cause> {
    let has = |key: &str| secret.data.contains_key(key);
    let json_key = |key: &str| -> Vec<Cause> {
        match secret.data.get(key) {
            None => vec![required_key(key)],
            Some(value) if serde_json::from_slice::<Value>(value.expose()).is_err() => vec![Cause {
                reason: "FieldValueInvalid",
                message: "Invalid value: \"<secret contents redacted>\": invalid JSON".to_owned(),
                field: format!("data[{key}]"),
            }],
            Some(_) => Vec::new(),
        }
    };
    match secret.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            if object
                .meta
                .annotations
                .contains_key("kubernetes.io/service-account.name")
            {
                Vec::new()
            } else {
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".to_owned(),
                    field: "metadata.annotations[kubernetes.io/service-account.name]".to_owned(),
                }]
            }
        }
        "kubernetes.io/dockercfg" => json_key(".dockercfg"),
        "kubernetes.io/dockerconfigjson" => json_key(".dockerconfigjson"),
        "kubernetes.io/basic-auth" => {
            if has("username") || has("password") {
                Vec::new()
            } else {
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: must contain at least one of username or password".to_owned(),
                    field: "data[username]".to_owned(),
                }]
            }
        }
        "kubernetes.io/ssh-auth" => {
            if has("ssh-privatekey") {
                Vec::new()
            } else {
                vec![required_key("ssh-privatekey")]
            }
        }
        "kubernetes.io/tls" => ["tls.crt", "tls.key"]
            .into_iter()
            .filter(|key| !has(key))
            .map(required_key)
            .collect(),
        _ => Vec::new(),
    }
}
