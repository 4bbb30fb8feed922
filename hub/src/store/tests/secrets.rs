//! Conformance of the store's first invariant: after a full scenario, no column holds a secret
//! value, nor a plain SHA-256 of one (or of the revision payload holding it), also after a key
//! rotation.

use super::*;
use crate::domain::DigestKeys;

const KEY_A: &str = "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";
const KEY_B: &str = "303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f";

pub(super) async fn no_column_holds_a_secret_value(store: Store) {
    let store = store.with_digest_keys(DigestKeys::parse(KEY_A).expect("key"));
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

    // Key rotation: B current, A previous. A second value and its revision are written under B;
    // the first revision still verifies under A.
    let store = store.with_digest_keys(DigestKeys::parse(&format!("{KEY_B}\n{KEY_A}")).expect("keys"));
    let second = SecretValue::new(b"tr0ub4dor&3-second-value".to_vec());
    let second_encoded = base64::engine::general_purpose::STANDARD.encode(second.expose());
    store
        .upsert_secret_version(&SecretVersionRecord {
            store: "kv".to_owned(),
            name: "db-password".to_owned(),
            version: "v2".to_owned(),
            sha256: Sha256::of(second.expose()),
            enabled: true,
            created: None,
            expires: None,
            not_before: None,
        })
        .await
        .expect("version 2");
    let second_revision = store
        .upsert_revision(&NewRevision {
            fleet_secret: "db".to_owned(),
            sha256: Sha256::of(second_encoded.as_bytes()),
            spec_generation: 1,
            sources: vec![("db-password".to_owned(), "v2".to_owned())],
        })
        .await
        .expect("revision 2");
    let mut row = applied(status_row(c.id, "db", second_revision, 2), second_revision, 3);
    row.applied_sha256 = Some(Sha256::of(second_encoded.as_bytes()));
    store.upsert_status_batch(&[row]).await.expect("status 2");
    assert_eq!(
        store.key_unkeyed_digests().await.expect("key"),
        KeyedRows::default()
    );
    let first = store
        .revision_before("db", second_revision)
        .await
        .expect("before")
        .expect("the first revision");
    assert!(
        store
            .digest_keys()
            .matches(&first.digest, &Sha256::of(encoded.as_bytes())),
        "the previous key still verifies"
    );

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
    } else {
        // Postgres keeps it in a sequence.
        expected.insert("status_generation");
    }
    assert_eq!(tables, expected);
    for (table, column, _) in &columns {
        for forbidden in ["value", "data", "payload", "plaintext", "secret_value", "token"] {
            assert_ne!(column, forbidden, "{table}.{column} could hold a value");
        }
    }

    // Content: no column of any table holds a value, its base64, or the plain SHA-256 of either
    // value or of either revision payload (as bytes or hex).
    let plain_digests = [
        value_digest,
        Sha256::of(encoded.as_bytes()),
        Sha256::of(second.expose()),
        Sha256::of(second_encoded.as_bytes()),
    ];
    let hex: Vec<String> = plain_digests.iter().map(Sha256::to_hex).collect();
    let mut needles: Vec<&[u8]> = vec![
        value.expose(),
        encoded.as_bytes(),
        second.expose(),
        second_encoded.as_bytes(),
    ];
    needles.extend(plain_digests.iter().map(|digest| &digest.0[..]));
    needles.extend(hex.iter().map(String::as_bytes));
    for (table, column, data_type) in &columns {
        for &needle in &needles {
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
            assert_eq!(hits, 0, "{table}.{column} holds a value or its plain digest");
        }
    }
}
