//! Spec use cases: apply SecretStore / FleetSecret documents (all or nothing, or a dry run),
//! list stores with their last poll's health, list and delete FleetSecrets.

use std::collections::{BTreeSet, HashMap};

use super::{Admin, AdminError, invalid, not_found_fleet_secret, require_name};
use crate::spec::{self, Kind, Spec, SpecFile};
use crate::store::{ChangeKind, SpecAction, SpecKind, SpecOutcome, SpecWrite, StoredSpec};

/// Most files in one apply.
pub const MAX_APPLY_FILES: usize = 1_000;
/// Longest file name in an apply, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 1_024;

/// What an apply did (or would do) to one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedObject {
    /// Its kind.
    pub kind: SpecKind,
    /// Its name.
    pub name: String,
    /// Its generation after the apply.
    pub generation: u64,
    /// Created, configured or unchanged.
    pub action: SpecAction,
}

/// A SecretStore with its last poll's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreView {
    /// Name.
    pub name: String,
    /// Vault URL.
    pub vault_url: String,
    /// `authType`.
    pub auth_type: &'static str,
    /// Spec generation.
    pub generation: u64,
    /// The canonical YAML stored.
    pub spec_yaml: String,
    /// Whether the last poll succeeded (`false` when not polled yet).
    pub healthy: bool,
    /// Why the last poll failed, or "not polled yet".
    pub last_error: String,
}

/// A FleetSecret with its current revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSecretView {
    /// Name.
    pub name: String,
    /// Current revision (0: none yet).
    pub revision: u64,
    /// SecretStore it reads.
    pub store: String,
    /// Name of the Kubernetes Secret it writes.
    pub target_name: String,
    /// Type of that Secret.
    pub target_type: String,
    /// Spec generation.
    pub generation: u64,
    /// The canonical YAML stored.
    pub spec_yaml: String,
    /// Earliest Key Vault `exp` among the versions the current revision reads.
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

impl Admin {
    /// Parses and checks every document of `files` (SecretStores they name must exist or come
    /// with them) and stores them all in one transaction, or none; `dry_run` only says what it
    /// would do.
    pub async fn apply_specs(
        &self,
        actor: &str,
        files: Vec<SpecFile>,
        dry_run: bool,
    ) -> Result<Vec<AppliedObject>, AdminError> {
        if files.is_empty() {
            return Err(invalid("files", "at least one file is required"));
        }
        if files.len() > MAX_APPLY_FILES {
            return Err(invalid(
                "files",
                format!("at most {MAX_APPLY_FILES} files, got {}", files.len()),
            ));
        }
        if let Some((i, _)) = files
            .iter()
            .enumerate()
            .find(|(_, file)| file.name.is_empty() || file.name.len() > MAX_FILE_NAME_BYTES)
        {
            return Err(invalid(
                &format!("files[{i}].name"),
                format!("1-{MAX_FILE_NAME_BYTES} bytes"),
            ));
        }
        let stored = self.store.list_specs().await?;
        let known_stores: BTreeSet<String> = stored
            .iter()
            .filter(|spec| spec.kind == SpecKind::SecretStore)
            .map(|spec| spec.name.clone())
            .collect();
        let loaded =
            spec::parse_files(&files, &known_stores).map_err(|error| AdminError::Spec(error.to_string()))?;
        let current: HashMap<(SpecKind, &str), &StoredSpec> = stored
            .iter()
            .map(|spec| ((spec.kind, spec.name.as_str()), spec))
            .collect();
        let writes: Vec<SpecWrite<'_>> = loaded
            .iter()
            .map(|spec| SpecWrite {
                kind: spec_kind(spec.spec.kind()),
                name: spec.spec.name(),
                yaml: &spec.canonical_yaml,
            })
            .collect();
        let outcomes: Vec<SpecOutcome> = if dry_run {
            writes
                .iter()
                .map(|write| match current.get(&(write.kind, write.name)) {
                    None => SpecOutcome {
                        generation: 1,
                        action: SpecAction::Created,
                    },
                    Some(existing) if existing.yaml == write.yaml => SpecOutcome {
                        generation: existing.generation,
                        action: SpecAction::Unchanged,
                    },
                    Some(existing) => SpecOutcome {
                        generation: existing.generation + 1,
                        action: SpecAction::Configured,
                    },
                })
                .collect()
        } else {
            // All or nothing: the specs, their change-log rows and audit rows in one transaction.
            self.store.apply_specs(&writes, actor).await?
        };
        let mut objects = Vec::with_capacity(writes.len());
        let mut changed = false;
        for (write, outcome) in writes.iter().zip(&outcomes) {
            if !dry_run && outcome.action != SpecAction::Unchanged {
                tracing::info!(
                    actor,
                    action = outcome.action.as_str(),
                    subject = %write.subject(),
                    generation = outcome.generation,
                    "spec applied"
                );
                changed = true;
            }
            objects.push(AppliedObject {
                kind: write.kind,
                name: write.name.to_owned(),
                generation: outcome.generation,
                action: outcome.action,
            });
        }
        if changed {
            self.control.changed().await;
        }
        Ok(objects)
    }

