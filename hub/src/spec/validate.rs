//! The rules: raw YAML shape → checked model, every problem recorded as an [`Issue`] with its line.
//! Mirrors ESO's admission rules where ESO has one (names, policies, selectors, templates).
//!
//! `store.rs`, `fleet_secret.rs`, `target.rs` and `selector.rs` hold the rules of their part;
//! `names.rs` the name rules every kind shares. This file reads the document and picks its kind.

use serde::de::DeserializeOwned;

use super::yaml::{self, Document};
use super::{Issue, LoadedSpec, Spec, raw};

mod fleet_secret;
mod names;
mod selector;
mod store;
mod target;

pub(crate) use names::{is_dns1123_label, is_label_value, is_qualified_name, is_secret_key};

/// The only `apiVersion` accepted (required in the Kubernetes shape, optional in the deprecated
/// flat one).
pub const API_VERSION: &str = "keyfleet.io/v1";

/// Kubernetes' limits on label/annotation/selector sizes.
const MAX_LABELS: usize = 64;

pub(super) fn parse_file(file: &str, text: &str, specs: &mut Vec<LoadedSpec>, issues: &mut Vec<Issue>) {
    let documents = match yaml::parse_documents(text) {
        Ok(documents) => documents,
        Err(error) => {
            issues.push(Issue {
                file: file.to_owned(),
                line: error.line,
                path: error.path,
                message: error.message,
            });
            return;
        }
    };
    if documents.is_empty() {
        issues.push(Issue {
            file: file.to_owned(),
            line: 1,
            path: String::new(),
            message: "no YAML document".to_owned(),
        });
    }
    for document in &documents {
        let mut ctx = Ctx {
            file,
            document,
            issues: Vec::new(),
            legacy: false,
        };
        if let Some(loaded) = ctx.document()
            && ctx.issues.is_empty()
        {
            specs.push(loaded);
        }
        issues.append(&mut ctx.issues);
    }
}

pub(super) struct Ctx<'a> {
    file: &'a str,
    document: &'a Document,
    issues: Vec<Issue>,
    /// The document is in the deprecated flat shape (top-level `name`, no `metadata`/`spec`):
    /// paths are shown as written (`target.name`, not `spec.target.name`).
    legacy: bool,
}

