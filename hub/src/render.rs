//! Rendering: a FleetSecret spec plus the Key Vault values of one set of source versions become
//! the complete Kubernetes Secret every targeted cluster writes (one *revision*). Pure: no IO.
//!
//! A certificate reference (`cert/NAME`) reads the certificate's companion secret `NAME`: in
//! `data[]` its value is the leaf certificate's DER (Key Vault's `cer`, as ESO), and
//! `dataFrom[].extract` of it yields `tls.crt` (the chain, PEM) and `tls.key` (the key, PEM).
//!
//! Order as ESO: `dataFrom[]` entries first (later ones win), then `data[]` (overrides), then
//! `target.template.data` (replaces the keys, or adds to them with `mergePolicy: Merge`).
//! `grpc::convert` turns a [`RenderedSecret`] into the wire `SecretPayload` and its sha256.
//!
//! **Invariant:** errors name keys, properties and rules, never a value or any part of one.

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::domain::{SecretValue, Sha256};
use crate::spec::{
    CreationPolicy, DataFrom, DecodingStrategy, DeletionPolicy, FleetSecretSpec, MergePolicy, ObjectType,
    RemoteRef, TargetNamespaces, TemplateError,
};

/// One Key Vault secret value at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceValue {
    /// Key Vault version id.
    pub version: String,
    /// The value.
    pub value: SecretValue,
}

/// The Key Vault values a revision is rendered from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Secrets named by `data[]` and `dataFrom[].extract`, by Key Vault secret name, each at the
    /// version the revision uses (pinned, the spec's fixed version, or the latest).
    pub named: BTreeMap<String, SourceValue>,
    /// For each `dataFrom[].find` entry (by its index in `dataFrom`), the enabled secrets that
    /// matched, by name.
    pub found: BTreeMap<usize, BTreeMap<String, SourceValue>>,
}

impl Sources {
    /// Every (Key Vault secret name, version) used, sorted and unique: what the store records for
    /// the revision.
    pub fn versions(&self) -> Vec<(String, String)> {
        let mut versions: Vec<(String, String)> = self
            .named
            .iter()
            .chain(self.found.values().flatten())
            .map(|(key, source)| (key.clone(), source.version.clone()))
            .collect();
        versions.sort();
        versions.dedup();
        versions
    }
}

/// A fully rendered Secret for one FleetSecret: what a `SecretPayload` carries, minus the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedSecret {
    /// FleetSecret name (the sync key).
    pub key: String,
    /// Target Secret name.
    pub secret_name: String,
    /// Secret type.
    pub secret_type: String,
    /// Target namespaces.
    pub namespaces: TargetNamespaces,
    /// Secret data.
    pub data: BTreeMap<String, SecretValue>,
    /// Labels from the template.
    pub labels: BTreeMap<String, String>,
    /// Annotations from the template.
    pub annotations: BTreeMap<String, String>,
    /// creationPolicy.
    pub creation_policy: CreationPolicy,
    /// deletionPolicy.
    pub deletion_policy: DeletionPolicy,
    /// immutable.
    pub immutable: bool,
}

