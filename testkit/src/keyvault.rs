//! An Azure Key Vault (secrets data plane) + Entra emulator over HTTPS, faithful enough for the
//! official SDKs (proven by `scripts/conformance/keyvault.sh` with the Python SDK and by the hub's
//! tests with the Rust crates).
//!
//! One HTTPS port serves both roles, dispatching on the path:
//! - vault: `/secrets…`, `/deletedsecrets…` (challenge auth, api-version checked, paging, soft delete),
//!   `/certificates…` (get a version, list, import; each certificate version keeps its key and
//!   certificate in a companion secret of the same name and version, as Key Vault does);
//! - Entra: `/{tenant}/oauth2/v2.0/token` (client secret and federated `client_assertion`),
//!   `/{tenant}/v2.0/.well-known/openid-configuration`, and the managed identity endpoint
//!   `azure_identity` uses through `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (`/msi/token`);
//! - admin: `/_emulator/faults`, `/_emulator/counters`, `/_emulator/federated-token`.
//!
//! Secret values are held in `Zeroizing` strings and never logged.

mod auth;
mod certificates;
mod config;
mod error;
mod faults;
mod http;
mod shared;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use zeroize::Zeroizing;

pub use auth::{
    DEFAULT_FEDERATED_ISSUER, DEFAULT_FEDERATED_SUBJECT, FEDERATED_AUDIENCE, Federated, ManagedIdentity,
    Permission, Principal, VAULT_RESOURCE,
};
pub use certificates::{PEM_CONTENT_TYPE, PFX_CONTENT_TYPE, TestCertificate};
pub use config::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, KeyVaultConfig};
pub use error::Error;
pub use faults::{CounterRow, Counters, FaultSpec, Faults, Outcome, RetryAfter};
pub use store::{Attributes, MAX_PAGE, MAX_VALUE_BYTES, ServiceError};

use shared::Shared;

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
        let shared = Arc::new(Shared::new(config, base.clone()));
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

    /// Imports a new version of certificate `name` (as `POST /certificates/{name}/import`) from
    /// PEM text (private key and certificates) or PFX bytes (empty password), and returns its
    /// version id. Key Vault keeps the key and certificate in the companion secret `name` at the
    /// same version (`contentType` `application/x-pem-file` or `application/x-pkcs12`, base64
    /// PFX), with the certificate's validity as `nbf`/`exp`.
    pub fn set_certificate(&self, name: &str, pem_or_pfx: &[u8]) -> Result<String, ServiceError> {
        let imported = certificates::import(pem_or_pfx, "").map_err(ServiceError::bad_parameter)?;
        let version =
            self.shared
                .vault()
                .set_certificate(name, imported, BTreeMap::new(), self.shared.now())?;
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
