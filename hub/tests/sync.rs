//! The Sync stream end to end: real tonic over TLS on loopback, protocol-level test agents.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use keyfleet_hub::fleet::{FleetEvent, NackCode, RemovalPolicy};
use keyfleet_hub::grpc::sync::{RETRY_AFTER_MS, SyncConfig};
use keyfleet_hub::spec::DeletionPolicy;
use keyfleet_proto::v1::{self, agent_message, hub_message};
use support::*;
use tonic::Code;

#[tokio::test]
async fn streams_need_a_known_credential_and_the_identity_comes_from_it() {
    let hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    let (other, _) = hub.enroll(2);
    hub.fleet
        .set_desired(other, desired(&[revision("other-secret", 1, b"x")]));

    let missing = TestAgent::connect_with(&hub.endpoint, None, Applied::new(), HelloOptions::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("authorization"), "{missing:?}");

    let forged = keyfleet_hub::fleet::credentials::new_credential();
    let wrong = TestAgent::connect(&hub.endpoint, &forged, Applied::new())
        .await
        .err()
        .expect("refused");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(!wrong.message().contains(&forged), "never echo a credential");
    assert_eq!(hub.fleet.connected_count(), 0);

    // A valid credential serves its own cluster only: nothing of `other` is sent.
    hub.fleet.set_desired(cluster, desired(&[]));
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    let welcome = agent.handshake().await.unwrap();
    assert!(welcome.in_sync, "empty desired set, empty agent");
    assert!(hub.fleet.is_connected(cluster));
    assert!(!hub.fleet.is_connected(other));
}

#[tokio::test]
async fn an_in_sync_reconnect_costs_at_most_100_bytes() {
    let mut hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    let items: Vec<_> = (0..50)
        .map(|n| revision(&format!("secret-{n}"), 100 + n, &[7u8; 2048]))
        .collect();
    hub.fleet.set_desired(cluster, desired(&items));
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, applied_of(&items))
        .await
        .unwrap();
    let welcome = agent.handshake().await.unwrap();
    assert!(welcome.in_sync);
    assert_eq!(welcome.hub_instance, "test-hub");
    assert_eq!(welcome.max_inflight, 4);
    let connected = hub
        .event(|event| match event {
            FleetEvent::Connected { in_sync, applied, .. } => Some((*in_sync, applied.len())),
            _ => None,
        })
        .await;
    assert_eq!(connected, (true, 50));
    // Nothing is queued behind the Welcome: the next message is the drain we trigger now.
    hub.fleet.drain();
    let bytes_before_drain = agent.received_bytes;
    match agent.next_body().await.unwrap() {
        Some(hub_message::Body::Drain(_)) => {}
        other => panic!("expected drain, got {other:?}"),
    }
    assert!(
        bytes_before_drain <= 100,
        "in-sync reconnect cost {bytes_before_drain} bytes"
    );
}

