use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = keyfleet_agent::config::Cli::parse(); // bad flag or env: clap prints usage, exits 2
    keyfleet_agent::telemetry::init(&config.log, config.log_format)?;
    keyfleet_agent::run(config.into(), keyfleet_agent::shutdown_signal()).await
}
