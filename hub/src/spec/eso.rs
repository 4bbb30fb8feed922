//! `keyfleet import eso`: External Secrets Operator manifests (`external-secrets.io/v1` and
//! `v1beta1`; `SecretStore`, `ClusterSecretStore` with the `azurekv` provider, `ExternalSecret`,
//! `ClusterExternalSecret`) → keyfleet specs in the Kubernetes shape.
//!
//! Every field with a keyfleet meaning is mapped; every other field is reported as a [`Finding`]
//! (file, line, field path, value, why) and never silently dropped. The output of each document
//! is checked with keyfleet's own parser ([`super::parse_files`]), so what is written is what
//! `keyfleet apply --dry-run` accepts; a document whose conversion would not be accepted is left
//! out and reported as an error.
//!
//! - `store.rs`: SecretStore / ClusterSecretStore → SecretStore (auth, vault, cloud).
//! - `external_secret.rs`: ExternalSecret / ClusterExternalSecret → FleetSecret.
//! - This file: reading documents, resolving store references across namespaces, merging the
//!   same ExternalSecret applied in several namespaces, checking and ordering the output.
//!
//! **Invariant:** ESO manifests hold references, never secret values; a reported value is the
//! manifest's own text (truncated), and a client secret becomes a file reference for the hub.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::yaml::{self, Document};
use super::{SpecFile, validate::API_VERSION};

mod external_secret;
mod store;
#[cfg(test)]
mod tests;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Mapped, but something must be done for it to work (mount a credential file, create a
    /// store on the hub).
    Note,
    /// A field with no keyfleet meaning: not converted.
    Warning,
    /// The document could not be converted; it is not in the output.
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Note => "note",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One thing the conversion reports about a field of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// Input file name as given.
    pub file: String,
    /// 1-based line of the field.
    pub line: usize,
    /// Field path in the ESO document (`spec.data[2].remoteRef.key`); empty for the document.
    pub path: String,
    /// The field's value as written (compact JSON, truncated), when there is one.
    pub value: Option<String>,
    /// Why it was not converted, or what to do.
    pub why: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: ", self.file, self.line, self.severity.as_str())?;
        if !self.path.is_empty() {
            write!(f, "{}", self.path)?;
            if let Some(value) = &self.value {
                write!(f, " = {value}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.why.replace('\n', "\\n"))
    }
}

/// Conversion settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the hub finds client secrets: a ServicePrincipal's `authSecretRef.clientSecret`
    /// (Secret `NAME`, key `KEY`) becomes `clientSecret.file: DIR/NAME/KEY`.
    pub credentials_dir: PathBuf,
}

/// Default of [`Options::credentials_dir`]: where the hub chart mounts credential Secrets.
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/keyfleet/credentials";

impl Default for Options {
    fn default() -> Self {
        Self {
            credentials_dir: PathBuf::from(DEFAULT_CREDENTIALS_DIR),
        }
    }
}

/// One converted keyfleet document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `SecretStore` or `FleetSecret`.
    pub kind: &'static str,
    /// `metadata.name`.
    pub name: String,
    /// Its YAML in the Kubernetes shape, fields in reference order.
    pub yaml: String,
    /// The same as one line of JSON.
    pub json: String,
}

/// The outcome of a conversion.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// keyfleet documents in the Kubernetes shape: SecretStores first, then FleetSecrets, each
    /// sorted by name.
    pub documents: Vec<Output>,
    /// What was reported, in input order.
    pub findings: Vec<Finding>,
}

impl Imported {
    /// The most serious finding, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|finding| finding.severity).max()
    }

    /// The documents as one multi-document YAML stream.
    pub fn to_yaml(&self) -> String {
        self.documents
            .iter()
            .map(|document| document.yaml.as_str())
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The documents as a JSON stream (one object per line), for `jq`.
    pub fn to_json_lines(&self) -> String {
        self.documents
            .iter()
            .map(|document| format!("{}\n", document.json))
            .collect()
    }

    /// A file name for each document: `secretstore-NAME.yaml`, `fleetsecret-NAME.yaml`.
    pub fn file_names(&self) -> Vec<String> {
        self.documents
            .iter()
            .map(|document| format!("{}-{}.yaml", document.kind.to_lowercase(), document.name))
            .collect()
    }
}

/// Where a converted document came from.
#[derive(Debug, Clone)]
struct Source {
    file: String,
    line: usize,
}

