//! The hub-facing half of the agent against a scripted hub over real gRPC + TLS on loopback.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keyfleet_agent::cluster::{ClusterEvent, Credential};
use keyfleet_agent::hub::{Backoff, HubEndpoint, SyncClient, SyncSettings, channel, ensure_credential};
use keyfleet_agent::metrics::Metrics;
use keyfleet_agent::reconcile::{Applied, DeletionPolicy, DriftKind};
use keyfleet_proto::digest;
use keyfleet_proto::v1::{self, agent_message, hub_message};
use prost::Message as _;
use rand::SeedableRng as _;
use support::hub::{CREDENTIAL, ScriptedHub, Session, TOKEN};
use support::{MemCluster, MemStore};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

const SECRET_VALUE: &str = "correct-horse-battery-staple";

fn credential() -> Credential {
    Credential {
        cluster_name: "c1".into(),
        cluster_id: "id".into(),
        secret: Zeroizing::new(CREDENTIAL.into()),
    }
}

fn endpoint(hub: &ScriptedHub) -> HubEndpoint {
    HubEndpoint {
        url: hub.url.clone(),
        ca_pem: Some(hub.ca_pem.clone()),
    }
}

fn fast_settings() -> SyncSettings {
    let mut settings = SyncSettings::new("0.1.0-test");
    settings.first_message_timeout = Duration::from_secs(10);
    settings
}

fn fast_backoff() -> Backoff {
    Backoff::with_rng(
        Duration::from_millis(10),
        Duration::from_millis(50),
        rand::rngs::StdRng::seed_from_u64(3),
    )
}

fn payload(key: &str, revision: u64) -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: key.into(),
        revision,
        secret_name: key.into(),
        r#type: "Opaque".into(),
        namespaces: vec!["default".into()],
        data: [("password".to_string(), SECRET_VALUE.as_bytes().to_vec())].into(),
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    payload
}

async fn hello(session: &mut Session) -> v1::Hello {
    match session.recv().await {
        agent_message::Body::Hello(hello) => hello,
        _ => panic!("first message must be hello"),
    }
}

fn welcome(in_sync: bool) -> hub_message::Body {
    hub_message::Body::Welcome(v1::Welcome {
        in_sync,
        hub_instance: "hub-0".into(),
        heartbeat_interval_ms: 30_000,
        max_inflight: 4,
    })
}

#[tokio::test]
async fn enrollment_stores_the_credential_and_a_restart_reuses_it() {
    let hub = ScriptedHub::start().await;
    let channel = channel(&endpoint(&hub)).expect("channel");
    let store = MemStore::default();
    let not_enrolled = || unreachable!("a token is given");
    let first = ensure_credential(
        &store,
        channel.clone(),
        Some(TOKEN),
        "0.1.0",
        not_enrolled,
        &mut fast_backoff(),
    )
    .await
    .expect("enrolled");
    assert_eq!(first.secret.as_str(), CREDENTIAL);
    assert_eq!(first.cluster_name, "c1");
    assert_eq!(store.saves.load(Ordering::SeqCst), 1);
    // A restarted agent (same store) does not enroll again, even with the token still configured.
    let again = ensure_credential(
        &store,
        channel.clone(),
        Some(TOKEN),
        "0.1.0",
        not_enrolled,
        &mut fast_backoff(),
    )
    .await
    .expect("stored credential");
    assert_eq!(again.secret.as_str(), CREDENTIAL);
    assert_eq!(hub.enrolls.load(Ordering::SeqCst), 1);
    // A fresh store with the spent token is refused for good, and says so.
    let error = ensure_credential(
        &MemStore::default(),
        channel,
        Some(TOKEN),
        "0.1.0",
        not_enrolled,
        &mut fast_backoff(),
    )
    .await
    .expect_err("token spent");
    assert!(error.to_string().contains("enrollment refused"), "{error}");
    assert!(!error.to_string().contains(TOKEN));
}

