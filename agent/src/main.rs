//! The `keyfleet-agent` binary: parses the flags and environment, starts logging, and runs the
//! agent until SIGINT or SIGTERM.

use clap::Parser as _;

// One thread: the agent's work is a few sockets; a multi-thread runtime would start a worker (and
// a malloc arena) per node core for nothing.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let config = keyfleet_agent::config::Cli::parse(); // bad flag or env: clap prints usage, exits 2
    let _telemetry =
        keyfleet_agent::telemetry::init(&config.log, config.log_format, config.otlp_endpoint.as_deref())?;
    keyfleet_agent::run(config.into(), keyfleet_agent::shutdown_signal()).await
}
