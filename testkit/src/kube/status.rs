//! `Status` bodies: every error the fake returns is one, as on a real apiserver.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

/// An API error: rendered as a `v1/Status` with the matching HTTP code.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code (also `code` in the body).
    pub code: u16,
    /// `reason` (NotFound, Conflict, ...).
    pub reason: &'static str,
    /// `message`.
    pub message: String,
    /// `details` (name, kind, causes, retryAfterSeconds), if any.
    pub details: Option<Value>,
    /// `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
}

/// One `details.causes[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `reason` (FieldManagerConflict, FieldValueInvalid, ...).
    pub reason: &'static str,
    /// `message`.
    pub message: String,
    /// `field` (`.data.password`, `metadata.name`).
    pub field: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden for `user` doing `verb` on `resource` (in `namespace`).
    pub fn forbidden(
        user: &str,
        verb: &str,
        resource: &str,
        name: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        let subject = match name {
            Some(name) => format!("{resource} \"{name}\" is forbidden"),
            None => format!("{resource} is forbidden"),
        };
        let scope = match namespace {
            Some(namespace) => format!(" in the namespace \"{namespace}\""),
            None => " at the cluster scope".to_owned(),
        };
        let mut error = Self::new(
            403,
            "Forbidden",
            format!(
                "{subject}: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"\"{scope}"
            ),
        );
        error.details = Some(details(name, resource));
        error
    }

    /// 404 NotFound for `resource` `name`.
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut error = Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        error.details = Some(details(Some(name), resource));
        error
    }

    /// 404 for a path the fake does not serve.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method} {path})"),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut error = Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
        error.details = Some(details(Some(name), resource));
        error
    }

    /// 409 Conflict for a stale resourceVersion or a failed precondition.
    pub fn stale(resource: &str, name: &str) -> Self {
        let mut error = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        );
        error.details = Some(details(Some(name), resource));
        error
    }

    /// 409 Conflict for a failed delete precondition.
    pub fn precondition(resource: &str, name: &str, message: String) -> Self {
        let mut error = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {message}"),
        );
        error.details = Some(details(Some(name), resource));
        error
    }

    /// 409 Conflict from server-side apply, with one FieldManagerConflict cause per field.
    pub fn apply_conflict(resource: &str, name: &str, message: String, causes: Vec<Cause>) -> Self {
        let mut error = Self::new(409, "Conflict", message);
        let mut details = details(Some(name), resource);
        if let Value::Object(map) = &mut details {
            map.insert("causes".into(), causes_json(&causes));
        }
        error.details = Some(details);
        error
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 422 Invalid with causes.
    pub fn invalid(kind: &str, resource: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|cause| format!("{}: {}", cause.field, cause.message))
            .collect();
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", summary.join(", ")),
        );
        let mut details = details(Some(name), resource);
        if let Value::Object(map) = &mut details {
            map.insert("causes".into(), causes_json(&causes));
        }
        error.details = Some(details);
        error
    }

    /// 410 Expired (sent as a watch ERROR event).
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 429 TooManyRequests with Retry-After.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut error = Self::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        );
        error.details = Some(json!({ "retryAfterSeconds": retry_after }));
        error.retry_after = Some(retry_after);
        error
    }

    /// 500 InternalError or 503 ServiceUnavailable, injected.
    pub fn injected(code: u16) -> Self {
        match code {
            503 => Self::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected fault)",
            ),
            _ => Self::new(
                code,
                "InternalError",
                "an error on the server (\"injected fault\") has prevented the request from succeeding",
            ),
        }
    }

    /// An injected refusal with `code` and a message of the test's choosing (a 422 Invalid, say,
    /// whose text is what a webhook or the apiserver wrote).
    pub fn injected_with_message(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            403 => "Forbidden",
            409 => "Conflict",
            422 => "Invalid",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        Self::new(code, reason, message)
    }

    /// The `Status` body.
    pub fn to_json(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), "Status".into());
        status.insert("apiVersion".into(), "v1".into());
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), "Failure".into());
        status.insert("message".into(), self.message.clone().into());
        status.insert("reason".into(), self.reason.into());
        if let Some(details) = &self.details {
            status.insert("details".into(), details.clone());
        }
        status.insert("code".into(), self.code.into());
        Value::Object(status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, axum::Json(self.to_json())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn details(name: Option<&str>, resource: &str) -> Value {
    let mut details = Map::new();
    if let Some(name) = name {
        details.insert("name".into(), name.into());
    }
    details.insert("kind".into(), resource.into());
    Value::Object(details)
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(
        causes
            .iter()
            .map(|cause| json!({"reason": cause.reason, "message": cause.message, "field": cause.field}))
            .collect(),
    )
}

/// A `Status` with `status: Success` (what deleting a Secret returns).
pub(super) fn success(name: &str, resource: &str, uid: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "kind": resource, "uid": uid},
    })
}

impl std::error::Error for ApiError {}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_causes_use_the_reason_key() {
        let error = ApiError::apply_conflict(
            "secrets",
            "db",
            "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.password".into(),
            vec![Cause {
                reason: "FieldManagerConflict",
                message: "conflict with \"kubectl\" using v1".into(),
                field: ".data.password".into(),
            }],
        );
        let body = error.to_json();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["status"], "Failure");
        assert_eq!(body["code"], 409);
        assert_eq!(body["details"]["causes"][0]["reason"], "FieldManagerConflict");
        assert_eq!(body["details"]["causes"][0]["field"], ".data.password");
    }

    #[test]
    fn not_found_names_resource_and_object() {
        let body = ApiError::not_found("secrets", "s1").to_json();
        assert_eq!(body["message"], "secrets \"s1\" not found");
        assert_eq!(body["details"], json!({"name": "s1", "kind": "secrets"}));
        assert_eq!(body["reason"], "NotFound");
    }
}
