//! The status snapshot: served again while the store's inputs stand still, computed again as
//! soon as a status row, a cluster or the change log moves; and the FleetSecrets parsed again only
//! when their stored text changes.

use std::sync::Arc;

use chrono::Utc;

use super::super::Admin;
use crate::domain::{Labels, SyncState};
use crate::store::{ChangeKind, SpecKind, SpecWrite, StatusRow, Store};
use crate::sync::control::{ControlError, HubControl, SyncNowOutcome};

struct NoHub;

#[async_trait::async_trait]
impl HubControl for NoHub {
    async fn changed(&self) {}

    async fn sync_now(&self, _store: Option<String>) -> Result<SyncNowOutcome, ControlError> {
        Err(ControlError::ShuttingDown)
    }
}

const SPECS: [(SpecKind, &str, &str); 2] = [
    (
        SpecKind::SecretStore,
        "shared-kv",
        "kind: SecretStore\nname: shared-kv\nprovider:\n  azurekv:\n    vaultUrl: https://shared-kv.vault.azure.net\n    authType: WorkloadIdentity\n",
    ),
    (
        SpecKind::FleetSecret,
        "regcred",
        "kind: FleetSecret\nname: regcred\nstoreRef: shared-kv\ndata:\n  - secretKey: password\n    remoteRef: { key: acr-pull }\ntarget:\n  name: regcred\n  type: Opaque\n  namespaces: [default]\n",
    ),
];

/// A SQLite store in a temporary directory (kept alive by the returned guard) holding `SPECS`.
async fn store_with_specs() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("keyfleet.db").display());
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let writes: Vec<SpecWrite<'_>> = SPECS
        .iter()
        .map(|(kind, name, yaml)| SpecWrite {
            kind: *kind,
            name,
            yaml,
        })
        .collect();
    store.apply_specs(&writes, "test").await.expect("specs");
    (dir, store)
}

#[tokio::test]
async fn a_status_is_computed_once_per_change_of_its_inputs() {
    let (_dir, store) = store_with_specs().await;
    let cluster = store
        .create_cluster("prod-1", &Labels::new())
        .await
        .expect("cluster");
    let admin = Admin::new(store.clone(), Arc::new(NoHub));

    let first = admin.statuses(None, 0).await.expect("status");
    assert_eq!(first[0].counts.targeted, 1);
    assert_eq!(first[0].counts.applied, 0);
    for _ in 0..5 {
        assert_eq!(admin.statuses(None, 0).await.expect("status"), first);
    }
    assert_eq!(admin.statuses_computed().await, 1, "served from the snapshot");
    admin.status_of("regcred").await.expect("one FleetSecret");
    assert_eq!(
        admin.statuses_computed().await,
        2,
        "another question, its own snapshot"
    );

    // An ack recorded by any replica moves the store's status generation.
    store
        .upsert_status_batch(&[StatusRow {
            cluster: cluster.id,
            fleet_secret: "regcred".to_owned(),
            desired_revision: 1,
            applied_revision: Some(1),
            applied_sha256: None,
            state: SyncState::Error,
            last_error: Some("namespace default is terminating".to_owned()),
            attempts: 1,
            at: Utc::now(),
        }])
        .await
        .expect("status row");
    let after_ack = admin.statuses(None, 0).await.expect("status");
    assert_eq!(admin.statuses_computed().await, 3, "a status row moved");
    assert_eq!(after_ack[0].lagging.len(), 0, "no revision yet: nothing lags");
    assert_eq!(after_ack[0].counts.error, 1, "the refusal counts");

    // A change-log entry (a spec, a revision, a pin, a rollout step) moves it too.
    store
        .append_change(ChangeKind::Spec, "regcred")
        .await
        .expect("change");
    admin.statuses(None, 0).await.expect("status");
    assert_eq!(admin.statuses_computed().await, 4, "the change log moved");
    admin.statuses(None, 0).await.expect("status");
    assert_eq!(admin.statuses_computed().await, 4);
}

#[tokio::test]
async fn a_fleet_secret_is_parsed_again_only_when_its_stored_text_changes() {
    let (_dir, store) = store_with_specs().await;
    let write = |kind, name, yaml| SpecWrite { kind, name, yaml };
    let admin = Admin::new(store.clone(), Arc::new(NoHub));
    let keys = |admin: &Admin| {
        let admin = admin.clone();
        async move {
            let (_, secret) = admin.fleet_secret("regcred").await.expect("regcred");
            secret.remote_keys().join(",")
        }
    };

    assert_eq!(keys(&admin).await, "acr-pull");
    assert_eq!(keys(&admin).await, "acr-pull");
    assert_eq!(admin.specs_parsed(), 1, "unchanged text, parsed once");

    let changed = SPECS[1].2.replace("acr-pull", "acr-pull-2");
    store
        .apply_specs(&[write(SpecKind::FleetSecret, "regcred", &changed)], "test")
        .await
        .expect("changed spec");
    assert_eq!(keys(&admin).await, "acr-pull-2");
    assert_eq!(admin.specs_parsed(), 2);

    // Deleted, then created again: its generation starts again, its text decides.
    assert!(
        store
            .delete_spec(SpecKind::FleetSecret, "regcred")
            .await
            .expect("delete")
    );
    assert!(admin.fleet_secret("regcred").await.is_err(), "gone");
    store
        .apply_specs(&[write(SpecKind::FleetSecret, "regcred", SPECS[1].2)], "test")
        .await
        .expect("created again");
    assert_eq!(keys(&admin).await, "acr-pull");
    assert_eq!(admin.specs_parsed(), 3);
}
