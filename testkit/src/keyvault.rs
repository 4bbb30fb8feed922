//! An Azure Key Vault (secrets data plane) + Entra emulator over HTTPS, faithful enough for the
//! official SDKs (proven by `scripts/conformance/keyvault.sh` with the Python SDK and by the hub's
//! tests with the Rust crates).
//!
//! One HTTPS port serves both roles, dispatching on the path:
//! - vault: `/secrets…`, `/deletedsecrets…` (challenge auth, api-version checked, paging, soft delete);
//! - Entra: `/{tenant}/oauth2/v2.0/token` (client secret and federated `client_assertion`),
//!   `/{tenant}/v2.0/.well-known/openid-configuration`, and the managed identity endpoint
//!   `azure_identity` uses through `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (`/msi/token`);
//! - admin: `/_emulator/faults`, `/_emulator/counters`, `/_emulator/federated-token`.
//!
//! Secret values are held in `Zeroizing` strings and never logged.

mod auth;
mod faults;
mod http;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

pub use auth::{
    DEFAULT_FEDERATED_ISSUER, DEFAULT_FEDERATED_SUBJECT, FEDERATED_AUDIENCE, Federated, ManagedIdentity,
    Permission, Principal, VAULT_RESOURCE,
};
pub use faults::{CounterRow, Counters, FaultSpec, Faults, Outcome, RetryAfter};
pub use store::{Attributes, MAX_PAGE, MAX_VALUE_BYTES, ServiceError};

/// Default tenant.
pub const DEFAULT_TENANT: &str = "keyfleet-test";
/// Default client id.
pub const DEFAULT_CLIENT_ID: &str = "keyfleet-hub";
/// Default client secret.
pub const DEFAULT_CLIENT_SECRET: &str = "keyfleet-hub-secret";
/// api-versions the vault accepts: the current service version and those the SDKs send.
pub const API_VERSIONS: &[&str] = &[
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "2025-07-01",
    "2026-04-01",
];

