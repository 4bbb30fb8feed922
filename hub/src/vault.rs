//! Azure Key Vault, the hub's only secret source. The rest of the hub sees `dyn SecretSource`;
//! only this module (and `vault/`) names the Azure SDK (`azure_identity`,
//! `azure_security_keyvault_secrets`).
//!
//! - [`AzureKeyVault`] (`vault/azure.rs`): the official crates with every `authType`, a `governor`
//!   token bucket per vault applied to every wire request (retries included), `Retry-After` honoured,
//!   exponential backoff with full jitter, a circuit breaker (`vault/breaker.rs`), calls counted
//!   by operation and outcome.
//! - [`Poller`] (`vault/poller.rs`): per store, one paged `list_secrets` sweep per `pollInterval`
//!   and one value GET only for watched secrets whose latest version changed.
//! - [`eventgrid`]: the Event Grid webhook; Key Vault secret events trigger a targeted fetch by
//!   the vault's pollers (`PollerHandle::fetch_now`), the sweep stays the backstop.
//! - [`SourceFactory`]: how the sync engine gets a source per SecretStore ([`AzureSources`]; an
//!   in-memory `fake::FakeVault` behind the `test-util` feature).
//! - [`VaultMetrics`] (`vault/metrics.rs`): Prometheus families, registered in a sub-registry.
//!
//! **Invariant:** a value only ever leaves as a [`SecretValue`]; errors name the store, vault,
//! operation, secret and auth type, and carry the SDK's cause text, never a value.

mod azure;
mod breaker;
pub mod eventgrid;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod metrics;
mod poller;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::SecretValue;
use crate::spec::SecretStoreSpec;

pub use azure::{AzureKeyVault, VaultOptions};
pub use metrics::{PollerStats, VaultMetrics};
pub use poller::{FindFilter, PollError, Poller, PollerHandle, SweepOutcome, VaultChange, WatchSet};

/// A secret source: Azure Key Vault in production, anything in tests.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    /// One version of a secret (the latest when `version` is `None`).
    async fn get(&self, name: &str, version: Option<&str>) -> Result<FetchedSecret, VaultError>;
    /// Properties of every secret (paged underneath, 25 per page).
    async fn list_secrets(&self) -> Result<Vec<SecretInfo>, VaultError>;
    /// Properties of every version of one secret.
    async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>, VaultError>;
}

/// Builds the [`SecretSource`] of each SecretStore the engine loads: Azure Key Vault in
/// production ([`AzureSources`]), an in-memory vault in tests (`fake::FakeSources`).
pub trait SourceFactory: Send + Sync {
    /// The source for `spec` (a client; nothing is called yet).
    fn source(&self, spec: &SecretStoreSpec) -> Result<Arc<dyn SecretSource>, VaultError>;
}

/// [`AzureKeyVault`] clients built with these options (trust, authority, metrics).
#[derive(Clone, Default)]
pub struct AzureSources(pub VaultOptions);

impl SourceFactory for AzureSources {
    fn source(&self, spec: &SecretStoreSpec) -> Result<Arc<dyn SecretSource>, VaultError> {
        Ok(Arc::new(AzureKeyVault::new(spec, &self.0)?))
    }
}

/// A secret version with its value. `Debug` shows the value's length only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedSecret {
    /// Version id.
    pub version: String,
    /// The value.
    pub value: SecretValue,
    /// Whether the version is enabled.
    pub enabled: bool,
    /// `contentType`.
    pub content_type: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Creation time.
    pub created: Option<DateTime<Utc>>,
    /// Last attribute update.
    pub updated: Option<DateTime<Utc>>,
    /// Expiry (informational in Key Vault).
    pub expires: Option<DateTime<Utc>>,
    /// Not-before (informational in Key Vault).
    pub not_before: Option<DateTime<Utc>>,
}

