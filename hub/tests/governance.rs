//! Rotation governance end to end (#18): a Key Vault version that expires in 10 days, served by a
//! FleetSecret on two real `keyfleet serve` replicas (one scratch Postgres database, the Key Vault
//! emulator, in-process agents). Every replica, leader or not, reports it: `keyfleet status -o
//! json` (the real binary) shows `NearExpiry` with the version's `exp` and exits 5 under
//! `--fail-on near-expiry`, and `/metrics` serves its expiry as a Unix-time gauge. The scraped
//! `/metrics` is also the reference for `docs/metrics.md` (every family documented, nothing
//! documented that is not served) and for `deploy/monitoring/` (every metric an alert rule or a
//! dashboard panel names is served).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use keyfleet_testkit::keyvault::{Attributes, KeyVaultConfig, KeyVaultEmulator};
use support::TestDb;
use support::serve::{
    ServeEnv, ServeProcess, docker_config, first_revision_everywhere, fleet_setup, start_agents,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEY: &str = "regcred";
const CONVERGE: Duration = Duration::from_secs(90);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `GET /metrics` of `addr`, the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: ops\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Scrapes until a sample line starts with `prefix`, for at most 30 s (the metrics are refreshed
/// from the store every second here); returns the sample's value.
async fn sample_until(addr: SocketAddr, prefix: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr).await;
        if let Some(line) = text.lines().find(|line| line.starts_with(prefix)) {
            return line.rsplit(' ').next().unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no sample {prefix} in\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (family name as queried, type) of every `# TYPE` line: counters as `name_total`.
fn served_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').unwrap();
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            (name, kind.to_owned())
        })
        .collect()
}

/// (metric, type) of every row of a `docs/metrics.md` table whose metric starts with `prefix`.
fn documented(prefix: &str) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            if !name.starts_with(prefix) {
                return None;
            }
            let kind = rest.trim_start_matches(" |").split('|').next()?.trim().to_owned();
            Some((name.to_owned(), kind))
        })
        .collect()
}

