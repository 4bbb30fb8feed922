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
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.expect("key vault");
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
