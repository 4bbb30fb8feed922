//! Fleet truth beyond "latest", through a real `keyfleet serve` on Postgres: protocol-level agents
//! apply, refuse and report drift; the CLI (the real binary) then reads when each cluster got each
//! revision (`keyfleet history`), the repaired drift (`keyfleet drift`), the audit log with the
//! Key Vault version that started the rotation and each wave (`keyfleet audit`), the rollout
//! history, and rolls back with `keyfleet rollout undo` without typing a version id.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use keyfleet_proto::v1;
use keyfleet_testkit::agent::{Applied, TestAgent, enroll};
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use serde_json::Value;
use support::TestDb;
use support::serve::{ServeEnv, ServeProcess, docker_config, regcred_spec};

const KEY: &str = "regcred";

/// Runs the `keyfleet` CLI against `hub`; returns stdout (panics with stderr on failure).
fn cli(env: &ServeEnv, hub: &ServeProcess, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args(args)
        .env(
            "KEYFLEET_HUB",
            format!("https://localhost:{}", hub.grpc_addr.port()),
        )
        .env("KEYFLEET_HUB_CA", env.dir.path().join("tls").join("ca.pem"))
        .env("KEYFLEET_ADMIN_TOKEN", &env.admin_token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "keyfleet {}: {}\n{stdout}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json(env: &ServeEnv, hub: &ServeProcess, args: &[&str]) -> Vec<Value> {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str::<Value>(&cli(env, hub, &args))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Re-runs `args` until `done` holds on its JSON rows (history is written in batches), for at
/// most 20 s.
async fn json_until(
    env: &ServeEnv,
    hub: &ServeProcess,
    args: &[&str],
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = json(env, hub, args);
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "keyfleet {}: {rows:#?}",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agent(env: &ServeEnv, hub: &ServeProcess, token: &str) -> TestAgent {
    let address = env.hub_address(hub);
    let credential = enroll(&address, token).await.unwrap().credential;
    let mut agent = TestAgent::connect(&address, &credential, Applied::default())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_drift_audit_and_undo_through_the_cli() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let first_version = kv.set_secret("acr-pull", &docker_config("one"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let hub = ServeProcess::start(&env, "hub-a", "127.0.0.1:0".parse().unwrap()).await;
    let mut admin = env.admin(&hub).await;
    // All at once (no waves): every cluster gets each revision.
    let spec = regcred_spec(kv.vault_url());
    let spec = &spec[..spec.find("rollout:").unwrap()];
    admin
        .apply_specs(v1::ApplySpecsRequest {
            files: vec![v1::SpecFile {
                name: "regcred.yaml".to_owned(),
                content: spec.to_owned(),
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let mut agents = Vec::new();
    for name in ["prod-1", "prod-2"] {
        let token = admin
            .create_cluster(v1::CreateClusterRequest {
                name: name.to_owned(),
                labels: [("env".to_owned(), "prod".to_owned())].into_iter().collect(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap()
            .token;
        agents.push(agent(&env, &hub, &token).await);
    }
    // Revision 1 everywhere; prod-2 then repairs a deleted Secret in `ci`.
    let mut first = 0;
    for agent in &mut agents {
        let update = agent.update().await.unwrap();
        first = update.upserts[0].revision;
        agent.apply_and_ack(&update).await.unwrap();
    }
    agents[1]
        .send(v1::agent_message::Body::Drift(v1::DriftReport {
            key: KEY.to_owned(),
            namespace: "ci".to_owned(),
            kind: v1::DriftKind::Deleted as i32,
            revision: first,
            failure: String::new(),
        }))
        .await
        .unwrap();
    // prod-1 could not repair an edited Secret: the report says so.
    agents[0]
        .send(v1::agent_message::Body::Drift(v1::DriftReport {
            key: KEY.to_owned(),
            namespace: "default".to_owned(),
            kind: v1::DriftKind::Modified as i32,
            revision: first,
            failure: "secrets \"regcred\" is forbidden".to_owned(),
        }))
        .await
        .unwrap();

    // A rotation: prod-1 applies it, prod-2 refuses it.
    let second_version = kv.set_secret("acr-pull", &docker_config("two"), &[]).unwrap();
    cli(&env, &hub, &["sync-now"]);
    let update = agents[0].update().await.unwrap();
    let second = update.upserts[0].revision;
    assert!(second > first);
    agents[0].apply_and_ack(&update).await.unwrap();
    let update = agents[1].update().await.unwrap();
    agents[1]
        .nack(
            &update,
            v1::ErrorCode::Forbidden,
            false,
            "secrets \"regcred\" is forbidden",
        )
        .await
        .unwrap();

    // keyfleet history: when each cluster got each revision, and the refusal.
    let rows = json_until(&env, &hub, &["history", KEY], |rows| rows.len() >= 4).await;
    let summary: Vec<(String, u64, String)> = rows
        .iter()
        .map(|row| {
            (
                row["cluster"].as_str().unwrap().to_owned(),
                row["revision"].as_u64().unwrap(),
                row["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("prod-1".to_owned(), first, "applied".to_owned()),
        ("prod-2".to_owned(), first, "applied".to_owned()),
        ("prod-1".to_owned(), second, "applied".to_owned()),
        ("prod-2".to_owned(), second, "refused".to_owned()),
    ] {
        assert!(summary.contains(&expected), "{expected:?} in {summary:?}");
    }
    let refused = rows.iter().find(|row| row["outcome"] == "refused").unwrap();
    assert_eq!(refused["error"], "forbidden: secrets \"regcred\" is forbidden");
    let only_prod_1 = json(&env, &hub, &["history", KEY, "--cluster", "prod-1"]);
    assert!(only_prod_1.iter().all(|row| row["cluster"] == "prod-1") && only_prod_1.len() == 2);
    assert!(json(&env, &hub, &["history", KEY, "--since", "2099-01-01T00:00:00Z"]).is_empty());
    let table = cli(&env, &hub, &["history", KEY]);
    assert!(table.starts_with("TIME") && table.contains("refused"), "{table}");

    // keyfleet drift: the repaired Secret, with cluster, namespace and kind.
    let drift = json_until(&env, &hub, &["drift", "--since", "1h"], |rows| rows.len() >= 2).await;
    assert_eq!(drift.len(), 2, "{drift:?}");
    let repaired = drift.iter().find(|row| row["cluster"] == "prod-2").unwrap();
    assert_eq!(
        (
            &repaired["namespace"],
            &repaired["kind"],
            &repaired["restoredRevision"],
            &repaired["repaired"]
        ),
        (
            &Value::from("ci"),
            &Value::from("deleted"),
            &Value::from(first),
            &Value::from(true)
        )
    );
    let unrepaired = drift.iter().find(|row| row["cluster"] == "prod-1").unwrap();
    assert_eq!(unrepaired["repaired"], false);
    assert_eq!(unrepaired["failure"], "secrets \"regcred\" is forbidden");
    // keyfleet status: the DRIFT column counts the last 24 hours, unrepaired ones named.
    let status = cli(&env, &hub, &["status", KEY, "-o", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        (status["drift"].as_u64(), status["driftUnrepaired"].as_u64()),
        (Some(2), Some(1)),
        "{status:#}"
    );
    let table = cli(&env, &hub, &["status"]);
    assert!(
        table.contains("DRIFT") && table.contains("2 (1 unrepaired)"),
        "{table}"
    );

    // keyfleet audit: the admin's changes and the Key Vault version that started the rotation.
    let audit = json(&env, &hub, &["audit"]);
    let has = |actor_prefix: &str, action: &str, subject_part: &str| {
        audit.iter().any(|event| {
            event["actor"].as_str().unwrap().starts_with(actor_prefix)
                && event["action"] == action
                && event["subject"].as_str().unwrap().contains(subject_part)
        })
    };
    assert!(has("hub", "keyvault.version", &second_version), "{audit:#?}");
    assert!(has("token", "cluster.create", "prod-2"), "{audit:#?}");
    let hub_only = json(&env, &hub, &["audit", "--actor", "hub"]);
    assert!(!hub_only.is_empty() && hub_only.iter().all(|event| event["actor"] == "hub"));

    // keyfleet rollout undo: pins the previous revision's versions, no id typed; the fleet
    // goes back to the first value.
    let undone = cli(&env, &hub, &["rollout", "undo", KEY]);
    assert!(undone.contains(&format!("acr-pull@{first_version}")), "{undone}");
    let update = agents[0].update().await.unwrap();
    let third = update.upserts[0].revision;
    assert!(third > second);
    agents[0].apply_and_ack(&update).await.unwrap();
    let history = cli(&env, &hub, &["rollout", "history", KEY, "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    let revisions = history["revisions"].as_array().unwrap();
    assert_eq!(
        revisions
            .iter()
            .map(|r| r["revision"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [third, second, first],
        "newest first"
    );
    assert_eq!(
        revisions[2]["sources"][0]["version"],
        Value::from(first_version.clone())
    );
    assert_eq!(revisions[1]["sources"][0]["version"], Value::from(second_version));
    assert_eq!(
        revisions[2]["applied"], 2,
        "both clusters applied the first revision"
    );
    assert_eq!(
        (revisions[1]["applied"].as_u64(), revisions[1]["refused"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["action"] == "rollout.undo"),
        "{history:#}"
    );
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args(["rollout", "undo", "nope"])
        .env(
            "KEYFLEET_HUB",
            format!("https://localhost:{}", hub.grpc_addr.port()),
        )
        .env("KEYFLEET_HUB_CA", env.dir.path().join("tls").join("ca.pem"))
        .env("KEYFLEET_ADMIN_TOKEN", &env.admin_token)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(4),
        "an unknown FleetSecret is not found"
    );
    assert!(Path::new(env!("CARGO_BIN_EXE_keyfleet")).exists());
}