/// ESO's identity of a store: `(kind, namespace, name)`; a ClusterSecretStore has no namespace.
type StoreKey = (String, Option<String>, String);

/// A converted SecretStore before output.
#[derive(Debug, Clone)]
struct StoreOut {
    key: StoreKey,
    source: Source,
    /// `metadata` (name filled in last) and `spec` of the keyfleet SecretStore.
    metadata: Map<String, Value>,
    spec: Value,
    /// The shortest `refreshInterval` of the ExternalSecrets that use it.
    poll: Option<Duration>,
}

/// A converted FleetSecret before output.
#[derive(Debug, Clone)]
struct SecretOut {
    name: String,
    source: Source,
    metadata: Map<String, Value>,
    /// `spec` without `target.namespaces`.
    spec: Value,
    /// Namespaces from the ESO namespace (ExternalSecret) or the ClusterExternalSecret's list;
    /// empty when `spec.target.namespaceSelector` is set.
    namespaces: BTreeSet<String>,
    /// The store it references.
    store: StoreKey,
    /// `refreshInterval`, for the store's poll interval.
    refresh: Option<Duration>,
}

/// One ESO document being converted: its findings are recorded with lines.
struct Ctx<'a> {
    file: &'a str,
    document: &'a Document,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    fn find(&mut self, severity: Severity, path: &str, value: Option<&Value>, why: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            file: self.file.to_owned(),
            line: self.document.line_of(path),
            path: path.to_owned(),
            value: value.map(show),
            why: why.into(),
        });
    }

    fn warn(&mut self, path: &str, value: Option<&Value>, why: impl Into<String>) {
        self.find(Severity::Warning, path, value, why);
    }

    fn note(&mut self, path: &str, value: Option<&Value>, why: impl Into<String>) {
        self.find(Severity::Note, path, value, why);
    }

    fn error(&mut self, path: &str, value: Option<&Value>, why: impl Into<String>) {
        self.find(Severity::Error, path, value, why);
    }

    /// Reports every field of `object` at `path` that `handled` does not name.
    fn rest(&mut self, path: &str, object: &Map<String, Value>, handled: &[&str]) {
        for (key, value) in object {
            if !handled.contains(&key.as_str()) {
                self.warn(
                    &join(path, key),
                    Some(value),
                    "no keyfleet equivalent; not converted",
                );
            }
        }
    }

    /// A string field, or `None` (a non-string is reported).
    fn string(&mut self, path: &str, value: Option<&Value>) -> Option<String> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => {
                self.error(path, Some(other), "expected a string");
                None
            }
        }
    }

    /// An object field (empty when absent; a non-object is reported).
    fn object<'v>(&mut self, path: &str, value: Option<&'v Value>) -> Option<&'v Map<String, Value>> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(object)) => Some(object),
            Some(other) => {
                self.error(path, Some(other), "expected a mapping");
                None
            }
        }
    }

    /// `metadata.labels` and `metadata.annotations`, kept for tooling.
    fn metadata(&mut self, metadata: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for field in ["labels", "annotations"] {
            if let Some(Value::Object(map)) = metadata.get(field) {
                let kept: Map<String, Value> = map
                    .iter()
                    .filter(|(key, value)| {
                        let last_applied = key.as_str() == "kubectl.kubernetes.io/last-applied-configuration";
                        value.is_string() && !last_applied
                    })
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                if !kept.is_empty() {
                    out.insert(field.to_owned(), kept.into());
                }
            }
        }
        for (key, value) in metadata {
            if !matches!(key.as_str(), "name" | "namespace" | "labels" | "annotations") {
                self.warn(
                    &format!("metadata.{key}"),
                    Some(value),
                    "server-side metadata; not converted",
                );
            }
        }
        out
    }
}

/// A value as shown in a finding: compact JSON, at most 80 characters.
fn show(value: &Value) -> String {
    let text = match value {
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    };
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(79).collect::<String>())
    } else {
        text
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A Go duration (`1h`, `1h0m0s`, `90s`, `1m30s`, `500ms`); `None` when it does not parse.
pub(crate) fn go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(number * seconds).ok()?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// A Go duration as keyfleet writes it (`1h`, `90s`).
fn duration_text(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs().max(1)))
        .to_string()
        .replace(' ', "")
}

/// The API versions read.
const API_VERSIONS: &[&str] = &["external-secrets.io/v1", "external-secrets.io/v1beta1"];

