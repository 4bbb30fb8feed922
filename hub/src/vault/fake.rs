//! An in-memory [`SecretSource`] for tests (the `test-util` feature): versions with values, tags
//! and creation times one second apart, every call counted by operation, and a switch that makes
//! every call fail as an unreachable Key Vault would. [`FakeSources`] hands it to the sync engine
//! in place of Azure, so engine tests run without HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    ErrorContext, FetchedSecret, Operation, SecretInfo, SecretSource, SourceFactory, VaultError, VersionInfo,
};
use crate::domain::SecretValue;
use crate::spec::SecretStoreSpec;

/// An in-memory Key Vault.
#[derive(Debug)]
pub struct FakeVault {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    secrets: BTreeMap<String, Vec<Version>>,
    calls: BTreeMap<Operation, u32>,
    down: bool,
    clock: DateTime<Utc>,
    next_version: u64,
}

#[derive(Debug, Clone)]
struct Version {
    id: String,
    value: SecretValue,
    enabled: bool,
    tags: BTreeMap<String, String>,
    created: DateTime<Utc>,
}

impl Default for FakeVault {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                secrets: BTreeMap::new(),
                calls: BTreeMap::new(),
                down: false,
                // Key Vault's times have one-second resolution: start on a whole second.
                clock: DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_else(Utc::now),
                next_version: 1,
            }),
        }
    }
}

impl FakeVault {
    /// Writes a new enabled version of `name` (one second after the previous write) and returns
    /// its id: 32 hexadecimal characters, as Key Vault's are.
    pub fn set(&self, name: &str, value: &[u8]) -> String {
        let mut state = self.lock();
        state.clock += TimeDelta::seconds(1);
        let id = format!("{:032x}", state.next_version);
        state.next_version += 1;
        let created = state.clock;
        state.secrets.entry(name.to_owned()).or_default().push(Version {
            id: id.clone(),
            value: SecretValue::new(value.to_vec()),
            enabled: true,
            tags: BTreeMap::new(),
            created,
        });
        id
    }

    /// Makes every call fail as `Unavailable` (`true`) or answer again (`false`).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Calls made of `operation` so far.
    pub fn calls(&self, operation: Operation) -> u32 {
        self.lock().calls.get(&operation).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call; refuses it while down.
    fn call(&self, operation: Operation, secret: Option<&str>) -> Result<MutexGuard<'_, State>, VaultError> {
        let mut state = self.lock();
        *state.calls.entry(operation).or_default() += 1;
        if state.down {
            return Err(VaultError::Unavailable {
                context: context(operation, secret),
                cause: "the fake vault is down".to_owned(),
            });
        }
        Ok(state)
    }
}

fn context(operation: Operation, secret: Option<&str>) -> ErrorContext {
    ErrorContext {
        store: "fake".to_owned(),
        vault: "https://fake.vault.test/".to_owned(),
        operation,
        secret: secret.map(str::to_owned),
        auth_type: "WorkloadIdentity",
    }
}

#[async_trait::async_trait]
impl SecretSource for FakeVault {
    async fn get(&self, name: &str, version: Option<&str>) -> Result<FetchedSecret, VaultError> {
        let state = self.call(Operation::Get, Some(name))?;
        let versions = state.secrets.get(name);
        let found = match version {
            Some(wanted) => versions.and_then(|all| all.iter().find(|v| v.id == wanted)),
            None => versions.and_then(|all| all.last()),
        }
        .ok_or_else(|| VaultError::NotFound {
            context: context(Operation::Get, Some(name)),
        })?;
        if !found.enabled {
            return Err(VaultError::Disabled {
                context: context(Operation::Get, Some(name)),
            });
        }
        Ok(FetchedSecret {
            version: found.id.clone(),
            value: found.value.clone(),
            enabled: found.enabled,
            content_type: None,
            tags: found.tags.clone(),
            created: Some(found.created),
            updated: Some(found.created),
            expires: None,
            not_before: None,
        })
    }

    async fn list_secrets(&self) -> Result<Vec<SecretInfo>, VaultError> {
        let state = self.call(Operation::ListSecrets, None)?;
        Ok(state
            .secrets
            .iter()
            .filter_map(|(name, versions)| {
                let latest = versions.last()?;
                Some(SecretInfo {
                    name: name.clone(),
                    tags: latest.tags.clone(),
                    enabled: latest.enabled,
                    updated: Some(latest.created),
                })
            })
            .collect())
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>, VaultError> {
        let state = self.call(Operation::ListVersions, Some(name))?;
        Ok(state
            .secrets
            .get(name)
            .map(|versions| {
                versions
                    .iter()
                    .map(|version| VersionInfo {
                        version: version.id.clone(),
                        enabled: version.enabled,
                        created: Some(version.created),
                        updated: Some(version.created),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A [`SourceFactory`] that gives every SecretStore the same [`FakeVault`].
#[derive(Debug, Clone, Default)]
pub struct FakeSources(pub Arc<FakeVault>);

impl SourceFactory for FakeSources {
    fn source(&self, _spec: &SecretStoreSpec) -> Result<Arc<dyn SecretSource>, VaultError> {
        Ok(Arc::clone(&self.0) as Arc<dyn SecretSource>)
    }
}
