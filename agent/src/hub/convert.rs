//! Proto ⇄ domain: payloads validated into `DesiredSecret`s (every check that needs no cluster
//! state), and the messages the agent sends (Hello, version pages, Ack results, drift reports).

use std::collections::{BTreeMap, BTreeSet};

use keyfleet_proto::v1::{self, AgentMessage, agent_message};
use keyfleet_proto::{PROTOCOL_VERSION, digest, limits};

use super::SyncSettings;
use crate::cluster::ClusterEvent;
use crate::reconcile::{
    Applied, CreationPolicy, DeletionPolicy, DesiredSecret, DriftKind, ErrorCode, FLEET_SECRET_LABEL,
    MANAGED_BY_LABEL, Operator, RESERVED_ANNOTATION_PREFIX, Refusal, Requirement, SecretBytes, Selector,
    Targets,
};
use crate::text::truncate_utf8;

pub(super) fn hello(settings: &SyncSettings, applied: &BTreeMap<String, Applied>) -> AgentMessage {
    let digest = digest::set_digest(
        applied
            .iter()
            .map(|(key, applied)| (key.as_str(), applied.revision, &applied.sha256[..])),
    );
    let mut agent_version = settings.agent_version.clone();
    truncate_utf8(&mut agent_version, limits::MAX_AGENT_VERSION_BYTES);
    AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            agent_version,
            protocol: PROTOCOL_VERSION,
            boot_id: settings.boot_id.to_vec(),
            applied_digest: digest.to_vec(),
            applied_count: u32::try_from(applied.len()).unwrap_or(u32::MAX),
        })),
    }
}

pub(super) fn version_pages(applied: &BTreeMap<String, Applied>, page_size: usize) -> Vec<AgentMessage> {
    let items: Vec<v1::AppliedItem> = applied
        .iter()
        .map(|(key, applied)| v1::AppliedItem {
            key: key.clone(),
            revision: applied.revision,
            sha256: applied.sha256.to_vec(),
        })
        .collect();
    if items.is_empty() {
        return vec![version_page(Vec::new(), true)];
    }
    let pages = items.len().div_ceil(page_size);
    items
        .chunks(page_size)
        .enumerate()
        .map(|(index, chunk)| version_page(chunk.to_vec(), index + 1 == pages))
        .collect()
}

fn version_page(items: Vec<v1::AppliedItem>, last: bool) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::VersionPage(v1::VersionPage { items, last })),
    }
}

pub(super) fn heartbeat() -> AgentMessage {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    AgentMessage {
        body: Some(agent_message::Body::Heartbeat(v1::Heartbeat {
            sent_at_unix_ms: now,
        })),
    }
}

pub(super) fn drift_message(event: ClusterEvent) -> Option<AgentMessage> {
    let (key, namespace, kind, revision, failure) = match event {
        ClusterEvent::Drift {
            key,
            namespace,
            kind,
            revision,
        } => (key, namespace, kind, revision, String::new()),
        ClusterEvent::DriftUnrepaired {
            key,
            namespace,
            kind,
            revision,
            mut failure,
        } => {
            truncate_utf8(&mut failure, limits::MAX_ERROR_MESSAGE_BYTES);
            (key, namespace, kind, revision, failure)
        }
        ClusterEvent::Resync => return None,
    };
    let kind = match kind {
        DriftKind::Modified => v1::DriftKind::Modified,
        DriftKind::Deleted => v1::DriftKind::Deleted,
    };
    Some(AgentMessage {
        body: Some(agent_message::Body::Drift(v1::DriftReport {
            key,
            namespace,
            kind: kind as i32,
            revision,
            failure,
        })),
    })
}

pub(super) fn nack(key: String, revision: u64, refusal: &Refusal) -> v1::ItemResult {
    let mut message = refusal.message.clone();
    truncate_utf8(&mut message, limits::MAX_ERROR_MESSAGE_BYTES);
    v1::ItemResult {
        key,
        revision,
        error: Some(v1::ItemError {
            code: error_code(refusal.code) as i32,
            retryable: refusal.retryable,
            message,
        }),
    }
}

fn error_code(code: ErrorCode) -> v1::ErrorCode {
    match code {
        ErrorCode::Invalid => v1::ErrorCode::Invalid,
        ErrorCode::DigestMismatch => v1::ErrorCode::DigestMismatch,
        ErrorCode::NotOwned => v1::ErrorCode::NotOwned,
        ErrorCode::NamespaceMissing => v1::ErrorCode::NamespaceMissing,
        ErrorCode::Forbidden => v1::ErrorCode::Forbidden,
        ErrorCode::KubernetesUnavailable => v1::ErrorCode::KubernetesUnavailable,
        ErrorCode::Conflict => v1::ErrorCode::Conflict,
        ErrorCode::Immutable => v1::ErrorCode::Immutable,
        ErrorCode::Internal => v1::ErrorCode::Internal,
    }
}

