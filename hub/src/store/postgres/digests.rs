//! Postgres: keying the digests still stored plain (`digest_key` NULL: rows written before
//! migration 0006 or by an older replica), in `unnest` batches. Each update re-checks that the row
//! is still unkeyed and still holds the digest read, so a concurrent write or another replica
//! doing the same is never overwritten.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::DigestKeys;
use crate::store::convert::sha256;
use crate::store::{KeyedRows, StoreError};

/// Rows updated per statement.
const BATCH: usize = 1_000;

/// `plain` keyed with the current key, as stored bytes.
fn keyed(keys: &DigestKeys, plain: &[u8], what: &'static str) -> Result<Vec<u8>, StoreError> {
    Ok(keys.key(&sha256(plain, what)?).bytes().to_vec())
}

pub(in crate::store) async fn key_unkeyed(pool: &PgPool, keys: &DigestKeys) -> Result<KeyedRows, StoreError> {
    let key = keys.current().as_str();
    let mut done = KeyedRows::default();

    let versions =
        sqlx::query!("SELECT store, name, version, sha256 FROM secret_versions WHERE digest_key IS NULL")
            .fetch_all(pool)
            .await?;
    for batch in versions.chunks(BATCH) {
        let stores: Vec<String> = batch.iter().map(|r| r.store.clone()).collect();
        let names: Vec<String> = batch.iter().map(|r| r.name.clone()).collect();
        let ids: Vec<String> = batch.iter().map(|r| r.version.clone()).collect();
        let plain: Vec<Vec<u8>> = batch.iter().map(|r| r.sha256.clone()).collect();
        let macs = plain
            .iter()
            .map(|bytes| keyed(keys, bytes, "secret version digest"))
            .collect::<Result<Vec<_>, _>>()?;
        done.secret_versions += sqlx::query!(
            "UPDATE secret_versions s SET sha256 = u.mac, digest_key = $6
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[])
                  AS u(store, name, version, plain, mac)
             WHERE s.store = u.store AND s.name = u.name AND s.version = u.version
               AND s.digest_key IS NULL AND s.sha256 = u.plain",
            &stores[..],
            &names[..],
            &ids[..],
            &plain[..],
            &macs[..],
            key,
        )
        .execute(pool)
        .await?
        .rows_affected();
    }

    let revisions = sqlx::query!("SELECT revision, sha256 FROM revisions WHERE digest_key IS NULL")
        .fetch_all(pool)
        .await?;
    for batch in revisions.chunks(BATCH) {
        let numbers: Vec<i64> = batch.iter().map(|r| r.revision).collect();
        let plain: Vec<Vec<u8>> = batch.iter().map(|r| r.sha256.clone()).collect();
        let macs = plain
            .iter()
            .map(|bytes| keyed(keys, bytes, "revision digest"))
            .collect::<Result<Vec<_>, _>>()?;
        done.revisions += sqlx::query!(
            "UPDATE revisions r SET sha256 = u.mac, digest_key = $4
             FROM unnest($1::int8[], $2::bytea[], $3::bytea[]) AS u(revision, plain, mac)
             WHERE r.revision = u.revision AND r.digest_key IS NULL AND r.sha256 = u.plain",
            &numbers[..],
            &plain[..],
            &macs[..],
            key,
        )
        .execute(pool)
        .await?
        .rows_affected();
    }

    let status = sqlx::query!(
        r#"SELECT cluster_id, fleet_secret, applied_sha256 AS "applied_sha256!" FROM sync_status
           WHERE applied_sha256 IS NOT NULL AND applied_digest_key IS NULL"#
    )
    .fetch_all(pool)
    .await?;
    for batch in status.chunks(BATCH) {
        let clusters: Vec<Uuid> = batch.iter().map(|r| r.cluster_id).collect();
        let secrets: Vec<String> = batch.iter().map(|r| r.fleet_secret.clone()).collect();
        let plain: Vec<Vec<u8>> = batch.iter().map(|r| r.applied_sha256.clone()).collect();
        let macs = plain
            .iter()
            .map(|bytes| keyed(keys, bytes, "applied digest"))
            .collect::<Result<Vec<_>, _>>()?;
        done.sync_status += sqlx::query!(
            "UPDATE sync_status s SET applied_sha256 = u.mac, applied_digest_key = $5
             FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[])
                  AS u(cluster_id, fleet_secret, plain, mac)
             WHERE s.cluster_id = u.cluster_id AND s.fleet_secret = u.fleet_secret
               AND s.applied_digest_key IS NULL AND s.applied_sha256 = u.plain",
            &clusters[..],
            &secrets[..],
            &plain[..],
            &macs[..],
            key,
        )
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(done)
}
