//! What governance reads from the dashboard views: the validity of the Key Vault versions every
//! FleetSecret serves (`keyfleet_expiry`) and the per-revision rollout counters
//! (`keyfleet_rollout`). Both views are cheap at fleet scale (docs/dashboards.md), so every
//! replica reads them for its status views and its metrics.

use chrono::{DateTime, Utc};

use super::{Backend, Store, StoreError, postgres, sqlite};

/// One Key Vault version a FleetSecret's newest revision was rendered from (`keyfleet_expiry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedVersion {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Its newest revision.
    pub revision: u64,
    /// Key Vault secret name.
    pub remote_key: String,
    /// Key Vault version id.
    pub version: String,
    /// Key Vault's `exp` (None: no expiry, or the version is not recorded).
    pub expires: Option<DateTime<Utc>>,
    /// Key Vault's `nbf`.
    pub not_before: Option<DateTime<Utc>>,
    /// When the leader first recorded the version.
    pub seen: Option<DateTime<Utc>>,
}

/// One (FleetSecret, desired revision) row of `keyfleet_rollout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutCounts {
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Desired revision of these clusters.
    pub revision: u64,
    /// Clusters whose desired revision it is.
    pub targeted: u64,
    /// Of those, acknowledged it.
    pub applied: u64,
    /// Not acknowledged yet.
    pub pending: u64,
    /// Refused by the agent.
    pub error: u64,
    /// First acknowledgement.
    pub first_applied: Option<DateTime<Utc>>,
    /// Latest acknowledgement.
    pub last_applied: Option<DateTime<Utc>>,
}

impl Store {
    /// Every FleetSecret's served Key Vault versions with `exp`/`nbf`, by FleetSecret then key.
    pub async fn served_versions(&self) -> Result<Vec<ServedVersion>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::governance::served_versions(pool).await,
            Backend::Sqlite(pool) => sqlite::governance::served_versions(pool).await,
        }
    }

    /// Every row of `keyfleet_rollout`, by FleetSecret then revision.
    pub async fn rollout_counts(&self) -> Result<Vec<RolloutCounts>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::governance::rollout_counts(pool).await,
            Backend::Sqlite(pool) => sqlite::governance::rollout_counts(pool).await,
        }
    }
}
