//! HTTPS serving and request dispatch by path: vault data plane, Entra endpoints, admin routes.

mod admin;
mod certificates;
mod entra;
mod response;
mod secrets;
mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::shared::Shared;
use super::store::ServiceError;
use admin::admin;
use entra::{managed_identity_token, openid_configuration, token};
use response::service_error;
use secrets::Call;
use vault::vault;

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
        ["secrets" | "deletedsecrets" | "certificates", ..] => {
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