#[tokio::test]
async fn need_versions_pages_and_only_the_difference_is_sent() {
    let mut hub = Hub::start_with(
        default_fleet_config(),
        SyncConfig {
            page_size: 2,
            ..SyncConfig::default()
        },
    )
    .await;
    let (cluster, credential) = hub.enroll(1);
    let a1 = revision("a", 1, b"a-one");
    let a2 = revision("a", 2, b"a-two");
    let b1 = revision("b", 1, b"b-one");
    let c1 = revision("c", 1, b"c-one");
    let d1 = revision("d", 1, b"d-one");
    let e1 = revision("e", 1, b"e-one");
    hub.fleet.set_desired(cluster, {
        let mut set = (*desired(&[a2.clone(), b1.clone(), c1.clone(), e1.clone()])).clone();
        set.removals.insert("d".to_owned(), DeletionPolicy::Delete);
        std::sync::Arc::new(set)
    });
    // Holds a at an old revision, b current, d no longer wanted, e current: 4 items, 2 pages.
    let mut agent = TestAgent::connect(
        &hub.endpoint,
        &credential,
        applied_of(&[a1, b1.clone(), d1, e1.clone()]),
    )
    .await
    .unwrap();
    match agent.next_body().await.unwrap() {
        Some(hub_message::Body::NeedVersions(need)) => assert_eq!(need.page_size, 2),
        other => panic!("expected need_versions, got {other:?}"),
    }
    agent.send_pages(2).await.unwrap();
    let welcome = agent.handshake().await.unwrap();
    assert!(!welcome.in_sync);
    let update = agent.update().await.unwrap();
    assert_eq!(update.nonce, 1);
    let upserts: Vec<(&str, u64)> = update
        .upserts
        .iter()
        .map(|payload| (payload.key.as_str(), payload.revision))
        .collect();
    assert_eq!(upserts, [("a", 2), ("c", 1)]);
    assert_eq!(
        update.removals,
        [v1::Removal {
            key: "d".to_owned(),
            deletion_policy: v1::DeletionPolicy::Delete as i32
        }]
    );
    assert_eq!(update.upserts[0].data["value"], b"a-two");
    agent.apply_and_ack(&update).await.unwrap();
    let mut acked = Vec::new();
    while acked.len() < 3 {
        let event = hub
            .event(|event| match event {
                FleetEvent::Acked { key, revision, .. } => Some(format!("{key}@{revision}")),
                FleetEvent::Removed { key, .. } => Some(format!("{key} removed")),
                _ => None,
            })
            .await;
        acked.push(event);
    }
    acked.sort();
    assert_eq!(acked, ["a@2", "c@1", "d removed"]);
    // The agent now holds exactly the desired set: a reconnect is in sync.
    drop(agent);
    let expected = applied_of(&[a2, b1, c1, e1]);
    let mut again = TestAgent::connect(&hub.endpoint, &credential, expected)
        .await
        .unwrap();
    assert!(again.handshake().await.unwrap().in_sync);
}

#[tokio::test]
async fn rotations_coalesce_and_relabelling_removes_with_the_policy() {
    let hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    hub.fleet
        .set_desired(cluster, desired(&[revision("a", 1, b"one")]));
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    assert!(!agent.handshake().await.unwrap().in_sync);
    let first = agent.update().await.unwrap();
    assert_eq!(first.upserts[0].revision, 1);
    // Three rotations while revision 1 is unacknowledged: only the newest is sent afterwards.
    for n in 2..=4 {
        hub.fleet
            .set_desired(cluster, desired(&[revision("a", n, b"next")]));
    }
    agent.apply_and_ack(&first).await.unwrap();
    let second = agent.update().await.unwrap();
    assert_eq!((second.nonce, second.upserts[0].revision), (2, 4));
    agent.apply_and_ack(&second).await.unwrap();
    // Relabel: the cluster no longer matches "a" (deletionPolicy Delete from the spec).
    let mut set = (*desired(&[])).clone();
    set.removals.insert("a".to_owned(), RemovalPolicy::Delete);
    hub.fleet.set_desired(cluster, std::sync::Arc::new(set));
    let third = agent.update().await.unwrap();
    assert!(third.upserts.is_empty());
    assert_eq!(third.removals[0].key, "a");
    assert_eq!(
        third.removals[0].deletion_policy,
        v1::DeletionPolicy::Delete as i32
    );
}