pub(super) fn deletion_policy(value: i32) -> DeletionPolicy {
    match v1::DeletionPolicy::try_from(value) {
        Ok(v1::DeletionPolicy::Delete) => DeletionPolicy::Delete,
        _ => DeletionPolicy::Retain,
    }
}

fn invalid(message: String) -> Refusal {
    Refusal::new(ErrorCode::Invalid, false, message)
}

/// DNS-1123 subdomain: at most 253 bytes of `[a-z0-9.-]`, alphanumeric at both ends.
pub(super) fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} must be 1-253 bytes"));
    }
    name.split('.').try_for_each(|part| {
        check_label_chars(part).map_err(|()| format!("{name:?} is not a DNS-1123 subdomain"))
    })
}

/// DNS-1123 label: at most 63 bytes of `[a-z0-9-]`, alphanumeric at both ends.
fn check_dns_label(name: &str) -> Result<(), String> {
    if name.len() > 63 || check_label_chars(name).is_err() {
        return Err(format!("{name:?} is not a DNS-1123 label"));
    }
    Ok(())
}

fn check_label_chars(part: &str) -> Result<(), ()> {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last))
            if alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-') =>
        {
            Ok(())
        }
        _ => Err(()),
    }
}

/// Kubernetes qualified name (`[prefix/]name`), as used for label and annotation keys.
fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_subdomain(prefix)?;
    }
    if check_label_value(name).is_err() || name.is_empty() {
        return Err(format!("{key:?} is not a qualified name"));
    }
    Ok(())
}

/// Label value: at most 63 bytes of `[A-Za-z0-9._-]`, alphanumeric at both ends (or empty).
fn check_label_value(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = value.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

fn check_data_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > 253
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("data key {key:?} must be 1-253 bytes of [-._a-zA-Z0-9]"));
    }
    Ok(())
}

fn selector_from(selector: v1::LabelSelector) -> Result<Selector, String> {
    if selector.match_labels.len() > 64 || selector.match_expressions.len() > 64 {
        return Err("namespace_selector has more than 64 entries".into());
    }
    for (key, value) in &selector.match_labels {
        check_qualified_name(key)?;
        check_label_value(value)?;
    }
    let mut match_expressions = Vec::with_capacity(selector.match_expressions.len());
    for requirement in selector.match_expressions {
        check_qualified_name(&requirement.key)?;
        let operator = match requirement.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(format!("unknown selector operator {other:?}")),
        };
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values == requirement.values.is_empty() || requirement.values.len() > 64 {
            return Err(format!(
                "selector requirement on {:?}: {} takes {} values",
                requirement.key,
                requirement.operator,
                if needs_values { "1-64" } else { "no" }
            ));
        }
        for value in &requirement.values {
            check_label_value(value)?;
        }
        match_expressions.push(Requirement {
            key: requirement.key,
            operator,
            values: requirement.values,
        });
    }
    Ok(Selector {
        match_labels: selector.match_labels.into_iter().collect(),
        match_expressions,
    })
}

/// Most Key Vault versions one payload may name (a FleetSecret renders from a few secrets).
const MAX_SOURCE_VERSIONS: usize = 256;

/// Validates the Key Vault versions of a payload (they become an annotation): Key Vault secret
/// names (1-127 of `[0-9a-zA-Z-]`) and version ids (1-64 of `[0-9a-zA-Z]`).
fn source_versions_from(
    versions: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if versions.len() > MAX_SOURCE_VERSIONS {
        return Err(format!(
            "source_versions names {} Key Vault secrets, more than {MAX_SOURCE_VERSIONS}",
            versions.len()
        ));
    }
    for (name, version) in &versions {
        if name.is_empty()
            || name.len() > 127
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "source_versions: {name:?} is not a Key Vault secret name"
            ));
        }
        if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "source_versions: the version of {name:?} is not a Key Vault version id"
            ));
        }
    }
    Ok(versions.into_iter().collect())
}

