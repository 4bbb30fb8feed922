//! The secret operations on the vault and their JSON: bundles, properties, deleted items and
//! paging with `$skiptoken` and `nextLink`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::response::json_response;
use crate::keyvault::auth::Permission;
use crate::keyvault::shared::Shared;
use crate::keyvault::store::{self, Attributes, ServiceError, Version};

/// One vault request as the pipeline hands it on.
pub(super) struct Call<'a> {
    pub(super) shared: &'a Shared,
    pub(super) method: &'a Method,
    pub(super) headers: &'a HeaderMap,
    pub(super) query: &'a BTreeMap<String, String>,
    /// `https://<host the client used>`, for ids and nextLinks.
    pub(super) base: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
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
    GetCertificate,
    ListCertificates,
    ListCertificateVersions,
    ImportCertificate,
}

impl Op {
    pub(super) fn name(self) -> &'static str {
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
            Self::GetCertificate => "get_certificate",
            Self::ListCertificates => "list_certificates",
            Self::ListCertificateVersions => "list_certificate_versions",
            Self::ImportCertificate => "import_certificate",
        }
    }

    pub(super) fn is_write(self) -> bool {
        matches!(
            self,
            Self::Set | Self::Update | Self::Delete | Self::Recover | Self::Purge | Self::ImportCertificate
        )
    }

    pub(super) fn permission(self) -> Permission {
        match self {
            // The emulator's principals hold one permission set for secrets and certificates.
            Self::Get | Self::GetCertificate => Permission::Get,
            Self::List
            | Self::ListVersions
            | Self::ListDeleted
            | Self::GetDeleted
            | Self::ListCertificates
            | Self::ListCertificateVersions => Permission::List,
            Self::Set | Self::Update | Self::ImportCertificate => Permission::Set,
            Self::Delete => Permission::Delete,
            Self::Recover => Permission::Recover,
            Self::Purge => Permission::Purge,
        }
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
pub(super) fn paged(call: &Call<'_>, path: &str, items: Vec<Value>) -> Result<Response, ServiceError> {
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

pub(super) fn execute(
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
            if found.managed {
                // A certificate's companion secret, as Key Vault serves it.
                bundle["managed"] = json!(true);
                bundle["kid"] = json!(format!("{base}/keys/{}/{}", secret.name, found.id));
            }
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
        Op::GetCertificate | Op::ListCertificates | Op::ListCertificateVersions | Op::ImportCertificate => {
            super::certificates::execute(call, op, name, version, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