#[tokio::test]
async fn missing_token_and_credential_is_a_named_error() {
    let hub = ScriptedHub::start().await;
    let error = ensure_credential(
        &MemStore::default(),
        channel(&endpoint(&hub)).expect("channel"),
        None,
        "0.1.0",
        || keyfleet_agent::hub::HubError::NotEnrolled {
            namespace: "keyfleet-system".into(),
            name: "keyfleet-agent-credential".into(),
        },
        &mut fast_backoff(),
    )
    .await
    .expect_err("not enrolled");
    assert!(
        error
            .to_string()
            .contains("keyfleet-system/keyfleet-agent-credential"),
        "{error}"
    );
}

#[tokio::test]
async fn in_sync_reconnect_is_one_small_hello_with_the_bearer_credential() {
    let mut hub = ScriptedHub::start().await;
    let cluster = MemCluster::default();
    let applied: BTreeMap<String, Applied> = (0..50)
        .map(|i| {
            (
                format!("secret-{i}"),
                Applied {
                    revision: 100 + i,
                    sha256: [i as u8; 32],
                },
            )
        })
        .collect();
    *cluster.applied.lock().expect("lock") = applied.clone();
    let (credential, settings, metrics) = (credential(), fast_settings(), Metrics::default());
    let (_events_tx, mut events) = mpsc::channel(8);
    let client = SyncClient::new(
        channel(&endpoint(&hub)).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let mut backoff = fast_backoff();
    let agent = client.run(&mut events, &mut backoff);
    let test = async {
        let mut session = hub.session().await;
        assert_eq!(
            session.authorization.as_deref(),
            Some(format!("Bearer {CREDENTIAL}").as_str())
        );
        let hello = hello(&mut session).await;
        let expected = digest::set_digest(
            applied
                .iter()
                .map(|(k, a)| (k.as_str(), a.revision, &a.sha256[..])),
        );
        assert_eq!(hello.applied_digest, expected.to_vec());
        assert_eq!(hello.applied_count, 50);
        assert_eq!(hello.boot_id, settings.boot_id.to_vec());
        let bytes = v1::AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        }
        .encoded_len()
            + 5;
        eprintln!("in-sync reconnect: {bytes} bytes of gRPC messages from the agent");
        assert!(bytes <= 100, "hello is {bytes} bytes");
        session.send(welcome(true)).await;
        session
            .send(hub_message::Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms: 1 }))
            .await;
        assert!(matches!(session.recv().await, agent_message::Body::Heartbeat(_)));
        assert_eq!(metrics.connected.get(), 1);
    };
    tokio::select! {
        () = agent => unreachable!("the client runs until dropped"),
        () = test => {}
    }
}

