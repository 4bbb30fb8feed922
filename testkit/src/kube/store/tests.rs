//! The write rules of one cluster: apply, update, validation, history and namespaces.

use serde_json::json;

use crate::kube::model::{Field, Operation};

use super::*;

fn options(manager: &str, force: bool) -> WriteOptions {
    WriteOptions {
        manager: manager.to_owned(),
        dry_run: false,
        force,
    }
}

fn config(body: Value) -> Object {
    let mut unknown = Vec::new();
    let object = Object::from_json(Kind::Secret, &body, &mut unknown).expect("valid body");
    assert!(unknown.is_empty(), "{unknown:?}");
    object
}

fn secret(data: Value, labels: Value) -> Object {
    config(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "default", "labels": labels},
        "data": data,
    }))
}

fn apply(state: &mut State, manager: &str, force: bool, object: Object) -> Result<Written, ApiError> {
    state.apply(
        Kind::Secret,
        Some("default"),
        "db",
        object,
        &options(manager, force),
    )
}

#[test]
fn apply_creates_then_noop_keeps_resource_version() {
    let mut state = State::new(100);
    let first = apply(
        &mut state,
        "agent",
        false,
        secret(json!({"a": "MQ=="}), json!({"x": "1"})),
    )
    .expect("create");
    assert!(first.created);
    assert_eq!(first.object.meta.managed_fields.len(), 1);
    assert_eq!(
        first.object.secret().and_then(|s| s.type_.clone()).as_deref(),
        Some("Opaque")
    );
    // type was defaulted, not applied: the applier does not own it.
    assert!(!first.object.meta.managed_fields[0].fields.contains(&Field::Type));
    let rv = first.object.meta.resource_version;
    let second = apply(
        &mut state,
        "agent",
        false,
        secret(json!({"a": "MQ=="}), json!({"x": "1"})),
    )
    .expect("noop");
    assert!(second.committed.is_none());
    assert_eq!(second.object.meta.resource_version, rv);
    assert_eq!(state.writes.noop_applies, 1);
}

#[test]
fn apply_conflicts_shares_equal_values_and_force_moves_ownership() {
    let mut state = State::new(100);
    apply(
        &mut state,
        "kubectl",
        false,
        secret(json!({"user": "dQ==", "password": "cA=="}), json!({})),
    )
    .expect("create");
    // Same value for user, different for password: one conflict, on password only.
    let error = apply(
        &mut state,
        "other",
        false,
        secret(json!({"user": "dQ==", "password": "eA=="}), json!({})),
    )
    .expect_err("conflict");
    assert_eq!(error.code, 409);
    assert_eq!(
        error.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.password"
    );
    let causes = &error.to_json()["details"]["causes"];
    assert_eq!(causes.as_array().map(Vec::len), Some(1));
    assert_eq!(causes[0]["field"], ".data.password");
    assert_eq!(causes[0]["reason"], "FieldManagerConflict");

    let forced = apply(
        &mut state,
        "other",
        true,
        secret(json!({"user": "dQ==", "password": "eA=="}), json!({})),
    )
    .expect("force");
    assert_eq!(forced.object.data("password"), Some(&b"x"[..]));
    let owners = |field: &Field| -> Vec<String> {
        forced
            .object
            .meta
            .managed_fields
            .iter()
            .filter(|e| e.fields.contains(field))
            .map(|e| e.manager.clone())
            .collect()
    };
    assert_eq!(owners(&Field::Data("password".into())), vec!["other".to_owned()]);
    assert_eq!(
        owners(&Field::Data("user".into())),
        vec!["kubectl".to_owned(), "other".to_owned()]
    );
}

#[test]
fn apply_removes_fields_no_longer_applied_unless_shared() {
    let mut state = State::new(100);
    apply(
        &mut state,
        "a",
        false,
        secret(json!({"k1": "MQ==", "k2": "Mg=="}), json!({"l": "v"})),
    )
    .expect("create");
    apply(&mut state, "b", false, secret(json!({"k2": "Mg=="}), json!({}))).expect("b shares k2");
    let after = apply(&mut state, "a", false, secret(json!({}), json!({}))).expect("a drops all");
    assert_eq!(after.object.data("k1"), None, "k1 only a owned: removed");
    assert_eq!(after.object.data("k2"), Some(&b"2"[..]), "k2 shared with b: kept");
    assert!(after.object.meta.labels.is_empty());
}

#[test]
fn update_steals_fields_and_apply_then_conflicts_with_the_editor() {
    let mut state = State::new(100);
    apply(
        &mut state,
        "agent",
        false,
        secret(json!({"k": "MQ=="}), json!({})),
    )
    .expect("create");
    let (written, _) = state
        .patch(
            Kind::Secret,
            Some("default"),
            "db",
            PatchType::Merge,
            &json!({"data": {"k": "Mg=="}}),
            &options("kubectl-edit", false),
        )
        .expect("patch");
    let editor = written
        .object
        .meta
        .managed_fields
        .iter()
        .find(|e| e.manager == "kubectl-edit")
        .expect("editor entry");
    assert_eq!(editor.operation, Operation::Update);
    assert!(editor.fields.contains(&Field::Data("k".into())));
    let error = apply(
        &mut state,
        "agent",
        false,
        secret(json!({"k": "MQ=="}), json!({})),
    )
    .expect_err("conflict");
    assert_eq!(error.code, 409);
    let repaired = apply(&mut state, "agent", true, secret(json!({"k": "MQ=="}), json!({}))).expect("force");
    assert_eq!(repaired.object.data("k"), Some(&b"1"[..]));
}

