//! The agent binary's footprint: RSS with 50 managed Secrets, in sync and idle, against the fake
//! Kubernetes API server and a scripted hub (target: at most 32 MiB).

mod support;

use std::process::Stdio;

use keyfleet_proto::digest;
use keyfleet_proto::v1::{self, agent_message, hub_message};
use keyfleet_testkit::kube::{Config, FakeKube};
use support::hub::{ScriptedHub, TOKEN};

const MANAGED: usize = 50;
const RSS_LIMIT_KIB: u64 = 32 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn payload(index: usize) -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: format!("secret-{index}"),
        revision: 1000 + index as u64,
        secret_name: format!("secret-{index}"),
        r#type: "Opaque".into(),
        namespaces: vec!["apps".into()],
        data: [
            ("username".to_string(), format!("user-{index}").into_bytes()),
            ("password".to_string(), vec![b'x'; 64]),
        ]
        .into(),
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    payload
}

#[tokio::test]
async fn agent_rss_with_fifty_managed_secrets_stays_under_32_mib() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let cluster = fake.cluster("default").expect("default cluster");
    cluster.create_namespace("apps").expect("namespace");
    cluster.create_namespace("keyfleet-system").expect("namespace");
    let mut hub = ScriptedHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).expect("kubeconfig");
    let hub_ca = dir.path().join("hub-ca.pem");
    std::fs::write(&hub_ca, &hub.ca_pem).expect("hub ca");
    // KEYFLEET_AGENT_BIN measures another build (e.g. target/release/keyfleet-agent).
    let binary =
        std::env::var_os("KEYFLEET_AGENT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_keyfleet-agent").into());
    let mut child = tokio::process::Command::new(binary)
        .args([
            "--hub-url",
            &hub.url,
            "--enrollment-token",
            TOKEN,
            "--ops-addr",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .arg("--hub-ca")
        .arg(&hub_ca)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn keyfleet-agent");
    let pid = child.id().expect("pid");

    let mut session = hub.session().await;
    assert!(matches!(session.recv().await, agent_message::Body::Hello(_)));
    session
        .send(hub_message::Body::Welcome(v1::Welcome {
            in_sync: false,
            hub_instance: "hub-0".into(),
            heartbeat_interval_ms: 30_000,
            max_inflight: 1,
        }))
        .await;
    session
        .send(hub_message::Body::Update(v1::Update {
            nonce: 1,
            upserts: (0..MANAGED).map(payload).collect(),
            removals: vec![],
        }))
        .await;
    let agent_message::Body::Ack(ack) = session.recv().await else {
        panic!("expected an ack");
    };
    assert_eq!(
        ack.results.iter().filter(|result| result.error.is_none()).count(),
        MANAGED
    );
    assert_eq!(cluster.list_secrets(Some("apps")).len(), MANAGED);
    // A heartbeat round trip: the agent is idle, in sync, holding its 50 payloads.
    session
        .send(hub_message::Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms: 1 }))
        .await;
    assert!(matches!(session.recv().await, agent_message::Body::Heartbeat(_)));

    let rss = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");
    eprintln!("keyfleet-agent with {MANAGED} managed Secrets: RSS {rss} KiB, peak {peak} KiB");
    assert!(rss <= RSS_LIMIT_KIB, "RSS {rss} KiB exceeds {RSS_LIMIT_KIB} KiB");
    child.kill().await.expect("stop the agent");
}
