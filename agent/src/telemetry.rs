//! The agent's tracing subscriber (text or JSON on stderr).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

const QUIET_KUBE_CLIENT: &str = "kube_client::client=error";

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let mut filter = EnvFilter::try_new(filter)
        .map_err(|error| anyhow::anyhow!("invalid --log filter {filter:?}: {error}"))?;
    // kube's client logs a whole response body when it cannot decode it; for a Secret that
    // would be its data. Keep that target at error unless the operator asks for it by name.
    if !filter.to_string().contains("kube_client") {
        filter = filter.add_directive(QUIET_KUBE_CLIENT.parse()?);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|error| anyhow::anyhow!("install the tracing subscriber: {error}"))
}
