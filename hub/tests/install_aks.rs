//! `docs/install-aks.md`, checked against the charts with the real Helm: each `helm install` of the
//! guide, with its `--set` values, renders; the images, Workload Identity and hub URL it sets land
//! where they should; and every Secret and ConfigMap the rendered pods read is one the guide tells
//! the reader to create, under the same name and key.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use keyfleet_testkit::helm;

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