impl Ctx<'_> {
    /// A problem at `path` inside `spec` (`""` is the spec itself).
    fn issue(&mut self, path: &str, message: impl Into<String>) {
        let root = if path.is_empty() {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        self.issue_at(&root, message);
    }

    /// A problem at `path` of the Kubernetes-shaped document (`metadata.name`, `spec.storeRef`).
    fn issue_at(&mut self, path: &str, message: impl Into<String>) {
        let shown = shown_path(path, self.legacy);
        self.issues.push(Issue {
            file: self.file.to_owned(),
            line: self.document.line_of(&shown),
            path: shown,
            message: message.into(),
        });
    }

    fn document(&mut self) -> Option<LoadedSpec> {
        let Some(object) = self.document.value.as_object() else {
            self.issue_at(
                "",
                "a spec document must be a mapping with kind: SecretStore or kind: FleetSecret",
            );
            return None;
        };
        let kind = match object.get("kind") {
            None => {
                self.issue_at("", "kind: missing, expected SecretStore|FleetSecret");
                return None;
            }
            Some(serde_json::Value::String(kind)) => kind.clone(),
            Some(_) => {
                self.issue_at("kind", "expected a string: SecretStore|FleetSecret");
                return None;
            }
        };
        self.legacy = is_legacy(object);
        let value = if self.legacy {
            from_legacy(object)
        } else {
            if object.get("apiVersion").is_none() {
                self.issue_at("", format!("apiVersion: missing, expected {API_VERSION}"));
                return None;
            }
            self.document.value.clone()
        };
        let (spec, canonical_yaml) = match kind.as_str() {
            "SecretStore" => {
                let raw: raw::SecretStore = self.deserialize(value)?;
                self.header(&raw.api_version, &raw.metadata);
                let spec = Spec::SecretStore(self.secret_store(&raw.metadata.name, &raw.spec)?);
                (spec, raw.canonical_yaml())
            }
            "FleetSecret" => {
                let raw: raw::FleetSecret = self.deserialize(value)?;
                self.header(&raw.api_version, &raw.metadata);
                let spec = Spec::FleetSecret(self.fleet_secret(&raw.metadata.name, &raw.spec)?);
                (spec, raw.canonical_yaml())
            }
            other => {
                self.issue_at(
                    "kind",
                    format!("unknown value {other:?}, expected SecretStore|FleetSecret"),
                );
                return None;
            }
        };
        let canonical_yaml = match canonical_yaml {
            Ok(yaml) => yaml,
            Err(error) => {
                self.issue_at("", format!("cannot serialize the spec: {error}"));
                return None;
            }
        };
        Some(LoadedSpec {
            file: self.file.to_owned(),
            line: self.document.line_of(""),
            spec,
            canonical_yaml,
            legacy_shape: self.legacy,
        })
    }

    fn deserialize<T: DeserializeOwned>(&mut self, value: serde_json::Value) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(value) => Some(value),
            Err(error) => {
                let path = error.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = error.inner().to_string().replace('`', "\"");
                self.issue_at(&path, message);
                None
            }
        }
    }

    /// `apiVersion` and `metadata` (labels and annotations follow Kubernetes' rules).
    fn header(&mut self, api_version: &str, metadata: &raw::Metadata) {
        if api_version != API_VERSION {
            self.issue_at(
                "apiVersion",
                format!("unknown value {api_version:?}, expected {API_VERSION}"),
            );
        }
        self.metadata_map("metadata.labels", &metadata.labels, true);
        self.metadata_map("metadata.annotations", &metadata.annotations, false);
        if metadata.name.is_empty() {
            self.issue_at("metadata.name", "must not be empty");
        }
    }

    fn metadata_map(&mut self, path: &str, map: &std::collections::BTreeMap<String, String>, labels: bool) {
        if map.len() > MAX_LABELS {
            self.issue_at(path, format!("at most {MAX_LABELS} entries"));
        }
        for (key, value) in map {
            let entry = format!("{path}.{key}");
            if !names::is_qualified_name(key) {
                self.issue_at(&entry, names::qualified_name_message(key));
            }
            if labels && !names::is_label_value(value) {
                self.issue_at(&entry, names::label_value_message(value));
            }
        }
    }
}

/// Whether a document is in the deprecated flat shape: no `metadata` and no `spec`.
pub(super) fn is_legacy(object: &serde_json::Map<String, serde_json::Value>) -> bool {
    !object.contains_key("metadata") && !object.contains_key("spec")
}

/// The flat shape rewritten as the Kubernetes shape: `name` → `metadata.name`, `apiVersion` and
/// `kind` stay, every other field goes under `spec`.
pub(super) fn from_legacy(object: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    let mut spec = serde_json::Map::new();
    for (key, value) in object {
        match key.as_str() {
            "apiVersion" | "kind" => {
                root.insert(key.clone(), value.clone());
            }
            "name" => {
                metadata.insert(key.clone(), value.clone());
            }
            _ => {
                spec.insert(key.clone(), value.clone());
            }
        }
    }
    root.entry("apiVersion").or_insert_with(|| API_VERSION.into());
    root.insert("metadata".to_owned(), metadata.into());
    root.insert("spec".to_owned(), spec.into());
    root.into()
}

/// A path of the Kubernetes shape as the document wrote it: unchanged, or for the flat shape
/// without its `spec.` prefix and with `metadata.name` as `name`.
pub(super) fn shown_path(path: &str, legacy: bool) -> String {
    if !legacy {
        return path.to_owned();
    }
    match path {
        "spec" | "metadata" => String::new(),
        "metadata.name" => "name".to_owned(),
        _ => path.strip_prefix("spec.").unwrap_or(path).to_owned(),
    }
}
