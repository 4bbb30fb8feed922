//! The rules: raw YAML shape → checked model, every problem recorded as an [`Issue`] with its line.
//! Mirrors ESO's admission rules where ESO has one (names, policies, selectors, templates).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::yaml::{self, Document};
use super::{
    AuthType, AzureEnvironment, CreationPolicy, CredentialSource, DataEntry, DataFrom, DecodingStrategy,
    DeletionPolicy, Find, FleetSecretSpec, Issue, LoadedSpec, MergePolicy, RemoteRef, Rollout,
    SecretStoreSpec, Spec, Target, TargetNamespaces, Template, Wave, raw,
};
use crate::domain::{LabelRequirement, LabelSelector, SelectorOperator};

/// The only `apiVersion` accepted (optional in files).
pub const API_VERSION: &str = "keyfleet.io/v1";

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

/// Kubernetes' limits on label/annotation/selector sizes.
const MAX_LABELS: usize = 64;
const MAX_NAMESPACES: usize = keyfleet_proto::limits::MAX_NAMESPACES;

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

    // === SecretStore ===

    fn secret_store(&mut self, raw: &raw::SecretStore) -> Option<SecretStoreSpec> {
        if !is_dns1123_label(&raw.name) {
            self.issue("name", dns_label_message(&raw.name));
        }
        let Some(azure) = &raw.provider.azurekv else {
            self.issue("provider", "exactly one provider is required: azurekv");
            return None;
        };
        let vault_url = self.vault_url(&azure.vault_url);
        let auth = self.auth(azure);
        let environment = match azure.environment_type.as_deref() {
            None | Some("PublicCloud") => AzureEnvironment::PublicCloud,
            Some("USGovernmentCloud") => AzureEnvironment::UsGovernmentCloud,
            Some("ChinaCloud") => AzureEnvironment::ChinaCloud,
            Some(other) => {
                self.issue(
                    "provider.azurekv.environmentType",
                    format!("unknown value {other:?}, expected PublicCloud|USGovernmentCloud|ChinaCloud"),
                );
                AzureEnvironment::PublicCloud
            }
        };
        let poll_interval = match azure.poll_interval.as_deref() {
            None => super::DEFAULT_POLL_INTERVAL,
            Some(text) => match humantime::parse_duration(text) {
                Ok(interval)
                    if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&interval) =>
                {
                    interval
                }
                Ok(_) => {
                    self.issue("provider.azurekv.pollInterval", "must be between 1s and 24h");
                    super::DEFAULT_POLL_INTERVAL
                }
                Err(_) => {
                    self.issue(
                        "provider.azurekv.pollInterval",
                        format!("invalid duration {text:?}, expected e.g. 30s or 5m"),
                    );
                    super::DEFAULT_POLL_INTERVAL
                }
            },
        };
        let (rate_per_second, rate_burst) = match &azure.rate_limit {
            None => (super::DEFAULT_RATE_PER_SECOND, super::DEFAULT_RATE_PER_SECOND * 2),
            Some(limit) => {
                // Key Vault allows 4,000 secret transactions per 10 s per vault: 400/s.
                if !(1..=400).contains(&limit.per_second) {
                    self.issue(
                        "provider.azurekv.rateLimit.perSecond",
                        "must be between 1 and 400",
                    );
                }
                let burst = limit.burst.unwrap_or(limit.per_second.saturating_mul(2));
                if limit.burst.is_some() && (burst < limit.per_second || burst > 4_000) {
                    self.issue(
                        "provider.azurekv.rateLimit.burst",
                        "must be between perSecond and 4000",
                    );
                }
                (limit.per_second, burst)
            }
        };
        Some(SecretStoreSpec {
            name: raw.name.clone(),
            vault_url: vault_url?,
            auth: auth?,
            environment,
            poll_interval,
            rate_per_second,
            rate_burst,
        })
    }

    fn vault_url(&mut self, text: &str) -> Option<url::Url> {
        let path = "provider.azurekv.vaultUrl";
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            Err(error) => {
                self.issue(path, format!("invalid URL {text:?}: {error}"));
                return None;
            }
        };
        if url.scheme() != "https" {
            self.issue(path, "must be an https:// URL");
            return None;
        }
        if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
            self.issue(path, "must be the vault's base URL, without path or query");
            return None;
        }
        let host = url.host_str().unwrap_or_default();
        for suffix in [".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net"] {
            if let Some(vault) = host.strip_suffix(suffix)
                && !is_vault_name(vault)
            {
                self.issue(
                    path,
                    format!(
                        "invalid Key Vault name {vault:?}: 3-24 characters of a-z, 0-9 and -, starting with a letter, \
                         not ending with - and without --"
                    ),
                );
                return None;
            }
        }
        Some(url)
    }

    fn auth(&mut self, azure: &raw::AzureKv) -> Option<AuthType> {
        let base = "provider.azurekv";
        let auth_type = azure.auth_type.as_deref().unwrap_or("WorkloadIdentity");
        let unexpected = |ctx: &mut Self, field: &str, present: bool| {
            if present {
                ctx.issue(
                    &format!("{base}.{field}"),
                    format!("not used with authType {auth_type}"),
                );
            }
        };
        match auth_type {
            "WorkloadIdentity" => {
                unexpected(self, "identityId", azure.identity_id.is_some());
                unexpected(self, "clientSecret", azure.client_secret.is_some());
                Some(AuthType::WorkloadIdentity {
                    tenant_id: azure.tenant_id.clone(),
                    client_id: azure.client_id.clone(),
                })
            }
            "ManagedIdentity" => {
                unexpected(self, "tenantId", azure.tenant_id.is_some());
                unexpected(self, "clientId", azure.client_id.is_some());
                unexpected(self, "clientSecret", azure.client_secret.is_some());
                Some(AuthType::ManagedIdentity {
                    identity_id: azure.identity_id.clone(),
                })
            }
            "ServicePrincipal" => {
                unexpected(self, "identityId", azure.identity_id.is_some());
                let missing = |ctx: &mut Self, field: &str, value: Option<&String>| -> Option<String> {
                    if value.is_none() {
                        ctx.issue(base, format!("{field}: required with authType ServicePrincipal"));
                    }
                    value.cloned()
                };
                let tenant_id = missing(self, "tenantId", azure.tenant_id.as_ref());
                let client_id = missing(self, "clientId", azure.client_id.as_ref());
                let client_secret = match &azure.client_secret {
                    None => {
                        self.issue(
                            base,
                            "clientSecret: required with authType ServicePrincipal (env or file)",
                        );
                        None
                    }
                    Some(raw::SecretSourceRef {
                        env: Some(env),
                        file: None,
                    }) => Some(CredentialSource::Env(env.clone())),
                    Some(raw::SecretSourceRef {
                        env: None,
                        file: Some(file),
                    }) => Some(CredentialSource::File(PathBuf::from(file))),
                    Some(_) => {
                        self.issue(
                            &format!("{base}.clientSecret"),
                            "exactly one of env, file is required",
                        );
                        None
                    }
                };
                Some(AuthType::ServicePrincipal {
                    tenant_id: tenant_id?,
                    client_id: client_id?,
                    client_secret: client_secret?,
                })
            }
            "AzureCli" => {
                unexpected(self, "identityId", azure.identity_id.is_some());
                unexpected(self, "clientSecret", azure.client_secret.is_some());
                Some(AuthType::AzureCli)
            }
            other => {
                self.issue(
                    &format!("{base}.authType"),
                    format!("unknown value {other:?}, expected WorkloadIdentity|ManagedIdentity|ServicePrincipal|AzureCli"),
                );
                None
            }
        }
    }

    // === FleetSecret ===

    fn fleet_secret(&mut self, raw: &raw::FleetSecret) -> Option<FleetSecretSpec> {
        if !is_dns1123_subdomain(&raw.name) {
            self.issue("name", dns_subdomain_message(&raw.name));
        }
        if !is_dns1123_label(&raw.store_ref) {
            self.issue("storeRef", dns_label_message(&raw.store_ref));
        }
        if raw.data.is_empty() && raw.data_from.is_empty() {
            self.issue("", "at least one data or dataFrom entry is required");
        }
        let mut data = Vec::new();
        let mut secret_keys = BTreeSet::new();
        for (i, entry) in raw.data.iter().enumerate() {
            let path = format!("data[{i}]");
            if !is_secret_key(&entry.secret_key) {
                self.issue(
                    &format!("{path}.secretKey"),
                    secret_key_message(&entry.secret_key),
                );
            } else if !secret_keys.insert(entry.secret_key.clone()) {
                self.issue(
                    &format!("{path}.secretKey"),
                    format!("duplicate secretKey {:?}", entry.secret_key),
                );
            }
            if let Some(remote_ref) = self.remote_ref(&format!("{path}.remoteRef"), &entry.remote_ref) {
                data.push(DataEntry {
                    secret_key: entry.secret_key.clone(),
                    remote_ref,
                });
            }
        }
        let mut data_from = Vec::new();
        for (i, entry) in raw.data_from.iter().enumerate() {
            let path = format!("dataFrom[{i}]");
            match (&entry.extract, &entry.find) {
                (Some(extract), None) => {
                    if let Some(remote_ref) = self.remote_ref(&format!("{path}.extract"), extract) {
                        data_from.push(DataFrom::Extract(remote_ref));
                    }
                }
                (None, Some(find)) => {
                    if let Some(find) = self.find(&format!("{path}.find"), find) {
                        data_from.push(DataFrom::Find(find));
                    }
                }
                _ => self.issue(&path, "exactly one of extract, find is required"),
            }
        }
        let target = self.target(raw, &secret_keys, !raw.data_from.is_empty());
        let clusters = match &raw.clusters {
            None => LabelSelector::default(),
            Some(selector) => self.selector("clusters", &selector.match_labels, &selector.match_expressions),
        };
        let rollout = raw.rollout.as_ref().and_then(|rollout| self.rollout(rollout));
        Some(FleetSecretSpec {
            name: raw.name.clone(),
            store_ref: raw.store_ref.clone(),
            data,
            data_from,
            target: target?,
            clusters,
            rollout,
        })
    }

    fn remote_ref(&mut self, path: &str, raw: &raw::RemoteRef) -> Option<RemoteRef> {
        let key = match raw.key.split_once('/') {
            None => raw.key.as_str(),
            Some(("secret", name)) => name,
            Some((prefix @ ("cert" | "key"), _)) => {
                self.issue(
                    &format!("{path}.key"),
                    format!("{prefix}/ objects are not supported; read the certificate's secret (secret/<name>) instead"),
                );
                return None;
            }
            Some(_) => {
                self.issue(&format!("{path}.key"), key_vault_name_message(&raw.key));
                return None;
            }
        };
        if !is_key_vault_object_name(key) {
            self.issue(&format!("{path}.key"), key_vault_name_message(key));
        }
        let version = match raw.version.as_deref() {
            None | Some("") => None,
            Some(version) if version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(version.to_ascii_lowercase())
            }
            Some(version) => {
                self.issue(
                    &format!("{path}.version"),
                    format!(
                        "invalid Key Vault version {version:?}: 32 hex characters, or empty for the latest"
                    ),
                );
                None
            }
        };
        let property = match raw.property.as_deref() {
            None | Some("") => None,
            Some(property) if property.split('.').any(str::is_empty) => {
                self.issue(
                    &format!("{path}.property"),
                    format!("invalid JSON path {property:?}"),
                );
                None
            }
            Some(property) => Some(property.to_owned()),
        };
        let decoding = self.decoding(
            &format!("{path}.decodingStrategy"),
            raw.decoding_strategy.as_deref(),
        );
        Some(RemoteRef {
            key: key.to_owned(),
            version,
            property,
            decoding,
        })
    }

    fn decoding(&mut self, path: &str, value: Option<&str>) -> DecodingStrategy {
        match value {
            None | Some("None") => DecodingStrategy::None,
            Some("Base64") => DecodingStrategy::Base64,
            Some("Base64URL") => DecodingStrategy::Base64Url,
            Some("Auto") => DecodingStrategy::Auto,
            Some(other) => {
                self.issue(
                    path,
                    format!("unknown value {other:?}, expected None|Base64|Base64URL|Auto"),
                );
                DecodingStrategy::None
            }
        }
    }

    fn find(&mut self, path: &str, raw: &raw::Find) -> Option<Find> {
        if raw.name.is_none() && raw.tags.is_empty() {
            self.issue(
                path,
                "name or tags is required (find would select every secret of the vault)",
            );
        }
        let name = match &raw.name {
            None => None,
            Some(name) => match regex::RegexBuilder::new(&name.regexp).size_limit(1 << 20).build() {
                Ok(regex) => Some(regex),
                Err(error) => {
                    self.issue(
                        &format!("{path}.name.regexp"),
                        format!("invalid regular expression: {error}"),
                    );
                    return None;
                }
            },
        };
        if raw.tags.len() > 15 {
            self.issue(&format!("{path}.tags"), "Key Vault secrets have at most 15 tags");
        }
        let decoding = self.decoding(
            &format!("{path}.decodingStrategy"),
            raw.decoding_strategy.as_deref(),
        );
        Some(Find {
            name,
            tags: raw.tags.clone(),
            decoding,
        })
    }

    fn target(
        &mut self,
        raw: &raw::FleetSecret,
        secret_keys: &BTreeSet<String>,
        dynamic_keys: bool,
    ) -> Option<Target> {
        let target = &raw.target;
        let name = target.name.clone().unwrap_or_else(|| raw.name.clone());
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

    fn selector(
        &mut self,
        path: &str,
        match_labels: &BTreeMap<String, String>,
        expressions: &[raw::Requirement],
    ) -> LabelSelector {
        if match_labels.len() > MAX_LABELS || expressions.len() > MAX_LABELS {
            self.issue(
                path,
                format!("at most {MAX_LABELS} matchLabels and {MAX_LABELS} matchExpressions"),
            );
        }
        for (key, value) in match_labels {
            let entry = format!("{path}.matchLabels.{key}");
            if !is_qualified_name(key) {
                self.issue(&entry, qualified_name_message(key));
            }
            if !is_label_value(value) {
                self.issue(&entry, label_value_message(value));
            }
        }
        let mut requirements = Vec::new();
        for (i, expression) in expressions.iter().enumerate() {
            let entry = format!("{path}.matchExpressions[{i}]");
            if !is_qualified_name(&expression.key) {
                self.issue(&format!("{entry}.key"), qualified_name_message(&expression.key));
            }
            let operator = match expression.operator.as_str() {
                "In" => SelectorOperator::In,
                "NotIn" => SelectorOperator::NotIn,
                "Exists" => SelectorOperator::Exists,
                "DoesNotExist" => SelectorOperator::DoesNotExist,
                other => {
                    self.issue(
                        &format!("{entry}.operator"),
                        format!("unknown value {other:?}, expected In|NotIn|Exists|DoesNotExist"),
                    );
                    continue;
                }
            };
            match operator {
                SelectorOperator::In | SelectorOperator::NotIn if expression.values.is_empty() => {
                    self.issue(
                        &format!("{entry}.values"),
                        format!("{} needs at least one value", expression.operator),
                    );
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !expression.values.is_empty() =>
                {
                    self.issue(
                        &format!("{entry}.values"),
                        format!("{} takes no values", expression.operator),
                    );
                }
                _ => {}
            }
            for (j, value) in expression.values.iter().enumerate() {
                if !is_label_value(value) {
                    self.issue(&format!("{entry}.values[{j}]"), label_value_message(value));
                }
            }
            requirements.push(LabelRequirement {
                key: expression.key.clone(),
                operator,
                values: expression.values.clone(),
            });
        }
        LabelSelector {
            match_labels: match_labels.clone(),
            match_expressions: requirements,
        }
    }

    fn rollout(&mut self, raw: &raw::Rollout) -> Option<Rollout> {
        if raw.waves.is_empty() {
            self.issue("rollout.waves", "at least one wave is required");
        }
        let mut waves = Vec::new();
        let mut last_percent = 0;
        for (i, wave) in raw.waves.iter().enumerate() {
            let path = format!("rollout.waves[{i}]");
            let has_selector = !wave.match_labels.is_empty() || !wave.match_expressions.is_empty();
            match (wave.percent, has_selector) {
                (Some(percent), false) => {
                    if !(1..=100).contains(&percent) {
                        self.issue(&format!("{path}.percent"), "must be between 1 and 100");
                    } else if percent <= last_percent {
                        self.issue(
                            &format!("{path}.percent"),
                            format!(
                                "percentages are cumulative and must increase (previous wave: {last_percent})"
                            ),
                        );
                    } else {
                        last_percent = percent;
                        waves.push(Wave::Percent(u8::try_from(percent).unwrap_or(100)));
                    }
                }
                (None, true) => {
                    waves.push(Wave::Selector(self.selector(
                        &path,
                        &wave.match_labels,
                        &wave.match_expressions,
                    )));
                }
                _ => self.issue(
                    &path,
                    "exactly one of percent, matchLabels/matchExpressions is required",
                ),
            }
        }
        let pause_on_error_rate = match &raw.pause_on_error_rate {
            None => 1.0,
            Some(value) => match parse_rate(value) {
                Some(rate) => rate,
                None => {
                    self.issue(
                        "rollout.pauseOnErrorRate",
                        "expected a percentage such as \"1%\" (0-100%) or a fraction between 0 and 1",
                    );
                    1.0
                }
            },
        };
        Some(Rollout {
            waves,
            pause_on_error_rate,
        })
    }
}

fn parse_rate(value: &serde_json::Value) -> Option<f64> {
    let rate = match value {
        serde_json::Value::String(text) => text.trim().strip_suffix('%')?.trim().parse::<f64>().ok()? / 100.0,
        serde_json::Value::Number(number) => number.as_f64()?,
        _ => return None,
    };
    (0.0..=1.0).contains(&rate).then_some(rate)
}

fn required_key(secret_type: &str) -> Option<&'static str> {
    match secret_type {
        "kubernetes.io/dockerconfigjson" => Some(".dockerconfigjson"),
        "kubernetes.io/dockercfg" => Some(".dockercfg"),
        "kubernetes.io/tls" => Some("tls.crt"),
        "kubernetes.io/ssh-auth" => Some("ssh-privatekey"),
        _ => None,
    }
}

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

/// DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub(crate) fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// DNS-1123 subdomain: at most 253 characters of dot-separated labels.
pub(crate) fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

fn dns_label_message(name: &str) -> String {
    format!(
        "invalid name {name:?}: a DNS-1123 label (1-63 characters of a-z, 0-9 and -, alphanumeric at both ends)"
    )
}

fn dns_subdomain_message(name: &str) -> String {
    format!(
        "invalid name {name:?}: a DNS-1123 subdomain (at most 253 characters of a-z, 0-9, - and ., alphanumeric at both ends)"
    )
}

/// Key Vault object name: 1-127 of `[0-9a-zA-Z-]`.
fn is_key_vault_object_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn key_vault_name_message(name: &str) -> String {
    format!("invalid Key Vault secret name {name:?}: 1-127 characters of 0-9, a-z, A-Z and -")
}

/// Key Vault (vault) name: 3-24 of `[a-z0-9-]`, starts with a letter, no `--`, no trailing `-`.
fn is_vault_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=24).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A Secret data key: 1-253 of `[-._a-zA-Z0-9]`.
pub(crate) fn is_secret_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && key != "."
        && key != ".."
}

fn secret_key_message(key: &str) -> String {
    format!("invalid Secret key {key:?}: 1-253 characters of a-z, A-Z, 0-9, -, _ and .")
}

/// A Kubernetes qualified name (label/annotation key): optional DNS prefix + `/` + name of at most
/// 63 characters of `[-._a-zA-Z0-9]`, alphanumeric at both ends.
pub(crate) fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

fn qualified_name_message(key: &str) -> String {
    format!(
        "invalid key {key:?}: [prefix/]name, name at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends"
    )
}

/// A label value: empty, or at most 63 of `[-._a-zA-Z0-9]`, alphanumeric at both ends.
pub(crate) fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric))
}

fn label_value_message(value: &str) -> String {
    format!(
        "invalid label value {value:?}: at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends"
    )
}
