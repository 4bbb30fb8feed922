//! Conformance of keyed digests: rotation (a previous key still verifies, new writes use the
//! current key) and rows stored plain (before migration 0006) keyed by `key_unkeyed_digests`.

use super::*;
use crate::domain::{DigestKeys, StoredDigest};

const KEY_A: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
const KEY_B: &str = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf";

fn new_revision(content: &str) -> NewRevision {
    NewRevision {
        fleet_secret: "db".to_owned(),
        sha256: digest(content),
        spec_generation: 1,
        sources: vec![("db-password".to_owned(), format!("v-{content}"))],
    }
}

pub(super) async fn digests_survive_a_key_rotation(store: Store) {
    let old = store.clone().with_digest_keys(DigestKeys::parse(KEY_A).unwrap());
    let r1 = old.upsert_revision(&new_revision("one")).await.expect("upsert");

    // Rotation: B is current, A previous.
    let rotated = DigestKeys::parse(&format!("{KEY_B}\n{KEY_A}\n")).unwrap();
    let (key_a, key_b) = (old.digest_keys().current().clone(), rotated.current().clone());
    let store = store.with_digest_keys(rotated);
    let latest = store.latest_revisions().await.expect("latest");
    assert_eq!(latest[0].revision, r1);
    assert_eq!(latest[0].digest.key(), Some(&key_a), "written under A");
    assert!(
        store.digest_keys().matches(&latest[0].digest, &digest("one")),
        "A still verifies"
    );
    assert!(!store.digest_keys().matches(&latest[0].digest, &digest("two")));

    // The same content under the new key keeps its number: a rotation starts no rollout.
    assert_eq!(
        store.upsert_revision(&new_revision("one")).await.expect("same"),
        r1
    );
    // New writes use B; a digest under a key no longer held is unknown, never a match.
    let r2 = store.upsert_revision(&new_revision("two")).await.expect("upsert");
    let latest = store.latest_revisions().await.expect("latest");
    assert_eq!((latest[0].revision, latest[0].digest.key()), (r2, Some(&key_b)));
    assert_eq!(
        store.upsert_revision(&new_revision("two")).await.expect("again"),
        r2,
        "idempotent under the current key"
    );
    let only_b = DigestKeys::parse(KEY_B).unwrap();
    let before = store
        .revision_before("db", r2)
        .await
        .expect("before")
        .expect("r1");
    assert!(
        !only_b.matches(&before.digest, &digest("one")),
        "A was dropped: unknown"
    );
    assert!(only_b.matches(&latest[0].digest, &digest("two")));
}

pub(super) async fn unkeyed_digests_are_keyed_at_start(store: Store) {
    let c = store.create_cluster("eu-1", &labels(&[])).await.expect("cluster");
    let revision = store
        .upsert_revision(&new_revision("one"))
        .await
        .expect("revision");
    store
        .upsert_status_batch(&[applied(status_row(c.id, "db", revision, 0), revision, 1)])
        .await
        .expect("status");
    store
        .upsert_secret_version(&SecretVersionRecord {
            store: "kv".to_owned(),
            name: "db-password".to_owned(),
            version: "v1".to_owned(),
            sha256: digest("value"),
            enabled: true,
            created: None,
            expires: None,
            not_before: None,
        })
        .await
        .expect("version");
    // What a hub before migration 0006 wrote: plain digests, no key.
    let plain_status = digest(&format!("rev-{revision}"));
    unkey(
        &store,
        "secret_versions",
        "sha256",
        "digest_key",
        &digest("value"),
    )
    .await;
    unkey(&store, "revisions", "sha256", "digest_key", &digest("one")).await;
    unkey(
        &store,
        "sync_status",
        "applied_sha256",
        "applied_digest_key",
        &plain_status,
    )
    .await;

    // Unkeyed rows still compare (a rolling upgrade keeps working) …
    let latest = store.latest_revisions().await.expect("latest");
    assert_eq!(latest[0].digest, StoredDigest::Unkeyed(digest("one")));
    assert!(store.digest_keys().matches(&latest[0].digest, &digest("one")));
    assert_eq!(
        store
            .upsert_revision(&new_revision("one"))
            .await
            .expect("same content"),
        revision,
        "an unkeyed newest revision with the same content keeps its number"
    );
    let status = store.status_for_cluster(c.id).await.expect("status");
    assert_eq!(
        status[0].applied_digest,
        Some(StoredDigest::Unkeyed(plain_status))
    );

    // … and are keyed with the current key at start, once.
    let keyed = store.key_unkeyed_digests().await.expect("key");
    assert_eq!(
        keyed,
        KeyedRows {
            secret_versions: 1,
            revisions: 1,
            sync_status: 1
        }
    );
    assert_eq!(
        store.key_unkeyed_digests().await.expect("again"),
        KeyedRows::default()
    );
    let current = store.digest_keys().current().clone();
    let latest = store.latest_revisions().await.expect("latest");
    assert_eq!(latest[0].digest.key(), Some(&current));
    assert!(store.digest_keys().matches(&latest[0].digest, &digest("one")));
    let status = store.status_for_cluster(c.id).await.expect("status");
    let applied = status[0].applied_digest.as_ref().expect("applied");
    assert_eq!(applied.key(), Some(&current));
    assert!(store.digest_keys().matches(applied, &plain_status));
    let versions = inspect!(
        store,
        (Vec<u8>, Option<String>),
        "SELECT sha256, digest_key FROM secret_versions".to_owned()
    );
    assert_eq!(
        versions,
        [(
            store.digest_keys().key(&digest("value")).bytes().to_vec(),
            Some(current.as_str().to_owned())
        )]
    );
}

/// Rewrites every row of `table` to the plain digest `plain` with no key (test only).
async fn unkey(store: &Store, table: &str, column: &str, key_column: &str, plain: &Sha256) {
    let sql = format!("UPDATE {table} SET {column} = $1, {key_column} = NULL");
    match &store.backend {
        Backend::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&plain.0[..])
                .execute(pool)
                .await
                .expect("unkey");
        }
        Backend::Sqlite(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.replace("$1", "?1")))
                .bind(&plain.0[..])
                .execute(pool)
                .await
                .expect("unkey");
        }
    }
}
