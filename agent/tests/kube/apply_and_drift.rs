//! Apply, rotation, ownership, Merge, removal, drift repair and a restart that writes nothing.

use super::*;

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
