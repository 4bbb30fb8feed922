//! Postgres `poll_requests` and `store_polls` (see `store::polls`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::StoreError;
use crate::store::polls::{PollAsk, PollRequest, PollResult, StorePoll, join_stores, split_stores};

pub(in crate::store) async fn request_poll(
    pool: &PgPool,
    ask: &PollAsk,
    replica: &str,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let (store, vault, secret) = ask.columns();
    // One statement: the row and the wake-up of every replica commit together.
    Ok(sqlx::query_scalar!(
        r#"WITH inserted AS (
             INSERT INTO poll_requests (store, vault, secret, requested_by, requested_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id)
           SELECT inserted.id AS "id!"
           FROM inserted CROSS JOIN LATERAL pg_notify('keyfleet_changes', 'poll') AS n"#,
        store,
        vault,
        secret,
        replica,
        at,
    )
    .fetch_one(pool)
    .await?)
}

pub(in crate::store) async fn open_poll_requests(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<PollRequest>, StoreError> {
    Ok(sqlx::query!(
        "SELECT id, store, vault, secret, requested_by, requested_at FROM poll_requests
         WHERE done_at IS NULL ORDER BY id LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| PollRequest {
        id: row.id,
        ask: PollAsk::from_columns(row.store, row.vault, row.secret),
        requested_by: row.requested_by,
        requested_at: row.requested_at,
    })
    .collect())
}

pub(in crate::store) async fn complete_poll_request(
    pool: &PgPool,
    id: i64,
    replica: &str,
    result: &PollResult,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE poll_requests SET done_at = $2, done_by = $3, stores = $4, new_versions = $5, error = $6
         WHERE id = $1 AND done_at IS NULL",
        id,
        at,
        replica,
        join_stores(&result.stores),
        i32::try_from(result.new_versions).unwrap_or(i32::MAX),
        result.error.as_deref(),
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn poll_result(pool: &PgPool, id: i64) -> Result<Option<PollResult>, StoreError> {
    Ok(sqlx::query!(
        "SELECT stores, new_versions, error FROM poll_requests WHERE id = $1 AND done_at IS NOT NULL",
        id,
    )
    .fetch_optional(pool)
    .await?
    .map(|row| PollResult {
        stores: split_stores(row.stores),
        new_versions: row.new_versions.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        error: row.error,
    }))
}

pub(in crate::store) async fn prune_poll_requests(
    pool: &PgPool,
    older_than: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(
        sqlx::query!("DELETE FROM poll_requests WHERE requested_at < $1", older_than)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

pub(in crate::store) async fn record_store_poll(pool: &PgPool, poll: &StorePoll) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO store_polls (store, replica, polled_at, healthy, last_error, last_success_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (store) DO UPDATE SET replica = excluded.replica, polled_at = excluded.polled_at,
             healthy = excluded.healthy, last_error = excluded.last_error,
             last_success_at = COALESCE(excluded.last_success_at, store_polls.last_success_at)",
        poll.store,
        poll.replica,
        poll.polled_at,
        poll.healthy,
        poll.last_error,
        poll.last_success_at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn store_polls(pool: &PgPool) -> Result<Vec<StorePoll>, StoreError> {
    Ok(sqlx::query!(
        "SELECT store, replica, polled_at, healthy, last_error, last_success_at FROM store_polls ORDER BY store"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| StorePoll {
        store: row.store,
        replica: row.replica,
        polled_at: row.polled_at,
        healthy: row.healthy,
        last_error: row.last_error,
        last_success_at: row.last_success_at,
    })
    .collect())
}
