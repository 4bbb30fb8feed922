//! Every SQL query of the Grafana dashboard (`deploy/monitoring/keyfleet-dashboard.json`, panels
//! on the PostgreSQL data source) runs against the real views of a migrated Postgres store holding
//! a small fleet: clusters, status rows (applied, pending, refused), a FleetSecret whose served
//! Key Vault version expires in 10 days. Each query must succeed and return rows; the expiry
//! panel must show that version 10 days out.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use chrono::{TimeDelta, Utc};
use keyfleet_hub::domain::{Labels, Sha256, SyncState};
use keyfleet_hub::store::{NewRevision, SecretVersionRecord, SpecKind, StatusRow};
use sqlx::{Column as _, Row as _};
use support::TestDb;

fn dashboard_sql() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/keyfleet-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |target| Some((title.clone(), target["rawSql"].as_str()?.to_owned())))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_against_the_real_views() {
    let db = TestDb::create().await;
    let store = &db.store;
    let yaml = support::serve::regcred_spec(&"https://kv.example".parse().unwrap());
    let fleet_secret_yaml = yaml.split("---").nth(1).unwrap();
    store
        .upsert_spec(SpecKind::FleetSecret, "regcred", fleet_secret_yaml)
        .await
        .unwrap();
    let expires = Utc::now() + TimeDelta::days(10);
    let version = "0123456789abcdef0123456789abcdef";
    store
        .upsert_secret_version(&SecretVersionRecord {
            store: "shared-kv".to_owned(),
            name: "acr-pull".to_owned(),
            version: version.to_owned(),
            sha256: Sha256::of(b"digest only"),
            enabled: true,
            created: None,
            expires: Some(expires),
            not_before: None,
        })
        .await
        .unwrap();
    let revision = store
        .upsert_revision(&NewRevision {
            fleet_secret: "regcred".to_owned(),
            sha256: Sha256::of(b"revision"),
            spec_generation: 1,
            sources: vec![("acr-pull".to_owned(), version.to_owned())],
        })
        .await
        .unwrap();
    let mut rows = Vec::new();
    for (index, state) in [
        SyncState::Applied,
        SyncState::Applied,
        SyncState::Pending,
        SyncState::Error,
    ]
    .into_iter()
    .enumerate()
    {
        let cluster = store
            .create_cluster(&format!("cluster-{index}"), &Labels::new())
            .await
            .unwrap();
        rows.push(StatusRow {
            cluster: cluster.id,
            fleet_secret: "regcred".to_owned(),
            desired_revision: revision,
            applied_revision: (state == SyncState::Applied).then_some(revision),
            applied_sha256: None,
            state,
            last_error: (state == SyncState::Error).then(|| "namespace ci not found".to_owned()),
            attempts: 1,
            at: Utc::now() - TimeDelta::minutes(20),
        });
    }
    store.upsert_status_batch(&rows).await.unwrap();

    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    let queries = dashboard_sql();
    assert!(queries.len() >= 4, "only {} SQL panels", queries.len());
    for (title, sql) in &queries {
        let result = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|error| panic!("panel {title:?}: {error}\n{sql}"));
        assert!(!result.is_empty(), "panel {title:?} returned no row:\n{sql}");
        if title.contains("validity") {
            let row = &result[0];
            let columns: Vec<&str> = row.columns().iter().map(|column| column.name()).collect();
            assert!(columns.contains(&"days_left"), "{columns:?}");
            assert_eq!(row.get::<String, _>("remote_key"), "acr-pull");
            let days: f64 = row.get("days_left");
            assert!((days - 10.0).abs() < 0.01, "panel {title:?}: {days} days left");
        }
    }
    pool.close().await;
    db.drop_db().await;
}