/// A secret as listed (its current version's attributes, no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Name as Key Vault returns it.
    pub name: String,
    /// Tags of the current version.
    pub tags: BTreeMap<String, String>,
    /// Whether the current version is enabled.
    pub enabled: bool,
    /// Last update of the current version (a new version changes it).
    pub updated: Option<DateTime<Utc>>,
}

/// A version as listed (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Version id.
    pub version: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Creation time.
    pub created: Option<DateTime<Utc>>,
    /// Last attribute update.
    pub updated: Option<DateTime<Utc>>,
}

/// Key Vault operations, as named in errors and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Read a value.
    Get,
    /// List secrets.
    ListSecrets,
    /// List the versions of a secret.
    ListVersions,
    /// Build the client and credential.
    Connect,
}

impl Operation {
    /// Stable lowercase name (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::ListSecrets => "list_secrets",
            Self::ListVersions => "list_versions",
            Self::Connect => "connect",
        }
    }
}

/// Where an error happened: store, vault, operation, secret, auth type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorContext {
    /// SecretStore name.
    pub store: String,
    /// Vault URL.
    pub vault: String,
    /// The operation.
    pub operation: Operation,
    /// Secret name (and version) when the operation has one.
    pub secret: Option<String>,
    /// `authType`.
    pub auth_type: &'static str,
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {}: {}", self.store, self.operation.as_str())?;
        if let Some(secret) = &self.secret {
            write!(f, " secret {secret}")?;
        }
        write!(f, " on vault {} (auth {})", self.vault, self.auth_type)
    }
}

/// Errors of the vault module. Messages name store, vault, operation, secret and auth type;
/// the cause is the SDK's text (walked through `source()`), which never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store's configuration cannot make a client (bad URL, unreadable client secret, …).
    #[error("{context}: invalid configuration: {reason}")]
    Config {
        /// Where.
        context: ErrorContext,
        /// What is wrong.
        reason: String,
    },
    /// Entra refused the credential, or the vault refused the token (401).
    #[error("{context}: authentication failed: {cause}")]
    Auth {
        /// Where.
        context: ErrorContext,
        /// The SDK's cause text.
        cause: String,
    },
    /// The identity lacks the permission (403).
    #[error("{context}: permission denied: {cause}")]
    Forbidden {
        /// Where.
        context: ErrorContext,
        /// The SDK's cause text.
        cause: String,
    },
    /// The version is disabled (403 `SecretDisabled`).
    #[error("{context}: the secret version is disabled")]
    Disabled {
        /// Where.
        context: ErrorContext,
    },
    /// No such secret or version (404).
    #[error("{context}: not found")]
    NotFound {
        /// Where.
        context: ErrorContext,
    },
    /// Still throttled (429) after honouring `Retry-After` and retrying.
    #[error("{context}: throttled by key vault after retries: {cause}")]
    Throttled {
        /// Where.
        context: ErrorContext,
        /// The SDK's cause text.
        cause: String,
    },
    /// Key Vault or the network failed (5xx, connection, timeout) after retries.
    #[error("{context}: key vault unavailable: {cause}")]
    Unavailable {
        /// Where.
        context: ErrorContext,
        /// The SDK's cause text.
        cause: String,
    },
    /// Anything else (unexpected status or body).
    #[error("{context}: unexpected response: {cause}")]
    Unexpected {
        /// Where.
        context: ErrorContext,
        /// The SDK's cause text (omitted for body decoding errors, which could quote a value).
        cause: String,
    },
}

impl VaultError {
    /// Where it happened.
    pub fn context(&self) -> &ErrorContext {
        match self {
            Self::Config { context, .. }
            | Self::Auth { context, .. }
            | Self::Forbidden { context, .. }
            | Self::Disabled { context }
            | Self::NotFound { context }
            | Self::Throttled { context, .. }
            | Self::Unavailable { context, .. }
            | Self::Unexpected { context, .. } => context,
        }
    }

    /// Whether retrying later may succeed (throttling, outage).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Unavailable { .. })
    }
}
