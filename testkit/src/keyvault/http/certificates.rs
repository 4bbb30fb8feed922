//! The certificate operations the SDKs call and their JSON: certificate bundles (`cer`, `x5t`,
//! `kid`/`sid`, policy, attributes), version listing and import. The certificate's key and
//! certificate are read through its companion secret (`GET /secrets/{name}/{version}`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::response::json_response;
use super::secrets::{Call, Op, paged};
use crate::keyvault::certificates;
use crate::keyvault::store::{self, CertificateVersion, ServiceError};

fn attributes(version: &CertificateVersion) -> Value {
    json!({
        "enabled": version.enabled,
        "nbf": version.not_before,
        "exp": version.expires,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": store::RECOVERABLE_DAYS,
    })
}

/// A version as listed: id, thumbprint, attributes, tags.
fn item(base: &str, name: &str, version: &CertificateVersion, with_version: bool) -> Value {
    let id = if with_version {
        format!("{base}/certificates/{name}/{}", version.id)
    } else {
        format!("{base}/certificates/{name}")
    };
    let mut item = json!({"id": id, "x5t": version.x5t, "attributes": attributes(version)});
    if !version.tags.is_empty() {
        item["tags"] = json!(version.tags);
    }
    item
}

/// The policy Key Vault reports for an imported certificate (issuer `Unknown`).
fn policy(base: &str, name: &str, version: &CertificateVersion) -> Value {
    let key_props = if version.key_type == "RSA" {
        json!({"exportable": true, "kty": "RSA", "reuse_key": false})
    } else {
        json!({"exportable": true, "kty": "EC", "crv": "P-256", "reuse_key": false})
    };
    json!({
        "id": format!("{base}/certificates/{name}/policy"),
        "key_props": key_props,
        "secret_props": {"contentType": version.content_type},
        "x509_props": {
            "subject": version.subject,
            "sans": {"dns_names": version.dns_names},
            "validity_months": 12,
        },
        "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}],
        "issuer": {"name": "Unknown"},
        "attributes": {"enabled": true, "created": version.created, "updated": version.updated},
    })
}

/// The whole certificate bundle of one version.
fn bundle(base: &str, name: &str, version: &CertificateVersion) -> Value {
    let mut bundle = item(base, name, version, true);
    bundle["kid"] = json!(format!("{base}/keys/{name}/{}", version.id));
    bundle["sid"] = json!(format!("{base}/secrets/{name}/{}", version.id));
    bundle["cer"] = json!(STANDARD.encode(&version.cer));
    bundle["policy"] = policy(base, name, version);
    bundle
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportBody {
    // Both moved into a Zeroizing right after parsing.
    value: Option<String>,
    pwd: Option<String>,
    tags: Option<BTreeMap<String, String>>,
}

pub(super) fn execute(
    call: &Call<'_>,
    op: Op,
    name: &str,
    version: Option<&str>,
    body: &Bytes,
) -> Result<Response, ServiceError> {
    let base = call.base;
    let shared = call.shared;
    match op {
        Op::GetCertificate => {
            let vault = shared.vault();
            let certificate = vault.certificate(name)?;
            let found = certificate.version(version).ok_or_else(|| {
                ServiceError::new(
                    404,
                    "CertificateNotFound",
                    format!(
                        "A certificate with (name/id) {name}/{} was not found in this key vault.",
                        version.unwrap_or("")
                    ),
                )
            })?;
            Ok(json_response(
                StatusCode::OK,
                bundle(base, &certificate.name, found),
            ))
        }
        Op::ListCertificates => {
            let items: Vec<Value> = shared
                .vault()
                .list_certificates()
                .into_iter()
                .filter_map(|c| c.versions.last().map(|v| item(base, &c.name, v, false)))
                .collect();
            paged(call, "/certificates", items)
        }
        Op::ListCertificateVersions => {
            let items: Vec<Value> = {
                let vault = shared.vault();
                // As for secrets: an unknown name lists nothing.
                vault.certificate(name).map_or_else(
                    |_| Vec::new(),
                    |c| c.versions.iter().map(|v| item(base, &c.name, v, true)).collect(),
                )
            };
            paged(call, &format!("/certificates/{name}/versions"), items)
        }
        Op::ImportCertificate => {
            store::check_name(name)?;
            let parsed: ImportBody = serde_json::from_slice(body).map_err(|_| {
                ServiceError::bad_parameter("The request body is not a valid certificate import request.")
            })?;
            let password = Zeroizing::new(parsed.pwd.unwrap_or_default());
            let encoded = parsed
                .value
                .map(Zeroizing::new)
                .ok_or_else(|| ServiceError::bad_parameter("Property 'value' is required."))?;
            let raw =
                Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| {
                    ServiceError::bad_parameter("The certificate value is not valid base64.")
                })?);
            let imported = certificates::import(&raw, &password).map_err(ServiceError::bad_parameter)?;
            let mut vault = shared.vault();
            let created =
                vault.set_certificate(name, imported, parsed.tags.unwrap_or_default(), shared.now())?;
            let certificate_name = vault.certificate(name)?.name.clone();
            Ok(json_response(
                StatusCode::OK,
                bundle(base, &certificate_name, &created),
            ))
        }
        _ => Err(ServiceError::new(404, "NotFound", "not a certificate operation")),
    }
}
