//! The Kubernetes side of the agent against the fake API server, through `kube` (no mocked
//! client): apply, rotation, ownership, Merge, removal, drift repair, restart without writes.

mod support;

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

#[tokio::test]
async fn rotation_is_applied_by_server_side_apply_with_our_marks() {
    let (_fake, handle) = fake().await;
    let (cluster, _events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a", "b"])))
            .await
            .expect("applied");
        for namespace in ["a", "b"] {
            let object = secret(&handle, namespace, "regcred");
            assert_eq!(object.data("token"), Some(VALUE.as_bytes()));
            assert_eq!(
                object.meta.labels.get(MANAGED_BY_LABEL).map(String::as_str),
                Some("keyfleet")
            );
            assert_eq!(
                object.meta.labels.get("team").map(String::as_str),
                Some("payments")
            );
            assert_eq!(
                object
                    .meta
                    .annotations
                    .get(REVISION_ANNOTATION)
                    .map(String::as_str),
                Some("1")
            );
            assert_eq!(
                object
                    .meta
                    .annotations
                    .get(FLEET_SECRET_ANNOTATION)
                    .map(String::as_str),
                Some("regcred")
            );
            assert!(
                object
                    .meta
                    .managed_fields
                    .iter()
                    .any(|entry| entry.manager == FIELD_MANAGER)
            );
        }
        let rotated = payload("regcred", 2, "rotation-secret-value-2", &["a", "b"]);
        let sha = rotated.sha256.clone();
        cluster.upsert(desired(rotated)).await.expect("rotated");
        let object = secret(&handle, "a", "regcred");
        assert_eq!(object.data("token"), Some(&b"rotation-secret-value-2"[..]));
        assert_eq!(
            object
                .meta
                .annotations
                .get(REVISION_ANNOTATION)
                .map(String::as_str),
            Some("2")
        );
        let applied = cluster.applied().await.expect("applied state");
        assert_eq!(
            applied.get("regcred").map(|a| (a.revision, a.sha256.to_vec())),
            Some((2, sha))
        );
        // Same revision again: nothing to write.
        let before = handle.writes();
        cluster
            .upsert(desired(payload(
                "regcred",
                2,
                "rotation-secret-value-2",
                &["a", "b"],
            )))
            .await
            .expect("no-op");
        assert_eq!(handle.writes().requests, before.requests);
    })
    .await;
}

#[tokio::test]
async fn a_secret_it_does_not_own_is_nacked_and_left_untouched() {
    let (_fake, handle) = fake().await;
    let theirs = Object::new_secret("a", "regcred").with_data("token", b"theirs");
    handle
        .put_secret(theirs, "kubectl-create")
        .expect("foreign secret");
    let before = secret(&handle, "a", "regcred");
    let (cluster, _events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        let refusal = cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["b", "a"])))
            .await
            .expect_err("not ours");
        assert_eq!(refusal.code, ErrorCode::NotOwned);
        assert!(refusal.message.contains("a/regcred"), "{}", refusal.message);
        assert!(!refusal.message.contains(VALUE));
        // Nothing at all was written: not the foreign Secret, not the other namespace.
        assert_eq!(handle.writes().requests, 0);
        assert_eq!(*secret(&handle, "a", "regcred"), *before);
        assert!(handle.get_secret("b", "regcred").is_none());
        let missing = cluster
            .upsert(desired(payload("other", 1, VALUE, &["a", "nowhere"])))
            .await
            .expect_err("namespace missing");
        assert_eq!(
            (missing.code, missing.retryable),
            (ErrorCode::NamespaceMissing, true)
        );
        let credential = cluster
            .upsert(desired(payload(
                "keyfleet-agent-credential",
                1,
                VALUE,
                &["keyfleet-system"],
            )))
            .await
            .expect_err("own credential");
        assert_eq!(credential.code, ErrorCode::Invalid);
    })
    .await;
}

#[tokio::test]
async fn merge_adds_only_our_keys_and_removal_takes_only_them_back() {
    let (_fake, handle) = fake().await;
    handle
        .put_secret(
            Object::new_secret("a", "shared").with_data("theirs", b"keep-me"),
            "kubectl-create",
        )
        .expect("foreign secret");
    let (cluster, _events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        let mut merge = payload("shared", 1, VALUE, &["a"]);
        merge.creation_policy = v1::CreationPolicy::Merge as i32;
        seal(&mut merge);
        cluster.upsert(desired(merge)).await.expect("merged");
        let object = secret(&handle, "a", "shared");
        assert_eq!(object.data("theirs"), Some(&b"keep-me"[..]));
        assert_eq!(object.data("token"), Some(VALUE.as_bytes()));
        assert!(cluster.applied().await.expect("state").contains_key("shared"));
        cluster
            .remove("shared", DeletionPolicy::Delete)
            .await
            .expect("removed");
        let object = secret(&handle, "a", "shared");
        assert_eq!(object.data("theirs"), Some(&b"keep-me"[..]));
        assert_eq!(object.data("token"), None, "our key is taken back");
        assert!(!object.meta.labels.contains_key(MANAGED_BY_LABEL));
        assert!(cluster.applied().await.expect("state").is_empty());
    })
    .await;
}