/// Converts every document of `files`.
pub fn import(files: &[SpecFile], options: &Options) -> Imported {
    let mut findings = Vec::new();
    let mut stores: Vec<StoreOut> = Vec::new();
    let mut secrets: Vec<SecretOut> = Vec::new();
    for file in files {
        let documents = match yaml::parse_documents(&file.content) {
            Ok(documents) => documents,
            Err(error) => {
                findings.push(Finding {
                    severity: Severity::Error,
                    file: file.name.clone(),
                    line: error.line,
                    path: error.path,
                    value: None,
                    why: error.message,
                });
                continue;
            }
        };
        for document in &documents {
            let mut ctx = Ctx {
                file: &file.name,
                document,
                findings: Vec::new(),
            };
            match read_document(&mut ctx, options) {
                Some(Converted::Store(store)) => stores.push(store),
                Some(Converted::Secret(secret)) => secrets.push(secret),
                None => {}
            }
            findings.append(&mut ctx.findings);
        }
    }
    let mut imported = Imported {
        documents: Vec::new(),
        findings,
    };
    assemble(stores, secrets, &mut imported);
    // By file and line (stable: a document's own findings keep their order).
    imported
        .findings
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    imported
}

enum Converted {
    Store(StoreOut),
    Secret(SecretOut),
}

fn read_document(ctx: &mut Ctx<'_>, options: &Options) -> Option<Converted> {
    let Some(object) = ctx.document.value.as_object() else {
        ctx.error("", None, "not a mapping; not a Kubernetes object");
        return None;
    };
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = api_version.split('/').next().unwrap_or_default();
    if group != "external-secrets.io" {
        let what = if kind.is_empty() {
            "a document without kind"
        } else {
            kind
        };
        let why = if kind == "Kustomization" {
            "a kustomization: the directory's files are read as they are, without its patches or generators (pipe `kustomize build DIR` into `-f -` for the built result)".to_owned()
        } else {
            format!("{what} ({api_version}) is not an External Secrets Operator resource; skipped")
        };
        ctx.note("", None, why);
        return None;
    }
    if !API_VERSIONS.contains(&api_version) {
        ctx.error(
            "apiVersion",
            object.get("apiVersion"),
            format!(
                "unsupported version; expected one of {} (convert older manifests with ESO's own tooling first)",
                API_VERSIONS.join(", ")
            ),
        );
        return None;
    }
    ctx.rest("", object, &["apiVersion", "kind", "metadata", "spec", "status"]);
    let metadata = ctx
        .object("metadata", object.get("metadata"))
        .cloned()
        .unwrap_or_default();
    let Some(name) = ctx.string("metadata.name", metadata.get("name")) else {
        ctx.error("metadata", None, "metadata.name is required");
        return None;
    };
    let namespace = ctx.string("metadata.namespace", metadata.get("namespace"));
    let spec = ctx
        .object("spec", object.get("spec"))
        .cloned()
        .unwrap_or_default();
    match kind {
        "SecretStore" | "ClusterSecretStore" => {
            let namespace = if kind == "SecretStore" {
                Some(namespace.unwrap_or_else(|| "default".to_owned()))
            } else {
                None
            };
            let key = (kind.to_owned(), namespace, name.clone());
            store::convert(ctx, key, &metadata, &spec, options).map(Converted::Store)
        }
        "ExternalSecret" => {
            external_secret::convert(ctx, &name, namespace, &metadata, &spec).map(Converted::Secret)
        }
        "ClusterExternalSecret" => {
            external_secret::convert_cluster(ctx, &name, &metadata, &spec).map(Converted::Secret)
        }
        other => {
            ctx.warn(
                "kind",
                object.get("kind"),
                format!("{other} has no keyfleet equivalent (keyfleet reads Key Vault, it does not push to it or generate values); skipped"),
            );
            None
        }
    }
}

