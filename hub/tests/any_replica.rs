//! Any replica, the same answers: two real `keyfleet serve` processes on one scratch Postgres,
//! the CLI's calls and Event Grid's notifications all sent to the replica that does NOT lead the
//! Key Vault pollers. `sync-now` is forwarded to the leader through the store and answered with
//! what the leader polled; store health is what the leader published; a Key Vault event (Event
//! Grid and CloudEvents schemas) is fetched at once although the poll interval is an hour.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use serde_json::{Value, json};
use support::serve::{LEADS, ServeEnv, ServeProcess, all_agents, docker_config, regcred_spec, start_agents};
use support::{TestDb, within};

const KEY: &str = "regcred";
const CONVERGE: Duration = Duration::from_secs(90);
/// A notification must reach the fleet long before the (hour-long) poll interval.
const EVENT_BOUND: Duration = Duration::from_secs(10);
const CODE: &str = "kfeg-0123456789abcdef0123456789";

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A Key Vault `SecretNewVersionCreated` event in the Event Grid schema.
fn eventgrid_event(vault: &str, secret: &str) -> Value {
    json!([{
        "id": uuid::Uuid::new_v4().to_string(),
        "topic": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}"),
        "subject": secret,
        "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
        "eventTime": "2026-12-04T10:00:00.0000000Z",
        "dataVersion": "1",
        "metadataVersion": "1",
        "data": {
            "Id": format!("https://{vault}.vault.azure.net/secrets/{secret}/0123456789abcdef0123456789abcdef"),
            "VaultName": vault, "ObjectType": "Secret", "ObjectName": secret,
            "Version": "0123456789abcdef0123456789abcdef", "NBF": null, "EXP": null
        }
    }])
}