#[tokio::test]
async fn need_versions_pages_then_each_item_is_acked_or_nacked() {
    let mut hub = ScriptedHub::start().await;
    let cluster = MemCluster::default();
    *cluster.applied.lock().expect("lock") = (0..5)
        .map(|i| {
            (
                format!("old-{i}"),
                Applied {
                    revision: i + 1,
                    sha256: [1; 32],
                },
            )
        })
        .collect();
    cluster.refuse.lock().expect("lock").push("foreign".into());
    let (credential, settings, metrics) = (credential(), fast_settings(), Metrics::default());
    let (_events_tx, mut events) = mpsc::channel(8);
    let client = SyncClient::new(
        channel(&endpoint(&hub)).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let mut backoff = fast_backoff();
    let (logs, _guard) = support::capture_logs();
    let agent = client.run(&mut events, &mut backoff);
    let test = async {
        let mut session = hub.session().await;
        let hello = hello(&mut session).await;
        assert_eq!(hello.applied_count, 5);
        session
            .send(hub_message::Body::NeedVersions(v1::NeedVersions { page_size: 2 }))
            .await;
        let mut keys = Vec::new();
        loop {
            let agent_message::Body::VersionPage(page) = session.recv().await else {
                panic!("expected a version page");
            };
            assert!(page.items.len() <= 2);
            keys.extend(page.items.into_iter().map(|item| item.key));
            if page.last {
                break;
            }
        }
        assert_eq!(keys, (0..5).map(|i| format!("old-{i}")).collect::<Vec<_>>());
        session.send(welcome(false)).await;
        let mut tampered = payload("tampered", 8);
        tampered
            .data
            .insert("password".into(), b"something-else".to_vec());
        let mut bad_name = payload("bad-name", 9);
        bad_name.secret_name = "Not_A_Name".into();
        bad_name.sha256 = digest::payload_sha256(&bad_name).to_vec();
        session
            .send(hub_message::Body::Update(v1::Update {
                nonce: 1,
                upserts: vec![payload("fresh", 7), tampered, bad_name, payload("foreign", 10)],
                removals: vec![v1::Removal {
                    key: "old-0".into(),
                    deletion_policy: v1::DeletionPolicy::Delete as i32,
                }],
            }))
            .await;
        let agent_message::Body::Ack(ack) = session.recv().await else {
            panic!("expected an ack");
        };
        assert_eq!(ack.nonce, 1);
        let results: BTreeMap<String, (u64, Option<(i32, bool)>)> = ack
            .results
            .into_iter()
            .map(|r| (r.key, (r.revision, r.error.map(|e| (e.code, e.retryable)))))
            .collect();
        let expected: BTreeMap<String, (u64, Option<(i32, bool)>)> = [
            ("fresh".to_string(), (7, None)),
            (
                "tampered".to_string(),
                (8, Some((v1::ErrorCode::DigestMismatch as i32, false))),
            ),
            (
                "bad-name".to_string(),
                (9, Some((v1::ErrorCode::Invalid as i32, false))),
            ),
            (
                "foreign".to_string(),
                (10, Some((v1::ErrorCode::NotOwned as i32, true))),
            ),
            ("old-0".to_string(), (0, None)),
        ]
        .into();
        assert_eq!(results, expected);
        let applied = cluster.applied.lock().expect("lock").clone();
        assert_eq!(applied.get("fresh").map(|a| a.revision), Some(7));
        assert!(!applied.contains_key("tampered") && !applied.contains_key("foreign"));
        assert!(!applied.contains_key("old-0"));
        assert_eq!(
            *cluster.removed.lock().expect("lock"),
            vec![("old-0".to_string(), DeletionPolicy::Delete)]
        );
    };
    tokio::select! {
        () = agent => unreachable!("the client runs until dropped"),
        () = test => {}
    }
    let logs = logs.contents();
    assert!(logs.contains("upsert refused"), "the refusals are logged");
    assert!(!logs.contains(SECRET_VALUE), "a secret value reached the logs");
    assert!(!logs.contains(CREDENTIAL), "the credential reached the logs");
}

#[tokio::test]
async fn drain_and_refusals_reconnect_with_the_same_boot_id_and_drift_is_reported() {
    let mut hub = ScriptedHub::start().await;
    let cluster = MemCluster::default();
    let (credential, settings, metrics) = (credential(), fast_settings(), Metrics::default());
    let (events_tx, mut events) = mpsc::channel(8);
    let client = SyncClient::new(
        channel(&endpoint(&hub)).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let mut backoff = fast_backoff();
    let agent = client.run(&mut events, &mut backoff);
    let test = async {
        let mut session = hub.session().await;
        let first = hello(&mut session).await;
        assert_eq!(first.applied_digest, digest::set_digest([]).to_vec());
        session.send(welcome(true)).await;
        events_tx
            .send(ClusterEvent::Drift {
                key: "regcred".into(),
                namespace: "ci".into(),
                kind: DriftKind::Deleted,
                revision: 4,
            })
            .await
            .expect("agent alive");
        let agent_message::Body::Drift(drift) = session.recv().await else {
            panic!("expected a drift report");
        };
        assert_eq!(
            (drift.key.as_str(), drift.namespace.as_str(), drift.revision),
            ("regcred", "ci", 4)
        );
        assert_eq!(drift.kind, v1::DriftKind::Deleted as i32);

        let drained_at = tokio::time::Instant::now();
        session
            .send(hub_message::Body::Drain(v1::Drain {
                reconnect_after_ms: 300,
                reason: "rebalance".into(),
            }))
            .await;
        assert!(
            session.next().await.is_none(),
            "the agent closes the drained stream"
        );
        let mut session = hub.session().await;
        assert!(
            drained_at.elapsed() >= Duration::from_millis(300),
            "reconnected before the drain delay"
        );
        assert_eq!(hello(&mut session).await.boot_id, first.boot_id);

        // Admission refusal with retry-after: the agent waits that long, not a backoff grown by
        // the refusal (the hub spaced the refused agents; the clock is paused, so exactly).
        hub.refuse_next({
            let mut status = tonic::Status::resource_exhausted("admission limit");
            status
                .metadata_mut()
                .insert("retry-after-ms", "400".parse().expect("ascii"));
            status
        })
        .await;
        events_tx.send(ClusterEvent::Resync).await.expect("agent alive");
        assert!(session.next().await.is_none(), "resync closes the stream");
        let refused_at = tokio::time::Instant::now();
        let mut session = hub.session().await;
        assert!(
            refused_at.elapsed() >= Duration::from_millis(400),
            "retry-after not honoured"
        );
        assert!(
            refused_at.elapsed() < Duration::from_millis(450),
            "the hint replaces the backoff: {:?}",
            refused_at.elapsed()
        );
        hello(&mut session).await;
    };
    tokio::select! {
        () = agent => unreachable!("the client runs until dropped"),
        () = test => {}
    }
}

#[tokio::test(start_paused = true)]
async fn reconnects_follow_the_full_jitter_schedule() {
    // The cluster cannot be read, so every session fails before touching the network; the gaps
    // between attempts are exactly the backoff delays: uniform in [0, min(60 s, 2ⁿ s)].
    let cluster = MemCluster::default();
    cluster.unavailable.store(true, Ordering::SeqCst);
    let (credential, settings, metrics) = (credential(), SyncSettings::new("0.1.0"), Metrics::default());
    let endpoint = HubEndpoint {
        url: "http://127.0.0.1:9".into(),
        ca_pem: None,
    };
    let (_events_tx, mut events) = mpsc::channel(8);
    let client = SyncClient::new(
        channel(&endpoint).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let seeded = || rand::rngs::StdRng::seed_from_u64(42);
    let mut backoff = Backoff::with_rng(Duration::from_secs(1), Duration::from_secs(60), seeded());
    let mut reference = Backoff::with_rng(Duration::from_secs(1), Duration::from_secs(60), seeded());
    let attempts = 10;
    let mut calls = cluster.applied_count.subscribe();
    let watch = async {
        calls
            .wait_for(|count| *count > attempts)
            .await
            .expect("cluster alive");
    };
    tokio::select! {
        () = client.run(&mut events, &mut backoff) => unreachable!(),
        () = watch => {}
    }
    let calls = cluster.applied_calls.lock().expect("lock").clone();
    let ceilings = [1u64, 2, 4, 8, 16, 32, 60, 60, 60, 60];
    for (index, pair) in calls.windows(2).take(attempts).enumerate() {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= Duration::from_secs(ceilings[index]),
            "attempt {index}: {gap:?}"
        );
        assert_eq!(gap, reference.next_delay(), "attempt {index}");
    }
    // Each failed session is counted before its backoff sleep.
    assert_eq!(metrics.reconnects.get(), calls.len() as u64);
}

#[tokio::test]
async fn a_silent_hub_is_left_after_three_heartbeat_intervals() {
    let mut hub = ScriptedHub::start().await;
    let cluster = MemCluster::default();
    let (credential, settings, metrics) = (credential(), fast_settings(), Metrics::default());
    let (_events_tx, mut events) = mpsc::channel(8);
    let client = SyncClient::new(
        channel(&endpoint(&hub)).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let mut backoff = fast_backoff();
    let agent = client.run(&mut events, &mut backoff);
    let test = async {
        let mut session = hub.session().await;
        hello(&mut session).await;
        let welcomed_at = tokio::time::Instant::now();
        session
            .send(hub_message::Body::Welcome(v1::Welcome {
                in_sync: true,
                hub_instance: "hub-0".into(),
                heartbeat_interval_ms: 100,
                max_inflight: 1,
            }))
            .await;
        // The hub says nothing more: the agent gives up on the stream after ~300 ms.
        assert!(
            session.next().await.is_none(),
            "the agent closes the silent stream"
        );
        assert!(welcomed_at.elapsed() >= Duration::from_millis(300));
        let mut session = hub.session().await;
        hello(&mut session).await;
    };
    tokio::select! {
        () = agent => unreachable!("the client runs until dropped"),
        () = test => {}
    }
}

#[tokio::test]
async fn wire_cost_of_connecting_and_of_an_in_sync_reconnect() {
    let mut hub = ScriptedHub::start().await;
    let port: u16 = hub
        .url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("hub port");
    let proxy = support::counting_proxy(([127, 0, 0, 1], port).into()).await;
    let cluster = MemCluster::default();
    *cluster.applied.lock().expect("lock") = (0..50)
        .map(|i| {
            (
                format!("secret-{i}"),
                Applied {
                    revision: 100 + i,
                    sha256: [i as u8; 32],
                },
            )
        })
        .collect();
    let (credential, settings, metrics) = (credential(), fast_settings(), Metrics::default());
    let via_proxy = HubEndpoint {
        url: format!("https://localhost:{}", proxy.addr.port()),
        ca_pem: Some(hub.ca_pem.clone()),
    };
    let (_events_tx, mut events) = mpsc::channel(8);
    let client = SyncClient::new(
        channel(&via_proxy).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let mut backoff = fast_backoff();
    let agent = client.run(&mut events, &mut backoff);
    let sent = || proxy.sent_by_client.load(Ordering::SeqCst);
    let test = async {
        let mut session = hub.session().await;
        hello(&mut session).await;
        let first_connect = sent();
        session.send(welcome(true)).await;
        session
            .send(hub_message::Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms: 1 }))
            .await;
        assert!(matches!(session.recv().await, agent_message::Body::Heartbeat(_)));
        let before = sent();
        session
            .send(hub_message::Body::Drain(v1::Drain {
                reconnect_after_ms: 0,
                reason: "rebalance".into(),
            }))
            .await;
        let mut session = hub.session().await;
        hello(&mut session).await;
        let reconnect = sent() - before;
        eprintln!(
            "agent -> hub bytes on the wire: first connect (TLS + HTTP/2 + Hello) {first_connect}, \
             in-sync reconnect on the open connection {reconnect}"
        );
        assert!(reconnect <= 512, "in-sync reconnect sent {reconnect} bytes");
        assert!(first_connect <= 4096, "first connect sent {first_connect} bytes");
    };
    tokio::select! {
        () = agent => unreachable!("the client runs until dropped"),
        () = test => {}
    }
}

#[tokio::test]
async fn drift_found_while_disconnected_is_reported_after_welcome_without_an_extra_reconnect() {
    let mut hub = ScriptedHub::start().await;
    let cluster = MemCluster::default();
    cluster.unavailable.store(true, Ordering::SeqCst);
    let (credential, settings, metrics) = (credential(), fast_settings(), Metrics::default());
    let (events_tx, mut events) = mpsc::channel(8);
    let drift = ClusterEvent::Drift {
        key: "regcred".into(),
        namespace: "a".into(),
        kind: DriftKind::Modified,
        revision: 2,
    };
    events_tx.send(drift).await.expect("queued");
    events_tx.send(ClusterEvent::Resync).await.expect("queued");
    let client = SyncClient::new(
        channel(&endpoint(&hub)).expect("channel"),
        &credential,
        &settings,
        &cluster,
        &metrics,
    );
    let mut backoff = fast_backoff();
    let agent = client.run(&mut events, &mut backoff);
    let test = async {
        // Let a few sessions fail on the unreadable cluster, then let it answer.
        let mut calls = cluster.applied_count.subscribe();
        calls.wait_for(|count| *count >= 3).await.expect("cluster alive");
        cluster.unavailable.store(false, Ordering::SeqCst);
        let mut session = hub.session().await;
        hello(&mut session).await;
        session.send(welcome(true)).await;
        let agent_message::Body::Drift(report) = session.recv().await else {
            panic!("expected the drift report");
        };
        assert_eq!(
            (report.key.as_str(), report.namespace.as_str(), report.revision),
            ("regcred", "a", 2)
        );
        // The queued resync did not close this stream: it still answers heartbeats.
        session
            .send(hub_message::Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms: 1 }))
            .await;
        assert!(matches!(session.recv().await, agent_message::Body::Heartbeat(_)));
    };
    tokio::select! {
        () = agent => unreachable!("the client runs until dropped"),
        () = test => {}
    }
}
