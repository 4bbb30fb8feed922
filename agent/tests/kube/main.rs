//! The Kubernetes side of the agent against the fake API server, through `kube` (no mocked
//! client): apply, rotation, ownership, Merge, removal, drift repair, restart without writes.

#[path = "../support/mod.rs"]
mod support;

mod apply_and_drift;
mod end_to_end;
mod rollback_and_rights;

use std::sync::Arc;
use std::time::Duration;

use keyfleet_agent::cluster::{Cluster as _, ClusterEvent};
use keyfleet_agent::hub::desired_from_payload;
use keyfleet_agent::kube::{KubeCluster, KubeSettings};
use keyfleet_agent::metrics::Metrics;
use keyfleet_agent::reconcile::{
    Applied, DeletionPolicy, DesiredSecret, DriftKind, ErrorCode, FIELD_MANAGER, FLEET_SECRET_ANNOTATION,
    MANAGED_BY_LABEL, REVISION_ANNOTATION, SHA256_ANNOTATION,
};
use keyfleet_proto::digest;
use keyfleet_proto::v1;
use keyfleet_testkit::kube::{ClusterHandle, Config, FakeKube, Kind, Object, Permissions, SecretBytes, Verb};
use tokio::sync::mpsc;

pub const VALUE: &str = "rotation-secret-value-1";

pub async fn fake() -> (FakeKube, ClusterHandle) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let handle = fake.cluster("default").expect("default cluster");
    for namespace in ["a", "b", "keyfleet-system"] {
        handle.create_namespace(namespace).expect("namespace");
    }
    (fake, handle)
}

pub async fn client(handle: &ClusterHandle) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

pub fn payload(key: &str, revision: u64, value: &str, namespaces: &[&str]) -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: key.into(),
        revision,
        secret_name: key.into(),
        r#type: "Opaque".into(),
        namespaces: namespaces.iter().map(|ns| (*ns).to_owned()).collect(),
        data: [("token".to_string(), value.as_bytes().to_vec())].into(),
        labels: [("team".to_string(), "payments".to_string())].into(),
        deletion_policy: v1::DeletionPolicy::Delete as i32,
        ..Default::default()
    };
    seal(&mut payload);
    payload
}

pub fn seal(payload: &mut v1::SecretPayload) {
    payload.sha256 = digest::payload_sha256(payload).to_vec();
}

fn desired(payload: v1::SecretPayload) -> DesiredSecret {
    desired_from_payload(payload).expect("valid payload")
}

async fn cluster(handle: &ClusterHandle) -> (KubeCluster, mpsc::Receiver<ClusterEvent>) {
    cluster_with(handle, client(handle).await)
}

fn cluster_with(handle: &ClusterHandle, client: kube::Client) -> (KubeCluster, mpsc::Receiver<ClusterEvent>) {
    let _ = handle;
    KubeCluster::new(client, settings(), Metrics::default())
}

fn settings() -> KubeSettings {
    let mut settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
    settings.namespace_cache_ttl = Duration::ZERO;
    settings
}

async fn next_event(events: &mut mpsc::Receiver<ClusterEvent>) -> ClusterEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("cluster alive")
}

/// Runs `body` while the cluster's watcher runs.
async fn with_watcher<F: Future<Output = ()>>(cluster: &KubeCluster, body: F) {
    tokio::select! {
        () = cluster.run_watcher() => panic!("watcher ended"),
        () = body => {}
    }
}

fn secret(handle: &ClusterHandle, namespace: &str, name: &str) -> Arc<Object> {
    handle
        .get_secret(namespace, name)
        .unwrap_or_else(|| panic!("{namespace}/{name} exists"))
}

fn revision(handle: &ClusterHandle, namespace: &str, name: &str) -> Option<String> {
    handle.get_secret(namespace, name).map(|object| {
        object
            .meta
            .annotations
            .get(REVISION_ANNOTATION)
            .cloned()
            .unwrap_or_default()
    })
}

/// Every namespace in `namespaces` holds revision 1 of regcred with [`VALUE`].
fn holds_revision_1(handle: &ClusterHandle, namespaces: &[&str]) {
    for namespace in namespaces {
        assert_eq!(
            revision(handle, namespace, "regcred").as_deref(),
            Some("1"),
            "revision in {namespace}"
        );
        assert_eq!(
            secret(handle, namespace, "regcred").data("token"),
            Some(VALUE.as_bytes()),
            "value in {namespace}"
        );
    }
}

async fn applied_revision(cluster: &KubeCluster, key: &str) -> Option<u64> {
    cluster
        .applied()
        .await
        .expect("state")
        .get(key)
        .map(|applied| applied.revision)
}
