//! Postgres `enrollment_tokens`: single-use tokens, stored as SHA-256 digests. Expiring a revoked
//! cluster's tokens is a statement of [`TokenSql`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::domain::{ClusterId, Sha256};
use crate::store::StoreError;
use crate::store::convert::{TokenState, cluster_state};
use crate::store::dialect::TokenSql;
use crate::store::error::unique_to_exists;

pub(in crate::store) async fn issue_enrollment_token(
    pool: &PgPool,
    cluster: ClusterId,
    token_hash: &Sha256,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "INSERT INTO enrollment_tokens (token_sha256, cluster_id, expires_at, created_at)
         SELECT $1, id, $3, $4 FROM clusters WHERE id = $2 AND state <> 'revoked'",
        &token_hash.0[..],
        cluster.0,
        expires,
        now,
    )
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "enrollment token"))?;
    Ok(result.rows_affected() == 1)
}

pub(in crate::store) async fn consume_enrollment_token(
    pool: &PgPool,
    token_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<Option<ClusterId>, StoreError> {
    let row = sqlx::query!(
        "UPDATE enrollment_tokens t SET used_at = $2
         WHERE t.token_sha256 = $1 AND t.used_at IS NULL AND t.expires_at > $2
           AND EXISTS (SELECT 1 FROM clusters c WHERE c.id = t.cluster_id AND c.state <> 'revoked')
         RETURNING t.cluster_id",
        &token_hash.0[..],
        now,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| ClusterId(row.cluster_id)))
}

pub(in crate::store) async fn token_state(
    pool: &PgPool,
    token_hash: &Sha256,
) -> Result<Option<TokenState>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT t.cluster_id, t.used_at, t.expires_at, c.state AS "cluster_state!"
           FROM enrollment_tokens t JOIN clusters c ON c.id = t.cluster_id
           WHERE t.token_sha256 = $1"#,
        &token_hash.0[..],
    )
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(TokenState {
            cluster: ClusterId(row.cluster_id),
            used_at: row.used_at,
            expires: row.expires_at,
            cluster_state: cluster_state(&row.cluster_state)?,
        })
    })
    .transpose()
}

impl TokenSql for Postgres {
    async fn expire_tokens(
        conn: &mut PgConnection,
        cluster: ClusterId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE enrollment_tokens SET expires_at = LEAST(expires_at, $2)
         WHERE cluster_id = $1 AND used_at IS NULL",
            cluster.0,
            now,
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
