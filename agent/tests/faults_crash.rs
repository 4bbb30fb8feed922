//! Issue #16 item 4, end to end with real processes: the hub (`keyfleet serve`) with the Key
//! Vault emulator, the agent binary against the fake Kubernetes API. The agent is killed -9 after
//! writing namespace `a` of an item and before its write to `b` lands (writes to `b` are held by
//! the fake API); restarted, it must not report the item applied, so the hub sends it again and
//! `b` is created. Status never says the cluster applied the revision while `b` is missing.

mod support;

use std::time::Duration;

use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use keyfleet_testkit::kube::{Config, FakeKube, Object};
use support::processes::{AgentProcess, HubProcess, hub_binary};

/// Each phase, at most.
const BOUND: Duration = Duration::from_secs(60);
const FLEET_SECRET: &str = "app-token";

fn specs(vault_url: &str) -> String {
    format!(
        r#"kind: SecretStore
name: kv
provider:
  azurekv:
    vaultUrl: {vault}
    authType: WorkloadIdentity
    pollInterval: 30s
---
kind: FleetSecret
name: {FLEET_SECRET}
storeRef: kv
data:
  - secretKey: token
    remoteRef: {{ key: app-token, version: "", property: "" }}
target:
  name: {FLEET_SECRET}
  type: Opaque
  namespaces: [a, b]
  creationPolicy: Owner
  deletionPolicy: Delete
clusters:
  matchLabels: {{ env: prod }}
"#,
        vault = vault_url.trim_end_matches('/'),
    )
}