#[tokio::test]
async fn removal_deletes_or_releases_by_policy() {
    let (_fake, handle) = fake().await;
    let (cluster, _events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("gone", 1, VALUE, &["a"])))
            .await
            .expect("applied");
        let mut kept = payload("kept", 1, VALUE, &["a"]);
        kept.deletion_policy = v1::DeletionPolicy::Retain as i32;
        seal(&mut kept);
        cluster.upsert(desired(kept)).await.expect("applied");
        cluster
            .remove("gone", DeletionPolicy::Delete)
            .await
            .expect("deleted");
        cluster
            .remove("kept", DeletionPolicy::Retain)
            .await
            .expect("released");
        assert!(handle.get_secret("a", "gone").is_none());
        let released = secret(&handle, "a", "kept");
        assert_eq!(released.data("token"), Some(VALUE.as_bytes()));
        assert!(!released.meta.labels.contains_key(MANAGED_BY_LABEL));
        assert!(!released.meta.annotations.contains_key(REVISION_ANNOTATION));
        assert_eq!(
            released.meta.labels.get("team").map(String::as_str),
            Some("payments")
        );
        assert!(cluster.applied().await.expect("state").is_empty());
    })
    .await;
}

/// Writes a Secret ours for `key` (revision 1) behind the agent's back, in namespace b; returns
/// its resourceVersion.
fn put_marker(handle: &ClusterHandle, key: &str) -> u64 {
    let mut marker = Object::new_secret("b", key).with_data("token", b"marker");
    marker
        .meta
        .labels
        .insert(MANAGED_BY_LABEL.into(), "keyfleet".into());
    for (annotation, value) in [
        (FLEET_SECRET_ANNOTATION, key.to_owned()),
        (REVISION_ANNOTATION, "1".to_owned()),
        (SHA256_ANNOTATION, hex::encode([0u8; 32])),
    ] {
        marker.meta.annotations.insert(annotation.into(), value);
    }
    handle
        .put_secret(marker, "marker")
        .expect("marker")
        .meta
        .resource_version
}

/// Waits (bounded) until the agent's applied state shows `key`: every watch event before its
/// marker has then been handled, since a watch is ordered.
async fn wait_until_applied(cluster: &KubeCluster, key: &str) {
    let seen = async {
        while !cluster.applied().await.expect("state").contains_key(key) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .expect("the watch delivers the marker within 10 s");
}

fn revisions(applied: &std::collections::BTreeMap<String, Applied>) -> Vec<(&str, u64)> {
    applied
        .iter()
        .map(|(key, applied)| (key.as_str(), applied.revision))
        .collect()
}

#[tokio::test]
async fn late_watch_events_never_undo_what_the_agent_wrote() {
    let (_fake, handle) = fake().await;
    let (cluster, mut events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a"])))
            .await
            .expect("applied");
        // From here the watch lags behind every write response (as on a loaded machine).
        handle.hold_watches();
        cluster
            .upsert(desired(payload("gone", 1, VALUE, &["a"])))
            .await
            .expect("applied");
        let mut kept = payload("kept", 1, VALUE, &["a"]);
        kept.deletion_policy = v1::DeletionPolicy::Retain as i32;
        seal(&mut kept);
        cluster.upsert(desired(kept)).await.expect("applied");
        let first_marker = put_marker(&handle, "marker-1");
        cluster
            .remove("gone", DeletionPolicy::Delete)
            .await
            .expect("deleted");
        cluster
            .remove("kept", DeletionPolicy::Retain)
            .await
            .expect("released");
        // Someone deletes regcred; the rotation that follows recreates it.
        assert!(handle.delete_secret("a", "regcred"));
        cluster
            .upsert(desired(payload("regcred", 2, "rotated-value", &["a"])))
            .await
            .expect("rotated");
        let writes = handle.writes();

        // The watch catches up to the first marker: it has now told the agent that gone and
        // kept were created, which the agent's own removals already superseded.
        handle.hold_watches_after(first_marker);
        wait_until_applied(&cluster, "marker-1").await;
        let applied = cluster.applied().await.expect("state");
        assert_eq!(revisions(&applied), [("marker-1", 1), ("regcred", 2)]);

        // The rest, including the deletion of regcred revision 1, is older than the rotation.
        handle.release_watches();
        put_marker(&handle, "marker-2");
        wait_until_applied(&cluster, "marker-2").await;
        let applied = cluster.applied().await.expect("state");
        assert_eq!(
            revisions(&applied),
            [("marker-1", 1), ("marker-2", 1), ("regcred", 2)]
        );
        assert_eq!(
            handle.writes().requests,
            writes.requests,
            "a late event made the agent write"
        );
        assert!(events.try_recv().is_err(), "a late event was reported as drift");
        assert_eq!(
            secret(&handle, "a", "regcred").data("token"),
            Some(&b"rotated-value"[..])
        );
    })
    .await;
}

