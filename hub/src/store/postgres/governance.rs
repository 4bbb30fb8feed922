//! Postgres reads of the `keyfleet_expiry` and `keyfleet_rollout` views.

use sqlx::PgPool;

use crate::store::StoreError;
use crate::store::convert::to_u64;
use crate::store::governance::{RolloutCounts, ServedVersion};

pub(in crate::store) async fn served_versions(pool: &PgPool) -> Result<Vec<ServedVersion>, StoreError> {
    sqlx::query!(
        r#"SELECT fleet_secret AS "fleet_secret!", revision AS "revision!",
                  remote_key AS "remote_key!", version AS "version!",
                  expires_at, not_before, seen_at
           FROM keyfleet_expiry ORDER BY fleet_secret, remote_key"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(ServedVersion {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "revision")?,
            remote_key: row.remote_key,
            version: row.version,
            expires: row.expires_at,
            not_before: row.not_before,
            seen: row.seen_at,
        })
    })
    .collect()
}

pub(in crate::store) async fn rollout_counts(pool: &PgPool) -> Result<Vec<RolloutCounts>, StoreError> {
    sqlx::query!(
        r#"SELECT fleet_secret AS "fleet_secret!", revision AS "revision!",
                  targeted AS "targeted!", applied AS "applied!", pending AS "pending!",
                  error AS "error!", first_applied_at, last_applied_at
           FROM keyfleet_rollout ORDER BY fleet_secret, revision"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(RolloutCounts {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "revision")?,
            targeted: to_u64(row.targeted, "targeted")?,
            applied: to_u64(row.applied, "applied")?,
            pending: to_u64(row.pending, "pending")?,
            error: to_u64(row.error, "error")?,
            first_applied: row.first_applied_at,
            last_applied: row.last_applied_at,
        })
    })
    .collect()
}
