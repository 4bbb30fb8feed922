//! Rollout use cases: pause and resume a FleetSecret's rollout, pin and unpin Key Vault
//! versions (a rollback is a pin), and sync-now (poll Key Vault at once).

use super::status::FleetSecretStatus;
use super::{Admin, AdminError, invalid, require_name};
use crate::store::{ChangeKind, RolloutRecord, SpecKind};
use crate::sync::control::SyncNowOutcome;
use crate::sync::plan;

impl Admin {
    /// Pauses (`true`) or resumes the rollout of the current revision of `name`.
    pub async fn set_paused(
        &self,
        actor: &str,
        name: &str,
        paused: bool,
    ) -> Result<FleetSecretStatus, AdminError> {
        require_name("fleet_secret", name)?;
        let (_, secret) = self.fleet_secret(name).await?;
        if secret.rollout.is_none() {
            return Err(AdminError::FailedPrecondition(format!(
                "fleetsecret {name:?} has no rollout strategy (it is applied everywhere at once)"
            )));
        }
        let revision = self
            .store
            .latest_revisions()
            .await?
            .into_iter()
            .find(|revision| revision.fleet_secret == name)
            .ok_or_else(|| {
                AdminError::FailedPrecondition(format!(
                    "fleetsecret {name:?} has no revision yet: nothing is rolling out"
                ))
            })?;
        let existing = self
            .store
            .rollouts()
            .await?
            .into_iter()
            .find(|record| record.fleet_secret == name && record.revision == revision.revision);
        let record = RolloutRecord {
            fleet_secret: name.to_owned(),
            revision: revision.revision,
            current_wave: existing.as_ref().map_or(0, |record| record.current_wave),
            paused,
            reason: if paused {
                plan::MANUAL_PAUSE_REASON.to_owned()
            } else {
                String::new()
            },
        };
        self.store.set_rollout(&record).await?;
        let action = if paused { "rollout.pause" } else { "rollout.resume" };
        self.record(
            actor,
            Some(ChangeKind::Rollout),
            action,
            &format!("fleetsecret/{name}"),
        )
        .await?;
        self.status_of(name).await
    }

    /// Pins `remote_key` of `fleet_secret` (may be empty when it reads one key) to `version`.
    pub async fn pin_version(
        &self,
        actor: &str,
        fleet_secret: &str,
        remote_key: &str,
        version: &str,
    ) -> Result<FleetSecretStatus, AdminError> {
        require_name("fleet_secret", fleet_secret)?;
        if !is_version_id(version) {
            return Err(invalid(
                "version",
                format!("{version:?} is not a Key Vault version id (32 hexadecimal characters)"),
            ));
        }
        let (_, secret) = self.fleet_secret(fleet_secret).await?;
        let keys = secret.remote_keys();
        let remote_key = if remote_key.is_empty() {
            match keys.as_slice() {
                [only] => (*only).to_owned(),
                _ => {
                    return Err(invalid(
                        "remote_key",
                        format!(
                            "required: fleetsecret {fleet_secret:?} reads {} Key Vault secrets ({})",
                            keys.len(),
                            keys.join(", ")
                        ),
                    ));
                }
            }
        } else if keys.contains(&remote_key) {
            remote_key.to_owned()
        } else {
            return Err(invalid(
                "remote_key",
                format!(
                    "fleetsecret {fleet_secret:?} does not read {remote_key:?} (it reads {})",
                    keys.join(", ")
                ),
            ));
        };
        self.store.set_pin(fleet_secret, &remote_key, version).await?;
        self.record(
            actor,
            Some(ChangeKind::Pin),
            "pin.set",
            &format!("fleetsecret/{fleet_secret}/{remote_key}"),
        )
        .await?;
        self.status_of(fleet_secret).await
    }

    /// Removes the pin on `remote_key` (every pin of the FleetSecret when `None`).
    pub async fn unpin_version(
        &self,
        actor: &str,
        fleet_secret: &str,
        remote_key: Option<&str>,
    ) -> Result<FleetSecretStatus, AdminError> {
        require_name("fleet_secret", fleet_secret)?;
        self.fleet_secret(fleet_secret).await?;
        let removed = self.store.remove_pins(fleet_secret, remote_key).await?;
        if removed == 0 {
            return Err(AdminError::NotFound(match remote_key {
                Some(key) => format!("fleetsecret {fleet_secret:?} has no pin on {key:?}"),
                None => format!("fleetsecret {fleet_secret:?} has no pin"),
            }));
        }
        let subject = match remote_key {
            Some(key) => format!("fleetsecret/{fleet_secret}/{key}"),
            None => format!("fleetsecret/{fleet_secret}"),
        };
        self.record(actor, Some(ChangeKind::Pin), "pin.remove", &subject)
            .await?;
        self.status_of(fleet_secret).await
    }

    /// Polls one SecretStore (all when `None`) now, through the engine.
    pub async fn sync_now(&self, actor: &str, store: Option<String>) -> Result<SyncNowOutcome, AdminError> {
        if let Some(name) = &store {
            let known = self
                .store
                .list_specs()
                .await?
                .iter()
                .any(|spec| spec.kind == SpecKind::SecretStore && spec.name == *name);
            if !known {
                return Err(AdminError::NotFound(format!("store {name:?} not found")));
            }
        }
        let subject = store.as_ref().map_or_else(
            || "secretstore/*".to_owned(),
            |name| format!("secretstore/{name}"),
        );
        let outcome = self.control.sync_now(store).await?;
        self.record(actor, None, "sync-now", &subject).await?;
        Ok(outcome)
    }
}

/// 32 hexadecimal characters, as Key Vault version ids are.
fn is_version_id(version: &str) -> bool {
    version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::is_version_id;

    #[test]
    fn version_ids_are_32_hex_characters() {
        assert!(is_version_id(&"a".repeat(32)));
        assert!(!is_version_id(&"a".repeat(31)));
        assert!(!is_version_id(&"g".repeat(32)));
    }
}