/// Resolves store references, names and merges the outputs, checks each with keyfleet's parser
/// and fills `imported.documents`.
fn assemble(mut stores: Vec<StoreOut>, secrets: Vec<SecretOut>, imported: &mut Imported) {
    // Stores: one per ESO identity; a name used twice (namespaced stores of the same name in two
    // namespaces, or a SecretStore and a ClusterSecretStore) keeps it only where it is the same
    // store, else each gets `NAME-NAMESPACE`.
    let mut seen: BTreeMap<StoreKey, usize> = BTreeMap::new();
    let mut unique: Vec<StoreOut> = Vec::new();
    for store in stores.drain(..) {
        if let Some(&first) = seen.get(&store.key) {
            imported.findings.push(Finding {
                severity: Severity::Error,
                file: store.source.file.clone(),
                line: store.source.line,
                path: "metadata.name".to_owned(),
                value: Some(show(&Value::String(store.key.2.clone()))),
                why: format!(
                    "{} is defined twice (also at {}:{}); the first one is converted",
                    describe_store(&store.key),
                    unique[first].source.file,
                    unique[first].source.line
                ),
            });
            continue;
        }
        seen.insert(store.key.clone(), unique.len());
        unique.push(store);
    }
    let mut store_names: BTreeMap<StoreKey, String> = BTreeMap::new();
    let mut by_name: BTreeMap<&str, Vec<&StoreOut>> = BTreeMap::new();
    for store in &unique {
        by_name.entry(store.key.2.as_str()).or_default().push(store);
    }
    for (name, group) in &by_name {
        let same = group.windows(2).all(|pair| pair[0].spec == pair[1].spec);
        for store in group {
            let out = if same {
                (*name).to_owned()
            } else {
                match &store.key.1 {
                    Some(namespace) => format!("{name}-{namespace}"),
                    None => format!("{name}-cluster"),
                }
            };
            store_names.insert(store.key.clone(), out);
        }
    }
    // FleetSecrets: resolve the store; the same ExternalSecret in several namespaces becomes one
    // FleetSecret targeting all of them.
    let mut resolved: Vec<SecretOut> = Vec::new();
    let mut missing: BTreeSet<String> = BTreeSet::new();
    for mut secret in secrets {
        let store_name = match store_names.get(&secret.store) {
            Some(name) => name.clone(),
            None => {
                let name = secret.store.2.clone();
                imported.findings.push(Finding {
                    severity: Severity::Note,
                    file: secret.source.file.clone(),
                    line: secret.source.line,
                    path: "spec.secretStoreRef".to_owned(),
                    value: Some(show(&Value::String(name.clone()))),
                    why: format!(
                        "{} is not among the converted documents: a SecretStore named {name:?} must exist on the hub",
                        describe_store(&secret.store)
                    ),
                });
                missing.insert(name.clone());
                name
            }
        };
        if let Some(refresh) = secret.refresh
            && let Some(store) = unique.iter_mut().find(|store| store.key == secret.store)
        {
            store.poll = Some(store.poll.map_or(refresh, |poll| poll.min(refresh)));
        }
        secret.spec["storeRef"] = json!(store_name);
        resolved.push(secret);
    }
    let mut merged: BTreeMap<String, Vec<SecretOut>> = BTreeMap::new();
    for secret in resolved {
        merged.entry(secret.name.clone()).or_default().push(secret);
    }
    let mut fleet_secrets: Vec<(Source, Value)> = Vec::new();
    for (name, group) in merged {
        let same = group
            .windows(2)
            .all(|pair| pair[0].spec == pair[1].spec && pair[0].metadata == pair[1].metadata);
        if same {
            let namespaces: BTreeSet<String> = group
                .iter()
                .flat_map(|secret| secret.namespaces.iter().cloned())
                .collect();
            let first = &group[0];
            fleet_secrets.push((
                first.source.clone(),
                fleet_secret_document(&name, &first.metadata, &first.spec, &namespaces),
            ));
        } else {
            for secret in &group {
                let suffix = secret
                    .namespaces
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "cluster".to_owned());
                let renamed = format!("{name}-{suffix}");
                let mut spec = secret.spec.clone();
                if spec["target"].get("name").is_none() {
                    spec["target"]["name"] = json!(name);
                }
                let target = spec["target"]["name"].as_str().unwrap_or_default().to_owned();
                imported.findings.push(Finding {
                    severity: Severity::Note,
                    file: secret.source.file.clone(),
                    line: secret.source.line,
                    path: "metadata.name".to_owned(),
                    value: Some(show(&Value::String(name.clone()))),
                    why: format!(
                        "ExternalSecrets named {name:?} differ between namespaces; this one becomes FleetSecret {renamed:?} (its Secret is still named {target:?})"
                    ),
                });
                fleet_secrets.push((
                    secret.source.clone(),
                    fleet_secret_document(&renamed, &secret.metadata, &spec, &secret.namespaces),
                ));
            }
        }
    }
    // Output: stores (poll interval from the ExternalSecrets), then FleetSecrets; each checked.
    let mut store_documents: Vec<(Source, Value)> = unique
        .iter()
        .map(|store| {
            let mut spec = store.spec.clone();
            if let Some(poll) = store.poll {
                let poll = poll.clamp(Duration::from_secs(1), Duration::from_secs(86_400));
                spec["provider"]["azurekv"]["pollInterval"] = json!(duration_text(poll));
            }
            let mut metadata = store.metadata.clone();
            metadata.insert("name".to_owned(), json!(store_names[&store.key]));
            (
                store.source.clone(),
                json!({ "apiVersion": API_VERSION, "kind": "SecretStore", "metadata": sort_metadata(metadata), "spec": spec }),
            )
        })
        .collect();
    store_documents.sort_by(|a, b| {
        a.1["metadata"]["name"]
            .as_str()
            .cmp(&b.1["metadata"]["name"].as_str())
    });
    let known: BTreeSet<String> = store_documents
        .iter()
        .filter_map(|(_, document)| document["metadata"]["name"].as_str().map(str::to_owned))
        .chain(missing)
        .collect();
    for (source, document) in store_documents.into_iter().chain(fleet_secrets) {
        let text = match serde_yaml::to_string(&document) {
            Ok(text) => text,
            Err(error) => {
                imported.findings.push(Finding {
                    severity: Severity::Error,
                    file: source.file.clone(),
                    line: source.line,
                    path: String::new(),
                    value: None,
                    why: format!("cannot write the converted document: {error}"),
                });
                continue;
            }
        };
        let kind = document["kind"].as_str().unwrap_or_default().to_owned();
        let name = document["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let check = [SpecFile {
            name: format!("{kind}/{name}"),
            content: text,
        }];
        match super::parse_files(&check, &known) {
            Ok(loaded) => {
                let Some(loaded) = loaded.into_iter().next() else {
                    continue;
                };
                let kind = loaded.spec.kind().as_str();
                let yaml = super::kubernetes_yaml(&loaded.canonical_yaml).unwrap_or_default();
                let json = canonical_json(kind, &yaml);
                imported.documents.push(Output {
                    kind,
                    name,
                    yaml,
                    json,
                });
            }
            Err(error) => imported.findings.push(Finding {
                severity: Severity::Error,
                file: source.file.clone(),
                line: source.line,
                path: String::new(),
                value: None,
                why: format!(
                    "the converted {kind} {name:?} would not be accepted by keyfleet, so it is left out: {}",
                    error.to_string().replace('\n', "; ")
                ),
            }),
        }
    }
}

