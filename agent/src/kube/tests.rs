//! Unit tests of the Kubernetes side's pure parts: the Secret we apply, the value-free view, the
//! read-back content, the NACK mapping and what counts as a change.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use super::apply::secret_for;
use super::read_back::prior_content;
use super::watch::meaningful_change;
use super::*;
use crate::reconcile::{
    CreationPolicy, FIELD_MANAGER, FLEET_SECRET_LABEL, KEY_VAULT_VERSIONS_ANNOTATION, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE, REVISION_ANNOTATION, SHA256_ANNOTATION, SYNCED_AT_ANNOTATION, SecretBytes,
    TARGETS_ANNOTATION, Targets,
};

const SYNCED_AT: &str = "2026-03-01T12:00:00Z";

fn desired(creation: CreationPolicy) -> DesiredSecret {
    DesiredSecret {
        key: "regcred".into(),
        revision: 9,
        sha256: [1; 32],
        secret_name: "regcred".into(),
        secret_type: "kubernetes.io/dockerconfigjson".into(),
        targets: Targets::Namespaces(vec!["a".into()]),
        data: [(".dockerconfigjson".to_string(), SecretBytes::new(b"{}".to_vec()))].into(),
        labels: BTreeMap::new(),
        annotations: [("note".to_string(), "x".to_string())].into(),
        creation,
        deletion: DeletionPolicy::Delete,
        immutable: true,
        source_versions: BTreeMap::new(),
    }
}

#[test]
fn owner_applies_everything_merge_only_data_and_marks() {
    let owner = secret_for(&desired(CreationPolicy::Owner), "a", SYNCED_AT);
    assert_eq!(owner.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    assert_eq!(owner.immutable, Some(true));
    let annotations = owner.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations.get(REVISION_ANNOTATION).map(String::as_str),
        Some("9")
    );
    assert_eq!(annotations.get("note").map(String::as_str), Some("x"));
    let merge = secret_for(&desired(CreationPolicy::Merge), "a", SYNCED_AT);
    assert_eq!(merge.type_, None, "merge never claims the type");
    assert_eq!(merge.immutable, None, "merge never claims immutability");
    assert_eq!(
        merge
            .metadata
            .labels
            .expect("labels")
            .get(MANAGED_BY_LABEL)
            .map(String::as_str),
        Some(MANAGED_BY_VALUE)
    );
}

#[test]
fn applied_secrets_carry_the_fleet_secret_label_sync_time_and_versions() {
    let mut with_versions = desired(CreationPolicy::Owner);
    with_versions.source_versions = [
        (
            "db-password".to_string(),
            "0123456789abcdef0123456789abcdef".to_string(),
        ),
        (
            "db-user".to_string(),
            "fedcba9876543210fedcba9876543210".to_string(),
        ),
    ]
    .into();
    let secret = secret_for(&with_versions, "a", SYNCED_AT);
    let labels = secret.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels.get(FLEET_SECRET_LABEL).map(String::as_str),
        Some("regcred")
    );
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY_VALUE)
    );
    let annotations = secret.metadata.annotations.clone().expect("annotations");
    assert_eq!(
        annotations.get(SYNCED_AT_ANNOTATION).map(String::as_str),
        Some(SYNCED_AT)
    );
    let versions: BTreeMap<String, String> =
        serde_json::from_str(&annotations[KEY_VAULT_VERSIONS_ANNOTATION]).expect("versions are JSON");
    assert_eq!(versions, with_versions.source_versions);
    // Labels, annotations and Event notes hold names, versions and digests, never a value.
    let marks = format!("{labels:?}{annotations:?}");
    assert!(
        !marks.contains("{}") || !marks.contains(".dockerconfigjson\":"),
        "{marks}"
    );
    // No versions from the hub: no annotation.
    let plain = secret_for(&desired(CreationPolicy::Owner), "a", SYNCED_AT);
    assert!(
        !plain
            .metadata
            .annotations
            .expect("annotations")
            .contains_key(KEY_VAULT_VERSIONS_ANNOTATION)
    );
    // The time of the write is no change: a Secret written earlier is still up to date, and the
    // watcher sees no meaningful change when only the time differs.
    let ((_, _), earlier) = observe(secret_for(&with_versions, "a", "2020-01-01T00:00:00Z")).expect("named");
    let ((_, _), later) = observe(secret).expect("named");
    assert!(reconcile::is_up_to_date(&with_versions, &earlier.observed));
    assert!(!meaningful_change(&earlier.observed, &later.observed));
    // Read back for a rollback, the versions come back too.
    let back = prior_content(secret_for(&with_versions, "a", SYNCED_AT), "regcred");
    assert_eq!(back.source_versions, with_versions.source_versions);
    assert!(
        !back.labels.contains_key(FLEET_SECRET_LABEL),
        "the agent's labels are not payload labels"
    );
}