#[tokio::test]
async fn a_nack_is_reported_with_its_reason_and_retried_with_backoff() {
    let mut hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    hub.fleet
        .set_desired(cluster, desired(&[revision("a", 5, b"value")]));
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    let update = agent.update().await.unwrap();
    agent
        .send(agent_message::Body::Ack(v1::Ack {
            nonce: update.nonce,
            results: vec![v1::ItemResult {
                key: "a".to_owned(),
                revision: 5,
                error: Some(v1::ItemError {
                    code: v1::ErrorCode::NamespaceMissing as i32,
                    retryable: true,
                    message: "namespace \"default\" not found".to_owned(),
                }),
            }],
        }))
        .await
        .unwrap();
    let (code, message, attempts) = hub
        .event(|event| match event {
            FleetEvent::Nacked {
                code,
                message,
                attempts,
                retryable: true,
                ..
            } => Some((*code, message.clone(), *attempts)),
            _ => None,
        })
        .await;
    assert_eq!(code, NackCode::NamespaceMissing);
    assert!(message.contains("not found"));
    assert_eq!(attempts, 1);
    // The retry arrives after the backoff, as a new update for the same revision.
    let retry = agent.update().await.unwrap();
    assert_eq!((retry.nonce, retry.upserts[0].revision), (2, 5));
    agent.apply_and_ack(&retry).await.unwrap();
    hub.event(|event| matches!(event, FleetEvent::Acked { revision: 5, .. }).then_some(()))
        .await;
}