#[tokio::test]
async fn edits_and_deletions_are_repaired_and_reported() {
    let (_fake, handle) = fake().await;
    let (cluster, mut events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 3, VALUE, &["a", "b"])))
            .await
            .expect("applied");
        // Someone edits the value with another field manager (kubectl edit).
        let mut edited = (*secret(&handle, "a", "regcred")).clone();
        edited
            .secret_mut()
            .expect("secret")
            .data
            .insert("token".into(), SecretBytes::from(&b"hand-edited"[..]));
        handle.put_secret(edited, "kubectl-edit").expect("edit");
        assert_eq!(
            next_event(&mut events).await,
            ClusterEvent::Drift {
                key: "regcred".into(),
                namespace: "a".into(),
                kind: DriftKind::Modified,
                revision: 3
            }
        );
        assert_eq!(
            secret(&handle, "a", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
        // Someone deletes it.
        assert!(handle.delete_secret("b", "regcred"));
        assert_eq!(
            next_event(&mut events).await,
            ClusterEvent::Drift {
                key: "regcred".into(),
                namespace: "b".into(),
                kind: DriftKind::Deleted,
                revision: 3
            }
        );
        assert_eq!(
            secret(&handle, "b", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
    })
    .await;
}

#[tokio::test]
async fn a_restarted_agent_rebuilds_its_state_writes_nothing_and_resyncs_drift() {
    let (_fake, handle) = fake().await;
    let sent = payload("regcred", 5, VALUE, &["a", "b"]);
    let sha = sent.sha256.clone();
    {
        let (cluster, _events) = cluster(&handle).await;
        with_watcher(&cluster, async {
            cluster.upsert(desired(sent.clone())).await.expect("applied");
        })
        .await;
    }
    let writes = handle.writes();
    // Restart: a new process with nothing in memory.
    let (cluster, mut events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        let applied = cluster.applied().await.expect("state");
        assert_eq!(
            applied.get("regcred").map(|a| (a.revision, a.sha256.to_vec())),
            Some((5, sha.clone()))
        );
        assert_eq!(handle.writes(), writes, "rebuilding the state wrote something");
        // Drift while the payload is not in memory: the key leaves the applied set and the
        // agent asks to resync; the hub's upsert then repairs it and the drift is reported.
        assert!(handle.delete_secret("a", "regcred"));
        assert_eq!(next_event(&mut events).await, ClusterEvent::Resync);
        assert!(cluster.applied().await.expect("state").is_empty());
        cluster.upsert(desired(sent.clone())).await.expect("re-applied");
        assert_eq!(
            next_event(&mut events).await,
            ClusterEvent::Drift {
                key: "regcred".into(),
                namespace: "a".into(),
                kind: DriftKind::Deleted,
                revision: 5
            }
        );
        assert_eq!(
            secret(&handle, "a", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
        assert!(cluster.applied().await.expect("state").contains_key("regcred"));
    })
    .await;
}

#[tokio::test]
async fn kubernetes_refusals_become_nacks_without_changes() {
    let (_fake, handle) = fake().await;
    // A token that may read everything but write Secrets only in namespace a.
    handle.add_token(
        "restricted-token",
        Permissions::none("agent")
            .allow(&[Verb::Get, Verb::List, Verb::Watch], &[], &[])
            .allow(&[], &[Kind::Secret], &["a"]),
    );
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml_with_token("restricted-token"))
            .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let (cluster, _events) = cluster_with(&handle, kube::Client::try_from(config).expect("client"));
    with_watcher(&cluster, async {
        let forbidden = cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["b"])))
            .await
            .expect_err("forbidden");
        assert_eq!(
            (forbidden.code, forbidden.retryable),
            (ErrorCode::Forbidden, true)
        );
        assert!(forbidden.message.contains("b/regcred"), "{}", forbidden.message);
        assert!(handle.get_secret("b", "regcred").is_none());
        cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a"])))
            .await
            .expect("allowed in a");
        // The API fails the next call with a 500 (kube retries 503/429 by itself): a retryable
        // NACK, and the Secret keeps revision 1.
        handle.fail_next(1, 500);
        let unavailable = cluster
            .upsert(desired(payload("regcred", 2, "new-value", &["a"])))
            .await
            .expect_err("500");
        assert_eq!(
            (unavailable.code, unavailable.retryable),
            (ErrorCode::KubernetesUnavailable, true)
        );
        let object = secret(&handle, "a", "regcred");
        assert_eq!(
            object
                .meta
                .annotations
                .get(REVISION_ANNOTATION)
                .map(String::as_str),
            Some("1")
        );
        assert_eq!(object.data("token"), Some(VALUE.as_bytes()));
        assert_eq!(
            cluster
                .applied()
                .await
                .expect("state")
                .get("regcred")
                .map(|a| a.revision),
            Some(1)
        );
    })
    .await;
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

