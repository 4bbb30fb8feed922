//! SQLite `sync_status`: one row per (cluster, fleet secret), upserted by multi-row
//! `INSERT … ON CONFLICT` statements as large as the bind limit allows (a statement of
//! [`StatusSql`]); the views aggregate on the fly.

use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{id_text, opt_ts, req_ts, ts, uuid};
use crate::domain::ClusterId;
use crate::store::convert::{StatusBind, stored_digest, sync_state, to_u32, to_u64};
use crate::store::dialect::StatusSql;
use crate::store::error::fk_to_not_found;
use crate::store::{StoreError, SyncStatus};

/// SQLite's default limit of bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER).
const MAX_BINDS: usize = 32_766;

/// Bound parameters per status row.
const STATUS_BINDS: usize = 10;

/// The status upsert up to its `VALUES` list; one `(?,…)` per row follows.
const STATUS_UPSERT_HEAD: &str = "INSERT INTO sync_status AS s
   (cluster_id, fleet_secret, desired_revision, applied_revision, applied_sha256, state,
    last_error, attempts, updated_at, applied_at, applied_digest_key)
 SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9,
        CASE WHEN column6 = 'applied' THEN column9 END, column10
 FROM (VALUES ";

// `WHERE true` resolves the INSERT … SELECT … ON CONFLICT parsing ambiguity.
const STATUS_UPSERT_TAIL: &str = ") WHERE true
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
          AND (s.applied_revision IS NOT excluded.applied_revision OR s.applied_at IS NULL)
     THEN excluded.updated_at
     ELSE s.applied_at END";

impl StatusSql for Sqlite {
    const STATUS_ROWS_PER_STATEMENT: usize = MAX_BINDS / STATUS_BINDS;

    async fn upsert_status(conn: &mut SqliteConnection, rows: &[StatusBind]) -> Result<u64, StoreError> {
        let mut sql =
            String::with_capacity(STATUS_UPSERT_HEAD.len() + STATUS_UPSERT_TAIL.len() + rows.len() * 20);
        sql.push_str(STATUS_UPSERT_HEAD);
        for index in 0..rows.len() {
            if index > 0 {
                sql.push(',');
            }
            sql.push_str("(?,?,?,?,?,?,?,?,?,?)");
        }
        sql.push_str(STATUS_UPSERT_TAIL);
        // Not kept in the connection's statement cache: its text changes with the batch's row
        // count, so a cached copy would rarely be used again, and each holds a program the size of
        // its batch (up to 3,276 rows) until 100 others push it out.
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for row in rows {
            query = query
                .bind(row.cluster.hyphenated().to_string())
                .bind(row.fleet_secret.clone())
                .bind(row.desired_revision)
                .bind(row.applied_revision)
                .bind(row.applied_sha256.clone())
                .bind(row.state)
                .bind(row.last_error.clone())
                .bind(row.attempts)
                .bind(ts(row.at))
                .bind(row.applied_digest_key.clone());
        }
        let result = query
            .execute(&mut *conn)
            .await
            .map_err(|error| fk_to_not_found(error, "cluster of a status row"))?;
        Ok(result.rows_affected())
    }
}

pub(in crate::store) async fn delete_status(
    pool: &SqlitePool,
    cluster: ClusterId,
    fleet_secret: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sync_status WHERE cluster_id = ?1 AND fleet_secret = ?2")
        .bind(id_text(cluster))
        .bind(fleet_secret)
        .execute(pool)
        .await?;
    Ok(())
}

/// The columns [`status`] decodes, joined with the cluster's name.
const STATUS_SELECT: &str = "SELECT s.cluster_id, c.name AS cluster_name, s.fleet_secret,
        s.desired_revision, s.applied_revision, s.applied_sha256, s.applied_digest_key, s.state, s.last_error,
        s.attempts, s.updated_at, s.applied_at
 FROM sync_status s JOIN clusters c ON c.id = s.cluster_id";

/// A status row selected with [`STATUS_SELECT`].
fn status(row: &SqliteRow) -> Result<SyncStatus, StoreError> {
    Ok(SyncStatus {
        cluster: ClusterId(uuid(row, "cluster_id")?),
        cluster_name: row.try_get("cluster_name")?,
        fleet_secret: row.try_get("fleet_secret")?,
        desired_revision: to_u64(row.try_get("desired_revision")?, "desired revision")?,
        applied_revision: row
            .try_get::<Option<i64>, _>("applied_revision")?
            .map(|revision| to_u64(revision, "applied revision"))
            .transpose()?,
        applied_digest: row
            .try_get::<Option<Vec<u8>>, _>("applied_sha256")?
            .map(|bytes| stored_digest(&bytes, row.try_get("applied_digest_key")?, "applied digest"))
            .transpose()?,
        state: sync_state(&row.try_get::<String, _>("state")?)?,
        last_error: row.try_get("last_error")?,
        attempts: to_u32(row.try_get("attempts")?, "attempts")?,
        updated: req_ts(row, "updated_at", "status updated_at")?,
        applied_at: opt_ts(row, "applied_at", "status applied_at")?,
    })
}

pub(in crate::store) async fn status_for_cluster(
    pool: &SqlitePool,
    id: ClusterId,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} WHERE s.cluster_id = ?1 ORDER BY s.fleet_secret"
    )))
    .bind(id_text(id))
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(in crate::store) async fn status_for_fleet_secret(
    pool: &SqlitePool,
    name: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} WHERE s.fleet_secret = ?1 ORDER BY c.name"
    )))
    .bind(name)
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(in crate::store) async fn status_served_elsewhere(
    pool: &SqlitePool,
    name: &str,
    replica: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} WHERE s.fleet_secret = ?1 AND c.connected_replica IS NOT ?2"
    )))
    .bind(name)
    .bind(replica)
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(in crate::store) async fn all_status(pool: &SqlitePool) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} ORDER BY c.name, s.fleet_secret"
    )))
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(in crate::store) async fn lagging(
    pool: &SqlitePool,
    fleet_secret: Option<&str>,
    limit: i64,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT}
         WHERE s.applied_revision IS NOT s.desired_revision
           AND (?1 IS NULL OR s.fleet_secret = ?1)
         ORDER BY s.updated_at, c.name, s.fleet_secret
         LIMIT ?2"
    )))
    .bind(fleet_secret)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}
