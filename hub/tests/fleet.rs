//! A rotation across a fleet, end to end: the real `keyfleet serve` process against a scratch
//! Postgres database, the Key Vault emulator as the source, the regcred example (three waves)
//! applied through the Admin API, 200 matching protocol-level test agents and one cluster whose
//! labels do not match.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use keyfleet_proto::v1;
use keyfleet_testkit::agent::{AgentConfig, Identity, RunningAgent};
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::serve::{
    ServeEnv, ServeProcess, all_agents, docker_config, first_revision_everywhere, regcred_spec, status_until,
};
use support::{TestDb, within};

const KEY: &str = "regcred";
const CLUSTERS: usize = 200;
/// Bound for the fleet to converge on a loaded machine (a bound, never a pause).
const CONVERGE: Duration = Duration::from_secs(120);

async fn add_cluster(admin: &mut keyfleet_hub::cli::Client, name: &str, labels: &[(&str, &str)]) -> String {
    admin
        .create_cluster(v1::CreateClusterRequest {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            token_ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_reaches_200_agents_and_a_cluster_that_does_not_match_never_gets_it() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config("one"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let hub = ServeProcess::start(&env, "hub-a", any_port).await;
    let mut admin = env.admin(&hub).await;
    admin
        .apply_specs(v1::ApplySpecsRequest {
            files: vec![v1::SpecFile {
                name: "regcred.yaml".to_owned(),
                content: regcred_spec(kv.vault_url()),
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for index in 0..CLUSTERS {
        let ring = if index < 5 { "canary" } else { "main" };
        tokens.push(
            add_cluster(
                &mut admin,
                &format!("prod-{index:03}"),
                &[("env", "prod"), ("ring", ring)],
            )
            .await,
        );
    }
    // Same ring, other environment: the FleetSecret selects env=prod.
    let outsider_token = add_cluster(&mut admin, "dev-000", &[("env", "dev"), ("ring", "canary")]).await;

    let address = env.hub_address(&hub);
    let start = |token: String| {
        RunningAgent::start(AgentConfig::new(vec![address.clone()], 0, Identity::Token(token)))
    };
    let agents: Vec<RunningAgent> = tokens.into_iter().map(start).collect();
    let outsider = start(outsider_token);

    let first = first_revision_everywhere(CONVERGE, &agents, KEY).await;
    status_until(
        KEY,
        &mut admin,
        "status shows the first revision applied",
        |status| status.revision == first && status.applied == CLUSTERS as u32,
    )
    .await;

    // Rotation: a new version in Key Vault, picked up by sync-now (what a poll or an Event Grid
    // notification does), through the three waves to every prod cluster.
    kv.set_secret("acr-pull", &docker_config("two"), &[]).unwrap();
    admin
        .sync_now(v1::SyncNowRequest { store: String::new() })
        .await
        .unwrap();
    all_agents(
        CONVERGE,
        &agents,
        "every prod cluster holds the rotated revision",
        |state| state.revision(KEY).is_some_and(|revision| revision > first),
    )
    .await;
    let second = agents[0].state().revision(KEY).unwrap();
    for (index, agent) in agents.iter().enumerate() {
        assert_eq!(agent.state().revision(KEY), Some(second), "prod-{index:03}");
    }
    let status = status_until(
        KEY,
        &mut admin,
        "status shows the rotation applied everywhere",
        |status| status.revision == second && status.applied == CLUSTERS as u32,
    )
    .await;
    assert_eq!(status.targeted, CLUSTERS as u32, "{status:?}");
    assert_eq!((status.pending, status.error), (0, 0), "{status:?}");

    // The outsider connected and is in sync with its (empty) set: it never received the secret.
    within(
        CONVERGE,
        "the outsider is connected",
        outsider.wait_for(|state| state.connected_to.is_some()),
    )
    .await;
    let state = outsider.state();
    assert_eq!(
        state.revision(KEY),
        None,
        "a cluster whose labels do not match got the secret"
    );
    assert!(
        state.applied.is_empty(),
        "{:?}",
        state.applied.keys().collect::<Vec<_>>()
    );

    drop((agents, outsider, admin, hub));
    db.drop_db().await;
}
