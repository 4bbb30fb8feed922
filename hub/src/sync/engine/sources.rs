//! Which Key Vault values a FleetSecret's next revision is rendered from: the version of each
//! named key (pinned, fixed in the spec, or the latest) and the secrets its `dataFrom.find`
//! entries select. Pure.

use std::collections::{BTreeMap, HashMap};

use crate::render::{SourceValue, Sources};
use crate::spec::{DataFrom, FleetSecretSpec};
use crate::vault::FetchedSecret;

/// Whether a change of Key Vault secret `key` (with `tags`) can change `spec`'s rendering.
pub(super) fn reads(spec: &FleetSecretSpec, key: &str, tags: &BTreeMap<String, String>) -> bool {
    spec.remote_keys().contains(&key)
        || spec.data_from.iter().any(|from| match from {
            DataFrom::Find(find) => find.matches(key, tags),
            DataFrom::Extract(_) => false,
        })
}

/// For each named key, the version to use: a pin wins over the spec's fixed version; `None`
/// follows the latest.
pub(super) fn wanted_versions(
    spec: &FleetSecretSpec,
    pins: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>)> {
    let fixed: BTreeMap<&str, &str> = spec
        .data
        .iter()
        .map(|entry| &entry.remote_ref)
        .chain(spec.data_from.iter().filter_map(|from| match from {
            DataFrom::Extract(remote_ref) => Some(remote_ref),
            DataFrom::Find(_) => None,
        }))
        .filter_map(|remote_ref| Some((remote_ref.key.as_str(), remote_ref.version.as_deref()?)))
        .collect();
    spec.remote_keys()
        .into_iter()
        .map(|key| {
            let version = pins
                .get(key)
                .map(String::as_str)
                .or_else(|| fixed.get(key).copied())
                .map(str::to_owned);
            (key.to_owned(), version)
        })
        .collect()
}

/// The sources for rendering now; `Err(key)` names the first key whose value is not known yet.
pub(super) fn assemble(
    spec: &FleetSecretSpec,
    wanted: &[(String, Option<String>)],
    latest: &HashMap<(String, String), FetchedSecret>,
    versioned: &HashMap<(String, String, String), FetchedSecret>,
) -> Result<Sources, String> {
    let store = &spec.store_ref;
    let mut sources = Sources::default();
    for (key, version) in wanted {
        let secret = match version {
            Some(version) => versioned.get(&(store.clone(), key.clone(), version.clone())),
            None => latest.get(&(store.clone(), key.clone())),
        }
        .ok_or_else(|| key.clone())?;
        sources.named.insert(key.clone(), source_value(secret));
    }
    for (index, from) in spec.data_from.iter().enumerate() {
        let DataFrom::Find(find) = from else {
            continue;
        };
        let found: BTreeMap<String, SourceValue> = latest
            .iter()
            .filter(|((secret_store, name), secret)| {
                secret_store == store && secret.enabled && find.matches(name, &secret.tags)
            })
            .map(|((_, name), secret)| (name.clone(), source_value(secret)))
            .collect();
        sources.found.insert(index, found);
    }
    Ok(sources)
}

/// The sources of a revision the leader recorded (`recorded`: every (key, version) it used).
pub(super) fn recorded(
    spec: &FleetSecretSpec,
    recorded: &[(String, String)],
    store: &str,
    versioned: &HashMap<(String, String, String), FetchedSecret>,
) -> Sources {
    let named: Vec<&str> = spec.remote_keys();
    let mut sources = Sources::default();
    for (key, version) in recorded {
        let Some(secret) = versioned.get(&(store.to_owned(), key.clone(), version.clone())) else {
            continue;
        };
        if named.contains(&key.as_str()) {
            sources.named.insert(key.clone(), source_value(secret));
        }
        for (index, from) in spec.data_from.iter().enumerate() {
            if let DataFrom::Find(find) = from
                && find.matches(key, &secret.tags)
            {
                sources
                    .found
                    .entry(index)
                    .or_default()
                    .insert(key.clone(), source_value(secret));
            }
        }
    }
    sources
}

fn source_value(secret: &FetchedSecret) -> SourceValue {
    SourceValue {
        version: secret.version.clone(),
        value: secret.value.clone(),
    }
}
