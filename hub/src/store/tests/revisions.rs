//! Conformance of `secret_versions`, `revisions`, `pins` and `rollouts`.

use super::*;

pub(super) async fn secret_versions_upsert(store: Store) {
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
        (String, Vec<u8>, Option<String>, bool),
        "SELECT version, sha256, digest_key, enabled FROM secret_versions ORDER BY version".to_owned()
    );
    let keys = store.digest_keys();
    let keyed = |text: &str| keys.key(&digest(text)).bytes().to_vec();
    let key = Some(keys.current().as_str().to_owned());
    assert_eq!(
        rows,
        [
            ("v1".to_owned(), keyed("value-1"), key.clone(), false),
            ("v2".to_owned(), keyed("value-2"), key, false),
        ],
        "the digest is stored keyed, with its key"
    );
    assert_ne!(rows[0].1, digest("value-1").0.to_vec());
}

pub(super) async fn revisions_idempotent_and_monotonic(store: Store) {
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
        .map(|r| (r.fleet_secret.as_str(), r.revision, r.spec_generation))
        .collect();
    assert_eq!(summary[0], ("a", a4, 2));
    assert_eq!(summary[1], ("b", b1, 1));
    let keys = store.digest_keys();
    assert!(keys.matches(&latest[0].digest, &digest("one")));
    assert!(keys.matches(&latest[1].digest, &digest("one")));
    assert!(!keys.matches(&latest[1].digest, &digest("two")));
    assert_eq!(summary[2].0, "c");
    assert_eq!(latest.len(), 3);
    assert_eq!(
        latest[0].sources,
        [("db-password".to_owned(), "v-one".to_owned())]
    );
    // The one before a revision: what clusters beyond a rollout's current wave keep.
    let before = store.revision_before("a", a4).await.expect("before");
    let before = before.expect("a revision before a4");
    assert_eq!(before.revision, a3);
    assert!(keys.matches(&before.digest, &digest("two")));
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

pub(super) async fn pins_and_rollouts(store: Store) {
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
