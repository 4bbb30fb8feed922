//! Request routing and the REST verbs: cluster prefix, authentication, authorization, faults,
//! then discovery or a Namespace/Secret operation.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::cluster::{Cluster, Inner};
use super::events::{self, Shape};
use super::model::{Kind, Object};
use super::query::{Query, flag, selectors};
use super::selector::LabelSelector;
use super::status::{self, ApiError};
use super::store::{PatchType, Permissions, Preconditions, RequestRecord, Verb, WriteOptions, Written};
use super::{discovery, protobuf, table, watch};

/// Largest request body accepted (a Secret is at most 1 MiB of data, base64 inflates it).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Where a resource request points.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// The router every transport serves (HTTPS in `server.rs`, in process in `memory.rs`).
pub(super) fn router(inner: Arc<Inner>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(inner)
}

/// The single entry point: every request lands here.
async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let full_path = parts.uri.path().to_owned();
    let (cluster_name, path) = match full_path.strip_prefix("/clusters/") {
        Some(rest) => match rest.split_once('/') {
            Some((name, path)) => (name.to_owned(), format!("/{path}")),
            None => (rest.to_owned(), "/".to_owned()),
        },
        None => ("default".to_owned(), full_path.clone()),
    };
    let Some(cluster) = inner.cluster(&cluster_name) else {
        return ApiError::no_route(&full_path).into_response();
    };
    let path = path.trim_end_matches('/').to_owned();
    let query: Query = url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let response = route(
        &inner,
        &cluster,
        &parts.method,
        &path,
        &query,
        &parts.headers,
        body,
    )
    .await;
    let response = response.unwrap_or_else(IntoResponse::into_response);
    tracing::debug!(
        cluster = %cluster.name, method = %parts.method, path = %path,
        status = response.status().as_u16(), "fake kube api request"
    );
    response
}

async fn route(
    inner: &Arc<Inner>,
    cluster: &Arc<Cluster>,
    method: &Method,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match path {
        "/version" => return Ok(json_response(StatusCode::OK, &discovery::version())),
        "/healthz" | "/readyz" | "/livez" => return Ok((StatusCode::OK, "ok").into_response()),
        _ => {}
    }
    let permissions = authenticate(cluster, headers)?;
    if let Some((shape, namespace, name)) = event_target(path) {
        let target = Target {
            kind: Kind::Event,
            namespace,
            name,
        };
        let verb = verb_for(method, &target, query)
            .filter(|verb| !matches!(verb, Verb::Watch | Verb::DeleteCollection | Verb::Update))
            .ok_or_else(|| ApiError::method_not_allowed(method.as_str(), path))?;
        authorize(&permissions, verb, &target)?;
        record(cluster, &permissions, verb, &target);
        inject_faults(cluster).await?;
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|error| ApiError::bad_request(format!("read request body: {error}")))?;
        return event_request(cluster, verb, shape, &target, query, headers, &bytes);
    }
    if method != Method::GET && !path.starts_with("/api/v1/") {
        return Err(ApiError::method_not_allowed(method.as_str(), path));
    }
    match path {
        "" | "/" => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"paths": ["/api", "/api/v1", "/apis", "/openapi/v3", "/version"]}),
            ));
        }
        "/api" => {
            let address = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            return Ok(json_response(StatusCode::OK, &discovery::api_versions(address)));
        }
        "/apis" => return Ok(json_response(StatusCode::OK, &discovery::api_groups())),
        "/apis/events.k8s.io" => return Ok(json_response(StatusCode::OK, &discovery::events_api_group())),
        "/apis/events.k8s.io/v1" => {
            return Ok(json_response(StatusCode::OK, &discovery::events_v1_resources()));
        }
        "/api/v1" => return Ok(json_response(StatusCode::OK, &discovery::core_v1_resources())),
        "/openapi/v3" => return Ok(json_response(StatusCode::OK, &discovery::openapi_index())),
        "/openapi/v3/api/v1" => return Ok(json_response(StatusCode::OK, &discovery::openapi_core_v1())),
        "/openapi/v3/apis/events.k8s.io/v1" => {
            return Ok(json_response(StatusCode::OK, &discovery::openapi_events_v1()));
        }
        _ => {}
    }
    let target = parse_target(path).ok_or_else(|| ApiError::no_route(path))?;
    let verb = verb_for(method, &target, query)
        .ok_or_else(|| ApiError::method_not_allowed(method.as_str(), path))?;
    authorize(&permissions, verb, &target)?;
    record(cluster, &permissions, verb, &target);
    inject_faults(cluster).await?;
    match verb {
        Verb::Get => get(cluster, &target, query, headers),
        Verb::List => list(cluster, &target, query, headers),
        Verb::Watch => watch::start(
            inner.clone(),
            cluster.clone(),
            target.kind,
            target.namespace,
            query,
            table::requested(headers, query.get("includeObject"))?,
        ),
        Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection => {
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|error| ApiError::bad_request(format!("read request body: {error}")))?;
            let hold = match (target.kind, target.namespace.as_deref()) {
                (Kind::Secret, Some(namespace)) => cluster.lock().faults.write_holds.get(namespace).cloned(),
                _ => None,
            };
            if let Some(hold) = hold {
                hold.pass().await.map_err(ApiError::injected)?;
            }
            let fault = {
                let mut state = cluster.lock();
                state.count_request();
                match target.name.as_deref() {
                    Some(name) => {
                        state
                            .faults
                            .take_write_fault(target.kind, target.namespace.as_deref(), name)
                    }
                    None => None,
                }
            };
            match fault {
                Some(fault) if !fault.after_commit => Err(fault.error),
                Some(fault) => {
                    write(inner, cluster, verb, &target, query, headers, &bytes)?;
                    Err(fault.error)
                }
                None => write(inner, cluster, verb, &target, query, headers, &bytes),
            }
        }
    }
}

