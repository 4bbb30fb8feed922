//! Azure Event Grid webhook for Key Vault events: the subscription validation handshake (Event
//! Grid schema, and the CloudEvents `OPTIONS` handshake), then `SecretNewVersionCreated`,
//! `SecretNearExpiry` and `SecretExpired` (and the same three for certificates, whose companion
//! secret has the certificate's name) trigger an immediate targeted fetch of that secret by
//! every store reading the vault ([`KeyVaultEvents`]: the sync engine, which forwards the fetch to
//! the Key Vault leader when this replica does not lead). The sweep stays the backstop: a lost
//! notification costs at most one `pollInterval`.
//!
//! Every call must carry the shared `?code=` secret configured in the subscription's endpoint
//! URL (compared in constant time); a webhook without a code cannot be built.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

/// The path the webhook serves.
pub const PATH: &str = "/eventgrid/keyvault";

/// Key Vault event types that trigger a fetch.
pub const FETCH_EVENTS: &[&str] = &[
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.SecretNearExpiry",
    "Microsoft.KeyVault.SecretExpired",
    // A certificate's new version is a new version of its companion secret (same name), which is
    // what `cert/NAME` references read and watch.
    "Microsoft.KeyVault.CertificateNewVersionCreated",
    "Microsoft.KeyVault.CertificateNearExpiry",
    "Microsoft.KeyVault.CertificateExpired",
];

const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

/// Where a notification goes: fetch `secret` of the vault named `vault` (first DNS label of its
/// URL, lowercase) now. The stores reached (empty when no store reads the vault, or when the
/// fetch was handed to the leader); an error makes Event Grid retry.
#[async_trait::async_trait]
pub trait KeyVaultEvents: Send + Sync + 'static {
    /// A secret of `vault` changed.
    async fn secret_changed(&self, vault: &str, secret: &str) -> Result<Vec<String>, String>;
}

/// What the webhook knows: the shared secret Event Grid sends as `?code=`, and where events go.
#[derive(Clone)]
pub struct EventGridConfig {
    code: String,
    events: Arc<dyn KeyVaultEvents>,
}

impl std::fmt::Debug for EventGridConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventGridConfig")
            .field("code", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl EventGridConfig {
    /// The webhook's configuration; refuses an empty or short code (it is the only thing
    /// between the internet and a Key Vault read).
    pub fn new(code: &str, events: Arc<dyn KeyVaultEvents>) -> Result<Self, String> {
        let code = code.trim();
        if code.len() < 16 {
            return Err(format!(
                "the Event Grid code must be at least 16 characters (it has {})",
                code.len()
            ));
        }
        if !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        {
            return Err("the Event Grid code must be URL-safe (letters, digits, - . _ ~)".to_owned());
        }
        Ok(Self {
            code: code.to_owned(),
            events,
        })
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
    let expected = &config.code;
    query.code.as_deref().is_some_and(|given| {
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
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
    let mut forwarded = 0usize;
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
                tracing::info!(event_type = kind, %vault, secret = %name, version = field("Version").unwrap_or(""), "key vault event");
                match config
                    .events
                    .secret_changed(&vault.to_ascii_lowercase(), name)
                    .await
                {
                    Ok(stores) if stores.is_empty() => forwarded += 1,
                    Ok(stores) => fetches += stores.len(),
                    Err(error) => {
                        tracing::warn!(event_type = kind, %vault, secret = %name, error = %error, "key vault event not delivered; event grid retries");
                        return (StatusCode::SERVICE_UNAVAILABLE, error).into_response();
                    }
                }
            }
            other => tracing::debug!(event_type = other.unwrap_or("<none>"), "ignored event grid event"),
        }
    }
    (
        StatusCode::OK,
        axum::Json(json!({"fetches": fetches, "forwarded": forwarded})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    /// Records the notifications; `myvault` is read by one store.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    #[async_trait::async_trait]
    impl KeyVaultEvents for Recorder {
        async fn secret_changed(&self, vault: &str, secret: &str) -> Result<Vec<String>, String> {
            self.0
                .lock()
                .expect("lock")
                .push((vault.to_owned(), secret.to_owned()));
            Ok(if vault == "myvault" {
                vec!["kv".to_owned()]
            } else {
                Vec::new()
            })
        }
    }

    const CODE: &str = "s3cret-0123456789abcdef";

    fn setup() -> (Router, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let config =
            EventGridConfig::new(CODE, Arc::clone(&recorder) as Arc<dyn KeyVaultEvents>).expect("config");
        (router(config), recorder)
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

    #[test]
    fn a_webhook_needs_a_long_url_safe_code() {
        let events = Arc::new(Recorder::default()) as Arc<dyn KeyVaultEvents>;
        assert!(
            EventGridConfig::new("", Arc::clone(&events))
                .unwrap_err()
                .contains("at least 16")
        );
        assert!(EventGridConfig::new("short", Arc::clone(&events)).is_err());
        assert!(
            EventGridConfig::new("has spaces and is long enough", Arc::clone(&events))
                .unwrap_err()
                .contains("URL-safe")
        );
        let config = EventGridConfig::new(CODE, events).expect("valid");
        assert!(!format!("{config:?}").contains(CODE), "Debug redacts the code");
    }

    #[tokio::test]
    async fn validation_handshake_and_code() {
        let (router, _events) = setup();
        let validation = json!([{
            "id": "1", "topic": "t", "subject": "", "eventTime": "2026-11-26T00:00:00Z", "dataVersion": "1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"}
        }]);
        let uri = format!("/eventgrid/keyvault?code={CODE}");
        let (status, body) = post(&router, &uri, validation.clone()).await;
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

        let options = Request::options(uri.as_str())
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
    async fn secret_events_are_delivered_per_vault_and_secret() {
        let (router, events) = setup();
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
            event(
                "Microsoft.KeyVault.CertificateNewVersionCreated",
                "myvault",
                "tls"
            ),
        ]);
        let uri = format!("/eventgrid/keyvault?code={CODE}");
        let (status, body) = post(&router, &uri, batch).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"fetches": 3, "forwarded": 1}))
        );
        assert_eq!(
            *events.0.lock().expect("lock"),
            [
                ("myvault", "db"),
                ("myvault", "api"),
                ("othervault", "db"),
                ("myvault", "tls")
            ]
            .map(|(vault, secret)| (vault.to_owned(), secret.to_owned()))
        );
        assert_eq!(post(&router, &uri, json!("x")).await.0, StatusCode::BAD_REQUEST);
    }
}
