//! Figures for the report (ignored by default: a measurement, not a timed test). Run with
//! `cargo test --release -p keyfleet-hub --test fanout_figures -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use keyfleet_hub::fleet::FleetEvent;
use keyfleet_hub::grpc::sync::SyncConfig;
use support::*;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn fanout_to_1000_in_process_streams() {
    const AGENTS: u128 = 1_000;
    let mut hub = Hub::start_with(
        default_fleet_config(),
        SyncConfig {
            admission_burst: 10_000,
            admission_per_second: 10_000.0,
            ..SyncConfig::default()
        },
    )
    .await;
    let before = rss_kib();
    let connect_started = Instant::now();
    let mut agents = Vec::new();
    let mut clusters = Vec::new();
    for n in 0..AGENTS {
        let (cluster, credential) = hub.enroll(n);
        let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
            .await
            .unwrap();
        agent.handshake().await.unwrap();
        agents.push(agent);
        clusters.push(cluster);
    }
    let connect_time = connect_started.elapsed();
    let after = rss_kib();
    let rotation = desired(&[revision("rotated", 2, &[7u8; 1024])]);
    let started = Instant::now();
    hub.fleet
        .set_desired_many(clusters.iter().map(|cluster| (*cluster, rotation.clone())));
    let enqueue = started.elapsed();
    let delivered = futures::future::join_all(agents.iter_mut().map(|agent| async move {
        let update = agent.update().await.unwrap();
        agent.apply_and_ack(&update).await.unwrap();
    }));
    within(PROMPT, "all delivered", delivered).await;
    let delivered_at = started.elapsed();
    let mut acked = 0;
    while acked < AGENTS {
        hub.event(|event| matches!(event, FleetEvent::Acked { .. }).then_some(()))
            .await;
        acked += 1;
    }
    let acked_at = started.elapsed();
    eprintln!(
        "agents={AGENTS} connect_all={connect_time:?} rss_per_connection_client_and_server={} KiB \
         set_desired_many={enqueue:?} all_received={delivered_at:?} all_acks_recorded={acked_at:?}",
        (after.saturating_sub(before)) / AGENTS as u64
    );
    assert_eq!(hub.fleet.connected_count(), AGENTS as usize);
    // An in-sync reconnect: everything the hub sends before we drain it.
    let applied = agents[0].applied.clone();
    let (_, credential) = hub.enroll(0);
    let mut again = TestAgent::connect(&hub.endpoint, &credential, applied)
        .await
        .unwrap();
    assert!(again.handshake().await.unwrap().in_sync);
    eprintln!("in_sync_reconnect_bytes={}", again.received_bytes);
}