fn authenticate(cluster: &Cluster, headers: &HeaderMap) -> Result<Arc<Permissions>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    cluster
        .lock()
        .token(token.trim())
        .ok_or_else(ApiError::unauthorized)
}

fn authorize(permissions: &Permissions, verb: Verb, target: &Target) -> Result<(), ApiError> {
    // A Namespace object is "in" itself for authorization, as in RBAC.
    let scope = match target.kind {
        Kind::Secret | Kind::Event => target.namespace.as_deref(),
        Kind::Namespace => target.name.as_deref(),
    };
    if permissions.allows_named(verb, target.kind, scope, target.name.as_deref()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            &permissions.user,
            verb.as_str(),
            target.kind.resource(),
            target.name.as_deref(),
            target.namespace.as_deref(),
        ))
    }
}

fn record(cluster: &Cluster, permissions: &Permissions, verb: Verb, target: &Target) {
    let mut state = cluster.lock();
    if let Some(recorded) = state.recorded.as_mut() {
        let namespace = match target.kind {
            Kind::Secret | Kind::Event => target.namespace.clone(),
            Kind::Namespace => target.name.clone(),
        };
        recorded.insert(RequestRecord {
            user: permissions.user.clone(),
            verb,
            kind: target.kind,
            namespace,
            name: target.name.clone(),
        });
    }
}