/// Validates a payload and converts it; the data moves into zeroizing buffers. Every check that
/// needs no cluster state happens here: names, sizes, selector, reserved labels and annotations,
/// and the announced sha256.
pub fn desired_from_payload(payload: v1::SecretPayload) -> Result<DesiredSecret, Refusal> {
    check_subdomain(&payload.key).map_err(|reason| invalid(format!("key: {reason}")))?;
    if payload.revision == 0 {
        return Err(invalid("revision must be positive".into()));
    }
    check_subdomain(&payload.secret_name).map_err(|reason| invalid(format!("secret_name: {reason}")))?;
    if payload.r#type.len() > 253 || payload.r#type.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(invalid(
            "type must be at most 253 bytes of printable ascii".into(),
        ));
    }
    let targets = match (payload.namespaces.is_empty(), payload.namespace_selector.clone()) {
        (false, None) => {
            if payload.namespaces.len() > limits::MAX_NAMESPACES {
                return Err(invalid(format!(
                    "{} namespaces, more than {}",
                    payload.namespaces.len(),
                    limits::MAX_NAMESPACES
                )));
            }
            let mut unique = BTreeSet::new();
            for namespace in &payload.namespaces {
                check_dns_label(namespace).map_err(|reason| invalid(format!("namespace {reason}")))?;
                if !unique.insert(namespace.as_str()) {
                    return Err(invalid(format!("namespace {namespace:?} listed twice")));
                }
            }
            Targets::Namespaces(payload.namespaces.clone())
        }
        (true, Some(selector)) => Targets::Selector(
            selector_from(selector).map_err(|reason| invalid(format!("namespace_selector: {reason}")))?,
        ),
        (true, None) => {
            return Err(invalid("neither namespaces nor namespace_selector is set".into()));
        }
        (false, Some(_)) => {
            return Err(invalid("both namespaces and namespace_selector are set".into()));
        }
    };
    let mut data_bytes = 0usize;
    for (key, value) in &payload.data {
        check_data_key(key).map_err(invalid)?;
        data_bytes += key.len() + value.len();
    }
    if data_bytes > limits::MAX_SECRET_DATA_BYTES {
        return Err(invalid(format!(
            "data is {data_bytes} bytes, more than {}",
            limits::MAX_SECRET_DATA_BYTES
        )));
    }
    for (key, value) in &payload.labels {
        check_qualified_name(key).map_err(|reason| invalid(format!("label {reason}")))?;
        check_label_value(value).map_err(|reason| invalid(format!("label {key}: {reason}")))?;
        if key == MANAGED_BY_LABEL || key == FLEET_SECRET_LABEL {
            return Err(invalid(format!("label {key} is reserved for the agent")));
        }
    }
    let mut annotation_bytes = 0usize;
    for (key, value) in &payload.annotations {
        check_qualified_name(key).map_err(|reason| invalid(format!("annotation {reason}")))?;
        if key.starts_with(RESERVED_ANNOTATION_PREFIX) {
            return Err(invalid(format!("annotation {key} is reserved for the agent")));
        }
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > 256 * 1024 {
        return Err(invalid(format!(
            "annotations are {annotation_bytes} bytes, more than 262144"
        )));
    }
    let announced: [u8; 32] = payload.sha256.as_slice().try_into().map_err(|_| {
        Refusal::new(
            ErrorCode::DigestMismatch,
            false,
            format!("sha256 is {} bytes, not 32", payload.sha256.len()),
        )
    })?;
    if digest::payload_sha256(&payload) != announced {
        return Err(Refusal::new(
            ErrorCode::DigestMismatch,
            false,
            "sha256 of the payload differs from the announced one",
        ));
    }
    let creation = match v1::CreationPolicy::try_from(payload.creation_policy) {
        Ok(v1::CreationPolicy::Merge) => CreationPolicy::Merge,
        Ok(v1::CreationPolicy::Orphan) => CreationPolicy::Orphan,
        Ok(v1::CreationPolicy::Owner | v1::CreationPolicy::Unspecified) => CreationPolicy::Owner,
        Err(_) => return Err(invalid("unknown creation_policy".into())),
    };
    if v1::DeletionPolicy::try_from(payload.deletion_policy).is_err() {
        return Err(invalid("unknown deletion_policy".into()));
    }
    let source_versions = source_versions_from(payload.source_versions).map_err(invalid)?;
    let secret_type = if payload.r#type.is_empty() {
        "Opaque".to_owned()
    } else {
        payload.r#type
    };
    Ok(DesiredSecret {
        key: payload.key,
        revision: payload.revision,
        sha256: announced,
        secret_name: payload.secret_name,
        secret_type,
        targets,
        data: payload
            .data
            .into_iter()
            .map(|(key, value)| (key, SecretBytes::new(value)))
            .collect(),
        labels: payload.labels.into_iter().collect(),
        annotations: payload.annotations.into_iter().collect(),
        creation,
        deletion: deletion_policy(payload.deletion_policy),
        immutable: payload.immutable,
        source_versions,
    })
}
