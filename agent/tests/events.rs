//! Issue #19 item 7: what the agent leaves on a cluster for the people running it, read back
//! through the fake Kubernetes API as kubectl would: the `keyfleet.io/fleet-secret` label (found
//! by a label-selector list), the `keyfleet.io/synced-at` and `keyfleet.io/key-vault-versions`
//! annotations, and the `events.k8s.io/v1` Events `Applied`, `DriftRepaired` and `ApplyFailed`,
//! each regarding the Secret, reported by `keyfleet.io/agent`, never carrying a value.
//!
//! The first test drives the agent's Kubernetes side (`KubeCluster`: writer, watcher, event
//! poster) in process; the second runs the real agent binary under the real hub binary.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use keyfleet_agent::cluster::{Cluster as _, ClusterEvent};
use keyfleet_agent::hub::desired_from_payload;
use keyfleet_agent::kube::{KubeCluster, KubeSettings};
use keyfleet_agent::metrics::Metrics;
use keyfleet_agent::reconcile::{
    DriftKind, ErrorCode, FLEET_SECRET_LABEL, KEY_VAULT_VERSIONS_ANNOTATION, SYNCED_AT_ANNOTATION,
};
use keyfleet_proto::{digest, v1};
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use keyfleet_testkit::kube::{ClusterHandle, Config, FakeKube, Object, SecretBytes};
use kube::api::{Api, ListParams};
use serde_json::Value;
use support::processes::{AgentProcess, HubProcess, hub_binary};

const VALUE: &str = "events-secret-value-1";
const KEY: &str = "db-creds";
const INSTANCE: &str = "keyfleet-agent-7d9f-x2";
/// Any wait on the fake API, at most.
const BOUND: Duration = Duration::from_secs(10);

async fn fake() -> (FakeKube, ClusterHandle) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let handle = fake.cluster("default").expect("default cluster");
    for namespace in ["a", "b", "keyfleet-system"] {
        handle.create_namespace(namespace).expect("namespace");
    }
    (fake, handle)
}

async fn client(handle: &ClusterHandle) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

fn payload(revision: u64, value: &str) -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: KEY.into(),
        revision,
        secret_name: KEY.into(),
        r#type: "Opaque".into(),
        namespaces: vec!["a".into(), "b".into()],
        data: [("password".to_string(), value.as_bytes().to_vec())].into(),
        deletion_policy: v1::DeletionPolicy::Delete as i32,
        source_versions: [(
            "db-password".to_string(),
            format!("0123456789abcdef0123456789abcd{revision:02}"),
        )]
        .into(),
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    payload
}

/// The Events posted so far with `reason` in `namespace`.
fn with_reason<'a>(events: &'a [Value], namespace: &str, reason: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["metadata"]["namespace"] == namespace && event["reason"] == reason)
        .collect()
}

/// Waits (bounded) until an Event with `reason` exists in each of `namespaces`; returns them all.
async fn until_posted(handle: &ClusterHandle, reason: &str, namespaces: &[&str]) -> Vec<Value> {
    let waited = tokio::time::timeout(
        BOUND,
        handle.until_events(|events| {
            namespaces
                .iter()
                .all(|namespace| !with_reason(events, namespace, reason).is_empty())
        }),
    )
    .await;
    waited.unwrap_or_else(|_| {
        panic!(
            "no {reason} Event in each of {namespaces:?} within {BOUND:?}: {:#?}",
            handle.events()
        )
    })
}

/// An Event regarding Secret `namespace/KEY`, from the agent, of `type_`.
fn assert_about_the_secret(event: &Value, namespace: &str, type_: &str) {
    assert_eq!(
        event["regarding"],
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "namespace": namespace, "name": KEY}),
        "{event:#}"
    );
    assert_eq!(event["reportingController"], "keyfleet.io/agent", "{event:#}");
    assert_eq!(event["reportingInstance"], INSTANCE, "{event:#}");
    assert_eq!(event["type"], type_, "{event:#}");
    assert!(
        event["eventTime"].as_str().is_some_and(|time| !time.is_empty()),
        "{event:#}"
    );
}

/// No form of `values` appears in any Event: raw, base64 (standard and URL-safe, padded or not).
fn assert_no_value_in(events: &[Value], values: &[&str]) {
    let posted = serde_json::to_string(events).expect("json");
    for value in values {
        let forms = [
            (*value).to_owned(),
            base64::engine::general_purpose::STANDARD.encode(value),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(value),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
        ];
        for form in forms {
            assert!(!posted.contains(&form), "a value ({form}) in an Event: {posted}");
        }
    }
}

