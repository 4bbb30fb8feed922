//! Conformance suite: every test body runs on both backends, against a fresh database each:
//! a Postgres database created from `DATABASE_URL` (unique name, dropped afterwards) and a SQLite
//! file in a temporary directory. `conformance!` generates `postgres::NAME` and `sqlite::NAME` for
//! the bodies in `tests/TABLE.rs`.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, TimeZone as _, Utc};
use futures::FutureExt as _;
use sqlx::{Connection as _, Executor as _};

use super::convert::truncate_error;
use super::*;
use crate::domain::{LabelRequirement, SecretValue, SelectorOperator, SyncState};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Postgres,
    Sqlite,
}

/// Runs `body` on a fresh database of `kind` (migrated when `migrate`), then drops the database,
/// also when the body panics.
async fn with_db<F, Fut>(kind: Kind, migrate: bool, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    match kind {
        Kind::Postgres => {
            let base = std::env::var("DATABASE_URL").expect(
                "DATABASE_URL must name a Postgres server for the store conformance tests \
                 (scripts/test sets it)",
            );
            let name = format!("keyfleet_test_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&base)
                .await
                .expect("connect to DATABASE_URL");
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("create the test database");
            let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
            url.set_path(&name);
            let store = Store::connect(url.as_str()).await.expect("connect");
            // A failed migration also drops the database (inside the guarded future).
            let outcome = AssertUnwindSafe(async {
                if migrate {
                    store.migrate().await.expect("migrate");
                }
                body(store.clone()).await;
            })
            .catch_unwind()
            .await;
            store.close().await;
            admin
                .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
                .await
                .expect("drop the test database");
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        }
        Kind::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("keyfleet.db").display());
            let store = Store::connect(&url).await.expect("connect");
            if migrate {
                store.migrate().await.expect("migrate");
            }
            body(store.clone()).await;
            store.close().await;
        }
    }
}

macro_rules! conformance {
    ($($table:ident :: $name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::with_db(super::Kind::Postgres, true, super::$table::$name).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::with_db(super::Kind::Sqlite, true, super::$table::$name).await;
                }
            )*
        }
    };
}

conformance!(
    clusters::clusters_crud,
    clusters::selectors_push_down_and_apply_exactly,
    clusters::enrollment_tokens_are_single_use,
    clusters::token_consumed_once_by_concurrent_consumers,
    clusters::credentials_and_revocation,
    clusters::connect_disconnect_and_liveness,
    specs::specs_generations,
    specs::apply_specs_writes_all_or_nothing,
    revisions::secret_versions_upsert,
    revisions::revisions_idempotent_and_monotonic,
    revisions::pins_and_rollouts,
    status::status_batch_of_10000_rows_is_one_call,
    status::status_semantics,
    changes::change_log_tail,
    changes::change_log_pruning_moves_the_horizon,
    changes::change_wakeups,
    changes::change_wakeups_survive_a_lost_listener,
    changes::status_writes_wake_other_replicas,
    changes::leader_election,
    changes::audit_returns_exactly_what_was_passed,
    status::dashboard_views,
    status::rollout_view_matches_the_status_rows,
    status::liveness_and_status_served_elsewhere,
    status::status_inputs_move_with_every_status_input,
    secrets::no_column_holds_a_secret_value,
    digests::digests_survive_a_key_rotation,
    digests::unkeyed_digests_are_keyed_at_start,
);

// --- helpers ---

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 123_456_000)
        .single()
        .expect("valid time")
}

fn digest(text: &str) -> Sha256 {
    Sha256::of(text.as_bytes())
}

async fn cluster(store: &Store, name: &str) -> Cluster {
    store
        .create_cluster(name, &labels(&[]))
        .await
        .expect("create cluster")
}

fn status_row(cluster: ClusterId, fleet_secret: &str, desired: u64, at_s: i64) -> StatusRow {
    StatusRow {
        cluster,
        fleet_secret: fleet_secret.to_owned(),
        desired_revision: desired,
        applied_revision: None,
        applied_sha256: None,
        state: SyncState::Pending,
        last_error: None,
        attempts: 1,
        at: at(at_s),
    }
}

fn applied(mut row: StatusRow, revision: u64, at_s: i64) -> StatusRow {
    row.applied_revision = Some(revision);
    row.applied_sha256 = Some(digest(&format!("rev-{revision}")));
    row.state = SyncState::Applied;
    row.at = at(at_s);
    row
}

