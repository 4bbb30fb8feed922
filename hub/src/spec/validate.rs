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

/// The only `apiVersion` accepted (optional in files).
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
        };
        if let Some(loaded) = ctx.document()
            && ctx.issues.is_empty()
        {
            specs.push(loaded);
        }
        issues.append(&mut ctx.issues);
    }
}

struct Ctx<'a> {
    file: &'a str,
    document: &'a Document,
    issues: Vec<Issue>,
}

impl Ctx<'_> {
    fn issue(&mut self, path: &str, message: impl Into<String>) {
        self.issues.push(Issue {
            file: self.file.to_owned(),
            line: self.document.line_of(path),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn document(&mut self) -> Option<LoadedSpec> {
        let Some(object) = self.document.value.as_object() else {
            self.issue(
                "",
                "a spec document must be a mapping with kind: SecretStore or kind: FleetSecret",
            );
            return None;
        };
        let kind = match object.get("kind") {
            None => {
                self.issue("", "kind: missing, expected SecretStore|FleetSecret");
                return None;
            }
            Some(serde_json::Value::String(kind)) => kind.clone(),
            Some(_) => {
                self.issue("kind", "expected a string: SecretStore|FleetSecret");
                return None;
            }
        };
        let (spec, canonical_yaml) = match kind.as_str() {
            "SecretStore" => {
                let raw: raw::SecretStore = self.deserialize()?;
                self.api_version(raw.api_version.as_deref());
                let spec = Spec::SecretStore(self.secret_store(&raw)?);
                (spec, serde_yaml::to_string(&raw))
            }
            "FleetSecret" => {
                let raw: raw::FleetSecret = self.deserialize()?;
                self.api_version(raw.api_version.as_deref());
                let spec = Spec::FleetSecret(self.fleet_secret(&raw)?);
                (spec, serde_yaml::to_string(&raw))
            }
            other => {
                self.issue(
                    "kind",
                    format!("unknown value {other:?}, expected SecretStore|FleetSecret"),
                );
                return None;
            }
        };
        let canonical_yaml = match canonical_yaml {
            Ok(yaml) => yaml,
            Err(error) => {
                self.issue("", format!("cannot serialize the spec: {error}"));
                return None;
            }
        };
        Some(LoadedSpec {
            file: self.file.to_owned(),
            line: self.document.line_of(""),
            spec,
            canonical_yaml,
        })
    }

    fn deserialize<T: DeserializeOwned>(&mut self) -> Option<T> {
        match serde_path_to_error::deserialize(self.document.value.clone()) {
            Ok(value) => Some(value),
            Err(error) => {
                let path = error.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = error.inner().to_string().replace('`', "\"");
                self.issue(&path, message);
                None
            }
        }
    }

    fn api_version(&mut self, api_version: Option<&str>) {
        if let Some(version) = api_version
            && version != API_VERSION
        {
            self.issue(
                "apiVersion",
                format!("unknown value {version:?}, expected {API_VERSION}"),
            );
        }
    }
}
