//! The vault's request pipeline: route, outage, bearer challenge, latency, injected faults,
//! api-version and permission, then the secret operation and its counter.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, header};

use super::response::service_error;
use super::secrets::{Call, Op, execute};
use crate::keyvault::auth::{self, AccessClaims, Principal, VAULT_RESOURCE};
use crate::keyvault::faults::{Fault, Outcome, RetryAfter};
use crate::keyvault::shared::Shared;
use crate::keyvault::store::ServiceError;

/// api-versions the vault accepts: the current service version and those the SDKs send.
const API_VERSIONS: &[&str] = &[
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "2025-07-01",
    "2026-04-01",
];

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
        (&Method::GET, ["certificates"] | ["certificates", ""]) => (Op::ListCertificates, None, None),
        (&Method::GET, ["certificates", name, "versions"]) => {
            (Op::ListCertificateVersions, Some(*name), None)
        }
        (&Method::GET, ["certificates", name]) => (Op::GetCertificate, Some(*name), None),
        (&Method::GET, ["certificates", name, version]) => {
            (Op::GetCertificate, Some(*name), non_empty(version))
        }
        (&Method::POST, ["certificates", name, "import"]) => (Op::ImportCertificate, Some(*name), None),
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

pub(super) async fn vault(call: Call<'_>, path: &[&str], body: &Bytes) -> Response {
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
        assert_eq!(
            route(&get, &["certificates", "c", ""]),
            Some((Op::GetCertificate, Some("c"), None))
        );
        assert_eq!(
            route(&get, &["certificates", "c", "abc"]),
            Some((Op::GetCertificate, Some("c"), Some("abc")))
        );
        assert_eq!(
            route(&get, &["certificates", "c", "versions"]),
            Some((Op::ListCertificateVersions, Some("c"), None))
        );
        assert_eq!(
            route(&Method::POST, &["certificates", "c", "import"]),
            Some((Op::ImportCertificate, Some("c"), None))
        );
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
}
