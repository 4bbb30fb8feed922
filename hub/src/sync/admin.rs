//! The Admin use cases behind the CLI: inventory and enrollment tokens (`clusters.rs`), specs
//! (`specs.rs`), status views (`status.rs`), rollouts, pins and sync-now (`rollouts.rs`), history,
//! drift, audit, rollout history and undo (`history.rs`), over the
//! store and the running engine ([`HubControl`]). They take checked domain input and return
//! domain views; the gRPC `Admin` service only checks the wire input, calls and converts.
//!
//! **Invariants:**
//! - Every mutation writes the store, appends a change and an audit event (the actor, action and
//!   subject: names only, never a value), then calls [`HubControl::changed`] so the running hub
//!   reacts at once. Applying specs writes its specs, changes and audit events in one transaction.
//! - Enrollment tokens are `kfe_` + 43 base64url characters from 32 random bytes; only their
//!   SHA-256 is stored, and the token is returned once.
//! - Bad input is [`AdminError::Invalid`] naming the field; an unknown name is
//!   [`AdminError::NotFound`].

mod clusters;
mod governance;
mod history;
mod rollouts;
mod specs;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeDelta, Utc};

use crate::spec::{self, FleetSecretSpec, Kind, Spec};
use crate::store::{ChangeKind, SpecKind, Store, StoreError, StoredSpec};
use crate::sync::control::{ControlError, HubControl};
use crate::sync::engine::Connectivity;

pub use clusters::{
    ClusterDetail, DEFAULT_TOKEN_TTL_SECONDS, ENROLLMENT_TOKEN_PREFIX, IssuedToken, MAX_LABELS,
    MAX_TOKEN_TTL_SECONDS, MIN_TOKEN_TTL_SECONDS, new_enrollment_token,
};
pub use governance::{
    Condition, ConditionKind, DEFAULT_NEAR_EXPIRY_THRESHOLD, GovernanceView, LAGGING_AFTER, SourceView,
    earliest_expiry, validity_conditions,
};
pub use history::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, RevisionHistory, RolloutHistory};
pub use specs::{AppliedObject, FleetSecretView, MAX_APPLY_FILES, MAX_FILE_NAME_BYTES, StoreView};
pub use status::{
    ClusterSecretView, DEFAULT_LAGGING_LIMIT, FleetSecretStatus, MAX_LAGGING_LIMIT, RolloutView,
    SecretCounts, ViewState,
};

/// How long a disconnected cluster holds a rollout wave back in the status these views report
/// (see [`crate::sync::plan`]); the engine's default, change both with [`Admin::with_offline_grace`].
pub const OFFLINE_GRACE: TimeDelta = TimeDelta::minutes(5);

/// Why an Admin use case refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A field of the request is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as the request names it.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Spec documents were refused (every problem, `file:line: field.path: message`).
    #[error("{0}")]
    Spec(String),
    /// No such cluster, FleetSecret, store or pin.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A stored spec no longer parses.
    #[error("{0}")]
    Corrupt(String),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// The running engine refused.
    #[error("engine")]
    Control(#[from] ControlError),
}

/// An invalid field.
pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid {
        field: field.to_owned(),
        message: message.to_string(),
    }
}

/// A required name.
pub(crate) fn require_name(field: &str, name: &str) -> Result<(), AdminError> {
    if name.is_empty() {
        return Err(invalid(field, "required"));
    }
    Ok(())
}

/// The Admin use cases over a store and the running engine.
#[derive(Clone)]
pub struct Admin {
    store: Store,
    control: Arc<dyn HubControl>,
    connectivity: Connectivity,
    /// `NearExpiry` threshold of FleetSecrets that set none.
    near_expiry: std::time::Duration,
    /// The status views last computed, reused while the store's inputs stand still.
    status_cache: Arc<tokio::sync::Mutex<status::StatusCache>>,
    /// FleetSecrets parsed before, by name, with the text they were parsed from.
    parsed: Arc<std::sync::Mutex<ParsedSpecs>>,
}

