//! `keyfleet cluster add -f FILE`: register many clusters from one file, idempotently.
//!
//! The file (`-` reads stdin):
//!
//! ```yaml
//! clusters:
//!   - name: prod-eu-1
//!     labels: {env: prod, region: eu}
//!   - name: prod-us-1
//!     labels: {env: prod, region: us}
//! ```
//!
//! **Rule:** the file is authoritative for the labels of the clusters it lists. A listed cluster
//! that does not exist is `created` (with a one-time enrollment token); one that exists with
//! exactly the file's labels is `unchanged`; one with other labels is `relabelled` to exactly the
//! file's (keys the file omits are removed). Existing clusters get no new token unless
//! `--reissue-pending` asks for one for those that never enrolled. A revoked cluster is `failed`
//! (its name cannot be enrolled again). Clusters the file does not list are left alone. Every
//! cluster's outcome is printed; the command exits 1 when any failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use futures::StreamExt as _;
use keyfleet_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};

use super::clusters::token_json;
use super::output::{labels_text, timestamp, write_structured};
use super::{CliError, Client, call, is_stdin, read_stdin};
use crate::config::OutputFormat;

/// Largest cluster file accepted, in bytes (about 20,000 clusters with a few labels each).
pub const MAX_CLUSTER_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Clusters reconciled at once (requests in flight on the one connection).
const CONCURRENCY: usize = 8;

/// How `cluster add -f` runs.
pub(super) struct Options<'a> {
    /// Issue a new token to listed clusters still `pending`.
    pub reissue_pending: bool,
    /// Token lifetime sent to the hub.
    pub token_ttl_seconds: u32,
    /// Hub URL the agents dial (printed with tokens).
    pub agent_hub_url: &'a str,
    /// Output format.
    pub output: OutputFormat,
}

/// The cluster file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    clusters: Vec<ClusterEntry>,
}

/// One cluster of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterEntry {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// What happened to one listed cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Relabelled,
    Unchanged,
    Failed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Relabelled => "relabelled",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
        }
    }
}

/// One cluster's outcome. `Debug` hides the token.
struct Outcome {
    name: String,
    action: Action,
    labels: BTreeMap<String, String>,
    token: Option<v1::EnrollmentToken>,
    error: Option<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("labels", &self.labels)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("error", &self.error)
            .finish()
    }
}

impl Outcome {
    fn failed(entry: ClusterEntry, error: String) -> Self {
        Self {
            name: entry.name,
            action: Action::Failed,
            labels: entry.labels,
            token: None,
            error: Some(error),
        }
    }

    fn to_json(&self, agent_hub_url: &str) -> Value {
        let mut value = match &self.token {
            Some(token) => token_json(token, agent_hub_url),
            None => json!({"name": self.name, "token": null, "expires": null, "hubUrl": agent_hub_url}),
        };
        value["name"] = json!(self.name);
        value["outcome"] = json!(self.action.as_str());
        value["labels"] = json!(self.labels);
        value["error"] = json!(self.error);
        value
    }
}

/// Parses a cluster file: at least one cluster, names unique. `source` names it in messages.
fn parse(source: &str, text: &str) -> Result<Vec<ClusterEntry>, CliError> {
    let file: ClusterFile =
        serde_yaml::from_str(text).map_err(|error| CliError::Usage(format!("{source}: {error}")))?;
    if file.clusters.is_empty() {
        return Err(CliError::Usage(format!("{source}: clusters: lists no cluster")));
    }
    let mut seen = BTreeSet::new();
    for entry in &file.clusters {
        if !seen.insert(entry.name.as_str()) {
            return Err(CliError::Usage(format!(
                "{source}: clusters: {:?} is listed twice",
                entry.name
            )));
        }
    }
    Ok(file.clusters)
}

/// `keyfleet cluster add -f FILE`: reconciles every listed cluster (see the module's rule),
/// prints each outcome, and fails (exit 1) when any cluster failed.
pub(super) async fn add_from_file(
    client: &mut Client,
    path: &Path,
    options: &Options<'_>,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let (source, text) = if is_stdin(path) {
        ("<stdin>".to_owned(), read_stdin(input, MAX_CLUSTER_FILE_BYTES)?)
    } else {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })?;
        (path.display().to_string(), text)
    };
    let entries = parse(&source, &text)?;
    let existing: HashMap<String, v1::Cluster> = call(
        "list clusters".to_owned(),
        client.list_clusters(v1::ListClustersRequest { selector: None }),
    )
    .await?
    .clusters
    .into_iter()
    .map(|cluster| (cluster.name.clone(), cluster))
    .collect();
    let outcomes: Vec<Outcome> = futures::stream::iter(entries)
        .map(|entry| {
            let current = existing.get(&entry.name).cloned();
            reconcile(client.clone(), entry, current, options)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    write_outcomes(&outcomes, options, out)?;
    let failed = outcomes
        .iter()
        .filter(|outcome| outcome.action == Action::Failed)
        .count();
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total: outcomes.len(),
        });
    }
    Ok(())
}

