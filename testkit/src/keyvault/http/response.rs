//! The JSON responses every route shares: a body with its content type, and a Key Vault error.

use axum::response::{IntoResponse as _, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::keyvault::store::ServiceError;

pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(super) fn service_error(error: &ServiceError) -> Response {
    let mut body = json!({"error": {"code": error.code, "message": error.message}});
    if let Some(inner) = error.inner {
        body["error"]["innererror"] = json!({"code": inner});
    }
    json_response(
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}
