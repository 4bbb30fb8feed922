//! The operations HTTP endpoint of the binary: `/healthz` (process alive), `/readyz` (enrolled
//! and the managed Secrets listed) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the endpoint serves.
#[derive(Clone)]
pub struct Ops {
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    registry: Arc<Registry>,
}

impl Ops {
    /// Serves `registry`, asking `ready` for `/readyz`.
    pub fn new(registry: Registry, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            ready: Arc::new(ready),
            registry: Arc::new(registry),
        }
    }
}

/// Binds the endpoint; returns the bound address and the server future.
pub async fn bind(
    addr: SocketAddr,
    ops: Ops,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops);
    Ok((local, async move { axum::serve(listener, router).await }))
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if (ops.ready)() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &ops.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
