//! Postgres leader election: a session advisory lock on a connection of its own, pinged while
//! held. **Invariant:** the lock is released when the guard is dropped or its connection dies.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::{oneshot, watch};

use crate::store::{Leadership, StoreError};

/// How often a held leadership checks its connection.
const LEADER_PING: Duration = Duration::from_secs(2);

pub(in crate::store) async fn try_lead(pool: &PgPool, key: &str) -> Result<Option<Leadership>, StoreError> {
    let options = pool.connect_options();
    let mut conn = PgConnection::connect_with(&options).await?;
    let row = sqlx::query!(
        r#"SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS "locked!",
                  pg_backend_pid() AS "pid!""#,
        key,
    )
    .fetch_one(&mut conn)
    .await?;
    if !row.locked {
        conn.close().await?;
        return Ok(None);
    }
    let (stop, stopped) = oneshot::channel();
    let (lost_sender, lost) = watch::channel(false);
    let task = tokio::spawn(hold_leadership(conn, key.to_owned(), stopped, lost_sender));
    tracing::info!(key, "leadership acquired");
    Ok(Some(Leadership::postgres(stop, lost, task, row.pid)))
}

/// Keeps the lock's connection, pings it, and releases the lock when told (or the guard drops).
async fn hold_leadership(
    mut conn: PgConnection,
    key: String,
    mut stop: oneshot::Receiver<()>,
    lost: watch::Sender<bool>,
) {
    let mut ping = tokio::time::interval(LEADER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => {
                let unlocked = sqlx::query_scalar!(
                    r#"SELECT pg_advisory_unlock(hashtextextended($1, 0)) AS "unlocked!""#,
                    key,
                )
                .fetch_one(&mut conn)
                .await;
                if let Err(error) = unlocked {
                    tracing::warn!(%error, key, "cannot release leadership; closing its connection");
                }
                let _ = conn.close().await;
                tracing::info!(key, "leadership released");
                return;
            }
            _ = ping.tick() => {
                if let Err(error) = conn.ping().await {
                    tracing::warn!(%error, key, "leadership lost: its connection failed");
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}
