//! The `target` rules: the Secret's name, type (and the key its type requires), namespaces,
//! template, metadata and the creation/deletion policies that may be combined.

use std::collections::{BTreeMap, BTreeSet};

use super::names::{
    dns_label_message, dns_subdomain_message, is_dns1123_label, is_dns1123_subdomain, is_label_value,
    is_qualified_name, is_secret_key, label_value_message, qualified_name_message, secret_key_message,
};
use super::{Ctx, MAX_LABELS, raw};
use crate::spec::{CreationPolicy, DeletionPolicy, MergePolicy, Target, TargetNamespaces, Template};

/// Secret types Kubernetes defines; other types must be domain-prefixed (`example.com/kind`).
const KNOWN_TYPES: &[&str] = &[
    "Opaque",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/tls",
    "bootstrap.kubernetes.io/token",
];

/// At most this many namespaces per target, the limit the wire carries.
const MAX_NAMESPACES: usize = keyfleet_proto::limits::MAX_NAMESPACES;

impl Ctx<'_> {
    /// `target` → the Secret every matching cluster holds. `secret_keys` are the `data` keys;
    /// `dynamic_keys` says `dataFrom` adds keys only known once read, so key checks wait.
    pub(super) fn target(
        &mut self,
        fleet_secret_name: &str,
        raw: &raw::FleetSecretSpec,
        secret_keys: &BTreeSet<String>,
        dynamic_keys: bool,
    ) -> Option<Target> {
        let target = &raw.target;
        let name = target
            .name
            .clone()
            .unwrap_or_else(|| fleet_secret_name.to_owned());
        if !is_dns1123_subdomain(&name) {
            self.issue("target.name", dns_subdomain_message(&name));
        }
        let template = target.template.clone().unwrap_or_default();
        let secret_type = match (&target.secret_type, &template.secret_type) {
            (Some(a), Some(b)) if a != b => {
                self.issue(
                    "target.template.type",
                    format!("{b:?} contradicts target.type {a:?}"),
                );
                a.clone()
            }
            (Some(a), _) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => "Opaque".to_owned(),
        };
        let type_path = if target.secret_type.is_some() {
            "target.type"
        } else {
            "target.template.type"
        };
        if !is_known_type(&secret_type) {
            self.issue(
                type_path,
                format!(
                    "unknown Secret type {secret_type:?}, expected one of {} or a domain-prefixed custom type",
                    KNOWN_TYPES.join("|")
                ),
            );
        }
        let namespaces = match (&target.namespaces, &target.namespace_selector) {
            (Some(list), None) => {
                if list.is_empty() {
                    self.issue("target.namespaces", "at least one namespace is required");
                }
                if list.len() > MAX_NAMESPACES {
                    self.issue(
                        "target.namespaces",
                        format!("at most {MAX_NAMESPACES} namespaces"),
                    );
                }
                let mut seen = BTreeSet::new();
                for (i, namespace) in list.iter().enumerate() {
                    if !is_dns1123_label(namespace) {
                        self.issue(&format!("target.namespaces[{i}]"), dns_label_message(namespace));
                    } else if !seen.insert(namespace) {
                        self.issue(
                            &format!("target.namespaces[{i}]"),
                            format!("duplicate namespace {namespace:?}"),
                        );
                    }
                }
                TargetNamespaces::List(list.clone())
            }
            (None, Some(selector)) => TargetNamespaces::Selector(self.selector(
                "target.namespaceSelector",
                &selector.match_labels,
                &selector.match_expressions,
            )),
            (Some(_), Some(_)) => {
                self.issue(
                    "target.namespaceSelector",
                    "namespaces and namespaceSelector are mutually exclusive",
                );
                TargetNamespaces::List(Vec::new())
            }
            (None, None) => {
                self.issue("target", "namespaces or namespaceSelector is required");
                TargetNamespaces::List(Vec::new())
            }
        };
        if let Some(version) = &template.engine_version
            && version != "v2"
        {
            self.issue(
                "target.template.engineVersion",
                format!("unknown value {version:?}, expected v2"),
            );
        }
        let merge_policy = match template.merge_policy.as_deref() {
            None | Some("Replace") => MergePolicy::Replace,
            Some("Merge") => MergePolicy::Merge,
            Some(other) => {
                self.issue(
                    "target.template.mergePolicy",
                    format!("unknown value {other:?}, expected Replace|Merge"),
                );
                MergePolicy::Replace
            }
        };
        let metadata = template.metadata.clone().unwrap_or_default();
        self.metadata_keys("target.template.metadata.labels", &metadata.labels, true);
        self.metadata_keys(
            "target.template.metadata.annotations",
            &metadata.annotations,
            false,
        );
        let mut template_data = BTreeMap::new();
        for (key, text) in &template.data {
            let path = format!("target.template.data.{key}");
            if !is_secret_key(key) {
                self.issue(&path, secret_key_message(key));
                continue;
            }
            match Template::parse(text) {
                Ok(parsed) => {
                    if !dynamic_keys {
                        for variable in parsed.variables() {
                            if !secret_keys.contains(&variable) {
                                self.issue(
                                    &path,
                                    format!(
                                        "template refers to {variable:?}, which no data[].secretKey provides"
                                    ),
                                );
                            }
                        }
                    }
                    template_data.insert(key.clone(), parsed);
                }
                Err(error) => self.issue(&path, error.to_string()),
            }
        }
        let creation_policy = match target.creation_policy.as_deref() {
            None | Some("Owner") => CreationPolicy::Owner,
            Some("Merge") => CreationPolicy::Merge,
            Some("Orphan") => CreationPolicy::Orphan,
            Some(other) => {
                self.issue(
                    "target.creationPolicy",
                    format!("unknown value {other:?}, expected Owner|Merge|Orphan"),
                );
                CreationPolicy::Owner
            }
        };
        let deletion_policy = match target.deletion_policy.as_deref() {
            None | Some("Retain") => DeletionPolicy::Retain,
            Some("Delete") => DeletionPolicy::Delete,
            Some(other) => {
                self.issue(
                    "target.deletionPolicy",
                    format!("unknown value {other:?}, expected Retain|Delete"),
                );
                DeletionPolicy::Retain
            }
        };
        match (creation_policy, deletion_policy) {
            (CreationPolicy::Merge, DeletionPolicy::Delete) => self.issue(
                "target.deletionPolicy",
                "Delete cannot be combined with creationPolicy Merge (the Secret is not keyfleet's to delete)",
            ),
            (CreationPolicy::Orphan, DeletionPolicy::Delete) => self.issue(
                "target.deletionPolicy",
                "Delete cannot be combined with creationPolicy Orphan (orphaned Secrets are never deleted)",
            ),
            _ => {}
        }
        let immutable = target.immutable.unwrap_or(false);
        if immutable && creation_policy == CreationPolicy::Merge {
            self.issue("target.immutable", "an immutable Secret cannot be merged into");
        }
        // The Secret's keys are known statically unless dataFrom adds some: check the type's
        // required key now rather than at the first rotation.
        if !dynamic_keys {
            let mut output_keys: BTreeSet<&String> = template.data.keys().collect();
            if template.data.is_empty() || merge_policy == MergePolicy::Merge {
                output_keys.extend(secret_keys.iter());
            }
            if let Some(required) = required_key(&secret_type)
                && !output_keys.iter().any(|key| key.as_str() == required)
            {
                self.issue(
                    type_path,
                    format!("Secrets of type {secret_type} need the key {required:?}: add it to data[].secretKey or target.template.data"),
                );
            }
        }
        Some(Target {
            name,
            secret_type,
            namespaces,
            labels: metadata.labels,
            annotations: metadata.annotations,
            template_data,
            merge_policy,
            creation_policy,
            deletion_policy,
            immutable,
        })
    }

    fn metadata_keys(&mut self, path: &str, map: &BTreeMap<String, String>, labels: bool) {
        if map.len() > MAX_LABELS {
            self.issue(path, format!("at most {MAX_LABELS} entries"));
        }
        for (key, value) in map {
            let entry = format!("{path}.{key}");
            if !is_qualified_name(key) {
                self.issue(&entry, qualified_name_message(key));
            } else if key.starts_with("keyfleet.io/") || key == "app.kubernetes.io/managed-by" {
                self.issue(&entry, "reserved for keyfleet's own bookkeeping");
            }
            if labels && !is_label_value(value) {
                self.issue(&entry, label_value_message(value));
            }
        }
    }
}

/// The key a Secret of this built-in type must hold, if any.
fn required_key(secret_type: &str) -> Option<&'static str> {
    match secret_type {
        "kubernetes.io/dockerconfigjson" => Some(".dockerconfigjson"),
        "kubernetes.io/dockercfg" => Some(".dockercfg"),
        "kubernetes.io/tls" => Some("tls.crt"),
        "kubernetes.io/ssh-auth" => Some("ssh-privatekey"),
        _ => None,
    }
}

/// A built-in Secret type, or a custom one under a domain that is not Kubernetes'.
fn is_known_type(secret_type: &str) -> bool {
    if KNOWN_TYPES.contains(&secret_type) {
        return true;
    }
    match secret_type.split_once('/') {
        Some((domain, name)) => {
            !domain.ends_with("kubernetes.io")
                && is_dns1123_subdomain(domain)
                && domain.contains('.')
                && !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        None => false,
    }
}
