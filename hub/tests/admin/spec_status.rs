//! Specs and status through the Admin API: apply, list, delete, stores, sync now, rollout pause
//! and resume, version pins, and `GetStatus` (run on SQLite and on Postgres by `main.rs`).

use super::*;

pub(super) async fn specs_and_status(hub: Hub) {
    let mut admin = hub.client().await;
    // An invalid file refuses the whole request.
    let broken = WAVED_SPEC.replace(
        "namespaces: [default]",
        "namespaces: [default]\n  creationPolicy: Own",
    );
    let (got, message) = code(
        admin
            .apply_specs(v1::ApplySpecsRequest {
                files: vec![
                    spec_file("store.yaml", STORE_SPEC),
                    spec_file("waved.yaml", &broken),
                ],
                dry_run: false,
            })
            .await,
    );
    assert_eq!(got, Code::InvalidArgument);
    assert!(
        message.contains("waved.yaml:8: target.creationPolicy: "),
        "{message}"
    );
    assert!(hub.store.list_specs().await.unwrap().is_empty(), "all or nothing");
    let (got, message) = code(admin.apply_specs(v1::ApplySpecsRequest::default()).await);
    assert_eq!(
        (got, message.as_str()),
        (Code::InvalidArgument, "files: at least one file is required")
    );

    let apply = |files: Vec<v1::SpecFile>, dry_run| v1::ApplySpecsRequest { files, dry_run };
    let applied = admin
        .apply_specs(apply(
            vec![
                spec_file("store.yaml", STORE_SPEC),
                spec_file("waved.yaml", WAVED_SPEC),
                spec_file("plain.yaml", PLAIN_SPEC),
            ],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    let summary = |objects: &[v1::AppliedObject]| -> Vec<String> {
        objects
            .iter()
            .map(|o| format!("{}/{} {} {}", o.kind, o.name, o.action, o.generation))
            .collect()
    };
    assert_eq!(
        summary(&applied.objects),
        [
            "SecretStore/shared-kv created 1",
            "FleetSecret/waved created 1",
            "FleetSecret/plain created 1"
        ]
    );
    assert_eq!(hub.changed(), 1, "one apply, one wake-up");
    // A dry run reports without storing; a real run bumps the generation.
    let changed_spec = PLAIN_SPEC.replace("[default]", "[default, ci]");
    let dry = admin
        .apply_specs(apply(vec![spec_file("plain.yaml", &changed_spec)], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary(&dry.objects), ["FleetSecret/plain configured 2"]);
    assert_eq!(hub.changed(), 1);
    let real = admin
        .apply_specs(apply(
            vec![
                spec_file("store.yaml", STORE_SPEC),
                spec_file("plain.yaml", &changed_spec),
            ],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary(&real.objects),
        [
            "SecretStore/shared-kv unchanged 1",
            "FleetSecret/plain configured 2"
        ]
    );

    let stores = admin
        .list_stores(v1::ListStoresRequest {})
        .await
        .unwrap()
        .into_inner()
        .stores;
    assert_eq!(stores.len(), 1);
    assert_eq!(
        (
            stores[0].vault_url.as_str(),
            stores[0].auth_type.as_str(),
            stores[0].healthy
        ),
        ("https://shared-kv.vault.azure.net/", "WorkloadIdentity", false)
    );
    assert_eq!(stores[0].last_error, "not polled yet");

    // Inventory: a canary and two main clusters in prod, one dev cluster.
    let mut ids = std::collections::BTreeMap::new();
    for (name, env, ring) in [
        ("c1", "prod", "canary"),
        ("c2", "prod", "main"),
        ("c3", "prod", "main"),
        ("d1", "dev", "main"),
    ] {
        let created = admin
            .create_cluster(v1::CreateClusterRequest {
                name: name.to_owned(),
                labels: [
                    ("env".to_owned(), env.to_owned()),
                    ("ring".to_owned(), ring.to_owned()),
                ]
                .into(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let cluster = hub.store.cluster_by_name(name).await.unwrap().unwrap();
        assert_eq!(cluster.id.to_string(), created.cluster.unwrap().id);
        ids.insert(name, cluster.id);
    }
    let revision = hub
        .store
        .upsert_revision(&NewRevision {
            fleet_secret: "waved".to_owned(),
            sha256: Sha256::of(b"rendered"),
            spec_generation: 1,
            sources: vec![(
                "api-token".to_owned(),
                "0123456789abcdef0123456789abcdef".to_owned(),
            )],
        })
        .await
        .unwrap();
    for name in ["c1", "c2"] {
        hub.store
            .record_connect(ids[name], "replica-a", "1.0.0", Utc::now())
            .await
            .unwrap();
    }
    let row = |name: &str, applied: Option<u64>, state: SyncState, error: Option<&str>| StatusRow {
        cluster: ids[name],
        fleet_secret: "waved".to_owned(),
        desired_revision: revision,
        applied_revision: applied,
        applied_sha256: applied.map(|_| Sha256::of(b"rendered")),
        state,
        last_error: error.map(str::to_owned),
        attempts: 1,
        at: Utc::now(),
    };
    hub.store
        .upsert_status_batch(&[
            row("c1", Some(revision), SyncState::Applied, None),
            row("c2", None, SyncState::Error, Some("namespace ci not found")),
            row("c3", None, SyncState::Pending, None),
        ])
        .await
        .unwrap();

    let status = admin
        .get_status(v1::GetStatusRequest {
            fleet_secret: "waved".to_owned(),
            lagging_limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .fleet_secrets;
    assert_eq!(status.len(), 1);
    let waved = &status[0];
    assert_eq!(waved.revision, revision);
    assert_eq!(
        (
            waved.targeted,
            waved.applied,
            waved.pending,
            waved.error,
            waved.offline
        ),
        (3, 1, 0, 1, 1)
    );
    assert_eq!(waved.sources[0].remote_key, "api-token");
    let rollout = waved.rollout.clone().unwrap();
    assert_eq!(
        (rollout.state.as_str(), rollout.current_wave, rollout.waves),
        ("paused", 1, 2)
    );
    assert_eq!(rollout.reason, "error rate 1/2 (50.0%) above 0.0% in wave 2");
    let mut lagging: Vec<(&str, &str)> = waved
        .lagging
        .iter()
        .map(|lag| (lag.cluster.as_str(), lag.state.as_str()))
        .collect();
    lagging.sort();
    assert_eq!(lagging, [("c2", "error"), ("c3", "offline")]);

    // All FleetSecrets, sorted; "plain" has no revision yet and targets every cluster.
    let all = admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .fleet_secrets;
    assert_eq!(
        all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["plain", "waved"]
    );
    assert_eq!((all[0].revision, all[0].targeted), (0, 4));
    let (got, _) = code(
        admin
            .get_status(v1::GetStatusRequest {
                fleet_secret: "nope".to_owned(),
                lagging_limit: 0,
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);

    // GetCluster lists the recorded row and the targeted FleetSecret not synced yet.
    let shown = admin
        .get_cluster(v1::GetClusterRequest {
            name: "c2".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let secrets: Vec<(&str, u64, &str, &str)> = shown
        .secrets
        .iter()
        .map(|s| {
            (
                s.fleet_secret.as_str(),
                s.desired_revision,
                s.state.as_str(),
                s.last_error.as_str(),
            )
        })
        .collect();
    assert_eq!(
        secrets,
        [
            ("plain", 0, "pending", ""),
            ("waved", revision, "error", "namespace ci not found")
        ]
    );
    assert!(shown.cluster.unwrap().connected);

    // Pause and resume.
    let rollout_request = |name: &str| v1::RolloutRequest {
        fleet_secret: name.to_owned(),
    };
    let paused = admin
        .pause_rollout(rollout_request("waved"))
        .await
        .unwrap()
        .into_inner();
    let paused = paused.rollout.unwrap();
    assert_eq!(
        (paused.state.as_str(), paused.reason.as_str()),
        ("paused", "paused by admin")
    );
    let records = hub.store.rollouts().await.unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.fleet_secret == "waved" && r.paused && r.revision == revision)
    );
    let resumed = admin
        .resume_rollout(rollout_request("waved"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resumed.rollout.unwrap().reason,
        "error rate 1/2 (50.0%) above 0.0% in wave 2"
    );
    let (got, message) = code(admin.pause_rollout(rollout_request("plain")).await);
    assert_eq!(got, Code::FailedPrecondition, "{message}");
    let (got, _) = code(admin.pause_rollout(rollout_request("nope")).await);
    assert_eq!(got, Code::NotFound);

    // Pins.
    let pin = |name: &str, key: &str, version: &str| v1::PinVersionRequest {
        fleet_secret: name.to_owned(),
        remote_key: key.to_owned(),
        version: version.to_owned(),
    };
    let version = "fedcba9876543210fedcba9876543210";
    for (request, code_, fragment) in [
        (pin("waved", "", "v1"), Code::InvalidArgument, "version: "),
        (
            pin("plain", "", version),
            Code::InvalidArgument,
            "remote_key: required",
        ),
        (
            pin("plain", "key-c", version),
            Code::InvalidArgument,
            "remote_key: ",
        ),
        (pin("nope", "", version), Code::NotFound, "nope"),
    ] {
        let (got, message) = code(admin.pin_version(request).await);
        assert_eq!(got, code_, "{message}");
        assert!(message.contains(fragment), "{message}");
    }
    let pinned = admin
        .pin_version(pin("waved", "", version))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pinned.pins,
        [v1::Pin {
            remote_key: "api-token".to_owned(),
            version: version.to_owned()
        }]
    );
    admin.pin_version(pin("plain", "key-b", version)).await.unwrap();
    let unpin = |name: &str, key: &str| v1::UnpinVersionRequest {
        fleet_secret: name.to_owned(),
        remote_key: key.to_owned(),
    };
    let unpinned = admin
        .unpin_version(unpin("waved", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(unpinned.pins.is_empty());
    let (got, _) = code(admin.unpin_version(unpin("waved", "")).await);
    assert_eq!(got, Code::NotFound);

    // Sync now.
    let synced = admin
        .sync_now(v1::SyncNowRequest {
            store: "shared-kv".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (synced.stores, synced.new_versions),
        (vec!["shared-kv".to_owned()], 2)
    );
    let (got, _) = code(
        admin
            .sync_now(v1::SyncNowRequest {
                store: "nope".to_owned(),
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);
    assert_eq!(
        *hub.control.synced.lock().unwrap(),
        [Some("shared-kv".to_owned())]
    );

    // Delete: the FleetSecret and its pins go.
    admin
        .delete_fleet_secret(v1::DeleteFleetSecretRequest {
            name: "plain".to_owned(),
        })
        .await
        .unwrap();
    assert!(
        hub.store
            .pins()
            .await
            .unwrap()
            .iter()
            .all(|p| p.fleet_secret != "plain")
    );
    let (got, _) = code(
        admin
            .delete_fleet_secret(v1::DeleteFleetSecretRequest {
                name: "plain".to_owned(),
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);
    let listed = admin
        .list_fleet_secrets(v1::ListFleetSecretsRequest {})
        .await
        .unwrap()
        .into_inner()
        .fleet_secrets;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].store.as_str(),
            listed[0].revision,
            listed[0].target_name.as_str()
        ),
        ("waved", "shared-kv", revision, "waved")
    );

    // The audit trail names every mutation, never a value.
    let audit = hub.store.audit(100).await.unwrap();
    let actions: std::collections::BTreeSet<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "spec.created",
        "spec.configured",
        "rollout.pause",
        "rollout.resume",
        "pin.set",
        "pin.remove",
        "sync-now",
        "fleetsecret.delete",
    ] {
        assert!(actions.contains(action), "{action} missing from {actions:?}");
    }
    let kinds: std::collections::BTreeSet<&str> = hub
        .store
        .changes_since(0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.kind.as_str())
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    for kind in ["spec", "cluster", "rollout", "pin"] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
}
