//! Runtime behaviour driven step by step (its loop is not running): the change-log tail.

use chrono::{TimeDelta, Utc};

use super::{Runtime, RuntimeConfig};
use crate::domain::Labels;
use crate::fleet::credentials::Credentials;
use crate::fleet::{Fleet, FleetConfig};
use crate::store::{ChangeKind, SpecKind, SpecWrite, Store};

const FLEET_SECRET: &str = "kind: FleetSecret
name: regcred
storeRef: shared-kv
data:
  - secretKey: .dockerconfigjson
    remoteRef: { key: acr-pull }
target:
  name: regcred
  type: kubernetes.io/dockerconfigjson
  namespaces: [default]
";

/// A runtime on a fresh SQLite store in `dir`, warmed up (its loop is not running), and the
/// store, to write as another replica would.
async fn warmed_up(dir: &tempfile::TempDir) -> (Runtime, Store) {
    let url = format!("sqlite://{}", dir.path().join("keyfleet.db").display());
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    let (mut runtime, _control) = Runtime::new(
        RuntimeConfig::default(),
        store.clone(),
        fleet,
        Credentials::default(),
    );
    runtime.warm_up().await.expect("warm up");
    (runtime, store)
}

/// A cluster enrolled through another replica: its row and its change entry (the sequence).
async fn enroll_elsewhere(store: &Store, name: &str) -> (crate::store::Cluster, i64) {
    let cluster = store
        .create_cluster(name, &Labels::new())
        .await
        .expect("create cluster");
    let seq = store
        .append_change(ChangeKind::Cluster, name)
        .await
        .expect("append change");
    (cluster, seq)
}

/// A replica that missed changes the leader then pruned cannot learn them from the log: it finds
/// its cursor below the horizon and reloads clusters, specs and pins from the tables.
#[tokio::test]
async fn a_cursor_below_the_pruned_horizon_reloads_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut runtime, store) = warmed_up(&dir).await;
    let cursor = runtime.cursor;
    assert!(runtime.clusters.is_empty() && runtime.secrets.is_empty() && runtime.pins.is_empty());

    // Meanwhile, through another replica: a cluster enrolled, a fleet secret applied, a pin set.
    let (cluster, _) = enroll_elsewhere(&store, "edge-1").await;
    store
        .apply_specs(
            &[SpecWrite {
                kind: SpecKind::FleetSecret,
                name: "regcred",
                yaml: FLEET_SECRET,
            }],
            "token",
        )
        .await
        .expect("apply spec");
    store
        .set_pin("regcred", "acr-pull", "0123456789abcdef0123456789abcdef")
        .await
        .expect("pin");
    store
        .append_change(ChangeKind::Pin, "regcred/acr-pull")
        .await
        .expect("append change");
    // ... and the leader pruned all of it before this replica read the log.
    let pruned = store
        .prune_changes(Utc::now() + TimeDelta::hours(1), 0)
        .await
        .expect("prune");
    assert_eq!(pruned, 3, "the three changes after the cursor were pruned");
    assert!(store.changes_since(cursor, 1000).await.expect("tail").is_empty());
    assert!(store.change_horizon().await.expect("horizon") > cursor);

    runtime.catch_up().await.expect("catch up");

    assert!(
        runtime.clusters.contains_key(&cluster.id),
        "the enrolled cluster is loaded"
    );
    assert!(
        runtime.secrets.contains_key("regcred"),
        "the applied fleet secret is loaded"
    );
    assert_eq!(
        runtime
            .pins
            .get("regcred")
            .and_then(|pins| pins.get("acr-pull"))
            .map(String::as_str),
        Some("0123456789abcdef0123456789abcdef"),
        "the pin is loaded"
    );
    assert!(runtime.replan, "the fleet is planned again");
    let latest = store.latest_change().await.expect("latest");
    assert_eq!(runtime.cursor, latest, "the cursor moves to the newest entry");

    // From there on the log is followed as usual: a later change is read, not a reload.
    runtime.replan = false;
    let (second, seq) = enroll_elsewhere(&store, "edge-2").await;
    runtime.catch_up().await.expect("catch up");
    assert!(runtime.clusters.contains_key(&second.id));
    assert_eq!(runtime.cursor, seq);
}

/// A cursor at the horizon (everything up to it was read before the prune) is not a gap.
#[tokio::test]
async fn a_cursor_at_the_horizon_is_followed_without_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut runtime, store) = warmed_up(&dir).await;
    enroll_elsewhere(&store, "edge-1").await;
    runtime.catch_up().await.expect("catch up");
    let read = runtime.cursor;
    store
        .prune_changes(Utc::now() + TimeDelta::hours(1), 0)
        .await
        .expect("prune");
    assert_eq!(store.change_horizon().await.expect("horizon"), read);
    // A spec written straight into its table without a change entry is what a reload would
    // pick up; following the log does not.
    store
        .upsert_spec(SpecKind::FleetSecret, "regcred", FLEET_SECRET)
        .await
        .expect("spec");
    runtime.replan = false;
    runtime.catch_up().await.expect("catch up");
    assert!(
        !runtime.secrets.contains_key("regcred"),
        "no reload: nothing was missed"
    );
    assert!(!runtime.replan);
    assert_eq!(runtime.cursor, read);
}
