//! Postgres `pins` and `rollouts`: which Key Vault version a remote key is held at, and how far
//! each fleet secret's rollout has gone.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::convert::{to_u32, to_u64};
use crate::store::{PinRecord, RolloutRecord, StoreError};

pub(in crate::store) async fn set_pin(
    pool: &PgPool,
    fleet_secret: &str,
    remote_key: &str,
    version: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO pins (fleet_secret, remote_key, version, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (fleet_secret, remote_key) DO UPDATE
           SET version = excluded.version, updated_at = excluded.updated_at",
        fleet_secret,
        remote_key,
        version,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn remove_pins(
    pool: &PgPool,
    fleet_secret: &str,
    remote_key: Option<&str>,
) -> Result<u64, StoreError> {
    let result = sqlx::query!(
        "DELETE FROM pins WHERE fleet_secret = $1 AND ($2::text IS NULL OR remote_key = $2)",
        fleet_secret,
        remote_key,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

pub(in crate::store) async fn pins(pool: &PgPool) -> Result<Vec<PinRecord>, StoreError> {
    Ok(sqlx::query_as!(
        PinRecord,
        "SELECT fleet_secret, remote_key, version FROM pins ORDER BY fleet_secret, remote_key"
    )
    .fetch_all(pool)
    .await?)
}

pub(in crate::store) async fn set_rollout(
    pool: &PgPool,
    r: &RolloutRecord,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let wave = i32::try_from(r.current_wave).map_err(|_| StoreError::OutOfRange { what: "rollout wave" })?;
    sqlx::query!(
        "INSERT INTO rollouts (fleet_secret, revision, current_wave, paused, reason, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (fleet_secret) DO UPDATE
           SET revision = excluded.revision, current_wave = excluded.current_wave,
               paused = excluded.paused, reason = excluded.reason,
               updated_at = excluded.updated_at",
        r.fleet_secret,
        revision,
        wave,
        r.paused,
        r.reason,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn rollouts(pool: &PgPool) -> Result<Vec<RolloutRecord>, StoreError> {
    sqlx::query!(
        "SELECT fleet_secret, revision, current_wave, paused, reason FROM rollouts
         ORDER BY fleet_secret"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(RolloutRecord {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "rollout revision")?,
            current_wave: to_u32(i64::from(row.current_wave), "rollout wave")?,
            paused: row.paused,
            reason: row.reason,
        })
    })
    .collect()
}
