#![warn(missing_docs)]

//! The keyfleet agent: holds one Sync stream to the hub and applies the Secrets assigned to this
//! cluster by server-side apply, acking each; repairs drift; touches nothing it does not own.
//!
//! # Layout
//! - [`config`]: clap CLI (flags + `KEYFLEET_AGENT_*` env) parsed into per-module sub-configs.
//! - [`telemetry`]: the tracing subscriber.
//! - [`app`]: wiring: the binary's `run` and the in-process `run_agent` / `AgentRuntime`.
//! - [`reconcile`]: pure; desired + observed Secrets → one plan per item (writes, priors, undos)
//!   or a refusal; its value types in `reconcile/model.rs`.
//! - [`cluster`]: the `Cluster` / `CredentialStore` traits between the two sides, and what they
//!   exchange.
//! - [`hub`]: the hub client (enrollment, backoff); `hub/stream.rs` the Sync session,
//!   `hub/convert.rs` every proto ⇄ domain conversion. The only place naming proto types.
//! - [`kube`]: the Kubernetes side: `KubeCluster` (shared state, NACK mapping), `kube/watch.rs`
//!   (drift watcher, audit, namespace cache), `kube/apply.rs` (writer with rollback),
//!   `kube/read_back.rs` (prior content), `kube/credential.rs` (`KubeCredentialStore`).
//! - `text`: `truncate_utf8`, the one string truncation (on a character boundary).
//! - [`metrics`], `ops`: counters and the `/healthz` `/readyz` `/metrics` endpoint.

pub mod app;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod kube;
pub mod metrics;
pub(crate) mod ops;
pub mod reconcile;
pub mod telemetry;
mod text;

pub use app::{AgentRuntime, AgentSettings, run, run_agent};

/// Resolves when the process receives SIGINT or SIGTERM.
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
}
