//! `docs/install-aks.md`, checked against the charts with the real Helm: each `helm install` of the
//! guide, with its `--set` values, renders; the images, Workload Identity and hub URL it sets land
//! where they should; and every Secret and ConfigMap the rendered pods read is one the guide tells
//! the reader to create, under the same name and key. Then the guide's own `keyfleet` blocks
//! (steps 4 to 8: the admin token, the specs, the three clusters, their status, a rotation) run
//! as written, through `bash`, against a real `keyfleet serve` on Postgres and the Key Vault
//! emulator, with three agents enrolled by the tokens the guide's `cluster add -f` printed.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet_testkit::agent::{AgentConfig, Identity, RunningAgent};
use keyfleet_testkit::helm;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::TestDb;
use support::serve::{ServeEnv, ServeProcess, docker_config, first_revision_everywhere};

const NAMESPACE: &str = "keyfleet-system";
const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000c1";
const TENANT_ID: &str = "00000000-0000-0000-0000-0000000000a1";

fn guide() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/install-aks.md")).unwrap()
}

/// The guide's shell commands: fenced `sh` blocks, continuation lines joined.
fn commands(guide: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in guide.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current).trim().to_owned());
            }
        }
    }
    commands
}

/// The value of `$NAME` as the guide's step 0 (or a test stand-in) sets it.
fn substitute(text: &str) -> String {
    let variables = [
        ("$REGISTRY", "myregistry.azurecr.io"),
        ("$VERSION", "0.1.0"),
        ("$CLIENT_ID", CLIENT_ID),
        ("$TENANT_ID", TENANT_ID),
        ("$KEYFLEET_HUB", "https://keyfleet.example.com:7443"),
        ("$NAMESPACE", NAMESPACE),
    ];
    if text.starts_with("hub.url=https://localhost:") {
        return text.to_owned();
    }
    let mut text = text.to_owned();
    for (name, value) in variables {
        text = text.replace(name, value);
    }
    assert!(!text.contains('$'), "a variable the test does not know: {text}");
    text
}