#[tokio::test]
async fn a_write_failing_midway_rolls_every_namespace_back() {
    let (_fake, handle) = fake().await;
    handle.create_namespace("c").expect("namespace");
    let metrics = Metrics::default();
    let (cluster, _events) = KubeCluster::new(client(&handle).await, settings(), metrics.clone());
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a", "b"])))
            .await
            .expect("applied");
        // Revision 2 also goes to c, and the API fails that write (the third).
        handle.fail_next_write("c", "regcred", 500);
        let refusal = cluster
            .upsert(desired(payload("regcred", 2, "new-value", &["a", "b", "c"])))
            .await
            .expect_err("c fails");
        assert_eq!(
            (refusal.code, refusal.retryable),
            (ErrorCode::KubernetesUnavailable, true)
        );
        assert!(
            refusal.message.starts_with("apply Secret c/regcred: 500"),
            "{}",
            refusal.message
        );
        assert!(
            refusal
                .message
                .ends_with("; rolled back to their previous state: a/regcred, b/regcred, c/regcred"),
            "{}",
            refusal.message
        );
        assert!(!refusal.message.contains("new-value"));
        // a and b hold revision 1 again, c holds nothing, as before the item.
        holds_revision_1(&handle, &["a", "b"]);
        assert!(handle.get_secret("c", "regcred").is_none());
        assert_eq!(applied_revision(&cluster, "regcred").await, Some(1));
        assert_eq!((metrics.rollbacks.get(), metrics.rollback_failures.get()), (1, 0));
        // The hub's retry converges.
        cluster
            .upsert(desired(payload("regcred", 2, "new-value", &["a", "b", "c"])))
            .await
            .expect("retried");
        for namespace in ["a", "b", "c"] {
            assert_eq!(revision(&handle, namespace, "regcred").as_deref(), Some("2"));
        }
        assert_eq!(applied_revision(&cluster, "regcred").await, Some(2));
    })
    .await;
}

#[tokio::test]
async fn after_a_restart_the_previous_content_is_read_back_and_an_unclear_failure_is_undone_too() {
    let (_fake, handle) = fake().await;
    {
        let (cluster, _events) = cluster(&handle).await;
        with_watcher(&cluster, async {
            cluster
                .upsert(desired(payload("regcred", 1, VALUE, &["a", "b"])))
                .await
                .expect("applied");
        })
        .await;
    }
    // Someone else labels the Secret in a: not ours, it must survive the rollback.
    let mut labelled = (*secret(&handle, "a", "regcred")).clone();
    labelled.meta.labels.insert("audited".into(), "yes".into());
    handle.put_secret(labelled, "kubectl-label").expect("label");
    // A new agent process: no payload in memory, the state comes from annotations.
    let (cluster, _events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        assert_eq!(applied_revision(&cluster, "regcred").await, Some(1));
        // The write to b happens, but the API answers 500: the agent cannot know it happened.
        handle.fail_next_write_after_commit("b", "regcred", 500);
        let refusal = cluster
            .upsert(desired(payload("regcred", 2, "new-value", &["a", "b"])))
            .await
            .expect_err("b fails");
        assert_eq!(refusal.code, ErrorCode::KubernetesUnavailable);
        assert!(
            refusal
                .message
                .ends_with("rolled back to their previous state: a/regcred, b/regcred"),
            "{}",
            refusal.message
        );
        holds_revision_1(&handle, &["a", "b"]);
        let restored = secret(&handle, "a", "regcred");
        assert_eq!(
            restored.meta.labels.get("audited").map(String::as_str),
            Some("yes")
        );
        assert_eq!(
            restored.meta.labels.get("team").map(String::as_str),
            Some("payments")
        );
        assert_eq!(applied_revision(&cluster, "regcred").await, Some(1));
    })
    .await;
}

