//! Postgres `changes` and `change_horizon`: the change log replicas tail, its pruning (statements
//! of [`ChangeSql`]), and the task that LISTENs `keyfleet_changes` and `keyfleet_status` and
//! wakes a reader.
//! **Invariant:** a notification is only a wake-up; the log is the truth.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::mpsc;

use crate::store::convert::change_kind;
use crate::store::dialect::ChangeSql;
use crate::store::{CHANGES_CHANNEL, Change, ChangeKind, STATUS_CHANNEL, StoreError};

impl ChangeSql for Postgres {
    async fn append_change(
        conn: &mut PgConnection,
        kind: ChangeKind,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        // One statement: the row and its wake-up commit together.
        Ok(sqlx::query_scalar!(
            r#"WITH inserted AS (
             INSERT INTO changes (kind, subject, at) VALUES ($1, $2, $3) RETURNING seq)
           SELECT inserted.seq AS "seq!"
           FROM inserted CROSS JOIN LATERAL pg_notify('keyfleet_changes', inserted.seq::text) AS n"#,
            kind.as_str(),
            subject,
            now,
        )
        .fetch_one(&mut *conn)
        .await?)
    }

    async fn prune_cutoff(
        conn: &mut PgConnection,
        older_than: DateTime<Utc>,
        keep: i64,
    ) -> Result<Option<i64>, StoreError> {
        // The newest entry old enough, never one of the `keep` newest.
        Ok(sqlx::query_scalar!(
            "SELECT max(seq) FROM changes
         WHERE at < $1 AND seq <= (SELECT COALESCE(max(seq), 0) FROM changes) - $2",
            older_than,
            keep,
        )
        .fetch_one(&mut *conn)
        .await?)
    }

    async fn delete_changes_through(conn: &mut PgConnection, cutoff: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query!("DELETE FROM changes WHERE seq <= $1", cutoff)
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }

    async fn raise_horizon(conn: &mut PgConnection, cutoff: i64) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO change_horizon (id, pruned_through) VALUES (true, $1)
         ON CONFLICT (id) DO UPDATE
         SET pruned_through = GREATEST(change_horizon.pruned_through, excluded.pruned_through)",
            cutoff,
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

pub(in crate::store) async fn changes_since(
    pool: &PgPool,
    cursor: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    sqlx::query!(
        "SELECT seq, kind, subject, at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        cursor,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(Change {
            seq: row.seq,
            kind: change_kind(&row.kind)?,
            subject: row.subject,
            at: row.at,
        })
    })
    .collect()
}

pub(in crate::store) async fn latest_change(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        // Past the horizon even when pruning emptied the log, so a new reader's cursor is valid.
        sqlx::query_scalar!(
            r#"SELECT GREATEST(COALESCE((SELECT max(seq) FROM changes), 0),
                               COALESCE((SELECT pruned_through FROM change_horizon), 0)) AS "seq!""#
        )
        .fetch_one(pool)
        .await?,
    )
}

pub(in crate::store) async fn status_inputs(pool: &PgPool) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query!(
        r#"SELECT GREATEST(COALESCE((SELECT max(seq) FROM changes), 0),
                          COALESCE((SELECT pruned_through FROM change_horizon), 0)) AS "seq!",
                  (SELECT last_value FROM status_generation) AS "generation!""#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.seq, row.generation))
}

pub(in crate::store) async fn change_horizon(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT COALESCE((SELECT pruned_through FROM change_horizon), 0) AS "seq!""#)
            .fetch_one(pool)
            .await?,
    )
}

/// Tells every listening replica that status rows were written (an empty payload: the readers
/// re-read what they need).
pub(in crate::store) async fn notify_status(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(STATUS_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

/// LISTENs on a connection of its own (a one-connection pool, so the store's pool keeps all of
/// its connections) and turns notifications into coalesced wake-ups, per channel. Ends when the
/// change-log receiver is dropped.
pub(in crate::store) async fn spawn_listener(
    pool: &PgPool,
    changes: mpsc::Sender<()>,
    status: mpsc::Sender<()>,
) -> Result<(), StoreError> {
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&listen_pool).await?;
    listener.listen_all([CHANGES_CHANNEL, STATUS_CHANNEL]).await?;
    let wake_both = |changes: &mpsc::Sender<()>, status: &mpsc::Sender<()>| {
        let _ = changes.try_send(());
        let _ = status.try_send(());
    };
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = changes.closed() => break,
            };
            match received {
                Ok(Some(notification)) => {
                    failures = 0;
                    if notification.channel() == STATUS_CHANNEL {
                        let _ = status.try_send(());
                    } else {
                        let _ = changes.try_send(());
                    }
                }
                Ok(None) => {
                    // Eager reconnect: the connection is back and LISTENs again; notifications
                    // sent meanwhile are lost, so wake the reader to re-read from its cursor.
                    tracing::info!(channel = CHANGES_CHANNEL, "change listener reconnected");
                    wake_both(&changes, &status);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(2u32.saturating_pow(failures.min(6)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(%error, ?backoff, "change listener failed; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = changes.closed() => break,
                    }
                    // Re-LISTEN first (this reconnects), then wake: never re-read before LISTEN.
                    if listener
                        .listen_all([CHANGES_CHANNEL, STATUS_CHANNEL])
                        .await
                        .is_ok()
                    {
                        wake_both(&changes, &status);
                    }
                }
            }
        }
        drop(listener);
        listen_pool.close().await;
    });
    Ok(())
}