async fn inject_faults(cluster: &Cluster) -> Result<(), ApiError> {
    let (latency, error) = {
        let mut state = cluster.lock();
        (state.faults.latency, state.faults.queued.pop_front())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// An Event path: its shape (group), namespace and name.
fn event_target(path: &str) -> Option<(Shape, Option<String>, Option<String>)> {
    let (shape, rest) = if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/") {
        (Shape::Events, rest)
    } else {
        (Shape::Core, path.strip_prefix("/api/v1/")?)
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["events"] => Some((shape, None, None)),
        ["namespaces", ns, "events"] => Some((shape, Some((*ns).to_owned()), None)),
        ["namespaces", ns, "events", name] => Some((shape, Some((*ns).to_owned()), Some((*name).to_owned()))),
        _ => None,
    }
}

/// An Event request (`kube/events.rs` holds the store and its rules).
fn event_request(
    cluster: &Cluster,
    verb: Verb,
    shape: Shape,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let namespace = target.namespace.as_deref().unwrap_or_default();
    let name = target.name.as_deref().unwrap_or_default();
    let now = chrono::Utc::now();
    let table = table::requested(headers, query.get("includeObject"))?;
    let mut warnings = Vec::new();
    let mut state = cluster.lock();
    let (code, body) = match verb {
        Verb::Create => {
            let body = parse_body(bytes, content_type(headers).contains("yaml"))?;
            warnings = check_unknown(query, &events::unknown_fields(&body, shape), false)?;
            let resource_version = state.next_resource_version();
            let created = state
                .events
                .create(namespace, &body, shape, resource_version, now)?;
            (StatusCode::CREATED, events::shaped(&created, shape))
        }
        Verb::Get => {
            let event = state.events.get(namespace, name)?.clone();
            let resource_version = state.resource_version();
            drop(state);
            let body = match table {
                Some(include) => {
                    let mut metadata = serde_json::Map::new();
                    metadata.insert("resourceVersion".into(), resource_version.to_string().into());
                    events::table(&[event], shape, metadata, include, now)
                }
                None => events::shaped(&event, shape),
            };
            return Ok(json_response(StatusCode::OK, &body));
        }
        Verb::Patch => {
            let media = content_type(headers);
            if !matches!(
                media.as_str(),
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                return Err(ApiError::unsupported_media_type(&media));
            }
            let patch = parse_body(bytes, false)?;
            warnings = check_unknown(query, &events::unknown_fields(&patch, shape), false)?;
            state.events.get(namespace, name)?;
            let resource_version = state.next_resource_version();
            let patched = state
                .events
                .patch(namespace, name, &patch, shape, resource_version)?;
            (StatusCode::OK, events::shaped(&patched, shape))
        }
        Verb::Delete => {
            let deleted = state.events.delete(namespace, name)?;
            let uid = deleted["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            (StatusCode::OK, status::success(name, "events", &uid))
        }
        Verb::List => {
            let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
            let items = state.events.list(
                target.namespace.as_deref(),
                query.get("fieldSelector").map(String::as_str),
                &labels,
            )?;
            let mut metadata = serde_json::Map::new();
            metadata.insert(
                "resourceVersion".into(),
                state.resource_version().to_string().into(),
            );
            drop(state);
            if let Some(include) = table {
                return Ok(json_response(
                    StatusCode::OK,
                    &events::table(&items, shape, metadata, include, now),
                ));
            }
            let api_version = match shape {
                Shape::Events => "events.k8s.io/v1",
                Shape::Core => "v1",
            };
            let items: Vec<Value> = items
                .iter()
                .map(|event| {
                    let mut json = events::shaped(event, shape);
                    if let Value::Object(map) = &mut json {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    json
                })
                .collect();
            return Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "EventList", "apiVersion": api_version, "metadata": metadata, "items": items}),
            ));
        }
        Verb::Update | Verb::Watch | Verb::DeleteCollection => {
            return Err(ApiError::method_not_allowed("request", "events"));
        }
    };
    drop(state);
    // Create, patch and delete changed the store: wake whoever waits on Events.
    cluster.event_written();
    let mut response = json_response(code, &body);
    add_warnings(&mut response, warnings);
    Ok(response)
}

fn parse_target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let owned = |s: &str| Some(s.to_owned());
    match segments.as_slice() {
        ["namespaces"] => Some(Target {
            kind: Kind::Namespace,
            namespace: None,
            name: None,
        }),
        ["namespaces", name] => Some(Target {
            kind: Kind::Namespace,
            namespace: None,
            name: owned(name),
        }),
        ["namespaces", ns, "secrets"] => Some(Target {
            kind: Kind::Secret,
            namespace: owned(ns),
            name: None,
        }),
        ["namespaces", ns, "secrets", name] => Some(Target {
            kind: Kind::Secret,
            namespace: owned(ns),
            name: owned(name),
        }),
        ["secrets"] => Some(Target {
            kind: Kind::Secret,
            namespace: None,
            name: None,
        }),
        _ => None,
    }
}

fn verb_for(method: &Method, target: &Target, query: &Query) -> Option<Verb> {
    let item = target.name.is_some();
    let cluster_wide_secrets = target.kind == Kind::Secret && target.namespace.is_none();
    match (method.as_str(), item) {
        ("GET", true) => Some(Verb::Get),
        ("GET", false) if flag(query, "watch") => Some(Verb::Watch),
        ("GET", false) => Some(Verb::List),
        ("POST", false) if !cluster_wide_secrets => Some(Verb::Create),
        ("PUT", true) => Some(Verb::Update),
        ("PATCH", true) => Some(Verb::Patch),
        ("DELETE", true) => Some(Verb::Delete),
        ("DELETE", false) if target.kind == Kind::Secret && !cluster_wide_secrets => {
            Some(Verb::DeleteCollection)
        }
        _ => None,
    }
}

