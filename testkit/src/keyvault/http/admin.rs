//! The emulator's own routes under `/_emulator/`: counters, the fault plan and federated tokens
//! for tests that cannot call the handle.

use axum::body::Bytes;
use axum::response::{IntoResponse as _, Response};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::response::json_response;
use crate::keyvault::auth;
use crate::keyvault::faults::FaultSpec;
use crate::keyvault::shared::Shared;

pub(super) fn admin(shared: &Shared, method: &Method, rest: &[&str], body: &Bytes) -> Response {
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
