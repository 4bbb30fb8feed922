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
//! - [`memory`]: the global allocator of the hub's binaries (large buffers on pages of their own).
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
pub mod memory;
mod ops;
pub mod render;
pub mod spec;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod vault;

pub use app::run;

use std::ffi::OsString;
use std::process::ExitCode;

/// The `keyfleet` program: parses `args` (the program name first, as `std::env::args_os` gives
/// it) into [`config::Cli`], initializes telemetry and runs the command on a new multi-threaded
/// tokio runtime until it ends or [`shutdown_signal`] fires. Bad flags print usage and exit 2;
/// other errors map to the exit codes of [`cli::exit_code`].
///
/// `hub/src/main.rs` is just this; the loadtest runs it too, as its own process
/// (`keyfleet-loadtest hub serve …`), so one build serves both.
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::Parser as _;
    let cli = config::Cli::parse_from(args); // bad flag or env: clap prints usage, exits 2
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(&cli.telemetry) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        match run(cli.command, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // Exit codes scripts can rely on: see `keyfleet_hub::cli`.
                eprintln!("error: {error:#}");
                ExitCode::from(cli::exit_code(&error))
            }
        }
    })
}

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
