//! The keyfleet hub: reads each Azure Key Vault secret version once, renders the Kubernetes Secret
//! once, and fans it out over one gRPC stream per cluster; records sync status in the store.
//!
//! # Layout
//! - [`config`]: clap CLI (flags + `KEYFLEET_*` env) parsed into per-module sub-configs.
//! - [`telemetry`]: tracing subscriber, optional OTLP export, the flush guard.
//! - [`app`]: wiring only: connect, migrate, build, serve, drain.
//! - [`cli`]: the administration commands (`cluster`, `apply`, `status`, …), Admin API clients.
//! - [`domain`]: pure types and rules shared by every module (`SecretValue`, names, labels).
//! - [`ops`]: the operations HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.
//! - [`spec`]: SecretStore / FleetSecret YAML specs, strict parsing and ESO-style validation.
//! - [`render`]: a FleetSecret + source values → the complete Secret of one revision (pure).
//! - [`sync`]: `sync::plan` decides which cluster holds which revision (pure).
//! - [`fleet`]: the fan-out registry (per-cluster desired sets, streams, coalescing queues).
//! - [`status`]: fleet events → batched status writes, liveness, undelivered detector.
//! - [`grpc`]: tonic services; `grpc::convert` is the only proto ⇄ domain crossing.
//! - [`vault`]: Azure Key Vault through the official crates (`SecretSource`, `AzureKeyVault`) and
//!   the per-store change `Poller`.
//! - [`store`]: Postgres / SQLite store (inventory, revisions, sync status); the only sqlx user.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod grpc;
pub mod ops;
pub mod render;
pub mod spec;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod vault;

pub use app::run;

/// Resolves when the process receives SIGINT or SIGTERM: the hub then drains and exits.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
