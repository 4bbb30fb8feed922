//! ESO `ExternalSecret` / `ClusterExternalSecret` → keyfleet `FleetSecret`.
//!
//! The ExternalSecret's namespace becomes the target namespace (a ClusterExternalSecret's
//! `namespaces` or `namespaceSelector` likewise), `secretStoreRef` the store, `refreshInterval`
//! the store's poll interval; data, dataFrom and target map field by field.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{Ctx, SecretOut, Source, StoreKey, go_duration};

/// `ExternalSecret` in `namespace` (`default` when the manifest has none).
pub(super) fn convert(
    ctx: &mut Ctx<'_>,
    name: &str,
    namespace: Option<String>,
    metadata: &Map<String, Value>,
    spec: &Map<String, Value>,
) -> Option<SecretOut> {
    let namespace = namespace.unwrap_or_else(|| {
        ctx.note(
            "metadata",
            None,
            "no metadata.namespace: the Secret is written to namespace \"default\" (as kubectl would apply it)",
        );
        "default".to_owned()
    });
    let kept = ctx.metadata(metadata);
    let mut secret = external_secret_spec(ctx, "spec", name, Some(&namespace), spec)?;
    secret.metadata = kept;
    secret.namespaces = [namespace].into();
    Some(secret)
}

/// `ClusterExternalSecret`: its `externalSecretSpec` written to the namespaces it selects.
pub(super) fn convert_cluster(
    ctx: &mut Ctx<'_>,
    name: &str,
    metadata: &Map<String, Value>,
    spec: &Map<String, Value>,
) -> Option<SecretOut> {
    let kept = ctx.metadata(metadata);
    let Some(inner) = ctx
        .object("spec.externalSecretSpec", spec.get("externalSecretSpec"))
        .cloned()
    else {
        ctx.error("spec", None, "externalSecretSpec is required");
        return None;
    };
    let secret_name = ctx
        .string("spec.externalSecretName", spec.get("externalSecretName"))
        .unwrap_or_else(|| name.to_owned());
    let mut secret = external_secret_spec(ctx, "spec.externalSecretSpec", &secret_name, None, &inner)?;
    secret.metadata = kept;
    secret.name = name.to_owned();
    if secret.spec["target"].get("name").is_none() && secret_name != name {
        secret.spec["target"]["name"] = json!(secret_name);
    }
    let mut namespaces = BTreeSet::new();
    if let Some(list) = spec.get("namespaces").and_then(Value::as_array) {
        namespaces.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    let mut selectors: Vec<(String, Value)> = Vec::new();
    if let Some(selector) = spec.get("namespaceSelector") {
        selectors.push(("spec.namespaceSelector".to_owned(), selector.clone()));
    }
    if let Some(list) = spec.get("namespaceSelectors").and_then(Value::as_array) {
        for (i, selector) in list.iter().enumerate() {
            selectors.push((format!("spec.namespaceSelectors[{i}]"), selector.clone()));
        }
    }
    match (namespaces.is_empty(), selectors.len()) {
        (_, 0) => {}
        (true, 1) => {
            let (path, selector) = &selectors[0];
            let mut kept_selector = Map::new();
            if let Some(object) = selector.as_object() {
                for (field, value) in object {
                    if matches!(field.as_str(), "matchLabels" | "matchExpressions") {
                        kept_selector.insert(field.clone(), value.clone());
                    } else {
                        ctx.warn(
                            &format!("{path}.{field}"),
                            Some(value),
                            "no keyfleet equivalent; not converted",
                        );
                    }
                }
            }
            secret.spec["target"]["namespaceSelector"] = kept_selector.into();
        }
        _ => {
            for (path, selector) in &selectors[usize::from(namespaces.is_empty())..] {
                ctx.warn(
                    path,
                    Some(selector),
                    "keyfleet targets either a namespace list or one namespace selector; not converted",
                );
            }
            if namespaces.is_empty() {
                let (path, selector) = &selectors[0];
                secret.spec["target"]["namespaceSelector"] = selector.clone();
                ctx.note(path, Some(selector), "the first selector is used");
            }
        }
    }
    if namespaces.is_empty() && selectors.is_empty() {
        ctx.error(
            "spec",
            None,
            "a ClusterExternalSecret needs namespaces, namespaceSelector or namespaceSelectors",
        );
        return None;
    }
    secret.namespaces = namespaces;
    for (field, value) in spec {
        match field.as_str() {
            "externalSecretSpec" | "externalSecretName" | "namespaces" | "namespaceSelector" | "namespaceSelectors" => {}
            "refreshTime" => ctx.warn(
                "spec.refreshTime",
                Some(value),
                "how often ESO re-lists namespaces; keyfleet's agents follow namespace changes as they happen",
            ),
            _ => ctx.warn(&format!("spec.{field}"), Some(value), "no keyfleet equivalent; not converted"),
        }
    }
    Some(secret)
}

/// The fields of an ExternalSecret's `spec` at `base`.
fn external_secret_spec(
    ctx: &mut Ctx<'_>,
    base: &str,
    name: &str,
    namespace: Option<&str>,
    spec: &Map<String, Value>,
) -> Option<SecretOut> {
    let mut out = Map::new();
    let store = store_ref(ctx, base, namespace, spec)?;
    let refresh = match spec.get("refreshInterval") {
        None => None,
        Some(value) => {
            let text = value.as_str().unwrap_or_default();
            match go_duration(text) {
                Some(duration) if duration.is_zero() => {
                    ctx.warn(
                        &format!("{base}.refreshInterval"),
                        Some(value),
                        "0 (fetch once) has no keyfleet equivalent: keyfleet always follows Key Vault at the store's poll interval",
                    );
                    None
                }
                Some(duration) => Some(duration),
                None => {
                    ctx.error(
                        &format!("{base}.refreshInterval"),
                        Some(value),
                        "not a duration such as 1h or 15m",
                    );
                    return None;
                }
            }
        }
    };
    if let Some(value) = spec.get("refreshPolicy")
        && value.as_str() != Some("Periodic")
    {
        ctx.warn(
            &format!("{base}.refreshPolicy"),
            Some(value),
            "keyfleet always follows Key Vault (Periodic)",
        );
    }
    let mut data = Vec::new();
    if let Some(entries) = spec.get("data").and_then(Value::as_array) {
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("{base}.data[{i}]");
            let Some(entry) = ctx.object(&path, Some(entry)).cloned() else {
                continue;
            };
            if let Some(value) = entry.get("sourceRef") {
                ctx.warn(
                    &format!("{path}.sourceRef"),
                    Some(value),
                    "generators and other stores per entry have no keyfleet equivalent; entry not converted",
                );
                continue;
            }
            let Some(secret_key) = ctx.string(&format!("{path}.secretKey"), entry.get("secretKey")) else {
                ctx.error(&path, None, "secretKey is required");
                continue;
            };
            let Some(remote) = ctx
                .object(&format!("{path}.remoteRef"), entry.get("remoteRef"))
                .cloned()
            else {
                ctx.error(&path, None, "remoteRef is required");
                continue;
            };
            ctx.rest(&path, &entry, &["secretKey", "remoteRef", "sourceRef"]);
            if let Some(remote) = remote_ref(ctx, &format!("{path}.remoteRef"), &remote, false) {
                data.push(json!({ "secretKey": secret_key, "remoteRef": remote }));
            }
        }
    }
    if !data.is_empty() {
        out.insert("data".to_owned(), data.into());
    }
    let mut data_from = Vec::new();
    if let Some(entries) = spec.get("dataFrom").and_then(Value::as_array) {
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("{base}.dataFrom[{i}]");
            let Some(entry) = ctx.object(&path, Some(entry)).cloned() else {
                continue;
            };
            let mut skip = false;
            for field in ["sourceRef", "rewrite"] {
                if let Some(value) = entry.get(field) {
                    let why = if field == "rewrite" {
                        "key rewriting has no keyfleet equivalent; entry not converted (its keys would differ)"
                    } else {
                        "generators and other stores per entry have no keyfleet equivalent; entry not converted"
                    };
                    ctx.warn(&format!("{path}.{field}"), Some(value), why);
                    skip = true;
                }
            }
            if skip {
                continue;
            }
            ctx.rest(&path, &entry, &["extract", "find", "sourceRef", "rewrite"]);
            if let Some(extract) = entry.get("extract") {
                let Some(extract) = ctx.object(&format!("{path}.extract"), Some(extract)).cloned() else {
                    continue;
                };
                if let Some(remote) = remote_ref(ctx, &format!("{path}.extract"), &extract, true) {
                    data_from.push(json!({ "extract": remote }));
                }
            } else if let Some(find) = entry.get("find") {
                let Some(find) = ctx.object(&format!("{path}.find"), Some(find)).cloned() else {
                    continue;
                };
                if let Some(find) = find_of(ctx, &format!("{path}.find"), &find) {
                    data_from.push(json!({ "find": find }));
                }
            }
        }
    }
    if !data_from.is_empty() {
        out.insert("dataFrom".to_owned(), data_from.into());
    }
    let target = ctx
        .object(&format!("{base}.target"), spec.get("target"))
        .cloned()
        .unwrap_or_default();
    out.insert(
        "target".to_owned(),
        self::target(ctx, &format!("{base}.target"), name, &target).into(),
    );
    ctx.rest(
        base,
        spec,
        &[
            "secretStoreRef",
            "refreshInterval",
            "refreshPolicy",
            "data",
            "dataFrom",
            "target",
        ],
    );
    Some(SecretOut {
        name: name.to_owned(),
        source: Source {
            file: ctx.file.to_owned(),
            line: ctx.document.line_of(""),
        },
        metadata: Map::new(),
        spec: out.into(),
        namespaces: BTreeSet::new(),
        store,
        refresh,
    })
}

