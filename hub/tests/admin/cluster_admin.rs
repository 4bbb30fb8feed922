//! Cluster inventory through the Admin API: create, get, list, labels, enrollment tokens, revoke
//! and the audit log (run on SQLite and on Postgres by `main.rs`).

use super::*;

pub(super) async fn clusters(hub: Hub) {
    let mut admin = hub.client().await;
    let before = Utc::now();
    let created = admin
        .create_cluster(v1::CreateClusterRequest {
            name: "prod-eu-1".to_owned(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            token_ttl_seconds: 3_600,
        })
        .await
        .unwrap()
        .into_inner();
    let cluster = created.cluster.unwrap();
    let token = created.token.unwrap();
    assert_eq!(
        (cluster.name.as_str(), cluster.state.as_str()),
        ("prod-eu-1", "pending")
    );
    assert!(!cluster.connected);
    assert_eq!(token.cluster_name, "prod-eu-1");
    assert!(
        token.token.starts_with("kfe_") && token.token.len() == 47,
        "{}",
        token.token
    );
    let expires = token.expires.unwrap().seconds;
    assert!((before.timestamp() + 3_599..=Utc::now().timestamp() + 3_601).contains(&expires));
    // Only the digest is stored: the store accepts the token by its hash.
    let enrolled = hub
        .store
        .consume_enrollment_token(&Sha256::of(token.token.as_bytes()), Utc::now())
        .await
        .unwrap()
        .expect("token accepted once");
    assert_eq!(enrolled.to_string(), cluster.id);

    admin
        .create_cluster(v1::CreateClusterRequest {
            name: "dev-1".to_owned(),
            labels: [("env".to_owned(), "dev".to_owned())].into(),
            token_ttl_seconds: 0,
        })
        .await
        .unwrap();
    assert_eq!(hub.changed(), 2, "every mutation tells the hub");

    // Bad input names the field; duplicates and unknown names have their codes.
    let bad = |name: &str, labels: &[(&str, &str)], ttl: u32| v1::CreateClusterRequest {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        token_ttl_seconds: ttl,
    };
    for (request, code_, field) in [
        (bad("prod-eu-1", &[], 0), Code::AlreadyExists, "prod-eu-1"),
        (bad("Prod_EU", &[], 0), Code::InvalidArgument, "name: "),
        (bad("", &[], 0), Code::InvalidArgument, "name: required"),
        (
            bad("c2", &[("bad key!", "x")], 0),
            Code::InvalidArgument,
            "labels[bad key!]: ",
        ),
        (
            bad("c2", &[("env", "-x")], 0),
            Code::InvalidArgument,
            "labels[env]: ",
        ),
        (bad("c2", &[], 30), Code::InvalidArgument, "token_ttl_seconds: "),
        (
            bad("c2", &[], 604_801),
            Code::InvalidArgument,
            "token_ttl_seconds: ",
        ),
    ] {
        let (got, message) = code(admin.create_cluster(request).await);
        assert_eq!(got, code_, "{message}");
        assert!(message.contains(field), "{message}");
    }
    assert!(
        hub.store.cluster_by_name("c2").await.unwrap().is_none(),
        "nothing half-created"
    );

    // List with a selector, label, show.
    let selector = v1::LabelSelector {
        match_labels: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    let listed = admin
        .list_clusters(v1::ListClustersRequest {
            selector: Some(selector),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["prod-eu-1"]
    );
    let bad_selector = v1::LabelSelector {
        match_expressions: vec![v1::LabelRequirement {
            key: "env".to_owned(),
            operator: "Near".to_owned(),
            values: vec![],
        }],
        ..Default::default()
    };
    let (got, message) = code(
        admin
            .list_clusters(v1::ListClustersRequest {
                selector: Some(bad_selector),
            })
            .await,
    );
    assert_eq!(got, Code::InvalidArgument);
    assert!(message.starts_with("selector: "), "{message}");

    let labeled = admin
        .label_cluster(v1::LabelClusterRequest {
            name: "dev-1".to_owned(),
            set: [("ring".to_owned(), "canary".to_owned())].into(),
            remove: vec!["env".to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labeled.labels, [("ring".to_owned(), "canary".to_owned())].into());
    let (got, _) = code(
        admin
            .label_cluster(v1::LabelClusterRequest {
                name: "nope".to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);
    let (got, _) = code(
        admin
            .get_cluster(v1::GetClusterRequest {
                name: "nope".to_owned(),
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);

    // Revoke; a revoked cluster gets no new token; an active one does.
    let revoked = admin
        .revoke_cluster(v1::RevokeClusterRequest {
            name: "dev-1".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, "revoked");
    let (got, _) = code(
        admin
            .issue_enrollment_token(v1::IssueEnrollmentTokenRequest {
                name: "dev-1".to_owned(),
                token_ttl_seconds: 0,
            })
            .await,
    );
    assert_eq!(got, Code::FailedPrecondition);
    let again = admin
        .issue_enrollment_token(v1::IssueEnrollmentTokenRequest {
            name: "prod-eu-1".to_owned(),
            token_ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.token, token.token);

    // Every mutation is in the change log and the audit log, without the tokens.
    let changes = hub.store.changes_since(0, 100).await.unwrap();
    assert!(changes.iter().all(|change| change.kind == ChangeKind::Cluster));
    assert_eq!(changes.len(), 5, "{changes:?}");
    let audit = hub.store.audit(100).await.unwrap();
    let mut actions: Vec<(String, String)> = audit
        .iter()
        .map(|event| (event.action.clone(), event.subject.clone()))
        .collect();
    actions.sort();
    let expected = [
        ("cluster.create", "cluster/dev-1"),
        ("cluster.create", "cluster/prod-eu-1"),
        ("cluster.label", "cluster/dev-1"),
        ("cluster.revoke", "cluster/dev-1"),
        ("cluster.token", "cluster/prod-eu-1"),
    ];
    assert_eq!(
        actions,
        expected.map(|(a, s)| (a.to_owned(), s.to_owned())),
        "{audit:?}"
    );
    assert!(
        audit.iter().all(|event| event.actor == "token:platform-admin"),
        "every call is audited by the name of its token: {audit:?}"
    );
    let printed = format!("{audit:?}");
    assert!(!printed.contains("kfe_"), "{printed}");
}
