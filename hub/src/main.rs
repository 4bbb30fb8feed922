use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = keyfleet_hub::config::Cli::parse(); // bad flag or env: clap prints usage, exits 2
    let _telemetry = match keyfleet_hub::telemetry::init(&cli.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match keyfleet_hub::run(cli.command, keyfleet_hub::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Exit codes scripts can rely on: see `keyfleet_hub::cli`.
            eprintln!("error: {error:#}");
            ExitCode::from(keyfleet_hub::cli::exit_code(&error))
        }
    }
}