#[tokio::test]
async fn a_failed_rollback_is_named_in_the_nack_and_the_retry_converges() {
    let (_fake, handle) = fake().await;
    let metrics = Metrics::default();
    let (cluster, _events) = KubeCluster::new(client(&handle).await, settings(), metrics.clone());
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a", "b"])))
            .await
            .expect("applied");
        // The write of revision 2 to a succeeds, the one to b fails, and so does putting a back.
        handle.fail_nth_write("a", "regcred", 2, 500);
        handle.fail_next_write("b", "regcred", 500);
        let refusal = cluster
            .upsert(desired(payload("regcred", 2, "new-value", &["a", "b"])))
            .await
            .expect_err("b fails");
        assert_eq!(
            (refusal.code, refusal.retryable),
            (ErrorCode::KubernetesUnavailable, true)
        );
        assert!(
            refusal
                .message
                .contains("; rollback incomplete, the next attempt repairs it: apply Secret a/regcred: 500"),
            "{}",
            refusal.message
        );
        assert_eq!((metrics.rollbacks.get(), metrics.rollback_failures.get()), (1, 1));
        assert_eq!(revision(&handle, "a", "regcred").as_deref(), Some("2"));
        holds_revision_1(&handle, &["b"]);
        // The key leaves the applied state (so a reconnecting agent is sent it again) ...
        assert_eq!(applied_revision(&cluster, "regcred").await, None);
        // ... and the hub's retry converges.
        cluster
            .upsert(desired(payload("regcred", 2, "new-value", &["a", "b"])))
            .await
            .expect("retried");
        for namespace in ["a", "b"] {
            assert_eq!(revision(&handle, namespace, "regcred").as_deref(), Some("2"));
        }
        assert_eq!(applied_revision(&cluster, "regcred").await, Some(2));
    })
    .await;
}

#[tokio::test]
async fn a_merge_and_a_removal_failing_midway_are_rolled_back_too() {
    let (_fake, handle) = fake().await;
    for namespace in ["a", "b"] {
        handle
            .put_secret(
                Object::new_secret(namespace, "shared").with_data("theirs", b"keep-me"),
                "kubectl-create",
            )
            .expect("foreign secret");
    }
    let before = secret(&handle, "a", "shared");
    let (cluster, _events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        // Merge into a, then b fails: our keys and marks leave a again.
        let mut merge = payload("shared", 1, VALUE, &["a", "b"]);
        merge.creation_policy = v1::CreationPolicy::Merge as i32;
        seal(&mut merge);
        handle.fail_next_write("b", "shared", 500);
        cluster.upsert(desired(merge)).await.expect_err("b fails");
        let after = secret(&handle, "a", "shared");
        assert_eq!(after.data("token"), None);
        assert_eq!(after.data("theirs"), Some(&b"keep-me"[..]));
        assert_eq!(after.meta.labels, before.meta.labels);
        assert_eq!(after.meta.annotations, before.meta.annotations);
        assert!(!cluster.applied().await.expect("state").contains_key("shared"));

        // A removal that fails in b after deleting a: a is recreated with revision 1.
        cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a", "b"])))
            .await
            .expect("applied");
        handle.fail_next_write("b", "regcred", 500);
        let refusal = cluster
            .remove("regcred", DeletionPolicy::Delete)
            .await
            .expect_err("b fails");
        assert!(
            refusal.message.starts_with("delete Secret b/regcred: 500"),
            "{}",
            refusal.message
        );
        holds_revision_1(&handle, &["a", "b"]);
        assert_eq!(applied_revision(&cluster, "regcred").await, Some(1));
        // The retried removal completes.
        cluster
            .remove("regcred", DeletionPolicy::Delete)
            .await
            .expect("removed");
        assert!(handle.get_secret("a", "regcred").is_none());
        assert!(handle.get_secret("b", "regcred").is_none());
    })
    .await;
}

