//! SQLite backend, the embedded default: runtime-bound `sqlx::query` (the checked macros need one
//! `DATABASE_URL` at build time, which is the Postgres one), one file per table; the conformance
//! tests in `tests.rs` prove this SQL. Each table file holds its standalone statements and its
//! [`dialect`](super::dialect) trait impl.
//!
//! Dialect: ids are hyphenated TEXT, times fixed-width TEXT `YYYY-MM-DDTHH:MM:SS.ffffffZ` (text
//! order is time order), digests BLOB, labels and sources JSON TEXT.

pub(super) mod audit;
pub(super) mod changes;
pub(super) mod clusters;
pub(super) mod digests;
pub(super) mod enrollment;
pub(super) mod governance;
pub(super) mod history;
pub(super) mod polls;
pub(super) mod revisions;
pub(super) mod rollouts;
pub(super) mod specs;
pub(super) mod status;

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row as _, Sqlite, SqlitePool};
use uuid::Uuid;

use super::StoreError;
use super::convert::labels_json;
use super::dialect::Dialect;
use crate::domain::{ClusterId, Labels};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

impl Dialect for Sqlite {
    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }
}

/// Connections of a file database: SQLite runs one writer at a time (the status and history
/// writers take turns), so more connections add only readers, and each holds its own schema,
/// statement cache and page cache. 8 of them held ~1 KiB per agent more at 1,500 agents than 4
/// (docs/performance.md, "Memory per agent").
const FILE_CONNECTIONS: u32 = 4;
/// Each connection's page cache, KiB (SQLite's default is 2,000 KiB). The file's pages stay in the
/// kernel's page cache as well, so a page this cache dropped is a `pread` away, not a disk read.
const PAGE_CACHE_KIB: u32 = 512;

/// A pool on `url`: one connection forever for `:memory:`, else up to [`FILE_CONNECTIONS`] in
/// WAL mode.
pub(super) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = if memory {
        // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Negative: a size in KiB rather than in pages.
            .pragma("cache_size", format!("-{PAGE_CACHE_KIB}"));
        SqlitePoolOptions::new().max_connections(FILE_CONNECTIONS)
    };
    Ok(pool.connect_with(options).await?)
}

/// Fixed-width UTC text: sorts like time, parsed by SQLite's date functions.
fn ts(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(text: &str, what: &'static str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt { what })
}

fn opt_ts(row: &SqliteRow, column: &str, what: &'static str) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<String>, _>(column)?
        .map(|text| parse_ts(&text, what))
        .transpose()
}

fn req_ts(row: &SqliteRow, column: &str, what: &'static str) -> Result<DateTime<Utc>, StoreError> {
    parse_ts(&row.try_get::<String, _>(column)?, what)
}

fn uuid(row: &SqliteRow, column: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&row.try_get::<String, _>(column)?)
        .map_err(|_| StoreError::Corrupt { what: "cluster id" })
}

fn id_text(id: ClusterId) -> String {
    id.0.hyphenated().to_string()
}

fn labels_text(labels: &Labels) -> String {
    labels_json(labels).to_string()
}
