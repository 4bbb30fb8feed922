//! The operations HTTP endpoint: `/healthz` (process alive), `/readyz` (store reachable and
//! caches warm) and `/metrics` (Prometheus text format, bounded labels only; every family is
//! listed in `docs/metrics.md`, checked by `hub/tests/metrics.rs`). `governance.rs` keeps the
//! per-FleetSecret metrics in line with the store.

pub mod governance;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Shared readiness flag and metrics registry, served by [`serve`].
#[derive(Clone)]
pub struct Ops {
    ready: Arc<AtomicBool>,
    /// `keyfleet_hub_ready`: the same flag, for alerts.
    ready_gauge: Gauge,
    registry: Arc<std::sync::Mutex<Registry>>,
}

impl Default for Ops {
    fn default() -> Self {
        let ready_gauge = Gauge::default();
        let mut registry = Registry::with_prefix("keyfleet_hub");
        registry.register(
            "ready",
            "1 while /readyz answers 200 (the hub computed every desired set and serves agents)",
            ready_gauge.clone(),
        );
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            ready_gauge,
            registry: Arc::new(std::sync::Mutex::new(registry)),
        }
    }
}

impl Ops {
    /// Marks the hub ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.ready_gauge.set(i64::from(ready));
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Lets a module register its metrics.
    pub fn register(&self, register: impl FnOnce(&mut Registry)) {
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        register(&mut registry);
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// Binds the endpoint; returns the bound address and the server future.
pub async fn bind(
    addr: SocketAddr,
    ops: Ops,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops);
    let server = async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((local, server))
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.encode() {
        Ok(text) => (
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
