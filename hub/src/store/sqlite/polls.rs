//! SQLite `poll_requests` and `store_polls` (see `store::polls`).

use chrono::{DateTime, Utc};
use sqlx::{Row as _, SqlitePool};

use super::{opt_ts, req_ts, ts};
use crate::store::StoreError;
use crate::store::polls::{PollAsk, PollRequest, PollResult, StorePoll, join_stores, split_stores};

pub(in crate::store) async fn request_poll(
    pool: &SqlitePool,
    ask: &PollAsk,
    replica: &str,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let (store, vault, secret) = ask.columns();
    Ok(sqlx::query_scalar(
        "INSERT INTO poll_requests (store, vault, secret, requested_by, requested_at)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
    )
    .bind(store)
    .bind(vault)
    .bind(secret)
    .bind(replica)
    .bind(ts(at))
    .fetch_one(pool)
    .await?)
}

pub(in crate::store) async fn open_poll_requests(
    pool: &SqlitePool,
    limit: i64,
) -> Result<Vec<PollRequest>, StoreError> {
    sqlx::query(
        "SELECT id, store, vault, secret, requested_by, requested_at FROM poll_requests
         WHERE done_at IS NULL ORDER BY id LIMIT ?1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(PollRequest {
            id: row.try_get("id")?,
            ask: PollAsk::from_columns(
                row.try_get("store")?,
                row.try_get("vault")?,
                row.try_get("secret")?,
            ),
            requested_by: row.try_get("requested_by")?,
            requested_at: req_ts(row, "requested_at", "poll request time")?,
        })
    })
    .collect()
}

pub(in crate::store) async fn complete_poll_request(
    pool: &SqlitePool,
    id: i64,
    replica: &str,
    result: &PollResult,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE poll_requests SET done_at = ?2, done_by = ?3, stores = ?4, new_versions = ?5, error = ?6
         WHERE id = ?1 AND done_at IS NULL",
    )
    .bind(id)
    .bind(ts(at))
    .bind(replica)
    .bind(join_stores(&result.stores))
    .bind(i64::from(result.new_versions))
    .bind(result.error.as_deref())
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn poll_result(
    pool: &SqlitePool,
    id: i64,
) -> Result<Option<PollResult>, StoreError> {
    sqlx::query("SELECT stores, new_versions, error FROM poll_requests WHERE id = ?1 AND done_at IS NOT NULL")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|row| {
            Ok(PollResult {
                stores: split_stores(row.try_get("stores")?),
                new_versions: row
                    .try_get::<Option<i64>, _>("new_versions")?
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                error: row.try_get("error")?,
            })
        })
        .transpose()
}

pub(in crate::store) async fn prune_poll_requests(
    pool: &SqlitePool,
    older_than: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM poll_requests WHERE requested_at < ?1")
        .bind(ts(older_than))
        .execute(pool)
        .await?
        .rows_affected())
}

pub(in crate::store) async fn record_store_poll(
    pool: &SqlitePool,
    poll: &StorePoll,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO store_polls (store, replica, polled_at, healthy, last_error, last_success_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (store) DO UPDATE SET replica = excluded.replica, polled_at = excluded.polled_at,
             healthy = excluded.healthy, last_error = excluded.last_error,
             last_success_at = COALESCE(excluded.last_success_at, store_polls.last_success_at)",
    )
    .bind(&poll.store)
    .bind(&poll.replica)
    .bind(ts(poll.polled_at))
    .bind(poll.healthy)
    .bind(&poll.last_error)
    .bind(poll.last_success_at.map(ts))
    .execute(pool)
    .await?;
    Ok(())
}

pub(in crate::store) async fn store_polls(pool: &SqlitePool) -> Result<Vec<StorePoll>, StoreError> {
    sqlx::query("SELECT store, replica, polled_at, healthy, last_error, last_success_at FROM store_polls ORDER BY store")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(StorePoll {
                store: row.try_get("store")?,
                replica: row.try_get("replica")?,
                polled_at: req_ts(row, "polled_at", "store poll time")?,
                healthy: row.try_get("healthy")?,
                last_error: row.try_get("last_error")?,
                last_success_at: opt_ts(row, "last_success_at", "store poll success time")?,
            })
        })
        .collect()
}
