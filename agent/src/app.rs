//! Wiring only: builds the agent's parts from their sub-configs and runs until shutdown.

use std::future::Future;

use crate::config::Config;

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing::info!(hub = %config.hub.url, namespace = %config.credential.namespace, "keyfleet-agent starting");
    shutdown.await;
    Ok(())
}
