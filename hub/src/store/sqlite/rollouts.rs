//! SQLite `pins` and `rollouts`: which Key Vault version a remote key is held at, and how far each
//! fleet secret's rollout has gone.

use chrono::{DateTime, Utc};
use sqlx::{Row as _, SqlitePool};

use super::ts;
use crate::store::convert::{to_u32, to_u64};
use crate::store::{PinRecord, RolloutRecord, StoreError};

pub(in crate::store) async fn set_pin(
    pool: &SqlitePool,
    fleet_secret: &str,
    remote_key: &str,
    version: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pins (fleet_secret, remote_key, version, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (fleet_secret, remote_key) DO UPDATE
           SET version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(fleet_secret)
    .bind(remote_key)
    .bind(version)
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn remove_pins(
    pool: &SqlitePool,
    fleet_secret: &str,
    remote_key: Option<&str>,
) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM pins WHERE fleet_secret = ?1 AND (?2 IS NULL OR remote_key = ?2)")
        .bind(fleet_secret)
        .bind(remote_key)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

pub(in crate::store) async fn pins(pool: &SqlitePool) -> Result<Vec<PinRecord>, StoreError> {
    sqlx::query("SELECT fleet_secret, remote_key, version FROM pins ORDER BY fleet_secret, remote_key")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(PinRecord {
                fleet_secret: row.try_get("fleet_secret")?,
                remote_key: row.try_get("remote_key")?,
                version: row.try_get("version")?,
            })
        })
        .collect()
}

pub(in crate::store) async fn set_rollout(
    pool: &SqlitePool,
    r: &RolloutRecord,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rollouts (fleet_secret, revision, current_wave, paused, reason, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (fleet_secret) DO UPDATE
           SET revision = excluded.revision, current_wave = excluded.current_wave,
               paused = excluded.paused, reason = excluded.reason,
               updated_at = excluded.updated_at",
    )
    .bind(&r.fleet_secret)
    .bind(revision)
    .bind(i64::from(r.current_wave))
    .bind(r.paused)
    .bind(&r.reason)
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn rollouts(pool: &SqlitePool) -> Result<Vec<RolloutRecord>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, revision, current_wave, paused, reason FROM rollouts
         ORDER BY fleet_secret",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(RolloutRecord {
            fleet_secret: row.try_get("fleet_secret")?,
            revision: to_u64(row.try_get("revision")?, "rollout revision")?,
            current_wave: to_u32(row.try_get("current_wave")?, "rollout wave")?,
            paused: row.try_get("paused")?,
            reason: row.try_get("reason")?,
        })
    })
    .collect()
}
