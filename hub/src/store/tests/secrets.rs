//! Conformance of the store's first invariant: after a full scenario, no column holds a secret
//! value.

use super::*;

pub(super) async fn no_column_holds_a_secret_value(store: Store) {
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
        "drift_events",
        "enrollment_tokens",
        "pins",
        "poll_requests",
        "revisions",
        "rollouts",
        "secret_versions",
        "specs",
        "store_polls",
        "sync_history",
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
