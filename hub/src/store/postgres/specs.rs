//! Postgres `specs`: canonical YAML with a generation that grows on each change. The upsert is a
//! statement of [`SpecSql`] (alone, or in the all-or-nothing apply).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::store::convert::{spec_kind, to_u64};
use crate::store::dialect::SpecSql;
use crate::store::{SpecAction, SpecKind, StoreError, StoredSpec};

impl SpecSql for Postgres {
    async fn upsert_spec(
        conn: &mut PgConnection,
        kind: SpecKind,
        name: &str,
        yaml: &str,
        now: DateTime<Utc>,
    ) -> Result<(u64, SpecAction), StoreError> {
        let written = sqlx::query_scalar!(
            "INSERT INTO specs (kind, name, yaml, generation, created_at, updated_at)
         VALUES ($1, $2, $3, 1, $4, $4)
         ON CONFLICT (kind, name) DO UPDATE
           SET yaml = excluded.yaml, generation = specs.generation + 1,
               updated_at = excluded.updated_at
           WHERE specs.yaml <> excluded.yaml
         RETURNING generation",
            kind.as_str(),
            name,
            yaml,
            now,
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(generation) = written {
            let action = if generation == 1 {
                SpecAction::Created
            } else {
                SpecAction::Configured
            };
            return Ok((to_u64(generation, "spec generation")?, action));
        }
        let generation = sqlx::query_scalar!(
            "SELECT generation FROM specs WHERE kind = $1 AND name = $2",
            kind.as_str(),
            name,
        )
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!("{} {name:?} was deleted concurrently", kind.as_str()))
        })?;
        Ok((to_u64(generation, "spec generation")?, SpecAction::Unchanged))
    }
}

pub(in crate::store) async fn list_specs(pool: &PgPool) -> Result<Vec<StoredSpec>, StoreError> {
    sqlx::query!("SELECT kind, name, yaml, generation, updated_at FROM specs ORDER BY kind, name")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok(StoredSpec {
                kind: spec_kind(&row.kind)?,
                name: row.name,
                yaml: row.yaml,
                generation: to_u64(row.generation, "spec generation")?,
                updated: row.updated_at,
            })
        })
        .collect()
}

pub(in crate::store) async fn delete_spec(
    pool: &PgPool,
    kind: SpecKind,
    name: &str,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "DELETE FROM specs WHERE kind = $1 AND name = $2",
        kind.as_str(),
        name
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}