/// Why a revision cannot be rendered. The previous revision stays in force.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A Key Vault secret the spec names has no value (not fetched, disabled or deleted).
    #[error("no value for Key Vault secret {key:?}")]
    MissingSource {
        /// Key Vault secret name.
        key: String,
    },
    /// `property` or `extract` needs a JSON value.
    #[error("Key Vault secret {key:?} is not a JSON object, so {what} cannot be read from it")]
    NotJson {
        /// Key Vault secret name.
        key: String,
        /// `property "a.b"` or `extract`.
        what: String,
    },
    /// The JSON value has no such property.
    #[error("Key Vault secret {key:?} has no property {property:?}")]
    MissingProperty {
        /// Key Vault secret name.
        key: String,
        /// JSON path.
        property: String,
    },
    /// decodingStrategy Base64/Base64URL on a value that is not.
    #[error("Key Vault secret {key:?} is not valid {strategy} (decodingStrategy)")]
    Decoding {
        /// Key Vault secret name.
        key: String,
        /// Strategy.
        strategy: &'static str,
    },
    /// A certificate's companion secret is not a certificate with its key (PEM or PFX).
    #[error("Key Vault certificate {key:?}: {reason}")]
    Certificate {
        /// Key Vault certificate name.
        key: String,
        /// What is wrong (never a value).
        reason: &'static str,
    },
    /// An extracted or found key is not a valid Secret key.
    #[error(
        "Key Vault secret {key:?} yields the Secret key {secret_key:?}, which is not valid (1-253 of a-z, A-Z, 0-9, -, _, .)"
    )]
    InvalidKey {
        /// Key Vault secret name.
        key: String,
        /// The offending Secret key (a name, not a value).
        secret_key: String,
    },
    /// A template failed.
    #[error("target.template.data.{secret_key}")]
    Template {
        /// Secret key of the template.
        secret_key: String,
        /// Why.
        #[source]
        source: TemplateError,
    },
    /// The Secret type needs a key the rendering does not produce.
    #[error("Secrets of type {secret_type} need the key {required:?}")]
    MissingKey {
        /// Secret type.
        secret_type: String,
        /// Required key.
        required: &'static str,
    },
    /// The docker config JSON has the wrong shape (the reason never quotes the content).
    #[error("{secret_key} is not a valid docker config: {reason}")]
    InvalidDockerConfig {
        /// Secret key.
        secret_key: &'static str,
        /// What is wrong, with a position at most.
        reason: String,
    },
    /// The Secret would exceed Kubernetes' size limit.
    #[error("rendered Secret data is {bytes} bytes, more than the {limit} bytes Kubernetes allows")]
    TooLarge {
        /// Sum of key and value lengths.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing to write.
    #[error("rendered Secret has no data")]
    Empty,
}

/// Renders `spec` over `sources`.
pub fn render(spec: &FleetSecretSpec, sources: &Sources) -> Result<RenderedSecret, RenderError> {
    let mut values: BTreeMap<String, SecretValue> = BTreeMap::new();
    for (index, from) in spec.data_from.iter().enumerate() {
        match from {
            DataFrom::Extract(remote_ref) if remote_ref.object == ObjectType::Certificate => {
                let parts = certificate(sources, &remote_ref.key)?;
                values.insert("tls.crt".to_owned(), SecretValue::new(parts.chain_pem.to_vec()));
                values.insert("tls.key".to_owned(), SecretValue::new(parts.key_pem.to_vec()));
            }
            DataFrom::Extract(remote_ref) => {
                let source = named(sources, &remote_ref.key)?;
                for (secret_key, value) in extract(&remote_ref.key, &source.value)? {
                    let value = decode(&remote_ref.key, value, remote_ref.decoding)?;
                    values.insert(secret_key, value);
                }
            }
            DataFrom::Find(find) => {
                for (name, source) in sources.found.get(&index).into_iter().flatten() {
                    if !crate::spec::is_secret_key(name) {
                        return Err(RenderError::InvalidKey {
                            key: name.clone(),
                            secret_key: name.clone(),
                        });
                    }
                    values.insert(name.clone(), decode(name, source.value.clone(), find.decoding)?);
                }
            }
        }
    }
    for entry in &spec.data {
        let value = resolve(sources, &entry.remote_ref)?;
        values.insert(entry.secret_key.clone(), value);
    }
    let target = &spec.target;
    let mut data = if target.template_data.is_empty() {
        values
    } else {
        let mut data = match target.merge_policy {
            MergePolicy::Merge => values.clone(),
            MergePolicy::Replace => BTreeMap::new(),
        };
        for (secret_key, template) in &target.template_data {
            let value = template
                .execute(&values)
                .map_err(|source| RenderError::Template {
                    secret_key: secret_key.clone(),
                    source,
                })?;
            data.insert(secret_key.clone(), value);
        }
        data
    };
    check_type(&target.secret_type, &mut data)?;
    if data.is_empty() {
        return Err(RenderError::Empty);
    }
    let bytes: usize = data.iter().map(|(key, value)| key.len() + value.len()).sum();
    let limit = keyfleet_proto::limits::MAX_SECRET_DATA_BYTES;
    if bytes > limit {
        return Err(RenderError::TooLarge { bytes, limit });
    }
    Ok(RenderedSecret {
        key: spec.name.clone(),
        secret_name: target.name.clone(),
        secret_type: target.secret_type.clone(),
        namespaces: target.namespaces.clone(),
        data,
        labels: target.labels.clone(),
        annotations: target.annotations.clone(),
        creation_policy: target.creation_policy,
        deletion_policy: target.deletion_policy,
        immutable: target.immutable,
    })
}