fn get(cluster: &Cluster, target: &Target, query: &Query, headers: &HeaderMap) -> Result<Response, ApiError> {
    let table = table::requested(headers, query.get("includeObject"))?;
    let name = target.name.as_deref().unwrap_or_default();
    let (object, resource_version) = {
        let state = cluster.lock();
        let object = state
            .get(target.kind, target.namespace.as_deref(), name)
            .ok_or_else(|| ApiError::not_found(target.kind.resource(), name))?;
        (object, state.resource_version())
    };
    let body = match table {
        Some(include) => {
            let mut metadata = serde_json::Map::new();
            metadata.insert("resourceVersion".into(), resource_version.to_string().into());
            table::table(
                target.kind,
                &[&object],
                metadata,
                include,
                true,
                chrono::Utc::now(),
            )
        }
        None => object.to_json(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn list(
    cluster: &Cluster,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let table = table::requested(headers, query.get("includeObject"))?;
    let (labels, fields) = selectors(target.kind, query)?;
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None | Some(Ok(0)) => usize::MAX,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return Err(ApiError::bad_request("limit: expected a non-negative integer")),
    };
    let after = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(decode_continue(token)?),
        None => None,
    };
    let state = cluster.lock();
    let resource_version = state.resource_version();
    let mut matching = state
        .list(target.kind, target.namespace.as_deref(), after)
        .filter(|object| labels.matches(&object.meta.labels) && fields.matches(object));
    let items: Vec<Arc<Object>> = matching.by_ref().take(limit).cloned().collect();
    let remaining = matching.count();
    drop(state);
    let mut metadata = serde_json::Map::new();
    metadata.insert("resourceVersion".into(), resource_version.to_string().into());
    if remaining > 0
        && let Some(last) = items.last()
    {
        let token = json!([last.meta.namespace.clone().unwrap_or_default(), last.meta.name]);
        metadata.insert(
            "continue".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(token.to_string())
                .into(),
        );
        metadata.insert("remainingItemCount".into(), remaining.into());
    }
    if let Some(include) = table {
        let objects: Vec<&Object> = items.iter().map(AsRef::as_ref).collect();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(target.kind, &objects, metadata, include, true, chrono::Utc::now()),
        ));
    }
    let items: Vec<Value> = items
        .iter()
        .map(|object| {
            let mut json = object.to_json();
            if let Value::Object(map) = &mut json {
                map.remove("apiVersion");
                map.remove("kind");
            }
            json
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": target.kind.list_kind(), "apiVersion": "v1", "metadata": metadata, "items": items}),
    ))
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("continue: invalid token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let (namespace, name): (String, String) = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok((namespace, name))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Parses a request body: JSON, or YAML for `application/yaml` and apply patches.
///
/// An apply patch is YAML by its media type, but clients (kube-rs, client-go) send JSON, which is
/// YAML too: a body that is a JSON object is read by the JSON parser (the YAML parser costs ~40 %
/// of a simulated fleet's CPU at 10,000 clusters), anything else by the YAML parser.
fn parse_body(bytes: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if yaml {
        if bytes.trim_ascii_start().first() == Some(&b'{')
            && let Ok(value) = serde_json::from_slice(bytes)
        {
            return Ok(value);
        }
        serde_yaml::from_slice(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding YAML: {error}")))
    } else {
        serde_json::from_slice(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding JSON: {error}")))
    }
}

/// How `fieldValidation` treats unknown fields: an error, or `Warning` headers.
fn check_unknown(query: &Query, unknown: &[String], apply: bool) -> Result<Vec<String>, ApiError> {
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|path| {
            if apply {
                format!("{path}: field not declared in schema")
            } else {
                format!("unknown field \"{}\"", path.trim_start_matches('.'))
            }
        })
        .collect();
    match query.get("fieldValidation").map(String::as_str) {
        Some("Strict") => Err(ApiError::bad_request(if apply {
            messages.join(", ")
        } else {
            format!("strict decoding error: {}", messages.join(", "))
        })),
        Some("Ignore") => Ok(Vec::new()),
        _ => Ok(messages),
    }
}

fn field_manager(query: &Query, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match query.get("fieldManager") {
        Some(manager) if manager.len() > 128 => Err(ApiError::bad_request(
            "fieldManager: Too long: may not be longer than 128 characters",
        )),
        Some(manager) if !manager.is_empty() => Ok(Some(manager.clone())),
        _ => {
            let agent = headers
                .get(header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            let prefix = agent.split('/').next().unwrap_or_default();
            Ok((!prefix.is_empty()).then(|| prefix.to_owned()))
        }
    }
}

fn write(
    inner: &Inner,
    cluster: &Cluster,
    verb: Verb,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let dry_run = query.get("dryRun").is_some_and(|value| value == "All");
    let namespace = target.namespace.as_deref();
    let name = target.name.as_deref().unwrap_or_default();
    let kind = target.kind;
    let media = content_type(headers);
    let manager = field_manager(query, headers)?;
    let options = |manager: String, force: bool| WriteOptions {
        manager,
        dry_run,
        force,
    };
    let mut unknown = Vec::new();
    let (written, warnings, manager_name) = match verb {
        Verb::Create | Verb::Update => {
            let body = if media == "application/vnd.kubernetes.protobuf" {
                if !protobuf::is_envelope(bytes) {
                    return Err(ApiError::unsupported_media_type(&media));
                }
                protobuf::decode(kind, bytes)?
            } else {
                parse_body(bytes, media.contains("yaml"))?
            };
            let object = Object::from_json(kind, &body, &mut unknown)?;
            let warnings = check_unknown(query, &unknown, false)?;
            let manager = manager.unwrap_or_else(|| "unknown".to_owned());
            let write_options = options(manager.clone(), false);
            let mut state = cluster.lock();
            let written = if verb == Verb::Create {
                state.create(namespace, object, &write_options)?
            } else {
                state.update(namespace, name, object, &write_options)?
            };
            (written, warnings, manager)
        }
        Verb::Patch => {
            let patch_type = match media.as_str() {
                "application/apply-patch+yaml" | "application/apply-patch+json" => None,
                "application/merge-patch+json" => Some(PatchType::Merge),
                "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
                "application/json-patch+json" => Some(PatchType::Json),
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            match patch_type {
                None => {
                    let manager = query
                        .get("fieldManager")
                        .filter(|m| !m.is_empty())
                        .cloned()
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                            )
                        })?;
                    let body = parse_body(bytes, true)?;
                    if body
                        .pointer("/metadata/managedFields")
                        .is_some_and(|f| !f.is_null())
                    {
                        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
                    }
                    let config = Object::from_json(kind, &body, &mut unknown)?;
                    let warnings = check_unknown(query, &unknown, true)?;
                    let write_options = options(manager.clone(), flag(query, "force"));
                    let mut state = cluster.lock();
                    state.writes.applies += 1;
                    let written = state.apply(kind, namespace, name, config, &write_options)?;
                    (written, warnings, manager)
                }
                Some(patch_type) => {
                    let body = parse_body(bytes, false)?;
                    let manager = manager.unwrap_or_else(|| "unknown".to_owned());
                    let write_options = options(manager.clone(), false);
                    let mut state = cluster.lock();
                    let (written, unknown) =
                        state.patch(kind, namespace, name, patch_type, &body, &write_options)?;
                    drop(state);
                    let warnings = check_unknown(query, &unknown, false)?;
                    (written, warnings, manager)
                }
            }
        }
        Verb::Delete => return delete(inner, cluster, target, query, bytes, dry_run, manager.as_deref()),
        Verb::DeleteCollection => {
            return delete_collection(inner, cluster, target, query, dry_run, manager.as_deref());
        }
        Verb::Get | Verb::List | Verb::Watch => return Err(ApiError::method_not_allowed("GET", "write")),
    };
    let Written {
        object,
        created,
        committed,
    } = written;
    inner.publish(cluster, committed.into_iter().collect(), Some(&manager_name));
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json_response(code, &object.to_json());
    add_warnings(&mut response, warnings);
    Ok(response)
}

/// `fieldValidation=Warn` findings as the apiserver sends them: one `Warning` header each.
fn add_warnings(response: &mut Response, warnings: Vec<String>) {
    for warning in warnings {
        let value = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append("Warning", value);
        }
    }
}