/// Every metric name a PromQL expression mentions (identifiers starting with `keyfleet_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("keyfleet_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The family a sample name belongs to (`_bucket`, `_sum`, `_count` of a histogram).
fn family_of(name: &str, served: &BTreeMap<String, String>) -> Option<String> {
    if served.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (served.get(base).map(String::as_str) == Some("histogram")).then(|| base.to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_expiring_in_ten_days_is_near_expiry_on_every_replica() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let expires = (Utc::now() + TimeDelta::days(10)).timestamp();
    let version = kv
        .set_secret_with(
            "acr-pull",
            &docker_config("one"),
            Attributes {
                expires: Some(expires),
                not_before: Some(expires - 40 * 86_400),
                ..Attributes::default()
            },
        )
        .unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let refresh = ["--metrics-refresh", "1s"];
    let a = ServeProcess::start_with(&env, "hub-a", any_port(), &refresh).await;
    let b = ServeProcess::start_with(&env, "hub-b", any_port(), &refresh).await;
    let mut admin = env.admin(&a).await;
    let tokens = fleet_setup(&mut admin, &kv, 3, 1).await;
    let agents = start_agents(&[env.hub_address(&a), env.hub_address(&b)], tokens);
    first_revision_everywhere(CONVERGE, &agents, KEY).await;
    let leaders = [&a, &b]
        .iter()
        .filter(|hub| hub.logged(support::serve::LEADS))
        .count();
    assert_eq!(leaders, 1, "exactly one replica leads");
    let expires_text = chrono::DateTime::from_timestamp(expires, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    for hub in [&a, &b] {
        // The CLI a cron job runs: prints the status, exits 5 because a condition holds.
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
            .args(["status", KEY, "-o", "json", "--fail-on", "near-expiry,paused"])
            .args(["--hub", &format!("https://localhost:{}", hub.grpc_addr.port())])
            .arg("--hub-ca")
            .arg(env.path("tls").join("ca.pem"))
            .arg("--admin-token-file")
            .arg(env.path("admin-token"))
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{}: {stderr}", hub.replica);
        assert!(stderr.contains("regcred/NearExpiry"), "{stderr}");
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(status["expires"], expires_text.as_str(), "{status}");
        assert_eq!(status["sources"][0]["remoteKey"], "acr-pull");
        assert_eq!(status["sources"][0]["version"], version.as_str());
        assert_eq!(status["sources"][0]["expires"], expires_text.as_str());
        assert_eq!(status["nearExpiryThresholdSeconds"], 30 * 86_400);
        let conditions = status["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1, "{status}");
        assert_eq!(conditions[0]["type"], "NearExpiry");
        let message = conditions[0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "acr-pull@{version} expires at {expires_text} (in 9d 23h"
            )),
            "{message}"
        );

        // Without --fail-on, or failing only on what does not hold: exit 0.
        let quiet = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
            .args(["status", "--fail-on", "expired,lagging"])
            .args(["--hub", &format!("https://localhost:{}", hub.grpc_addr.port())])
            .arg("--hub-ca")
            .arg(env.path("tls").join("ca.pem"))
            .arg("--admin-token-file")
            .arg(env.path("admin-token"))
            .output()
            .await
            .unwrap();
        let table = String::from_utf8_lossy(&quiet.stdout);
        assert_eq!(
            quiet.status.code(),
            Some(0),
            "{table}{}",
            String::from_utf8_lossy(&quiet.stderr)
        );
        assert!(
            table.contains("EXPIRES") && table.contains(&expires_text) && table.contains("NearExpiry"),
            "{table}"
        );
        assert!(
            table.contains(&format!(
                "regcred: NearExpiry: acr-pull@{version} expires at {expires_text}"
            )),
            "{table}"
        );

        // `get fleetsecrets` shows the earliest expiry too.
        let get = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
            .args(["get", "fleetsecrets", "-o", "json"])
            .args(["--hub", &format!("https://localhost:{}", hub.grpc_addr.port())])
            .arg("--hub-ca")
            .arg(env.path("tls").join("ca.pem"))
            .arg("--admin-token-file")
            .arg(env.path("admin-token"))
            .output()
            .await
            .unwrap();
        assert_eq!(
            get.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&get.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
        assert_eq!(listed[0]["name"], KEY);
        assert_eq!(listed[0]["expires"], expires_text.as_str(), "{listed}");

        // The expiry gauge, on this replica.
        let gauge = sample_until(
            hub.ops_addr,
            "keyfleet_hub_secret_expiry_timestamp_seconds{fleet_secret=\"regcred\",remote_key=\"acr-pull\"}",
        )
        .await;
        assert_eq!(gauge, expires as f64, "{}", hub.replica);
        let applied = sample_until(
            hub.ops_addr,
            "keyfleet_hub_fleet_secret_clusters{fleet_secret=\"regcred\",state=\"applied\"} 3",
        )
        .await;
        assert_eq!(applied, 3.0);
    }

    // docs/metrics.md lists exactly what /metrics serves. A family is served once it has a
    // series: the pollers' only on the leader, so the union of both replicas is the reference.
    let mut served = served_families(&scrape(a.ops_addr).await);
    served.extend(served_families(&scrape(b.ops_addr).await));
    let docs = documented("keyfleet_hub_");
    let missing: Vec<_> = served
        .iter()
        .filter(|(name, _)| !docs.contains_key(*name))
        .collect();
    let stale: Vec<_> = docs
        .iter()
        .filter(|(name, _)| !served.contains_key(*name))
        .collect();
    let wrong: Vec<_> = docs
        .iter()
        .filter(|(name, kind)| served.get(*name).is_some_and(|served| served != *kind))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty() && wrong.is_empty(),
        "docs/metrics.md is out of date: served but not documented {missing:?}; documented but not served {stale:?}; wrong type {wrong:?}"
    );

    // Every metric deploy/monitoring names is served (hub) or documented (agent).
    let agent_docs = documented("keyfleet_agent_");
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let mut checked = 0;
    for expr in monitoring_exprs(&monitoring) {
        for name in metric_names(&expr) {
            let known = if name.starts_with("keyfleet_agent_") {
                agent_docs.contains_key(&name)
                    || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|base| agent_docs.contains_key(base))
                    })
            } else {
                family_of(&name, &served).is_some()
            };
            assert!(known, "{name} in `{expr}` is not a metric keyfleet serves");
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} metric references found in deploy/monitoring"
    );
    drop(agents);
    db.drop_db().await;
}

/// Every PromQL expression of the alert rules (`expr:`) and the Grafana dashboard (`targets[].expr`).
fn monitoring_exprs(dir: &Path) -> Vec<String> {
    let mut exprs = Vec::new();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("keyfleet-rules.yaml")).unwrap()).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keyfleet-dashboard.json")).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
    }
    exprs
}
