//! Replicas and restarts, end to end: real `keyfleet serve` processes against one scratch Postgres
//! database, the Key Vault emulator as the source, the regcred example (three waves) applied
//! through the Admin API, and protocol-level test agents that follow a replica failover.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::serve::{
    LEADS, ServeEnv, ServeProcess, all_agents, docker_config, first_revision_everywhere, fleet_setup,
    start_agents, status_until,
};
use support::{TestDb, within};

const KEY: &str = "regcred";
/// Bound for a fleet of agents to converge on a loaded machine (a bound, never a pause).
const CONVERGE: Duration = Duration::from_secs(90);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_mid_rotation_hands_over_and_every_cluster_converges() {
    const CLUSTERS: usize = 50;
    const CANARIES: usize = 5;
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config("one"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let mut a = ServeProcess::start(&env, "hub-a", any_port()).await;
    let b = ServeProcess::start(&env, "hub-b", any_port()).await;
    assert!(a.logged(LEADS), "the first replica leads:\n{}", a.tail(20));
    assert!(!b.logged(LEADS), "one leader:\n{}", b.tail(20));
    let mut admin_a = env.admin(&a).await;
    let tokens = fleet_setup(&mut admin_a, &kv, CLUSTERS, CANARIES).await;
    // Even-numbered clusters start on replica a, odd ones on b; each moves on when its hub fails.
    let hubs = [env.hub_address(&a), env.hub_address(&b)];
    let agents = start_agents(&hubs, tokens);

    // Every cluster gets the first revision through the three waves, served by both replicas.
    let first = first_revision_everywhere(CONVERGE, &agents, KEY).await;
    status_until(
        KEY,
        &mut admin_a,
        "status shows the first revision applied",
        |status| status.revision == first && status.applied == CLUSTERS as u32,
    )
    .await;

    // Rotation: canary 0 (on a) receives the new revision but holds its ack, so the canary wave
    // cannot complete and the rollout is mid-way when a dies.
    agents[0].hold_acks(true);
    kv.set_secret("acr-pull", &docker_config("two"), &[]).unwrap();
    admin_a
        .sync_now(v1::SyncNowRequest { store: String::new() })
        .await
        .unwrap();
    within(
        CONVERGE,
        "canary 0 receives the rotation",
        agents[0].wait_for(|state| state.held_updates > 0),
    )
    .await;
    let second = within(
        CONVERGE,
        "the other canaries apply the rotation",
        join_all(
            agents[1..CANARIES]
                .iter()
                .map(|agent| agent.wait_for(move |state| state.revision(KEY) > Some(first))),
        ),
    )
    .await[0]
        .revision(KEY)
        .unwrap();
    for (index, agent) in agents.iter().enumerate().skip(CANARIES) {
        assert_eq!(
            agent.state().revision(KEY),
            Some(first),
            "cluster {index} is beyond the canary wave"
        );
    }

    // kill -9 the leader mid-rotation.
    let killed = Instant::now();
    a.kill().await;
    all_agents(
        CONVERGE,
        &agents,
        "every agent reconnects to the survivor",
        |state| state.connected_to == Some(1),
    )
    .await;
    let reconnected = killed.elapsed();
    // The canary wave still waits for canary 0: the survivor honours the waves.
    for (index, agent) in agents.iter().enumerate().skip(CANARIES) {
        assert_eq!(
            agent.state().revision(KEY),
            Some(first),
            "cluster {index} moved on before the canary wave completed"
        );
    }
    agents[0].hold_acks(false);
    all_agents(
        CONVERGE,
        &agents,
        "every cluster converges on the rotation",
        |state| state.revision(KEY) == Some(second),
    )
    .await;
    let converged = killed.elapsed();
    b.wait_for_line(LEADS, Duration::from_secs(10)).await;
    let handed_over = killed.elapsed();
    let mut admin_b = env.admin(&b).await;
    let status = status_until(
        KEY,
        &mut admin_b,
        "status shows every cluster applied",
        |status| {
            status.revision == second
                && status.applied == CLUSTERS as u32
                && status
                    .rollout
                    .as_ref()
                    .is_some_and(|rollout| rollout.state == "complete")
        },
    )
    .await;
    assert_eq!((status.targeted, status.error), (CLUSTERS as u32, 0));
    let status_shown = killed.elapsed();

    // The survivor leads: it polls Key Vault and renders the next rotation itself.
    kv.set_secret("acr-pull", &docker_config("three"), &[]).unwrap();
    admin_b
        .sync_now(v1::SyncNowRequest { store: String::new() })
        .await
        .unwrap();
    all_agents(
        CONVERGE,
        &agents,
        "every cluster gets the next rotation",
        |state| state.revision(KEY) > Some(second),
    )
    .await;
    assert!(
        agents.iter().all(|agent| agent.state().digest_mismatches == 0),
        "every payload matched its sha256"
    );
    eprintln!(
        "failover figures ({CLUSTERS} agents): all on the survivor {:.2} s after kill -9, converged {:.2} s, \
         leadership handed over by {:.2} s, store status all applied by {:.2} s",
        reconnected.as_secs_f64(),
        converged.as_secs_f64(),
        handed_over.as_secs_f64(),
        status_shown.as_secs_f64(),
    );
    drop(agents);
    drop(b);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_mid_rollout_keeps_later_waves_on_the_previous_revision() {
    const CLUSTERS: usize = 10;
    const CANARIES: usize = 2;
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config("one"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let mut hub = ServeProcess::start(&env, "hub-a", any_port()).await;
    let mut admin = env.admin(&hub).await;
    let tokens = fleet_setup(&mut admin, &kv, CLUSTERS, CANARIES).await;
    let agents = start_agents(&[env.hub_address(&hub)], tokens);
    let first = first_revision_everywhere(CONVERGE, &agents, KEY).await;

    // Mid-rollout: the canary wave waits for canary 0's ack.
    agents[0].hold_acks(true);
    kv.set_secret("acr-pull", &docker_config("two"), &[]).unwrap();
    admin
        .sync_now(v1::SyncNowRequest { store: String::new() })
        .await
        .unwrap();
    let second = within(
        CONVERGE,
        "canary 1 applies the rotation",
        agents[1].wait_for(move |state| state.revision(KEY) > Some(first)),
    )
    .await
    .revision(KEY)
    .unwrap();
    within(
        CONVERGE,
        "canary 0 receives it",
        agents[0].wait_for(|state| state.held_updates > 0),
    )
    .await;

    // kill -9 and start again on the same port: the new process did not build the revision the
    // later waves hold, and must not move them forward (nor remove it).
    let sessions: Vec<u64> = agents.iter().map(|agent| agent.state().sessions).collect();
    let port = hub.grpc_addr;
    hub.kill().await;
    let hub = ServeProcess::start(&env, "hub-a", port).await;
    within(
        CONVERGE,
        "every agent reconnects",
        join_all(agents.iter().zip(&sessions).map(|(agent, before)| {
            let before = *before;
            agent.wait_for(move |state| state.sessions > before && state.connected_to.is_some())
        })),
    )
    .await;
    for (index, agent) in agents.iter().enumerate().skip(CANARIES) {
        let state = agent.state();
        assert_eq!(
            (state.revision(KEY), state.last_in_sync),
            (Some(first), Some(true)),
            "cluster {index}, beyond the canary wave, keeps the previous revision: {state:?}"
        );
    }
    assert!(hub.logged("previous revision restored"), "{}", hub.tail(30));

    // The rollout goes on from where it was once canary 0 answers.
    agents[0].hold_acks(false);
    all_agents(
        CONVERGE,
        &agents,
        "every cluster converges on the rotation",
        |state| state.revision(KEY) == Some(second),
    )
    .await;
    let mut admin = env.admin(&hub).await;
    status_until(KEY, &mut admin, "status shows every cluster applied", |status| {
        status.revision == second && status.applied == CLUSTERS as u32
    })
    .await;
    drop(agents);
    drop(hub);
    db.drop_db().await;
}