#[test]
fn a_secret_written_by_an_older_agent_is_up_to_date_without_the_label() {
    let current = desired(CreationPolicy::Owner);
    let mut old = secret_for(&current, "a", SYNCED_AT);
    let labels = old.metadata.labels.as_mut().expect("labels");
    labels.remove(FLEET_SECRET_LABEL);
    let old_annotations = old.metadata.annotations.as_mut().expect("annotations");
    old_annotations.remove(SYNCED_AT_ANNOTATION);
    let ((_, _), entry) = observe(old.clone()).expect("named");
    assert!(
        reconcile::is_up_to_date(&current, &entry.observed),
        "no mass rewrite on upgrade: the label comes with the next write"
    );
    // A label with another value is an edit of ours: drift.
    old.metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert(FLEET_SECRET_LABEL.into(), "someone-else".into());
    let ((_, _), edited) = observe(old).expect("named");
    assert!(!reconcile::is_up_to_date(&current, &edited.observed));
}

#[test]
fn observing_keeps_digests_only() {
    let mut secret = secret_for(&desired(CreationPolicy::Owner), "a", SYNCED_AT);
    secret.metadata.resource_version = Some("42".into());
    let ((namespace, name), entry) = observe(secret).expect("named");
    assert_eq!((namespace.as_str(), name.as_str()), ("a", "regcred"));
    assert_eq!(entry.resource_version, 42);
    assert_eq!(
        entry.observed.data.get(".dockerconfigjson"),
        Some(&reconcile::value_digest(b"{}"))
    );
    assert!(entry.observed.immutable);
}

#[test]
fn read_back_content_is_what_our_apply_entry_owns() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    let mut secret = secret_for(&desired(CreationPolicy::Owner), "a", SYNCED_AT);
    let data = secret.data.get_or_insert_default();
    data.insert("extra".into(), ByteString(b"theirs".to_vec()));
    secret
        .metadata
        .labels
        .get_or_insert_default()
        .insert("audited".into(), "yes".into());
    let ours = serde_json::json!({
        "f:data": {"f:.dockerconfigjson": {}},
        "f:immutable": {},
        "f:metadata": {
            "f:annotations": {"f:note": {}, "f:keyfleet.io/revision": {}},
            "f:labels": {"f:app.kubernetes.io/managed-by": {}},
        },
        "f:type": {},
    });
    let entry = |manager: &str, operation: &str, fields: serde_json::Value| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        fields_v1: Some(FieldsV1(fields)),
        ..ManagedFieldsEntry::default()
    };
    secret.metadata.managed_fields = Some(vec![
        entry(
            "kubectl",
            "Update",
            serde_json::json!({"f:data": {"f:extra": {}}, "f:metadata": {"f:labels": {"f:audited": {}}}}),
        ),
        // Our release patch is an Update: only the Apply entry counts.
        entry(
            FIELD_MANAGER,
            "Update",
            serde_json::json!({"f:data": {"f:extra": {}}}),
        ),
        entry(FIELD_MANAGER, "Apply", ours),
    ]);
    let content = prior_content(secret.clone(), "regcred");
    assert_eq!(content.data.keys().collect::<Vec<_>>(), [".dockerconfigjson"]);
    assert_eq!(content.data[".dockerconfigjson"].expose(), b"{}");
    assert!(content.labels.is_empty(), "{:?}", content.labels);
    assert_eq!(
        content.annotations,
        [("note".to_string(), "x".to_string())].into()
    );
    assert_eq!((content.revision, content.sha256), (9, [1; 32]));
    assert_eq!(content.secret_type, "kubernetes.io/dockerconfigjson");
    assert_eq!(content.creation, CreationPolicy::Owner);
    assert!(content.immutable);
    assert_eq!(content.targets, Targets::Namespaces(vec!["a".into()]));

    // Without our apply entry: every data key, none of the other labels.
    secret.metadata.managed_fields = None;
    let content = prior_content(secret, "regcred");
    assert_eq!(
        content.data.keys().collect::<Vec<_>>(),
        [".dockerconfigjson", "extra"]
    );
    assert!(content.labels.is_empty());
    assert!(content.annotations.is_empty());
}

