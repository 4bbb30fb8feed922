//! The quickstart end to end at a small size: Key Vault emulator, the real hub binary (built by
//! `cargo test --workspace` next to this test), a handful of clusters with the real agent code,
//! a rotation, a kill -9 restart, the status truth check, the baseline and the leak scan; and the
//! same agents reaching their fake Kubernetes APIs in memory, as large fleets do.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use keyfleet_loadtest::agents::KubeTransport;
use keyfleet_loadtest::config::Args;

/// `target/<profile>/keyfleet`, next to `target/<profile>/deps/<this test>`.
fn hub_binary() -> PathBuf {
    let test = std::env::current_exe().expect("test path");
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let hub = profile_dir.join("keyfleet");
    assert!(
        hub.exists(),
        "the hub binary {} is missing: run `cargo build --workspace` (scripts/test does)",
        hub.display()
    );
    hub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_rotates_restarts_and_reports_the_truth() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let report_file = tempfile::NamedTempFile::new().expect("report file");
    let args = Args::try_parse_from([
        "keyfleet-loadtest",
        "--clusters",
        "4",
        "--rotations",
        "2",
        "--quiet",
        "--converge-timeout",
        "60s",
        "--hub-binary",
        hub_binary().to_str().expect("utf-8 path"),
        "--fleet-secret",
        root.join("deploy/examples/regcred.yaml")
            .to_str()
            .expect("utf-8 path"),
        "--report",
        report_file.path().to_str().expect("utf-8 path"),
    ])
    .expect("valid arguments");
    let report = tokio::time::timeout(Duration::from_secs(600), keyfleet_loadtest::scenario::run(args))
        .await
        .expect("the run finishes")
        .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    // A handful of clusters fits any open-file limit: `auto` keeps the real network path.
    assert_eq!(report.kube_transport, KubeTransport::Loopback, "{table}");
    assert!(report.kube_transport_reason.starts_with("auto: "), "{table}");
    assert_eq!(report.rotations.len(), 2, "{table}");
    for rotation in &report.rotations {
        assert_eq!(rotation.converged, 4, "{table}");
        // One GET of the new version for the whole fleet.
        assert_eq!(rotation.keyvault_calls.get("get").copied(), Some(1), "{table}");
        assert!(rotation.status_flushes >= 1, "{table}");
    }
    assert_eq!(report.status_truth.checked, 4);
    assert_eq!(report.status_truth.mismatches, 0, "{table}");
    assert!(report.leaks.is_empty(), "{table}");
    let restart = report.restart.as_ref().expect("restart scenario ran");
    assert!(restart.in_sync_reconnects >= 4, "{table}");
    let baseline = report.baseline.as_ref().expect("baseline ran");
    // ESO's model: per cluster and rotation a token, a challenge and a GET.
    assert!(baseline.calls_ratio > 1.0, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reaching_their_clusters_in_memory_converge_and_report_the_transport() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args = Args::try_parse_from([
        "keyfleet-loadtest",
        "--clusters",
        "4",
        "--rotations",
        "1",
        "--quiet",
        "--no-restart",
        "--no-baseline",
        "--kube-transport",
        "memory",
        "--converge-timeout",
        "60s",
        "--hub-binary",
        hub_binary().to_str().expect("utf-8 path"),
        "--fleet-secret",
        root.join("deploy/examples/regcred.yaml")
            .to_str()
            .expect("utf-8 path"),
    ])
    .expect("valid arguments");
    let report = tokio::time::timeout(Duration::from_secs(600), keyfleet_loadtest::scenario::run(args))
        .await
        .expect("the run finishes")
        .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    assert_eq!(report.kube_transport, KubeTransport::Memory, "{table}");
    assert!(
        table.contains("Kubernetes API transport: memory (requested (--kube-transport memory))"),
        "{table}"
    );
    assert_eq!(report.rotations[0].converged, 4, "{table}");
    assert_eq!(report.status_truth.mismatches, 0, "{table}");
    assert_eq!(report.missed_notifications, 0, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_already_holds_clusters_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("keyfleet.db").display());
    let args = || {
        Args::try_parse_from([
            "keyfleet-loadtest",
            "--clusters",
            "2",
            "--rotations",
            "1",
            "--no-restart",
            "--no-baseline",
            "--quiet",
            "--converge-timeout",
            "60s",
            "--database",
            &database,
            "--hub-binary",
            hub_binary().to_str().expect("utf-8 path"),
            "--fleet-secret",
            root.join("deploy/examples/regcred.yaml")
                .to_str()
                .expect("utf-8 path"),
        ])
        .expect("valid arguments")
    };
    let first = tokio::time::timeout(Duration::from_secs(600), keyfleet_loadtest::scenario::run(args()))
        .await
        .expect("the first run finishes")
        .expect("the first run completes");
    assert!(first.passed(), "{}", first.table());
    let second = tokio::time::timeout(Duration::from_secs(600), keyfleet_loadtest::scenario::run(args()))
        .await
        .expect("the second run finishes")
        .expect_err("the database holds the first run's clusters");
    let message = format!("{second:#}");
    assert!(
        message.contains("already holds 2 cluster(s)") && message.contains("empty database"),
        "{message}"
    );
}
