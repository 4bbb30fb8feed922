//! Postgres `specs`: canonical YAML with a generation that grows on each change. The upsert's two
//! statements are [`SpecSql`] (alone, or in the all-or-nothing apply).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::store::convert::{spec_kind, to_u64};
use crate::store::dialect::SpecSql;
use crate::store::{SpecKind, StoreError, StoredSpec};

impl SpecSql for Postgres {
    async fn write_spec(
        conn: &mut PgConnection,
        kind: SpecKind,
        name: &str,
        yaml: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar!(
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
        .await?)
    }

    async fn spec_generation(
        conn: &mut PgConnection,
        kind: SpecKind,
        name: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar!(
            "SELECT generation FROM specs WHERE kind = $1 AND name = $2",
            kind.as_str(),
            name,
        )
        .fetch_optional(&mut *conn)
        .await?)
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
