//! SQLite `clusters`: inventory, labels, credentials and liveness. Revoking is a statement of
//! [`ClusterSql`], run in the transaction [`dialect::revoke_cluster`](crate::store::dialect) opens.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{id_text, labels_text, opt_ts, req_ts, ts, uuid};
use crate::domain::{ClusterId, Labels, Sha256};
use crate::store::convert::{cluster_state, sha256};
use crate::store::dialect::ClusterSql;
use crate::store::error::unique_to_exists;
use crate::store::{Cluster, ClusterLiveness, StoreError};

/// The columns [`cluster`] decodes.
const CLUSTER_COLUMNS: &str =
    "id, name, labels, state, agent_version, connected_replica, last_seen, created_at";

/// A `clusters` row selected with [`CLUSTER_COLUMNS`].
fn cluster(row: &SqliteRow) -> Result<Cluster, StoreError> {
    Ok(Cluster {
        id: ClusterId(uuid(row, "id")?),
        name: row.try_get("name")?,
        labels: serde_json::from_str(&row.try_get::<String, _>("labels")?).map_err(|_| {
            StoreError::Corrupt {
                what: "cluster labels",
            }
        })?,
        state: cluster_state(&row.try_get::<String, _>("state")?)?,
        agent_version: row.try_get("agent_version")?,
        connected_replica: row.try_get("connected_replica")?,
        last_seen: opt_ts(row, "last_seen", "cluster last_seen")?,
        created: req_ts(row, "created_at", "cluster created_at")?,
    })
}

impl TryFrom<SqliteRow> for Cluster {
    type Error = StoreError;

    fn try_from(row: SqliteRow) -> Result<Self, StoreError> {
        cluster(&row)
    }
}

pub(in crate::store) async fn create_cluster(
    pool: &SqlitePool,
    id: ClusterId,
    name: &str,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Cluster, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO clusters (id, name, labels, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4)
         ON CONFLICT (name) DO NOTHING
         RETURNING {CLUSTER_COLUMNS}"
    )))
    .bind(id_text(id))
    .bind(name)
    .bind(labels_text(labels))
    .bind(ts(now))
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => cluster(&row),
        None => Err(StoreError::AlreadyExists {
            what: format!("cluster {name:?}"),
        }),
    }
}

pub(in crate::store) async fn cluster_by_name(
    pool: &SqlitePool,
    name: &str,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = ?1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(cluster)
    .transpose()
}

pub(in crate::store) async fn cluster_by_id(
    pool: &SqlitePool,
    id: ClusterId,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = ?1"
    )))
    .bind(id_text(id))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(cluster)
    .transpose()
}

pub(in crate::store) async fn list_clusters(
    pool: &SqlitePool,
    match_labels: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Cluster>, StoreError> {
    // Every (key, value) of the filter must be among the cluster's labels.
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters c
         WHERE ?1 IS NULL OR NOT EXISTS (
           SELECT 1 FROM json_each(?1) m
           WHERE NOT EXISTS (SELECT 1 FROM json_each(c.labels) l
                             WHERE l.key = m.key AND l.value = m.value))
         ORDER BY name"
    )))
    .bind(match_labels.map(labels_text))
    .fetch_all(pool)
    .await?
    .iter()
    .map(cluster)
    .collect()
}

pub(in crate::store) async fn cluster_liveness(
    pool: &SqlitePool,
) -> Result<Vec<ClusterLiveness>, StoreError> {
    sqlx::query("SELECT id, connected_replica, last_seen FROM clusters")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(ClusterLiveness {
                id: ClusterId(uuid(row, "id")?),
                connected_replica: row.try_get("connected_replica")?,
                last_seen: opt_ts(row, "last_seen", "cluster last_seen")?,
            })
        })
        .collect()
}

pub(in crate::store) async fn set_cluster_labels(
    pool: &SqlitePool,
    id: ClusterId,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE clusters SET labels = ?2, updated_at = ?3 WHERE id = ?1 RETURNING {CLUSTER_COLUMNS}"
    )))
    .bind(id_text(id))
    .bind(labels_text(labels))
    .bind(ts(now))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(cluster)
    .transpose()
}

impl ClusterSql for Sqlite {
    type ClusterRow = SqliteRow;

    async fn revoke_cluster(
        conn: &mut SqliteConnection,
        id: ClusterId,
        now: DateTime<Utc>,
    ) -> Result<Option<SqliteRow>, StoreError> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "UPDATE clusters SET state = 'revoked', credential_sha256 = NULL, updated_at = ?2
         WHERE id = ?1 RETURNING {CLUSTER_COLUMNS}"
        )))
        .bind(id_text(id))
        .bind(ts(now))
        .fetch_optional(&mut *conn)
        .await?)
    }
}

pub(in crate::store) async fn set_cluster_credential(
    pool: &SqlitePool,
    id: ClusterId,
    credential_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters SET credential_sha256 = ?2, state = 'active', updated_at = ?3
         WHERE id = ?1 AND state <> 'revoked'",
    )
    .bind(id_text(id))
    .bind(&credential_hash.0[..])
    .bind(ts(now))
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "cluster credential"))?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn active_credentials(
    pool: &SqlitePool,
) -> Result<Vec<(Sha256, ClusterId)>, StoreError> {
    sqlx::query(
        "SELECT credential_sha256, id FROM clusters
         WHERE state = 'active' AND credential_sha256 IS NOT NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok((
            sha256(
                &row.try_get::<Vec<u8>, _>("credential_sha256")?,
                "credential hash",
            )?,
            ClusterId(uuid(row, "id")?),
        ))
    })
    .collect()
}

pub(in crate::store) async fn record_connect(
    pool: &SqlitePool,
    id: ClusterId,
    replica: &str,
    agent_version: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters SET connected_replica = ?2, agent_version = ?3, connected_at = ?4,
                last_seen = ?4
         WHERE id = ?1",
    )
    .bind(id_text(id))
    .bind(replica)
    .bind(agent_version)
    .bind(ts(at))
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn record_disconnect(
    pool: &SqlitePool,
    id: ClusterId,
    replica: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters
         SET connected_replica = CASE WHEN connected_replica = ?2 THEN NULL
                                      ELSE connected_replica END,
             last_seen = max(coalesce(last_seen, ?3), ?3)
         WHERE id = ?1",
    )
    .bind(id_text(id))
    .bind(replica)
    .bind(ts(at))
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn touch_last_seen(
    pool: &SqlitePool,
    ids: &[ClusterId],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // One statement, one bind for the ids (a JSON array), whatever their number.
    let ids = serde_json::Value::Array(
        ids.iter()
            .map(|id| serde_json::Value::String(id_text(*id)))
            .collect(),
    );
    sqlx::query(
        "UPDATE clusters SET last_seen = max(coalesce(last_seen, ?2), ?2)
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids.to_string())
    .bind(ts(at))
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn clear_replica(
    pool: &SqlitePool,
    replica: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters SET connected_replica = NULL, last_seen = max(coalesce(last_seen, ?2), ?2)
         WHERE connected_replica = ?1",
    )
    .bind(replica)
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
