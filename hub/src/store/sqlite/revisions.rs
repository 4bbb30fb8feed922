//! SQLite `secret_versions` and `revisions`: Key Vault version ids and digests, and the numbered
//! revisions of each fleet secret. The idempotent insert is a statement of [`RevisionSql`].

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{req_ts, ts};
use crate::domain::{DigestKeys, StoredDigest};
use crate::store::convert::{digest_key, sources_json, stored_digest, to_u64};
use crate::store::dialect::RevisionSql;
use crate::store::{NewRevision, RevisionRecord, SecretVersionRecord, StoreError};

pub(in crate::store) async fn upsert_secret_version(
    pool: &SqlitePool,
    v: &SecretVersionRecord,
    digest: &StoredDigest,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO secret_versions
           (store, name, version, sha256, enabled, created_at, expires_at, not_before, recorded_at,
            digest_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (store, name, version) DO UPDATE
           SET sha256 = excluded.sha256, digest_key = excluded.digest_key, enabled = excluded.enabled,
               created_at = excluded.created_at, expires_at = excluded.expires_at,
               not_before = excluded.not_before, recorded_at = excluded.recorded_at",
    )
    .bind(&v.store)
    .bind(&v.name)
    .bind(&v.version)
    .bind(&digest.bytes()[..])
    .bind(v.enabled)
    .bind(v.created.map(ts))
    .bind(v.expires.map(ts))
    .bind(v.not_before.map(ts))
    .bind(ts(now))
    .bind(digest_key(digest))
    .execute(pool)
    .await?;
    Ok(())
}

impl RevisionSql for Sqlite {
    async fn upsert_revision(
        conn: &mut SqliteConnection,
        r: &NewRevision,
        keys: &DigestKeys,
        generation: i64,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        // The newest revision is the same content when its digest is `r.sha256` under any key
        // held (or unkeyed): one `(key, digest)` pair per candidate, '' for unkeyed.
        let candidates = keys.candidates(&r.sha256);
        let pairs: Vec<String> = (0..candidates.len())
            .map(|index| format!("(?{}, ?{})", 7 + 2 * index, 8 + 2 * index))
            .collect();
        // The INSERT (even when it inserts nothing) takes SQLite's write lock first, so the read
        // below sees what the insert decided against.
        let sql = format!(
            "INSERT INTO revisions (fleet_secret, sha256, spec_generation, sources, created_at, digest_key)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6
             WHERE NOT EXISTS (
               SELECT 1 FROM (SELECT sha256, digest_key, spec_generation FROM revisions
                              WHERE fleet_secret = ?1 ORDER BY revision DESC LIMIT 1) AS latest
               WHERE latest.spec_generation = ?3
                 AND (coalesce(latest.digest_key, ''), latest.sha256) IN (VALUES {}))
             RETURNING revision",
            pairs.join(", ")
        );
        let digest = keys.key(&r.sha256);
        let mut query = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&r.fleet_secret)
            .bind(digest.bytes().to_vec())
            .bind(generation)
            .bind(sources_json(&r.sources).to_string())
            .bind(ts(now))
            .bind(digest_key(&digest));
        for candidate in &candidates {
            query = query
                .bind(digest_key(candidate).unwrap_or_default())
                .bind(candidate.bytes().to_vec());
        }
        let inserted: Option<i64> = query.fetch_optional(&mut *conn).await?;
        Ok(match inserted {
            Some(revision) => revision,
            None => {
                sqlx::query_scalar(
                    "SELECT revision FROM revisions WHERE fleet_secret = ?1
                 ORDER BY revision DESC LIMIT 1",
                )
                .bind(&r.fleet_secret)
                .fetch_one(&mut *conn)
                .await?
            }
        })
    }
}

pub(in crate::store) async fn latest_revisions(pool: &SqlitePool) -> Result<Vec<RevisionRecord>, StoreError> {
    sqlx::query(
        "SELECT r.fleet_secret, r.revision, r.sha256, r.digest_key, r.spec_generation, r.sources, r.created_at
         FROM revisions r
         WHERE r.revision = (SELECT max(revision) FROM revisions WHERE fleet_secret = r.fleet_secret)
         ORDER BY r.fleet_secret",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(revision_record)
    .collect()
}

pub(in crate::store) async fn revision_before(
    pool: &SqlitePool,
    fleet_secret: &str,
    below: i64,
) -> Result<Option<RevisionRecord>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, revision, sha256, digest_key, spec_generation, sources, created_at
         FROM revisions WHERE fleet_secret = ?1 AND revision < ?2
         ORDER BY revision DESC LIMIT 1",
    )
    .bind(fleet_secret)
    .bind(below)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(revision_record)
    .transpose()
}

/// A `revisions` row.
fn revision_record(row: &SqliteRow) -> Result<RevisionRecord, StoreError> {
    Ok(RevisionRecord {
        fleet_secret: row.try_get("fleet_secret")?,
        revision: to_u64(row.try_get("revision")?, "revision")?,
        digest: stored_digest(
            &row.try_get::<Vec<u8>, _>("sha256")?,
            row.try_get("digest_key")?,
            "revision digest",
        )?,
        spec_generation: to_u64(row.try_get("spec_generation")?, "spec generation")?,
        sources: serde_json::from_str(&row.try_get::<String, _>("sources")?).map_err(|_| {
            StoreError::Corrupt {
                what: "revision sources",
            }
        })?,
        created: req_ts(row, "created_at", "revision created_at")?,
    })
}