/// Errors starting the emulator or loading its configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener failed.
    #[error("bind {addr}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The test CA or certificate could not be made.
    #[error("test certificate")]
    Tls(#[from] crate::tls::Error),
    /// The principals file could not be read.
    #[error("read principals file {path}")]
    ReadPrincipals {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The principals file is not valid.
    #[error("parse principals file {path}")]
    ParsePrincipals {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: serde_yaml::Error,
    },
}

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct KeyVaultConfig {
    /// Listen address; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The one tenant.
    pub tenant: String,
    /// Applications of the tenant.
    pub principals: Vec<Principal>,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
    /// The value the managed identity endpoint expects in `x-identity-header`.
    pub identity_header: String,
}

impl Default for KeyVaultConfig {
    /// Tenant `keyfleet-test`; principal `keyfleet-hub` with secret `keyfleet-hub-secret`, the default
    /// federated subject, usable as a user-assigned managed identity, with every permission.
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenant: DEFAULT_TENANT.to_owned(),
            principals: vec![
                Principal::with_secret(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
                    .federated(DEFAULT_FEDERATED_ISSUER, DEFAULT_FEDERATED_SUBJECT)
                    .managed(ManagedIdentity::UserAssigned),
            ],
            token_lifetime: Duration::from_secs(3600),
            identity_header: "keyfleet-identity-header".to_owned(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    tenant: Option<String>,
    principals: Vec<Principal>,
}

impl KeyVaultConfig {
    /// Replaces tenant and principals with those of a YAML/JSON file
    /// (`{tenant?: str, principals: [{clientId, clientSecret?, federated?, managedIdentity?, permissions?}]}`).
    pub fn with_principals_file(mut self, path: &Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadPrincipals {
            path: shown.clone(),
            source,
        })?;
        let file: PrincipalsFile =
            serde_yaml::from_str(&text).map_err(|source| Error::ParsePrincipals { path: shown, source })?;
        if let Some(tenant) = file.tenant {
            self.tenant = tenant;
        }
        self.principals = file.principals;
        Ok(self)
    }
}

pub(crate) struct Shared {
    config: KeyVaultConfig,
    /// Seconds added to the wall clock for the vault's timestamps (tests shift it).
    clock_offset: std::sync::atomic::AtomicI64,
    vault: Mutex<store::Vault>,
    faults: Faults,
    counters: faults::CounterSet,
    signer: auth::Signer,
    /// `https://127.0.0.1:PORT` (no trailing slash).
    base: String,
}

impl Shared {
    /// The vault's clock (unix seconds): wall clock plus the test offset.
    fn now(&self) -> i64 {
        auth::now() + self.clock_offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn vault(&self) -> std::sync::MutexGuard<'_, store::Vault> {
        self.vault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts emulators.
pub struct KeyVaultEmulator;

impl KeyVaultEmulator {
    /// Generates a CA and a certificate for `127.0.0.1`/`localhost`, binds, and serves until the
    /// handle is shut down or dropped.
    pub async fn start(config: KeyVaultConfig) -> Result<KeyVaultHandle, Error> {
        let ca = crate::tls::TestCa::generate("keyfleet keyvault emulator ca")?;
        let cert = ca.issue(&["127.0.0.1", "localhost"])?;
        let tls = cert.server_config(&[b"h2", b"http/1.1"])?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let base = format!("https://{addr}");
        let shared = Arc::new(Shared {
            config,
            clock_offset: std::sync::atomic::AtomicI64::new(0),
            vault: Mutex::new(store::Vault::default()),
            faults: Faults::default(),
            counters: faults::CounterSet::default(),
            signer: auth::Signer::random(),
            base: base.clone(),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(http::serve(listener, tls, Arc::clone(&shared), stopped));
        tracing::info!(%addr, "key vault emulator listening");
        Ok(KeyVaultHandle {
            shared,
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            vault_url: url::Url::parse(&format!("{base}/")).unwrap_or_else(|_| unreachable!()),
            authority_url: url::Url::parse(&base).unwrap_or_else(|_| unreachable!()),
            stop,
            task: Some(task),
        })
    }
}

/// A running emulator. Dropping it stops the server.
pub struct KeyVaultHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    vault_url: url::Url,
    authority_url: url::Url,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl KeyVaultHandle {
    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT/`.
    pub fn vault_url(&self) -> &url::Url {
        &self.vault_url
    }

    /// `https://127.0.0.1:PORT` (the Entra authority host).
    pub fn authority_url(&self) -> &url::Url {
        &self.authority_url
    }

    /// The managed identity endpoint (`IDENTITY_ENDPOINT`).
    pub fn identity_endpoint(&self) -> url::Url {
        url::Url::parse(&format!("{}/msi/token", self.shared.base)).unwrap_or_else(|_| unreachable!())
    }

    /// The value the managed identity endpoint expects (`IDENTITY_HEADER`).
    pub fn identity_header(&self) -> &str {
        &self.shared.config.identity_header
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.shared.config.tenant
    }

    /// The test CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Creates a new version of `name` (as `PUT /secrets/{name}`) and returns its version id.
    pub fn set_secret(&self, name: &str, value: &str, tags: &[(&str, &str)]) -> Result<String, ServiceError> {
        let tags = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>();
        self.set_secret_with(
            name,
            value,
            Attributes {
                tags: Some(tags),
                ..Attributes::default()
            },
        )
    }

    /// Creates a new version with any attributes.
    pub fn set_secret_with(
        &self,
        name: &str,
        value: &str,
        attributes: Attributes,
    ) -> Result<String, ServiceError> {
        let version = self.shared.vault().set(
            name,
            Zeroizing::new(value.to_owned()),
            attributes,
            self.shared.now(),
        )?;
        Ok(version.id)
    }

    /// Updates attributes of a version (the latest when `None`), as `PATCH`.
    pub fn update_secret(
        &self,
        name: &str,
        version: Option<&str>,
        attributes: Attributes,
    ) -> Result<(), ServiceError> {
        self.shared
            .vault()
            .update(name, version, attributes, self.shared.now())
            .map(drop)
    }

    /// Enables or disables one version.
    pub fn set_enabled(&self, name: &str, version: &str, enabled: bool) -> Result<(), ServiceError> {
        self.update_secret(
            name,
            Some(version),
            Attributes {
                enabled: Some(enabled),
                ..Attributes::default()
            },
        )
    }

    /// Soft-deletes a secret.
    pub fn delete_secret(&self, name: &str) -> Result<(), ServiceError> {
        self.shared.vault().delete(name, self.shared.now()).map(drop)
    }

    /// Shifts the vault's clock (`created`/`updated` of later writes) by `seconds`; tokens keep
    /// the wall clock.
    pub fn shift_clock(&self, seconds: i64) {
        self.shared
            .clock_offset
            .fetch_add(seconds, std::sync::atomic::Ordering::Relaxed);
    }

    /// A snapshot of the call counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    /// Zeroes the call counters.
    pub fn reset_counters(&self) {
        self.shared.counters.reset();
    }

    /// The fault plan.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// A service-account token for `subject` from `issuer`, audience `api://AzureADTokenExchange`,
    /// valid for an hour, signed so that this emulator accepts it as a federated `client_assertion`.
    pub fn mint_federated_token(&self, issuer: &str, subject: &str) -> String {
        auth::mint_assertion(&self.shared.signer, issuer, subject, Duration::from_secs(3600))
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for KeyVaultHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
