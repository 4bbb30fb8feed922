//! Postgres `secret_versions` and `revisions`: Key Vault version ids and digests, and the numbered
//! revisions of each fleet secret. The idempotent insert is a statement of [`RevisionSql`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::domain::{DigestKeys, StoredDigest};
use crate::store::convert::{digest_key, sources_from_json, sources_json, stored_digest, to_u64};
use crate::store::dialect::RevisionSql;
use crate::store::{NewRevision, RevisionRecord, SecretVersionRecord, StoreError};

pub(in crate::store) async fn upsert_secret_version(
    pool: &PgPool,
    v: &SecretVersionRecord,
    digest: &StoredDigest,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO secret_versions
           (store, name, version, sha256, enabled, created_at, expires_at, not_before, recorded_at,
            digest_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (store, name, version) DO UPDATE
           SET sha256 = excluded.sha256, digest_key = excluded.digest_key, enabled = excluded.enabled,
               created_at = excluded.created_at, expires_at = excluded.expires_at,
               not_before = excluded.not_before, recorded_at = excluded.recorded_at",
        v.store,
        v.name,
        v.version,
        &digest.bytes()[..],
        v.enabled,
        v.created,
        v.expires,
        v.not_before,
        now,
        digest_key(digest),
    )
    .execute(pool)
    .await?;
    Ok(())
}

impl RevisionSql for Postgres {
    async fn upsert_revision(
        conn: &mut PgConnection,
        r: &NewRevision,
        keys: &DigestKeys,
        generation: i64,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        // Serialise writers of the same fleet secret for the read-then-insert below.
        sqlx::query!(
            r#"SELECT 1 AS "locked!" FROM pg_advisory_xact_lock(hashtextextended('keyfleet revision ' || $1, 0))"#,
            r.fleet_secret,
        )
        .fetch_one(&mut *conn)
        .await?;
        let latest = sqlx::query!(
            "SELECT revision, sha256, digest_key, spec_generation FROM revisions
         WHERE fleet_secret = $1 ORDER BY revision DESC LIMIT 1",
            r.fleet_secret,
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(latest) = latest
            && latest.spec_generation == generation
            && keys.matches(
                &stored_digest(&latest.sha256, latest.digest_key, "revision digest")?,
                &r.sha256,
            )
        {
            return Ok(latest.revision);
        }
        let digest = keys.key(&r.sha256);
        let revision = sqlx::query_scalar!(
            "INSERT INTO revisions (fleet_secret, sha256, digest_key, spec_generation, sources, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING revision",
            r.fleet_secret,
            &digest.bytes()[..],
            digest_key(&digest),
            generation,
            sources_json(&r.sources),
            now,
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(revision)
    }
}

/// A `revisions` row as the checked macros return it.
struct RevisionRow {
    fleet_secret: String,
    revision: i64,
    sha256: Vec<u8>,
    digest_key: Option<String>,
    spec_generation: i64,
    sources: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl TryFrom<RevisionRow> for RevisionRecord {
    type Error = StoreError;

    fn try_from(row: RevisionRow) -> Result<Self, StoreError> {
        Ok(RevisionRecord {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "revision")?,
            digest: stored_digest(&row.sha256, row.digest_key, "revision digest")?,
            spec_generation: to_u64(row.spec_generation, "spec generation")?,
            sources: sources_from_json(row.sources)?,
            created: row.created_at,
        })
    }
}

pub(in crate::store) async fn latest_revisions(pool: &PgPool) -> Result<Vec<RevisionRecord>, StoreError> {
    sqlx::query_as!(
        RevisionRow,
        "SELECT DISTINCT ON (fleet_secret)
                fleet_secret, revision, sha256, digest_key, spec_generation, sources, created_at
         FROM revisions ORDER BY fleet_secret, revision DESC"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(RevisionRecord::try_from)
    .collect()
}

pub(in crate::store) async fn revision_before(
    pool: &PgPool,
    fleet_secret: &str,
    below: i64,
) -> Result<Option<RevisionRecord>, StoreError> {
    sqlx::query_as!(
        RevisionRow,
        "SELECT fleet_secret, revision, sha256, digest_key, spec_generation, sources, created_at
         FROM revisions WHERE fleet_secret = $1 AND revision < $2
         ORDER BY revision DESC LIMIT 1",
        fleet_secret,
        below,
    )
    .fetch_optional(pool)
    .await?
    .map(RevisionRecord::try_from)
    .transpose()
}
