use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = keyfleet_hub::config::Cli::parse(); // bad flag or env: clap prints usage, exits 2
    let _telemetry = keyfleet_hub::telemetry::init(&cli.telemetry)?;
    keyfleet_hub::run(cli.command, keyfleet_hub::shutdown_signal()).await
}
