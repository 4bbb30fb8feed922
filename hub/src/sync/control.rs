//! What the transport may ask of the running engine ([`HubControl`]): a change was written to
//! the store, poll a SecretStore now, how did each store's last poll go. The engine implements it
//! (`engine::EngineHandle`); the Admin use cases call it. Errors are the engine's own
//! ([`ControlError`]); `grpc::status` maps them to gRPC codes.

use std::collections::BTreeMap;

use async_trait::async_trait;

/// What a sync-now did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncNowOutcome {
    /// Stores that were polled.
    pub stores: Vec<String>,
    /// New Key Vault versions found.
    pub new_versions: u32,
}

/// Outcome of a SecretStore's last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// Whether it succeeded.
    pub healthy: bool,
    /// Why it failed (names only, never a value); empty when healthy.
    pub last_error: String,
}

/// Why the engine could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request was handed to the Key Vault leader through the store, and no leader answered
    /// in time (none is running, or it lost the store).
    #[error("no replica leading the Key Vault pollers answered within {}s", .0.as_secs())]
    NoLeader(std::time::Duration),
    /// Forwarding to the leader failed, or the leader answered with an error (its text).
    #[error("{0}")]
    Forward(String),
    /// No SecretStore of that name is loaded.
    #[error("no SecretStore named {0:?}")]
    UnknownStore(String),
    /// A poll failed (the message names store, operation and cause, never a value).
    #[error("polling SecretStore {store:?} failed: {message}")]
    PollFailed {
        /// The SecretStore.
        store: String,
        /// The poller's error text.
        message: String,
    },
    /// The engine is stopping or stopped.
    #[error("hub is shutting down")]
    ShuttingDown,
}

/// The running hub, as the Admin use cases see it (implemented by the sync engine).
#[async_trait]
pub trait HubControl: Send + Sync + 'static {
    /// Specs, inventory, pins or rollouts changed in the store: re-read and re-plan now.
    async fn changed(&self);
    /// Polls one SecretStore (or all when `None`) now.
    async fn sync_now(&self, store: Option<String>) -> Result<SyncNowOutcome, ControlError>;
    /// Health of the last poll of each SecretStore, by name (absent: not polled yet).
    async fn store_health(&self) -> BTreeMap<String, StoreHealth> {
        BTreeMap::new()
    }
}