/// Digest of the data alone (key, value pairs), for tests and logs that must compare renderings
/// without showing them.
pub fn data_digest(data: &BTreeMap<String, SecretValue>) -> Sha256 {
    let mut bytes = Vec::new();
    for (key, value) in data {
        bytes.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        bytes.extend_from_slice(value.expose());
    }
    let digest = Sha256::of(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    digest
}

fn named<'a>(sources: &'a Sources, key: &str) -> Result<&'a SourceValue, RenderError> {
    sources
        .named
        .get(key)
        .ok_or_else(|| RenderError::MissingSource { key: key.to_owned() })
}

/// A certificate's parts, split from its companion secret's value.
fn certificate(sources: &Sources, key: &str) -> Result<crate::spec::template::CertificateParts, RenderError> {
    let source = named(sources, key)?;
    crate::spec::template::certificate_parts(source.value.expose()).map_err(|reason| {
        RenderError::Certificate {
            key: key.to_owned(),
            reason,
        }
    })
}

fn resolve(sources: &Sources, remote_ref: &RemoteRef) -> Result<SecretValue, RenderError> {
    if remote_ref.object == ObjectType::Certificate {
        // As ESO: the certificate's DER (Key Vault's `cer`), no key.
        let parts = certificate(sources, &remote_ref.key)?;
        return decode(
            &remote_ref.key,
            SecretValue::new(parts.leaf_der.to_vec()),
            remote_ref.decoding,
        );
    }
    let source = named(sources, &remote_ref.key)?;
    let value = match &remote_ref.property {
        None => source.value.clone(),
        Some(property) => property_value(&remote_ref.key, &source.value, property)?,
    };
    decode(&remote_ref.key, value, remote_ref.decoding)
}

/// Parses a JSON value without letting serde_json's messages (which may quote input) escape.
fn parse_json(
    key: &str,
    value: &SecretValue,
    what: impl Fn() -> String,
) -> Result<serde_json::Value, RenderError> {
    serde_json::from_slice(value.expose()).map_err(|_| RenderError::NotJson {
        key: key.to_owned(),
        what: what(),
    })
}

/// A JSON member as Secret bytes: strings as their text, anything else as compact JSON.
fn json_bytes(value: &serde_json::Value) -> SecretValue {
    match value {
        serde_json::Value::String(text) => SecretValue::new(text.as_bytes()),
        other => SecretValue::new(other.to_string().into_bytes()),
    }
}

fn property_value(key: &str, value: &SecretValue, property: &str) -> Result<SecretValue, RenderError> {
    let what = || format!("property {property:?}");
    let mut document = parse_json(key, value, what)?;
    let mut current = &document;
    for segment in property.split('.') {
        current = match current {
            serde_json::Value::Object(map) => map.get(segment),
            serde_json::Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(|| RenderError::MissingProperty {
            key: key.to_owned(),
            property: property.to_owned(),
        })?;
    }
    let result = json_bytes(current);
    wipe_json(&mut document);
    Ok(result)
}

fn extract(key: &str, value: &SecretValue) -> Result<Vec<(String, SecretValue)>, RenderError> {
    let mut document = parse_json(key, value, || "extract".to_owned())?;
    let serde_json::Value::Object(map) = &document else {
        wipe_json(&mut document);
        return Err(RenderError::NotJson {
            key: key.to_owned(),
            what: "extract".to_owned(),
        });
    };
    let mut entries = Vec::with_capacity(map.len());
    for (secret_key, member) in map {
        if !crate::spec::is_secret_key(secret_key) {
            let secret_key = secret_key.clone();
            wipe_json(&mut document);
            return Err(RenderError::InvalidKey {
                key: key.to_owned(),
                secret_key,
            });
        }
        entries.push((secret_key.clone(), json_bytes(member)));
    }
    wipe_json(&mut document);
    Ok(entries)
}

/// Overwrites the strings of a parsed secret JSON document before it is dropped.
fn wipe_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => zeroize::Zeroize::zeroize(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(wipe_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(wipe_json),
        _ => {}
    }
}

fn decode(key: &str, value: SecretValue, strategy: DecodingStrategy) -> Result<SecretValue, RenderError> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let error = |strategy| RenderError::Decoding {
        key: key.to_owned(),
        strategy,
    };
    let trimmed = value.expose().trim_ascii();
    match strategy {
        DecodingStrategy::None => Ok(value),
        DecodingStrategy::Base64 => STANDARD
            .decode(trimmed)
            .map(SecretValue::new)
            .map_err(|_| error("base64")),
        DecodingStrategy::Base64Url => URL_SAFE
            .decode(trimmed)
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
            .map(SecretValue::new)
            .map_err(|_| error("base64url")),
        DecodingStrategy::Auto => Ok(STANDARD
            .decode(trimmed)
            .or_else(|_| URL_SAFE.decode(trimmed))
            .map(SecretValue::new)
            .unwrap_or(value)),
    }
}

