//! HTTPS serving and request dispatch: vault data plane, Entra endpoints, admin routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::auth::{self, AccessClaims, AssertionClaims, Permission, Principal, VAULT_RESOURCE};
use super::faults::{Fault, FaultSpec, Outcome, RetryAfter};
use super::store::{self, Attributes, ServiceError, Version};
use super::{API_VERSIONS, Shared};

/// Accepts TLS connections until `stopped` turns true; then aborts open connections.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = axum::Router::new().fallback(dispatch).with_state(shared);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "key vault emulator accept failed");
                        // Out of file descriptors (or a transient error): back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                connections.spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            tracing::debug!(%peer, %error, "tls handshake failed");
                            return;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    if let Err(error) = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    tracing::info!("key vault emulator stopped");
}

async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return service_error(&ServiceError::bad_parameter("The request body could not be read")),
    };
    let path: Vec<String> = parts.uri.path().split('/').skip(1).map(percent_decode).collect();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let base = request_base(&shared, &parts.headers);
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let mut response = match segments.as_slice() {
        ["_emulator", rest @ ..] => admin(&shared, &parts.method, rest, &body),
        ["secrets" | "deletedsecrets", ..] => {
            let call = Call {
                shared: &shared,
                method: &parts.method,
                headers: &parts.headers,
                query: &query,
                base: &base,
            };
            vault(call, &segments, &body).await
        }
        ["msi", "token"] | ["metadata", "identity", "oauth2", "token"] => {
            managed_identity_token(&shared, &parts.headers, &query)
        }
        [tenant, "v2.0", ".well-known", "openid-configuration"] => openid_configuration(&shared, tenant),
        [tenant, "oauth2", "v2.0", "token"] if parts.method == Method::POST => token(&shared, tenant, &body),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "NotFound", "message": "Not found"}})),
        )
            .into_response(),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", value);
    }
    tracing::debug!(
        method = %parts.method,
        path = %parts.uri.path(),
        status = response.status().as_u16(),
        %request_id,
        "key vault emulator request"
    );
    response
}

fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `https://<host the client used>`, so ids and nextLinks match the client's vault URL.
fn request_base(shared: &Shared, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .map_or_else(|| shared.base.clone(), |host| format!("https://{host}"))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn service_error(error: &ServiceError) -> Response {
    let mut body = json!({"error": {"code": error.code, "message": error.message}});
    if let Some(inner) = error.inner {
        body["error"]["innererror"] = json!({"code": inner});
    }
    json_response(
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

// ---------------------------------------------------------------- admin

fn admin(shared: &Shared, method: &Method, rest: &[&str], body: &Bytes) -> Response {
    match (method, rest) {
        (&Method::GET, ["counters"]) => json_response(StatusCode::OK, json!(shared.counters.snapshot())),
        (&Method::DELETE, ["counters"]) => {
            shared.counters.reset();
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::GET, ["faults"]) => json_response(StatusCode::OK, json!(shared.faults.spec())),
        (&Method::POST, ["faults"]) => match serde_json::from_slice::<FaultSpec>(body) {
            Ok(spec) => {
                shared.faults.apply(spec);
                json_response(StatusCode::OK, json!(shared.faults.spec()))
            }
            Err(error) => json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "BadParameter", "message": format!("invalid fault spec: {error}")}}),
            ),
        },
        (&Method::DELETE, ["faults"]) => {
            shared.faults.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::POST, ["federated-token"]) => {
            #[derive(Deserialize)]
            struct Ask {
                #[serde(default)]
                issuer: Option<String>,
                #[serde(default)]
                subject: Option<String>,
            }
            let ask: Ask = serde_json::from_slice(body).unwrap_or(Ask {
                issuer: None,
                subject: None,
            });
            let token = auth::mint_assertion(
                &shared.signer,
                ask.issuer.as_deref().unwrap_or(auth::DEFAULT_FEDERATED_ISSUER),
                ask.subject.as_deref().unwrap_or(auth::DEFAULT_FEDERATED_SUBJECT),
                std::time::Duration::from_secs(3600),
            );
            json_response(StatusCode::OK, json!({"token": token}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "NotFound", "message": "unknown emulator admin route"}}),
        ),
    }
}