#[tokio::test]
async fn without_rights_to_list_secrets_nothing_is_planned_and_the_reason_is_named() {
    let (_fake, handle) = fake().await;
    handle.add_token(
        "no-secrets",
        Permissions::none("agent").allow(&[], &[Kind::Namespace], &[]),
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml_with_token("no-secrets"))
        .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let mut settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
    settings.sync_timeout = Duration::from_millis(300);
    let (cluster, _events) = KubeCluster::new(
        kube::Client::try_from(config).expect("client"),
        settings,
        Metrics::default(),
    );
    with_watcher(&cluster, async {
        let error = cluster.applied().await.expect_err("cannot list");
        assert!(error.to_string().contains("not listed"), "{error}");
        let refusal = cluster
            .upsert(desired(payload("regcred", 1, VALUE, &["a"])))
            .await
            .expect_err("not synced");
        assert_eq!(
            (refusal.code, refusal.retryable),
            (ErrorCode::KubernetesUnavailable, true)
        );
        assert_eq!(handle.writes().requests, 0);
    })
    .await;
}

#[tokio::test]
async fn with_an_allow_list_namespaced_rights_are_enough() {
    let (_fake, handle) = fake().await;
    // Secrets only in a and b (no cluster-wide Secret rights at all), namespaces readable.
    handle.add_token(
        "namespaced",
        Permissions::none("agent")
            .allow(&[Verb::Get, Verb::List, Verb::Watch], &[Kind::Namespace], &[])
            .allow(&[], &[Kind::Secret], &["a", "b"]),
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml_with_token("namespaced"))
        .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let mut settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
    settings.allowed_namespaces = Some(["a".to_string(), "b".to_string()].into());
    let (cluster, mut events) = KubeCluster::new(
        kube::Client::try_from(config).expect("client"),
        settings,
        Metrics::default(),
    );
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 2, VALUE, &["a", "b"])))
            .await
            .expect("applied");
        assert_eq!(
            cluster
                .applied()
                .await
                .expect("state")
                .get("regcred")
                .map(|a| a.revision),
            Some(2)
        );
        let refusal = cluster
            .upsert(desired(payload("elsewhere", 1, VALUE, &["keyfleet-system"])))
            .await
            .expect_err("not allowed");
        assert_eq!(refusal.code, ErrorCode::Invalid);
        assert!(handle.delete_secret("b", "regcred"));
        assert_eq!(
            next_event(&mut events).await,
            ClusterEvent::Drift {
                key: "regcred".into(),
                namespace: "b".into(),
                kind: DriftKind::Deleted,
                revision: 2
            }
        );
        assert!(handle.get_secret("b", "regcred").is_some());
    })
    .await;
}