/// Release, chart and `--set` values of each `helm install` of the guide.
fn installs(guide: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut installs = BTreeMap::new();
    for command in commands(guide) {
        let Some(rest) = command.strip_prefix("helm install ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let release = words[0].to_owned();
        let chart = words[1]
            .strip_prefix("deploy/charts/")
            .unwrap_or_else(|| panic!("{command}: charts come from deploy/charts"))
            .to_owned();
        let mut sets = Vec::new();
        let mut words = words[2..].iter();
        while let Some(word) = words.next() {
            match *word {
                "--set" => sets.push(substitute(words.next().unwrap())),
                "-n" => assert_eq!(substitute(words.next().unwrap()), NAMESPACE),
                other => panic!("{command}: the test does not know {other:?}"),
            }
        }
        installs.insert(chart, (release, sets));
    }
    installs
}

fn render(chart: &str, release: &str, sets: &[String]) -> Vec<serde_json::Value> {
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    helm::template(chart, release, NAMESPACE, &[], &sets)
        .unwrap_or_else(|error| panic!("{chart} as docs/install-aks.md installs it: {error}"))
        .into_iter()
        .map(|document| document.value)
        .collect()
}

/// Every (kind, name, key) of a Secret or ConfigMap a rendered pod reads.
fn references(objects: &[serde_json::Value]) -> Vec<(&'static str, String, Option<String>)> {
    let mut found = Vec::new();
    fn walk(value: &serde_json::Value, found: &mut Vec<(&'static str, String, Option<String>)>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(reference) = map.get("secretKeyRef") {
                    found.push((
                        "secret",
                        reference["name"].as_str().unwrap().to_owned(),
                        reference["key"].as_str().map(str::to_owned),
                    ));
                }
                if let Some(secret) = map.get("secret").and_then(|secret| secret["secretName"].as_str()) {
                    let items = map["secret"]["items"].as_array().cloned().unwrap_or_default();
                    let key = items
                        .first()
                        .and_then(|item| item["key"].as_str())
                        .map(str::to_owned);
                    found.push(("secret", secret.to_owned(), key));
                }
                if let Some(config_map) = map.get("configMap").and_then(|config| config["name"].as_str()) {
                    let items = map["configMap"]["items"].as_array().cloned().unwrap_or_default();
                    let key = items
                        .first()
                        .and_then(|item| item["key"].as_str())
                        .map(str::to_owned);
                    found.push(("configmap", config_map.to_owned(), key));
                }
                if let Some(reference) = map.get("configMapKeyRef") {
                    found.push((
                        "configmap",
                        reference["name"].as_str().unwrap().to_owned(),
                        reference["key"].as_str().map(str::to_owned),
                    ));
                }
                map.values().for_each(|child| walk(child, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|child| walk(child, found)),
            _ => {}
        }
    }
    for object in objects.iter().filter(|object| object["kind"] == "Deployment") {
        walk(object, &mut found);
    }
    found
}

/// Whether one of the guide's `kubectl create` commands makes `kind` `name` with `key`.
fn created(commands: &[String], kind: &str, name: &str, key: Option<&str>) -> bool {
    commands.iter().any(|command| {
        let creates = match kind {
            "secret" => {
                command.contains(&format!("create secret generic {name} "))
                    || command.contains(&format!("create secret tls {name} "))
            }
            _ => command.contains(&format!("create configmap {name} ")),
        };
        let tls_key = command.contains("create secret tls") && matches!(key, Some("tls.crt" | "tls.key"));
        creates
            && key.is_none_or(|key| {
                tls_key
                    || command.contains(&format!("--from-literal={key}="))
                    || command.contains(&format!("--from-file={key}="))
            })
    })
}

#[test]
fn the_guide_installs_both_charts_with_what_it_creates() {
    let guide = guide();
    let commands = commands(&guide);
    let installs = installs(&guide);
    assert_eq!(
        installs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["keyfleet-agent", "keyfleet-hub"],
        "the guide installs both charts"
    );
    assert!(
        !created(&commands, "secret", "keyfleet-not-in-the-guide", None),
        "the check can fail"
    );
    for (chart, (release, sets)) in &installs {
        let objects = render(chart, release, sets);
        let deployment = objects
            .iter()
            .find(|object| object["kind"] == "Deployment")
            .unwrap_or_else(|| panic!("{chart}: no Deployment"));
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"].as_str(),
            Some(
                format!(
                    "myregistry.azurecr.io/keyfleet/{}:0.1.0",
                    chart.replace("keyfleet-hub", "keyfleet")
                )
                .as_str()
            ),
            "{chart}: the image the guide pushed in step 1"
        );
        let references = references(&objects);
        assert!(
            references.len() >= 2,
            "{chart}: the pods read their Secrets and ConfigMaps: {references:?}"
        );
        for (kind, name, key) in references {
            assert!(
                created(&commands, kind, &name, key.as_deref()),
                "{chart} reads {kind} {name:?} (key {key:?}), which docs/install-aks.md does not create"
            );
        }
        if chart == "keyfleet-hub" {
            let account = objects
                .iter()
                .find(|object| object["kind"] == "ServiceAccount")
                .expect("the hub's ServiceAccount");
            assert_eq!(
                account["metadata"]["annotations"]["azure.workload.identity/client-id"].as_str(),
                Some(CLIENT_ID)
            );
            assert_eq!(
                account["metadata"]["name"].as_str(),
                Some("keyfleet-hub"),
                "the federated credential's subject names this ServiceAccount"
            );
            assert!(
                guide.contains("--subject system:serviceaccount:$NAMESPACE:keyfleet-hub"),
                "the federated credential trusts the chart's ServiceAccount"
            );
            assert_eq!(
                deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"].as_str(),
                Some("true")
            );
        } else {
            let hub_url = container["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|env| env["name"] == "KEYFLEET_AGENT_HUB_URL")
                .and_then(|env| env["value"].as_str());
            assert_eq!(hub_url, Some("https://keyfleet.example.com:7443"));
        }
    }
}

/// The `sh` blocks of the guide's section `## {number}.`, as written (heredocs included).
fn section_blocks(guide: &str, number: u32) -> Vec<String> {
    let heading = format!("## {number}. ");
    let mut blocks = Vec::new();
    let mut in_section = false;
    let mut block: Option<String> = None;
    for line in guide.lines() {
        if line.starts_with("## ") {
            in_section = line.starts_with(&heading);
            continue;
        }
        if !in_section {
            continue;
        }
        if line.starts_with("```") {
            match block.take() {
                Some(text) => blocks.push(text),
                None if line == "```sh" => block = Some(String::new()),
                None => {}
            }
            continue;
        }
        if let Some(text) = &mut block {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(
        !blocks.is_empty(),
        "docs/install-aks.md has no sh block in section {number}"
    );
    blocks
}

/// Runs `script` with `bash -euo pipefail` in `dir`, `keyfleet` (the binary under test) first on
/// the PATH; returns its exit code, stdout and stderr.
fn run_status(dir: &Path, script: &str) -> (Option<i32>, String, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_keyfleet")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("KEYFLEET_ADMIN_TOKEN")
        .env_remove("KEYFLEET_HUB")
        .env_remove("KEYFLEET_HUB_CA")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `script` as [`run_status`] does; returns its stdout and panics with its stderr when it
/// fails.
fn run(dir: &Path, script: &str) -> String {
    let (code, stdout, stderr) = run_status(dir, script);
    assert_eq!(
        code,
        Some(0),
        "docs/install-aks.md:\n{script}\nfailed:\n{stderr}{stdout}"
    );
    stdout
}

/// The TARGETED and APPLIED columns of `fleet_secret` in a `keyfleet status` table.
fn targeted_applied(table: &str, fleet_secret: &str) -> Option<(u64, u64)> {
    let row = table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(fleet_secret))?;
    let columns: Vec<&str> = row.split_whitespace().collect();
    Some((columns.get(2)?.parse().ok()?, columns.get(3)?.parse().ok()?))
}

/// Runs `script` (a `keyfleet status` of the guide) until its table says `fleet_secret` is applied
/// on `clusters` clusters: status rows are written in batches, so it can lag the agents by one.
async fn status_until_applied(dir: &Path, script: &str, fleet_secret: &str, clusters: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = run(dir, script);
        if targeted_applied(&table, fleet_secret) == Some((clusters, clusters)) {
            return table;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{script}: {fleet_secret} not applied on {clusters} clusters within 30 s:\n{table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guide_commands_run_against_a_hub() {
    let guide = guide();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // The guide runs in a checkout of the repository (charts and examples under deploy/).
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"),
        dir.join("deploy"),
    )
    .unwrap();

    // Step 4: the admin token file, made by the guide's own command; the hub reads that file.
    let token_line = section_blocks(&guide, 4)
        .iter()
        .flat_map(|block| block.lines().map(str::to_owned).collect::<Vec<_>>())
        .find(|line| line.contains("> admin-token"))
        .expect("step 4 writes the admin-token file");
    run(dir, &token_line);

    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config("first"), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    std::fs::copy(dir.join("admin-token"), env.dir.path().join("admin-token")).unwrap();
    let hub = ServeProcess::start(&env, "hub-a", "127.0.0.1:0".parse().unwrap()).await;
    std::fs::write(dir.join("hub-ca.pem"), env.ca_pem()).unwrap();

    // What only Azure has: the hub's DNS name and the vault's; everything else is the guide's text.
    let local = |block: &str| {
        block
            .replace(
                "https://keyfleet.example.com:7443",
                &format!("https://localhost:{}", hub.grpc_addr.port()),
            )
            .replace(
                "https://$KV_NAME.vault.azure.net",
                kv.vault_url().as_str().trim_end_matches('/'),
            )
    };

    // Step 6: the specs. Its exports (hub, CA, admin token) hold for the later steps too.
    let specs = local(&section_blocks(&guide, 6)[0]);
    let exports: String = specs
        .lines()
        .filter(|line| line.starts_with("export "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        exports.contains("KEYFLEET_ADMIN_TOKEN"),
        "step 6 exports the admin token"
    );
    let stores = run(dir, &specs);
    assert!(
        stores.contains("shared-kv"),
        "keyfleet get stores lists the guide's store:\n{stores}"
    );

    // Step 7: the three clusters in one file, their tokens as JSON.
    let step7 = section_blocks(&guide, 7);
    let add = step7
        .iter()
        .find(|block| block.contains("keyfleet cluster add -f"))
        .expect("step 7 adds the clusters from a file");
    run(dir, &format!("{exports}{}", local(add)));
    let enrollment: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("enrollment.json")).unwrap()).unwrap();
    let names = ["prod-eu-1", "prod-eu-2", "prod-us-1"];
    let agent_block = step7
        .iter()
        .find(|block| block.contains("helm install keyfleet-agent"))
        .expect("step 7 installs the agent");
    assert!(
        agent_block.contains(r#"jq -j '.[] | select(.name == "prod-eu-1") | .token' enrollment.json"#),
        "the test picks each token as the guide's jq filter does:\n{agent_block}"
    );
    // `.[] | select(.name == NAME) | .token`, for each cluster; the agent enrolls with it as the
    // chart's pod would (the canary, prod-eu-1, first).
    let agents: Vec<RunningAgent> = names
        .iter()
        .map(|name| {
            let entries = enrollment.as_array().expect("enrollment.json is a JSON array");
            let token = entries
                .iter()
                .filter(|entry| entry["name"] == *name)
                .map(|entry| {
                    entry["token"]
                        .as_str()
                        .expect("each entry has a token")
                        .to_owned()
                })
                .next()
                .unwrap_or_else(|| panic!("enrollment.json has no token for {name}: {enrollment}"));
            RunningAgent::start(AgentConfig::new(
                vec![env.hub_address(&hub)],
                0,
                Identity::Token(token),
            ))
        })
        .collect();
    let first = first_revision_everywhere(Duration::from_secs(90), &agents, "regcred").await;

    // Step 8: the status commands, as written.
    let status_block = local(&section_blocks(&guide, 8)[0]);
    let list_line = status_block
        .lines()
        .find(|line| line.starts_with("keyfleet cluster list"))
        .expect("step 8 lists the clusters");
    let list = run(dir, &format!("{exports}{list_line}"));
    for name in names {
        assert!(list.contains(name), "keyfleet cluster list shows {name}:\n{list}");
    }
    let status_line = status_block
        .lines()
        .find(|line| line.starts_with("keyfleet status regcred"))
        .expect("step 8 shows the status of regcred");
    status_until_applied(dir, &format!("{exports}{status_line}"), "regcred", 3).await;

    // The rotation the guide describes: a new version, `keyfleet sync-now`, every cluster gets it.
    assert!(
        guide.contains("`keyfleet sync-now`"),
        "the guide names sync-now for a rotation"
    );
    kv.set_secret("acr-pull", &docker_config("second"), &[]).unwrap();
    run(dir, &format!("{exports}keyfleet sync-now"));
    support::serve::all_agents(
        Duration::from_secs(90),
        &agents,
        "every cluster gets the rotation",
        |state| state.revision("regcred").is_some_and(|revision| revision > first),
    )
    .await;
    let watch_line = status_block
        .lines()
        .find(|line| line.starts_with("keyfleet rollout status regcred --watch"))
        .expect("step 8 follows the rollout");
    let watched = run(dir, &format!("{exports}{watch_line}"));
    assert!(
        watched.lines().last() == Some("fleetsecret/regcred: rollout complete")
            && watched.contains("3/3 applied"),
        "{watch_line}:\n{watched}"
    );
    let table = status_until_applied(dir, &format!("{exports}{status_line}"), "regcred", 3).await;
    assert!(
        !table.contains("second") && !table.contains("first"),
        "no value in the status:\n{table}"
    );

    // A cluster that never connects: the rollout is not complete (exit 7), at once or after
    // `--timeout`; paused, it exits 5.
    run(
        dir,
        &format!("{exports}keyfleet cluster add prod-us-2 --label env=prod"),
    );
    let (code, stdout, stderr) = run_status(dir, &format!("{exports}keyfleet rollout status regcred"));
    assert_eq!(code, Some(7), "{stdout}{stderr}");
    assert!(
        stdout.contains("3/4 applied") && stdout.contains("1 offline"),
        "{stdout}"
    );
    assert!(
        stderr.contains("rollout of fleetsecret \"regcred\" is not complete"),
        "{stderr}"
    );
    let started = std::time::Instant::now();
    let (code, _, stderr) = run_status(
        dir,
        &format!("{exports}keyfleet rollout status regcred --watch --timeout 2s"),
    );
    assert_eq!(code, Some(7), "{stderr}");
    assert!(stderr.contains("is not complete after 2s"), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "--watch waits for --timeout"
    );
    run(dir, &format!("{exports}keyfleet rollout pause regcred"));
    let (code, _, stderr) = run_status(dir, &format!("{exports}keyfleet rollout status regcred --watch"));
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("is paused"), "{stderr}");

    // One more cluster added by hand: the commands `keyfleet cluster add` prints install the
    // agent chart with what they create, and point it at the hub the CLI talked to.
    let printed = run(
        dir,
        &format!("{exports}keyfleet cluster add prod-ap-1 --label env=prod"),
    );
    let printed_commands: Vec<String> = printed
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("kubectl ") || line.starts_with("helm "))
        .map(str::to_owned)
        .collect();
    let (release, sets) = installs(&format!("```sh\n{}\n```\n", printed_commands.join("\n")))
        .remove("keyfleet-agent")
        .unwrap_or_else(|| panic!("keyfleet cluster add prints the agent's helm install:\n{printed}"));
    let hub_url = format!("https://localhost:{}", hub.grpc_addr.port());
    assert!(sets.contains(&format!("hub.url={hub_url}")), "{sets:?}");
    let objects = render("keyfleet-agent", &release, &sets);
    let references = references(&objects);
    assert!(
        references.len() >= 2,
        "the agent reads its token and the hub CA: {references:?}"
    );
    for (kind, name, key) in references {
        assert!(
            created(&printed_commands, kind, &name, key.as_deref()),
            "the agent chart reads {kind} {name:?} (key {key:?}), which keyfleet cluster add does not print:\n{printed}"
        );
    }
}
