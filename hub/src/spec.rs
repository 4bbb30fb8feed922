//! Declarative specs in ESO's vocabulary: `kind: SecretStore` (a Key Vault and how to reach it) and
//! `kind: FleetSecret` (what every matching cluster must hold). YAML files with several documents,
//! or directories of them, are parsed strictly and validated as ESO does; every problem is reported
//! as `file:line: field.path: message`, and nothing is accepted when anything is wrong.
//!
//! - `yaml`: YAML → JSON tree plus the line of every field path.
//! - `raw`: the written shape (serde, unknown fields rejected); serialized back as canonical YAML.
//! - `validate`: the rules, producing the checked model below.
//! - `template`: ESO-style `target.template.data` templates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::LabelSelector;

pub mod eso;
mod raw;
#[cfg(test)]
mod schema;
pub mod template;
mod validate;
mod yaml;

pub use template::{Template, TemplateError};
pub(crate) use validate::{is_dns1123_label, is_label_value, is_qualified_name, is_secret_key};

/// The two kinds of spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `kind: SecretStore`.
    SecretStore,
    /// `kind: FleetSecret`.
    FleetSecret,
}

impl Kind {
    /// The `kind:` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretStore => "SecretStore",
            Self::FleetSecret => "FleetSecret",
        }
    }
}

/// One validated spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A Key Vault.
    SecretStore(SecretStoreSpec),
    /// A secret for the fleet.
    FleetSecret(FleetSecretSpec),
}

impl Spec {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::SecretStore(_) => Kind::SecretStore,
            Self::FleetSecret(_) => Kind::FleetSecret,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Self::SecretStore(store) => &store.name,
            Self::FleetSecret(secret) => &secret.name,
        }
    }
}

/// A spec with where it came from and its canonical YAML (what the store keeps; comments and
/// formatting are dropped, so only a real change bumps the generation).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSpec {
    /// File name as given.
    pub file: String,
    /// Line of the document's start.
    pub line: usize,
    /// The checked spec.
    pub spec: Spec,
    /// Canonical YAML of the document (see [`kubernetes_yaml`] for display).
    pub canonical_yaml: String,
    /// Written in the deprecated flat shape (top-level `name`, no `metadata`/`spec`).
    pub legacy_shape: bool,
}

/// `kind: SecretStore`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretStoreSpec {
    /// DNS-1123 label.
    pub name: String,
    /// `https://<vault>.vault.azure.net` (any https URL for sovereign clouds and emulators).
    pub vault_url: url::Url,
    /// How the hub authenticates.
    pub auth: AuthType,
    /// Azure cloud.
    pub environment: AzureEnvironment,
    /// Interval of the list-versions sweep.
    pub poll_interval: Duration,
    /// Key Vault request budget: sustained requests per second.
    pub rate_per_second: u32,
    /// Burst allowance above the sustained rate.
    pub rate_burst: u32,
}

/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Default sustained Key Vault requests per second per store.
pub const DEFAULT_RATE_PER_SECOND: u32 = 50;

/// How the hub authenticates to a Key Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthType {
    /// Workload identity federation (the recommended form on AKS).
    WorkloadIdentity {
        /// Tenant; from the environment when absent.
        tenant_id: Option<String>,
        /// Client id; from the environment when absent.
        client_id: Option<String>,
    },
    /// Managed identity, optionally one of several by client id.
    ManagedIdentity {
        /// User-assigned identity's client id.
        identity_id: Option<String>,
    },
    /// Service principal with a client secret read from an env var or a file.
    ServicePrincipal {
        /// Tenant id.
        tenant_id: String,
        /// Client id.
        client_id: String,
        /// Where the client secret is read from.
        client_secret: CredentialSource,
    },
    /// The developer's `az login` (demos).
    AzureCli,
}

