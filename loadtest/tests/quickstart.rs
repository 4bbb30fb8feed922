//! The quickstart end to end at a small size: Key Vault emulator, the hub binary `keyfleet` (built
//! by `cargo build --workspace` next to this test), a handful of clusters with the real agent code,
//! a rotation, a kill -9 restart, the status truth check, the baseline and the leak scan; and the
//! same agents reaching their fake Kubernetes APIs in memory, as large fleets do.

mod support;

use std::path::PathBuf;

use keyfleet_loadtest::agents::KubeTransport;
use support::{args, args_with_spec, hub_binary, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_rotates_restarts_and_reports_the_truth() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let report_file = tempfile::NamedTempFile::new().expect("report file");
    let report_path = report_file.path().to_str().expect("utf-8 path");
    let report = run(args(&[
        "--clusters",
        "4",
        "--rotations",
        "2",
        "--report",
        report_path,
    ]))
    .await
    .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    // A handful of clusters fits any open-file limit: `auto` keeps the real network path.
    assert_eq!(report.kube_transport, Some(KubeTransport::Loopback), "{table}");
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
    let report = run(args(&[
        "--clusters",
        "4",
        "--rotations",
        "1",
        "--no-restart",
        "--no-baseline",
        "--kube-transport",
        "memory",
    ]))
    .await
    .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    assert_eq!(report.kube_transport, Some(KubeTransport::Memory), "{table}");
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
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("keyfleet.db").display());
    let once = || {
        args(&[
            "--clusters",
            "2",
            "--rotations",
            "1",
            "--no-restart",
            "--no-baseline",
            "--database",
            &database,
        ])
    };
    let first = run(once()).await.expect("the first run completes");
    assert!(first.passed(), "{}", first.table());
    let second = run(once())
        .await
        .expect_err("the database holds the first run's clusters");
    let message = format!("{second:#}");
    assert!(
        message.contains("already holds 2 cluster(s)") && message.contains("empty database"),
        "{message}"
    );
}

/// Issue #20's "done when": an ESO `ExternalSecret` of type `kubernetes.io/dockerconfigjson`, taken
/// verbatim from ESO's documentation (`hub/tests/fixtures/eso/`), converted by the real `keyfleet
/// import eso`, rolls out in the quickstart fleet: every cluster converges, status truth holds,
/// and drift is repaired, with the Key Vault secret the ExternalSecret names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_secret_imported_from_eso_rolls_out_in_the_quickstart_fleet() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../hub/tests/fixtures/eso/dockerconfigjson/input/gcpsm-docker-config-externalsecret.yaml");
    let import = std::process::Command::new(hub_binary())
        .args(["import", "eso", "-o", "yaml", "-f"])
        .arg(&manifest)
        .output()
        .expect("run keyfleet import eso");
    // 0: converted; 5: converted with notes (here: the SecretStore it names is not in the file).
    assert!(
        matches!(import.status.code(), Some(0 | 5)),
        "keyfleet import eso: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let imported = String::from_utf8(import.stdout).expect("utf-8");
    assert!(
        imported.contains("kind: FleetSecret") && imported.contains("docker-config-example"),
        "{imported}"
    );
    // The store the ExternalSecret names (`example`), as the hub's operator writes it.
    let store = "apiVersion: keyfleet.io/v1\nkind: SecretStore\nmetadata:\n  name: example\nspec:\n  provider:\n    azurekv:\n      vaultUrl: https://example.vault.azure.net\n      authType: WorkloadIdentity\n";
    let spec = tempfile::NamedTempFile::new().expect("spec file");
    std::fs::write(spec.path(), format!("{store}---\n{imported}")).expect("write the spec");

    let report = run(args_with_spec(
        &[
            "--clusters",
            "4",
            "--rotations",
            "1",
            "--no-restart",
            "--no-baseline",
            "--remote-key",
            "docker-config-example",
        ],
        spec.path(),
    ))
    .await
    .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    assert_eq!(report.rotations[0].converged, 4, "{table}");
    assert_eq!(
        report.rotations[0].keyvault_calls.get("get").copied(),
        Some(1),
        "{table}"
    );
    assert_eq!(report.status_truth.mismatches, 0, "{table}");
    let drift = report.drift.as_ref().expect("drift ran");
    assert_eq!(
        (drift.repaired, drift.reported),
        (drift.injected, drift.injected),
        "{table}"
    );
}
