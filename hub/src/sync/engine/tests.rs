//! Engine behaviour driven step by step (its loop is not running), on a SQLite store with an
//! in-memory Key Vault (`vault::fake`) and in-process agents (fleet sessions, no gRPC): the
//! change-log tail, a rotation across rollout waves, a pin, a revocation and a restart.

use chrono::{TimeDelta, Utc};

use super::{Engine, EngineConfig, EngineDeps, RevisionEncoder};
use crate::domain::{Labels, Sha256};
use crate::fleet::credentials::Credentials;
use crate::fleet::{EncodedRevision, Fleet, FleetConfig};
use crate::render::RenderedSecret;
use crate::store::{ChangeKind, SpecKind, SpecWrite, Store};
use crate::vault::fake::FakeSources;

mod rollout;

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

/// Encodes a revision as its data, in key order: enough for the engine, which never looks
/// inside (the wire format is `grpc::convert`'s).
pub(super) struct TestEncoder;

impl RevisionEncoder for TestEncoder {
    fn digest(&self, rendered: &RenderedSecret) -> Sha256 {
        Sha256::of(&Self::bytes(rendered))
    }

    fn encode(
        &self,
        rendered: &RenderedSecret,
        revision: u64,
        _sources: &[(String, String)],
    ) -> EncodedRevision {
        EncodedRevision {
            key: rendered.key.clone(),
            revision,
            sha256: self.digest(rendered),
            payload: bytes::Bytes::from(Self::bytes(rendered)),
        }
    }
}

impl TestEncoder {
    fn bytes(rendered: &RenderedSecret) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (key, value) in &rendered.data {
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(value.expose());
            bytes.push(0);
        }
        bytes
    }
}

/// An engine over `store`, `fleet` and `sources`, not yet warmed up.
pub(super) fn engine(store: &Store, fleet: &Fleet, sources: &FakeSources) -> Engine {
    let (engine, _control) = Engine::new(
        EngineConfig::default(),
        EngineDeps {
            store: store.clone(),
            fleet: fleet.clone(),
            credentials: Credentials::default(),
            sources: std::sync::Arc::new(sources.clone()),
            encoder: std::sync::Arc::new(TestEncoder),
        },
    );
    engine
}

/// A fresh, migrated SQLite store in `dir`.
pub(super) async fn sqlite(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("keyfleet.db").display());
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// An engine on a fresh SQLite store in `dir`, warmed up (its loop is not running), and the
/// store, to write as another replica would.
async fn warmed_up(dir: &tempfile::TempDir) -> (Engine, Store) {
    let store = sqlite(dir).await;
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    let mut engine = engine(&store, &fleet, &FakeSources::default());
    engine.warm_up().await.expect("warm up");
    (engine, store)
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
    let (mut engine, store) = warmed_up(&dir).await;
    let cursor = engine.cursor;
    assert!(engine.inventory.clusters.is_empty() && engine.secrets.is_empty() && engine.pins.is_empty());

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

    engine.catch_up().await.expect("catch up");

    assert!(
        engine.inventory.clusters.contains_key(&cluster.id),
        "the enrolled cluster is loaded"
    );
    assert!(
        engine.secrets.contains_key("regcred"),
        "the applied fleet secret is loaded"
    );
    assert_eq!(
        engine
            .pins
            .get("regcred")
            .and_then(|pins| pins.get("acr-pull"))
            .map(String::as_str),
        Some("0123456789abcdef0123456789abcdef"),
        "the pin is loaded"
    );
    assert!(engine.replan, "the fleet is planned again");
    let latest = store.latest_change().await.expect("latest");
    assert_eq!(engine.cursor, latest, "the cursor moves to the newest entry");

    // From there on the log is followed as usual: a later change is read, not a reload.
    engine.replan = false;
    let (second, seq) = enroll_elsewhere(&store, "edge-2").await;
    engine.catch_up().await.expect("catch up");
    assert!(engine.inventory.clusters.contains_key(&second.id));
    assert_eq!(engine.cursor, seq);
}

/// A cursor at the horizon (everything up to it was read before the prune) is not a gap.
#[tokio::test]
async fn a_cursor_at_the_horizon_is_followed_without_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut engine, store) = warmed_up(&dir).await;
    enroll_elsewhere(&store, "edge-1").await;
    engine.catch_up().await.expect("catch up");
    let read = engine.cursor;
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
    engine.replan = false;
    engine.catch_up().await.expect("catch up");
    assert!(
        !engine.secrets.contains_key("regcred"),
        "no reload: nothing was missed"
    );
    assert!(!engine.replan);
    assert_eq!(engine.cursor, read);
}

/// A store that went away fails the step without losing it: the cursor stays where it was (the
/// missed change is read once the store answers), and the engine degrades instead of stopping.
#[tokio::test]
async fn a_store_failure_keeps_the_cursor_and_degrades_the_engine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut engine, store) = warmed_up(&dir).await;
    let cursor = engine.cursor;
    enroll_elsewhere(&store, "edge-1").await;
    store.close().await;
    let failed = engine.catch_up().await.expect_err("the store is closed");
    assert!(
        matches!(&failed, super::EngineError::Store(error) if error.is_unavailable()),
        "{failed:?}"
    );
    assert_eq!(
        engine.cursor, cursor,
        "the cursor only moves once the reload succeeded"
    );
    engine
        .survive("read the change log", Err(failed))
        .expect("a store failure does not stop the engine");
    assert!(engine.store_down);
    let stored_spec = crate::spec::SpecError::Read {
        path: "x".into(),
        source: std::io::Error::other("gone"),
    };
    let fatal = super::EngineError::StoredSpec {
        kind: "FleetSecret",
        name: "regcred".to_owned(),
        source: stored_spec,
    };
    assert!(
        engine.survive("load specs", Err(fatal)).is_err(),
        "other errors still stop it"
    );
}
