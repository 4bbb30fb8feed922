//! The keyfleet hub: reads each Azure Key Vault secret version once, renders the Kubernetes Secret
//! once, and fans it out over one gRPC stream per cluster; records sync status in the store.
//!
//! Dependencies point one way: `app` → `grpc` / `ops` / `cli` → the sync engine (`sync`) →
//! `fleet`, `render`, `sync::plan`, `status`, `vault`, `store`, `spec` → `domain`. Only `grpc`
//! and `cli` name tonic or proto types (`scripts/checks/hub-boundaries.sh`).
//!
//! # Layout
//! - [`config`]: clap CLI (flags + `KEYFLEET_*` env) parsed into per-module sub-configs.
//! - [`telemetry`]: tracing subscriber, optional OTLP export, the flush guard.
//! - [`app`]: wiring only: connect, migrate, build, serve, drain.
//! - [`cli`]: the administration commands (`cluster`, `apply`, `status`, …), Admin API clients.
//! - [`grpc`]: tonic services over the engine: check, call, convert; `grpc::status` maps errors.
//! - [`ops`]: the operations HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.
//! - [`sync`]: the sync engine (`sync::engine`), its control seam (`sync::control`), the Admin use
//!   cases (`sync::admin`) and the pure planner (`sync::plan`).
//! - [`fleet`]: the fan-out registry (per-cluster desired sets, streams, coalescing queues).
//! - [`status`]: fleet events → batched status writes, liveness, undelivered detector.
//! - [`render`]: a FleetSecret + source values → the complete Secret of one revision (pure).
//! - [`spec`]: SecretStore / FleetSecret YAML specs, strict parsing and ESO-style validation.
//! - [`vault`]: Azure Key Vault through the official crates (`SecretSource`, `AzureKeyVault`,
//!   `SourceFactory`), the per-store change `Poller`, an in-memory fake behind `test-util`.
//! - [`history`]: append-only sync history and repaired drift, batched from fleet events.
//! - [`store`]: Postgres / SQLite store (inventory, revisions, sync status); the only sqlx user.
//! - [`domain`]: pure types and rules shared by every module (`SecretValue`, names, labels).

#![warn(missing_docs)]

mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod grpc;
pub mod history;
mod ops;
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
