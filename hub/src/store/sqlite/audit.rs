//! SQLite `audit_events`: who did what to which subject (names only, never values). The append is
//! a statement of [`AuditSql`] (alone, or in the all-or-nothing apply).

use chrono::{DateTime, Utc};
use sqlx::{Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{req_ts, ts};
use crate::store::dialect::AuditSql;
use crate::store::{AuditEvent, StoreError};

impl AuditSql for Sqlite {
    async fn append_audit(
        conn: &mut SqliteConnection,
        actor: &str,
        action: &str,
        subject: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_events (actor, action, subject, at) VALUES (?1, ?2, ?3, ?4)")
            .bind(actor)
            .bind(action)
            .bind(subject)
            .bind(ts(at))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

pub(in crate::store) async fn audit(pool: &SqlitePool, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
    sqlx::query("SELECT actor, action, subject, at FROM audit_events ORDER BY id DESC LIMIT ?1")
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AuditEvent {
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                subject: row.try_get("subject")?,
                at: req_ts(row, "at", "audit at")?,
            })
        })
        .collect()
}