fn revision_of(secret: &Object) -> Option<u64> {
    secret.meta.annotations.get("keyfleet.io/revision")?.parse().ok()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_between_two_namespaces_creates_the_second_after_restart() {
    let hub_binary = hub_binary();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default())
        .await
        .expect("key vault");
    kv.set_secret("app-token", "value-1", &[]).expect("vault secret");
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let kube = fake.cluster("default").expect("default cluster");
    for namespace in ["a", "b", "keyfleet-system"] {
        kube.create_namespace(namespace).expect("namespace");
    }
    let mut hub = HubProcess::start(&hub_binary, dir.path(), &kv).await;
    let mut admin = hub.admin();
    admin.apply("app.yaml", specs(kv.vault_url().as_str())).await;
    let token = admin.add_cluster("cluster-1", &[("env", "prod")]).await;

    // Writes to `b` wait; the agent applies `a` first (the payload's order), then blocks on `b`.
    let hold = kube.hold_writes("b");
    let mut agent = AgentProcess::start(dir.path(), 1, &hub, &kube.kubeconfig_yaml(), &token);
    within("the agent writes a, then reaches b", hold.until_arrived(1)).await;
    let revision = kube
        .get_secret("a", FLEET_SECRET)
        .as_deref()
        .and_then(revision_of)
        .expect("a holds the new revision");
    let status = admin.status(FLEET_SECRET).await;
    assert_eq!(status.revision, revision, "{status:?}");
    assert_eq!(status.applied, 0, "b is not written yet: {status:?}");

    // kill -9 between the two writes; the held write never lands.
    agent.kill().await;
    hold.fail(503);
    assert!(kube.get_secret("b", FLEET_SECRET).is_none());
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let status = admin.status(FLEET_SECRET).await;
        assert_eq!(status.applied, 0, "applied while b is missing: {status:?}");
        if status.offline == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub did not see the agent go: {status:?}"
        );
        // Status rows are written in batches; no event says when.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Restarted (credential from its Secret), the agent finds `b` missing: it must not be told
    // it is in sync. Every status read until the cluster counts as applied sees `b` missing and
    // not applied; the first read that says applied comes after `b` holds the revision.
    let agent = AgentProcess::start(dir.path(), 2, &hub, &kube.kubeconfig_yaml(), &token);
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut reads = 0;
    loop {
        let status = admin.status(FLEET_SECRET).await;
        reads += 1;
        // Read after the status: a `b` written before the status said applied is seen here.
        let b = kube.get_secret("b", FLEET_SECRET);
        if status.applied == 1 {
            assert_eq!(
                b.as_deref().and_then(revision_of),
                Some(revision),
                "status says the cluster applied revision {revision} while b is missing \
                 (read {reads}): {status:?}\nagent log:\n{}",
                agent.log.tail(30)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted agent never applied the item: {status:?}\nagent log:\n{}",
            agent.log.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = kube.get_secret("a", FLEET_SECRET).expect("a still there");
    assert_eq!(revision_of(&a), Some(revision));
    assert!(hub.is_running(), "hub log:\n{}", hub.log.tail(30));
    eprintln!("status read {reads} times after the restart before it said applied");
}

/// The same rule for a namespace selector, in process (the real `KubeCluster` against the fake
/// API): an agent restarted with nothing in memory resolves the recorded selector against the
/// namespaces of now, so a matching namespace without the Secret (created while the agent was
/// down, or never reached) makes the key not applied, and the hub's next send writes it there.
#[tokio::test]
async fn a_restarted_agent_counts_a_selector_key_applied_only_where_every_match_holds_it() {
    use k8s_openapi::api::core::v1::Namespace;
    use keyfleet_agent::cluster::Cluster as _;
    use keyfleet_agent::hub::desired_from_payload;
    use keyfleet_agent::kube::{KubeCluster, KubeSettings};
    use keyfleet_agent::metrics::Metrics;
    use keyfleet_agent::reconcile::{Applied, TARGETS_ANNOTATION};
    use keyfleet_proto::{digest, v1};
    use kube::api::{Api, PostParams};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let handle = fake.cluster("default").expect("default cluster");
    handle.create_namespace("keyfleet-system").expect("namespace");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let create_prod = |name: &'static str| {
        let namespaces = namespaces.clone();
        async move {
            let namespace: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "labels": { "env": "prod" } }
            }))
            .expect("namespace");
            namespaces
                .create(&PostParams::default(), &namespace)
                .await
                .expect("namespace created");
        }
    };
    create_prod("prod-1").await;
    create_prod("prod-2").await;
    let mut payload = v1::SecretPayload {
        key: FLEET_SECRET.into(),
        revision: 7,
        secret_name: FLEET_SECRET.into(),
        r#type: "Opaque".into(),
        namespace_selector: Some(v1::LabelSelector {
            match_labels: [("env".to_string(), "prod".to_string())].into(),
            match_expressions: vec![],
        }),
        data: [("token".to_string(), b"value-1".to_vec())].into(),
        deletion_policy: v1::DeletionPolicy::Delete as i32,
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    let sha256: [u8; 32] = payload.sha256.clone().try_into().expect("32 bytes");
    let settings = || {
        let mut settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
        settings.namespace_cache_ttl = Duration::ZERO;
        settings
    };
    // A first incarnation applies the key to both matching namespaces.
    {
        let (cluster, _events) = KubeCluster::new(client.clone(), settings(), Metrics::default());
        tokio::select! {
            () = cluster.run_watcher() => panic!("watcher ended"),
            applied = within("first apply", cluster.upsert(desired_from_payload(payload.clone()).expect("valid"))) => {
                applied.expect("applied");
            }
        }
    }
    let record = handle
        .get_secret("prod-1", FLEET_SECRET)
        .expect("prod-1 written")
        .meta
        .annotations
        .get(TARGETS_ANNOTATION)
        .cloned();
    assert_eq!(
        record.as_deref(),
        Some(r#"{"namespaceSelector":{"matchLabels":{"env":"prod"}}}"#)
    );

    // Restarted with nothing in memory: complete, then a namespace starts matching.
    let (cluster, _events) = KubeCluster::new(client.clone(), settings(), Metrics::default());
    let check = async {
        let writes = handle.writes();
        let applied = cluster.applied().await.expect("applied state");
        assert_eq!(applied.get(FLEET_SECRET), Some(&Applied { revision: 7, sha256 }));
        create_prod("prod-3").await;
        let applied = cluster.applied().await.expect("applied state");
        assert_eq!(
            applied.get(FLEET_SECRET),
            Some(&Applied::INCOMPLETE),
            "prod-3 matches and lacks the Secret"
        );
        assert_eq!(
            handle.writes().changes,
            writes.changes + 1,
            "rebuilding the state wrote something (prod-3 is the one change)"
        );
        // The hub's next send writes it there; the key is then applied again.
        cluster
            .upsert(desired_from_payload(payload.clone()).expect("valid"))
            .await
            .expect("applied");
        assert!(handle.get_secret("prod-3", FLEET_SECRET).is_some());
        let applied = cluster.applied().await.expect("applied state");
        assert_eq!(applied.get(FLEET_SECRET), Some(&Applied { revision: 7, sha256 }));
    };
    tokio::select! {
        () = cluster.run_watcher() => panic!("watcher ended"),
        () = within("restart checks", check) => {}
    }
}