fn names(clusters: &[Cluster]) -> Vec<&str> {
    clusters.iter().map(|c| c.name.as_str()).collect()
}

/// Runs the same SQL on either backend and decodes the rows as `T` (test-only inspection of
/// tables and views).
macro_rules! inspect {
    ($store:expr, $ty:ty, $sql:expr $(, $bind:expr)* $(,)?) => {
        match &$store.backend {
            Backend::Postgres(pool) => sqlx::query_as::<_, $ty>(sqlx::AssertSqlSafe($sql))
                $(.bind($bind))*
                .fetch_all(pool)
                .await
                .expect("inspect postgres"),
            Backend::Sqlite(pool) => sqlx::query_as::<_, $ty>(sqlx::AssertSqlSafe($sql))
                $(.bind($bind))*
                .fetch_all(pool)
                .await
                .expect("inspect sqlite"),
        }
    };
}

// --- test bodies, one file per table ---

mod changes;
mod clusters;
mod digests;
mod revisions;
mod secrets;
mod specs;
mod status;

// --- migrations and connection ---

async fn migration_from_empty(kind: Kind) {
    with_db(kind, false, |store| async move {
        let applied = store.migrate_report().await.expect("migrate");
        let mut expected = vec![
            AppliedMigration {
                version: 1,
                description: "init".to_owned(),
            },
            AppliedMigration {
                version: 2,
                description: "dashboards at scale".to_owned(),
            },
            AppliedMigration {
                version: 3,
                description: "change log horizon".to_owned(),
            },
        ];
        let more: &[(i64, &str)] = if store.backend() == "postgres" {
            &[
                (4, "lagging rows"),
                (5, "lagging online"),
                (6, "keyed digests"),
                (7, "expiry view"),
                (8, "replica requests"),
                (9, "history"),
                (10, "status generation"),
            ]
        } else {
            // SQLite has no 0004/0005 of Postgres' own (lagging rows): its numbers run on.
            &[
                (4, "expiry view"),
                (5, "keyed digests"),
                (6, "replica requests"),
                (7, "history"),
                (8, "status generation"),
            ]
        };
        for (version, description) in more {
            expected.push(AppliedMigration {
                version: *version,
                description: (*description).to_owned(),
            });
        }
        assert_eq!(applied, expected);
        assert_eq!(store.migrate_report().await.expect("again"), []);
        let views = inspect!(
            store,
            (i64,),
            "SELECT (SELECT count(*) FROM keyfleet_rollout) + (SELECT count(*) FROM keyfleet_cluster_sync)
                  + (SELECT count(*) FROM keyfleet_lagging) + (SELECT count(*) FROM keyfleet_expiry)"
                .to_owned()
        );
        assert_eq!(views, [(0,)], "views exist and are empty");
    })
    .await;
}

#[tokio::test]
async fn postgres_migration_from_empty() {
    migration_from_empty(Kind::Postgres).await;
}

#[tokio::test]
async fn sqlite_migration_from_empty() {
    migration_from_empty(Kind::Sqlite).await;
}

#[tokio::test]
async fn sqlite_memory_keeps_one_database() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    assert_eq!(store.backend(), "sqlite");
    let c = cluster(&store, "mem").await;
    // Several calls, each on a pooled connection: all see the same in-memory database.
    for _ in 0..3 {
        assert_eq!(store.cluster_by_id(c.id).await.expect("read"), Some(c.clone()));
    }
}

#[tokio::test]
async fn unsupported_url_does_not_echo_it() {
    let error = Store::connect("mysql://root:pa55word@db/keyfleet")
        .await
        .expect_err("unsupported");
    assert!(matches!(error, StoreError::UnsupportedUrl));
    assert!(!error.to_string().contains("pa55word"), "{error}");
}

#[test]
fn errors_are_cut_on_a_character_boundary() {
    assert_eq!(truncate_error("short"), "short");
    let text = "€".repeat(400); // 1,200 bytes
    let cut = truncate_error(&text);
    assert_eq!(cut.len(), 1023);
    assert!(text.starts_with(&cut));
}

#[test]
fn debug_of_records_shows_no_digest_bytes() {
    let row = status_row(ClusterId(uuid::Uuid::nil()), "db", 1, 0);
    let row = applied(row, 1, 0);
    let printed = format!("{row:?}");
    let plain = row.applied_sha256.expect("applied").to_hex();
    assert!(printed.contains("sha256:<redacted>"), "{printed}");
    assert!(!printed.contains(&plain[..6]), "{printed}");
}