/// `secretStoreRef` → the store's ESO identity (a SecretStore lives in the ExternalSecret's
/// namespace).
fn store_ref(
    ctx: &mut Ctx<'_>,
    base: &str,
    namespace: Option<&str>,
    spec: &Map<String, Value>,
) -> Option<StoreKey> {
    let path = format!("{base}.secretStoreRef");
    let Some(reference) = ctx.object(&path, spec.get("secretStoreRef")).cloned() else {
        ctx.error(base, None, "secretStoreRef is required");
        return None;
    };
    let name = ctx.string(&format!("{path}.name"), reference.get("name"))?;
    let kind = ctx
        .string(&format!("{path}.kind"), reference.get("kind"))
        .unwrap_or_else(|| "SecretStore".to_owned());
    ctx.rest(&path, &reference, &["name", "kind"]);
    match kind.as_str() {
        "SecretStore" => match namespace {
            Some(namespace) => Some((kind, Some(namespace.to_owned()), name)),
            None => {
                // A ClusterExternalSecret's SecretStore is the one of each target namespace.
                ctx.note(
                    &path,
                    reference.get("name"),
                    "a namespaced SecretStore from a ClusterExternalSecret: the store of that name is used for every namespace",
                );
                Some((kind, Some("default".to_owned()), name))
            }
        },
        "ClusterSecretStore" => Some((kind, None, name)),
        other => {
            ctx.error(
                &format!("{path}.kind"),
                reference.get("kind"),
                format!("unknown store kind {other:?}; expected SecretStore or ClusterSecretStore"),
            );
            None
        }
    }
}

