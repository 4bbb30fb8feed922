//! Conformance of `clusters` and `enrollment_tokens`: inventory, selectors, single-use tokens,
//! credentials, revocation, connect and disconnect.

use super::*;

pub(super) async fn clusters_crud(store: Store) {
    let eu = store
        .create_cluster("eu-1", &labels(&[("env", "prod")]))
        .await
        .expect("create");
    assert_eq!(eu.name, "eu-1");
    assert_eq!(eu.state, ClusterState::Pending);
    assert_eq!(eu.labels, labels(&[("env", "prod")]));
    assert_eq!(eu.connected_replica, None);
    let again = store.create_cluster("eu-1", &labels(&[])).await;
    assert!(
        matches!(&again, Err(StoreError::AlreadyExists { what }) if what.contains("eu-1")),
        "{again:?}"
    );
    let us = cluster(&store, "us-1").await;
    let ap = cluster(&store, "ap-1").await;

    assert_eq!(
        store.cluster_by_name("eu-1").await.expect("read"),
        Some(eu.clone())
    );
    assert_eq!(store.cluster_by_id(us.id).await.expect("read"), Some(us.clone()));
    assert_eq!(store.cluster_by_name("nope").await.expect("read"), None);
    assert_eq!(
        names(&store.list_clusters(None).await.expect("list")),
        ["ap-1", "eu-1", "us-1"]
    );

    let relabelled = store
        .set_cluster_labels(ap.id, &labels(&[("env", "dev"), ("ring", "canary")]))
        .await
        .expect("relabel");
    assert_eq!(relabelled.labels, labels(&[("env", "dev"), ("ring", "canary")]));
    assert_eq!(
        store
            .cluster_by_id(ap.id)
            .await
            .expect("read")
            .expect("exists")
            .labels,
        relabelled.labels
    );
    let missing = ClusterId(uuid::Uuid::new_v4());
    assert!(matches!(
        store.set_cluster_labels(missing, &labels(&[])).await,
        Err(StoreError::NotFound { .. })
    ));

    let before = store.latest_change().await.expect("latest change");
    let revoked = store.revoke_cluster(us.id).await.expect("revoke");
    assert_eq!(revoked.state, ClusterState::Revoked);
    let changes = store.changes_since(before, 10).await.expect("changes");
    assert_eq!(
        changes
            .iter()
            .map(|change| (change.kind, change.subject.as_str()))
            .collect::<Vec<_>>(),
        vec![(crate::store::ChangeKind::Cluster, "cluster/us-1")],
        "the revocation announces itself in the same transaction"
    );
    assert!(matches!(
        store.revoke_cluster(missing).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub(super) async fn selectors_push_down_and_apply_exactly(store: Store) {
    for (name, pairs) in [
        ("a", &[("env", "prod"), ("region", "eu")][..]),
        ("b", &[("env", "prod"), ("region", "us"), ("ring", "canary")][..]),
        ("c", &[("env", "dev"), ("region", "eu")][..]),
        ("d", &[][..]),
    ] {
        store.create_cluster(name, &labels(pairs)).await.expect("create");
    }
    let select = |match_labels: &[(&str, &str)], expressions: Vec<LabelRequirement>| LabelSelector {
        match_labels: labels(match_labels),
        match_expressions: expressions,
    };
    let requirement = |key: &str, operator, values: &[&str]| LabelRequirement {
        key: key.to_owned(),
        operator,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    };
    let cases = [
        (select(&[], vec![]), vec!["a", "b", "c", "d"]),
        (select(&[("env", "prod")], vec![]), vec!["a", "b"]),
        (select(&[("env", "prod"), ("region", "eu")], vec![]), vec!["a"]),
        (select(&[("env", "staging")], vec![]), vec![]),
        (
            select(
                &[],
                vec![requirement("region", SelectorOperator::In, &["eu", "us"])],
            ),
            vec!["a", "b", "c"],
        ),
        (
            select(
                &[],
                vec![requirement("ring", SelectorOperator::NotIn, &["canary"])],
            ),
            vec!["a", "c", "d"],
        ),
        (
            select(&[], vec![requirement("ring", SelectorOperator::Exists, &[])]),
            vec!["b"],
        ),
        (
            select(
                &[("env", "prod")],
                vec![requirement("ring", SelectorOperator::DoesNotExist, &[])],
            ),
            vec!["a"],
        ),
    ];
    for (selector, expected) in cases {
        let found = store.list_clusters(Some(&selector)).await.expect("list");
        assert_eq!(names(&found), expected, "{selector:?}");
    }
}

pub(super) async fn enrollment_tokens_are_single_use(store: Store) {
    let c = cluster(&store, "c").await;
    let token = digest("token-1");
    store
        .issue_enrollment_token(c.id, &token, at(100))
        .await
        .expect("issue");
    assert!(matches!(
        store.issue_enrollment_token(c.id, &token, at(100)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .issue_enrollment_token(ClusterId(uuid::Uuid::new_v4()), &digest("x"), at(100))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store
            .consume_enrollment_token(&digest("other"), at(0))
            .await
            .expect("consume"),
        Err(TokenRejection::Unknown)
    );
    assert_eq!(
        store
            .consume_enrollment_token(&token, at(0))
            .await
            .expect("consume"),
        Ok(c.id)
    );
    assert_eq!(
        store
            .consume_enrollment_token(&token, at(1))
            .await
            .expect("consume"),
        Err(TokenRejection::Used)
    );

    let expiring = digest("token-2");
    store
        .issue_enrollment_token(c.id, &expiring, at(10))
        .await
        .expect("issue");
    assert_eq!(
        store
            .consume_enrollment_token(&expiring, at(10))
            .await
            .expect("consume"),
        Err(TokenRejection::Expired),
        "a token is expired at its expiry time"
    );

    let pending = digest("token-3");
    store
        .issue_enrollment_token(c.id, &pending, at(1000))
        .await
        .expect("issue");
    store.revoke_cluster(c.id).await.expect("revoke");
    assert_eq!(
        store
            .consume_enrollment_token(&pending, at(1))
            .await
            .expect("consume"),
        Err(TokenRejection::ClusterRevoked)
    );
    assert!(matches!(
        store
            .issue_enrollment_token(c.id, &digest("token-4"), at(1000))
            .await,
        Err(StoreError::Conflict(_))
    ));
}

pub(super) async fn token_consumed_once_by_concurrent_consumers(store: Store) {
    let c = cluster(&store, "c").await;
    for round in 0..20 {
        let token = digest(&format!("token-{round}"));
        store
            .issue_enrollment_token(c.id, &token, at(1000))
            .await
            .expect("issue");
        let (first, second) = tokio::join!(
            store.consume_enrollment_token(&token, at(1)),
            store.consume_enrollment_token(&token, at(1)),
        );
        let mut outcomes = [first.expect("consume"), second.expect("consume")];
        outcomes.sort_by_key(|outcome| outcome.is_err());
        assert_eq!(outcomes, [Ok(c.id), Err(TokenRejection::Used)], "round {round}");
    }
}

pub(super) async fn credentials_and_revocation(store: Store) {
    let a = cluster(&store, "a").await;
    let b = cluster(&store, "b").await;
    assert_eq!(store.active_credentials().await.expect("list"), []);
    store
        .set_cluster_credential(a.id, &digest("cred-a"))
        .await
        .expect("credential");
    store
        .set_cluster_credential(b.id, &digest("cred-b"))
        .await
        .expect("credential");
    assert_eq!(
        store
            .cluster_by_id(a.id)
            .await
            .expect("read")
            .expect("exists")
            .state,
        ClusterState::Active
    );
    let mut expected = vec![(digest("cred-a"), a.id), (digest("cred-b"), b.id)];
    expected.sort_by_key(|(_, id)| *id);
    assert_eq!(store.active_credentials().await.expect("list"), expected);
    assert!(matches!(
        store.set_cluster_credential(b.id, &digest("cred-a")).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    store.revoke_cluster(a.id).await.expect("revoke");
    assert_eq!(
        store.active_credentials().await.expect("list"),
        [(digest("cred-b"), b.id)]
    );
    assert!(matches!(
        store.set_cluster_credential(a.id, &digest("cred-a2")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .set_cluster_credential(ClusterId(uuid::Uuid::new_v4()), &digest("z"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub(super) async fn connect_disconnect_and_liveness(store: Store) {
    let a = cluster(&store, "a").await;
    let b = cluster(&store, "b").await;
    store
        .record_connect(a.id, "replica-1", "0.1.0", at(10))
        .await
        .expect("connect");
    store
        .record_connect(b.id, "replica-1", "0.1.1", at(11))
        .await
        .expect("connect");
    let read = store.cluster_by_id(a.id).await.expect("read").expect("exists");
    assert_eq!(read.connected_replica.as_deref(), Some("replica-1"));
    assert_eq!(read.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(read.last_seen, Some(at(10)));

    // a moved to replica-2; replica-1's late disconnect must not clear it.
    store
        .record_connect(a.id, "replica-2", "0.1.0", at(20))
        .await
        .expect("connect");
    store
        .record_disconnect(a.id, "replica-1", at(21))
        .await
        .expect("disconnect");
    let read = store.cluster_by_id(a.id).await.expect("read").expect("exists");
    assert_eq!(read.connected_replica.as_deref(), Some("replica-2"));
    assert_eq!(read.last_seen, Some(at(21)));
    store
        .record_disconnect(a.id, "replica-2", at(22))
        .await
        .expect("disconnect");
    assert_eq!(
        store
            .cluster_by_id(a.id)
            .await
            .expect("read")
            .expect("exists")
            .connected_replica,
        None
    );

    store.touch_last_seen(&[a.id, b.id], at(30)).await.expect("touch");
    // Never moves backwards.
    store.touch_last_seen(&[a.id], at(25)).await.expect("touch");
    for id in [a.id, b.id] {
        assert_eq!(
            store
                .cluster_by_id(id)
                .await
                .expect("read")
                .expect("exists")
                .last_seen,
            Some(at(30))
        );
    }
    store.touch_last_seen(&[], at(40)).await.expect("empty touch");

    assert_eq!(store.clear_replica("replica-1").await.expect("clear"), 1);
    assert_eq!(store.clear_replica("replica-1").await.expect("clear"), 0);
    assert_eq!(
        store
            .cluster_by_id(b.id)
            .await
            .expect("read")
            .expect("exists")
            .connected_replica,
        None
    );
    let missing = ClusterId(uuid::Uuid::new_v4());
    assert!(matches!(
        store.record_connect(missing, "r", "v", at(1)).await,
        Err(StoreError::NotFound { .. })
    ));
}
