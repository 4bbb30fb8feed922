//! Postgres `sync_history`, `drift_events` and the audit read (see `store::history`): appends are
//! one `unnest` statement per batch.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::convert::to_u64;
use crate::store::history::{
    AuditQuery, DriftCount, DriftEntry, DriftRow, HistoryEntry, HistoryOutcome, HistoryQuery, HistoryRow,
    RevisionReach,
};
use crate::store::{AuditEvent, StoreError};

fn revision(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(in crate::store) async fn append_history(
    pool: &PgPool,
    replica: &str,
    rows: &[HistoryEntry],
) -> Result<(), StoreError> {
    let clusters: Vec<Uuid> = rows.iter().map(|r| r.cluster.0).collect();
    let fleet_secrets: Vec<String> = rows.iter().map(|r| r.fleet_secret.clone()).collect();
    let revisions: Vec<i64> = rows.iter().map(|r| revision(r.revision)).collect();
    let outcomes: Vec<String> = rows.iter().map(|r| r.outcome.as_str().to_owned()).collect();
    let errors: Vec<Option<String>> = rows.iter().map(|r| r.error.clone()).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    sqlx::query!(
        "INSERT INTO sync_history (cluster_id, fleet_secret, revision, outcome, error, replica, at)
         SELECT u.cluster_id, u.fleet_secret, u.revision, u.outcome, u.error, $6, u.at
         FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::text[], $7::timestamptz[])
              AS u(cluster_id, fleet_secret, revision, outcome, error, at)",
        &clusters[..],
        &fleet_secrets[..],
        &revisions[..],
        &outcomes[..],
        &errors[..] as &[Option<String>],
        replica,
        &at[..],
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn append_drift(
    pool: &PgPool,
    replica: &str,
    rows: &[DriftEntry],
) -> Result<(), StoreError> {
    let clusters: Vec<Uuid> = rows.iter().map(|r| r.cluster.0).collect();
    let fleet_secrets: Vec<String> = rows.iter().map(|r| r.fleet_secret.clone()).collect();
    let namespaces: Vec<String> = rows.iter().map(|r| r.namespace.clone()).collect();
    let kinds: Vec<String> = rows.iter().map(|r| r.kind.to_owned()).collect();
    let revisions: Vec<i64> = rows.iter().map(|r| revision(r.revision)).collect();
    let failures: Vec<Option<String>> = rows.iter().map(|r| r.failure.clone()).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    sqlx::query!(
        "INSERT INTO drift_events (cluster_id, fleet_secret, namespace, kind, revision, failure, replica, at)
         SELECT u.cluster_id, u.fleet_secret, u.namespace, u.kind, u.revision, u.failure, $7, u.at
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[],
                     $8::timestamptz[])
              AS u(cluster_id, fleet_secret, namespace, kind, revision, failure, at)",
        &clusters[..],
        &fleet_secrets[..],
        &namespaces[..],
        &kinds[..],
        &revisions[..],
        &failures[..] as &[Option<String>],
        replica,
        &at[..],
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn history(
    pool: &PgPool,
    query: &HistoryQuery,
) -> Result<Vec<HistoryRow>, StoreError> {
    sqlx::query!(
        r#"SELECT COALESCE(c.name, h.cluster_id::text) AS "cluster!", h.fleet_secret, h.revision,
                  h.outcome, h.error, h.replica, h.at
           FROM sync_history h LEFT JOIN clusters c ON c.id = h.cluster_id
           WHERE ($1::text IS NULL OR h.fleet_secret = $1)
             AND ($2::text IS NULL OR c.name = $2)
             AND ($3::timestamptz IS NULL OR h.at >= $3)
           ORDER BY h.at DESC, h.id DESC
           LIMIT $4"#,
        query.fleet_secret.as_deref(),
        query.cluster.as_deref(),
        query.since,
        i64::from(query.limit),
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(HistoryRow {
            cluster: row.cluster,
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "history revision")?,
            outcome: HistoryOutcome::parse(&row.outcome)?,
            error: row.error,
            replica: row.replica,
            at: row.at,
        })
    })
    .collect()
}

pub(in crate::store) async fn drift(
    pool: &PgPool,
    query: &HistoryQuery,
) -> Result<Vec<DriftRow>, StoreError> {
    sqlx::query!(
        r#"SELECT COALESCE(c.name, d.cluster_id::text) AS "cluster!", d.fleet_secret, d.namespace,
                  d.kind, d.revision, d.failure, d.replica, d.at
           FROM drift_events d LEFT JOIN clusters c ON c.id = d.cluster_id
           WHERE ($1::text IS NULL OR d.fleet_secret = $1)
             AND ($2::text IS NULL OR c.name = $2)
             AND ($3::timestamptz IS NULL OR d.at >= $3)
           ORDER BY d.at DESC, d.id DESC
           LIMIT $4"#,
        query.fleet_secret.as_deref(),
        query.cluster.as_deref(),
        query.since,
        i64::from(query.limit),
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(DriftRow {
            cluster: row.cluster,
            fleet_secret: row.fleet_secret,
            namespace: row.namespace,
            kind: row.kind,
            revision: to_u64(row.revision, "drift revision")?,
            failure: row.failure,
            replica: row.replica,
            at: row.at,
        })
    })
    .collect()
}