/// The same event in the CloudEvents 1.0 schema.
fn cloudevent(vault: &str, secret: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "source": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}"),
        "subject": secret,
        "type": "Microsoft.KeyVault.SecretNewVersionCreated",
        "time": "2026-12-04T10:00:00.0000000Z",
        "data": {
            "Id": format!("https://{vault}.vault.azure.net/secrets/{secret}/fedcba9876543210fedcba9876543210"),
            "VaultName": vault, "ObjectType": "Secret", "ObjectName": secret,
            "Version": "fedcba9876543210fedcba9876543210", "NBF": null, "EXP": null
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_now_store_health_and_event_grid_answer_the_same_on_a_replica_that_does_not_lead() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config("one"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let code_file = env.dir.path().join("eventgrid-code");
    std::fs::write(&code_file, format!("{CODE}\n")).unwrap();
    let code_path = code_file.display().to_string();
    let extra = [
        "--eventgrid-addr",
        "127.0.0.1:0",
        "--eventgrid-code-file",
        code_path.as_str(),
    ];
    let a = ServeProcess::start_with(&env, "hub-a", any_port(), &extra).await;
    let b = ServeProcess::start_with(&env, "hub-b", any_port(), &extra).await;
    assert!(a.logged(LEADS) && !b.logged(LEADS), "hub-a leads, hub-b does not");

    // Everything below talks to b only. An hour-long poll interval: only sync-now and events
    // bring a new version before the test ends.
    let mut admin = env.admin(&b).await;
    let spec = regcred_spec(kv.vault_url()).replace("pollInterval: 30s", "pollInterval: 1h");
    assert!(spec.contains("pollInterval: 1h"));
    admin
        .apply_specs(v1::ApplySpecsRequest {
            files: vec![v1::SpecFile {
                name: "regcred.yaml".to_owned(),
                content: spec,
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for index in 0..3 {
        let ring = if index == 0 { "canary" } else { "main" };
        let created = admin
            .create_cluster(v1::CreateClusterRequest {
                name: format!("cluster-{index}"),
                labels: [("env", "prod"), ("ring", ring)]
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .collect(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(created.token.unwrap().token);
    }
    let agents = start_agents(&[env.hub_address(&b)], tokens);
    let revision = |n: u64| move |state: &keyfleet_testkit::agent::AgentState| state.revision(KEY) >= Some(n);
    all_agents(
        CONVERGE,
        &agents,
        "every cluster gets the first revision",
        revision(1),
    )
    .await;

    // Store health on b: what the leader published after its first sweep.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stores = admin
            .list_stores(v1::ListStoresRequest {})
            .await
            .unwrap()
            .into_inner()
            .stores;
        let store = stores.iter().find(|store| store.name == "shared-kv").unwrap();
        if store.healthy {
            assert_eq!(store.last_error, "");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never reports the leader's poll: {store:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // sync-now on b: forwarded, answered with what the leader polled.
    kv.set_secret("acr-pull", &docker_config("two"), &[]).unwrap();
    let started = Instant::now();
    let polled = within(
        Duration::from_secs(35),
        "sync-now on b",
        admin.sync_now(v1::SyncNowRequest { store: String::new() }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(polled.stores, ["shared-kv"]);
    assert_eq!(polled.new_versions, 1, "{polled:?}");
    println!(
        "sync-now forwarded through the store: answered in {:?}",
        started.elapsed()
    );
    let unknown = admin
        .sync_now(v1::SyncNowRequest {
            store: "nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    all_agents(
        CONVERGE,
        &agents,
        "every cluster gets the sync-now version",
        revision(2),
    )
    .await;

    // Event Grid on b: the subscription handshake, then a new version, fetched at once.
    let webhook = format!("http://{}/eventgrid/keyvault", b.eventgrid_addr.unwrap());
    let client = http();
    let validation = json!([{
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66", "topic": "/subscriptions/x", "subject": "",
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-12-04T10:00:00Z", "dataVersion": "2", "metadataVersion": "1",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                 "validationUrl": "https://rp-eastus2.eventgrid.azure.net/validate?id=x"}
    }]);
    let answer = client
        .post(format!("{webhook}?code={CODE}"))
        .json(&validation)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    );
    let handshake = client
        .request(reqwest::Method::OPTIONS, format!("{webhook}?code={CODE}"))
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    assert_eq!(
        handshake.headers()["webhook-allowed-origin"],
        "eventgrid.azure.net"
    );
    let refused = client
        .post(format!("{webhook}?code=wrong-code-0123456789"))
        .json(&validation)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let vault = kv
        .vault_url()
        .host_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    for (round, event) in [
        (3, eventgrid_event(&vault, "acr-pull")),
        (4, cloudevent(&vault, "acr-pull")),
    ] {
        kv.set_secret("acr-pull", &docker_config(&format!("round-{round}")), &[])
            .unwrap();
        let sent = Instant::now();
        let delivered = client
            .post(format!("{webhook}?code={CODE}"))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(delivered.status(), 200);
        assert_eq!(
            delivered.json::<Value>().await.unwrap(),
            json!({"fetches": 0, "forwarded": 1}),
            "b does not lead: it forwards"
        );
        within(
            EVENT_BOUND,
            "the event's version reaches the canary",
            agents[0].wait_for(revision(round)),
        )
        .await;
        println!(
            "event grid ({}) on a non-leader → first agent write: {:?}",
            if event.is_array() {
                "Event Grid schema"
            } else {
                "CloudEvents"
            },
            sent.elapsed()
        );
        all_agents(
            CONVERGE,
            &agents,
            "every cluster gets the event's version",
            revision(round),
        )
        .await;
    }
    drop(a);
}

#[test]
fn serve_refuses_an_event_grid_webhook_without_a_code() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args(["serve", "--eventgrid-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--eventgrid-code-file"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("code");
    std::fs::write(&short, "short").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args([
            "serve",
            "--database",
            "sqlite::memory:",
            "--migrate",
            "--tls-self-signed",
        ])
        .arg(dir.path().join("tls"))
        .args(["--grpc-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
        .args(["--eventgrid-addr", "127.0.0.1:0", "--eventgrid-code-file"])
        .arg(&short)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
    assert!(
        !stderr.contains("short\n"),
        "the code itself is not printed: {stderr}"
    );
}