#[tokio::test]
async fn revoke_ends_the_stream_within_a_second_and_refuses_it_afterwards() {
    let hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    let started = std::time::Instant::now();
    hub.credentials.revoke_cluster(cluster);
    hub.fleet.revoke(cluster);
    let status = within(Duration::from_secs(1), "revocation", agent.end())
        .await
        .expect_err("ended with a status");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(started.elapsed() < Duration::from_secs(1));
    let again = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .err()
        .expect("refused");
    assert_eq!(again.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_second_stream_replaces_the_first() {
    let hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    let mut first = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    first.handshake().await.unwrap();
    let mut second = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    second.handshake().await.unwrap();
    let status = first.end().await.expect_err("replaced");
    assert_eq!(status.code(), Code::Aborted);
    assert!(hub.fleet.is_connected(cluster));
    assert_eq!(hub.fleet.connected_count(), 1);
    hub.fleet.set_desired(cluster, desired(&[revision("a", 1, b"v")]));
    assert_eq!(second.update().await.unwrap().upserts[0].key, "a");
}

#[tokio::test]
async fn drain_sends_jittered_reconnect_delays_and_closes() {
    let hub = Hub::start().await;
    let mut agents = Vec::new();
    for n in 0..10 {
        let (_, credential) = hub.enroll(n);
        let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
            .await
            .unwrap();
        agent.handshake().await.unwrap();
        agents.push(agent);
    }
    assert_eq!(hub.fleet.drain(), 10);
    let mut delays = std::collections::BTreeSet::new();
    for agent in &mut agents {
        match agent.next_body().await.unwrap() {
            Some(hub_message::Body::Drain(drain)) => {
                assert!(drain.reconnect_after_ms <= 2_000);
                assert_eq!(drain.reason, "shutdown");
                delays.insert(drain.reconnect_after_ms);
            }
            other => panic!("expected drain, got {other:?}"),
        }
        agent.end().await.expect("clean end after drain");
    }
    assert!(delays.len() > 1, "jittered: {delays:?}");
    within(PROMPT, "all streams closed", hub.fleet.idle()).await;
    let (_, credential) = hub.enroll(99);
    let refused = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .err()
        .expect("refused while draining");
    assert_eq!(refused.code(), Code::Unavailable);
}

#[tokio::test]
async fn the_admission_bucket_refuses_floods_with_a_retry_hint() {
    let hub = Hub::start_with(
        default_fleet_config(),
        SyncConfig {
            admission_per_second: 0.2,
            admission_burst: 3,
            ..SyncConfig::default()
        },
    )
    .await;
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for n in 0..6 {
        let (_, credential) = hub.enroll(n);
        match TestAgent::connect(&hub.endpoint, &credential, Applied::new()).await {
            Ok(agent) => admitted.push(agent),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(admitted.len(), 3, "the burst is admitted, the rest refused");
    let hints: Vec<u64> = refused
        .iter()
        .map(|status| {
            assert_eq!(status.code(), Code::ResourceExhausted);
            status
                .status()
                .expect("a gRPC status")
                .metadata()
                .get(RETRY_AFTER_MS)
                .expect("retry hint")
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // The refused are queued one admission period (5 s at 0.2/s) apart, jittered within
    // their slot: the first within two periods, each at or after the previous one's slot, all
    // within the queue's 30 s horizon.
    let period_ms = 5_000;
    assert!(hints.iter().all(|hint| *hint <= 30_000), "{hints:?}");
    assert!(hints[0] >= 1 && hints[0] <= 2 * period_ms + 1000, "{hints:?}");
    assert!(
        hints.windows(2).all(|pair| pair[1] + 1000 >= pair[0]),
        "{hints:?}"
    );
    assert!(hints[2] >= hints[0] + period_ms - 1000, "{hints:?}");
    // The admitted ones are served normally.
    for agent in &mut admitted {
        assert!(agent.handshake().await.unwrap().in_sync);
    }
}

#[tokio::test]
async fn protocol_violations_get_a_named_status_and_nothing_is_recorded() {
    let mut hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);

    // Wrong protocol version.
    let mut agent = TestAgent::connect_with(
        &hub.endpoint,
        Some(&credential),
        Applied::new(),
        HelloOptions {
            protocol: 2,
            ..HelloOptions::default()
        },
    )
    .await
    .unwrap();
    let status = agent.end().await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("hello.protocol"), "{status:?}");

    // Acking a key it was never sent.
    hub.fleet.set_desired(cluster, desired(&[revision("a", 1, b"v")]));
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    let update = agent.update().await.unwrap();
    agent
        .send(agent_message::Body::Ack(v1::Ack {
            nonce: update.nonce,
            results: vec![
                v1::ItemResult {
                    key: "a".to_owned(),
                    revision: 1,
                    error: None,
                },
                v1::ItemResult {
                    key: "not-sent".to_owned(),
                    revision: 1,
                    error: None,
                },
            ],
        }))
        .await
        .unwrap();
    let status = agent.end().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("not-sent"), "{status:?}");

    // An ack for a nonce never sent.
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    agent.update().await.unwrap();
    agent
        .send(agent_message::Body::Ack(v1::Ack {
            nonce: 77,
            results: vec![],
        }))
        .await
        .unwrap();
    let status = agent.end().await.expect_err("refused");
    assert!(status.message().contains("ack.nonce"), "{status:?}");

    // A page larger than asked for.
    let held: Applied = (0..1_001)
        .map(|n| (format!("k{n}"), (1, vec![0u8; 32])))
        .collect();
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, held)
        .await
        .unwrap();
    match agent.next_body().await.unwrap() {
        Some(hub_message::Body::NeedVersions(_)) => {}
        other => panic!("expected need_versions, got {other:?}"),
    }
    agent.send_pages(1_001).await.unwrap();
    let status = agent.end().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("version_page.items"), "{status:?}");

    // A message above the 4 MiB limit.
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    agent
        .send(agent_message::Body::Drift(v1::DriftReport {
            key: "a".repeat(5 * 1024 * 1024),
            ..v1::DriftReport::default()
        }))
        .await
        .unwrap();
    let status = agent.end().await.expect_err("refused");
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );

    // None of this recorded an ack for the cluster.
    while let Ok(event) = hub.events.try_recv() {
        assert!(
            !matches!(event, FleetEvent::Acked { .. } | FleetEvent::Nacked { .. }),
            "{event:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_agent_does_not_block_the_others_and_is_closed_when_stalled() {
    let mut config = default_fleet_config();
    config.stall_timeout = Duration::from_secs(2);
    config.max_inflight = 16;
    let mut hub = Hub::start_with(config, SyncConfig::default()).await;
    let (slow_cluster, slow_credential) = hub.enroll(10_000);
    let mut slow = TestAgent::connect(&hub.endpoint, &slow_credential, Applied::new())
        .await
        .unwrap();
    slow.handshake().await.unwrap();
    let mut others = Vec::new();
    let mut clusters = Vec::new();
    for n in 0..100 {
        let (cluster, credential) = hub.enroll(n);
        let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
            .await
            .unwrap();
        agent.handshake().await.unwrap();
        others.push(agent);
        clusters.push(cluster);
    }
    // The slow agent is flooded with 1 MiB revisions it never reads; the others get 1 KiB.
    for n in 0..16 {
        let big = revision(&format!("big-{n}"), 1, &vec![n as u8; 1024 * 1024]);
        let mut items = (*hub.fleet.desired(slow_cluster).unwrap_or_default()).clone();
        items.items.insert(big.key.clone(), big);
        hub.fleet.set_desired(slow_cluster, std::sync::Arc::new(items));
    }
    let small = desired(&[revision("rotated", 2, &[1u8; 1024])]);
    let started = std::time::Instant::now();
    hub.fleet
        .set_desired_many(clusters.iter().map(|cluster| (*cluster, small.clone())));
    let fanout = started.elapsed();
    assert!(
        fanout < Duration::from_secs(1),
        "set_desired never waits: {fanout:?}"
    );
    let received = futures::future::join_all(others.iter_mut().map(|agent| async move {
        let update = agent.update().await.unwrap();
        agent.apply_and_ack(&update).await.unwrap();
        update.upserts[0].revision
    }));
    let revisions = within(PROMPT, "100 agents receive the rotation", received).await;
    assert!(revisions.iter().all(|revision| *revision == 2));
    // The slow stream is closed once its acks stall; nothing waited for it.
    hub.event(|event| match event {
        FleetEvent::Disconnected { cluster, .. } if *cluster == slow_cluster => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(hub.fleet.metrics().stalled_closes.get(), 1);
    assert_eq!(hub.fleet.connected_count(), 100);
    drop(slow);
}

#[tokio::test]
async fn oversized_revisions_are_refused_by_the_hub_without_blocking_the_rest() {
    let mut hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    let huge = revision("huge", 1, &vec![0u8; 4 * 1024 * 1024]);
    let fine = revision("fine", 1, b"ok");
    hub.fleet.set_desired(cluster, desired(&[huge, fine]));
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    let update = agent.update().await.unwrap();
    assert_eq!(update.upserts.len(), 1);
    assert_eq!(update.upserts[0].key, "fine");
    let (key, code) = hub
        .event(|event| match event {
            FleetEvent::Nacked { key, code, .. } => Some((key.clone(), *code)),
            _ => None,
        })
        .await;
    assert_eq!((key.as_str(), code), ("huge", NackCode::TooLarge));
}

#[tokio::test]
async fn garbage_on_the_grpc_port_does_not_disturb_other_agents() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    // Plain bytes where a TLS handshake is expected, then a TLS-less HTTP/2 preface.
    for garbage in [
        vec![0xffu8; 4096],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
    ] {
        let mut socket = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        let _ = socket.write_all(&garbage).await;
        let mut sink = Vec::new();
        // The hub closes the connection (or answers with a TLS alert and closes).
        let _ = within(PROMPT, "garbage connection closed", socket.read_to_end(&mut sink)).await;
    }
    hub.fleet.set_desired(cluster, desired(&[revision("a", 1, b"v")]));
    assert_eq!(agent.update().await.unwrap().upserts[0].key, "a");
}

#[tokio::test]
async fn streams_are_refused_until_the_hub_is_ready() {
    let hub = Hub::start().await;
    let (_, credential) = hub.enroll(1);
    hub.sync.set_ready(false);
    let refused = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .err()
        .expect("not ready");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("not ready"), "{refused:?}");
    // A credential the index does not hold yet (still loading at startup) is not judged before
    // the hub is ready: the agent is told to come back, not that it was revoked.
    let unknown = keyfleet_hub::fleet::credentials::new_credential();
    let refused = TestAgent::connect(&hub.endpoint, &unknown, Applied::new())
        .await
        .err()
        .expect("not ready");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    hub.sync.set_ready(true);
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    assert!(agent.handshake().await.unwrap().in_sync);
}
