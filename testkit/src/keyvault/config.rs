//! How to run the emulator: listen address, tenant, principals and token lifetime, with the
//! defaults the hub's tests and the loadtest rely on, or a principals file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::auth::{DEFAULT_FEDERATED_ISSUER, DEFAULT_FEDERATED_SUBJECT, ManagedIdentity, Principal};
use super::error::Error;

/// Default tenant.
pub const DEFAULT_TENANT: &str = "keyfleet-test";
/// Default client id.
pub const DEFAULT_CLIENT_ID: &str = "keyfleet-hub";
/// Default client secret.
pub const DEFAULT_CLIENT_SECRET: &str = "keyfleet-hub-secret";

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