impl AuthType {
    /// The `authType:` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::WorkloadIdentity { .. } => "WorkloadIdentity",
            Self::ManagedIdentity { .. } => "ManagedIdentity",
            Self::ServicePrincipal { .. } => "ServicePrincipal",
            Self::AzureCli => "AzureCli",
        }
    }
}

/// Where a credential is read from at run time (specs never hold one inline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// An environment variable of the hub process.
    Env(String),
    /// A file readable by the hub.
    File(PathBuf),
}

/// Azure clouds (`environmentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureEnvironment {
    /// Azure public cloud.
    PublicCloud,
    /// Azure Government.
    UsGovernmentCloud,
    /// Azure China.
    ChinaCloud,
}

/// `kind: FleetSecret`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSecretSpec {
    /// DNS-1123 subdomain; the sync key.
    pub name: String,
    /// SecretStore it reads from.
    pub store_ref: String,
    /// `data[]`.
    pub data: Vec<DataEntry>,
    /// `dataFrom[]`.
    pub data_from: Vec<DataFrom>,
    /// The Secret written in each cluster.
    pub target: Target,
    /// Which clusters hold it (hub-side inventory labels); empty matches every cluster.
    pub clusters: LabelSelector,
    /// Optional wave rollout of new revisions.
    pub rollout: Option<Rollout>,
    /// `NearExpiry` threshold of this FleetSecret (`None`: the hub's `--near-expiry-threshold`).
    pub near_expiry_threshold: Option<Duration>,
}

impl FleetSecretSpec {
    /// Every Key Vault secret named directly (data and extract), in order, without duplicates.
    pub fn remote_keys(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.data
            .iter()
            .map(|entry| &entry.remote_ref)
            .chain(self.data_from.iter().filter_map(|from| match from {
                DataFrom::Extract(remote_ref) => Some(remote_ref),
                DataFrom::Find(_) => None,
            }))
            .map(|remote_ref| remote_ref.key.as_str())
            .filter(|key| seen.insert(*key))
            .collect()
    }
}

/// One `data[]` entry: one Secret key from one Key Vault secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    /// Key in the Secret (or template variable name when a template is used).
    pub secret_key: String,
    /// Where the value comes from.
    pub remote_ref: RemoteRef,
}

/// A Key Vault secret or certificate reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// Key Vault object name (without the `secret/` or `cert/` prefix). For a certificate it is
    /// also the name of its companion secret, which is what the hub reads and watches.
    pub key: String,
    /// What the reference reads (`secret/`, the default, or `cert/`).
    pub object: ObjectType,
    /// Fixed Key Vault version (32 hex characters); `None` follows the latest.
    pub version: Option<String>,
    /// JSON path (`a.b`) inside a JSON value.
    pub property: Option<String>,
    /// How the value is decoded.
    pub decoding: DecodingStrategy,
}

/// The Key Vault object type a reference names, by its `key` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectType {
    /// `secret/NAME` or `NAME`: the secret's value.
    #[default]
    Secret,
    /// `cert/NAME`: a certificate, read through its companion secret (key and certificates, PEM
    /// or PFX). In `data[]` the value is the certificate's DER (Key Vault's `cer`, as ESO); in
    /// `dataFrom[].extract` it yields `tls.crt` (the chain, PEM) and `tls.key` (the private key,
    /// PEM).
    Certificate,
}

/// `decodingStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodingStrategy {
    /// Use the value as it is.
    #[default]
    None,
    /// Standard base64.
    Base64,
    /// URL-safe base64.
    Base64Url,
    /// Base64 or URL-safe base64 when the value decodes, else as it is.
    Auto,
}

/// One `dataFrom[]` entry.
#[derive(Debug, Clone)]
pub enum DataFrom {
    /// A JSON object value whose members become Secret keys.
    Extract(RemoteRef),
    /// Every enabled secret whose name and tags match; the secret name becomes the Secret key.
    Find(Find),
}

