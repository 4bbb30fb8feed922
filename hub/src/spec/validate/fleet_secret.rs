//! FleetSecret rules: names, `data` and `dataFrom` (Key Vault references and finds), then the
//! target, cluster selector and rollout their own files check.

use std::collections::BTreeSet;

use super::names::{
    dns_label_message, dns_subdomain_message, is_dns1123_label, is_dns1123_subdomain,
    is_key_vault_object_name, is_secret_key, key_vault_name_message, secret_key_message,
};
use super::{Ctx, raw};
use crate::domain::LabelSelector;
use crate::spec::{DataEntry, DataFrom, DecodingStrategy, Find, FleetSecretSpec, ObjectType, RemoteRef};

impl Ctx<'_> {
    /// A `kind: FleetSecret` document → its checked spec (`None` when a part cannot be built).
    pub(super) fn fleet_secret(&mut self, name: &str, raw: &raw::FleetSecretSpec) -> Option<FleetSecretSpec> {
        if !is_dns1123_subdomain(name) {
            self.issue_at("metadata.name", dns_subdomain_message(name));
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
                        if remote_ref.object == ObjectType::Certificate
                            && remote_ref.decoding != DecodingStrategy::None
                        {
                            self.issue(
                                &format!("{path}.extract.decodingStrategy"),
                                "extract of a certificate (cert/) yields PEM tls.crt and tls.key: decodingStrategy does not apply",
                            );
                        }
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
        let target = self.target(name, raw, &secret_keys, !raw.data_from.is_empty());
        let clusters = match &raw.clusters {
            None => LabelSelector::default(),
            Some(selector) => self.selector("clusters", &selector.match_labels, &selector.match_expressions),
        };
        let rollout = raw.rollout.as_ref().and_then(|rollout| self.rollout(rollout));
        let near_expiry_threshold = raw
            .near_expiry_threshold
            .as_deref()
            .and_then(|text| self.near_expiry_threshold(text));
        Some(FleetSecretSpec {
            name: name.to_owned(),
            store_ref: raw.store_ref.clone(),
            data,
            data_from,
            target: target?,
            clusters,
            rollout,
            near_expiry_threshold,
        })
    }

    /// `nearExpiryThreshold`: a duration from 1h to 365d.
    fn near_expiry_threshold(&mut self, text: &str) -> Option<std::time::Duration> {
        const MIN: std::time::Duration = std::time::Duration::from_secs(3_600);
        const MAX: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
        match humantime::parse_duration(text) {
            Ok(threshold) if (MIN..=MAX).contains(&threshold) => Some(threshold),
            Ok(_) => {
                self.issue("nearExpiryThreshold", "must be between 1h and 365d");
                None
            }
            Err(_) => {
                self.issue(
                    "nearExpiryThreshold",
                    format!("invalid duration {text:?}, expected e.g. 14d or 720h"),
                );
                None
            }
        }
    }

    fn remote_ref(&mut self, path: &str, raw: &raw::RemoteRef) -> Option<RemoteRef> {
        let (key, object) = match raw.key.split_once('/') {
            None => (raw.key.as_str(), ObjectType::Secret),
            Some(("secret", name)) => (name, ObjectType::Secret),
            Some(("cert", name)) => (name, ObjectType::Certificate),
            Some(("key", _)) => {
                self.issue(
                    &format!("{path}.key"),
                    "key/ objects (Key Vault keys) are not supported: keyfleet distributes secrets and certificates",
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
        if object == ObjectType::Certificate && property.is_some() {
            self.issue(
                &format!("{path}.property"),
                "a certificate (cert/) is not JSON: property does not apply",
            );
        }
        Some(RemoteRef {
            key: key.to_owned(),
            object,
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
                        format!("invalid regular expression: {}", regex_reason(&error)),
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
}

/// The one-line reason of a regex error: a syntax error's text is a multi-line drawing of the
/// pattern with a caret, and an issue is one line (`file:line: path: message`).
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}
