//! The applied state a (restarted) agent reports, rebuilt from the annotations of the Secrets ours,
//! and the targets record (`keyfleet.io/targets`) that makes it complete.
//! Invariant: pure, like the planner (no IO, async or logging).
//!
//! # Read-back rule
//! A key is applied at revision R only if EVERY location its newest plan targets holds our Secret
//! for the key at a parseable revision; the key then reports the lowest (revision, sha256) over all
//! its Secrets (a write that failed halfway between revisions leaves older ones, and the hub sends
//! the key again). A target location without our Secret means the item was cut short (an agent
//! killed between two namespaces, a Secret deleted while no payload was in memory): the key
//! reports [`Applied::INCOMPLETE`], so the hub never counts it applied and sends it again.
//!
//! The newest plan is the targets record on the Secrets at the highest revision: every apply
//! writes it, so the first namespace written already names the ones still to come. Named
//! namespaces are taken as written (one that no longer exists holds no Secret: incomplete, and the
//! hub's next send is NACKed `NamespaceMissing`, which is the truth); a selector is resolved
//! against the cluster's namespaces now, so a namespace that started matching while the agent was
//! down is found missing too. A Secret without the record (written before agents recorded it)
//! counts as before: lowest over the Secrets that exist. A record that does not parse is treated
//! as incomplete (the next send writes it again).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{
    Applied, Namespace, ObservedSecret, Operator, Ownership, Requirement, Selector, TARGETS_ANNOTATION,
    Targets,
};

/// The JSON written in `keyfleet.io/targets`: `{"namespaces":[...]}` or
/// `{"namespaceSelector":{"matchLabels":{...},"matchExpressions":[...]}}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum Record {
    Namespaces(Vec<String>),
    NamespaceSelector(SelectorRecord),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorRecord {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    match_expressions: Vec<RequirementRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementRecord {
    key: String,
    operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    values: Vec<String>,
}

fn operator_name(operator: Operator) -> &'static str {
    match operator {
        Operator::In => "In",
        Operator::NotIn => "NotIn",
        Operator::Exists => "Exists",
        Operator::DoesNotExist => "DoesNotExist",
    }
}

fn operator_from(name: &str) -> Option<Operator> {
    Some(match name {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        _ => return None,
    })
}

impl Targets {
    /// The value of `keyfleet.io/targets` for these targets (deterministic: the same targets
    /// always give the same text, so an up-to-date Secret compares equal).
    pub(crate) fn annotation(&self) -> String {
        let record = match self {
            Self::Namespaces(names) => Record::Namespaces(names.clone()),
            Self::Selector(selector) => Record::NamespaceSelector(SelectorRecord {
                match_labels: selector.match_labels.clone(),
                match_expressions: selector
                    .match_expressions
                    .iter()
                    .map(|requirement| RequirementRecord {
                        key: requirement.key.clone(),
                        operator: operator_name(requirement.operator).to_owned(),
                        values: requirement.values.clone(),
                    })
                    .collect(),
            }),
        };
        // Strings, maps with string keys and vectors: serialization cannot fail.
        serde_json::to_string(&record).unwrap_or_default()
    }

    /// Parses a `keyfleet.io/targets` value; `None` when it is not one this agent writes.
    pub(crate) fn from_annotation(text: &str) -> Option<Self> {
        Some(match serde_json::from_str::<Record>(text).ok()? {
            Record::Namespaces(names) => Self::Namespaces(names),
            Record::NamespaceSelector(selector) => Self::Selector(Selector {
                match_labels: selector.match_labels,
                match_expressions: selector
                    .match_expressions
                    .into_iter()
                    .map(|requirement| {
                        Some(Requirement {
                            key: requirement.key,
                            operator: operator_from(&requirement.operator)?,
                            values: requirement.values,
                        })
                    })
                    .collect::<Option<_>>()?,
            }),
        })
    }

    /// The namespaces these targets name now: the named ones as written (existing or not), or
    /// those of `cluster` the selector matches.
    fn recorded_namespaces(self, cluster: &[Namespace]) -> Vec<String> {
        match self {
            Self::Namespaces(names) => names,
            Self::Selector(selector) => cluster
                .iter()
                .filter(|namespace| selector.matches(&namespace.labels))
                .map(|namespace| namespace.name.clone())
                .collect(),
        }
    }
}

/// Whether rebuilding the applied state of `observed` needs the cluster's namespaces (some
/// Secret of ours records a namespace selector); without one no namespace listing is needed.
pub(crate) fn targets_need_namespaces(observed: &[ObservedSecret]) -> bool {
    observed.iter().any(|secret| {
        matches!(secret.ownership(), Ownership::Ours { .. })
            && secret
                .annotations
                .get(TARGETS_ANNOTATION)
                .and_then(|text| Targets::from_annotation(text))
                .is_some_and(|targets| matches!(targets, Targets::Selector(_)))
    })
}

/// The applied state, rebuilt from the annotations of the Secrets ours: key -> (revision,
/// sha256), by the read-back rule of this module. `cluster` is the cluster's namespaces (needed
/// only when [`targets_need_namespaces`] says so; pass them whenever they are at hand).
pub(crate) fn applied_state(observed: &[ObservedSecret], cluster: &[Namespace]) -> BTreeMap<String, Applied> {
    let mut by_key: BTreeMap<&str, Vec<(&ObservedSecret, Applied)>> = BTreeMap::new();
    for secret in observed {
        let Ownership::Ours { key, .. } = secret.ownership() else {
            continue;
        };
        let Some(applied) = secret.applied() else {
            continue;
        };
        by_key.entry(key).or_default().push((secret, applied));
    }
    by_key
        .into_iter()
        .filter_map(|(key, secrets)| Some((key.to_owned(), key_applied(&secrets, cluster)?)))
        .collect()
}

/// One key's applied revision: the lowest over its Secrets when every location of its newest plan
/// holds one, else [`Applied::INCOMPLETE`].
fn key_applied(secrets: &[(&ObservedSecret, Applied)], cluster: &[Namespace]) -> Option<Applied> {
    let lowest = secrets
        .iter()
        .map(|(_, applied)| applied)
        .min_by_key(|applied| (applied.revision, applied.sha256))?
        .clone();
    let newest = secrets.iter().map(|(_, applied)| applied.revision).max()?;
    let mut expected: BTreeSet<(String, &str)> = BTreeSet::new();
    for (secret, _) in secrets.iter().filter(|(_, applied)| applied.revision == newest) {
        let Some(text) = secret.annotations.get(TARGETS_ANNOTATION) else {
            // Written before agents recorded their targets: only what exists counts.
            continue;
        };
        let Some(targets) = Targets::from_annotation(text) else {
            return Some(Applied::INCOMPLETE);
        };
        expected.extend(
            targets
                .recorded_namespaces(cluster)
                .into_iter()
                .map(|namespace| (namespace, secret.name.as_str())),
        );
    }
    let present: BTreeSet<(String, &str)> = secrets
        .iter()
        .map(|(secret, _)| (secret.namespace.clone(), secret.name.as_str()))
        .collect();
    if expected.is_subset(&present) {
        Some(lowest)
    } else {
        Some(Applied::INCOMPLETE)
    }
}

#[cfg(test)]
mod tests;
