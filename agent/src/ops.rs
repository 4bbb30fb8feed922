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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::Metrics;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: ops\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_are_served() {
        let metrics = Metrics::default();
        metrics.applied_ok.inc();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let ops = Ops::new(registry, move || flag.load(Ordering::SeqCst));
        let (addr, server) = bind("127.0.0.1:0".parse().expect("addr"), ops)
            .await
            .expect("bind");
        tokio::spawn(server);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let body = get(addr, "/metrics").await;
        assert!(body.contains("keyfleet_agent_applied_total 1"), "{body}");
        assert!(body.contains("keyfleet_agent_connected 0"), "{body}");
    }
}