/// `remoteRef` / `extract`: key (without `secret/`; `cert/` kept), version, property,
/// decodingStrategy.
fn remote_ref(ctx: &mut Ctx<'_>, path: &str, remote: &Map<String, Value>, extract: bool) -> Option<Value> {
    let mut out = Map::new();
    let key = ctx.string(&format!("{path}.key"), remote.get("key"))?;
    let certificate = key.starts_with("cert/");
    let key = match key.split_once('/') {
        Some(("secret", name)) => name.to_owned(),
        // ESO refuses dataFrom with a certificate; keyfleet's extract of one means something else
        // (tls.crt and tls.key), so it is not carried over silently.
        Some(("cert", _)) if extract => {
            ctx.warn(
                &format!("{path}.key"),
                remote.get("key"),
                "ESO refuses dataFrom.extract of a certificate (cert/); entry not converted (keyfleet's extract of cert/NAME yields tls.crt and tls.key: write it by hand if that is what you meant)",
            );
            return None;
        }
        // The certificate's DER (Key Vault's `cer`), as ESO reads it.
        Some(("cert", _)) => key,
        Some(("key", _)) => {
            ctx.warn(
                &format!("{path}.key"),
                remote.get("key"),
                "Key Vault keys (key/) have no keyfleet equivalent (keyfleet distributes secrets and certificates); entry not converted",
            );
            return None;
        }
        _ => key,
    };
    out.insert("key".to_owned(), json!(key));
    if let Some(policy) = remote.get("metadataPolicy")
        && policy.as_str() != Some("None")
    {
        ctx.warn(
            &format!("{path}.metadataPolicy"),
            Some(policy),
            "fetching tags as the value has no keyfleet equivalent; entry not converted",
        );
        return None;
    }
    for field in ["version", "property", "decodingStrategy"] {
        if let Some(value) = ctx.string(&format!("{path}.{field}"), remote.get(field))
            && !value.is_empty()
        {
            if certificate && field == "property" {
                ctx.warn(
                    &format!("{path}.property"),
                    remote.get(field),
                    "ESO ignores property for a certificate (cert/ gives its DER); not converted",
                );
                continue;
            }
            out.insert(field.to_owned(), json!(value));
        }
    }
    conversion_strategy(ctx, path, remote);
    if let Some(value) = remote.get("nullBytePolicy")
        && value.as_str() != Some("Ignore")
    {
        ctx.warn(
            &format!("{path}.nullBytePolicy"),
            Some(value),
            "no keyfleet equivalent; not converted",
        );
    }
    ctx.rest(
        path,
        remote,
        &[
            "key",
            "version",
            "property",
            "decodingStrategy",
            "conversionStrategy",
            "metadataPolicy",
            "nullBytePolicy",
        ],
    );
    Some(out.into())
}

