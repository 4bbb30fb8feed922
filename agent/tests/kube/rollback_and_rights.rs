//! Writes failing midway and their rollback, refusals by RBAC, a missed deletion after a relist
//! and namespace selectors.

use super::*;

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
