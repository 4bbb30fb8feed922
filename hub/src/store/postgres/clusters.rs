//! Postgres `clusters`: inventory, labels, credentials and liveness. Revoking is a statement of
//! [`ClusterSql`], run in the transaction [`dialect::revoke_cluster`](crate::store::dialect) opens.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::domain::{ClusterId, Labels, Sha256};
use crate::store::convert::{cluster_state, labels_from_json, labels_json, sha256};
use crate::store::dialect::ClusterSql;
use crate::store::error::unique_to_exists;
use crate::store::{Cluster, ClusterLiveness, StoreError};

/// A `clusters` row as the checked macros return it.
pub(in crate::store) struct ClusterRow {
    id: Uuid,
    name: String,
    labels: serde_json::Value,
    state: String,
    agent_version: Option<String>,
    connected_replica: Option<String>,
    last_seen: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl TryFrom<ClusterRow> for Cluster {
    type Error = StoreError;

    fn try_from(row: ClusterRow) -> Result<Self, StoreError> {
        Ok(Cluster {
            id: ClusterId(row.id),
            name: row.name,
            labels: labels_from_json(row.labels)?,
            state: cluster_state(&row.state)?,
            agent_version: row.agent_version,
            connected_replica: row.connected_replica,
            last_seen: row.last_seen,
            created: row.created_at,
        })
    }
}

pub(in crate::store) async fn create_cluster(
    pool: &PgPool,
    id: ClusterId,
    name: &str,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Cluster, StoreError> {
    let row = sqlx::query_as!(
        ClusterRow,
        r#"INSERT INTO clusters (id, name, labels, state, created_at, updated_at)
           VALUES ($1, $2, $3, 'pending', $4, $4)
           ON CONFLICT (name) DO NOTHING
           RETURNING id, name, labels, state, agent_version, connected_replica, last_seen,
                     created_at"#,
        id.0,
        name,
        labels_json(labels),
        now,
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or_else(|| StoreError::AlreadyExists {
        what: format!("cluster {name:?}"),
    })?
    .try_into()
}

pub(in crate::store) async fn cluster_by_name(
    pool: &PgPool,
    name: &str,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query_as!(
        ClusterRow,
        r#"SELECT id, name, labels, state, agent_version, connected_replica, last_seen, created_at
           FROM clusters WHERE name = $1"#,
        name,
    )
    .fetch_optional(pool)
    .await?
    .map(Cluster::try_from)
    .transpose()
}

pub(in crate::store) async fn cluster_by_id(
    pool: &PgPool,
    id: ClusterId,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query_as!(
        ClusterRow,
        r#"SELECT id, name, labels, state, agent_version, connected_replica, last_seen, created_at
           FROM clusters WHERE id = $1"#,
        id.0,
    )
    .fetch_optional(pool)
    .await?
    .map(Cluster::try_from)
    .transpose()
}

pub(in crate::store) async fn list_clusters(
    pool: &PgPool,
    match_labels: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Cluster>, StoreError> {
    let filter = match_labels.map(labels_json);
    sqlx::query_as!(
        ClusterRow,
        r#"SELECT id, name, labels, state, agent_version, connected_replica, last_seen, created_at
           FROM clusters
           WHERE $1::jsonb IS NULL OR labels @> $1::jsonb
           ORDER BY name"#,
        filter,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Cluster::try_from)
    .collect()
}

pub(in crate::store) async fn cluster_liveness(pool: &PgPool) -> Result<Vec<ClusterLiveness>, StoreError> {
    Ok(
        sqlx::query!("SELECT id, connected_replica, last_seen FROM clusters")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| ClusterLiveness {
                id: ClusterId(row.id),
                connected_replica: row.connected_replica,
                last_seen: row.last_seen,
            })
            .collect(),
    )
}

pub(in crate::store) async fn set_cluster_labels(
    pool: &PgPool,
    id: ClusterId,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query_as!(
        ClusterRow,
        r#"UPDATE clusters SET labels = $2, updated_at = $3 WHERE id = $1
           RETURNING id, name, labels, state, agent_version, connected_replica, last_seen,
                     created_at"#,
        id.0,
        labels_json(labels),
        now,
    )
    .fetch_optional(pool)
    .await?
    .map(Cluster::try_from)
    .transpose()
}

impl ClusterSql for Postgres {
    type ClusterRow = ClusterRow;

    async fn revoke_cluster(
        conn: &mut PgConnection,
        id: ClusterId,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRow>, StoreError> {
        Ok(sqlx::query_as!(
            ClusterRow,
            r#"UPDATE clusters SET state = 'revoked', credential_sha256 = NULL, updated_at = $2
           WHERE id = $1
           RETURNING id, name, labels, state, agent_version, connected_replica, last_seen,
                     created_at"#,
            id.0,
            now,
        )
        .fetch_optional(&mut *conn)
        .await?)
    }
}

pub(in crate::store) async fn set_cluster_credential(
    pool: &PgPool,
    id: ClusterId,
    credential_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters SET credential_sha256 = $2, state = 'active', updated_at = $3
         WHERE id = $1 AND state <> 'revoked'",
        id.0,
        &credential_hash.0[..],
        now,
    )
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "cluster credential"))?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn active_credentials(
    pool: &PgPool,
) -> Result<Vec<(Sha256, ClusterId)>, StoreError> {
    sqlx::query!(
        r#"SELECT credential_sha256 AS "credential_sha256!", id FROM clusters
           WHERE state = 'active' AND credential_sha256 IS NOT NULL ORDER BY id"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok((
            sha256(&row.credential_sha256, "credential hash")?,
            ClusterId(row.id),
        ))
    })
    .collect()
}

pub(in crate::store) async fn record_connect(
    pool: &PgPool,
    id: ClusterId,
    replica: &str,
    agent_version: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters SET connected_replica = $2, agent_version = $3, connected_at = $4,
                last_seen = $4
         WHERE id = $1",
        id.0,
        replica,
        agent_version,
        at,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn record_disconnect(
    pool: &PgPool,
    id: ClusterId,
    replica: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters
         SET connected_replica = CASE WHEN connected_replica = $2 THEN NULL
                                      ELSE connected_replica END,
             last_seen = GREATEST(last_seen, $3)
         WHERE id = $1",
        id.0,
        replica,
        at,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn touch_last_seen(
    pool: &PgPool,
    ids: &[ClusterId],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query!(
        "UPDATE clusters SET last_seen = GREATEST(last_seen, $2) WHERE id = ANY($1)",
        &ids[..],
        at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn clear_replica(
    pool: &PgPool,
    replica: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters SET connected_replica = NULL, last_seen = GREATEST(last_seen, $2)
         WHERE connected_replica = $1",
        replica,
        now,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