#[tokio::test]
async fn the_secret_is_labelled_annotated_and_each_outcome_is_an_event() {
    let (_fake, handle) = fake().await;
    let client = client(&handle).await;
    // Another Secret in the same namespace: the label selector must leave it out.
    handle
        .put_secret(
            Object::new_secret("a", "unrelated").with_data("k", b"v"),
            "kubectl-create",
        )
        .expect("unrelated secret");
    let mut settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
    settings.namespace_cache_ttl = Duration::ZERO;
    settings.instance = INSTANCE.into();
    let (cluster, mut drift) = KubeCluster::new(client.clone(), settings, Metrics::default());
    let body = async {
        // Applied: one Event per Secret written, the label, both annotations.
        // synced-at has whole seconds.
        let before = Timestamp::now().as_second() - 1;
        cluster
            .upsert(desired_from_payload(payload(1, VALUE)).expect("valid payload"))
            .await
            .expect("applied");
        for namespace in ["a", "b"] {
            let secret = handle.get_secret(namespace, KEY).expect("written");
            assert_eq!(
                secret.meta.labels.get(FLEET_SECRET_LABEL).map(String::as_str),
                Some(KEY)
            );
            let synced_at = secret
                .meta
                .annotations
                .get(SYNCED_AT_ANNOTATION)
                .expect("synced-at");
            let synced_at: Timestamp = synced_at.parse().expect("RFC 3339");
            assert!(
                synced_at.as_second() >= before,
                "synced-at {synced_at} is before the write"
            );
            let versions: BTreeMap<String, String> = serde_json::from_str(
                secret
                    .meta
                    .annotations
                    .get(KEY_VAULT_VERSIONS_ANNOTATION)
                    .expect("key-vault-versions"),
            )
            .expect("a JSON map");
            assert_eq!(
                versions,
                BTreeMap::from([(
                    "db-password".to_owned(),
                    "0123456789abcdef0123456789abcd01".to_owned()
                )])
            );
        }
        // `kubectl get secrets -A -l keyfleet.io/fleet-secret=db-creds`, as a client lists it.
        let labelled = Api::<Secret>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{FLEET_SECRET_LABEL}={KEY}")))
            .await
            .expect("list by label");
        let mut found: Vec<(String, String)> = labelled
            .items
            .iter()
            .map(|secret| {
                (
                    secret.metadata.namespace.clone().unwrap_or_default(),
                    secret.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [("a".to_owned(), KEY.to_owned()), ("b".to_owned(), KEY.to_owned())]
        );
        let events = until_posted(&handle, "Applied", &["a", "b"]).await;
        for namespace in ["a", "b"] {
            let applied = with_reason(&events, namespace, "Applied");
            assert_eq!(applied.len(), 1, "{applied:#?}");
            assert_about_the_secret(applied[0], namespace, "Normal");
            assert_eq!(applied[0]["action"], "Apply");
            let note = applied[0]["note"].as_str().expect("note");
            assert!(note.contains("revision 1") && note.contains(KEY), "{note}");
        }

        // DriftRepaired: edited in a by someone else, deleted in b; both written back.
        let mut edited = (*handle.get_secret("a", KEY).expect("a")).clone();
        edited
            .secret_mut()
            .expect("secret")
            .data
            .insert("password".into(), SecretBytes::from(&b"hand-edited-value"[..]));
        handle.put_secret(edited, "kubectl-edit").expect("edit");
        assert!(matches!(
            tokio::time::timeout(BOUND, drift.recv()).await,
            Ok(Some(ClusterEvent::Drift {
                kind: DriftKind::Modified,
                ..
            }))
        ));
        assert!(handle.delete_secret("b", KEY));
        assert!(matches!(
            tokio::time::timeout(BOUND, drift.recv()).await,
            Ok(Some(ClusterEvent::Drift {
                kind: DriftKind::Deleted,
                ..
            }))
        ));
        let events = until_posted(&handle, "DriftRepaired", &["a", "b"]).await;
        for (namespace, word) in [("a", "modified"), ("b", "deleted")] {
            let repaired = with_reason(&events, namespace, "DriftRepaired");
            assert_eq!(repaired.len(), 1, "{repaired:#?}");
            assert_about_the_secret(repaired[0], namespace, "Normal");
            assert_eq!(repaired[0]["action"], "Repair");
            let note = repaired[0]["note"].as_str().expect("note");
            assert!(note.contains(word) && note.contains("revision 1"), "{note}");
            assert_eq!(
                handle
                    .get_secret(namespace, KEY)
                    .expect("repaired")
                    .data("password"),
                Some(VALUE.as_bytes())
            );
        }

        // ApplyFailed: the API refuses the write of revision 2 to a: a NACK and a Warning.
        handle.fail_next_write_with_message("a", KEY, 422, "admission webhook \"policy\" denied the request");
        let refusal = cluster
            .upsert(desired_from_payload(payload(2, "events-secret-value-2")).expect("valid payload"))
            .await
            .expect_err("the write is refused");
        assert_eq!(refusal.code, ErrorCode::Invalid, "{refusal:?}");
        let events = until_posted(&handle, "ApplyFailed", &["a"]).await;
        let failed = with_reason(&events, "a", "ApplyFailed");
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert_about_the_secret(failed[0], "a", "Warning");
        let note = failed[0]["note"].as_str().expect("note");
        assert!(
            note.contains("revision 2")
                && note.contains("not applied")
                && note.contains("denied the request"),
            "{note}"
        );
        assert_eq!(
            handle.get_secret("a", KEY).expect("a").data("password"),
            Some(VALUE.as_bytes()),
            "the refused revision changed nothing"
        );

        // Read back as kubectl reads them: both groups, by field selector, from the client.
        let selector = format!("regarding.kind=Secret,regarding.name={KEY}");
        let v1_events = Api::<Event>::namespaced(client.clone(), "a")
            .list(&ListParams::default().fields(&selector))
            .await
            .expect("events.k8s.io list");
        let mut reasons: Vec<String> = v1_events
            .items
            .iter()
            .filter_map(|event| event.reason.clone())
            .collect();
        reasons.sort();
        assert_eq!(reasons, ["Applied", "ApplyFailed", "DriftRepaired"]);
        let core = Api::<CoreEvent>::namespaced(client.clone(), "a")
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind=Secret,involvedObject.name={KEY},type=Warning"
            )))
            .await
            .expect("core list");
        assert_eq!(core.items.len(), 1);
        assert_eq!(core.items[0].reason.as_deref(), Some("ApplyFailed"));
        assert_eq!(
            core.items[0].reporting_component.as_deref(),
            Some("keyfleet.io/agent")
        );

        assert_no_value_in(
            &handle.events(),
            &[VALUE, "events-secret-value-2", "hand-edited-value"],
        );
    };
    tokio::select! {
        () = cluster.run_watcher() => panic!("watcher ended"),
        () = cluster.run_events() => panic!("event poster ended"),
        () = body => {}
    }
}

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
  namespaces: [a]
  creationPolicy: Owner
  deletionPolicy: Delete