/// A rollback writes the targets record back as it was, so the Secret it restores still names
/// every namespace of its plan (the read-back rule of `reconcile::applied` reads it).
#[test]
fn read_back_content_keeps_the_targets_record() {
    let mut spread = desired(CreationPolicy::Owner);
    spread.targets = Targets::Namespaces(vec!["a".into(), "b".into()]);
    let secret = secret_for(&spread, "a", SYNCED_AT);
    assert_eq!(
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(TARGETS_ANNOTATION))
            .map(String::as_str),
        Some(r#"{"namespaces":["a","b"]}"#)
    );
    let content = prior_content(secret.clone(), "regcred");
    assert_eq!(content.targets, spread.targets);
    assert_eq!(
        content.full_annotations().get(TARGETS_ANNOTATION),
        spread.full_annotations().get(TARGETS_ANNOTATION)
    );

    // Written before agents recorded their targets: the Secret claims its own namespace only.
    let mut legacy = secret;
    legacy
        .metadata
        .annotations
        .get_or_insert_default()
        .remove(TARGETS_ANNOTATION);
    let content = prior_content(legacy, "regcred");
    assert_eq!(content.targets, Targets::Namespaces(vec!["a".into()]));
}

#[test]
fn kubernetes_errors_map_to_nack_codes() {
    let api = |code: u16, message: &str| {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            reason: "Reason".into(),
            ..Default::default()
        }))
    };
    let cases = [
        (api(403, "forbidden"), ErrorCode::Forbidden, true),
        (
            api(404, "namespaces \"x\" not found"),
            ErrorCode::NamespaceMissing,
            true,
        ),
        (api(409, "conflict with kubectl"), ErrorCode::Conflict, true),
        (api(422, "field is immutable"), ErrorCode::Immutable, false),
        (api(422, "data: invalid"), ErrorCode::Invalid, false),
        (api(429, "slow down"), ErrorCode::KubernetesUnavailable, true),
        (api(503, "unavailable"), ErrorCode::KubernetesUnavailable, true),
    ];
    for (error, code, retryable) in cases {
        let refusal = refusal("apply Secret a/regcred", &error);
        assert_eq!(
            (refusal.code, refusal.retryable),
            (code, retryable),
            "{}",
            refusal.message
        );
        assert!(refusal.message.starts_with("apply Secret a/regcred: "));
    }
}

#[test]
fn meaningful_changes_ignore_foreign_metadata() {
    let ((_, _), entry) =
        observe(secret_for(&desired(CreationPolicy::Owner), "a", SYNCED_AT)).expect("named");
    let before = entry.observed;
    let mut after = before.clone();
    after.labels.insert("someone".into(), "else".into());
    assert!(!meaningful_change(&before, &after));
    after.annotations.insert(SHA256_ANNOTATION.into(), "00".into());
    assert!(meaningful_change(&before, &after));
    let mut after = before.clone();
    after.data.insert(".dockerconfigjson".into(), [0; 32]);
    assert!(meaningful_change(&before, &after));
    let mut after = before.clone();
    after
        .annotations
        .insert(TARGETS_ANNOTATION.into(), r#"{"namespaces":[]}"#.into());
    assert!(
        meaningful_change(&before, &after),
        "the record of where the key must be"
    );
}
