//! Conformance of `specs`: generations, and the all-or-nothing apply with its change-log and
//! audit rows.

use super::*;

pub(super) async fn specs_generations(store: Store) {
    let yaml1 = "kind: FleetSecret\nname: db\n";
    let yaml2 = "kind: FleetSecret\nname: db\nx: 1\n";
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml1)
            .await
            .expect("upsert"),
        (1, SpecAction::Created)
    );
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml1)
            .await
            .expect("upsert"),
        (1, SpecAction::Unchanged)
    );
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml2)
            .await
            .expect("upsert"),
        (2, SpecAction::Configured)
    );
    // Same name, other kind: a separate spec.
    assert_eq!(
        store
            .upsert_spec(SpecKind::SecretStore, "db", "kind: SecretStore\n")
            .await
            .expect("upsert"),
        (1, SpecAction::Created)
    );
    let specs = store.list_specs().await.expect("list");
    let summary: Vec<_> = specs
        .iter()
        .map(|s| (s.kind, s.name.as_str(), s.yaml.as_str(), s.generation))
        .collect();
    assert_eq!(
        summary,
        [
            (SpecKind::FleetSecret, "db", yaml2, 2),
            (SpecKind::SecretStore, "db", "kind: SecretStore\n", 1),
        ]
    );
    assert!(
        store
            .delete_spec(SpecKind::FleetSecret, "db")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_spec(SpecKind::FleetSecret, "db")
            .await
            .expect("delete")
    );
    assert_eq!(
        store
            .upsert_spec(SpecKind::FleetSecret, "db", yaml1)
            .await
            .expect("upsert"),
        (1, SpecAction::Created)
    );
    assert_eq!(SpecAction::Configured.as_str(), "configured");
    assert_eq!(SpecKind::FleetSecret.as_str(), "FleetSecret");
}

pub(super) async fn apply_specs_writes_all_or_nothing(store: Store) {
    let write = |kind, name, yaml| SpecWrite { kind, name, yaml };
    let store_yaml = "kind: SecretStore\nname: kv\n";
    let db1 = "kind: FleetSecret\nname: db\n";
    let db2 = "kind: FleetSecret\nname: db\nx: 1\n";
    let outcomes = store
        .apply_specs(
            &[
                write(SpecKind::SecretStore, "kv", store_yaml),
                write(SpecKind::FleetSecret, "db", db1),
            ],
            "token",
        )
        .await
        .expect("apply");
    let created = SpecOutcome {
        generation: 1,
        action: SpecAction::Created,
    };
    assert_eq!(outcomes, [created, created]);
    let changes = store.changes_since(0, 10).await.expect("tail");
    let summary: Vec<_> = changes.iter().map(|c| (c.kind, c.subject.as_str())).collect();
    assert_eq!(
        summary,
        [
            (ChangeKind::Spec, "secretstore/kv"),
            (ChangeKind::Spec, "fleetsecret/db")
        ]
    );
    let after_first = changes.last().expect("two changes").seq;
    let audit: Vec<_> = store
        .audit(10)
        .await
        .expect("audit")
        .into_iter()
        .map(|e| (e.actor, e.action, e.subject))
        .collect();
    assert_eq!(
        audit,
        [
            (
                "token".to_owned(),
                "spec.created".to_owned(),
                "fleetsecret/db".to_owned()
            ),
            (
                "token".to_owned(),
                "spec.created".to_owned(),
                "secretstore/kv".to_owned()
            ),
        ]
    );

    // Unchanged specs write neither a change nor an audit row; a changed one does.
    let outcomes = store
        .apply_specs(
            &[
                write(SpecKind::SecretStore, "kv", store_yaml),
                write(SpecKind::FleetSecret, "db", db2),
            ],
            "cert:ops",
        )
        .await
        .expect("apply");
    assert_eq!(
        outcomes,
        [
            SpecOutcome {
                generation: 1,
                action: SpecAction::Unchanged
            },
            SpecOutcome {
                generation: 2,
                action: SpecAction::Configured
            },
        ]
    );
    let changes = store.changes_since(after_first, 10).await.expect("tail");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].subject, "fleetsecret/db");
    let newest = store.audit(1).await.expect("audit").remove(0);
    assert_eq!(
        (newest.actor.as_str(), newest.action.as_str()),
        ("cert:ops", "spec.configured")
    );
    let latest = store.latest_change().await.expect("latest");
    let audit_rows = store.audit(100).await.expect("audit").len();

    // The second document violates a constraint (empty name): the first one, its change and its
    // audit row are rolled back with it, and the earlier state is intact.
    let error = store
        .apply_specs(
            &[
                write(SpecKind::FleetSecret, "db", db1),
                write(SpecKind::FleetSecret, "", db1),
            ],
            "token",
        )
        .await
        .expect_err("the empty name violates a CHECK constraint");
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    let specs: Vec<_> = store
        .list_specs()
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.kind, s.name, s.yaml, s.generation))
        .collect();
    assert_eq!(
        specs,
        [
            (SpecKind::FleetSecret, "db".to_owned(), db2.to_owned(), 2),
            (SpecKind::SecretStore, "kv".to_owned(), store_yaml.to_owned(), 1),
        ]
    );
    assert_eq!(store.latest_change().await.expect("latest"), latest);
    assert_eq!(store.changes_since(latest, 10).await.expect("tail"), []);
    assert_eq!(store.audit(100).await.expect("audit").len(), audit_rows);

    // A failure on the first of several new specs leaves nothing either.
    store
        .apply_specs(
            &[
                write(SpecKind::FleetSecret, "", db1),
                write(SpecKind::FleetSecret, "web", db1),
            ],
            "token",
        )
        .await
        .expect_err("constraint");
    assert_eq!(store.list_specs().await.expect("list").len(), 2);
    assert_eq!(store.latest_change().await.expect("latest"), latest);
}
