//! The store benchmark behind `cargo bench -p keyfleet-hub --bench store` (`hub/benches/store.rs`).
//!
//! It fills a store the way a fleet of `clusters` × `fleet_secrets` does: every cluster enrolled and
//! (but for 5 %) connected, then a full-fleet rotation of each fleet secret written as one status
//! batch of "pending" rows per secret followed by one batch of acks (2 % left pending, 2 % failed).
//! It counts the statements the status writer needs (the figure the status path is built around:
//! ≤ 50 per 10,000 acks) and times each dashboard view as Grafana queries it (median of
//! `samples`). Correctness is checked (row counts), time is only reported: this is a benchmark, not
//! a timed test. The figures are in `docs/dashboards.md`.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use futures::StreamExt as _;
use serde::Serialize;
use sqlx::{Connection as _, Executor as _};

use super::{Backend, StatusRow, Store, StoreError};
use crate::domain::{ClusterId, Labels, Sha256, SyncState};

/// Most status statements for 10,000 acks (ARCHITECTURE.md,
/// Performance Targets).
pub const STATEMENTS_PER_10K_ACKS_TARGET: f64 = 50.0;
/// Slowest acceptable dashboard view on Postgres at 500,000 status rows (ARCHITECTURE.md,
/// Performance Targets).
pub const VIEW_MILLIS_TARGET: f64 = 50.0;

/// Size of the simulated fleet.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Enrolled clusters.
    pub clusters: usize,
    /// Fleet secrets, each targeting every cluster.
    pub fleet_secrets: usize,
    /// Timed runs of each view (the median is reported).
    pub samples: usize,
}

impl Default for BenchConfig {
    /// 10,000 clusters × 50 fleet secrets = 500,000 status rows, 5 samples per view.
    fn default() -> Self {
        Self {
            clusters: 10_000,
            fleet_secrets: 50,
            samples: 5,
        }
    }
}

/// What one run measured on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// Enrolled clusters.
    pub clusters: usize,
    /// Fleet secrets.
    pub fleet_secrets: usize,
    /// Status rows in the table when the views were timed.
    pub status_rows: u64,
    /// Seconds to enroll and connect the clusters.
    pub setup_seconds: f64,
    /// Status rows written (pending + acks).
    pub rows_written: u64,
    /// Statements the status batches took.
    pub statements: u64,
    /// Statements per 10,000 acks.
    pub statements_per_10k_acks: f64,
    /// `VACUUM sync_lagging` the store ran during the writes (Postgres; included in the rows/s).
    pub lagging_vacuums: u64,
    /// Postgres: size of `sync_lagging` with its indexes when the views were timed (bytes).
    pub lagging_table_bytes: Option<u64>,
    /// Rows per second of the "pending" batches (one per fleet secret).
    pub pending_rows_per_second: f64,
    /// Rows per second of the ack batches.
    pub ack_rows_per_second: f64,
    /// Each dashboard query.
    pub views: Vec<ViewTiming>,
    /// Statements ≤ 50 per 10,000 acks and (on Postgres) every view ≤ 50 ms.
    pub meets_targets: bool,
}

