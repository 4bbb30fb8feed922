//! Conformance suite: every test body runs on both backends, against a fresh database each:
//! a Postgres database created from `DATABASE_URL` (unique name, dropped afterwards) and a SQLite
//! file in a temporary directory. `conformance!` generates `postgres::NAME` and `sqlite::NAME`.

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
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::with_db(super::Kind::Postgres, true, super::$name).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::with_db(super::Kind::Sqlite, true, super::$name).await;
                }
            )*
        }
    };
}

conformance!(
    clusters_crud,
    selectors_push_down_and_apply_exactly,
    enrollment_tokens_are_single_use,
    token_consumed_once_by_concurrent_consumers,
    credentials_and_revocation,
    connect_disconnect_and_liveness,
    specs_generations,
    apply_specs_writes_all_or_nothing,
    secret_versions_upsert,
    revisions_idempotent_and_monotonic,
    pins_and_rollouts,
    status_batch_of_10000_rows_is_one_call,
    status_semantics,
    change_log_tail,
    change_log_pruning_moves_the_horizon,
    change_wakeups,
    change_wakeups_survive_a_lost_listener,
    leader_election,
    audit_returns_exactly_what_was_passed,
    dashboard_views,
    rollout_view_matches_the_status_rows,
    liveness_and_status_served_elsewhere,
    no_column_holds_a_secret_value,
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

// --- tests ---

async fn clusters_crud(store: Store) {
    let eu = store
        .create_cluster("eu-1", &labels(&[("env", "prod")]))
        .await
        .expect("create");
    assert_eq!(eu.name, "eu-1");
    assert_eq!(eu.state, ClusterState::Pending);
    assert_eq!(eu.labels, labels(&[("env", "prod")]));
    assert_eq!(eu.connected_replica, None);
    let again = store.create_cluster("eu-1", &labels(&[])).await;
    assert!(
        matches!(&again, Err(StoreError::AlreadyExists { what }) if what.contains("eu-1")),
        "{again:?}"
    );
    let us = cluster(&store, "us-1").await;
    let ap = cluster(&store, "ap-1").await;

    assert_eq!(
        store.cluster_by_name("eu-1").await.expect("read"),
        Some(eu.clone())
    );
    assert_eq!(store.cluster_by_id(us.id).await.expect("read"), Some(us.clone()));
    assert_eq!(store.cluster_by_name("nope").await.expect("read"), None);
    assert_eq!(
        names(&store.list_clusters(None).await.expect("list")),
        ["ap-1", "eu-1", "us-1"]
    );

    let relabelled = store
        .set_cluster_labels(ap.id, &labels(&[("env", "dev"), ("ring", "canary")]))
        .await
        .expect("relabel");
    assert_eq!(relabelled.labels, labels(&[("env", "dev"), ("ring", "canary")]));
    assert_eq!(
        store
            .cluster_by_id(ap.id)
            .await
            .expect("read")
            .expect("exists")
            .labels,
        relabelled.labels
    );
    let missing = ClusterId(uuid::Uuid::new_v4());
    assert!(matches!(
        store.set_cluster_labels(missing, &labels(&[])).await,
        Err(StoreError::NotFound { .. })
    ));

    let revoked = store.revoke_cluster(us.id).await.expect("revoke");
    assert_eq!(revoked.state, ClusterState::Revoked);
    assert!(matches!(
        store.revoke_cluster(missing).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn selectors_push_down_and_apply_exactly(store: Store) {
    for (name, pairs) in [
        ("a", &[("env", "prod"), ("region", "eu")][..]),
        ("b", &[("env", "prod"), ("region", "us"), ("ring", "canary")][..]),
        ("c", &[("env", "dev"), ("region", "eu")][..]),
        ("d", &[][..]),
    ] {
        store.create_cluster(name, &labels(pairs)).await.expect("create");
    }
    let select = |match_labels: &[(&str, &str)], expressions: Vec<LabelRequirement>| LabelSelector {
        match_labels: labels(match_labels),
        match_expressions: expressions,
    };
    let requirement = |key: &str, operator, values: &[&str]| LabelRequirement {
        key: key.to_owned(),
        operator,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    };
    let cases = [
        (select(&[], vec![]), vec!["a", "b", "c", "d"]),
        (select(&[("env", "prod")], vec![]), vec!["a", "b"]),
        (select(&[("env", "prod"), ("region", "eu")], vec![]), vec!["a"]),
        (select(&[("env", "staging")], vec![]), vec![]),
        (
            select(
                &[],
                vec![requirement("region", SelectorOperator::In, &["eu", "us"])],
            ),
            vec!["a", "b", "c"],
        ),
        (
            select(
                &[],
                vec![requirement("ring", SelectorOperator::NotIn, &["canary"])],
            ),
            vec!["a", "c", "d"],
        ),
        (
            select(&[], vec![requirement("ring", SelectorOperator::Exists, &[])]),
            vec!["b"],
        ),
        (
            select(
                &[("env", "prod")],
                vec![requirement("ring", SelectorOperator::DoesNotExist, &[])],
            ),
            vec!["a"],
        ),
    ];
    for (selector, expected) in cases {
        let found = store.list_clusters(Some(&selector)).await.expect("list");
        assert_eq!(names(&found), expected, "{selector:?}");
    }
}

async fn enrollment_tokens_are_single_use(store: Store) {
    let c = cluster(&store, "c").await;
    let token = digest("token-1");
    store
        .issue_enrollment_token(c.id, &token, at(100))
        .await
        .expect("issue");
    assert!(matches!(
        store.issue_enrollment_token(c.id, &token, at(100)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .issue_enrollment_token(ClusterId(uuid::Uuid::new_v4()), &digest("x"), at(100))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store
            .consume_enrollment_token(&digest("other"), at(0))
            .await
            .expect("consume"),
        Err(TokenRejection::Unknown)
    );
    assert_eq!(
        store
            .consume_enrollment_token(&token, at(0))
            .await
            .expect("consume"),
        Ok(c.id)
    );
    assert_eq!(
        store
            .consume_enrollment_token(&token, at(1))
            .await
            .expect("consume"),
        Err(TokenRejection::Used)
    );

    let expiring = digest("token-2");
    store
        .issue_enrollment_token(c.id, &expiring, at(10))
        .await
        .expect("issue");
    assert_eq!(
        store
            .consume_enrollment_token(&expiring, at(10))
            .await
            .expect("consume"),
        Err(TokenRejection::Expired),
        "a token is expired at its expiry time"
    );

    let pending = digest("token-3");
    store
        .issue_enrollment_token(c.id, &pending, at(1000))
        .await
        .expect("issue");
    store.revoke_cluster(c.id).await.expect("revoke");
    assert_eq!(
        store
            .consume_enrollment_token(&pending, at(1))
            .await
            .expect("consume"),
        Err(TokenRejection::ClusterRevoked)
    );
    assert!(matches!(
        store
            .issue_enrollment_token(c.id, &digest("token-4"), at(1000))
            .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn token_consumed_once_by_concurrent_consumers(store: Store) {
    let c = cluster(&store, "c").await;
    for round in 0..20 {
        let token = digest(&format!("token-{round}"));
        store
            .issue_enrollment_token(c.id, &token, at(1000))
            .await
            .expect("issue");
        let (first, second) = tokio::join!(
            store.consume_enrollment_token(&token, at(1)),
            store.consume_enrollment_token(&token, at(1)),
        );
        let mut outcomes = [first.expect("consume"), second.expect("consume")];
        outcomes.sort_by_key(|outcome| outcome.is_err());
        assert_eq!(outcomes, [Ok(c.id), Err(TokenRejection::Used)], "round {round}");
    }
}

async fn credentials_and_revocation(store: Store) {
    let a = cluster(&store, "a").await;
    let b = cluster(&store, "b").await;
    assert_eq!(store.active_credentials().await.expect("list"), []);
    store
        .set_cluster_credential(a.id, &digest("cred-a"))
        .await
        .expect("credential");
    store
        .set_cluster_credential(b.id, &digest("cred-b"))
        .await
        .expect("credential");
    assert_eq!(
        store
            .cluster_by_id(a.id)
            .await
            .expect("read")
            .expect("exists")
            .state,
        ClusterState::Active
    );
    let mut expected = vec![(digest("cred-a"), a.id), (digest("cred-b"), b.id)];
    expected.sort_by_key(|(_, id)| *id);
    assert_eq!(store.active_credentials().await.expect("list"), expected);
    assert!(matches!(
        store.set_cluster_credential(b.id, &digest("cred-a")).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    store.revoke_cluster(a.id).await.expect("revoke");
    assert_eq!(
        store.active_credentials().await.expect("list"),
        [(digest("cred-b"), b.id)]
    );
    assert!(matches!(
        store.set_cluster_credential(a.id, &digest("cred-a2")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .set_cluster_credential(ClusterId(uuid::Uuid::new_v4()), &digest("z"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn connect_disconnect_and_liveness(store: Store) {
    let a = cluster(&store, "a").await;
    let b = cluster(&store, "b").await;
    store
        .record_connect(a.id, "replica-1", "0.1.0", at(10))
        .await
        .expect("connect");
    store
        .record_connect(b.id, "replica-1", "0.1.1", at(11))
        .await
        .expect("connect");
    let read = store.cluster_by_id(a.id).await.expect("read").expect("exists");
    assert_eq!(read.connected_replica.as_deref(), Some("replica-1"));
    assert_eq!(read.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(read.last_seen, Some(at(10)));

    // a moved to replica-2; replica-1's late disconnect must not clear it.
    store
        .record_connect(a.id, "replica-2", "0.1.0", at(20))
        .await
        .expect("connect");
    store
        .record_disconnect(a.id, "replica-1", at(21))
        .await
        .expect("disconnect");
    let read = store.cluster_by_id(a.id).await.expect("read").expect("exists");
    assert_eq!(read.connected_replica.as_deref(), Some("replica-2"));
    assert_eq!(read.last_seen, Some(at(21)));
    store
        .record_disconnect(a.id, "replica-2", at(22))
        .await
        .expect("disconnect");
    assert_eq!(
        store
            .cluster_by_id(a.id)
            .await
            .expect("read")
            .expect("exists")
            .connected_replica,
        None
    );

    store.touch_last_seen(&[a.id, b.id], at(30)).await.expect("touch");
    // Never moves backwards.
    store.touch_last_seen(&[a.id], at(25)).await.expect("touch");
    for id in [a.id, b.id] {
        assert_eq!(
            store
                .cluster_by_id(id)
                .await
                .expect("read")
                .expect("exists")
                .last_seen,
            Some(at(30))
        );
    }
    store.touch_last_seen(&[], at(40)).await.expect("empty touch");

    assert_eq!(store.clear_replica("replica-1").await.expect("clear"), 1);
    assert_eq!(store.clear_replica("replica-1").await.expect("clear"), 0);
    assert_eq!(
        store
            .cluster_by_id(b.id)
            .await
            .expect("read")
            .expect("exists")
            .connected_replica,
        None
    );
    let missing = ClusterId(uuid::Uuid::new_v4());
    assert!(matches!(
        store.record_connect(missing, "r", "v", at(1)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn specs_generations(store: Store) {
    let yaml1 = "kind: FleetSecret\nname: db\n";
    let yaml2 = "kind: FleetSecret\nname: db\nx: 1\n";
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml1)
            .await
            .expect("upsert"),
        (1, SpecAction::Created)
    );
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml1)
            .await
            .expect("upsert"),
        (1, SpecAction::Unchanged)
    );
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml2)
            .await
            .expect("upsert"),
        (2, SpecAction::Configured)
    );
    // Same name, other kind: a separate spec.
    assert_eq!(
        store
            .upsert_spec(SpecKind::SecretStore, "db", "kind: SecretStore\n")
            .await
            .expect("upsert"),
        (1, SpecAction::Created)
    );
    let specs = store.list_specs().await.expect("list");
    let summary: Vec<_> = specs
        .iter()
        .map(|s| (s.kind, s.name.as_str(), s.yaml.as_str(), s.generation))
        .collect();
    assert_eq!(
        summary,
        [
            (SpecKind::FleetSecret, "db", yaml2, 2),
            (SpecKind::SecretStore, "db", "kind: SecretStore\n", 1),
        ]
    );
    assert!(
        store
            .delete_spec(SpecKind::FleetSecret, "db")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_spec(SpecKind::FleetSecret, "db")
            .await
            .expect("delete")
    );
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml1)
            .await
            .expect("upsert"),
        (1, SpecAction::Created)
    );
    assert_eq!(SpecAction::Configured.as_str(), "configured");
    assert_eq!(SpecKind::FleetSecret.as_str(), "FleetSecret");
}

async fn apply_specs_writes_all_or_nothing(store: Store) {
    let write = |kind, name, yaml| SpecWrite { kind, name, yaml };
    let store_yaml = "kind: SecretStore\nname: kv\n";
    let db1 = "kind: FleetSecret\nname: db\n";
    let db2 = "kind: FleetSecret\nname: db\nx: 1\n";
    let outcomes = store
        .apply_specs(
            &[
                write(SpecKind::SecretStore, "kv", store_yaml),
                write(SpecKind::FleetSecret, "db", db1),
            ],
            "token",
        )
        .await
        .expect("apply");
    let created = SpecOutcome {
        generation: 1,
        action: SpecAction::Created,
    };
    assert_eq!(outcomes, [created, created]);
    let changes = store.changes_since(0, 10).await.expect("tail");
    let summary: Vec<_> = changes.iter().map(|c| (c.kind, c.subject.as_str())).collect();
    assert_eq!(
        summary,
        [
            (ChangeKind::Spec, "secretstore/kv"),
            (ChangeKind::Spec, "fleetsecret/db")
        ]
    );
    let after_first = changes.last().expect("two changes").seq;
    let audit: Vec<_> = store
        .audit(10)
        .await
        .expect("audit")
        .into_iter()
        .map(|e| (e.actor, e.action, e.subject))
        .collect();
    assert_eq!(
        audit,
        [
            (
                "token".to_owned(),
                "spec.created".to_owned(),
                "fleetsecret/db".to_owned()
            ),
            (
                "token".to_owned(),
                "spec.created".to_owned(),
                "secretstore/kv".to_owned()
            ),
        ]
    );

    // Unchanged specs write neither a change nor an audit row; a changed one does.
    let outcomes = store
        .apply_specs(
            &[
                write(SpecKind::SecretStore, "kv", store_yaml),
                write(SpecKind::FleetSecret, "db", db2),
            ],
            "cert:ops",
        )
        .await
        .expect("apply");
    assert_eq!(
        outcomes,
        [
            SpecOutcome {
                generation: 1,
                action: SpecAction::Unchanged
            },
            SpecOutcome {
                generation: 2,
                action: SpecAction::Configured
            },
        ]
    );
    let changes = store.changes_since(after_first, 10).await.expect("tail");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].subject, "fleetsecret/db");
    let newest = store.audit(1).await.expect("audit").remove(0);
    assert_eq!(
        (newest.actor.as_str(), newest.action.as_str()),
        ("cert:ops", "spec.configured")
    );
    let latest = store.latest_change().await.expect("latest");
    let audit_rows = store.audit(100).await.expect("audit").len();

    // The second document violates a constraint (empty name): the first one, its change and its
    // audit row are rolled back with it, and the earlier state is intact.
    let error = store
        .apply_specs(
            &[
                write(SpecKind::FleetSecret, "db", db1),
                write(SpecKind::FleetSecret, "", db1),
            ],
            "token",
        )
        .await
        .expect_err("the empty name violates a CHECK constraint");
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    let specs: Vec<_> = store
        .list_specs()
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.kind, s.name, s.yaml, s.generation))
        .collect();
    assert_eq!(
        specs,
        [
            (SpecKind::FleetSecret, "db".to_owned(), db2.to_owned(), 2),
            (SpecKind::SecretStore, "kv".to_owned(), store_yaml.to_owned(), 1),
        ]
    );
    assert_eq!(store.latest_change().await.expect("latest"), latest);
    assert_eq!(store.changes_since(latest, 10).await.expect("tail"), []);
    assert_eq!(store.audit(100).await.expect("audit").len(), audit_rows);

    // A failure on the first of several new specs leaves nothing either.
    store
        .apply_specs(
            &[
                write(SpecKind::FleetSecret, "", db1),
                write(SpecKind::FleetSecret, "web", db1),
            ],
            "token",
        )
        .await
        .expect_err("constraint");
    assert_eq!(store.list_specs().await.expect("list").len(), 2);
    assert_eq!(store.latest_change().await.expect("latest"), latest);
}

async fn secret_versions_upsert(store: Store) {
    let mut version = SecretVersionRecord {
        store: "kv".to_owned(),
        name: "db-password".to_owned(),
        version: "v1".to_owned(),
        sha256: digest("value-1"),
        enabled: true,
        created: Some(at(1)),
        expires: None,
        not_before: Some(at(0)),
    };
    store.upsert_secret_version(&version).await.expect("upsert");
    version.enabled = false;
    version.expires = Some(at(99));
    store.upsert_secret_version(&version).await.expect("upsert again");
    version.version = "v2".to_owned();
    version.sha256 = digest("value-2");
    store.upsert_secret_version(&version).await.expect("upsert v2");
    let rows = inspect!(
        store,
        (String, Vec<u8>, bool),
        "SELECT version, sha256, enabled FROM secret_versions ORDER BY version".to_owned()
    );
    assert_eq!(
        rows,
        [
            ("v1".to_owned(), digest("value-1").0.to_vec(), false),
            ("v2".to_owned(), digest("value-2").0.to_vec(), false),
        ]
    );
}

async fn revisions_idempotent_and_monotonic(store: Store) {
    let revision = |fleet_secret: &str, content: &str, generation: u64| NewRevision {
        fleet_secret: fleet_secret.to_owned(),
        sha256: digest(content),
        spec_generation: generation,
        sources: vec![("db-password".to_owned(), format!("v-{content}"))],
    };
    let a1 = store
        .upsert_revision(&revision("a", "one", 1))
        .await
        .expect("upsert");
    assert_eq!(
        store
            .upsert_revision(&revision("a", "one", 1))
            .await
            .expect("again"),
        a1
    );
    let a2 = store
        .upsert_revision(&revision("a", "two", 1))
        .await
        .expect("upsert");
    assert!(a2 > a1);
    let b1 = store
        .upsert_revision(&revision("b", "one", 1))
        .await
        .expect("upsert");
    assert!(b1 > a2, "numbers are global across fleet secrets");
    let a3 = store
        .upsert_revision(&revision("a", "two", 2))
        .await
        .expect("new generation");
    assert!(a3 > b1);
    // Content that comes back after another revision is a new, newest revision.
    let a4 = store
        .upsert_revision(&revision("a", "one", 2))
        .await
        .expect("back");
    assert!(a4 > a3);
    assert_eq!(
        store
            .upsert_revision(&revision("a", "one", 2))
            .await
            .expect("again"),
        a4
    );

    // Two concurrent writers of the same content get the same number.
    let same = revision("c", "same", 1);
    let (x, y) = tokio::join!(store.upsert_revision(&same), store.upsert_revision(&same));
    assert_eq!(x.expect("upsert"), y.expect("upsert"));

    let latest = store.latest_revisions().await.expect("latest");
    let summary: Vec<_> = latest
        .iter()
        .map(|r| (r.fleet_secret.as_str(), r.revision, r.sha256, r.spec_generation))
        .collect();
    assert_eq!(summary[0], ("a", a4, digest("one"), 2));
    assert_eq!(summary[1], ("b", b1, digest("one"), 1));
    assert_eq!(summary[2].0, "c");
    assert_eq!(latest.len(), 3);
    assert_eq!(
        latest[0].sources,
        [("db-password".to_owned(), "v-one".to_owned())]
    );
    // The one before a revision: what clusters beyond a rollout's current wave keep.
    let before = store.revision_before("a", a4).await.expect("before");
    assert_eq!(before.map(|r| (r.revision, r.sha256)), Some((a3, digest("two"))));
    let first = store.revision_before("a", a2).await.expect("before");
    assert_eq!(
        first.map(|r| (r.revision, r.sources)),
        Some((a1, vec![("db-password".to_owned(), "v-one".to_owned())]))
    );
    assert!(store.revision_before("b", b1).await.expect("before").is_none());
    assert!(
        store
            .revision_before("nothing", a4)
            .await
            .expect("before")
            .is_none()
    );
    assert!(matches!(
        store.upsert_revision(&revision("a", "x", u64::MAX)).await,
        Err(StoreError::OutOfRange { .. })
    ));
}

async fn pins_and_rollouts(store: Store) {
    store.set_pin("db", "password", "v1").await.expect("pin");
    store.set_pin("db", "password", "v2").await.expect("repin");
    store.set_pin("db", "user", "u1").await.expect("pin");
    store.set_pin("api", "key", "k1").await.expect("pin");
    let pin = |fs: &str, key: &str, version: &str| PinRecord {
        fleet_secret: fs.to_owned(),
        remote_key: key.to_owned(),
        version: version.to_owned(),
    };
    assert_eq!(
        store.pins().await.expect("pins"),
        [
            pin("api", "key", "k1"),
            pin("db", "password", "v2"),
            pin("db", "user", "u1")
        ]
    );
    assert_eq!(store.remove_pins("db", Some("user")).await.expect("remove"), 1);
    assert_eq!(store.remove_pins("db", Some("user")).await.expect("remove"), 0);
    assert_eq!(store.remove_pins("db", None).await.expect("remove"), 1);
    assert_eq!(store.pins().await.expect("pins"), [pin("api", "key", "k1")]);

    let mut rollout = RolloutRecord {
        fleet_secret: "db".to_owned(),
        revision: 999,
        current_wave: 0,
        paused: false,
        reason: String::new(),
    };
    let refused = store.set_rollout(&rollout).await;
    assert!(
        matches!(&refused, Err(StoreError::NotFound { what }) if what == "revision 999"),
        "{refused:?}"
    );
    rollout.revision = store
        .upsert_revision(&NewRevision {
            fleet_secret: "db".to_owned(),
            sha256: digest("r"),
            spec_generation: 1,
            sources: vec![],
        })
        .await
        .expect("revision");
    store.set_rollout(&rollout).await.expect("rollout");
    rollout.current_wave = 2;
    rollout.paused = true;
    rollout.reason = "error budget exceeded".to_owned();
    store.set_rollout(&rollout).await.expect("update");
    assert_eq!(store.rollouts().await.expect("rollouts"), [rollout]);
}

async fn status_batch_of_10000_rows_is_one_call(store: Store) {
    const CLUSTERS: usize = 200;
    const SECRETS: usize = 50;
    let mut ids = Vec::with_capacity(CLUSTERS);
    for index in 0..CLUSTERS {
        ids.push(cluster(&store, &format!("cluster-{index:04}")).await.id);
    }
    let mut rows = Vec::with_capacity(CLUSTERS * SECRETS);
    for id in &ids {
        for secret in 0..SECRETS {
            rows.push(status_row(*id, &format!("secret-{secret:02}"), 7, 1));
        }
    }
    let before = store.status_statements();
    let started = Instant::now();
    assert_eq!(store.upsert_status_batch(&rows).await.expect("insert"), 10_000);
    let insert_time = started.elapsed();
    let insert_statements = store.status_statements() - before;
    assert_eq!(
        store.lagging_vacuums(),
        0,
        "10,000 rows: below LAGGING_VACUUM_ROWS"
    );

    let updates: Vec<StatusRow> = rows.into_iter().map(|row| applied(row, 7, 2)).collect();
    let started = Instant::now();
    assert_eq!(store.upsert_status_batch(&updates).await.expect("update"), 10_000);
    let update_time = started.elapsed();
    let update_statements = store.status_statements() - before - insert_statements;

    // Postgres: one unnest statement; SQLite: one multi-row statement per 3,640 rows (bind limit).
    let expected = match store.backend() {
        "postgres" => 1,
        _ => 10_000u64.div_ceil(32_766 / 9),
    };
    assert_eq!((insert_statements, update_statements), (expected, expected));
    // Postgres: the acks emptied `sync_lagging` of 10,000 rows; at 20,000 rows written the store
    // vacuumed it (SQLite keeps no such copy).
    assert_eq!(crate::store::LAGGING_VACUUM_ROWS, 20_000);
    let vacuums = if store.backend() == "postgres" { 1 } else { 0 };
    assert_eq!(store.lagging_vacuums(), vacuums);
    let lagging = inspect!(store, (i64,), "SELECT count(*) FROM keyfleet_lagging".to_owned());
    assert_eq!(lagging, [(0,)]);
    let all = store.all_status().await.expect("read");
    assert_eq!(all.len(), 10_000);
    assert!(all.iter().all(|s| s.state == SyncState::Applied
        && s.applied_revision == Some(7)
        && s.applied_at == Some(at(2))
        && s.updated == at(2)));
    eprintln!(
        "[{}] 10,000-row status batch: insert {insert_time:?} ({insert_statements} statements), \
         update {update_time:?} ({update_statements} statements)",
        store.backend()
    );
}

async fn status_semantics(store: Store) {
    let a = cluster(&store, "a").await;
    let b = cluster(&store, "b").await;
    store
        .upsert_status_batch(&[status_row(a.id, "db", 5, 1), status_row(b.id, "db", 5, 2)])
        .await
        .expect("pending");
    let first = store.status_for_cluster(a.id).await.expect("read");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].cluster_name, "a");
    assert_eq!(first[0].applied_at, None);

    // Applied for a new revision: applied_at = at.
    store
        .upsert_status_batch(&[applied(status_row(a.id, "db", 5, 0), 5, 10)])
        .await
        .expect("ack");
    // Re-ack of the same revision keeps the first applied_at.
    store
        .upsert_status_batch(&[applied(status_row(a.id, "db", 5, 0), 5, 20)])
        .await
        .expect("re-ack");
    let read = &store.status_for_cluster(a.id).await.expect("read")[0];
    assert_eq!((read.applied_at, read.updated), (Some(at(10)), at(20)));

    // A NACK of revision 6 keeps revision 5 applied; the error is cut to 1,024 bytes on a
    // character boundary.
    let long_error = format!("x{}", "é".repeat(600));
    let mut nack = status_row(a.id, "db", 6, 30);
    nack.applied_revision = Some(5);
    nack.applied_sha256 = Some(digest("rev-5"));
    nack.state = SyncState::Error;
    nack.last_error = Some(long_error.clone());
    nack.attempts = 3;
    // Same pair twice in one batch: the later row wins.
    let mut earlier = nack.clone();
    earlier.attempts = 1;
    store.upsert_status_batch(&[earlier, nack]).await.expect("nack");
    let read = &store.status_for_cluster(a.id).await.expect("read")[0];
    assert_eq!(read.state, SyncState::Error);
    assert_eq!(read.attempts, 3);
    assert_eq!(read.applied_revision, Some(5));
    assert_eq!(read.applied_at, Some(at(10)));
    let stored_error = read.last_error.clone().expect("error kept");
    assert_eq!(stored_error.len(), 1023);
    assert!(long_error.starts_with(&stored_error));

    // Then revision 6 is applied: applied_at moves.
    store
        .upsert_status_batch(&[applied(status_row(a.id, "db", 6, 0), 6, 40)])
        .await
        .expect("ack 6");
    let read = &store.status_for_cluster(a.id).await.expect("read")[0];
    assert_eq!((read.applied_revision, read.applied_at), (Some(6), Some(at(40))));
    assert_eq!(read.applied_sha256, Some(digest("rev-6")));

    store
        .upsert_status_batch(&[status_row(a.id, "api", 6, 3), status_row(b.id, "api", 6, 4)])
        .await
        .expect("more");
    let for_db = store.status_for_fleet_secret("db").await.expect("read");
    assert_eq!(
        for_db.iter().map(|s| s.cluster_name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let lagging = store.lagging(None, 10).await.expect("lagging");
    let summary: Vec<_> = lagging
        .iter()
        .map(|s| (s.cluster_name.as_str(), s.fleet_secret.as_str()))
        .collect();
    assert_eq!(summary, [("b", "db"), ("a", "api"), ("b", "api")], "oldest first");
    assert_eq!(store.lagging(Some("api"), 1).await.expect("lagging").len(), 1);
    assert_eq!(store.all_status().await.expect("all").len(), 4);

    store.delete_status(b.id, "db").await.expect("delete");
    assert_eq!(store.status_for_fleet_secret("db").await.expect("read").len(), 1);
    assert_eq!(store.upsert_status_batch(&[]).await.expect("empty"), 0);
    assert!(matches!(
        store
            .upsert_status_batch(&[status_row(ClusterId(uuid::Uuid::new_v4()), "db", 1, 1)])
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // Deleting a cluster's rows goes with the cluster only through revocation flows; rows of a
    // revoked cluster stay visible for dashboards.
    store.revoke_cluster(b.id).await.expect("revoke");
    assert_eq!(store.status_for_cluster(b.id).await.expect("read").len(), 1);
}

async fn change_log_tail(store: Store) {
    assert_eq!(store.latest_change().await.expect("latest"), 0);
    assert_eq!(store.changes_since(0, 10).await.expect("tail"), []);
    let one = store.append_change(ChangeKind::Spec, "db").await.expect("append");
    let two = store
        .append_change(ChangeKind::Revision, "db")
        .await
        .expect("append");
    let three = store
        .append_change(ChangeKind::Cluster, "eu-1")
        .await
        .expect("append");
    assert!(one < two && two < three);
    assert_eq!(store.latest_change().await.expect("latest"), three);
    let all = store.changes_since(0, 10).await.expect("tail");
    let summary: Vec<_> = all.iter().map(|c| (c.seq, c.kind, c.subject.as_str())).collect();
    assert_eq!(
        summary,
        [
            (one, ChangeKind::Spec, "db"),
            (two, ChangeKind::Revision, "db"),
            (three, ChangeKind::Cluster, "eu-1"),
        ]
    );
    let page = store.changes_since(one, 1).await.expect("tail");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, two);
    assert_eq!(store.changes_since(three, 10).await.expect("tail"), []);
    for kind in [ChangeKind::Pin, ChangeKind::Rollout] {
        store.append_change(kind, "x").await.expect("append");
    }
    let kinds: Vec<_> = store
        .changes_since(three, 10)
        .await
        .expect("tail")
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    assert_eq!(kinds, ["pin", "rollout"]);
}

async fn change_log_pruning_moves_the_horizon(store: Store) {
    assert_eq!(store.change_horizon().await.expect("horizon"), 0);
    assert_eq!(
        store.prune_changes(Utc::now(), 0).await.expect("prune"),
        0,
        "an empty log prunes nothing"
    );
    let mut seqs = Vec::new();
    for index in 0..5 {
        seqs.push(
            store
                .append_change(ChangeKind::Cluster, &format!("c-{index}"))
                .await
                .expect("append"),
        );
    }
    let past = Utc::now() - chrono::TimeDelta::hours(1);
    assert_eq!(
        store.prune_changes(past, 0).await.expect("prune"),
        0,
        "nothing that old"
    );
    assert_eq!(store.change_horizon().await.expect("horizon"), 0);

    let future = Utc::now() + chrono::TimeDelta::minutes(1);
    assert_eq!(
        store.prune_changes(future, 2).await.expect("prune"),
        3,
        "the 2 newest stay"
    );
    assert_eq!(store.change_horizon().await.expect("horizon"), seqs[2]);
    let left: Vec<i64> = store
        .changes_since(0, 10)
        .await
        .expect("tail")
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(left, seqs[3..]);
    assert_eq!(store.latest_change().await.expect("latest"), seqs[4]);

    assert_eq!(store.prune_changes(future, 2).await.expect("prune"), 0);
    assert_eq!(store.prune_changes(future, 0).await.expect("prune"), 2);
    assert_eq!(store.change_horizon().await.expect("horizon"), seqs[4]);
    assert_eq!(store.changes_since(0, 10).await.expect("tail"), []);
    assert_eq!(
        store.latest_change().await.expect("latest"),
        seqs[4],
        "a cursor taken from an emptied log is not behind the horizon"
    );
    // Sequence numbers are not reused after the log was emptied.
    let next = store.append_change(ChangeKind::Spec, "db").await.expect("append");
    assert!(next > seqs[4], "{next} after {}", seqs[4]);
    assert_eq!(store.latest_change().await.expect("latest"), next);
}

async fn change_wakeups(store: Store) {
    let mut wakeups = store.change_wakeups().await.expect("subscribe");
    let seq = store.append_change(ChangeKind::Spec, "db").await.expect("append");
    match store.backend() {
        "postgres" => {
            tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
                .await
                .expect("a wake-up within 30 s")
                .expect("channel open");
            // The wake-up says "read from your cursor": the entry is there.
            assert_eq!(store.changes_since(0, 10).await.expect("tail")[0].seq, seq);
        }
        _ => assert_eq!(
            wakeups.try_recv(),
            Err(mpsc::error::TryRecvError::Empty),
            "SQLite never signals, and the channel stays open"
        ),
    }
}

async fn change_wakeups_survive_a_lost_listener(store: Store) {
    if store.backend() == "sqlite" {
        return; // single node: no listener
    }
    let mut wakeups = store.change_wakeups().await.expect("subscribe");
    // Kill the listener's connection; the task reconnects, re-LISTENs, then wakes the reader.
    let killed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let killed = inspect!(
                store,
                (i64,),
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                    .to_owned()
            );
            if killed[0].0 > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        killed.is_ok(),
        "the listener's session is visible in pg_stat_activity"
    );
    tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
        .await
        .expect("a wake-up after the reconnect")
        .expect("channel open");
    // And notifications flow again on the new connection.
    store.append_change(ChangeKind::Pin, "db").await.expect("append");
    tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
        .await
        .expect("a wake-up for the new change")
        .expect("channel open");
}

/// keyfleet_rollout (a trigger-maintained rollup on Postgres, an aggregate on SQLite) equals the
/// aggregate of the status rows after inserts, updates that move rows between revisions, and
/// deletes.
async fn rollout_view_matches_the_status_rows(store: Store) {
    let mut ids = Vec::new();
    for index in 0..6 {
        ids.push(cluster(&store, &format!("c{index}")).await.id);
    }
    for id in &ids[..3] {
        store
            .record_connect(*id, "r1", "0.1.0", at(0))
            .await
            .expect("connect");
    }
    let check = |step: &'static str| {
        let store = store.clone();
        let ids = ids.clone();
        async move {
            let online: Vec<ClusterId> = store
                .list_clusters(None)
                .await
                .expect("clusters")
                .into_iter()
                .filter(|c| c.connected_replica.is_some())
                .map(|c| c.id)
                .collect();
            let mut expected = std::collections::BTreeMap::<(String, i64), [i64; 5]>::new();
            for s in store.all_status().await.expect("status") {
                let on_revision = s.applied_revision == Some(s.desired_revision);
                let counts = expected
                    .entry((s.fleet_secret.clone(), s.desired_revision as i64))
                    .or_default();
                counts[0] += 1;
                if on_revision && s.state == SyncState::Applied {
                    counts[1] += 1;
                } else if s.state == SyncState::Error {
                    counts[3] += 1;
                } else {
                    counts[2] += 1;
                }
                if !on_revision && !online.contains(&s.cluster) {
                    counts[4] += 1;
                }
            }
            let expected: Vec<(String, i64, i64, i64, i64, i64, i64)> = expected
                .into_iter()
                .map(|((fs, rev), c)| (fs, rev, c[0], c[1], c[2], c[3], c[4]))
                .collect();
            let found = inspect!(
                store,
                (String, i64, i64, i64, i64, i64, i64),
                "SELECT fleet_secret, revision, targeted, applied, pending, error, offline
                 FROM keyfleet_rollout ORDER BY fleet_secret, revision"
                    .to_owned()
            );
            assert_eq!(found, expected, "after {step}");

            // keyfleet_lagging holds exactly the rows off their desired revision (on Postgres
            // from `sync_lagging`, kept by triggers).
            let mut expected: Vec<(String, String, i64, Option<i64>, String, bool)> = store
                .all_status()
                .await
                .expect("status")
                .into_iter()
                .filter(|s| s.applied_revision != Some(s.desired_revision))
                .map(|s| {
                    let index = ids.iter().position(|id| *id == s.cluster).expect("known");
                    (
                        format!("c{index}"),
                        s.fleet_secret,
                        s.desired_revision as i64,
                        s.applied_revision.map(|r| r as i64),
                        s.state.as_str().to_owned(),
                        online.contains(&s.cluster),
                    )
                })
                .collect();
            expected.sort();
            let mut found = inspect!(
                store,
                (String, String, i64, Option<i64>, String, bool),
                "SELECT cluster, fleet_secret, desired_revision, applied_revision, state, online
                 FROM keyfleet_lagging"
                    .to_owned()
            );
            found.sort();
            assert_eq!(found, expected, "lagging after {step}");
        }
    };
    let mut rows = Vec::new();
    for id in &ids {
        for secret in ["api", "db"] {
            rows.push(status_row(*id, secret, 1, 1));
        }
    }
    store.upsert_status_batch(&rows).await.expect("insert");
    check("insert").await;

    let acks: Vec<StatusRow> = rows[..8].iter().cloned().map(|row| applied(row, 1, 2)).collect();
    let mut nack = rows[9].clone();
    nack.state = SyncState::Error;
    nack.last_error = Some("refused".to_owned());
    let mut batch = acks;
    batch.push(nack);
    store.upsert_status_batch(&batch).await.expect("acks");
    check("acks and a nack").await;

    // Revision 2 of db for half the fleet: those rows move to another group.
    let moved: Vec<StatusRow> = rows
        .iter()
        .filter(|row| row.fleet_secret == "db")
        .take(3)
        .map(|row| {
            let mut row = applied(row.clone(), 1, 3);
            row.desired_revision = 2;
            row.state = SyncState::Pending;
            row
        })
        .collect();
    store.upsert_status_batch(&moved).await.expect("move");
    check("moving rows to revision 2").await;

    let done: Vec<StatusRow> = moved.into_iter().map(|row| applied(row, 2, 4)).collect();
    store.upsert_status_batch(&done).await.expect("ack 2");
    check("acks of revision 2").await;

    // Clusters going offline and online (on Postgres `sync_lagging.online` follows by trigger):
    // a disconnect, a connect, a move to another replica, a replica's restart clearing its own.
    store
        .record_disconnect(ids[0], "r1", at(30))
        .await
        .expect("disconnect");
    store
        .record_connect(ids[4], "r2", "0.1.0", at(30))
        .await
        .expect("connect");
    check("a disconnect and a connect").await;
    store
        .record_connect(ids[1], "r2", "0.1.0", at(31))
        .await
        .expect("move to r2");
    store.touch_last_seen(&ids, at(32)).await.expect("liveness");
    check("a move between replicas and a liveness refresh").await;
    assert_eq!(store.clear_replica("r2").await.expect("clear"), 2);
    check("a replica clearing its connections").await;
    store
        .record_connect(ids[5], "r1", "0.1.0", at(33))
        .await
        .expect("connect");
    check("a connect after the clear").await;

    store.delete_status(ids[5], "api").await.expect("delete");
    store.delete_status(ids[5], "db").await.expect("delete");
    check("deletes").await;
}

/// What a replica polls while a rollout progresses: every cluster's serving replica and last
/// seen time, and the status rows of clusters not served by itself.
async fn liveness_and_status_served_elsewhere(store: Store) {
    let here = cluster(&store, "here").await;
    let there = cluster(&store, "there").await;
    let nowhere = cluster(&store, "nowhere").await;
    let never = cluster(&store, "never").await;
    store
        .record_connect(here.id, "r1", "0.1.0", at(10))
        .await
        .expect("connect");
    store
        .record_connect(there.id, "r2", "0.1.0", at(11))
        .await
        .expect("connect");
    store
        .record_connect(nowhere.id, "r1", "0.1.0", at(12))
        .await
        .expect("connect");
    store
        .record_disconnect(nowhere.id, "r1", at(13))
        .await
        .expect("disconnect");

    let mut liveness = store.cluster_liveness().await.expect("liveness");
    liveness.sort_by_key(|entry| entry.id.0);
    let mut expected = vec![
        ClusterLiveness {
            id: here.id,
            connected_replica: Some("r1".to_owned()),
            last_seen: Some(at(10)),
        },
        ClusterLiveness {
            id: there.id,
            connected_replica: Some("r2".to_owned()),
            last_seen: Some(at(11)),
        },
        ClusterLiveness {
            id: nowhere.id,
            connected_replica: None,
            last_seen: Some(at(13)),
        },
        ClusterLiveness {
            id: never.id,
            connected_replica: None,
            last_seen: None,
        },
    ];
    expected.sort_by_key(|entry| entry.id.0);
    assert_eq!(liveness, expected);

    let rows: Vec<StatusRow> = [here.id, there.id, nowhere.id, never.id]
        .into_iter()
        .flat_map(|id| [status_row(id, "db", 3, 20), status_row(id, "api", 3, 20)])
        .collect();
    store.upsert_status_batch(&rows).await.expect("status");
    let mut elsewhere: Vec<(ClusterId, String)> = store
        .status_served_elsewhere("db", "r1")
        .await
        .expect("elsewhere")
        .into_iter()
        .map(|s| (s.cluster, s.fleet_secret))
        .collect();
    elsewhere.sort();
    let mut expected: Vec<(ClusterId, String)> = [there.id, nowhere.id, never.id]
        .into_iter()
        .map(|id| (id, "db".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(elsewhere, expected, "every row of db but r1's cluster");
    let of_r2 = store
        .status_served_elsewhere("db", "r2")
        .await
        .expect("elsewhere");
    assert_eq!(of_r2.len(), 3);
    assert!(of_r2.iter().all(|s| s.cluster != there.id));
    assert!(
        store
            .status_served_elsewhere("unknown", "r1")
            .await
            .expect("elsewhere")
            .is_empty()
    );
}

async fn leader_election(store: Store) {
    if store.backend() == "sqlite" {
        let one = store.try_lead("kv").await.expect("lead");
        let two = store.try_lead("kv").await.expect("lead");
        assert!(one.is_some() && two.is_some(), "single node: always the leader");
        assert_eq!(one.expect("some").backend_pid(), None);
        return;
    }
    let (first, second) = tokio::join!(store.try_lead("kv"), store.try_lead("kv"));
    let (first, second) = (first.expect("try"), second.expect("try"));
    assert!(first.is_some() != second.is_some(), "exactly one wins");
    let leader = first.or(second).expect("a leader");
    // Another key is independent.
    let other = store.try_lead("other").await.expect("try").expect("free key");
    assert!(store.try_lead("kv").await.expect("try").is_none());

    // Stepping down releases the lock at once.
    leader.step_down().await;
    let leader = store.try_lead("kv").await.expect("try").expect("released");

    // Dropping the guard releases it too (in the background): wait for it by retrying.
    drop(leader);
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(leader) = store.try_lead("kv").await.expect("try") {
                break leader;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dropped guard released the lock");

    // Losing the connection is reported by lost().
    let pid = leader.backend_pid().expect("postgres leadership");
    let killed = inspect!(store, (bool,), "SELECT pg_terminate_backend($1)".to_owned(), pid);
    assert_eq!(killed, [(true,)]);
    tokio::time::timeout(Duration::from_secs(30), leader.lost())
        .await
        .expect("lost() resolves once the connection died");
    let leader = store.try_lead("kv").await.expect("try").expect("lock freed");
    drop((leader, other));
}

async fn audit_returns_exactly_what_was_passed(store: Store) {
    let events = [
        ("alice", "cluster.add", "eu-1", at(1)),
        ("bob", "spec.apply", "FleetSecret/db", at(2)),
        ("carol", "pin.set", "db/password@v7", at(3)),
    ];
    for (actor, action, subject, when) in events {
        store
            .append_audit(actor, action, subject, when)
            .await
            .expect("audit");
    }
    let read = store.audit(10).await.expect("read");
    let expected: Vec<AuditEvent> = events
        .iter()
        .rev()
        .map(|(actor, action, subject, when)| AuditEvent {
            actor: (*actor).to_owned(),
            action: (*action).to_owned(),
            subject: (*subject).to_owned(),
            at: *when,
        })
        .collect();
    assert_eq!(read, expected, "newest first, exactly as passed");
    assert_eq!(store.audit(1).await.expect("read"), expected[..1]);
    let columns = inspect!(store, (i64,), "SELECT count(*) FROM audit_events".to_owned());
    assert_eq!(columns, [(3,)]);
}

async fn dashboard_views(store: Store) {
    let mut ids = Vec::new();
    for name in ["c1", "c2", "c3", "c4"] {
        ids.push(cluster(&store, name).await.id);
    }
    // c1, c2 online; c3, c4 offline.
    for id in &ids[..2] {
        store
            .record_connect(*id, "r1", "0.1.0", at(0))
            .await
            .expect("connect");
    }
    let mut rows = vec![
        applied(status_row(ids[0], "db", 8, 0), 8, 10),
        applied(status_row(ids[1], "db", 8, 0), 8, 12),
        status_row(ids[2], "db", 8, 5),
        applied(status_row(ids[0], "api", 3, 0), 3, 10),
        applied(status_row(ids[1], "api", 3, 0), 3, 10),
        applied(status_row(ids[2], "api", 3, 0), 3, 10),
        applied(status_row(ids[3], "api", 3, 0), 3, 10),
    ];
    let mut failed = status_row(ids[3], "db", 8, 6);
    failed.state = SyncState::Error;
    failed.applied_revision = Some(7);
    failed.last_error = Some("namespace \"x\" not found".to_owned());
    rows.push(failed);
    store.upsert_status_batch(&rows).await.expect("status");

    let rollout = inspect!(
        store,
        (String, i64, i64, i64, i64, i64, i64),
        "SELECT fleet_secret, revision, targeted, applied, pending, error, offline
         FROM keyfleet_rollout ORDER BY fleet_secret, revision"
            .to_owned()
    );
    assert_eq!(
        rollout,
        [
            // offline: targeted clusters not on the revision yet and without a stream.
            ("api".to_owned(), 3, 4, 4, 0, 0, 0),
            ("db".to_owned(), 8, 4, 2, 1, 1, 2),
        ]
    );
    let first_last = inspect!(
        store,
        (String,),
        "SELECT fleet_secret FROM keyfleet_rollout
         WHERE first_applied_at IS NOT NULL AND first_applied_at < last_applied_at"
            .to_owned()
    );
    assert_eq!(first_last, [("db".to_owned(),)], "db applied at 10 and 12");

    let cluster_sync = inspect!(
        store,
        (String, bool, i64, i64, bool, Option<String>),
        "SELECT cluster, online, lagging, errors, in_sync, last_error
         FROM keyfleet_cluster_sync ORDER BY cluster"
            .to_owned()
    );
    assert_eq!(
        cluster_sync,
        [
            ("c1".to_owned(), true, 0, 0, true, None),
            ("c2".to_owned(), true, 0, 0, true, None),
            ("c3".to_owned(), false, 1, 0, false, None),
            (
                "c4".to_owned(),
                false,
                1,
                1,
                false,
                Some("namespace \"x\" not found".to_owned())
            ),
        ]
    );
    let lag = inspect!(
        store,
        (String, Option<f64>),
        "SELECT cluster, lag_seconds FROM keyfleet_cluster_sync ORDER BY cluster".to_owned()
    );
    assert_eq!(lag[0].1, None, "in sync: no lag");
    // Rows written at at(5) (2023): the lag is now - then.
    let c3_lag = lag[2].1.expect("c3 lags");
    let expected = (Utc::now() - at(5)).num_seconds() as f64;
    assert!((c3_lag - expected).abs() < 120.0, "{c3_lag} vs {expected}");

    let lagging = inspect!(
        store,
        (String, String, i64, Option<i64>, String, bool),
        "SELECT cluster, fleet_secret, desired_revision, applied_revision, state, online
         FROM keyfleet_lagging ORDER BY updated_at, cluster, fleet_secret"
            .to_owned()
    );
    assert_eq!(
        lagging,
        [
            (
                "c3".to_owned(),
                "db".to_owned(),
                8,
                None,
                "pending".to_owned(),
                false
            ),
            (
                "c4".to_owned(),
                "db".to_owned(),
                8,
                Some(7),
                "error".to_owned(),
                false
            ),
        ]
    );
}

async fn no_column_holds_a_secret_value(store: Store) {
    // A full scenario: everything the hub records about a value, through the API.
    let value = SecretValue::new(b"hunter2-correct-horse-battery".to_vec());
    let encoded = base64::engine::general_purpose::STANDARD.encode(value.expose());
    let value_digest = Sha256::of(value.expose());
    let c = store
        .create_cluster("eu-1", &labels(&[("env", "prod")]))
        .await
        .expect("cluster");
    store
        .issue_enrollment_token(c.id, &digest("token"), at(100))
        .await
        .expect("token");
    assert_eq!(
        store
            .consume_enrollment_token(&digest("token"), at(1))
            .await
            .expect("consume"),
        Ok(c.id)
    );
    store
        .set_cluster_credential(c.id, &digest("credential"))
        .await
        .expect("credential");
    store
        .upsert_spec(SpecKind::FleetSecret, "db", "kind: FleetSecret\nname: db\n")
        .await
        .expect("spec");
    store
        .upsert_secret_version(&SecretVersionRecord {
            store: "kv".to_owned(),
            name: "db-password".to_owned(),
            version: "v1".to_owned(),
            sha256: value_digest,
            enabled: true,
            created: None,
            expires: None,
            not_before: None,
        })
        .await
        .expect("version");
    let revision = store
        .upsert_revision(&NewRevision {
            fleet_secret: "db".to_owned(),
            sha256: Sha256::of(encoded.as_bytes()),
            spec_generation: 1,
            sources: vec![("db-password".to_owned(), "v1".to_owned())],
        })
        .await
        .expect("revision");
    store.set_pin("db", "db-password", "v1").await.expect("pin");
    store
        .set_rollout(&RolloutRecord {
            fleet_secret: "db".to_owned(),
            revision,
            current_wave: 1,
            paused: false,
            reason: String::new(),
        })
        .await
        .expect("rollout");
    let mut row = applied(status_row(c.id, "db", revision, 0), revision, 1);
    row.applied_sha256 = Some(Sha256::of(encoded.as_bytes()));
    store.upsert_status_batch(&[row]).await.expect("status");
    store
        .append_change(ChangeKind::Revision, "db")
        .await
        .expect("change");
    store
        .append_audit("alice", "pin.set", "db/db-password@v1", at(1))
        .await
        .expect("audit");

    // Schema: no column is meant for a value.
    let columns: Vec<(String, String, String)> = match &store.backend {
        Backend::Postgres(pool) => sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'
               AND table_name IN (SELECT table_name FROM information_schema.tables
                                  WHERE table_schema = 'public' AND table_type = 'BASE TABLE')",
        )
        .fetch_all(pool)
        .await
        .expect("columns"),
        Backend::Sqlite(pool) => sqlx::query_as(
            "SELECT m.name, p.name, p.type FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\'
               AND m.name <> 'sqlite_sequence'",
        )
        .fetch_all(pool)
        .await
        .expect("columns"),
    };
    let tables: BTreeSet<&str> = columns.iter().map(|(table, _, _)| table.as_str()).collect();
    let mut expected = BTreeSet::from([
        "audit_events",
        "change_horizon",
        "changes",
        "clusters",
        "enrollment_tokens",
        "pins",
        "revisions",
        "rollouts",
        "secret_versions",
        "specs",
        "sync_status",
    ]);
    if store.backend() == "postgres" {
        expected.insert("sync_rollup");
        expected.insert("sync_lagging");
    }
    assert_eq!(tables, expected);
    for (table, column, _) in &columns {
        for forbidden in ["value", "data", "payload", "plaintext", "secret_value", "token"] {
            assert_ne!(column, forbidden, "{table}.{column} could hold a value");
        }
    }

    // Content: no column of any table holds the value, its base64, or as bytes.
    let needles: [&[u8]; 2] = [value.expose(), encoded.as_bytes()];
    for (table, column, data_type) in &columns {
        for needle in needles {
            let hits: i64 = match &store.backend {
                Backend::Postgres(pool) => {
                    let haystack = if data_type == "bytea" {
                        column.clone()
                    } else {
                        format!("convert_to({column}::text, 'UTF8')")
                    };
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT count(*) FROM {table} WHERE position($1::bytea in {haystack}) > 0"
                    )))
                    .bind(needle)
                    .fetch_one(pool)
                    .await
                    .expect("scan")
                }
                Backend::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table} WHERE instr(CAST({column} AS BLOB), ?1) > 0"
                )))
                .bind(needle)
                .fetch_one(pool)
                .await
                .expect("scan"),
            };
            assert_eq!(hits, 0, "{table}.{column} holds the value");
        }
    }
}

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
        if store.backend() == "postgres" {
            expected.push(AppliedMigration {
                version: 4,
                description: "lagging rows".to_owned(),
            });
            expected.push(AppliedMigration {
                version: 5,
                description: "lagging online".to_owned(),
            });
        }
        assert_eq!(applied, expected);
        assert_eq!(store.migrate_report().await.expect("again"), []);
        let views = inspect!(
            store,
            (i64,),
            "SELECT (SELECT count(*) FROM keyfleet_rollout) + (SELECT count(*) FROM keyfleet_cluster_sync)
                  + (SELECT count(*) FROM keyfleet_lagging)"
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
fn debug_of_records_shows_digests_not_bytes() {
    let row = status_row(ClusterId(uuid::Uuid::nil()), "db", 1, 0);
    let row = applied(row, 1, 0);
    let printed = format!("{row:?}");
    assert!(printed.contains("sha256:"), "{printed}");
}