#[test]
fn stale_update_conflicts_and_immutable_secret_refuses_data_changes() {
    let mut state = State::new(100);
    let created = apply(&mut state, "a", false, config(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"k": "MQ=="}, "immutable": true,
    })))
    .expect("create");
    let mut stale = (*created.object).clone();
    stale.meta.resource_version -= 1;
    let error = state
        .update(Some("default"), "db", stale, &options("u", false))
        .expect_err("stale");
    assert_eq!((error.code, error.reason), (409, "Conflict"));
    let error = apply(&mut state, "a", false, config(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"k": "Mg=="}, "immutable": true,
    })))
    .expect_err("immutable");
    assert_eq!(error.code, 422);
    assert!(
        error
            .message
            .contains("field is immutable when `immutable` is set"),
        "{}",
        error.message
    );
}

#[test]
fn history_window_expires_old_resource_versions() {
    let mut state = State::new(2);
    let start = state.resource_version();
    for value in ["MQ==", "Mg==", "Mw=="] {
        apply(&mut state, "a", false, secret(json!({"k": value}), json!({}))).expect("apply");
    }
    assert_eq!(state.events_after(start + 1).map(|e| e.len()).ok(), Some(2));
    let error = state.events_after(start).expect_err("too old");
    assert_eq!((error.code, error.reason), (410, "Expired"));
}

#[test]
fn missing_namespace_and_permissions() {
    let mut state = State::new(10);
    let body = config(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}}));
    let error = state
        .apply(Kind::Secret, Some("nope"), "db", body, &options("a", false))
        .expect_err("missing namespace");
    assert_eq!(
        (error.code, error.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );
    let perms = Permissions::none("agent")
        .allow(&[Verb::Get, Verb::Patch], &[Kind::Secret], &["apps"])
        .allow_named(&[Verb::Get], &[Kind::Secret], &["own"], &["credential"]);
    assert!(perms.allows(Verb::Patch, Kind::Secret, Some("apps")));
    assert!(perms.allows_named(Verb::Get, Kind::Secret, Some("own"), Some("credential")));
    assert!(!perms.allows_named(Verb::Get, Kind::Secret, Some("own"), Some("other")));
    assert!(
        !perms.allows(Verb::Get, Kind::Secret, Some("own")),
        "a named rule needs a name"
    );
    assert!(!perms.allows(Verb::Patch, Kind::Secret, Some("other")));
    assert!(!perms.allows(Verb::Delete, Kind::Secret, Some("apps")));
    assert!(!perms.allows(Verb::List, Kind::Namespace, None));
}

#[test]
fn an_empty_namespace_in_the_body_takes_the_requests() {
    let mut state = State::new(10);
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": ""}});
    let written = state
        .create(Some("default"), config(body), &options("kubectl", false))
        .expect("created");
    assert_eq!(written.object.meta.namespace.as_deref(), Some("default"));
    let body =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "other"}});
    let error = state
        .create(Some("default"), config(body), &options("kubectl", false))
        .expect_err("mismatch");
    assert_eq!(error.code, 400);
}

#[test]
fn secret_types_require_their_keys() {
    let mut state = State::new(10);
    let cases = [
        (
            json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "YQ=="}}),
            Some("data[tls.key]"),
        ),
        (
            json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "YQ==", "tls.key": "YQ=="}}),
            None,
        ),
        (
            json!({"type": "kubernetes.io/dockerconfigjson", "data": {}}),
            Some("data[.dockerconfigjson]"),
        ),
        // "notjson" in base64: present but not JSON.
        (
            json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "bm90anNvbg=="}}),
            Some("data[.dockerconfigjson]"),
        ),
        (
            json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}),
            None,
        ),
        (
            json!({"type": "kubernetes.io/basic-auth", "data": {}}),
            Some("data[username]"),
        ),
        (
            json!({"type": "kubernetes.io/ssh-auth", "data": {}}),
            Some("data[ssh-privatekey]"),
        ),
        (json!({"type": "example.com/custom", "data": {}}), None),
    ];
    for (index, (fields, expected)) in cases.into_iter().enumerate() {
        let mut body =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("s{index}")}});
        patch::merge(&mut body, &fields);
        let result = state.create(Some("default"), config(body), &options("a", false));
        match expected {
            None => assert!(result.is_ok(), "case {index}: {result:?}"),
            Some(field) => {
                let error = result.expect_err("invalid");
                assert_eq!(error.code, 422, "case {index}");
                assert!(error.message.contains(field), "case {index}: {}", error.message);
                assert!(
                    !error.message.contains("notjson"),
                    "a value leaked into {}",
                    error.message
                );
            }
        }
    }
}

#[test]
fn create_with_generate_name_picks_a_name() {
    let mut state = State::new(10);
    let body = config(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "tok-"}}));
    let written = state
        .create(Some("default"), body, &options("a", false))
        .expect("create");
    let name = &written.object.meta.name;
    assert!(name.starts_with("tok-") && name.len() == 9, "{name}");
    assert!(written.object.meta.generate_name.is_none());
    let body = config(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}));
    let error = state
        .create(Some("default"), body, &options("a", false))
        .expect_err("no name");
    assert_eq!(error.code, 422);
}

#[test]
fn deleting_a_namespace_deletes_its_secrets() {
    let mut state = State::new(10);
    apply(&mut state, "a", false, secret(json!({"k": "MQ=="}), json!({}))).expect("create");
    let (_, committed) = state
        .delete(Kind::Namespace, None, "default", &Preconditions::default(), false)
        .expect("delete");
    assert_eq!(committed.len(), 2);
    assert!(state.get(Kind::Secret, Some("default"), "db").is_none());
}
