//! The real Helm binary for the chart tests: `scripts/tools/helm` installs the pinned version
//! under `target/tools/` on first use (or fails saying why: never a silent skip), and this module
//! renders `deploy/charts/*` with it into JSON documents, with [`strict`] to parse each into its
//! Kubernetes type without losing a field.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};

/// Why Helm could not run or render.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// `scripts/tools/helm` could not install Helm (its message says why) or could not start.
    #[error(
        "helm is not available ({0}); the chart tests need the real Helm: run scripts/tools/helm \
         --path to see why, or set KEYFLEET_HELM to a helm binary"
    )]
    Unavailable(String),
    /// Helm ran and refused (lint or template failed).
    #[error("helm {args} failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What Helm printed.
        stderr: String,
    },
    /// The rendered output is not YAML.
    #[error("helm template output is not YAML: {0}")]
    Yaml(String),
}

/// One rendered object and the template it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// The template (`keyfleet-hub/templates/deployment.yaml`), from Helm's `# Source:` line.
    pub source: String,
    /// The object.
    pub value: serde_json::Value,
}

impl Document {
    /// The object's `kind`.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
}

/// The repository root.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `deploy/charts/<name>`.
pub fn chart_dir(name: &str) -> PathBuf {
    repository_root().join("deploy/charts").join(name)
}

/// The chart's `ci/*-values.yaml` files (the test matrix), sorted.
pub fn ci_values(chart: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir(chart).join("ci"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().ends_with("-values.yaml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The Helm binary: `KEYFLEET_HELM`, else the one `scripts/tools/helm` installs.
pub fn helm() -> Result<PathBuf, HelmError> {
    if let Some(path) = std::env::var_os("KEYFLEET_HELM") {
        return Ok(PathBuf::from(path));
    }
    let script = repository_root().join("scripts/tools/helm");
    let output = Command::new(&script)
        .arg("--path")
        .output()
        .map_err(|error| HelmError::Unavailable(format!("{}: {error}", script.display())))?;
    if !output.status.success() {
        return Err(HelmError::Unavailable(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

fn run(args: &[String]) -> Result<String, HelmError> {
    let output = Command::new(helm()?)
        .args(args)
        .output()
        .map_err(|error| HelmError::Unavailable(error.to_string()))?;
    if !output.status.success() {
        return Err(HelmError::Failed {
            args: args.join(" "),
            stderr: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `helm lint --strict` of the chart with the values files and `--set` values.
pub fn lint(chart: &str, values: &[&Path], set: &[&str]) -> Result<String, HelmError> {
    let mut args = vec![
        "lint".to_owned(),
        "--strict".to_owned(),
        chart_dir(chart).display().to_string(),
    ];
    push_values(&mut args, values, set);
    run(&args)
}

/// `helm template RELEASE CHART --namespace NAMESPACE` with the values files and `--set` values,
/// split into its documents (empty ones dropped).
pub fn template(
    chart: &str,
    release: &str,
    namespace: &str,
    values: &[&Path],
    set: &[&str],
) -> Result<Vec<Document>, HelmError> {
    let mut args = vec![
        "template".to_owned(),
        release.to_owned(),
        chart_dir(chart).display().to_string(),
        "--namespace".to_owned(),
        namespace.to_owned(),
    ];
    push_values(&mut args, values, set);
    let text = run(&args)?;
    let mut documents = Vec::new();
    for chunk in text.split("\n---") {
        let source = chunk
            .lines()
            .find_map(|line| line.strip_prefix("# Source: "))
            .unwrap_or_default()
            .to_owned();
        let value = serde_json::Value::deserialize(serde_yaml::Deserializer::from_str(chunk))
            .map_err(|error| HelmError::Yaml(format!("{source}: {error}")))?;
        if !value.is_null() {
            documents.push(Document { source, value });
        }
    }
    Ok(documents)
}

fn push_values(args: &mut Vec<String>, values: &[&Path], set: &[&str]) {
    for file in values {
        args.push("--values".to_owned());
        args.push(file.display().to_string());
    }
    for value in set {
        args.push("--set".to_owned());
        args.push((*value).to_owned());
    }
}

/// Parses `value` as `T` and checks that serializing it again gives the same document: a field
/// the type does not know (a typo, a wrong nesting) would otherwise be dropped silently. The error
/// names the first such field path.
pub fn strict<T: DeserializeOwned + Serialize>(value: &serde_json::Value) -> Result<T, String> {
    let object: T = serde_json::from_value(value.clone()).map_err(|error| error.to_string())?;
    let again = serde_json::to_value(&object).map_err(|error| error.to_string())?;
    match first_difference(value, &again, String::new()) {
        Some(path) => Err(format!("{path} is not part of the type (misspelt or misplaced?)")),
        None => Ok(object),
    }
}

/// The path of the first field of `written` that `parsed` does not hold the same way.
pub fn first_difference(
    written: &serde_json::Value,
    parsed: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    match (written, parsed) {
        (Value::Object(written), Value::Object(parsed)) => written.iter().find_map(|(key, value)| {
            let path = format!("{path}.{key}");
            match parsed.get(key) {
                Some(other) => first_difference(value, other, path),
                None => Some(path),
            }
        }),
        (Value::Array(written), Value::Array(parsed)) if written.len() == parsed.len() => written
            .iter()
            .zip(parsed)
            .enumerate()
            .find_map(|(index, (value, other))| first_difference(value, other, format!("{path}[{index}]"))),
        _ => (written != parsed).then_some(path),
    }
}