#[tokio::test]
async fn a_deletion_missed_while_the_watch_was_down_is_repaired_after_the_relist() {
    let (_fake, handle) = fake().await;
    let (cluster, mut events) = cluster(&handle).await;
    with_watcher(&cluster, async {
        cluster
            .upsert(desired(payload("regcred", 4, VALUE, &["a"])))
            .await
            .expect("applied");
        // The watch drops and its history is gone: the watcher must relist (410) to see this.
        handle.expire_history();
        handle.drop_watches();
        assert!(handle.delete_secret("a", "regcred"));
        assert_eq!(
            next_event(&mut events).await,
            ClusterEvent::Drift {
                key: "regcred".into(),
                namespace: "a".into(),
                kind: DriftKind::Deleted,
                revision: 4
            }
        );
        assert_eq!(
            secret(&handle, "a", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
    })
    .await;
}

#[tokio::test]
async fn a_namespace_selector_follows_new_and_relabelled_namespaces() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let (fake, handle) = fake().await;
    let mut writes = fake.subscribe();
    let client = client(&handle).await;
    let mut settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
    settings.namespace_cache_ttl = Duration::ZERO;
    settings.audit_interval = Duration::from_millis(50);
    let (cluster, _events) = KubeCluster::new(client.clone(), settings, Metrics::default());
    let namespaces: Api<Namespace> = Api::all(client);
    let labelled = |name: &str| {
        serde_json::from_value::<Namespace>(serde_json::json!({
            "metadata": { "name": name, "labels": { "env": "prod" } }
        }))
        .expect("namespace")
    };
    namespaces
        .create(&PostParams::default(), &labelled("prod-1"))
        .await
        .expect("prod-1");
    let mut selected = payload("regcred", 1, VALUE, &[]);
    selected.namespace_selector = Some(v1::LabelSelector {
        match_labels: [("env".to_string(), "prod".to_string())].into(),
        match_expressions: vec![],
    });
    seal(&mut selected);
    with_watcher(&cluster, async {
        cluster.upsert(desired(selected)).await.expect("applied");
        assert!(handle.get_secret("prod-1", "regcred").is_some());
        assert!(handle.get_secret("a", "regcred").is_none());
        // A new matching namespace gets the Secret at the next audit.
        namespaces
            .create(&PostParams::default(), &labelled("prod-2"))
            .await
            .expect("prod-2");
        let written = async {
            loop {
                let event = writes.recv().await.expect("write events");
                if event.namespace.as_deref() == Some("prod-2")
                    && event.manager.as_deref() == Some(FIELD_MANAGER)
                {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), written)
            .await
            .expect("written within 10 s");
        assert_eq!(
            secret(&handle, "prod-2", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
        // prod-1 stops matching: deletionPolicy Delete removes the Secret there.
        let unlabel = serde_json::json!({ "metadata": { "labels": { "env": null } } });
        namespaces
            .patch("prod-1", &PatchParams::default(), &Patch::Merge(&unlabel))
            .await
            .expect("relabel");
        let deleted = async {
            loop {
                let event = writes.recv().await.expect("write events");
                if event.namespace.as_deref() == Some("prod-1") && event.name == "regcred" {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), deleted)
            .await
            .expect("deleted within 10 s");
        assert!(handle.get_secret("prod-1", "regcred").is_none());
    })
    .await;
}

mod end_to_end {
    use keyfleet_agent::{AgentSettings, run_agent};
    use keyfleet_proto::v1::{agent_message, hub_message};
    use tokio::sync::oneshot;
    use zeroize::Zeroizing;

    use super::support::hub::{CREDENTIAL, ScriptedHub, Session, TOKEN};
    use super::*;

    async fn hello(session: &mut Session) -> v1::Hello {
        match session.recv().await {
            agent_message::Body::Hello(hello) => hello,
            _ => panic!("first message must be hello"),
        }
    }

    fn welcome(in_sync: bool) -> hub_message::Body {
        hub_message::Body::Welcome(v1::Welcome {
            in_sync,
            hub_instance: "hub-0".into(),
            heartbeat_interval_ms: 30_000,
            max_inflight: 4,
        })
    }

    #[tokio::test]
    async fn a_write_failing_midway_is_a_nack_and_no_namespace_keeps_the_new_revision() {
        let (_fake, handle) = fake().await;
        let mut hub = ScriptedHub::start().await;
        let (logs, _guard) = support::capture_logs();
        let mut settings = AgentSettings::new(hub.url.clone(), Some(hub.ca_pem.clone()));
        settings.enrollment_token = Some(Zeroizing::new(TOKEN.into()));
        let (stop, stopped) = oneshot::channel::<()>();
        let agent = run_agent(settings, client(&handle).await, async {
            let _ = stopped.await;
        });
        let hub_side = async {
            let mut session = hub.session().await;
            hello(&mut session).await;
            session.send(welcome(false)).await;
            let mut results = Vec::new();
            for (nonce, item) in [
                (1, payload("regcred", 1, VALUE, &["a", "b"])),
                (2, payload("regcred", 2, "new-value", &["a", "b"])),
            ] {
                if nonce == 2 {
                    handle.fail_next_write("b", "regcred", 500);
                }
                session
                    .send(hub_message::Body::Update(v1::Update {
                        nonce,
                        upserts: vec![item],
                        removals: vec![],
                    }))
                    .await;
                let agent_message::Body::Ack(ack) = session.recv().await else {
                    panic!("expected an ack");
                };
                assert_eq!(ack.nonce, nonce);
                results.extend(ack.results);
            }
            assert!(results[0].error.is_none(), "revision 1 applies");
            let error = results[1].error.as_ref().expect("revision 2 is NACKed");
            assert_eq!(
                (error.code, error.retryable),
                (v1::ErrorCode::KubernetesUnavailable as i32, true)
            );
            assert!(
                error
                    .message
                    .contains("rolled back to their previous state: a/regcred, b/regcred"),
                "{}",
                error.message
            );
            holds_revision_1(&handle, &["a", "b"]);
            stop.send(()).expect("agent running");
        };
        let (result, ()) = tokio::join!(agent, hub_side);
        result.expect("agent stops cleanly");
        let logs = logs.contents();
        assert!(logs.contains("write failed midway; rolled back"), "{logs}");
        for secret in [VALUE, "new-value"] {
            assert!(!logs.contains(secret), "a secret reached the logs");
        }
    }

    #[tokio::test]
    async fn the_agent_enrolls_applies_and_restarts_in_sync_without_writes() {
        let (_fake, handle) = fake().await;
        let mut hub = ScriptedHub::start().await;
        let (logs, _guard) = support::capture_logs();
        let mut settings = AgentSettings::new(hub.url.clone(), Some(hub.ca_pem.clone()));
        settings.enrollment_token = Some(Zeroizing::new(TOKEN.into()));
        let sent = payload("regcred", 1, VALUE, &["a", "b"]);
        let sha = sent.sha256.clone();

        handle
            .put_secret(
                Object::new_secret("a", "theirs").with_data("token", b"not-yours"),
                "kubectl-create",
            )
            .expect("foreign secret");
        let (stop, stopped) = oneshot::channel::<()>();
        let agent = run_agent(settings.clone(), client(&handle).await, async {
            let _ = stopped.await;
        });
        let hub_side = async {
            let mut session = hub.session().await;
            assert_eq!(
                session.authorization.as_deref(),
                Some(format!("Bearer {CREDENTIAL}").as_str())
            );
            let hello = hello(&mut session).await;
            assert_eq!(hello.applied_count, 0);
            session.send(welcome(false)).await;
            session
                .send(hub_message::Body::Update(v1::Update {
                    nonce: 1,
                    upserts: vec![sent.clone()],
                    removals: vec![],
                }))
                .await;
            let agent_message::Body::Ack(ack) = session.recv().await else {
                panic!("expected an ack");
            };
            assert_eq!(ack.nonce, 1);
            assert_eq!(ack.results.len(), 1);
            assert!(
                ack.results[0].error.is_none(),
                "nack: {:?}",
                ack.results[0].error.as_ref().map(|e| &e.message)
            );
            // A Secret someone else owns: NACKed over the wire, left alone.
            session
                .send(hub_message::Body::Update(v1::Update {
                    nonce: 2,
                    upserts: vec![payload("theirs", 1, VALUE, &["a"])],
                    removals: vec![],
                }))
                .await;
            let agent_message::Body::Ack(ack) = session.recv().await else {
                panic!("expected an ack");
            };
            let error = ack.results[0].error.as_ref().expect("nack");
            assert_eq!(error.code, v1::ErrorCode::NotOwned as i32);
            assert_eq!(
                secret(&handle, "a", "theirs").data("token"),
                Some(&b"not-yours"[..])
            );
            // An edit by another manager is repaired and reported on the stream.
            let mut edited = (*secret(&handle, "b", "regcred")).clone();
            edited
                .secret_mut()
                .expect("secret")
                .data
                .insert("token".into(), SecretBytes::from(&b"edited"[..]));
            handle.put_secret(edited, "kubectl-edit").expect("edit");
            let agent_message::Body::Drift(drift) = session.recv().await else {
                panic!("expected a drift report");
            };
            assert_eq!(
                (drift.key.as_str(), drift.namespace.as_str(), drift.revision),
                ("regcred", "b", 1)
            );
            assert_eq!(drift.kind, v1::DriftKind::Modified as i32);
            assert_eq!(
                secret(&handle, "b", "regcred").data("token"),
                Some(VALUE.as_bytes())
            );
            stop.send(()).expect("agent running");
        };
        let (result, ()) = tokio::join!(agent, hub_side);
        result.expect("agent stops cleanly");
        assert_eq!(
            secret(&handle, "b", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
        let stored = secret(&handle, "keyfleet-system", "keyfleet-agent-credential");
        assert_eq!(stored.data("credential"), Some(CREDENTIAL.as_bytes()));

        // Restart without the (spent) token: the stored credential is reused, the state is
        // rebuilt from annotations, the hub finds it in sync, and nothing is written.
        let writes = handle.writes();
        settings.enrollment_token = None;
        let (stop, stopped) = oneshot::channel::<()>();
        let agent = run_agent(settings, client(&handle).await, async {
            let _ = stopped.await;
        });
        let hub_side = async {
            let mut session = hub.session().await;
            let hello = hello(&mut session).await;
            assert_eq!(hello.applied_count, 1);
            assert_eq!(
                hello.applied_digest,
                digest::set_digest([("regcred", 1, sha.as_slice())]).to_vec()
            );
            session.send(welcome(true)).await;
            session
                .send(hub_message::Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms: 1 }))
                .await;
            assert!(matches!(session.recv().await, agent_message::Body::Heartbeat(_)));
            stop.send(()).expect("agent running");
        };
        let (result, ()) = tokio::join!(agent, hub_side);
        result.expect("agent stops cleanly");
        assert_eq!(handle.writes(), writes, "an in-sync restart wrote to the cluster");
        assert_eq!(hub.enrolls.load(std::sync::atomic::Ordering::SeqCst), 1);

        let logs = logs.contents();
        assert!(logs.contains("sync stream established"), "logs were captured");
        for secret in [VALUE, CREDENTIAL, TOKEN] {
            assert!(!logs.contains(secret), "a secret reached the logs");
        }
    }
}
