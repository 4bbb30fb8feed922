//! SecretStore rules: the vault URL, the authentication type and the fields it takes, the cloud,
//! the poll interval and the Key Vault rate limit.

use std::path::PathBuf;
use std::time::Duration;

use super::names::{dns_label_message, is_dns1123_label, is_vault_name};
use super::{Ctx, raw};
use crate::spec::{self, AuthType, AzureEnvironment, CredentialSource, SecretStoreSpec};

impl Ctx<'_> {
    /// A `kind: SecretStore` document → its checked spec (`None` when a part cannot be built).
    pub(super) fn secret_store(&mut self, name: &str, raw: &raw::SecretStoreSpec) -> Option<SecretStoreSpec> {
        if !is_dns1123_label(name) {
            self.issue_at("metadata.name", dns_label_message(name));
        }
        let Some(azure) = &raw.provider.azurekv else {
            self.issue("provider", "exactly one provider is required: azurekv");
            return None;
        };
        let vault_url = self.vault_url(&azure.vault_url);
        let auth = self.auth(azure);
        let environment = match azure.environment_type.as_deref() {
            None | Some("PublicCloud") => AzureEnvironment::PublicCloud,
            Some("USGovernmentCloud") => AzureEnvironment::UsGovernmentCloud,
            Some("ChinaCloud") => AzureEnvironment::ChinaCloud,
            Some(other) => {
                self.issue(
                    "provider.azurekv.environmentType",
                    format!("unknown value {other:?}, expected PublicCloud|USGovernmentCloud|ChinaCloud"),
                );
                AzureEnvironment::PublicCloud
            }
        };
        let poll_interval = match azure.poll_interval.as_deref() {
            None => spec::DEFAULT_POLL_INTERVAL,
            Some(text) => match humantime::parse_duration(text) {
                Ok(interval)
                    if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&interval) =>
                {
                    interval
                }
                Ok(_) => {
                    self.issue("provider.azurekv.pollInterval", "must be between 1s and 24h");
                    spec::DEFAULT_POLL_INTERVAL
                }
                Err(_) => {
                    self.issue(
                        "provider.azurekv.pollInterval",
                        format!("invalid duration {text:?}, expected e.g. 30s or 5m"),
                    );
                    spec::DEFAULT_POLL_INTERVAL
                }
            },
        };
        let (rate_per_second, rate_burst) = match &azure.rate_limit {
            None => (spec::DEFAULT_RATE_PER_SECOND, spec::DEFAULT_RATE_PER_SECOND * 2),
            Some(limit) => {
                // Key Vault allows 4,000 secret transactions per 10 s per vault: 400/s.
                if !(1..=400).contains(&limit.per_second) {
                    self.issue(
                        "provider.azurekv.rateLimit.perSecond",
                        "must be between 1 and 400",
                    );
                }
                let burst = limit.burst.unwrap_or(limit.per_second.saturating_mul(2));
                if limit.burst.is_some() && (burst < limit.per_second || burst > 4_000) {
                    self.issue(
                        "provider.azurekv.rateLimit.burst",
                        "must be between perSecond and 4000",
                    );
                }
                (limit.per_second, burst)
            }
        };
        Some(SecretStoreSpec {
            name: name.to_owned(),
            vault_url: vault_url?,
            auth: auth?,
            environment,
            poll_interval,
            rate_per_second,
            rate_burst,
        })
    }

    fn vault_url(&mut self, text: &str) -> Option<url::Url> {
        let path = "provider.azurekv.vaultUrl";
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            Err(error) => {
                self.issue(path, format!("invalid URL {text:?}: {error}"));
                return None;
            }
        };
        if url.scheme() != "https" {
            self.issue(path, "must be an https:// URL");
            return None;
        }
        if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
            self.issue(path, "must be the vault's base URL, without path or query");
            return None;
        }
        let host = url.host_str().unwrap_or_default();
        for suffix in [".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net"] {
            if let Some(vault) = host.strip_suffix(suffix)
                && !is_vault_name(vault)
            {
                self.issue(
                    path,
                    format!(
                        "invalid Key Vault name {vault:?}: 3-24 characters of a-z, 0-9 and -, starting with a letter, \
                         not ending with - and without --"
                    ),
                );
                return None;
            }
        }
        Some(url)
    }

    fn auth(&mut self, azure: &raw::AzureKv) -> Option<AuthType> {
        let base = "provider.azurekv";
        let auth_type = azure.auth_type.as_deref().unwrap_or("WorkloadIdentity");
        let unexpected = |ctx: &mut Self, field: &str, present: bool| {
            if present {
                ctx.issue(
                    &format!("{base}.{field}"),
                    format!("not used with authType {auth_type}"),
                );
            }
        };
        match auth_type {
            "WorkloadIdentity" => {
                unexpected(self, "identityId", azure.identity_id.is_some());
                unexpected(self, "clientSecret", azure.client_secret.is_some());
                Some(AuthType::WorkloadIdentity {
                    tenant_id: azure.tenant_id.clone(),
                    client_id: azure.client_id.clone(),
                })
            }
            "ManagedIdentity" => {
                unexpected(self, "tenantId", azure.tenant_id.is_some());
                unexpected(self, "clientId", azure.client_id.is_some());
                unexpected(self, "clientSecret", azure.client_secret.is_some());
                Some(AuthType::ManagedIdentity {
                    identity_id: azure.identity_id.clone(),
                })
            }
            "ServicePrincipal" => {
                unexpected(self, "identityId", azure.identity_id.is_some());
                let missing = |ctx: &mut Self, field: &str, value: Option<&String>| -> Option<String> {
                    if value.is_none() {
                        ctx.issue(base, format!("{field}: required with authType ServicePrincipal"));
                    }
                    value.cloned()
                };
                let tenant_id = missing(self, "tenantId", azure.tenant_id.as_ref());
                let client_id = missing(self, "clientId", azure.client_id.as_ref());
                let client_secret = match &azure.client_secret {
                    None => {
                        self.issue(
                            base,
                            "clientSecret: required with authType ServicePrincipal (env or file)",
                        );
                        None
                    }
                    Some(raw::SecretSourceRef {
                        env: Some(env),
                        file: None,
                    }) => Some(CredentialSource::Env(env.clone())),
                    Some(raw::SecretSourceRef {
                        env: None,
                        file: Some(file),
                    }) => Some(CredentialSource::File(PathBuf::from(file))),
                    Some(_) => {
                        self.issue(
                            &format!("{base}.clientSecret"),
                            "exactly one of env, file is required",
                        );
                        None
                    }
                };
                Some(AuthType::ServicePrincipal {
                    tenant_id: tenant_id?,
                    client_id: client_id?,
                    client_secret: client_secret?,
                })
            }
            "AzureCli" => {
                unexpected(self, "identityId", azure.identity_id.is_some());
                unexpected(self, "clientSecret", azure.client_secret.is_some());
                Some(AuthType::AzureCli)
            }
            other => {
                self.issue(
                    &format!("{base}.authType"),
                    format!("unknown value {other:?}, expected WorkloadIdentity|ManagedIdentity|ServicePrincipal|AzureCli"),
                );
                None
            }
        }
    }
}
