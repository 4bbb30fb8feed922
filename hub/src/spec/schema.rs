//! The JSON Schemas of both kinds, generated from the written shape (`raw`), and the checks that
//! keep `docs/schema/*.schema.json` and `docs/spec.md` true to it. Test-only: the hub validates with
//! its own rules (which say more than a schema can: line numbers, cross-field rules); the schemas
//! are for editors, CI linters (kubeconform, check-jsonschema) and kustomize users.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::raw;
use super::validate::API_VERSION;

/// Where the schema of `kind` is published.
fn schema_path(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema")
        .join(format!("{}.schema.json", kind.to_lowercase()))
}

/// The schema of one kind: the generated one with `apiVersion` and `kind` fixed.
fn schema_of(kind: &str, generated: schemars::Schema) -> Value {
    let mut schema = generated.to_value();
    schema["$id"] = json!(format!(
        "https://keyfleet.io/schema/{}.schema.json",
        kind.to_lowercase()
    ));
    schema["title"] = json!(format!("{kind} ({API_VERSION})"));
    schema["description"] = json!(format!(
        "keyfleet {kind}: every field with its default and rules is in docs/spec.md. Generated from hub/src/spec/raw.rs by `cargo test -p keyfleet-hub --lib spec::schema`."
    ));
    schema["properties"]["apiVersion"] = json!({ "const": API_VERSION });
    schema["properties"]["kind"] = json!({ "const": kind });
    schema
}

/// Both schemas, by kind.
pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "SecretStore",
            schema_of("SecretStore", schemars::schema_for!(raw::SecretStore)),
        ),
        (
            "FleetSecret",
            schema_of("FleetSecret", schemars::schema_for!(raw::FleetSecret)),
        ),
    ]
}

/// Every property path a schema allows (`spec.target.template.data`, `spec.data[].secretKey`),
/// following `$ref`s into `$defs`.
pub(super) fn property_paths(schema: &Value) -> Vec<String> {
    let mut paths = Vec::new();
    walk(schema, schema, "", &mut paths, 0);
    paths.sort();
    paths.dedup();
    paths
}

fn walk(root: &Value, node: &Value, path: &str, paths: &mut Vec<String>, depth: usize) {
    if depth > 16 {
        return;
    }
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/$defs/");
        if let Some(target) = root.get("$defs").and_then(|defs| defs.get(name)) {
            walk(root, target, path, paths, depth + 1);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(options) = node.get(key).and_then(Value::as_array) {
            for option in options {
                walk(root, option, path, paths, depth + 1);
            }
        }
    }
    if let Some(items) = node.get("items") {
        walk(root, items, &format!("{path}[]"), paths, depth + 1);
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            paths.push(child.clone());
            walk(root, property, &child, paths, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{SpecFile, read_path, yaml};

    /// Every YAML document of `files` as JSON.
    fn documents(files: &[SpecFile]) -> Vec<(String, Value)> {
        files
            .iter()
            .flat_map(|file| {
                yaml::parse_documents(&file.content)
                    .unwrap_or_else(|error| panic!("{}: {error:?}", file.name))
                    .into_iter()
                    .map(|document| (file.name.clone(), document.value))
            })
            .collect()
    }

    fn validator(kind: &str) -> jsonschema::Validator {
        let schema = schemas()
            .into_iter()
            .find(|(name, _)| *name == kind)
            .map(|(_, schema)| schema)
            .expect("known kind");
        jsonschema::validator_for(&schema).expect("a valid JSON Schema")
    }

    fn errors(kind: &str, document: &Value) -> Vec<String> {
        validator(kind)
            .iter_errors(document)
            .map(|error| format!("{}: {error}", error.instance_path()))
            .collect()
    }

    /// The published files match the types; a stale file is rewritten and the test fails, so the
    /// change shows in the diff.
    #[test]
    fn the_published_schemas_are_current() {
        let mut stale = Vec::new();
        for (kind, schema) in schemas() {
            let path = schema_path(kind);
            let text = format!("{}\n", serde_json::to_string_pretty(&schema).expect("json"));
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, &text).expect("write schema");
                stale.push(path.display().to_string());
            }
        }
        assert!(stale.is_empty(), "rewritten (commit them): {stale:?}");
    }

    #[test]
    fn the_shipped_examples_and_fixtures_validate_against_the_schemas() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = read_path(&root.join("../deploy/examples")).expect("examples");
        // What `keyfleet import eso` wrote for the documented ESO manifests.
        for entry in std::fs::read_dir(root.join("tests/fixtures/eso")).expect("fixtures") {
            let expected = entry.expect("entry").path().join("expected.yaml");
            if expected.exists() {
                files.extend(read_path(&expected).expect("expected.yaml"));
            }
        }
        let documents = documents(&files);
        assert!(documents.len() >= 10, "{}", documents.len());
        for (file, document) in &documents {
            let kind = document["kind"].as_str().expect("kind");
            let found = errors(kind, document);
            assert!(found.is_empty(), "{file}: {found:?}");
        }
    }

    #[test]
    fn the_schemas_refuse_what_the_hub_refuses_by_shape() {
        let files = read_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/regcred.yaml"))
            .expect("example");
        let documents = documents(&files);
        let secret = documents
            .iter()
            .map(|(_, document)| document)
            .find(|document| document["kind"] == "FleetSecret")
            .expect("a FleetSecret")
            .clone();
        let mut wrong_policy = secret.clone();
        wrong_policy["spec"]["target"]["creationPolicy"] = json!("Own");
        assert_eq!(errors("FleetSecret", &wrong_policy).len(), 1);
        let mut unknown = secret.clone();
        unknown["spec"]["colour"] = json!("blue");
        assert_eq!(errors("FleetSecret", &unknown).len(), 1);
        let mut no_name = secret.clone();
        no_name["metadata"] = json!({});
        assert_eq!(errors("FleetSecret", &no_name).len(), 1);
        let mut wrong_kind = secret;
        wrong_kind["kind"] = json!("ExternalSecret");
        assert_eq!(errors("FleetSecret", &wrong_kind).len(), 1);
    }

    /// `docs/spec.md` documents every field of both kinds: each schema path appears in it as
    /// `` `path` ``.
    #[test]
    fn the_field_reference_covers_every_schema_field() {
        let reference =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/spec.md"))
                .expect("docs/spec.md");
        let mut missing = Vec::new();
        for (kind, schema) in schemas() {
            for path in property_paths(&schema) {
                if !reference.contains(&format!("`{path}`")) {
                    missing.push(format!("{kind}: {path}"));
                }
            }
        }
        assert!(missing.is_empty(), "docs/spec.md lacks: {missing:#?}");
    }
}
