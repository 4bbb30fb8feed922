//! SQLite `changes` and `change_horizon`: the change log and its pruning (statements of
//! [`ChangeSql`]). One node: nobody else writes the log, so nothing needs waking.

use chrono::{DateTime, Utc};
use sqlx::{Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::{req_ts, ts};
use crate::store::convert::change_kind;
use crate::store::dialect::ChangeSql;
use crate::store::{Change, ChangeKind, StoreError};

impl ChangeSql for Sqlite {
    async fn append_change(
        conn: &mut SqliteConnection,
        kind: ChangeKind,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("INSERT INTO changes (kind, subject, at) VALUES (?1, ?2, ?3) RETURNING seq")
                .bind(kind.as_str())
                .bind(subject)
                .bind(ts(now))
                .fetch_one(&mut *conn)
                .await?,
        )
    }

    async fn prune_cutoff(
        conn: &mut SqliteConnection,
        older_than: DateTime<Utc>,
        keep: i64,
    ) -> Result<Option<i64>, StoreError> {
        // The newest entry old enough, never one of the `keep` newest.
        Ok(sqlx::query_scalar(
            "SELECT max(seq) FROM changes
         WHERE at < ?1 AND seq <= (SELECT COALESCE(max(seq), 0) FROM changes) - ?2",
        )
        .bind(ts(older_than))
        .bind(keep)
        .fetch_one(&mut *conn)
        .await?)
    }

    async fn delete_changes_through(conn: &mut SqliteConnection, cutoff: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM changes WHERE seq <= ?1")
            .bind(cutoff)
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }

    async fn raise_horizon(conn: &mut SqliteConnection, cutoff: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO change_horizon (id, pruned_through) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET pruned_through = max(pruned_through, excluded.pruned_through)",
        )
        .bind(cutoff)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

pub(in crate::store) async fn changes_since(
    pool: &SqlitePool,
    cursor: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    sqlx::query("SELECT seq, kind, subject, at FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Change {
                seq: row.try_get("seq")?,
                kind: change_kind(&row.try_get::<String, _>("kind")?)?,
                subject: row.try_get("subject")?,
                at: req_ts(row, "at", "change at")?,
            })
        })
        .collect()
}

pub(in crate::store) async fn latest_change(pool: &SqlitePool) -> Result<i64, StoreError> {
    // Past the horizon even when pruning emptied the log, so a new reader's cursor is valid.
    Ok(sqlx::query_scalar(
        "SELECT max(COALESCE((SELECT max(seq) FROM changes), 0),
                    COALESCE((SELECT pruned_through FROM change_horizon), 0))",
    )
    .fetch_one(pool)
    .await?)
}

pub(in crate::store) async fn status_inputs(pool: &SqlitePool) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT max(COALESCE((SELECT max(seq) FROM changes), 0),
                    COALESCE((SELECT pruned_through FROM change_horizon), 0)),
                (SELECT generation FROM status_generation WHERE id = 1)",
    )
    .fetch_one(pool)
    .await?)
}

pub(in crate::store) async fn change_horizon(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE((SELECT pruned_through FROM change_horizon), 0)")
            .fetch_one(pool)
            .await?,
    )
}