/// FleetSecrets parsed from the store, by name, each with the canonical YAML it was parsed from:
/// a stored FleetSecret whose text has not changed is not parsed again (`ListFleetSecrets`,
/// `GetCluster` and the rollout calls list them on every call, and dashboards and `--watch`
/// poll them). Keyed by the text, not the generation, which a deleted and re-created FleetSecret
/// starts again.
#[derive(Default)]
struct ParsedSpecs {
    by_name: std::collections::HashMap<String, (String, Arc<FleetSecretSpec>)>,
    /// Parses so far (tests).
    parses: u64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Over this store, telling `control` about every change.
    pub fn new(store: Store, control: Arc<dyn HubControl>) -> Self {
        Self {
            store,
            control,
            connectivity: Connectivity::new(None, OFFLINE_GRACE),
            near_expiry: DEFAULT_NEAR_EXPIRY_THRESHOLD,
            status_cache: Arc::default(),
            parsed: Arc::default(),
        }
    }

    /// Uses the engine's offline grace, so that the rollout status reported here is the decision
    /// the engine takes.
    #[must_use]
    pub fn with_offline_grace(mut self, offline_grace: TimeDelta) -> Self {
        self.connectivity = Connectivity::new(None, offline_grace);
        self
    }

    /// Appends the change and the audit event, then tells the hub.
    async fn record(
        &self,
        actor: &str,
        kind: Option<ChangeKind>,
        action: &str,
        subject: &str,
    ) -> Result<(), AdminError> {
        if let Some(kind) = kind {
            self.store.append_change(kind, subject).await?;
        }
        self.store
            .append_audit(actor, action, subject, Utc::now())
            .await?;
        tracing::info!(actor, action, subject, "admin change");
        if kind.is_some() {
            self.control.changed().await;
        }
        Ok(())
    }

    /// Every stored FleetSecret, parsed, by name.
    async fn fleet_secrets(
        &self,
    ) -> Result<BTreeMap<String, (StoredSpec, Arc<FleetSecretSpec>)>, AdminError> {
        let stored: Vec<StoredSpec> = self
            .store
            .list_specs()
            .await?
            .into_iter()
            .filter(|stored| stored.kind == SpecKind::FleetSecret)
            .collect();
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Rebuilt from what is stored now, so a deleted FleetSecret is forgotten.
        let mut previous = std::mem::take(&mut parsed.by_name);
        let mut secrets = BTreeMap::new();
        for stored in stored {
            let (yaml, secret) = match previous.remove(&stored.name) {
                Some((yaml, secret)) if yaml == stored.yaml => (yaml, secret),
                _ => {
                    parsed.parses += 1;
                    let Ok(Spec::FleetSecret(secret)) =
                        spec::parse_stored(Kind::FleetSecret, &stored.name, &stored.yaml)
                    else {
                        return Err(AdminError::Corrupt(format!(
                            "stored FleetSecret {:?} does not parse",
                            stored.name
                        )));
                    };
                    (stored.yaml.clone(), Arc::new(secret))
                }
            };
            parsed
                .by_name
                .insert(stored.name.clone(), (yaml, Arc::clone(&secret)));
            secrets.insert(stored.name.clone(), (stored, secret));
        }
        Ok(secrets)
    }

    /// FleetSecrets parsed from their stored text so far.
    #[cfg(test)]
    pub(crate) fn specs_parsed(&self) -> u64 {
        self.parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .parses
    }

    /// The current revision number of every FleetSecret that has one, by name.
    async fn current_revisions(&self) -> Result<BTreeMap<String, u64>, AdminError> {
        Ok(self
            .store
            .latest_revisions()
            .await?
            .into_iter()
            .map(|revision| (revision.fleet_secret, revision.revision))
            .collect())
    }

    /// One stored FleetSecret, parsed.
    async fn fleet_secret(&self, name: &str) -> Result<(StoredSpec, Arc<FleetSecretSpec>), AdminError> {
        self.fleet_secrets()
            .await?
            .remove(name)
            .ok_or_else(|| not_found_fleet_secret(name))
    }
}

fn not_found_fleet_secret(name: &str) -> AdminError {
    AdminError::NotFound(format!("fleetsecret {name:?} not found"))
}
