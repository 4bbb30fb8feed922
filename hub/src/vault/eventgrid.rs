//! Azure Event Grid webhook for Key Vault events: the subscription validation handshake (Event
//! Grid schema, and the CloudEvents `OPTIONS` handshake), then `SecretNewVersionCreated`,
//! `SecretNearExpiry` and `SecretExpired` trigger an immediate targeted fetch by the vault's
//! poller. The sweep stays the backstop: a lost notification costs at most one `pollInterval`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::PollerHandle;

/// The path the webhook serves.
pub const PATH: &str = "/eventgrid/keyvault";

/// Key Vault event types that trigger a fetch.
pub const FETCH_EVENTS: &[&str] = &[
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.SecretNearExpiry",
    "Microsoft.KeyVault.SecretExpired",
];

const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

/// What the webhook knows: the shared secret Event Grid sends as `?code=` and the pollers by
/// vault name (the first DNS label of the vault URL, lowercase).
#[derive(Clone, Default)]
pub struct EventGridConfig {
    /// Required `code` query parameter (configured in the subscription's endpoint URL).
    pub code: Option<String>,
    /// Pollers by vault name; several stores may read one vault.
    pub pollers: HashMap<String, Vec<PollerHandle>>,
}

impl std::fmt::Debug for EventGridConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventGridConfig")
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("vaults", &self.pollers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EventGridConfig {
    /// Adds a poller for the vault at `vault_url`.
    pub fn add(&mut self, vault_url: &url::Url, poller: PollerHandle) {
        self.pollers
            .entry(vault_name(vault_url))
            .or_default()
            .push(poller);
    }
}

/// `myvault` for `https://myvault.vault.azure.net/`.
pub fn vault_name(vault_url: &url::Url) -> String {
    vault_url
        .host_str()
        .unwrap_or_default()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The webhook router (mount it on the hub's HTTPS listener).
pub fn router(config: EventGridConfig) -> Router {
    Router::new()
        .route(PATH, post(notify).options(cloudevents_handshake))
        .with_state(Arc::new(config))
}

#[derive(Deserialize)]
struct CodeQuery {
    code: Option<String>,
}

fn authorized(config: &EventGridConfig, query: &CodeQuery) -> bool {
    match &config.code {
        None => true,
        Some(expected) => query.code.as_deref().is_some_and(|given| {
            given.len() == expected.len()
                && given
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }),
    }
}

/// CloudEvents abuse protection: echo the origin in `WebHook-Allowed-Origin`.
async fn cloudevents_handshake(
    State(config): State<Arc<EventGridConfig>>,
    Query(query): Query<CodeQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&config, &query) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut response = StatusCode::OK.into_response();
    if let Some(origin) = headers.get("webhook-request-origin") {
        response
            .headers_mut()
            .insert("webhook-allowed-origin", origin.clone());
    }
    response
        .headers_mut()
        .insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    response
}

/// Reads an Event Grid event (Event Grid or CloudEvents schema): (type, data).
fn event_parts(event: &Value) -> (Option<&str>, Option<&Value>) {
    let kind = event
        .get("eventType")
        .or_else(|| event.get("type"))
        .and_then(Value::as_str);
    (kind, event.get("data"))
}

async fn notify(
    State(config): State<Arc<EventGridConfig>>,
    Query(query): Query<CodeQuery>,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&config, &query) {
        tracing::warn!("event grid notification with a wrong or missing code");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    };
    let events: Vec<Value> = match parsed {
        Value::Array(events) => events,
        single @ Value::Object(_) => vec![single],
        _ => return (StatusCode::BAD_REQUEST, "expected an event or an array of events").into_response(),
    };
    let mut fetches = 0usize;
    for event in &events {
        let (kind, data) = event_parts(event);
        match kind {
            Some(VALIDATION_EVENT) => {
                let Some(code) = data.and_then(|d| d.get("validationCode")).and_then(Value::as_str) else {
                    return (StatusCode::BAD_REQUEST, "validation event without validationCode")
                        .into_response();
                };
                tracing::info!("event grid subscription validated");
                return (StatusCode::OK, axum::Json(json!({"validationResponse": code}))).into_response();
            }
            Some(kind) if FETCH_EVENTS.contains(&kind) => {
                let field = |name: &str| data.and_then(|d| d.get(name)).and_then(Value::as_str);
                let (Some(vault), Some(name)) = (field("VaultName"), field("ObjectName")) else {
                    tracing::warn!(event_type = kind, "key vault event without VaultName/ObjectName");
                    continue;
                };
                let Some(pollers) = config.pollers.get(&vault.to_ascii_lowercase()) else {
                    tracing::debug!(event_type = kind, %vault, "event for a vault no store reads");
                    continue;
                };
                tracing::info!(event_type = kind, %vault, secret = %name, version = field("Version").unwrap_or(""), "key vault event");
                for poller in pollers {
                    poller.fetch_now(name);
                    fetches += 1;
                }
            }
            other => tracing::debug!(event_type = other.unwrap_or("<none>"), "ignored event grid event"),
        }
    }
    (StatusCode::OK, axum::Json(json!({"fetches": fetches}))).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tokio::sync::{mpsc, watch};
    use tower::ServiceExt as _;

    use super::super::{Poller, SecretSource, VaultMetrics, WatchSet};
    use super::*;

    struct Nothing;

    #[async_trait::async_trait]
    impl SecretSource for Nothing {
        async fn get(
            &self,
            _: &str,
            _: Option<&str>,
        ) -> Result<super::super::FetchedSecret, super::super::VaultError> {
            unreachable!("not called by these tests")
        }
        async fn list_secrets(&self) -> Result<Vec<super::super::SecretInfo>, super::super::VaultError> {
            Ok(Vec::new())
        }
        async fn list_versions(
            &self,
            _: &str,
        ) -> Result<Vec<super::super::VersionInfo>, super::super::VaultError> {
            Ok(Vec::new())
        }
    }

    fn setup() -> (Router, Poller) {
        let (_tx, rx) = watch::channel(WatchSet::default());
        let (changes, _received) = mpsc::channel(1);
        let (poller, handle) = Poller::new(
            "kv",
            Arc::new(Nothing),
            std::time::Duration::from_secs(30),
            rx,
            changes,
            VaultMetrics::default(),
        );
        let mut config = EventGridConfig {
            code: Some("s3cret".to_owned()),
            ..EventGridConfig::default()
        };
        config.add(&"https://MyVault.vault.azure.net/".parse().expect("url"), handle);
        (router(config), poller)
    }

    async fn post(router: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
        let request = Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("call");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn validation_handshake_and_code() {
        let (router, _poller) = setup();
        let validation = json!([{
            "id": "1", "topic": "t", "subject": "", "eventTime": "2026-11-26T00:00:00Z", "dataVersion": "1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"}
        }]);
        let (status, body) = post(&router, "/eventgrid/keyvault?code=s3cret", validation.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
        );
        assert_eq!(
            post(&router, "/eventgrid/keyvault?code=wrong", validation.clone())
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&router, "/eventgrid/keyvault", validation).await.0,
            StatusCode::UNAUTHORIZED
        );

        let options = Request::options("/eventgrid/keyvault?code=s3cret")
            .header("webhook-request-origin", "eventemitter.example.com")
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(options).await.expect("call");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["webhook-allowed-origin"],
            "eventemitter.example.com"
        );
    }

    #[tokio::test]
    async fn secret_events_queue_targeted_fetches_for_the_right_vault() {
        let (router, mut poller) = setup();
        let event = |kind: &str, vault: &str, name: &str| {
            json!({
                "id": "e", "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/v",
                "subject": name, "eventType": kind, "eventTime": "2026-11-26T00:00:00Z", "dataVersion": "1",
                "data": {"Id": format!("https://{vault}.vault.azure.net/secrets/{name}/abc"), "VaultName": vault,
                         "ObjectType": "Secret", "ObjectName": name, "Version": "abc", "NBF": null, "EXP": null}
            })
        };
        let batch = json!([
            event("Microsoft.KeyVault.SecretNewVersionCreated", "myvault", "db"),
            event("Microsoft.KeyVault.SecretNearExpiry", "MYVAULT", "api"),
            event("Microsoft.KeyVault.SecretNewVersionCreated", "othervault", "db"),
            event("Microsoft.KeyVault.KeyNewVersionCreated", "myvault", "k"),
        ]);
        let (status, body) = post(&router, "/eventgrid/keyvault?code=s3cret", batch).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"fetches": 2})));
        assert_eq!(poller.targeted.try_recv().ok().as_deref(), Some("db"));
        assert_eq!(poller.targeted.try_recv().ok().as_deref(), Some("api"));
        assert!(poller.targeted.try_recv().is_err());
        assert_eq!(
            post(&router, "/eventgrid/keyvault?code=s3cret", json!("x"))
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
    }
}