// ---------------------------------------------------------------- Entra

fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description}"),
            "error_codes": [code],
            "timestamp": chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

fn openid_configuration(shared: &Shared, tenant: &str) -> Response {
    let a = &shared.base;
    shared
        .counters
        .add("openid_configuration", "anonymous", Outcome::Ok);
    json_response(
        StatusCode::OK,
        json!({
            "issuer": format!("{a}/{tenant}/v2.0"),
            "token_endpoint": format!("{a}/{tenant}/oauth2/v2.0/token"),
            "authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{a}/{tenant}/oauth2/v2.0/logout"),
            "jwks_uri": format!("{a}/{tenant}/discovery/v2.0/keys"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "tenant_region_scope": null,
        }),
    )
}

fn issue_token(shared: &Shared, principal: &Principal, resource: &str) -> (String, i64) {
    let iat = auth::now();
    let lifetime = i64::try_from(shared.config.token_lifetime.as_secs()).unwrap_or(3600);
    let claims = AccessClaims {
        iss: format!("{}/{}/v2.0", shared.base, shared.config.tenant),
        aud: resource.to_owned(),
        tid: shared.config.tenant.clone(),
        appid: principal.client_id.clone(),
        oid: principal.object_id(),
        iat,
        exp: iat + lifetime,
    };
    (shared.signer.sign(&claims), lifetime)
}

fn token(shared: &Shared, tenant: &str, body: &Bytes) -> Response {
    let form: BTreeMap<String, Zeroizing<String>> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
        .collect();
    let field = |name: &str| form.get(name).map(|v| v.as_str());
    let client_id = field("client_id").unwrap_or("").to_owned();
    let principal_label = if client_id.is_empty() {
        "anonymous"
    } else {
        client_id.as_str()
    };
    let refuse = |response: Response| {
        shared
            .counters
            .add("token", principal_label, Outcome::Unauthorized);
        tracing::info!(%tenant, client_id = %principal_label, status = response.status().as_u16(), "token refused");
        response
    };
    if field("grant_type") != Some("client_credentials") {
        return refuse(entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        ));
    }
    if tenant != shared.config.tenant {
        return refuse(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    let Some(principal) = shared.config.principals.iter().find(|p| p.client_id == client_id) else {
        return refuse(entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        ));
    };
    let scope = field("scope").unwrap_or("");
    let Some(resource) = scope.split(' ').find_map(|s| s.strip_suffix("/.default")) else {
        return refuse(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        ));
    };
    if let Some(secret) = field("client_secret") {
        let ok = principal
            .client_secret
            .as_deref()
            .is_some_and(|expected| expected.as_bytes() == secret.as_bytes());
        if !ok {
            return refuse(entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
            ));
        }
    } else if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type") != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
            return refuse(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        match shared.signer.verify::<AssertionClaims>(assertion, auth::now()) {
            Err(auth::TokenError::Expired) => {
                return refuse(entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    700024,
                    "Client assertion is not within its valid time range.",
                ));
            }
            Err(_) => {
                return refuse(entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    50027,
                    "JWT token is invalid or malformed.",
                ));
            }
            Ok(claims) => {
                let matches = claims.aud == auth::FEDERATED_AUDIENCE
                    && principal
                        .federated
                        .iter()
                        .any(|f| f.issuer == claims.iss && f.subject == claims.sub);
                if !matches {
                    return refuse(entra_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_client",
                        70021,
                        &format!(
                            "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
                            claims.iss, claims.sub, claims.aud
                        ),
                    ));
                }
            }
        }
    } else {
        return refuse(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    let (access_token, lifetime) = issue_token(shared, principal, resource);
    shared.counters.add("token", &principal.client_id, Outcome::Ok);
    tracing::info!(%tenant, client_id = %principal.client_id, %resource, "token issued");
    json_response(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token}),
    )
}