/// Brings one listed cluster to the file's state.
async fn reconcile(
    mut client: Client,
    entry: ClusterEntry,
    current: Option<v1::Cluster>,
    options: &Options<'_>,
) -> Outcome {
    let name = entry.name.clone();
    let Some(current) = current else {
        let request = v1::CreateClusterRequest {
            name: name.clone(),
            labels: entry.labels.clone().into_iter().collect(),
            token_ttl_seconds: options.token_ttl_seconds,
        };
        return match call(format!("create cluster {name:?}"), client.create_cluster(request)).await {
            Ok(response) if response.token.is_some() => Outcome {
                name: entry.name,
                action: Action::Created,
                labels: entry.labels,
                token: response.token,
                error: None,
            },
            Ok(_) => Outcome::failed(entry, "the hub's answer lacks the token".to_owned()),
            Err(error) => Outcome::failed(entry, error.to_string()),
        };
    };
    if current.state == "revoked" {
        return Outcome::failed(entry, format!("cluster {name:?} is revoked"));
    }
    let mut action = Action::Unchanged;
    let current_labels: BTreeMap<String, String> = current.labels.into_iter().collect();
    if current_labels != entry.labels {
        let set = entry
            .labels
            .iter()
            .filter(|(key, value)| current_labels.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let remove = current_labels
            .keys()
            .filter(|key| !entry.labels.contains_key(*key))
            .cloned()
            .collect();
        let request = v1::LabelClusterRequest {
            name: name.clone(),
            set,
            remove,
        };
        if let Err(error) = call(format!("label cluster {name:?}"), client.label_cluster(request)).await {
            return Outcome::failed(entry, error.to_string());
        }
        action = Action::Relabelled;
    }
    let mut token = None;
    if options.reissue_pending && current.state == "pending" {
        let request = v1::IssueEnrollmentTokenRequest {
            name: name.clone(),
            token_ttl_seconds: options.token_ttl_seconds,
        };
        match call(
            format!("issue an enrollment token for cluster {name:?}"),
            client.issue_enrollment_token(request),
        )
        .await
        {
            Ok(issued) => token = Some(issued),
            Err(error) => return Outcome::failed(entry, error.to_string()),
        }
    }
    Outcome {
        name: entry.name,
        action,
        labels: entry.labels,
        token,
        error: None,
    }
}

/// Prints every outcome: one line per cluster (a token under it) and a summary, or a JSON/YAML
/// array of `{name, outcome, labels, token, expires, hubUrl, error}`.
fn write_outcomes(
    outcomes: &[Outcome],
    options: &Options<'_>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    if options.output != OutputFormat::Table {
        let items = outcomes
            .iter()
            .map(|outcome| outcome.to_json(options.agent_hub_url))
            .collect();
        return write_structured(&Value::Array(items), options.output, out);
    }
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.action.as_str()).or_insert(0usize) += 1;
        match (outcome.action, &outcome.error) {
            (Action::Failed, Some(error)) => writeln!(out, "cluster/{} failed: {error}", outcome.name)?,
            (Action::Relabelled, _) => {
                let labels = outcome
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                writeln!(
                    out,
                    "cluster/{} relabelled: {}",
                    outcome.name,
                    labels_text(&labels)
                )?;
            }
            (action, _) => writeln!(out, "cluster/{} {}", outcome.name, action.as_str())?,
        }
        if let Some(token) = &outcome.token {
            writeln!(
                out,
                "  enrollment token (shown once, single use, expires {}): {}",
                timestamp(token.expires.as_ref()),
                token.token
            )?;
        }
    }
    let summary: Vec<String> = [
        Action::Created,
        Action::Relabelled,
        Action::Unchanged,
        Action::Failed,
    ]
    .iter()
    .map(|action| {
        format!(
            "{} {}",
            counts.get(action.as_str()).unwrap_or(&0),
            action.as_str()
        )
    })
    .collect();
    writeln!(out, "{} cluster(s): {}", outcomes.len(), summary.join(", "))?;
    if outcomes.iter().any(|outcome| outcome.token.is_some()) {
        writeln!(
            out,
            "Hand each token to its cluster's agent (hub {}): see docs/enrollment.md; \
             -o json prints them for scripts.",
            options.agent_hub_url
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_files_are_checked_before_any_request() {
        let entries = parse(
            "c.yaml",
            "clusters:\n  - name: a\n    labels: {env: prod}\n  - name: b\n",
        )
        .expect("valid");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].labels["env"], "prod");
        assert!(entries[1].labels.is_empty());
        for (text, expected) in [
            ("clusters: []\n", "lists no cluster"),
            ("clusters:\n  - name: a\n  - name: a\n", "listed twice"),
            ("clusters:\n  - name: a\n    label: {x: y}\n", "unknown field"),
            ("- name: a\n", "c.yaml"),
        ] {
            let error = parse("c.yaml", text).expect_err(text);
            assert_eq!(error.exit_code(), 2, "{error}");
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn outcome_debug_hides_the_token() {
        let outcome = Outcome {
            name: "a".to_owned(),
            action: Action::Created,
            labels: BTreeMap::new(),
            token: Some(v1::EnrollmentToken {
                token: "kfe_secret".to_owned(),
                expires: None,
                cluster_name: "a".to_owned(),
            }),
            error: None,
        };
        let debug = format!("{outcome:?}");
        assert!(
            !debug.contains("kfe_secret") && debug.contains("<redacted>"),
            "{debug}"
        );
    }
}
