//! Postgres `audit_events`: who did what to which subject (names only, never values). The append
//! is a statement of [`AuditSql`] (alone, or in the all-or-nothing apply).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::store::dialect::AuditSql;
use crate::store::{AuditEvent, StoreError};

impl AuditSql for Postgres {
    async fn append_audit(
        conn: &mut PgConnection,
        actor: &str,
        action: &str,
        subject: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO audit_events (actor, action, subject, at) VALUES ($1, $2, $3, $4)",
            actor,
            action,
            subject,
            at,
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

pub(in crate::store) async fn audit(pool: &PgPool, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
    Ok(sqlx::query_as!(
        AuditEvent,
        "SELECT actor, action, subject, at FROM audit_events ORDER BY id DESC LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await?)
}