fn managed_identity_token(
    shared: &Shared,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
) -> Response {
    const OP: &str = "managed_identity_token";
    let header_ok = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == shared.config.identity_header)
        || headers.get("metadata").and_then(|v| v.to_str().ok()) == Some("true")
            && !headers.contains_key("x-identity-header");
    if !header_ok {
        shared.counters.add(OP, "anonymous", Outcome::Unauthorized);
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"statusCode": 401, "message": "Unauthorized: the x-identity-header header is missing or wrong"}),
        );
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        shared.counters.add(OP, "anonymous", Outcome::Error);
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"statusCode": 400, "message": "Required query variable 'resource' is missing"}),
        );
    };
    let managed = shared
        .config
        .principals
        .iter()
        .filter(|p| p.managed_identity.is_some());
    let found = if let Some(id) = query.get("client_id") {
        managed.clone().find(|p| &p.client_id == id)
    } else if let Some(id) = query.get("object_id").or_else(|| query.get("principal_id")) {
        managed.clone().find(|p| &p.object_id() == id)
    } else if let Some(id) = query.get("msi_res_id").or_else(|| query.get("mi_res_id")) {
        managed
            .clone()
            .find(|p| id.rsplit('/').next() == Some(p.client_id.as_str()))
    } else {
        managed
            .clone()
            .find(|p| p.managed_identity == Some(auth::ManagedIdentity::SystemAssigned))
    };
    let Some(principal) = found else {
        shared.counters.add(OP, "anonymous", Outcome::Unauthorized);
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"statusCode": 400, "message": "No managed identity found for the given identity id"}),
        );
    };
    let (access_token, lifetime) = issue_token(shared, principal, resource);
    shared.counters.add(OP, &principal.client_id, Outcome::Ok);
    json_response(
        StatusCode::OK,
        json!({
            "access_token": access_token,
            "expires_on": (auth::now() + lifetime).to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": principal.client_id,
        }),
    )
}

// ---------------------------------------------------------------- vault

struct Call<'a> {
    shared: &'a Shared,
    method: &'a Method,
    headers: &'a HeaderMap,
    query: &'a BTreeMap<String, String>,
    base: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    List,
    ListVersions,
    Set,
    Update,
    Delete,
    ListDeleted,
    GetDeleted,
    Recover,
    Purge,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::ListVersions => "list_versions",
            Self::Set => "set",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::ListDeleted => "list_deleted",
            Self::GetDeleted => "get_deleted",
            Self::Recover => "recover",
            Self::Purge => "purge",
        }
    }

    fn is_write(self) -> bool {
        matches!(
            self,
            Self::Set | Self::Update | Self::Delete | Self::Recover | Self::Purge
        )
    }

    fn permission(self) -> Permission {
        match self {
            Self::Get => Permission::Get,
            Self::List | Self::ListVersions | Self::ListDeleted | Self::GetDeleted => Permission::List,
            Self::Set | Self::Update => Permission::Set,
            Self::Delete => Permission::Delete,
            Self::Recover => Permission::Recover,
            Self::Purge => Permission::Purge,
        }
    }
}

/// (operation, secret name, version) of a vault path, or `None` when no route matches.
fn route<'p>(method: &Method, path: &[&'p str]) -> Option<(Op, Option<&'p str>, Option<&'p str>)> {
    let non_empty = |s: &'p str| (!s.is_empty()).then_some(s);
    Some(match (method, path) {
        (&Method::GET, ["secrets"] | ["secrets", ""]) => (Op::List, None, None),
        (&Method::GET, ["secrets", name, "versions"]) => (Op::ListVersions, Some(*name), None),
        (&Method::GET, ["secrets", name]) => (Op::Get, Some(*name), None),
        (&Method::GET, ["secrets", name, version]) => (Op::Get, Some(*name), non_empty(version)),
        (&Method::PUT, ["secrets", name] | ["secrets", name, ""]) => (Op::Set, Some(*name), None),
        (&Method::PATCH, ["secrets", name]) => (Op::Update, Some(*name), None),
        (&Method::PATCH, ["secrets", name, version]) => (Op::Update, Some(*name), non_empty(version)),
        (&Method::DELETE, ["secrets", name] | ["secrets", name, ""]) => (Op::Delete, Some(*name), None),
        (&Method::GET, ["deletedsecrets"] | ["deletedsecrets", ""]) => (Op::ListDeleted, None, None),
        (&Method::GET, ["deletedsecrets", name] | ["deletedsecrets", name, ""]) => {
            (Op::GetDeleted, Some(*name), None)
        }
        (&Method::DELETE, ["deletedsecrets", name] | ["deletedsecrets", name, ""]) => {
            (Op::Purge, Some(*name), None)
        }
        (&Method::POST, ["deletedsecrets", name, "recover"]) => (Op::Recover, Some(*name), None),
        _ => return None,
    })
}