pub(in crate::store) async fn drift_counts(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<std::collections::BTreeMap<String, DriftCount>, StoreError> {
    Ok(sqlx::query!(
        r#"SELECT fleet_secret, count(*) AS "reported!", count(failure) AS "unrepaired!"
           FROM drift_events WHERE at >= $1 GROUP BY fleet_secret"#,
        since,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        (
            row.fleet_secret,
            DriftCount {
                reported: u32::try_from(row.reported).unwrap_or(u32::MAX),
                unrepaired: u32::try_from(row.unrepaired).unwrap_or(u32::MAX),
            },
        )
    })
    .collect())
}

pub(in crate::store) async fn audit_events(
    pool: &PgPool,
    query: &AuditQuery,
) -> Result<Vec<AuditEvent>, StoreError> {
    Ok(sqlx::query!(
        "SELECT actor, action, subject, at FROM audit_events
         WHERE ($1::text IS NULL OR actor = $1) AND ($2::timestamptz IS NULL OR at >= $2)
         ORDER BY at DESC, id DESC LIMIT $3",
        query.actor.as_deref(),
        query.since,
        i64::from(query.limit),
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| AuditEvent {
        actor: row.actor,
        action: row.action,
        subject: row.subject,
        at: row.at,
    })
    .collect())
}

pub(in crate::store) async fn revision_reach(
    pool: &PgPool,
    fleet_secret: &str,
) -> Result<std::collections::BTreeMap<u64, RevisionReach>, StoreError> {
    sqlx::query!(
        r#"SELECT revision,
                  count(DISTINCT cluster_id) FILTER (WHERE outcome = 'applied') AS "applied!",
                  count(DISTINCT cluster_id) FILTER (WHERE outcome = 'refused') AS "refused!",
                  min(at) FILTER (WHERE outcome = 'applied') AS first_applied,
                  max(at) FILTER (WHERE outcome = 'applied') AS last_applied
           FROM sync_history WHERE fleet_secret = $1 AND outcome <> 'removed'
           GROUP BY revision"#,
        fleet_secret,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok((
            to_u64(row.revision, "history revision")?,
            RevisionReach {
                applied: u32::try_from(row.applied).unwrap_or(u32::MAX),
                refused: u32::try_from(row.refused).unwrap_or(u32::MAX),
                first_applied: row.first_applied,
                last_applied: row.last_applied,
            },
        ))
    })
    .collect()
}

pub(in crate::store) async fn prune_history(
    pool: &PgPool,
    older_than: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let history = sqlx::query!("DELETE FROM sync_history WHERE at < $1", older_than)
        .execute(pool)
        .await?
        .rows_affected();
    let drift = sqlx::query!("DELETE FROM drift_events WHERE at < $1", older_than)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(history + drift)
}