fn delete_options(query: &Query, bytes: &Bytes) -> Result<(Preconditions, bool), ApiError> {
    let mut preconditions = Preconditions::default();
    let mut dry_run = false;
    if !bytes.is_empty() {
        let body: Value = serde_json::from_slice(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding DeleteOptions: {error}")))?;
        if let Some(pre) = body.get("preconditions") {
            preconditions.uid = pre.get("uid").and_then(Value::as_str).map(str::to_owned);
            preconditions.resource_version = pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .and_then(|rv| rv.parse().ok());
        }
        dry_run = body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|modes| modes.iter().any(|mode| mode == "All"));
    }
    if let Some(uid) = query.get("preconditions.uid") {
        preconditions.uid = Some(uid.clone());
    }
    if let Some(rv) = query.get("preconditions.resourceVersion") {
        preconditions.resource_version = rv.parse().ok();
    }
    Ok((preconditions, dry_run))
}

fn delete(
    inner: &Inner,
    cluster: &Cluster,
    target: &Target,
    query: &Query,
    bytes: &Bytes,
    dry_run: bool,
    manager: Option<&str>,
) -> Result<Response, ApiError> {
    let (preconditions, body_dry_run) = delete_options(query, bytes)?;
    let name = target.name.as_deref().unwrap_or_default();
    let (object, committed) = cluster.lock().delete(
        target.kind,
        target.namespace.as_deref(),
        name,
        &preconditions,
        dry_run || body_dry_run,
    )?;
    inner.publish(cluster, committed, manager);
    let body = match target.kind {
        Kind::Secret | Kind::Event => status::success(name, target.kind.resource(), &object.meta.uid),
        Kind::Namespace => object.to_json(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn delete_collection(
    inner: &Inner,
    cluster: &Cluster,
    target: &Target,
    query: &Query,
    dry_run: bool,
    manager: Option<&str>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(target.kind, query)?;
    let mut state = cluster.lock();
    let doomed: Vec<String> = state
        .list(target.kind, target.namespace.as_deref(), None)
        .filter(|object| labels.matches(&object.meta.labels) && fields.matches(object))
        .map(|object| object.meta.name.clone())
        .collect();
    let mut deleted = Vec::new();
    let mut committed = Vec::new();
    for name in doomed {
        let (object, changes) = state.delete(
            target.kind,
            target.namespace.as_deref(),
            &name,
            &Preconditions::default(),
            dry_run,
        )?;
        let mut json = object.to_json();
        if let Value::Object(map) = &mut json {
            map.remove("apiVersion");
            map.remove("kind");
        }
        deleted.push(json);
        committed.extend(changes);
    }
    let resource_version = state.resource_version();
    drop(state);
    inner.publish(cluster, committed, manager);
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": target.kind.list_kind(), "apiVersion": "v1",
                "metadata": {"resourceVersion": resource_version.to_string()}, "items": deleted}),
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::parse_body;

    #[test]
    fn apply_bodies_parse_as_json_or_yaml() {
        let expected = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}});
        // What kube-rs and client-go send as an apply patch: JSON.
        let json =
            Bytes::from_static(br#" {"apiVersion":"v1","kind":"Secret","metadata":{"name":"regcred"}}"#);
        assert_eq!(parse_body(&json, true).expect("json"), expected);
        // kubectl and people: block YAML, or a flow mapping that is not JSON.
        let yaml = Bytes::from_static(b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\n");
        assert_eq!(parse_body(&yaml, true).expect("yaml"), expected);
        let flow = Bytes::from_static(b"{apiVersion: v1, kind: Secret, metadata: {name: regcred}}");
        assert_eq!(parse_body(&flow, true).expect("flow yaml"), expected);
        let broken = Bytes::from_static(b"{apiVersion: v1, kind: [");
        let error = parse_body(&broken, true).expect_err("neither JSON nor YAML");
        assert!(error.message.contains("error decoding YAML"), "{}", error.message);
        // A JSON body that is not JSON is an error in JSON's terms.
        let error = parse_body(&yaml, false).expect_err("not JSON");
        assert!(error.message.contains("error decoding JSON"), "{}", error.message);
    }
}