fn challenge(shared: &Shared, message: &str) -> Response {
    let mut response = service_error(&ServiceError::new(401, "Unauthorized", message));
    let value = format!(
        "Bearer authorization=\"{}/{}\", resource=\"{VAULT_RESOURCE}\"",
        shared.base, shared.config.tenant
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The principal of a valid bearer token, or the message of the 401 challenge to send.
fn authenticate<'s>(shared: &'s Shared, headers: &HeaderMap) -> Result<&'s Principal, String> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    else {
        return Err("AKV10000: Request is missing a Bearer or PoP token.".to_owned());
    };
    let claims = match shared.signer.verify::<AccessClaims>(token, auth::now()) {
        Ok(claims) => claims,
        Err(auth::TokenError::Expired) => {
            return Err("AKV10022: Invalid audience or token expired.".to_owned());
        }
        Err(_) => return Err("AKV10032: Invalid issuer or signature.".to_owned()),
    };
    let issuer = format!("{}/{}/v2.0", shared.base, shared.config.tenant);
    if claims.iss != issuer || claims.tid != shared.config.tenant {
        return Err(format!(
            "AKV10032: Invalid issuer. Expected {issuer}, found {}.",
            claims.iss
        ));
    }
    if claims.aud.trim_end_matches('/') != VAULT_RESOURCE {
        return Err(format!(
            "AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {}.",
            claims.aud
        ));
    }
    shared
        .config
        .principals
        .iter()
        .find(|p| p.client_id == claims.appid)
        .ok_or_else(|| "AKV10032: The token's application is unknown.".to_owned())
}

async fn vault(call: Call<'_>, path: &[&str], body: &Bytes) -> Response {
    let shared = call.shared;
    let Some((op, name, version)) = route(call.method, path) else {
        return service_error(&ServiceError::new(
            404,
            "NotFound",
            "The requested operation is not supported by this vault",
        ));
    };
    if shared.faults.is_outage() {
        shared.counters.add(op.name(), "anonymous", Outcome::Injected);
        return service_error(&ServiceError::new(
            503,
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ));
    }
    let principal = match authenticate(shared, call.headers) {
        Ok(principal) => principal,
        Err(message) => {
            shared.counters.add(op.name(), "anonymous", Outcome::Unauthorized);
            return challenge(shared, &message);
        }
    };
    let who = principal.client_id.as_str();
    let latency = shared.faults.latency_now();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match shared.faults.decide(Instant::now()) {
        Some(Fault::Throttle(retry_after)) => {
            shared.counters.add(op.name(), who, Outcome::Throttled);
            tracing::info!(operation = op.name(), principal = who, "injected 429");
            return throttled(retry_after);
        }
        Some(Fault::Error(status)) => {
            shared.counters.add(op.name(), who, Outcome::Injected);
            let code = if status == 503 {
                "ServiceUnavailable"
            } else {
                "InternalServerError"
            };
            return service_error(&ServiceError::new(status, code, "Injected failure."));
        }
        None => {}
    }
    if let Err(error) = check_api_version(call.query) {
        shared.counters.add(op.name(), who, Outcome::Error);
        return service_error(&error);
    }
    if !principal.permissions.contains(&op.permission()) {
        shared.counters.add(op.name(), who, Outcome::Forbidden);
        let message = format!(
            "The user, group or application 'appid={who};oid={};iss={}/{}/v2.0' does not have secrets {} permission on key vault '{};location=local'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
            principal.object_id(),
            shared.base,
            shared.config.tenant,
            op.permission().as_str(),
            call.base.trim_start_matches("https://"),
        );
        return service_error(&ServiceError::new(403, "Forbidden", message).with_inner("ForbiddenByPolicy"));
    }
    let result = execute(&call, op, name.unwrap_or(""), version, body);
    match result {
        Ok(_) if op.is_write() && shared.faults.take_commit_then_error() => {
            shared.counters.add(op.name(), who, Outcome::Injected);
            tracing::info!(
                operation = op.name(),
                principal = who,
                "committed, then injected 503"
            );
            service_error(&ServiceError::new(
                503,
                "ServiceUnavailable",
                "Injected failure after commit.",
            ))
        }
        Ok(response) => {
            shared.counters.add(op.name(), who, Outcome::Ok);
            response
        }
        Err(error) => {
            let outcome = if error.status == 403 {
                Outcome::Forbidden
            } else {
                Outcome::Error
            };
            shared.counters.add(op.name(), who, outcome);
            service_error(&error)
        }
    }
}