/// The Kubernetes-shaped YAML as one line of JSON, fields in the same order.
fn canonical_json(kind: &str, yaml: &str) -> String {
    let json = match kind {
        "SecretStore" => {
            serde_yaml::from_str::<super::raw::SecretStore>(yaml).map(|raw| serde_json::to_string(&raw))
        }
        _ => serde_yaml::from_str::<super::raw::FleetSecret>(yaml).map(|raw| serde_json::to_string(&raw)),
    };
    match json {
        Ok(Ok(json)) => json,
        // The canonical YAML was just produced from these types.
        _ => String::new(),
    }
}

fn describe_store(key: &StoreKey) -> String {
    match &key.1 {
        Some(namespace) => format!("{} {:?} in namespace {namespace:?}", key.0, key.2),
        None => format!("{} {:?}", key.0, key.2),
    }
}

/// `metadata` with `name` first.
fn sort_metadata(mut metadata: Map<String, Value>) -> Value {
    let mut out = Map::new();
    if let Some(name) = metadata.remove("name") {
        out.insert("name".to_owned(), name);
    }
    out.extend(metadata);
    out.into()
}

fn fleet_secret_document(
    name: &str,
    metadata: &Map<String, Value>,
    spec: &Value,
    namespaces: &BTreeSet<String>,
) -> Value {
    let mut metadata = metadata.clone();
    metadata.insert("name".to_owned(), json!(name));
    let mut spec = spec.clone();
    if !namespaces.is_empty() {
        spec["target"]["namespaces"] = json!(namespaces);
    }
    json!({ "apiVersion": API_VERSION, "kind": "FleetSecret", "metadata": sort_metadata(metadata), "spec": spec })
}