impl PartialEq for DataFrom {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Extract(a), Self::Extract(b)) => a == b,
            (Self::Find(a), Self::Find(b)) => a == b,
            _ => false,
        }
    }
}

/// `dataFrom[].find`.
#[derive(Debug, Clone)]
pub struct Find {
    /// Name filter.
    pub name: Option<regex::Regex>,
    /// Tags that must all be present with these values.
    pub tags: BTreeMap<String, String>,
    /// How matched values are decoded.
    pub decoding: DecodingStrategy,
}

impl PartialEq for Find {
    fn eq(&self, other: &Self) -> bool {
        self.name.as_ref().map(regex::Regex::as_str) == other.name.as_ref().map(regex::Regex::as_str)
            && self.tags == other.tags
            && self.decoding == other.decoding
    }
}

impl Find {
    /// Whether a Key Vault secret with this name and these tags is selected.
    pub fn matches(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.name.as_ref().is_none_or(|regex| regex.is_match(name))
            && self.tags.iter().all(|(key, value)| tags.get(key) == Some(value))
    }
}

/// `target`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Secret name (defaults to the FleetSecret name).
    pub name: String,
    /// Secret type (default `Opaque`).
    pub secret_type: String,
    /// Where the Secret is written.
    pub namespaces: TargetNamespaces,
    /// Labels from `template.metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Annotations from `template.metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `template.data`: Secret key → template.
    pub template_data: BTreeMap<String, Template>,
    /// `template.mergePolicy`.
    pub merge_policy: MergePolicy,
    /// `creationPolicy`.
    pub creation_policy: CreationPolicy,
    /// `deletionPolicy`.
    pub deletion_policy: DeletionPolicy,
    /// `immutable`.
    pub immutable: bool,
}

/// Target namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetNamespaces {
    /// These namespaces.
    List(Vec<String>),
    /// Namespaces whose labels match, resolved by the agent.
    Selector(LabelSelector),
}

/// `template.mergePolicy`: whether templated keys replace the data keys or add to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergePolicy {
    /// The Secret holds the templated keys only (ESO's default).
    #[default]
    Replace,
    /// The Secret holds the data keys plus the templated keys.
    Merge,
}

/// ESO's `creationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreationPolicy {
    /// Create and own the Secret.
    #[default]
    Owner,
    /// Merge into an existing Secret.
    Merge,
    /// Create without owning; never deleted.
    Orphan,
}

/// ESO's `deletionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeletionPolicy {
    /// Leave the Secret when the FleetSecret no longer applies.
    #[default]
    Retain,
    /// Delete the Secret (only when owned).
    Delete,
}

/// `rollout`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Ordered waves; a cluster belongs to the first wave that selects it. Clusters no wave selects
    /// form an implicit last wave.
    pub waves: Vec<Wave>,
    /// Fraction (0..=1) of a wave's clusters in error that pauses the rollout.
    pub pause_on_error_rate: f64,
}

/// One rollout wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wave {
    /// Clusters whose labels match.
    Selector(LabelSelector),
    /// This cumulative percentage (1-100) of the targeted clusters, chosen by a stable hash of the
    /// cluster id.
    Percent(u8),
}

/// One problem found in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Field path, e.g. `target.creationPolicy`; empty for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One issue, one line: a line break that came from the input (a quoted key, a value
        // quoted by serde's message) is shown escaped.
        let (path, message) = (one_line(&self.path), one_line(&self.message));
        if path.is_empty() {
            write!(f, "{}:{}: {message}", self.file, self.line)
        } else {
            write!(f, "{}:{}: {path}: {message}", self.file, self.line)
        }
    }
}

fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        text.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        text.into()
    }
}

/// Why specs were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// One or more problems; every one is listed, one per line.
    #[error("{}", Issues(.0))]
    Invalid(Vec<Issue>),
}

struct Issues<'a>(&'a [Issue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// A spec file's name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFile {
    /// Name used in messages.
    pub name: String,
    /// YAML text.
    pub content: String,
}