fn conversion_strategy(ctx: &mut Ctx<'_>, path: &str, object: &Map<String, Value>) {
    if let Some(value) = object.get("conversionStrategy")
        && value.as_str() != Some("Default")
    {
        ctx.warn(
            &format!("{path}.conversionStrategy"),
            Some(value),
            "keyfleet uses keys as they are (Default)",
        );
    }
}

/// `find`: name regexp, tags, decodingStrategy.
fn find_of(ctx: &mut Ctx<'_>, path: &str, find: &Map<String, Value>) -> Option<Value> {
    let mut out = Map::new();
    if let Some(name) = find.get("name").and_then(Value::as_object) {
        if let Some(regexp) = ctx.string(&format!("{path}.name.regexp"), name.get("regexp")) {
            out.insert("name".to_owned(), json!({ "regexp": regexp }));
        }
        ctx.rest(&format!("{path}.name"), name, &["regexp"]);
    }
    if let Some(tags) = find.get("tags").and_then(Value::as_object)
        && !tags.is_empty()
    {
        out.insert("tags".to_owned(), tags.clone().into());
    }
    if let Some(value) = find.get("path") {
        ctx.warn(
            &format!("{path}.path"),
            Some(value),
            "Key Vault has no paths; not converted",
        );
    }
    if let Some(strategy) = ctx.string(&format!("{path}.decodingStrategy"), find.get("decodingStrategy")) {
        out.insert("decodingStrategy".to_owned(), json!(strategy));
    }
    conversion_strategy(ctx, path, find);
    ctx.rest(
        path,
        find,
        &["name", "tags", "path", "decodingStrategy", "conversionStrategy"],
    );
    Some(out.into())
}

/// `target`: name, policies, immutable and the template.
fn target(
    ctx: &mut Ctx<'_>,
    path: &str,
    fleet_secret_name: &str,
    target: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(name) = ctx.string(&format!("{path}.name"), target.get("name"))
        && name != fleet_secret_name
    {
        out.insert("name".to_owned(), json!(name));
    }
    if let Some(policy) = ctx.string(&format!("{path}.creationPolicy"), target.get("creationPolicy")) {
        match policy.as_str() {
            "Owner" | "Merge" | "Orphan" => {
                out.insert("creationPolicy".to_owned(), json!(policy));
            }
            _ => ctx.warn(
                &format!("{path}.creationPolicy"),
                target.get("creationPolicy"),
                "keyfleet always writes the Secret (Owner, Merge or Orphan); Owner is used",
            ),
        }
    }
    if let Some(policy) = ctx.string(&format!("{path}.deletionPolicy"), target.get("deletionPolicy")) {
        match policy.as_str() {
            "Retain" | "Delete" => {
                out.insert("deletionPolicy".to_owned(), json!(policy));
            }
            _ => ctx.warn(
                &format!("{path}.deletionPolicy"),
                target.get("deletionPolicy"),
                "keyfleet supports Retain and Delete; Retain is used",
            ),
        }
    }
    if let Some(immutable) = target.get("immutable").and_then(Value::as_bool) {
        out.insert("immutable".to_owned(), json!(immutable));
    }
    if let Some(template) = target.get("template").and_then(Value::as_object) {
        let template_path = format!("{path}.template");
        let mut kept = Map::new();
        for (field, value) in template {
            match field.as_str() {
                "type" | "mergePolicy" | "data" => {
                    kept.insert(field.clone(), value.clone());
                }
                "metadata" => {
                    let mut metadata = Map::new();
                    for (key, map) in value.as_object().into_iter().flatten() {
                        if matches!(key.as_str(), "labels" | "annotations") {
                            metadata.insert(key.clone(), map.clone());
                        } else {
                            ctx.warn(&format!("{template_path}.metadata.{key}"), Some(map), "no keyfleet equivalent; not converted");
                        }
                    }
                    kept.insert("metadata".to_owned(), metadata.into());
                }
                "engineVersion" => {
                    if value.as_str() == Some("v2") {
                        kept.insert(field.clone(), value.clone());
                    } else {
                        ctx.warn(
                            &format!("{template_path}.engineVersion"),
                            Some(value),
                            "keyfleet renders templates with ESO's v2 engine (Go templates); v1 templates may render differently",
                        );
                    }
                }
                "templateFrom" => ctx.warn(
                    &format!("{template_path}.templateFrom"),
                    Some(value),
                    "templates from ConfigMaps or Secrets of ESO's cluster have no keyfleet equivalent; inline them in template.data",
                ),
                _ => ctx.warn(&format!("{template_path}.{field}"), Some(value), "no keyfleet equivalent; not converted"),
            }
        }
        if !kept.is_empty() {
            out.insert("template".to_owned(), kept.into());
        }
    }
    ctx.rest(
        path,
        target,
        &[
            "name",
            "creationPolicy",
            "deletionPolicy",
            "immutable",
            "template",
        ],
    );
    out
}