/// Latency of one dashboard query.
#[derive(Clone, Debug, Serialize)]
pub struct ViewTiming {
    /// Short name.
    pub name: &'static str,
    /// The SQL, as a dashboard would send it.
    pub sql: &'static str,
    /// Rows it returned.
    pub rows: usize,
    /// Median latency (ms), rows fetched.
    pub median_ms: f64,
    /// Fastest run (ms).
    pub min_ms: f64,
    /// Slowest run (ms).
    pub max_ms: f64,
    /// Postgres only: median execution time inside the server (`EXPLAIN ANALYZE`), without the
    /// round trip and the client's decoding, which a loaded machine inflates.
    pub server_median_ms: Option<f64>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A query of the benchmark itself failed.
    #[error("benchmark query {what} failed")]
    Query {
        /// What was queried.
        what: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A result did not match what was written.
    #[error("{what}: expected {expected} rows, got {got}")]
    Unexpected {
        /// What was checked.
        what: String,
        /// Rows expected.
        expected: usize,
        /// Rows seen.
        got: usize,
    },
}

/// The dashboard queries timed, with the rows each returns for a fleet of `clusters` ×
/// `fleet_secrets`.
fn views(config: &BenchConfig) -> [(&'static str, &'static str, usize); 4] {
    let lagging = config.fleet_secrets * lagging_per_secret(config.clusters);
    [
        (
            "keyfleet_rollout",
            "SELECT * FROM keyfleet_rollout",
            config.fleet_secrets,
        ),
        (
            "keyfleet_cluster_sync",
            "SELECT * FROM keyfleet_cluster_sync",
            config.clusters,
        ),
        (
            "keyfleet_lagging (first 100)",
            "SELECT * FROM keyfleet_lagging LIMIT 100",
            lagging.min(100),
        ),
        (
            "keyfleet_lagging (all)",
            "SELECT * FROM keyfleet_lagging",
            lagging,
        ),
    ]
}

/// Clusters left pending or failed per fleet secret: 2 in 50 (indexes ≡ 0, 1 mod 50).
fn lagging_per_secret(clusters: usize) -> usize {
    clusters / 50 * 2 + (clusters % 50).min(2)
}

/// Runs the benchmark on `store` (migrated, empty); `progress` hears what it is doing.
pub async fn run(
    store: &Store,
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let backend = store.backend();
    let started = Instant::now();
    progress(&format!("{backend}: enrolling {} clusters", config.clusters));
    let ids: Vec<ClusterId> = futures::stream::iter(0..config.clusters)
        .map(|index| {
            let store = store.clone();
            async move {
                let cluster = store
                    .create_cluster(&format!("cluster-{index:05}"), &Labels::new())
                    .await?;
                if index % 20 != 0 {
                    store.record_connect(cluster.id, "r1", "bench", at(0)).await?;
                }
                Ok::<_, StoreError>(cluster.id)
            }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let setup = started.elapsed();

    let statements_before = store.status_statements();
    let vacuums_before = store.lagging_vacuums();
    let mut pending_time = Duration::ZERO;
    let mut ack_time = Duration::ZERO;
    for secret in 0..config.fleet_secrets {
        progress(&format!(
            "{backend}: rotation of fleet secret {}/{}",
            secret + 1,
            config.fleet_secrets
        ));
        let name = format!("secret-{secret:02}");
        let revision = 100 + secret as u64;
        let rows: Vec<StatusRow> = ids.iter().map(|id| pending(*id, &name, revision)).collect();
        let started = Instant::now();
        store.upsert_status_batch(&rows).await?;
        pending_time += started.elapsed();
        let acks: Vec<StatusRow> = rows
            .into_iter()
            .enumerate()
            .map(|(index, row)| match index % 50 {
                0 => row,
                1 => StatusRow {
                    state: SyncState::Error,
                    last_error: Some("namespace \"apps\" not found".to_owned()),
                    ..row
                },
                _ => applied(row, revision),
            })
            .collect();
        let started = Instant::now();
        store.upsert_status_batch(&acks).await?;
        ack_time += started.elapsed();
    }
    let statements = store.status_statements() - statements_before;
    let lagging_vacuums = store.lagging_vacuums() - vacuums_before;
    let acks = (config.fleet_secrets * config.clusters) as u64;

    progress(&format!("{backend}: VACUUM ANALYZE, then timing the views"));
    // What autovacuum does after a bulk load: dead rows reclaimed, statistics for the planner.
    execute(
        store,
        if backend == "postgres" {
            "VACUUM ANALYZE"
        } else {
            "ANALYZE"
        },
    )
    .await?;
    let status_rows = count(store, "SELECT count(*) FROM sync_status").await?;
    let lagging_table_bytes = if backend == "postgres" {
        Some(count(store, "SELECT pg_total_relation_size('sync_lagging')").await?)
    } else {
        None
    };
    let mut timings = Vec::new();
    for (name, sql, expected) in views(config) {
        let mut times = Vec::with_capacity(config.samples.max(1));
        for _ in 0..config.samples.max(1) {
            let started = Instant::now();
            let rows = fetch_rows(store, sql).await?;
            times.push(started.elapsed());
            if rows != expected {
                return Err(BenchError::Unexpected {
                    what: name.to_owned(),
                    expected,
                    got: rows,
                });
            }
        }
        times.sort();
        let server_median_ms = match &store.backend {
            Backend::Postgres(pool) => {
                let mut server = Vec::with_capacity(config.samples.max(1));
                for _ in 0..config.samples.max(1) {
                    server.push(execution_ms(pool, sql).await?);
                }
                server.sort_by(f64::total_cmp);
                Some(server[server.len() / 2])
            }
            Backend::Sqlite(_) => None,
        };
        timings.push(ViewTiming {
            name,
            sql,
            rows: expected,
            median_ms: millis(times[times.len() / 2]),
            min_ms: millis(times[0]),
            max_ms: millis(times[times.len() - 1]),
            server_median_ms,
        });
    }
    let statements_per_10k_acks = if acks == 0 {
        0.0
    } else {
        statements as f64 / 2.0 * 10_000.0 / acks as f64
    };
    let views_fast = backend != "postgres" || timings.iter().all(|view| view.median_ms <= VIEW_MILLIS_TARGET);
    Ok(BenchReport {
        backend,
        clusters: config.clusters,
        fleet_secrets: config.fleet_secrets,
        status_rows,
        setup_seconds: setup.as_secs_f64(),
        rows_written: 2 * acks,
        statements,
        statements_per_10k_acks,
        lagging_vacuums,
        lagging_table_bytes,
        pending_rows_per_second: per_second(acks, pending_time),
        ack_rows_per_second: per_second(acks, ack_time),
        views: timings,
        meets_targets: statements_per_10k_acks <= STATEMENTS_PER_10K_ACKS_TARGET && views_fast,
    })
}

/// A scratch Postgres database on the server of `base_url` (a random name), dropped by
/// [`ScratchDatabase::drop_database`].
#[derive(Debug)]
pub struct ScratchDatabase {
    base_url: url::Url,
    name: String,
    /// URL of the scratch database.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `keyfleet_bench_<random>` on the server `base_url` names.
    pub async fn create(base_url: &str) -> Result<Self, BenchError> {
        let base_url = url::Url::parse(base_url).map_err(|_| StoreError::UnsupportedUrl)?;
        let name = format!("keyfleet_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin(&base_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .map_err(|source| query_error("CREATE DATABASE", source))?;
        let mut url = base_url.clone();
        url.set_path(&name);
        Ok(Self {
            base_url,
            name,
            url: url.to_string(),
        })
    }

    /// The database's name (the URL may hold a password).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database (also when connections remain).
    pub async fn drop_database(self) -> Result<(), BenchError> {
        let mut admin = admin(&self.base_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .map_err(|source| query_error("DROP DATABASE", source))?;
        Ok(())
    }
}

async fn admin(base_url: &url::Url) -> Result<sqlx::PgConnection, BenchError> {
    sqlx::PgConnection::connect(base_url.as_str())
        .await
        // The URL may hold a password: name the server only.
        .map_err(|source| {
            query_error(
                &format!("connect to {}", base_url.host_str().unwrap_or("?")),
                source,
            )
        })
}

fn query_error(what: &str, source: sqlx::Error) -> BenchError {
    BenchError::Query {
        what: what.to_owned(),
        source,
    }
}

async fn execute(store: &Store, sql: &'static str) -> Result<(), BenchError> {
    match &store.backend {
        Backend::Postgres(pool) => pool.execute(sql).await.map(drop),
        Backend::Sqlite(pool) => pool.execute(sql).await.map(drop),
    }
    .map_err(|source| query_error(sql, source))
}

async fn count(store: &Store, sql: &'static str) -> Result<u64, BenchError> {
    let count: i64 = match &store.backend {
        Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Backend::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    }
    .map_err(|source| query_error(sql, source))?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// `Execution Time` of `EXPLAIN (ANALYZE, FORMAT JSON) sql`, in ms.
async fn execution_ms(pool: &sqlx::PgPool, sql: &'static str) -> Result<f64, BenchError> {
    let explain = format!("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql}");
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_one(pool)
        .await
        .map_err(|source| query_error(sql, source))?;
    plan.get(0)
        .and_then(|plan| plan.get("Execution Time"))
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| BenchError::Unexpected {
            what: format!("EXPLAIN of {sql} has no Execution Time"),
            expected: 1,
            got: 0,
        })
}

async fn fetch_rows(store: &Store, sql: &'static str) -> Result<usize, BenchError> {
    match &store.backend {
        Backend::Postgres(pool) => sqlx::query(sql).fetch_all(pool).await.map(|rows| rows.len()),
        Backend::Sqlite(pool) => sqlx::query(sql).fetch_all(pool).await.map(|rows| rows.len()),
    }
    .map_err(|source| query_error(sql, source))
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn pending(cluster: ClusterId, fleet_secret: &str, revision: u64) -> StatusRow {
    StatusRow {
        cluster,
        fleet_secret: fleet_secret.to_owned(),
        desired_revision: revision,
        applied_revision: None,
        applied_sha256: None,
        state: SyncState::Pending,
        last_error: None,
        attempts: 1,
        at: at(10),
    }
}

fn applied(mut row: StatusRow, revision: u64) -> StatusRow {
    row.applied_revision = Some(revision);
    row.applied_sha256 = Some(Sha256::of(format!("rev-{revision}").as_bytes()));
    row.state = SyncState::Applied;
    row.at = at(20);
    row
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn per_second(rows: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        rows as f64 / time.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagging_rows_are_the_indexes_0_and_1_mod_50() {
        for clusters in [0, 1, 2, 49, 50, 51, 52, 99, 100, 101, 10_000] {
            let expected = (0..clusters).filter(|index| index % 50 < 2).count();
            assert_eq!(lagging_per_secret(clusters), expected, "{clusters} clusters");
        }
    }

    async fn small_run(store: &Store) -> BenchReport {
        store.migrate().await.expect("migrate");
        let config = BenchConfig {
            clusters: 120,
            fleet_secrets: 3,
            samples: 3,
        };
        let mut heard = Vec::new();
        let report = run(store, &config, |line| heard.push(line.to_owned()))
            .await
            .expect("bench");
        assert_eq!(report.status_rows, 360);
        assert_eq!(report.rows_written, 720);
        assert!(
            heard
                .iter()
                .any(|line| line.contains("rotation of fleet secret 3/3")),
            "{heard:?}"
        );
        let rows: Vec<(&str, usize)> = report.views.iter().map(|view| (view.name, view.rows)).collect();
        assert_eq!(
            rows,
            [
                ("keyfleet_rollout", 3),
                ("keyfleet_cluster_sync", 120),
                ("keyfleet_lagging (first 100)", 18),
                ("keyfleet_lagging (all)", 18),
            ]
        );
        assert!(
            report
                .views
                .iter()
                .all(|view| view.min_ms <= view.median_ms && view.median_ms <= view.max_ms)
        );
        let server_timed = report.views.iter().all(|view| view.server_median_ms.is_some());
        assert_eq!(server_timed, store.backend() == "postgres");
        report
    }

    #[tokio::test]
    async fn runs_on_sqlite_with_one_statement_per_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("bench.db").display()))
            .await
            .expect("connect");
        let report = small_run(&store).await;
        assert_eq!(report.statements, 6, "one statement per 120-row batch");
        store.close().await;
    }

    #[tokio::test]
    async fn runs_on_postgres_and_drops_its_database() {
        let base = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a Postgres server (scripts/test sets it)");
        let scratch = ScratchDatabase::create(&base).await.expect("scratch database");
        let name = scratch.name.clone();
        let store = Store::connect(&scratch.url).await.expect("connect");
        // The database is dropped also when the run panics.
        let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(small_run(&store))).await;
        let report = match outcome {
            Ok(report) => report,
            Err(panic) => {
                store.close().await;
                scratch.drop_database().await.expect("drop");
                std::panic::resume_unwind(panic);
            }
        };
        assert_eq!(report.statements, 6, "one statement per batch");
        assert!((report.statements_per_10k_acks - 6.0 / 2.0 * 10_000.0 / 360.0).abs() < 1e-9);
        store.close().await;
        scratch.drop_database().await.expect("drop");
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
        let left: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut admin)
            .await
            .expect("query");
        assert_eq!(left, None, "the scratch database is gone");
    }
}
