//! SQLite reads of the `keyfleet_expiry` and `keyfleet_rollout` views.

use sqlx::{Row, SqlitePool};

use super::opt_ts;
use crate::store::StoreError;
use crate::store::convert::to_u64;
use crate::store::governance::{RolloutCounts, ServedVersion};

pub(in crate::store) async fn served_versions(pool: &SqlitePool) -> Result<Vec<ServedVersion>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, revision, remote_key, version, expires_at, not_before, seen_at
         FROM keyfleet_expiry ORDER BY fleet_secret, remote_key",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(ServedVersion {
            fleet_secret: row.try_get("fleet_secret")?,
            revision: to_u64(row.try_get("revision")?, "revision")?,
            remote_key: row.try_get("remote_key")?,
            version: row.try_get("version")?,
            expires: opt_ts(row, "expires_at", "secret version expiry")?,
            not_before: opt_ts(row, "not_before", "secret version not-before")?,
            seen: opt_ts(row, "seen_at", "secret version recorded time")?,
        })
    })
    .collect()
}

pub(in crate::store) async fn rollout_counts(pool: &SqlitePool) -> Result<Vec<RolloutCounts>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, revision, targeted, applied, pending, error,
                first_applied_at, last_applied_at
         FROM keyfleet_rollout ORDER BY fleet_secret, revision",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(RolloutCounts {
            fleet_secret: row.try_get("fleet_secret")?,
            revision: to_u64(row.try_get("revision")?, "revision")?,
            targeted: to_u64(row.try_get("targeted")?, "targeted")?,
            applied: to_u64(row.try_get("applied")?, "applied")?,
            pending: to_u64(row.try_get("pending")?, "pending")?,
            error: to_u64(row.try_get("error")?, "error")?,
            first_applied: opt_ts(row, "first_applied_at", "first applied time")?,
            last_applied: opt_ts(row, "last_applied_at", "last applied time")?,
        })
    })
    .collect()
}
