//! Unit tests of the fan-out registry and its sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;
use crate::domain::Sha256;

fn cluster(n: u128) -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(n))
}

fn desired(key: &str, revision: u64) -> Arc<ClusterDesired> {
    let item = Arc::new(EncodedRevision {
        key: key.to_owned(),
        revision,
        sha256: Sha256::of(key.as_bytes()),
        payload: Bytes::from_static(b"payload"),
    });
    Arc::new(ClusterDesired {
        items: [(key.to_owned(), item)].into(),
        removals: BTreeMap::new(),
    })
}

#[tokio::test]
async fn desired_sets_are_kept_for_disconnected_clusters_and_seen_on_connect() {
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    fleet.set_desired(cluster(1), desired("a", 3));
    assert!(!fleet.is_connected(cluster(1)));
    assert_eq!(fleet.stream_churn(), 0);
    let mut session = fleet.attach(cluster(1)).expect("attach");
    assert!(fleet.is_connected(cluster(1)));
    assert_eq!(fleet.connected_count(), 1);
    assert_eq!(fleet.stream_churn(), 1);
    let update = session.next_update(Instant::now()).await.expect("update");
    assert_eq!(update.upserts[0].revision, 3);
    drop(session);
    assert_eq!(fleet.connected_count(), 0);
    assert!(!fleet.is_connected(cluster(1)));
    assert_eq!(fleet.stream_churn(), 2, "a detach is churn too");
}

#[tokio::test]
async fn in_sync_digest_is_accepted_and_nothing_is_sent() {
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    let want = desired("a", 3);
    fleet.set_desired(cluster(1), Arc::clone(&want));
    let mut session = fleet.attach(cluster(1)).expect("attach");
    assert!(!session.accept_if_in_sync(&[0u8; 32]));
    assert!(session.accept_if_in_sync(&want.digest()));
    assert!(session.next_update(Instant::now()).await.is_none());
}

#[tokio::test]
async fn a_second_stream_replaces_the_first_and_revoke_refuses_later_ones() {
    let (fleet, mut events) = Fleet::new(FleetConfig::default());
    let mut first = fleet.attach(cluster(1)).expect("attach");
    first.announce("0.1.0", true).await;
    let second = fleet.attach(cluster(1)).expect("attach");
    assert_eq!(first.close_reason(), Some(CloseReason::Replaced));
    assert_eq!(fleet.connected_count(), 1);
    drop(first);
    assert!(
        fleet.is_connected(cluster(1)),
        "the replaced stream does not detach the new one"
    );
    assert!(matches!(events.recv().await, Some(FleetEvent::Connected { .. })));
    assert!(
        events.try_recv().is_err(),
        "no Disconnected for a replaced stream"
    );
    fleet.revoke(cluster(1));
    assert_eq!(second.close_reason(), Some(CloseReason::Revoked));
    tokio::time::timeout(Duration::from_secs(1), second.woken())
        .await
        .expect("woken by revoke");
    assert_eq!(
        fleet.attach(cluster(1)).err(),
        Some(AttachError::Revoked(cluster(1)))
    );
}

#[tokio::test]
async fn drain_tells_every_stream_with_jittered_delays_and_refuses_new_ones() {
    let (fleet, _events) = Fleet::new(FleetConfig {
        drain_window: Duration::from_secs(10),
        ..FleetConfig::default()
    });
    let sessions: Vec<Session> = (0..20)
        .map(|n| fleet.attach(cluster(n)).expect("attach"))
        .collect();
    assert_eq!(fleet.drain(), 20);
    let delays: std::collections::HashSet<Duration> = sessions
        .iter()
        .map(|session| match session.close_reason() {
            Some(CloseReason::Drain { reconnect_after }) => {
                assert!(reconnect_after <= Duration::from_secs(10));
                reconnect_after
            }
            other => panic!("expected drain, got {other:?}"),
        })
        .collect();
    assert!(delays.len() > 1, "delays are jittered");
    assert_eq!(fleet.attach(cluster(99)).err(), Some(AttachError::Draining));
    let idle = fleet.clone();
    let waiter = tokio::spawn(async move { idle.idle().await });
    drop(sessions);
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("idle after the last stream")
        .expect("task");
}

#[tokio::test]
async fn set_desired_wakes_the_stream_without_waiting_for_it() {
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    let session = fleet.attach(cluster(1)).expect("attach");
    for revision in 1..=1000 {
        fleet.set_desired(cluster(1), desired("a", revision));
    }
    tokio::time::timeout(Duration::from_secs(1), session.woken())
        .await
        .expect("woken");
    assert_eq!(fleet.desired(cluster(1)).expect("set").items["a"].revision, 1000);
}

#[test]
fn metrics_register_under_the_fleet_prefix() {
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    let mut registry = Registry::with_prefix("keyfleet_hub");
    fleet.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("keyfleet_hub_fleet_connected_agents"), "{text}");
    assert!(text.contains("keyfleet_hub_fleet_stalled_closes_total"), "{text}");
}

/// The hub's fleet sends each event to the status writer, the history writer and the engine
/// itself: every open subscriber gets every event in order, a closed one is skipped, and a
/// disconnect that finds an open subscriber full is counted as dropped.
#[tokio::test]
async fn events_go_to_every_open_subscriber() {
    let (status_tx, mut status) = mpsc::channel(8);
    let (history_tx, history) = mpsc::channel(8);
    let (engine_tx, mut engine) = mpsc::channel(1);
    drop(history);
    let fleet = Fleet::with_subscribers(FleetConfig::default(), vec![status_tx, history_tx, engine_tx]);

    let mut session = fleet.attach(cluster(1)).expect("attach");
    session.announce("0.1.0", true).await;
    assert!(matches!(status.recv().await, Some(FleetEvent::Connected { .. })));
    assert!(matches!(engine.recv().await, Some(FleetEvent::Connected { .. })));
    drop(session);
    assert!(matches!(
        status.recv().await,
        Some(FleetEvent::Disconnected { .. })
    ));
    assert!(matches!(
        engine.recv().await,
        Some(FleetEvent::Disconnected { .. })
    ));
    assert_eq!(fleet.metrics().events_dropped.get(), 0);

    // The engine's channel (capacity 1) is full: the next disconnect cannot wait for it.
    let mut session = fleet.attach(cluster(2)).expect("attach");
    session.announce("0.1.0", true).await;
    drop(session);
    assert!(matches!(status.recv().await, Some(FleetEvent::Connected { .. })));
    assert!(matches!(
        status.recv().await,
        Some(FleetEvent::Disconnected { .. })
    ));
    assert!(matches!(engine.recv().await, Some(FleetEvent::Connected { .. })));
    assert!(
        engine.try_recv().is_err(),
        "the disconnect found the engine's channel full"
    );
    assert_eq!(fleet.metrics().events_dropped.get(), 1);
}
