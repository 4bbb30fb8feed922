//! `keyfleet-loadtest`: the fleet rotation simulation (the quickstart) and benchmark.
//!
//! `keyfleet-loadtest hub <keyfleet arguments…>` (hidden) is the hub itself,
//! `keyfleet_hub::main_with`: the run starts its hub replicas as `<this binary> hub serve …`, each
//! its own process, so one build serves both and the hub is measured apart from the fleet.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

/// The hub's allocator (`keyfleet_hub::memory`): this binary is the hub's process too.
#[global_allocator]
static ALLOCATOR: keyfleet_hub::memory::HubAllocator = keyfleet_hub::memory::HubAllocator;

/// The hidden first argument that makes this process a hub.
const HUB_SUBCOMMAND: &str = "hub";

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_else(|| OsString::from("keyfleet-loadtest"));
    let rest: Vec<OsString> = argv.collect();
    if rest.first().is_some_and(|first| first == HUB_SUBCOMMAND) {
        // Before anything else: this process is `keyfleet`, nothing of the loadtest runs.
        return keyfleet_hub::main_with(
            std::iter::once(OsString::from("keyfleet")).chain(rest.into_iter().skip(1)),
        );
    }
    let args = keyfleet_loadtest::config::Args::parse_from(std::iter::once(program).chain(rest));
    if let Err(message) = args.validate() {
        keyfleet_loadtest::config::Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keyfleet-loadtest: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(loadtest(args))
}

async fn loadtest(args: keyfleet_loadtest::config::Args) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYFLEET_LOADTEST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,keyfleet_agent=error,kube_client=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let report_path = args.report.clone();
    match keyfleet_loadtest::scenario::run(args).await {
        Ok(report) => {
            println!("{}", report.table());
            if let Some(path) = report_path {
                match serde_json::to_vec_pretty(&report) {
                    Ok(json) => {
                        if let Err(error) = std::fs::write(&path, json) {
                            eprintln!("keyfleet-loadtest: cannot write {}: {error}", path.display());
                            return ExitCode::FAILURE;
                        }
                        eprintln!("report written to {}", path.display());
                    }
                    Err(error) => {
                        eprintln!("keyfleet-loadtest: cannot encode the report: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("keyfleet-loadtest: {error:#}");
            ExitCode::FAILURE
        }
    }
}
