//! Fault suite, the store: real `keyfleet serve` replicas on one scratch Postgres database lose
//! the database for 20 s (new connections refused, open ones terminated, as in a failover or a
//! network blip) while agents stay connected, and Key Vault rotates during the outage. Both
//! replicas must stay up and keep their streams, and once the database is back every cluster
//! converges on the rotation and the store's status is exact.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::TestDb;
use support::serve::{
    ServeEnv, ServeProcess, all_agents, docker_config, first_revision_everywhere, fleet_setup, start_agents,
    status_until,
};

const KEY: &str = "regcred";
/// Bound for the fleet to converge on a loaded machine (a bound, never a pause).
const CONVERGE: Duration = Duration::from_secs(120);
/// How long the database is unreachable.
const OUTAGE: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_stops_no_replica_and_every_cluster_converges_after_it() {
    const CLUSTERS: usize = 12;
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config("one"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let mut a = ServeProcess::start(&env, "hub-a", any_port()).await;
    let mut b = ServeProcess::start(&env, "hub-b", any_port()).await;
    let mut admin = env.admin(&a).await;
    // Cluster 0 is the canary; clusters alternate between the two replicas.
    let tokens = fleet_setup(&mut admin, &kv, CLUSTERS, 1).await;
    let agents = start_agents(&[env.hub_address(&a), env.hub_address(&b)], tokens);
    let first = first_revision_everywhere(CONVERGE, &agents, KEY).await;
    status_until(
        KEY,
        &mut admin,
        "status shows the first revision applied",
        |status| status.revision == first && status.applied == CLUSTERS as u32,
    )
    .await;

    // The outage, with a Key Vault rotation in the middle of it.
    db.set_reachable(false).await;
    let started = Instant::now();
    kv.set_secret("acr-pull", &docker_config("two"), &[]).unwrap();
    let refused = admin
        .pin_version(v1::PinVersionRequest {
            fleet_secret: KEY.to_owned(),
            remote_key: String::new(),
            version: "0123456789abcdef0123456789abcdef".to_owned(),
        })
        .await
        .expect_err("an admin write while the store is down");
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "admin writes say the store is unavailable: {refused:?}"
    );
    // Staged fault length, not synchronisation: the replicas must ride it out.
    tokio::time::sleep(OUTAGE.saturating_sub(started.elapsed())).await;
    assert!(
        a.is_running(),
        "replica a stopped during the outage:\n{}",
        a.tail(30)
    );
    assert!(
        b.is_running(),
        "replica b stopped during the outage:\n{}",
        b.tail(30)
    );
    for (index, agent) in agents.iter().enumerate() {
        let state = agent.state();
        assert!(
            state.connected_to.is_some() && state.revision(KEY) == Some(first),
            "cluster {index} kept its stream and its revision through the outage"
        );
    }
    db.set_reachable(true).await;
    let restored = Instant::now();

    // Every cluster converges on the rotation once the store is back, through the waves.
    all_agents(
        CONVERGE,
        &agents,
        "every cluster converges on the rotation",
        |state| state.revision(KEY) > Some(first),
    )
    .await;
    let converged = restored.elapsed();
    let second = agents[0].state().revision(KEY).unwrap();
    let status = status_until(KEY, &mut admin, "status is exact after the outage", |status| {
        status.revision == second && status.applied == CLUSTERS as u32
    })
    .await;
    assert_eq!((status.targeted, status.error), (CLUSTERS as u32, 0));
    assert!(a.is_running() && b.is_running(), "both replicas are still up");
    eprintln!(
        "outage {:?}; every cluster on revision {second} {:?} after the store returned",
        OUTAGE, converged
    );
    drop(agents);
    drop((a, b));
    db.drop_db().await;
}
