//! SQLite: keying the digests still stored plain (`digest_key` NULL: rows written before
//! migration 0005). One update per row (a quickstart database is small); each re-checks that the
//! row is still unkeyed and still holds the digest read.

use sqlx::{Row as _, SqlitePool};

use crate::domain::DigestKeys;
use crate::store::convert::sha256;
use crate::store::{KeyedRows, StoreError};

/// `plain` keyed with the current key, as stored bytes.
fn keyed(keys: &DigestKeys, plain: &[u8], what: &'static str) -> Result<Vec<u8>, StoreError> {
    Ok(keys.key(&sha256(plain, what)?).bytes().to_vec())
}

pub(in crate::store) async fn key_unkeyed(
    pool: &SqlitePool,
    keys: &DigestKeys,
) -> Result<KeyedRows, StoreError> {
    let key = keys.current().as_str();
    let mut done = KeyedRows::default();

    let versions =
        sqlx::query("SELECT store, name, version, sha256 FROM secret_versions WHERE digest_key IS NULL")
            .fetch_all(pool)
            .await?;
    for row in &versions {
        let plain: Vec<u8> = row.try_get("sha256")?;
        let mac = keyed(keys, &plain, "secret version digest")?;
        done.secret_versions += sqlx::query(
            "UPDATE secret_versions SET sha256 = ?1, digest_key = ?2
             WHERE store = ?3 AND name = ?4 AND version = ?5 AND digest_key IS NULL AND sha256 = ?6",
        )
        .bind(mac)
        .bind(key)
        .bind(row.try_get::<String, _>("store")?)
        .bind(row.try_get::<String, _>("name")?)
        .bind(row.try_get::<String, _>("version")?)
        .bind(plain)
        .execute(pool)
        .await?
        .rows_affected();
    }

    let revisions = sqlx::query("SELECT revision, sha256 FROM revisions WHERE digest_key IS NULL")
        .fetch_all(pool)
        .await?;
    for row in &revisions {
        let plain: Vec<u8> = row.try_get("sha256")?;
        let mac = keyed(keys, &plain, "revision digest")?;
        done.revisions += sqlx::query(
            "UPDATE revisions SET sha256 = ?1, digest_key = ?2
             WHERE revision = ?3 AND digest_key IS NULL AND sha256 = ?4",
        )
        .bind(mac)
        .bind(key)
        .bind(row.try_get::<i64, _>("revision")?)
        .bind(plain)
        .execute(pool)
        .await?
        .rows_affected();
    }

    let status = sqlx::query(
        "SELECT cluster_id, fleet_secret, applied_sha256 FROM sync_status
         WHERE applied_sha256 IS NOT NULL AND applied_digest_key IS NULL",
    )
    .fetch_all(pool)
    .await?;
    for row in &status {
        let plain: Vec<u8> = row.try_get("applied_sha256")?;
        let mac = keyed(keys, &plain, "applied digest")?;
        done.sync_status += sqlx::query(
            "UPDATE sync_status SET applied_sha256 = ?1, applied_digest_key = ?2
             WHERE cluster_id = ?3 AND fleet_secret = ?4 AND applied_digest_key IS NULL
               AND applied_sha256 = ?5",
        )
        .bind(mac)
        .bind(key)
        .bind(row.try_get::<String, _>("cluster_id")?)
        .bind(row.try_get::<String, _>("fleet_secret")?)
        .bind(plain)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(done)
}