clusters:
  matchLabels: {{ env: prod }}
"#,
        vault = vault_url.trim_end_matches('/'),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_under_the_real_hub_labels_the_secret_and_posts_applied() {
    let hub_binary = hub_binary();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default())
        .await
        .expect("key vault");
    kv.set_secret("app-token", "binary-secret-value", &[])
        .expect("vault secret");
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let kube = fake.cluster("default").expect("default cluster");
    for namespace in ["a", "keyfleet-system"] {
        kube.create_namespace(namespace).expect("namespace");
    }
    let hub = HubProcess::start(&hub_binary, dir.path(), &kv).await;
    let mut admin = hub.admin();
    admin.apply("app.yaml", specs(kv.vault_url().as_str())).await;
    let token = admin.add_cluster("cluster-1", &[("env", "prod")]).await;

    let started = std::time::Instant::now();
    let agent = AgentProcess::start_with(
        dir.path(),
        1,
        &hub,
        &kube.kubeconfig_yaml(),
        &token,
        &["--instance", INSTANCE],
    );
    let events = tokio::time::timeout(
        BOUND,
        kube.until_events(|events| !with_reason(events, "a", "Applied").is_empty()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no Applied Event within {BOUND:?}; agent log:\n{}\nevents: {:#?}",
            agent.log.tail(40),
            kube.events()
        )
    });
    let elapsed = started.elapsed();
    let applied = with_reason(&events, "a", "Applied");
    assert_eq!(applied.len(), 1, "{applied:#?}");
    assert_eq!(
        applied[0]["regarding"],
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "namespace": "a", "name": FLEET_SECRET})
    );
    assert_eq!(applied[0]["reportingController"], "keyfleet.io/agent");
    assert_eq!(applied[0]["reportingInstance"], INSTANCE);
    assert_eq!(applied[0]["type"], "Normal");
    // The Event is posted after the write it reports: the Secret is there, labelled.
    let secret = kube.get_secret("a", FLEET_SECRET).expect("written");
    assert_eq!(secret.data("token"), Some(&b"binary-secret-value"[..]));
    assert_eq!(
        secret.meta.labels.get(FLEET_SECRET_LABEL).map(String::as_str),
        Some(FLEET_SECRET)
    );
    assert!(secret.meta.annotations.contains_key(SYNCED_AT_ANNOTATION));
    assert_no_value_in(&events, &["binary-secret-value"]);
    eprintln!("agent binary start to its Applied Event: {elapsed:?}");
}
