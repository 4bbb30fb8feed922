//! SQLite `sync_history`, `drift_events` and the audit read (see `store::history`): appends are
//! one multi-row `INSERT` per batch (chunked below SQLite's bind limit).

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};

use super::{opt_ts, req_ts, ts};
use crate::store::convert::to_u64;
use crate::store::history::{
    AuditQuery, DriftCount, DriftEntry, DriftRow, HistoryEntry, HistoryOutcome, HistoryQuery, HistoryRow,
    RevisionReach,
};
use crate::store::{AuditEvent, StoreError};

/// Rows per statement: at most 8 binds each, under SQLite's 32,766-bind limit.
const ROWS_PER_STATEMENT: usize = 4_000;

fn revision(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(in crate::store) async fn append_history(
    pool: &SqlitePool,
    replica: &str,
    rows: &[HistoryEntry],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO sync_history (cluster_id, fleet_secret, revision, outcome, error, replica, at) ",
        );
        insert.push_values(chunk, |mut row, entry| {
            row.push_bind(entry.cluster.0.to_string())
                .push_bind(entry.fleet_secret.clone())
                .push_bind(revision(entry.revision))
                .push_bind(entry.outcome.as_str())
                .push_bind(entry.error.clone())
                .push_bind(replica.to_owned())
                .push_bind(ts(entry.at));
        });
        // One text per batch size: not cached (see `status::upsert_status`).
        insert.build().persistent(false).execute(pool).await?;
    }
    Ok(())
}

pub(in crate::store) async fn append_drift(
    pool: &SqlitePool,
    replica: &str,
    rows: &[DriftEntry],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO drift_events (cluster_id, fleet_secret, namespace, kind, revision, failure, replica, at) ",
        );
        insert.push_values(chunk, |mut row, entry| {
            row.push_bind(entry.cluster.0.to_string())
                .push_bind(entry.fleet_secret.clone())
                .push_bind(entry.namespace.clone())
                .push_bind(entry.kind)
                .push_bind(revision(entry.revision))
                .push_bind(entry.failure.clone())
                .push_bind(replica.to_owned())
                .push_bind(ts(entry.at));
        });
        // One text per batch size: not cached (see `status::upsert_status`).
        insert.build().persistent(false).execute(pool).await?;
    }
    Ok(())
}

pub(in crate::store) async fn history(
    pool: &SqlitePool,
    query: &HistoryQuery,
) -> Result<Vec<HistoryRow>, StoreError> {
    sqlx::query(
        "SELECT COALESCE(c.name, h.cluster_id) AS cluster, h.fleet_secret, h.revision, h.outcome,
                h.error, h.replica, h.at
         FROM sync_history h LEFT JOIN clusters c ON c.id = h.cluster_id
         WHERE (?1 IS NULL OR h.fleet_secret = ?1)
           AND (?2 IS NULL OR c.name = ?2)
           AND (?3 IS NULL OR h.at >= ?3)
         ORDER BY h.at DESC, h.id DESC
         LIMIT ?4",
    )
    .bind(query.fleet_secret.as_deref())
    .bind(query.cluster.as_deref())
    .bind(query.since.map(ts))
    .bind(i64::from(query.limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(HistoryRow {
            cluster: row.try_get("cluster")?,
            fleet_secret: row.try_get("fleet_secret")?,
            revision: to_u64(row.try_get("revision")?, "history revision")?,
            outcome: HistoryOutcome::parse(&row.try_get::<String, _>("outcome")?)?,
            error: row.try_get("error")?,
            replica: row.try_get("replica")?,
            at: req_ts(row, "at", "history time")?,
        })
    })
    .collect()
}

