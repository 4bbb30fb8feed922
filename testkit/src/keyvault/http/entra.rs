//! The Entra side: the token endpoint (client secret and federated `client_assertion`), the
//! OpenID configuration, and the managed identity endpoint.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::json;
use zeroize::Zeroizing;

use super::response::json_response;
use crate::keyvault::auth::{self, AccessClaims, AssertionClaims, Principal};
use crate::keyvault::faults::Outcome;
use crate::keyvault::shared::Shared;

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

pub(super) fn openid_configuration(shared: &Shared, tenant: &str) -> Response {
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

pub(super) fn token(shared: &Shared, tenant: &str, body: &Bytes) -> Response {
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

pub(super) fn managed_identity_token(
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
