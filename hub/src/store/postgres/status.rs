//! Postgres `sync_status`: one row per (cluster, fleet secret), upserted in batches by `unnest`
//! (a statement of [`StatusSql`]); the views read the trigger-kept `sync_lagging` copy, which the
//! store vacuums itself.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::domain::ClusterId;
use crate::store::convert::{StatusBind, stored_digest, sync_state, to_u32, to_u64};
use crate::store::dialect::StatusSql;
use crate::store::error::fk_to_not_found;
use crate::store::{StoreError, SyncStatus};

impl StatusSql for Postgres {
    /// Ten array binds carry any number of rows.
    const STATUS_ROWS_PER_STATEMENT: usize = usize::MAX;

    async fn upsert_status(conn: &mut PgConnection, rows: &[StatusBind]) -> Result<u64, StoreError> {
        let clusters: Vec<Uuid> = rows.iter().map(|r| r.cluster).collect();
        let fleet_secrets: Vec<String> = rows.iter().map(|r| r.fleet_secret.clone()).collect();
        let desired: Vec<i64> = rows.iter().map(|r| r.desired_revision).collect();
        let applied: Vec<Option<i64>> = rows.iter().map(|r| r.applied_revision).collect();
        let applied_sha: Vec<Option<Vec<u8>>> = rows.iter().map(|r| r.applied_sha256.clone()).collect();
        let applied_key: Vec<Option<String>> = rows.iter().map(|r| r.applied_digest_key.clone()).collect();
        let states: Vec<String> = rows.iter().map(|r| r.state.to_owned()).collect();
        let errors: Vec<Option<String>> = rows.iter().map(|r| r.last_error.clone()).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
        let result = sqlx::query!(
            r#"INSERT INTO sync_status AS s
             (cluster_id, fleet_secret, desired_revision, applied_revision, applied_sha256, state,
              last_error, attempts, updated_at, applied_at, applied_digest_key)
           SELECT u.cluster_id, u.fleet_secret, u.desired_revision, u.applied_revision,
                  u.applied_sha256, u.state, u.last_error, u.attempts, u.updated_at,
                  CASE WHEN u.state = 'applied' THEN u.updated_at END, u.applied_digest_key
           FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::text[],
                       $7::text[], $8::int4[], $9::timestamptz[], $10::text[])
                AS u(cluster_id, fleet_secret, desired_revision, applied_revision, applied_sha256,
                     state, last_error, attempts, updated_at, applied_digest_key)
           ON CONFLICT (cluster_id, fleet_secret) DO UPDATE SET
             desired_revision = excluded.desired_revision,
             applied_revision = excluded.applied_revision,
             applied_sha256 = excluded.applied_sha256,
             applied_digest_key = excluded.applied_digest_key,
             state = excluded.state,
             last_error = excluded.last_error,
             attempts = excluded.attempts,
             updated_at = excluded.updated_at,
             applied_at = CASE
               WHEN excluded.state = 'applied'
                    AND (s.applied_revision IS DISTINCT FROM excluded.applied_revision
                         OR s.applied_at IS NULL)
               THEN excluded.updated_at
               ELSE s.applied_at END"#,
            &clusters[..],
            &fleet_secrets[..],
            &desired[..],
            &applied[..] as &[Option<i64>],
            &applied_sha[..] as &[Option<Vec<u8>>],
            &states[..],
            &errors[..] as &[Option<String>],
            &attempts[..],
            &at[..],
            &applied_key[..] as &[Option<String>],
        )
        .execute(&mut *conn)
        .await
        .map_err(|error| fk_to_not_found(error, "cluster of a status row"))?;
        Ok(result.rows_affected())
    }
}

/// `VACUUM` of the lagging copy, skipped when another replica's vacuum holds it. Not a prepared
/// statement (VACUUM runs outside a transaction block). Without ownership of the table Postgres
/// only warns and skips it.
pub(in crate::store) async fn vacuum_lagging(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("VACUUM (SKIP_LOCKED) sync_lagging")
        .execute(pool)
        .await?;
    Ok(())
}

pub(in crate::store) async fn delete_status(
    pool: &PgPool,
    cluster: ClusterId,
    fleet_secret: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM sync_status WHERE cluster_id = $1 AND fleet_secret = $2",
        cluster.0,
        fleet_secret,
    )
    .execute(pool)
    .await?;
    Ok(())
}

struct StatusRecord {
    cluster_id: Uuid,
    cluster_name: String,
    fleet_secret: String,
    desired_revision: i64,
    applied_revision: Option<i64>,
    applied_sha256: Option<Vec<u8>>,
    applied_digest_key: Option<String>,
    state: String,
    last_error: Option<String>,
    attempts: i32,
    updated_at: DateTime<Utc>,
    applied_at: Option<DateTime<Utc>>,
}

impl TryFrom<StatusRecord> for SyncStatus {
    type Error = StoreError;

    fn try_from(row: StatusRecord) -> Result<Self, StoreError> {
        Ok(SyncStatus {
            cluster: ClusterId(row.cluster_id),
            cluster_name: row.cluster_name,
            fleet_secret: row.fleet_secret,
            desired_revision: to_u64(row.desired_revision, "desired revision")?,
            applied_revision: row
                .applied_revision
                .map(|revision| to_u64(revision, "applied revision"))
                .transpose()?,
            applied_digest: row
                .applied_sha256
                .map(|bytes| stored_digest(&bytes, row.applied_digest_key, "applied digest"))
                .transpose()?,
            state: sync_state(&row.state)?,
            last_error: row.last_error,
            attempts: to_u32(i64::from(row.attempts), "attempts")?,
            updated: row.updated_at,
            applied_at: row.applied_at,
        })
    }
}

fn statuses(rows: Vec<StatusRecord>) -> Result<Vec<SyncStatus>, StoreError> {
    rows.into_iter().map(SyncStatus::try_from).collect()
}

pub(in crate::store) async fn status_for_cluster(
    pool: &PgPool,
    id: ClusterId,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.applied_digest_key, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.cluster_id = $1
               ORDER BY s.fleet_secret"#,
            id.0,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(in crate::store) async fn status_for_fleet_secret(
    pool: &PgPool,
    name: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.applied_digest_key, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.fleet_secret = $1
               ORDER BY c.name"#,
            name,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(in crate::store) async fn status_served_elsewhere(
    pool: &PgPool,
    name: &str,
    replica: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.applied_digest_key, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.fleet_secret = $1 AND c.connected_replica IS DISTINCT FROM $2"#,
            name,
            replica,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(in crate::store) async fn all_status(pool: &PgPool) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.applied_digest_key, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               ORDER BY c.name, s.fleet_secret"#,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(in crate::store) async fn lagging(
    pool: &PgPool,
    fleet_secret: Option<&str>,
    limit: i64,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.applied_digest_key, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.lagging AND ($1::text IS NULL OR s.fleet_secret = $1)
               ORDER BY s.updated_at, c.name, s.fleet_secret
               LIMIT $2"#,
            fleet_secret,
            limit,
        )
        .fetch_all(pool)
        .await?,
    )
}
