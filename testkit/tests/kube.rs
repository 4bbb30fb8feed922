//! The fake Kubernetes API server driven by kube-rs (the client the agent uses), through
//! path-prefixed cluster URLs: server-side apply, conflicts, force, watchers with bookmarks and
//! streaming lists, 410 resume, permissions, faults, selectors and paging.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use keyfleet_testkit::kube::{ClusterHandle, Config, FakeKube, Kind, Object, Permissions, Verb};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;

/// Bound on every wait for the server (a hang fails the test instead of blocking CI).
const WAIT: Duration = Duration::from_secs(20);

async fn start(config: Config) -> FakeKube {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeKube::start(config).await.expect("start fake kube")
}

async fn client_with(cluster: &ClusterHandle, token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml_with_token(token))
        .expect("kubeconfig parses");
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config");
    kube::Client::try_from(config).expect("client")
}

async fn client(cluster: &ClusterHandle) -> kube::Client {
    client_with(cluster, cluster.token()).await
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "keyfleet".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn api_status(error: kube::Error) -> Box<kube::core::Status> {
    match error {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply_conflicts_and_force_through_a_prefixed_url() {
    let kube = start(Config::default()).await;
    let cluster = kube.add_cluster("cluster-1").expect("add cluster");
    assert!(cluster.server_url().ends_with("/clusters/cluster-1"));
    let secrets: Api<Secret> = Api::namespaced(client(&cluster).await, "default");
    let agent = PatchParams::apply("keyfleet-agent");

    let created = secrets
        .patch(
            "db",
            &agent,
            &Patch::Apply(secret("db", &[("user", "admin"), ("password", "one")])),
        )
        .await
        .expect("apply creates");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    let managed = created.metadata.managed_fields.clone().expect("managedFields");
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].manager.as_deref(), Some("keyfleet-agent"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));
    assert_eq!(created.type_.as_deref(), Some("Opaque"));

    // The same apply again changes nothing: same resourceVersion, counted as a no-op.
    let again = secrets
        .patch(
            "db",
            &agent,
            &Patch::Apply(secret("db", &[("user", "admin"), ("password", "one")])),
        )
        .await
        .expect("no-op apply");
    assert_eq!(again.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let writes = cluster.writes();
    assert_eq!((writes.applies, writes.noop_applies, writes.changes), (2, 1, 1));

    // Another manager with a different password conflicts on that field only.
    let other = PatchParams::apply("other-tool");
    let status = api_status(
        secrets
            .patch(
                "db",
                &other,
                &Patch::Apply(secret("db", &[("user", "admin"), ("password", "two")])),
            )
            .await
            .expect_err("conflict"),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".data.password");
    assert_eq!(causes[0].message, "conflict with \"keyfleet-agent\" using v1");

    // Forced: password moves to other-tool, user stays shared.
    let forced = secrets
        .patch(
            "db",
            &other.clone().force(),
            &Patch::Apply(secret("db", &[("user", "admin"), ("password", "two")])),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("password"))
            .map(|b| b.0.as_slice()),
        Some(&b"two"[..])
    );
    let stored = cluster.get_secret("default", "db").expect("stored");
    let owners = |field: &str| -> Vec<String> {
        stored
            .meta
            .managed_fields
            .iter()
            .filter(|entry| entry.fields.iter().any(|f| f.path() == field))
            .map(|entry| entry.manager.clone())
            .collect()
    };
    assert_eq!(owners(".data.password"), vec!["other-tool".to_owned()]);
    assert_eq!(
        owners(".data.user"),
        vec!["keyfleet-agent".to_owned(), "other-tool".to_owned()]
    );

    // Clusters are independent: the root cluster has no such Secret.
    let root: Api<Secret> = Api::namespaced(client(&kube.cluster("default").expect("root")).await, "default");
    let status = api_status(root.get("db").await.expect_err("not in root"));
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn drift_through_the_handle_is_visible_and_apply_repairs_it_with_force() {
    let kube = start(Config::default()).await;
    let cluster = kube.add_cluster("drift").expect("add cluster");
    let secrets: Api<Secret> = Api::namespaced(client(&cluster).await, "default");
    let agent = PatchParams::apply("keyfleet-agent");
    secrets
        .patch("db", &agent, &Patch::Apply(secret("db", &[("k", "v1")])))
        .await
        .expect("apply");
    let edited = Object::new_secret("default", "db").with_data("k", b"edited");
    cluster.put_secret(edited, "kubectl-edit").expect("edit");
    let live = secrets.get("db").await.expect("get");
    assert_eq!(
        live.data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(|b| b.0.as_slice()),
        Some(&b"edited"[..])
    );
    let status = api_status(
        secrets
            .patch("db", &agent, &Patch::Apply(secret("db", &[("k", "v1")])))
            .await
            .expect_err("the editor owns k now"),
    );
    assert_eq!(status.code, 409);
    let repaired = secrets
        .patch("db", &agent.force(), &Patch::Apply(secret("db", &[("k", "v1")])))
        .await
        .expect("forced repair");
    assert_eq!(
        repaired
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(|b| b.0.as_slice()),
        Some(&b"v1"[..])
    );
    assert!(cluster.delete_secret("default", "db"));
    let status = api_status(secrets.get("db").await.expect_err("deleted"));
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn raw_watch_sees_events_and_bookmarks_and_resume_past_the_window_gets_410() {
    let kube = start(Config {
        watch_history: 4,
        bookmark_interval: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    let cluster = kube.add_cluster("watch").expect("add cluster");
    let secrets: Api<Secret> = Api::namespaced(client(&cluster).await, "default");
    let start_rv = cluster.resource_version().to_string();

    let mut stream = secrets
        .watch(&WatchParams::default().timeout(60), &start_rv)
        .await
        .expect("watch")
        .boxed();
    cluster
        .put_secret(Object::new_secret("default", "w1").with_data("k", b"v"), "tester")
        .expect("put");
    let mut added = false;
    let mut bookmarked = false;
    while !(added && bookmarked) {
        let event = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        match event {
            WatchEvent::Added(secret) => {
                assert_eq!(secret.metadata.name.as_deref(), Some("w1"));
                added = true;
            }
            WatchEvent::Bookmark(bookmark) => {
                assert!(!bookmark.metadata.resource_version.is_empty());
                bookmarked = true;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    // Push the start RV out of the 4-event window: resuming from it gets an ERROR 410 event.
    for i in 0..5 {
        cluster
            .put_secret(
                Object::new_secret("default", "w1").with_data("k", format!("v{i}").as_bytes()),
                "tester",
            )
            .expect("put");
    }
    let mut stale = secrets
        .watch(&WatchParams::default().timeout(60), &start_rv)
        .await
        .expect("watch")
        .boxed();
    let event = tokio::time::timeout(WAIT, stale.try_next())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open");
    match event {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = Result<watcher::Event<Secret>, watcher::Error>> + Unpin),
) -> watcher::Event<Secret> {
    loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a watcher event in time")
        {
            Some(Ok(event)) => return event,
            // The watcher reports a failed request and retries on the next poll.
            Some(Err(_)) => continue,
            None => panic!("watcher ended"),
        }
    }
}

#[tokio::test]
async fn runtime_watcher_relists_after_expiry_and_streaming_lists_work() {
    let kube = start(Config {
        bookmark_interval: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    let cluster = kube.add_cluster("relist").expect("add cluster");
    cluster
        .put_secret(
            Object::new_secret("default", "before").with_data("k", b"v"),
            "tester",
        )
        .expect("put");
    let secrets: Api<Secret> = Api::namespaced(client(&cluster).await, "default");

    for streaming in [false, true] {
        let config = if streaming {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default()
        };
        let mut stream = watcher(secrets.clone(), config).boxed();
        assert!(matches!(next_event(&mut stream).await, watcher::Event::Init));
        let mut listed = Vec::new();
        loop {
            match next_event(&mut stream).await {
                watcher::Event::InitApply(secret) => listed.push(secret.metadata.name.unwrap_or_default()),
                watcher::Event::InitDone => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            listed.contains(&"before".to_owned()),
            "streaming={streaming}: {listed:?}"
        );

        // A live change arrives as Apply.
        let name = format!("live-{streaming}");
        cluster
            .put_secret(
                Object::new_secret("default", &name).with_data("k", b"v"),
                "tester",
            )
            .expect("put");
        match next_event(&mut stream).await {
            watcher::Event::Apply(secret) => assert_eq!(secret.metadata.name.as_deref(), Some(name.as_str())),
            other => panic!("unexpected {other:?}"),
        }

        // History expired and the watch dropped: the watcher's resume gets 410 and it relists.
        cluster.expire_history();
        cluster.drop_watches();
        let after = format!("after-{streaming}");
        cluster
            .put_secret(
                Object::new_secret("default", &after).with_data("k", b"v"),
                "tester",
            )
            .expect("put");
        let mut relisted = false;
        let mut seen_after = false;
        while !(relisted && seen_after) {
            match next_event(&mut stream).await {
                watcher::Event::Init => relisted = true,
                watcher::Event::InitApply(secret) | watcher::Event::Apply(secret) => {
                    if secret.metadata.name.as_deref() == Some(after.as_str()) {
                        seen_after = true;
                    }
                }
                watcher::Event::InitDone | watcher::Event::Delete(_) => {}
            }
        }
    }
}

#[tokio::test]
async fn permissions_faults_selectors_and_paging() {
    let kube = start(Config::default()).await;
    let cluster = kube.add_cluster("perms").expect("add cluster");
    cluster.create_namespace("apps").expect("namespace");
    cluster.add_token(
        "agent-token",
        Permissions::none("system:serviceaccount:keyfleet:agent").allow(
            &[Verb::Get, Verb::List, Verb::Watch, Verb::Patch, Verb::Create],
            &[Kind::Secret],
            &["apps"],
        ),
    );
    let limited = client_with(&cluster, "agent-token").await;
    let apps: Api<Secret> = Api::namespaced(limited.clone(), "apps");
    apps.create(&PostParams::default(), &secret("ok", &[("k", "v")]))
        .await
        .expect("allowed");
    let status = api_status(
        Api::<Secret>::namespaced(limited.clone(), "default")
            .get("x")
            .await
            .expect_err("forbidden"),
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert!(
        status.message.contains("system:serviceaccount:keyfleet:agent"),
        "{}",
        status.message
    );
    let status = api_status(
        apps.delete("ok", &DeleteParams::default())
            .await
            .expect_err("no delete verb"),
    );
    assert_eq!(status.code, 403);
    let status = api_status(
        Api::<Namespace>::all(limited)
            .list(&ListParams::default())
            .await
            .expect_err("no namespace rights"),
    );
    assert_eq!(status.code, 403);
    let bad = client_with(&cluster, "wrong-token").await;
    let status = api_status(
        Api::<Secret>::namespaced(bad, "apps")
            .get("ok")
            .await
            .expect_err("unauthorized"),
    );
    assert_eq!(status.code, 401);

    // Faults: 429 with Retry-After and 503, seen by a client without retries; kube's default
    // client retries them.
    let admin = client(&cluster).await;
    let apps: Api<Secret> = Api::namespaced(admin.clone(), "apps");
    let no_retry = {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml()).expect("kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        config.default_retry = false;
        Api::<Secret>::namespaced(kube::Client::try_from(config).expect("client"), "apps")
    };
    cluster.throttle_next(1, 7);
    let status = api_status(no_retry.get("ok").await.expect_err("throttled"));
    assert_eq!((status.code, status.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(status.details.map(|d| d.retry_after_seconds), Some(7));
    cluster.fail_next(1, 500);
    let status = api_status(no_retry.get("ok").await.expect_err("internal error"));
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    cluster.fail_next(2, 503);
    apps.get("ok").await.expect("the default client retries 503s");
    no_retry.get("ok").await.expect("faults are used up");

    // Selectors and paging.
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db"), ("d", "cache")] {
        let mut object = secret(name, &[("k", "v")]);
        object.metadata.labels = Some(BTreeMap::from([("tier".to_owned(), tier.to_owned())]));
        apps.create(&PostParams::default(), &object)
            .await
            .expect("create");
    }
    let names = |list: kube::core::ObjectList<Secret>| -> Vec<String> {
        list.items.into_iter().filter_map(|s| s.metadata.name).collect()
    };
    assert_eq!(
        names(
            apps.list(&ListParams::default().labels("tier=web"))
                .await
                .expect("list")
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            apps.list(&ListParams::default().labels("tier in (db,cache)"))
                .await
                .expect("list")
        ),
        ["c", "d"]
    );
    assert_eq!(
        names(
            apps.list(&ListParams::default().labels("!tier"))
                .await
                .expect("list")
        ),
        ["ok"]
    );
    assert_eq!(
        names(
            apps.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .expect("list")
        ),
        ["c"]
    );
    let first = apps.list(&ListParams::default().limit(2)).await.expect("page 1");
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("continue token");
    assert_eq!(names(first), ["a", "b"]);
    let second = apps
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(names(second), ["c", "d"]);

    // Optimistic concurrency on replace.
    let mut stale = apps.get("a").await.expect("get");
    apps.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .expect("merge patch");
    stale.metadata.labels = Some(BTreeMap::new());
    let status = api_status(
        apps.replace("a", &PostParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn subscribers_see_api_writes_with_their_manager() {
    let kube = start(Config::default()).await;
    let cluster = kube.add_cluster("notify").expect("add cluster");
    let mut writes = kube.subscribe();
    let secrets: Api<Secret> = Api::namespaced(client(&cluster).await, "default");
    secrets
        .patch(
            "n",
            &PatchParams::apply("keyfleet-agent"),
            &Patch::Apply(secret("n", &[("k", "v")])),
        )
        .await
        .expect("apply");
    let event = tokio::time::timeout(WAIT, writes.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(&*event.cluster, "notify");
    assert_eq!(event.name, "n");
    assert_eq!(event.manager.as_deref(), Some("keyfleet-agent"));
    assert_eq!(event.resource_version, cluster.resource_version());
}

#[tokio::test]
async fn in_memory_clients_take_the_same_route_as_https_without_a_socket() {
    let kube = start(Config::default()).await;
    let cluster = kube.add_cluster("mem-1").expect("add cluster");
    let other = kube.add_cluster("mem-2").expect("add cluster");
    let client = kube::Client::new(cluster.in_memory_api(), "default");
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let mut writes = kube.subscribe();

    // A watcher over the in-memory stream sees the apply; the handle and the notifications see the
    // write in this cluster (by its prefix), not in the other.
    let mut watch = watcher::watcher(secrets.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut watch).await, watcher::Event::Init));
    assert!(matches!(next_event(&mut watch).await, watcher::Event::InitDone));
    secrets
        .patch(
            "db",
            &PatchParams::apply("keyfleet-agent"),
            &Patch::Apply(secret("db", &[("user", "admin")])),
        )
        .await
        .expect("apply through memory");
    match next_event(&mut watch).await {
        watcher::Event::Apply(applied) => assert_eq!(applied.metadata.name.as_deref(), Some("db")),
        other => panic!("expected the applied Secret, got {other:?}"),
    }
    let event = tokio::time::timeout(WAIT, writes.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(
        (&*event.cluster, event.manager.as_deref()),
        ("mem-1", Some("keyfleet-agent"))
    );
    assert!(cluster.get_secret("default", "db").is_some());
    assert!(other.get_secret("default", "db").is_none());
    assert_eq!((cluster.writes().applies, cluster.writes().creates), (1, 1));

    // Same authentication and authorization: an unknown token is 401, a narrow one 403.
    let unknown = kube::Client::new(
        cluster.in_memory_api_with_token("wrong-token").expect("token"),
        "default",
    );
    let status = api_status(
        Api::<Secret>::default_namespaced(unknown)
            .get("db")
            .await
            .expect_err("unauthorized"),
    );
    assert_eq!(status.code, 401);
    cluster.add_token(
        "reader",
        Permissions::none("reader").allow(&[Verb::Get], &[Kind::Secret], &["default"]),
    );
    let reader = kube::Client::new(
        cluster.in_memory_api_with_token("reader").expect("token"),
        "default",
    );
    let readable: Api<Secret> = Api::default_namespaced(reader);
    readable.get("db").await.expect("get is allowed");
    let status = api_status(
        readable
            .delete("db", &DeleteParams::default())
            .await
            .expect_err("forbidden"),
    );
    assert_eq!(status.code, 403);
    assert!(
        cluster.in_memory_api_with_token("bad\ntoken").is_err(),
        "a token that cannot be a header is refused"
    );

    // Same faults: the next call fails with 503.
    cluster.fail_next(1, 503);
    let status = api_status(secrets.get("db").await.expect_err("injected"));
    assert_eq!(status.code, 503);
}

#[tokio::test]
async fn held_writes_wait_until_released_or_fail_without_a_trace() {
    let kube = start(Config::default()).await;
    let cluster = kube.add_cluster("held").expect("add cluster");
    for namespace in ["a", "b"] {
        cluster.create_namespace(namespace).expect("namespace");
    }
    let client = client(&cluster).await;
    let a: Api<Secret> = Api::namespaced(client.clone(), "a");
    let b: Api<Secret> = Api::namespaced(client, "b");
    let apply = PatchParams::apply("test").force();

    let hold = cluster.hold_writes("b");
    let held = tokio::spawn({
        let b = b.clone();
        let apply = apply.clone();
        async move {
            b.patch("s", &apply, &Patch::Apply(secret("s", &[("k", "1")])))
                .await
        }
    });
    tokio::time::timeout(WAIT, hold.until_arrived(1))
        .await
        .expect("the write to b reaches the hold");
    // Other namespaces and reads are not held.
    tokio::time::timeout(
        WAIT,
        a.patch("s", &apply, &Patch::Apply(secret("s", &[("k", "1")]))),
    )
    .await
    .expect("a is not held")
    .expect("a written");
    assert_eq!(
        tokio::time::timeout(WAIT, b.get_opt("s"))
            .await
            .expect("reads pass")
            .expect("get"),
        None
    );
    assert!(cluster.get_secret("b", "s").is_none(), "held, not written");
    hold.release();
    tokio::time::timeout(WAIT, held)
        .await
        .expect("released")
        .expect("task")
        .expect("b written once released");
    assert!(cluster.get_secret("b", "s").is_some());

    // A failed hold answers the held write and changes nothing; later writes pass.
    let hold = cluster.hold_writes("b");
    let held = tokio::spawn({
        let b = b.clone();
        async move { b.delete("s", &DeleteParams::default()).await.map(|_| ()) }
    });
    tokio::time::timeout(WAIT, hold.until_arrived(1))
        .await
        .expect("the delete reaches the hold");
    assert_eq!(hold.arrived(), 1);
    hold.fail(500);
    let status = api_status(
        tokio::time::timeout(WAIT, held)
            .await
            .expect("failed")
            .expect("task")
            .expect_err("the held delete fails"),
    );
    assert_eq!(status.code, 500);
    assert!(cluster.get_secret("b", "s").is_some(), "nothing deleted");
    tokio::time::timeout(WAIT, b.delete("s", &DeleteParams::default()))
        .await
        .expect("no longer held")
        .expect("deleted");
    assert!(cluster.get_secret("b", "s").is_none());
}
