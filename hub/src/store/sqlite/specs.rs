//! SQLite `specs`: canonical YAML with a generation that grows on each change. The upsert's two
//! statements are [`SpecSql`] (alone, or in the all-or-nothing apply).

use chrono::{DateTime, Utc};
use sqlx::{Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{req_ts, ts};
use crate::store::convert::{spec_kind, to_u64};
use crate::store::dialect::SpecSql;
use crate::store::{SpecKind, StoreError, StoredSpec};

impl SpecSql for Sqlite {
    async fn write_spec(
        conn: &mut SqliteConnection,
        kind: SpecKind,
        name: &str,
        yaml: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO specs (kind, name, yaml, generation, created_at, updated_at)
         VALUES (?1, ?2, ?3, 1, ?4, ?4)
         ON CONFLICT (kind, name) DO UPDATE
           SET yaml = excluded.yaml, generation = specs.generation + 1,
               updated_at = excluded.updated_at
           WHERE specs.yaml <> excluded.yaml
         RETURNING generation",
        )
        .bind(kind.as_str())
        .bind(name)
        .bind(yaml)
        .bind(ts(now))
        .fetch_optional(&mut *conn)
        .await?)
    }

    async fn spec_generation(
        conn: &mut SqliteConnection,
        kind: SpecKind,
        name: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT generation FROM specs WHERE kind = ?1 AND name = ?2")
                .bind(kind.as_str())
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }
}

pub(in crate::store) async fn list_specs(pool: &SqlitePool) -> Result<Vec<StoredSpec>, StoreError> {
    sqlx::query("SELECT kind, name, yaml, generation, updated_at FROM specs ORDER BY kind, name")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredSpec {
                kind: spec_kind(&row.try_get::<String, _>("kind")?)?,
                name: row.try_get("name")?,
                yaml: row.try_get("yaml")?,
                generation: to_u64(row.try_get("generation")?, "spec generation")?,
                updated: req_ts(row, "updated_at", "spec updated_at")?,
            })
        })
        .collect()
}

pub(in crate::store) async fn delete_spec(
    pool: &SqlitePool,
    kind: SpecKind,
    name: &str,
) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM specs WHERE kind = ?1 AND name = ?2")
        .bind(kind.as_str())
        .bind(name)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}
