//! The other fleets the benchmark runs: protocol-level agents (`--agents protocol`), run through
//! the `keyfleet-loadtest` binary itself (its hub replicas are the same binary as
//! `keyfleet-loadtest hub serve …`), and hub replicas on one Postgres database with one killed
//! during the last rotation (`--replicas 2 --kill-replica`), with protocol and with real agents.

mod support;

use std::time::Duration;

use support::{ScratchDb, args, regcred, run};

/// `--agents protocol` through the binary: every cluster converges, the restart brings every
/// agent back, the store agrees with every agent, and the report carries the headline figures
/// with their targets, in text and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_agents_converge_and_the_report_has_the_figures_with_their_targets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet-loadtest"));
    command
        .args([
            "--agents",
            "protocol",
            "--clusters",
            "50",
            "--rotations",
            "1",
            "--no-baseline",
            "--quiet",
            "--converge-timeout",
            "60s",
        ])
        .arg("--fleet-secret")
        .arg(regcred())
        .arg("--report")
        .arg(&report_path)
        .env_remove("KEYFLEET_LOADTEST_HUB")
        .env_remove("KEYFLEET_LOADTEST_DATABASE")
        .env_remove("KEYFLEET_LOADTEST_CLUSTERS")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the run finishes")
        .expect("run keyfleet-loadtest");
    let table = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{table}\n{log}");
    // The hub ran as this binary's own process, and said where.
    assert!(log.contains("hub replica loadtest-hub pid "), "{log}");
    assert!(
        table.contains("50 clusters · protocol agents · 1 hub replica(s)"),
        "{table}"
    );
    assert!(table.contains("drift: n/a (protocol agents)"), "{table}");
    for row in [
        "hub CPU per agent per rotation",
        "hub RSS per connected agent",
        "rotation p99, sync-now to held",
    ] {
        let line = table
            .lines()
            .find(|line| line.starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} row in\n{table}"));
        assert!(line.contains('≤'), "{line}");
    }

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report written")).expect("JSON");
    assert_eq!(report["agent_kind"], "protocol", "{table}");
    assert!(report["kube_transport"].is_null(), "{table}");
    assert_eq!(report["drift_skipped"], "n/a (protocol agents)");
    let rotation = &report["rotations"][0];
    assert_eq!(rotation["converged"], 50, "{table}");
    assert_eq!(rotation["keyvault_calls"]["get"], 1, "{table}");
    let per_agent = rotation["hub_cpu_us_per_agent"].as_f64().expect("µs per agent");
    let cpu = rotation["hub_cpu_s"].as_f64().expect("hub CPU");
    assert!(per_agent > 0.0, "{table}");
    assert!((per_agent - cpu * 1e6 / 50.0).abs() < 1e-6, "{table}");
    let figures = &report["figures"];
    let cpu_figure = &figures["hub_cpu_us_per_agent_per_rotation"];
    assert_eq!(cpu_figure["value"].as_f64(), Some(per_agent), "{table}");
    assert_eq!(cpu_figure["target"], 30.0);
    assert_eq!(cpu_figure["unit"], "µs");
    // 50 clusters: measured, not judged (the hub's fixed costs dominate the division).
    assert!(cpu_figure["met"].is_null(), "{table}");
    let rss = &figures["hub_rss_kib_per_agent"];
    assert!(rss["value"].as_f64().is_some_and(|kib| kib >= 0.0), "{table}");
    assert_eq!(rss["target"], 48.0);
    let p99 = &figures["rotation_p99_ms"];
    assert!(p99["value"].as_f64().is_some(), "{table}");
    assert_eq!(p99["target"], 1000.0);
    assert_eq!(report["status_truth"]["checked"], 50);
    assert_eq!(report["status_truth"]["mismatches"], 0, "{table}");
    let restart = &report["restart"];
    assert!(restart["in_sync_reconnects"].as_u64() >= Some(50), "{table}");
    assert_eq!(report["replicas"].as_array().map(Vec::len), Some(1));
    assert!(report["leaks"].as_array().is_some_and(Vec::is_empty), "{table}");
}

/// Two replicas on one Postgres database, protocol agents spread over both (each knowing both):
/// the replica that does not lead is killed once half the fleet applied the last rotation; its
/// agents fail over, every cluster converges, and the store agrees with every agent after the
/// kill and after the restart of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_agents_fail_over_when_a_replica_is_killed_mid_rotation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = ScratchDb::create().await;
    let url = db.url();
    let report = run(args(&[
        "--agents",
        "protocol",
        "--clusters",
        "40",
        "--rotations",
        "2",
        "--replicas",
        "2",
        "--kill-replica",
        "--database",
        &url,
        "--no-baseline",
    ]))
    .await
    .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    assert_eq!(report.replicas.len(), 2, "{table}");
    // Agents were spread round-robin.
    assert!(
        report.replicas.iter().all(|replica| replica.agents == 20),
        "{table}"
    );
    for rotation in &report.rotations {
        assert_eq!(rotation.converged, 40, "{table}");
        assert_eq!(rotation.hub_cpu_per_replica_s.len(), 2, "{table}");
    }
    assert!(!report.rotations[0].replica_killed, "{table}");
    assert!(report.rotations[1].replica_killed, "{table}");
    let kill = report.replica_kill.as_ref().expect("a replica was killed");
    assert_eq!(kill.rotation, 2, "{table}");
    assert_ne!(Some(kill.replica), kill.leader, "the leader is spared: {table}");
    assert!(!kill.restarted, "protocol agents fail over: {table}");
    assert!(kill.all_back_in_sync_s.is_some(), "{table}");
    assert!(report.replicas[kill.replica].kills >= 1, "{table}");
    assert_eq!(report.status_truth.checked, 40, "{table}");
    assert_eq!(report.status_truth.mismatches, 0, "{table}");
    assert!(report.restart.is_some(), "{table}");
    assert!(table.contains("replica kill (kill -9) in rotation 2"), "{table}");
    db.remove().await;
}

/// The same kill with real agents: each knows one hub address, so the killed replica is started
/// again on its ports and its agents reconnect to it; drift is still repaired and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_reconnect_when_their_replica_is_killed_and_restarted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = ScratchDb::create().await;
    let url = db.url();
    let report = run(args(&[
        "--clusters",
        "6",
        "--rotations",
        "1",
        "--replicas",
        "2",
        "--kill-replica",
        "--database",
        &url,
        "--no-baseline",
        "--no-restart",
    ]))
    .await
    .expect("the run completes");
    let table = report.table();
    assert!(report.passed(), "{table}");
    assert_eq!(report.rotations[0].converged, 6, "{table}");
    let kill = report.replica_kill.as_ref().expect("a replica was killed");
    assert!(kill.restarted, "{table}");
    assert!(kill.all_back_in_sync_s.is_some(), "{table}");
    assert_eq!(report.replicas[kill.replica].pids.len(), 2, "{table}");
    assert_eq!(report.status_truth.mismatches, 0, "{table}");
    let drift = report.drift.as_ref().expect("drift ran");
    assert_eq!(
        (drift.repaired, drift.reported),
        (drift.injected, drift.injected),
        "{table}"
    );
    db.remove().await;
}