    /// Every SecretStore with its last poll's health, by name.
    pub async fn list_stores(&self) -> Result<Vec<StoreView>, AdminError> {
        let health = self.control.store_health().await;
        let mut stores = Vec::new();
        for stored in self.store.list_specs().await? {
            if stored.kind != SpecKind::SecretStore {
                continue;
            }
            let Ok(Spec::SecretStore(store)) =
                spec::parse_stored(Kind::SecretStore, &stored.name, &stored.yaml)
            else {
                return Err(AdminError::Corrupt(format!(
                    "stored SecretStore {:?} does not parse",
                    stored.name
                )));
            };
            let health = health.get(&stored.name);
            stores.push(StoreView {
                vault_url: store.vault_url.to_string(),
                auth_type: store.auth.as_str(),
                generation: stored.generation,
                healthy: health.is_some_and(|health| health.healthy),
                last_error: match health {
                    Some(health) => health.last_error.clone(),
                    None => "not polled yet".to_owned(),
                },
                name: stored.name,
                spec_yaml: stored.yaml,
            });
        }
        stores.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(stores)
    }

    /// Every FleetSecret with its current revision, by name.
    pub async fn list_fleet_secrets(&self) -> Result<Vec<FleetSecretView>, AdminError> {
        let revisions = self.current_revisions().await?;
        let mut expires: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> =
            std::collections::HashMap::new();
        for served in self.store.served_versions().await? {
            if let Some(at) = served.expires {
                let earliest = expires.entry(served.fleet_secret).or_insert(at);
                *earliest = (*earliest).min(at);
            }
        }
        Ok(self
            .fleet_secrets()
            .await?
            .into_iter()
            .map(|(name, (stored, secret))| FleetSecretView {
                revision: revisions.get(&name).copied().unwrap_or(0),
                store: secret.store_ref.clone(),
                target_name: secret.target.name.clone(),
                target_type: secret.target.secret_type.clone(),
                generation: stored.generation,
                spec_yaml: stored.yaml,
                expires: expires.get(&name).copied(),
                name,
            })
            .collect())
    }

    /// Deletes a FleetSecret and its pins; clusters then remove it per its deletionPolicy.
    pub async fn delete_fleet_secret(&self, actor: &str, name: &str) -> Result<(), AdminError> {
        require_name("name", name)?;
        if !self.store.delete_spec(SpecKind::FleetSecret, name).await? {
            return Err(not_found_fleet_secret(name));
        }
        self.store.remove_pins(name, None).await?;
        self.record(
            actor,
            Some(ChangeKind::Spec),
            "fleetsecret.delete",
            &format!("fleetsecret/{name}"),
        )
        .await
    }
}

impl Admin {
    /// Deletes a SecretStore no FleetSecret reads; the engine then drops its poller.
    pub async fn delete_store(&self, actor: &str, name: &str) -> Result<(), AdminError> {
        require_name("name", name)?;
        let readers: Vec<String> = self
            .fleet_secrets()
            .await?
            .into_iter()
            .filter(|(_, (_, secret))| secret.store_ref == name)
            .map(|(secret, _)| secret)
            .collect();
        if !readers.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "secretstore {name:?} is read by fleetsecret(s) {}: delete or move them first",
                readers.join(", ")
            )));
        }
        if !self.store.delete_spec(SpecKind::SecretStore, name).await? {
            return Err(AdminError::NotFound(format!("secretstore {name:?} not found")));
        }
        self.record(
            actor,
            Some(ChangeKind::Spec),
            "secretstore.delete",
            &format!("secretstore/{name}"),
        )
        .await
    }
}

fn spec_kind(kind: Kind) -> SpecKind {
    match kind {
        Kind::SecretStore => SpecKind::SecretStore,
        Kind::FleetSecret => SpecKind::FleetSecret,
    }
}