/// Largest spec file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Reads a file, or every `*.yaml`/`*.yml` file of a directory tree (sorted by path).
pub fn read_path(path: &Path) -> Result<Vec<SpecFile>, SpecError> {
    let read_error = |source| SpecError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_dir() {
        let content = std::fs::read_to_string(path).map_err(read_error)?;
        return Ok(vec![SpecFile {
            name: path.display().to_string(),
            content,
        }]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort();
    for entry in entries {
        let is_yaml = entry
            .extension()
            .is_some_and(|extension| extension == "yaml" || extension == "yml");
        if entry.is_dir() || is_yaml {
            files.extend(read_path(&entry)?);
        }
    }
    Ok(files)
}

/// Parses and validates every document of every file. All problems are collected; on any, nothing
/// is returned. Names must be unique per kind across the files, and a FleetSecret's `storeRef` must
/// name a SecretStore in these files or in `known_stores`.
pub fn parse_files(
    files: &[SpecFile],
    known_stores: &BTreeSet<String>,
) -> Result<Vec<LoadedSpec>, SpecError> {
    let mut issues = Vec::new();
    let mut specs = Vec::new();
    for file in files {
        if file.content.len() > MAX_FILE_BYTES {
            issues.push(Issue {
                file: file.name.clone(),
                line: 1,
                path: String::new(),
                message: format!("file is larger than {MAX_FILE_BYTES} bytes"),
            });
            continue;
        }
        validate::parse_file(&file.name, &file.content, &mut specs, &mut issues);
    }
    let mut seen = BTreeMap::new();
    let mut stores: BTreeSet<&str> = known_stores.iter().map(String::as_str).collect();
    for loaded in &specs {
        if let Some((file, line)) = seen.insert(
            (loaded.spec.kind(), loaded.spec.name()),
            (&loaded.file, loaded.line),
        ) {
            issues.push(Issue {
                file: loaded.file.clone(),
                line: loaded.line,
                path: validate::shown_path("metadata.name", loaded.legacy_shape),
                message: format!(
                    "{} {:?} is also defined at {file}:{line}",
                    loaded.spec.kind().as_str(),
                    loaded.spec.name()
                ),
            });
        }
        if let Spec::SecretStore(store) = &loaded.spec {
            stores.insert(&store.name);
        }
    }
    for loaded in &specs {
        if let Spec::FleetSecret(secret) = &loaded.spec
            && !stores.contains(secret.store_ref.as_str())
        {
            issues.push(Issue {
                file: loaded.file.clone(),
                line: loaded.line,
                path: validate::shown_path("spec.storeRef", loaded.legacy_shape),
                message: format!("no SecretStore named {:?}", secret.store_ref),
            });
        }
    }
    if issues.is_empty() {
        Ok(specs)
    } else {
        issues.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Err(SpecError::Invalid(issues))
    }
}

/// One warning per document written in the deprecated flat shape (top-level `name`, no
/// `metadata`/`spec`), as `file:line: message`. Such documents are still accepted (and stored in the
/// Kubernetes shape); the warning says how to move. Unreadable YAML yields no warning here: parsing
/// reports it.
pub fn deprecation_warnings(files: &[SpecFile]) -> Vec<Issue> {
    let mut warnings = Vec::new();
    for file in files {
        let Ok(documents) = yaml::parse_documents(&file.content) else {
            continue;
        };
        for document in documents {
            if let Some(object) = document.value.as_object()
                && object.contains_key("kind")
                && validate::is_legacy(object)
            {
                warnings.push(Issue {
                    file: file.name.clone(),
                    line: document.line_of(""),
                    path: String::new(),
                    message: format!(
                        "deprecated flat spec shape: write apiVersion: {}, metadata.name and the other fields under spec \
                         (docs/spec.md); `keyfleet get fleetsecrets|stores -o yaml` prints the stored spec in that shape",
                        validate::API_VERSION
                    ),
                });
            }
        }
    }
    warnings
}

/// What a set of spec files defines, as far as `apply --prune` needs: the kinds and names, and
/// which store each FleetSecret reads. Read loosely (the hub validates); unreadable documents are
/// skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// `(kind, metadata.name)` of every document.
    pub names: BTreeSet<(Kind, String)>,
    /// `(FleetSecret name, storeRef)` of every FleetSecret.
    pub store_refs: BTreeSet<(String, String)>,
}

/// The specs `files` define, in either shape.
pub fn declared(files: &[SpecFile]) -> Declared {
    let mut declared = Declared::default();
    for file in files {
        let Ok(documents) = yaml::parse_documents(&file.content) else {
            continue;
        };
        for document in documents {
            let value = &document.value;
            let legacy = value.as_object().is_some_and(validate::is_legacy);
            let (name, body) = if legacy {
                (&value["name"], value)
            } else {
                (&value["metadata"]["name"], &value["spec"])
            };
            let (Some(name), Some(kind)) = (name.as_str(), value["kind"].as_str()) else {
                continue;
            };
            match kind {
                "SecretStore" => {
                    declared.names.insert((Kind::SecretStore, name.to_owned()));
                }
                "FleetSecret" => {
                    declared.names.insert((Kind::FleetSecret, name.to_owned()));
                    if let Some(store) = body["storeRef"].as_str() {
                        declared.store_refs.insert((name.to_owned(), store.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }
    declared
}

/// A spec's YAML (canonical or as written, either shape) in the Kubernetes shape, fields in
/// reference order; `None` when it is not a readable spec document.
pub fn kubernetes_yaml(yaml: &str) -> Option<String> {
    let document = yaml::parse_documents(yaml).ok()?.into_iter().next()?;
    let object = document.value.as_object()?;
    let value = if validate::is_legacy(object) {
        validate::from_legacy(object)
    } else {
        document.value.clone()
    };
    match object.get("kind")?.as_str()? {
        "SecretStore" => serde_yaml::to_string(&serde_json::from_value::<raw::SecretStore>(value).ok()?).ok(),
        "FleetSecret" => serde_yaml::to_string(&serde_json::from_value::<raw::FleetSecret>(value).ok()?).ok(),
        _ => None,
    }
}

/// `metadata.labels` of a stored spec's canonical YAML (empty for a flat one).
pub fn stored_labels(yaml: &str) -> BTreeMap<String, String> {
    yaml::parse_documents(yaml)
        .ok()
        .and_then(|documents| documents.into_iter().next())
        .and_then(|document| {
            serde_json::from_value::<BTreeMap<String, String>>(document.value["metadata"]["labels"].clone())
                .ok()
        })
        .unwrap_or_default()
}

/// Parses one stored spec (canonical YAML from the store) back into the model.
pub fn parse_stored(kind: Kind, name: &str, yaml: &str) -> Result<Spec, SpecError> {
    let file = format!("stored {} {name}", kind.as_str());
    let files = [SpecFile {
        name: file,
        content: yaml.to_owned(),
    }];
    // A stored FleetSecret was checked against the stores when it was applied.
    let mut specs = Vec::new();
    let mut issues = Vec::new();
    validate::parse_file(&files[0].name, &files[0].content, &mut specs, &mut issues);
    if !issues.is_empty() {
        return Err(SpecError::Invalid(issues));
    }
    match specs.pop() {
        Some(loaded) if specs.is_empty() && loaded.spec.kind() == kind && loaded.spec.name() == name => {
            Ok(loaded.spec)
        }
        _ => Err(SpecError::Invalid(vec![Issue {
            file: files[0].name.clone(),
            line: 1,
            path: String::new(),
            message: format!("expected exactly one {} named {name:?}", kind.as_str()),
        }])),
    }
}

#[cfg(test)]
mod tests;
