//! `keyfleet-loadtest`: the fleet rotation simulation (the quickstart) and benchmark.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = keyfleet_loadtest::config::Args::parse();
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
                            return std::process::ExitCode::FAILURE;
                        }
                        eprintln!("report written to {}", path.display());
                    }
                    Err(error) => {
                        eprintln!("keyfleet-loadtest: cannot encode the report: {error}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
            if report.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("keyfleet-loadtest: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