pub(in crate::store) async fn drift(
    pool: &SqlitePool,
    query: &HistoryQuery,
) -> Result<Vec<DriftRow>, StoreError> {
    sqlx::query(
        "SELECT COALESCE(c.name, d.cluster_id) AS cluster, d.fleet_secret, d.namespace, d.kind,
                d.revision, d.failure, d.replica, d.at
         FROM drift_events d LEFT JOIN clusters c ON c.id = d.cluster_id
         WHERE (?1 IS NULL OR d.fleet_secret = ?1)
           AND (?2 IS NULL OR c.name = ?2)
           AND (?3 IS NULL OR d.at >= ?3)
         ORDER BY d.at DESC, d.id DESC
         LIMIT ?4",
    )
    .bind(query.fleet_secret.as_deref())
    .bind(query.cluster.as_deref())
    .bind(query.since.map(ts))
    .bind(i64::from(query.limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(DriftRow {
            cluster: row.try_get("cluster")?,
            fleet_secret: row.try_get("fleet_secret")?,
            namespace: row.try_get("namespace")?,
            kind: row.try_get("kind")?,
            revision: to_u64(row.try_get("revision")?, "drift revision")?,
            failure: row.try_get("failure")?,
            replica: row.try_get("replica")?,
            at: req_ts(row, "at", "drift time")?,
        })
    })
    .collect()
}

pub(in crate::store) async fn drift_counts(
    pool: &SqlitePool,
    since: DateTime<Utc>,
) -> Result<std::collections::BTreeMap<String, DriftCount>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, count(*) AS reported, count(failure) AS unrepaired
         FROM drift_events WHERE at >= ?1 GROUP BY fleet_secret",
    )
    .bind(ts(since))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok((
            row.try_get::<String, _>("fleet_secret")?,
            DriftCount {
                reported: u32::try_from(row.try_get::<i64, _>("reported")?).unwrap_or(u32::MAX),
                unrepaired: u32::try_from(row.try_get::<i64, _>("unrepaired")?).unwrap_or(u32::MAX),
            },
        ))
    })
    .collect()
}

pub(in crate::store) async fn audit_events(
    pool: &SqlitePool,
    query: &AuditQuery,
) -> Result<Vec<AuditEvent>, StoreError> {
    sqlx::query(
        "SELECT actor, action, subject, at FROM audit_events
         WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR at >= ?2)
         ORDER BY at DESC, id DESC LIMIT ?3",
    )
    .bind(query.actor.as_deref())
    .bind(query.since.map(ts))
    .bind(i64::from(query.limit))
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

pub(in crate::store) async fn revision_reach(
    pool: &SqlitePool,
    fleet_secret: &str,
) -> Result<std::collections::BTreeMap<u64, RevisionReach>, StoreError> {
    sqlx::query(
        "SELECT revision,
                count(DISTINCT CASE WHEN outcome = 'applied' THEN cluster_id END) AS applied,
                count(DISTINCT CASE WHEN outcome = 'refused' THEN cluster_id END) AS refused,
                min(CASE WHEN outcome = 'applied' THEN at END) AS first_applied,
                max(CASE WHEN outcome = 'applied' THEN at END) AS last_applied
         FROM sync_history WHERE fleet_secret = ?1 AND outcome <> 'removed'
         GROUP BY revision",
    )
    .bind(fleet_secret)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok((
            to_u64(row.try_get("revision")?, "history revision")?,
            RevisionReach {
                applied: u32::try_from(row.try_get::<i64, _>("applied")?).unwrap_or(u32::MAX),
                refused: u32::try_from(row.try_get::<i64, _>("refused")?).unwrap_or(u32::MAX),
                first_applied: opt_ts(row, "first_applied", "history time")?,
                last_applied: opt_ts(row, "last_applied", "history time")?,
            },
        ))
    })
    .collect()
}

pub(in crate::store) async fn prune_history(
    pool: &SqlitePool,
    older_than: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let cutoff = ts(older_than);
    let history = sqlx::query("DELETE FROM sync_history WHERE at < ?1")
        .bind(&cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    let drift = sqlx::query("DELETE FROM drift_events WHERE at < ?1")
        .bind(&cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(history + drift)
}
