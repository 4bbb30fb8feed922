//! Production faults on the agent's side, end to end: the real Sync client and the real
//! `KubeCluster` between a scripted hub (gRPC + TLS on loopback) and the fake Kubernetes API.

mod support;

use std::time::Duration;

use keyfleet_agent::cluster::Credential;
use keyfleet_agent::hub::{Backoff, HubEndpoint, SyncClient, SyncSettings, channel};
use keyfleet_agent::kube::{KubeCluster, KubeSettings};
use keyfleet_agent::metrics::Metrics;
use keyfleet_proto::v1::{agent_message, hub_message};
use keyfleet_proto::{digest, limits, v1};
use keyfleet_testkit::kube::{Config, FakeKube};
use rand::SeedableRng as _;
use support::hub::{CREDENTIAL, ScriptedHub};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// The whole test, at most.
const BOUND: Duration = Duration::from_secs(60);

fn payload(key: &str, revision: u64, namespace: &str) -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: key.into(),
        revision,
        secret_name: key.into(),
        r#type: "Opaque".into(),
        namespaces: vec![namespace.into()],
        data: [("token".to_string(), b"value-1".to_vec())].into(),
        deletion_policy: v1::DeletionPolicy::Delete as i32,
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    payload
}

/// A Kubernetes refusal whose text has a multi-byte character across the agent's cut (the
/// `Status` message is cut at 300 bytes: "é" sits at bytes 299..301) used to panic the agent
/// (`String::truncate` inside a character), which then crash-looped on the same item. It is now
/// a NACK with the message cut before the character.
#[tokio::test]
async fn a_kubernetes_refusal_with_multi_byte_text_across_the_cut_is_nacked_not_a_panic() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let handle = fake.cluster("default").expect("default cluster");
    for namespace in ["a", "keyfleet-system"] {
        handle.create_namespace(namespace).expect("namespace");
    }
    let webhook_text = format!("{}é and more text from the admission webhook", "x".repeat(299));
    assert!(!webhook_text.is_char_boundary(300));
    handle.fail_next_write_with_message("a", "regcred", 422, &webhook_text);

    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");
    let mut kube_settings = KubeSettings::new("keyfleet-system", "keyfleet-agent-credential");
    kube_settings.namespace_cache_ttl = Duration::ZERO;
    let (cluster, _cluster_events) = KubeCluster::new(client, kube_settings, Metrics::default());

    let mut hub = ScriptedHub::start().await;
    let credential = Credential {
        cluster_name: "c1".into(),
        cluster_id: "id".into(),
        secret: Zeroizing::new(CREDENTIAL.into()),
    };
    let mut settings = SyncSettings::new("0.1.0-test");
    settings.first_message_timeout = Duration::from_secs(10);
    let metrics = Metrics::default();
    let endpoint = HubEndpoint {
        url: hub.url.clone(),
        ca_pem: Some(hub.ca_pem.clone()),
    };
    let client = SyncClient::new(
        channel(&endpoint).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let (_events_tx, mut events) = mpsc::channel(8);
    let mut backoff = Backoff::with_rng(
        Duration::from_millis(10),
        Duration::from_millis(50),
        rand::rngs::StdRng::seed_from_u64(5),
    );
    let test = async {
        let mut session = hub.session().await;
        assert!(matches!(session.recv().await, agent_message::Body::Hello(_)));
        session
            .send(hub_message::Body::Welcome(v1::Welcome {
                in_sync: false,
                hub_instance: "hub-0".into(),
                heartbeat_interval_ms: 30_000,
                max_inflight: 4,
            }))
            .await;
        session
            .send(hub_message::Body::Update(v1::Update {
                nonce: 1,
                upserts: vec![payload("regcred", 1, "a")],
                removals: vec![],
            }))
            .await;
        let agent_message::Body::Ack(ack) = session.recv().await else {
            panic!("expected an ack");
        };
        let [result] = &ack.results[..] else {
            panic!("one result: {ack:?}");
        };
        let error = result.error.as_ref().expect("a NACK");
        assert_eq!(error.code, v1::ErrorCode::Invalid as i32, "{error:?}");
        assert!(!error.retryable);
        assert!(error.message.len() <= limits::MAX_ERROR_MESSAGE_BYTES);
        // Cut before the "é" that straddled byte 300 of the Kubernetes message.
        assert!(error.message.contains(&"x".repeat(299)), "{}", error.message);
        assert!(!error.message.contains('é'), "{}", error.message);
        assert!(error.message.contains("422"), "{}", error.message);
        assert!(handle.get_secret("a", "regcred").is_none());

        // The agent is still alive and serves the same stream: the retry applies.
        session
            .send(hub_message::Body::Update(v1::Update {
                nonce: 2,
                upserts: vec![payload("regcred", 1, "a")],
                removals: vec![],
            }))
            .await;
        let agent_message::Body::Ack(ack) = session.recv().await else {
            panic!("expected an ack");
        };
        assert_eq!(ack.nonce, 2);
        assert!(ack.results.iter().all(|result| result.error.is_none()), "{ack:?}");
        assert!(handle.get_secret("a", "regcred").is_some());
    };
    tokio::time::timeout(BOUND, async {
        tokio::select! {
            () = cluster.run_watcher() => panic!("watcher ended"),
            () = client.run(&mut events, &mut backoff) => panic!("sync client ended"),
            () = test => {}
        }
    })
    .await
    .expect("within the bound");
}
