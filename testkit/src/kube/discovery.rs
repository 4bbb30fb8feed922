//! Discovery (`/version`, `/api`, `/apis`, `/api/v1`) and the OpenAPI v3 documents kubectl needs
//! to skip client-side validation and send `fieldValidation=Strict`.

use serde_json::{Value, json};

/// The version the fake reports.
pub(super) fn version() -> Value {
    json!({
        "major": "1", "minor": "36", "gitVersion": "v1.36.0-keyfleet-fake",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub(super) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn events_group() -> Value {
    json!({"name": "events.k8s.io",
           "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
           "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"}})
}

/// `GET /apis`: `events.k8s.io` besides the core group.
pub(super) fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [events_group()]})
}

/// `GET /apis/events.k8s.io`.
pub(super) fn events_api_group() -> Value {
    let mut group = events_group();
    group["kind"] = "APIGroup".into();
    group["apiVersion"] = "v1".into();
    group
}

const EVENT_VERBS: [&str; 7] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
];

/// `GET /apis/events.k8s.io/v1`.
pub(super) fn events_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "events.k8s.io/v1",
        "resources": [
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
             "verbs": EVENT_VERBS, "shortNames": ["ev"]},
        ],
    })
}

/// `GET /api/v1`.
pub(super) fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]},
            {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret",
             "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
             "storageVersionHash": "S6u1pOWzb84="},
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
             "verbs": EVENT_VERBS, "shortNames": ["ev"]},
        ],
    })
}

const HASH: &str = "KEYFLEETFAKE0001";

/// `GET /openapi/v3`.
pub(super) fn openapi_index() -> Value {
    json!({"paths": {
        "api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={HASH}")},
        "apis/events.k8s.io/v1": {"serverRelativeURL": format!("/openapi/v3/apis/events.k8s.io/v1?hash={HASH}")},
    }})
}

/// The patch operation of `kind` in `group` (`""`: core), with the query parameters kubectl
/// looks for (`fieldValidation` tells it the server validates, so it sends `Strict`).
fn patch_operation(group: &str, kind: &str, namespaced: bool) -> Value {
    let mut parameters = vec![
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string"}}),
        json!({"name": "fieldManager", "in": "query", "schema": {"type": "string"}}),
        json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}),
        json!({"name": "force", "in": "query", "schema": {"type": "boolean"}}),
    ];
    if namespaced {
        parameters
            .push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    let prefix = if group.is_empty() { "CoreV1" } else { "EventsV1" };
    json!({
        "operationId": format!("patch{prefix}{}{kind}", if namespaced { "Namespaced" } else { "" }),
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {"group": group, "version": "v1", "kind": kind},
        "parameters": parameters,
        "requestBody": {"content": {
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
        }, "required": true},
        "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
    })
}

/// `GET /openapi/v3/api/v1`.
pub(super) fn openapi_core_v1() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (keyfleet fake)", "version": "v1.36.0"},
        "paths": {
            "/api/v1/namespaces/{namespace}/secrets/{name}": {"patch": patch_operation("", "Secret", true)},
            "/api/v1/namespaces/{name}": {"patch": patch_operation("", "Namespace", false)},
            "/api/v1/namespaces/{namespace}/events/{name}": {"patch": patch_operation("", "Event", true)},
        },
        "components": {"schemas": {}},
    })
}

/// `GET /openapi/v3/apis/events.k8s.io/v1`.
pub(super) fn openapi_events_v1() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (keyfleet fake)", "version": "v1.36.0"},
        "paths": {
            "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}":
                {"patch": patch_operation("events.k8s.io", "Event", true)},
        },
        "components": {"schemas": {}},
    })
}