/// Checks the keys and shape a Kubernetes Secret type requires.
fn check_type(secret_type: &str, data: &mut BTreeMap<String, SecretValue>) -> Result<(), RenderError> {
    let require = |data: &BTreeMap<String, SecretValue>, required: &'static str| {
        if data.contains_key(required) {
            Ok(())
        } else {
            Err(RenderError::MissingKey {
                secret_type: secret_type.to_owned(),
                required,
            })
        }
    };
    match secret_type {
        "kubernetes.io/dockerconfigjson" => {
            require(data, ".dockerconfigjson")?;
            check_docker_config(".dockerconfigjson", &data[".dockerconfigjson"], true)
        }
        "kubernetes.io/dockercfg" => {
            require(data, ".dockercfg")?;
            check_docker_config(".dockercfg", &data[".dockercfg"], false)
        }
        "kubernetes.io/tls" => {
            require(data, "tls.crt")?;
            require(data, "tls.key")
        }
        "kubernetes.io/ssh-auth" => require(data, "ssh-privatekey"),
        "kubernetes.io/basic-auth" => {
            if data.contains_key("username") || data.contains_key("password") {
                Ok(())
            } else {
                require(data, "username")
            }
        }
        _ => Ok(()),
    }
}

/// Validates `{"auths": {"<registry>": {...}}}` (or the legacy `.dockercfg` map of registries)
/// without ever quoting the content: the reason carries at most a line and column.
fn check_docker_config(
    secret_key: &'static str,
    value: &SecretValue,
    with_auths: bool,
) -> Result<(), RenderError> {
    let invalid = |reason: String| RenderError::InvalidDockerConfig { secret_key, reason };
    let mut document: serde_json::Value = serde_json::from_slice(value.expose()).map_err(|error| {
        invalid(format!(
            "not JSON (line {} column {})",
            error.line(),
            error.column()
        ))
    })?;
    let result = (|| {
        let root = document
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".to_owned()))?;
        let registries = if with_auths {
            root.get("auths")
                .ok_or_else(|| invalid("no \"auths\" member".to_owned()))?
                .as_object()
                .ok_or_else(|| invalid("\"auths\" is not an object".to_owned()))?
        } else {
            root
        };
        if registries.is_empty() {
            return Err(invalid("no registry entry".to_owned()));
        }
        for (index, entry) in registries.values().enumerate() {
            let entry = entry
                .as_object()
                .ok_or_else(|| invalid(format!("registry entry {index} is not an object")))?;
            let has_credentials = entry.contains_key("auth")
                || (entry.contains_key("username") && entry.contains_key("password"))
                || entry.contains_key("identitytoken");
            if !has_credentials {
                return Err(invalid(format!(
                    "registry entry {index} has neither auth, username and password, nor identitytoken"
                )));
            }
            for field in ["auth", "username", "password", "identitytoken"] {
                if entry.get(field).is_some_and(|member| !member.is_string()) {
                    return Err(invalid(format!(
                        "registry entry {index}: {field} is not a string"
                    )));
                }
            }
        }
        Ok(())
    })();
    wipe_json(&mut document);
    result
}

#[cfg(test)]
mod tests;