fn throttled(retry_after: RetryAfter) -> Response {
    let mut response = service_error(&ServiceError::new(
        429,
        "Throttled",
        "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
    ));
    let (name, value) = match retry_after {
        RetryAfter::Seconds(s) => ("retry-after", s.to_string()),
        RetryAfter::Millis(ms) => ("retry-after-ms", ms.to_string()),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
    response
}

fn check_api_version(query: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    match query.get("api-version") {
        None => Err(ServiceError::bad_parameter(
            "The 'api-version' query parameter is missing.",
        )),
        Some(v) if API_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(v) => Err(ServiceError::bad_parameter(format!(
            "The specified version ({v}) is not recognized. Consider using the latest supported version (2025-07-01)."
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireAttributes {
    enabled: Option<bool>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetBody {
    // Moved into a Zeroizing right after parsing.
    value: Option<String>,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Option<WireAttributes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Option<WireAttributes>,
}

fn attributes(
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    wire: Option<WireAttributes>,
) -> Attributes {
    let wire = wire.unwrap_or_default();
    Attributes {
        content_type,
        tags,
        enabled: wire.enabled,
        expires: wire.exp,
        not_before: wire.nbf,
    }
}

fn wire_attributes(version: &Version) -> Value {
    let mut attributes = json!({
        "enabled": version.enabled,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": store::RECOVERABLE_DAYS,
    });
    if let Some(exp) = version.expires {
        attributes["exp"] = json!(exp);
    }
    if let Some(nbf) = version.not_before {
        attributes["nbf"] = json!(nbf);
    }
    attributes
}

/// Properties of a version (no value); `id` as given.
fn properties(id: String, version: &Version) -> Value {
    let mut item = json!({"id": id, "attributes": wire_attributes(version)});
    if let Some(content_type) = &version.content_type {
        item["contentType"] = json!(content_type);
    }
    if !version.tags.is_empty() {
        item["tags"] = json!(version.tags);
    }
    item
}

fn deleted_properties(base: &str, deleted: &store::Deleted, with_version: bool) -> Option<Value> {
    let latest = deleted.secret.latest()?;
    let name = &deleted.secret.name;
    let id = if with_version {
        format!("{base}/secrets/{name}/{}", latest.id)
    } else {
        format!("{base}/secrets/{name}")
    };
    let mut item = properties(id, latest);
    item["recoveryId"] = json!(format!("{base}/deletedsecrets/{name}"));
    item["deletedDate"] = json!(deleted.deleted_date);
    item["scheduledPurgeDate"] = json!(deleted.scheduled_purge_date);
    Some(item)
}

fn page_size(query: &BTreeMap<String, String>) -> Result<usize, ServiceError> {
    match query.get("maxresults") {
        None => Ok(store::MAX_PAGE),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=store::MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ServiceError::bad_parameter(format!(
                "Invalid value for maxresults: {raw}. The value must be between 1 and 25."
            ))),
        },
    }
}

fn skip(query: &BTreeMap<String, String>) -> Result<Option<usize>, ServiceError> {
    let Some(token) = query.get("$skiptoken") else {
        return Ok(None);
    };
    let invalid = || ServiceError::bad_parameter("The $skiptoken is invalid.");
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| invalid())?;
    let parsed: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let offset = parsed.get("Offset").and_then(Value::as_u64).ok_or_else(invalid)?;
    usize::try_from(offset).map(Some).map_err(|_| invalid())
}

/// A paged list response: `items` from the query's skiptoken, `nextLink` back to `path`.
fn paged(call: &Call<'_>, path: &str, items: Vec<Value>) -> Result<Response, ServiceError> {
    let size = page_size(call.query)?;
    let offset = skip(call.query)?;
    let api_version = call.query.get("api-version").map_or("2025-07-01", String::as_str);
    let next_link = |next: usize| {
        let token =
            URL_SAFE_NO_PAD.encode(json!({"NextMarker": format!("2!{next}"), "Offset": next}).to_string());
        format!(
            "{}{path}?api-version={api_version}&$skiptoken={token}&maxresults={size}",
            call.base
        )
    };
    if offset.is_none() && call.shared.faults.empty_first_page_on() {
        return Ok(json_response(
            StatusCode::OK,
            json!({"value": [], "nextLink": next_link(0)}),
        ));
    }
    let (page, next) = store::page(&items, offset.unwrap_or(0), size);
    Ok(json_response(
        StatusCode::OK,
        json!({"value": page, "nextLink": next.map(next_link)}),
    ))
}

fn execute(
    call: &Call<'_>,
    op: Op,
    name: &str,
    version: Option<&str>,
    body: &Bytes,
) -> Result<Response, ServiceError> {
    let base = call.base;
    let now = call.shared.now();
    let shared = call.shared;
    match op {
        Op::Get => {
            let vault = shared.vault();
            let (secret, found) = vault.get(name, version)?;
            if !found.enabled {
                return Err(ServiceError::new(
                    403,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                )
                .with_inner("SecretDisabled"));
            }
            let mut bundle = properties(format!("{base}/secrets/{}/{}", secret.name, found.id), found);
            bundle["value"] = json!(found.value.as_str());
            Ok(json_response(StatusCode::OK, bundle))
        }
        Op::List => {
            let items: Vec<Value> = shared
                .vault()
                .list()
                .into_iter()
                .filter_map(|s| {
                    s.latest()
                        .map(|v| properties(format!("{base}/secrets/{}", s.name), v))
                })
                .collect();
            paged(call, "/secrets", items)
        }
        Op::ListVersions => {
            let items: Vec<Value> = {
                let vault = shared.vault();
                // Key Vault answers an empty list for an unknown name.
                vault.secret(name).map_or_else(
                    |_| Vec::new(),
                    |s| {
                        s.versions
                            .iter()
                            .map(|v| properties(format!("{base}/secrets/{}/{}", s.name, v.id), v))
                            .collect()
                    },
                )
            };
            paged(call, &format!("/secrets/{name}/versions"), items)
        }
        Op::Set => {
            store::check_name(name)?;
            let parsed: SetBody = serde_json::from_slice(body).map_err(|_| {
                ServiceError::bad_parameter("The request body is not a valid secret set request.")
            })?;
            let value = parsed
                .value
                .map(Zeroizing::new)
                .ok_or_else(|| ServiceError::bad_parameter("Property 'value' is required."))?;
            let mut vault = shared.vault();
            let created = vault.set(
                name,
                value,
                attributes(parsed.content_type, parsed.tags, parsed.attributes),
                now,
            )?;
            let secret_name = vault.secret(name)?.name.clone();
            let mut bundle = properties(format!("{base}/secrets/{secret_name}/{}", created.id), &created);
            bundle["value"] = json!(created.value.as_str());
            Ok(json_response(StatusCode::OK, bundle))
        }
        Op::Update => {
            let parsed: UpdateBody = serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
                .map_err(|_| {
                    ServiceError::bad_parameter("The request body is not a valid secret update request.")
                })?;
            let (secret_name, updated) = shared.vault().update(
                name,
                version,
                attributes(parsed.content_type, parsed.tags, parsed.attributes),
                now,
            )?;
            Ok(json_response(
                StatusCode::OK,
                properties(format!("{base}/secrets/{secret_name}/{}", updated.id), &updated),
            ))
        }
        Op::Delete => {
            let mut vault = shared.vault();
            let deleted = vault.delete(name, now)?;
            let body = deleted_properties(base, deleted, true).unwrap_or_else(|| json!({}));
            Ok(json_response(StatusCode::OK, body))
        }
        Op::ListDeleted => {
            let items: Vec<Value> = shared
                .vault()
                .list_deleted()
                .into_iter()
                .filter_map(|d| deleted_properties(base, d, false))
                .collect();
            paged(call, "/deletedsecrets", items)
        }
        Op::GetDeleted => {
            let vault = shared.vault();
            let deleted = vault.get_deleted(name)?;
            Ok(json_response(
                StatusCode::OK,
                deleted_properties(base, deleted, true).unwrap_or_else(|| json!({})),
            ))
        }
        Op::Recover => {
            let (secret_name, latest) = shared.vault().recover(name)?;
            Ok(json_response(
                StatusCode::OK,
                properties(format!("{base}/secrets/{secret_name}/{}", latest.id), &latest),
            ))
        }
        Op::Purge => {
            shared.vault().purge(name)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_what_the_sdks_send() {
        let get = Method::GET;
        assert_eq!(
            route(&get, &["secrets", "a", ""]),
            Some((Op::Get, Some("a"), None))
        );
        assert_eq!(route(&get, &["secrets", "a"]), Some((Op::Get, Some("a"), None)));
        assert_eq!(
            route(&get, &["secrets", "a", "abc"]),
            Some((Op::Get, Some("a"), Some("abc")))
        );
        assert_eq!(
            route(&get, &["secrets", "a", "versions"]),
            Some((Op::ListVersions, Some("a"), None))
        );
        assert_eq!(route(&get, &["secrets"]), Some((Op::List, None, None)));
        assert_eq!(
            route(&Method::PUT, &["secrets", "a"]),
            Some((Op::Set, Some("a"), None))
        );
        assert_eq!(
            route(&Method::POST, &["deletedsecrets", "a", "recover"]),
            Some((Op::Recover, Some("a"), None))
        );
        assert_eq!(
            route(&Method::DELETE, &["deletedsecrets", "a"]),
            Some((Op::Purge, Some("a"), None))
        );
        assert_eq!(route(&Method::POST, &["secrets", "a"]), None);
    }

    #[test]
    fn api_versions() {
        let with = |v: &str| BTreeMap::from([("api-version".to_owned(), v.to_owned())]);
        assert!(check_api_version(&with("2025-07-01")).is_ok());
        assert!(check_api_version(&with("7.6")).is_ok());
        assert_eq!(
            check_api_version(&with("1999-01-01")).map_err(|e| e.code),
            Err("BadParameter")
        );
        assert!(check_api_version(&BTreeMap::new()).is_err());
    }

    #[test]
    fn skiptokens_round_trip() {
        let token = URL_SAFE_NO_PAD.encode(json!({"Offset": 50}).to_string());
        let query = BTreeMap::from([("$skiptoken".to_owned(), token)]);
        assert_eq!(skip(&query), Ok(Some(50)));
        let bad = BTreeMap::from([("$skiptoken".to_owned(), "!!".to_owned())]);
        assert!(skip(&bad).is_err());
        assert_eq!(
            page_size(&BTreeMap::from([("maxresults".to_owned(), "26".to_owned())])).map_err(|e| e.status),
            Err(400)
        );
    }
}
