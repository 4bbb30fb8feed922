//! The benchmark report: what the quickstart prints at the end and writes as JSON (`--report`).
//! Every figure is measured in this run; targets are ARCHITECTURE.md's
//! Performance Targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::baseline::{RefreshCalls, Staleness};
use crate::config::AgentsArg;
use crate::figures::Headline;
use crate::stats::Percentiles;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// keyfleet version that produced it.
    pub version: String,
    /// When the run started (RFC 3339).
    pub started: String,
    /// Simulated clusters.
    pub clusters: usize,
    /// Which agents ran (`--agents`): `real` or `protocol`.
    pub agent_kind: AgentsArg,
    /// How the clusters were simulated, in words.
    pub agents: String,
    /// How the real agents reached their fake Kubernetes APIs (`None`: protocol agents, no
    /// Kubernetes API).
    pub kube_transport: Option<crate::agents::KubeTransport>,
    /// Why that transport (requested, or `auto` and the open-file arithmetic).
    pub kube_transport_reason: String,
    /// The headline figures with their targets: hub CPU µs per agent per rotation, hub RSS KiB
    /// per connected agent, rotation p99.
    pub figures: Headline,
    /// Every hub replica (one unless `--replicas`).
    pub replicas: Vec<ReplicaFigures>,
    /// The replica killed during the last rotation (`--kill-replica`).
    pub replica_kill: Option<ReplicaKill>,
    /// Store backend ("sqlite" or "postgres").
    pub database: String,
    /// Time to enroll every cluster and converge on the first revision, seconds.
    pub initial_convergence_s: f64,
    /// One entry per rotation.
    pub rotations: Vec<Rotation>,
    /// Hub process figures over the whole run.
    pub hub: HubFigures,
    /// This process (the simulated fleet: agents, fake APIs, emulator) once every agent converged.
    pub fleet: FleetFigures,
    /// Write notifications the tracker missed (then latencies of Secrets it found by rescanning
    /// are upper bounds); 0 when every latency was taken at its commit.
    pub missed_notifications: u64,
    /// Kill -9 and restart of the hub.
    pub restart: Option<Restart>,
    /// Every cluster's actual Secret against what the store says.
    pub status_truth: StatusTruth,
    /// Secrets tampered with during the last rotation: repaired and reported.
    pub drift: Option<crate::drift::DriftFigures>,
    /// Why there is no drift check (`n/a (protocol agents)`, `skipped (--no-drift)`).
    pub drift_skipped: Option<String>,
    /// The per-cluster polling baseline (ESO's model) for the same rotations.
    pub baseline: Option<Baseline>,
    /// Secret values found in the hub's captured log (must be empty).
    pub leaks: Vec<crate::leakcheck::Finding>,
    /// The performance targets (ARCHITECTURE.md) against what was measured.
    pub targets: Vec<Target>,
    /// Why the run failed; empty when it passed.
    pub failures: Vec<String>,
}

/// One rotation, timed from the moment the loadtest asked the hub to sync (`SyncNow`), which is
/// no later than the moment the hub saw the new version.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// 1-based.
    pub index: usize,
    /// Key Vault version written.
    pub version: String,
    /// Revision the hub rendered for it.
    pub revision: u64,
    /// Per cluster: time until the new Secret was written into its Kubernetes API.
    pub applied: Option<Percentiles>,
    /// Clusters that held the new revision at the end of the rotation.
    pub converged: usize,
    /// Seconds until every cluster converged (or the timeout).
    pub duration_s: f64,
    /// Seconds until the store counted every cluster applied (None: not within the converge
    /// timeout); the gap to `duration_s` is how far status recording trails the fleet.
    pub store_applied_s: Option<f64>,
    /// Hub CPU seconds (user + system, all replicas) until every cluster converged.
    pub hub_cpu_s: f64,
    /// `hub_cpu_s` / clusters, µs.
    pub hub_cpu_us_per_agent: f64,
    /// Hub CPU seconds per replica over the same time.
    pub hub_cpu_per_replica_s: Vec<f64>,
    /// This process's CPU seconds over the same time (agents, fake APIs, emulator, tracker).
    pub fleet_cpu_s: f64,
    /// Streams the hub closed because an agent's acks stalled (hub metric).
    pub stalled_closes: u64,
    /// Streams (re)opened in sync during the rotation, e.g. after a stall (hub metric).
    pub in_sync_reconnects: u64,
    /// Key Vault calls during the rotation, by operation (emulator counters).
    pub keyvault_calls: BTreeMap<String, u64>,
    /// Store writes for the rotation's status (hub metrics).
    pub status_flushes: u64,
    /// Status rows written.
    pub status_rows: u64,
    /// Bytes sent hub → agents during the rotation (hub metric).
    pub bytes_sent: u64,
    /// Whether a replica was killed during this rotation (`--kill-replica`).
    pub replica_killed: bool,
}

/// Hub figures, summed over the replicas.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HubFigures {
    /// Peak RSS of the hub (VmHWM; per replica the highest of its processes, summed), bytes.
    pub rss_peak_bytes: u64,
    /// RSS with every agent connected, bytes.
    pub rss_connected_bytes: u64,
    /// RSS per connected agent (connected RSS minus RSS before agents connected, / clusters).
    pub rss_per_agent_bytes: u64,
    /// Hub CPU seconds over the run (user + system, every process of every replica).
    pub cpu_s: f64,
    /// Bytes sent hub → agents over the run.
    pub bytes_sent: u64,
    /// Open file descriptors of the hub with every agent connected.
    pub open_files_connected: usize,
}

/// One hub replica.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaFigures {
    /// `--replica-id`.
    pub id: String,
    /// Its gRPC address.
    pub grpc_addr: String,
    /// Every process id it ran as (more than one after a kill and restart).
    pub pids: Vec<u32>,
    /// Clusters whose agents started on it.
    pub agents: usize,
    /// CPU seconds over the run, every process.
    pub cpu_s: f64,
    /// Peak RSS (the highest VmHWM of its processes), bytes.
    pub rss_peak_bytes: u64,
    /// RSS with every agent connected, bytes.
    pub rss_connected_bytes: u64,
    /// RSS growth from before agents connected to connected, / its agents, bytes.
    pub rss_per_agent_bytes: u64,
    /// Times it was killed (`--kill-replica`, the restart scenario).
    pub kills: u32,
}

/// The replica killed during the last rotation.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaKill {
    /// Index of the killed replica.
    pub replica: usize,
    /// Its id.
    pub replica_id: String,
    /// Index of the replica leading the Key Vault pollers when it was killed, if one said so.
    pub leader: Option<usize>,
    /// The rotation it happened in.
    pub rotation: usize,
    /// Seconds from the sync-now request to the kill.
    pub at_s: f64,
    /// Clusters holding the new revision when it was killed.
    pub applied_before: usize,
    /// Whether it was started again on its ports (real agents know one hub address: they wait
    /// for it; protocol agents move to another replica and it stays down until the restart
    /// scenario).
    pub restarted: bool,
    /// Seconds from the kill until every cluster held the rotation's revision and every agent had
    /// a stream again (`None`: not within the converge timeout).
    pub all_back_in_sync_s: Option<f64>,
}

/// The simulated fleet's process (this one).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetFigures {
    /// RSS with every agent converged, bytes.
    pub rss_connected_bytes: u64,
    /// RSS growth from before the fake clusters to converged, per cluster (one agent with its
    /// kube client plus its fake API state), bytes.
    pub rss_per_cluster_bytes: u64,
    /// Open file descriptors with every agent converged.
    pub open_files_connected: usize,
    /// The soft open-file limit (`None`: unlimited).
    pub open_files_limit: Option<u64>,
}

/// The restart scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// Seconds from the new hub being ready until every agent was connected and in sync.
    pub all_back_s: f64,
    /// CPU seconds of the restarted hub from its start until every agent was back.
    pub hub_cpu_s: f64,
    /// Streams the restarted hub refused by its admission limit (each told when to come back).
    pub admission_refusals: u64,
    /// Agents that reconnected in sync (Welcome{in_sync}).
    pub in_sync_reconnects: u64,
    /// Bytes sent hub → agents by the restarted hub until every agent was back, per agent.
    pub bytes_per_agent: f64,
}

/// Status truth.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusTruth {
    /// Clusters compared.
    pub checked: usize,
    /// Clusters whose Secret differs from what the store records (must be 0).
    pub mismatches: usize,
    /// The first few mismatching clusters and why.
    pub examples: Vec<String>,
}

/// Baseline figures.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// The model, in words.
    pub model: String,
    /// Calls per rotation (one refresh of every cluster), as issued.
    pub per_rotation: Vec<RefreshCalls>,
    /// Key Vault calls per rotation counted by the emulator, by operation.
    pub keyvault_calls: Vec<BTreeMap<String, u64>>,
    /// Staleness per rotation from refresh phases.
    pub staleness: Option<Staleness>,
    /// Baseline Key Vault calls / keyfleet Key Vault calls, over all rotations.
    pub calls_ratio: f64,
}

/// One performance target (ARCHITECTURE.md, Performance Targets).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub what: String,
    /// The target, in words.
    pub target: String,
    /// The measured figure, in words.
    pub measured: String,
    /// Whether it met the target (`None`: not applicable at this size).
    pub met: Option<bool>,
}

impl Report {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The human summary printed at the end of the run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "keyfleet {} · {} clusters · {} agents · {} hub replica(s) · store {}",
            self.version,
            self.clusters,
            self.agent_kind.as_str(),
            self.replicas.len().max(1),
            self.database
        );
        let _ = writeln!(out, "agents: {}", self.agents);
        let _ = writeln!(
            out,
            "Kubernetes API transport: {} ({})",
            self.kube_transport.map_or("none", |transport| transport.as_str()),
            self.kube_transport_reason
        );
        let _ = writeln!(
            out,
            "initial enrollment + convergence: {:.1} s",
            self.initial_convergence_s
        );
        self.rotation_table(&mut out);
        self.figures_table(&mut out);
        self.hub_lines(&mut out);
        self.outcome_lines(&mut out);
        self.targets_table(&mut out);
        if self.passed() {
            let _ = writeln!(out, "\nresult: PASSED");
        } else {
            let _ = writeln!(out, "\nresult: FAILED");
            for failure in &self.failures {
                let _ = writeln!(out, "  - {failure}");
            }
        }
        out
    }

    fn rotation_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<4} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8} {:>9} {:>9} {:>9} {:>7}",
            "rot",
            "converged",
            "first ms",
            "p50",
            "p90",
            "p99",
            "last",
            "KV calls",
            "flushes",
            "rows",
            "bytes sent",
            "hub CPU",
            "µs/agent",
            "fleet CPU",
            "stored s",
            "stalls"
        );
        for rotation in &self.rotations {
            let p = rotation.applied;
            let ms = |f: fn(&Percentiles) -> u64| p.as_ref().map_or("-".to_owned(), |p| f(p).to_string());
            let _ = writeln!(
                out,
                "{:<4} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8.2} {:>9.1} {:>9.1} {:>9} {:>7}{}",
                rotation.index,
                format!("{}/{}", rotation.converged, self.clusters),
                ms(|p| p.first_ms),
                ms(|p| p.p50_ms),
                ms(|p| p.p90_ms),
                ms(|p| p.p99_ms),
                ms(|p| p.last_ms),
                rotation.keyvault_calls.values().sum::<u64>(),
                rotation.status_flushes,
                rotation.status_rows,
                rotation.bytes_sent,
                rotation.hub_cpu_s,
                rotation.hub_cpu_us_per_agent,
                rotation.fleet_cpu_s,
                rotation
                    .store_applied_s
                    .map_or("-".to_owned(), |s| format!("{s:.1}")),
                rotation.stalled_closes,
                if rotation.replica_killed {
                    "  (replica killed)"
                } else {
                    ""
                },
            );
        }
    }

    fn figures_table(&self, out: &mut String) {
        let figures = &self.figures;
        let _ = writeln!(
            out,
            "\n{:<40} {:>12} {:>12}  verdict",
            "figure", "measured", "target"
        );
        for (what, figure) in [
            (
                "hub CPU per agent per rotation",
                &figures.hub_cpu_us_per_agent_per_rotation,
            ),
            ("hub RSS per connected agent", &figures.hub_rss_kib_per_agent),
            ("rotation p99, sync-now to held", &figures.rotation_p99_ms),
        ] {
            let _ = writeln!(
                out,
                "{:<40} {:>12} {:>12}  {}  ({})",
                what,
                figure.value_text(),
                figure.target_text(),
                figure.verdict(),
                figure.basis
            );
        }
    }

    fn hub_lines(&self, out: &mut String) {
        let hub = &self.hub;
        let _ = writeln!(
            out,
            "\nhub{}: peak RSS {:.1} MiB, {:.1} KiB per connected agent, CPU {:.1} s, {} bytes sent",
            if self.replicas.len() > 1 {
                format!(" (sum of {} replicas)", self.replicas.len())
            } else {
                String::new()
            },
            mib(hub.rss_peak_bytes),
            hub.rss_per_agent_bytes as f64 / 1024.0,
            hub.cpu_s,
            hub.bytes_sent
        );
        let _ = writeln!(
            out,
            "hub open files with every agent connected: {}",
            hub.open_files_connected
        );
        if self.replicas.len() > 1 {
            for replica in &self.replicas {
                let _ = writeln!(
                    out,
                    "  replica {} ({}, pid {}): {} agents, peak RSS {:.1} MiB, {:.1} KiB per agent, CPU {:.1} s{}",
                    replica.id,
                    replica.grpc_addr,
                    replica
                        .pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" → "),
                    replica.agents,
                    mib(replica.rss_peak_bytes),
                    replica.rss_per_agent_bytes as f64 / 1024.0,
                    replica.cpu_s,
                    if replica.kills > 0 {
                        format!(", killed {}×", replica.kills)
                    } else {
                        String::new()
                    }
                );
            }
        }
        let fleet = &self.fleet;
        let _ = writeln!(
            out,
            "simulated fleet (this process): RSS {:.1} MiB, {:.1} KiB per cluster ({}), {} open files (limit {})",
            mib(fleet.rss_connected_bytes),
            fleet.rss_per_cluster_bytes as f64 / 1024.0,
            match self.agent_kind {
                AgentsArg::Real => "agent + fake API",
                AgentsArg::Protocol => "protocol agent",
            },
            fleet.open_files_connected,
            fleet
                .open_files_limit
                .map_or("unlimited".to_owned(), |limit| limit.to_string())
        );
        if self.missed_notifications > 0 {
            let _ = writeln!(
                out,
                "note: {} write notifications missed; latencies of Secrets found by rescanning are upper bounds",
                self.missed_notifications
            );
        }
    }

    fn outcome_lines(&self, out: &mut String) {
        if let Some(kill) = &self.replica_kill {
            let _ = writeln!(
                out,
                "replica kill (kill -9) in rotation {}: replica {} ({}) at {:.2} s after sync-now, {}/{} clusters applied by then; leader {}; {}; every cluster back in sync {}",
                kill.rotation,
                kill.replica,
                kill.replica_id,
                kill.at_s,
                kill.applied_before,
                self.clusters,
                kill.leader
                    .map_or("unknown".to_owned(), |leader| format!("replica {leader}")),
                if kill.restarted {
                    "restarted on its ports"
                } else {
                    "left down, its agents failed over"
                },
                kill.all_back_in_sync_s
                    .map_or("NOT within the timeout".to_owned(), |s| format!(
                        "{s:.1} s after the kill"
                    ))
            );
        }
        if let Some(restart) = &self.restart {
            let _ = writeln!(
                out,
                "restart (kill -9): all agents back in sync after {:.1} s; {} in-sync reconnects, {:.0} bytes per agent, {} admission refusals, hub CPU {:.1} s",
                restart.all_back_s,
                restart.in_sync_reconnects,
                restart.bytes_per_agent,
                restart.admission_refusals,
                restart.hub_cpu_s
            );
        }
        let truth = &self.status_truth;
        let _ = writeln!(
            out,
            "status truth: {} clusters checked, {} mismatches",
            truth.checked, truth.mismatches
        );
        if let Some(drift) = &self.drift {
            let _ = writeln!(
                out,
                "drift during the last rotation: {} Secrets tampered with ({} edited, {} deleted), {} repaired in {:.1} s, {} listed by `keyfleet drift` in {:.1} s",
                drift.injected,
                drift.edited,
                drift.deleted,
                drift.repaired,
                drift.repaired_s,
                drift.reported,
                drift.reported_s
            );
        } else if let Some(why) = &self.drift_skipped {
            let _ = writeln!(out, "drift: {why}");
        }
        if let Some(baseline) = &self.baseline {
            let calls: u64 = baseline
                .keyvault_calls
                .iter()
                .flat_map(|calls| calls.values())
                .sum();
            let _ = writeln!(
                out,
                "polling baseline ({}): {} Key Vault calls for the same rotations ({:.0}× keyfleet)",
                baseline.model, calls, baseline.calls_ratio
            );
            if let Some(staleness) = &baseline.staleness {
                let p = &staleness.percentiles;
                let _ = writeln!(
                    out,
                    "  staleness with refreshInterval {} s: p50 {:.1} min, p99 {:.1} min",
                    staleness.refresh_interval_s,
                    p.p50_ms as f64 / 60_000.0,
                    p.p99_ms as f64 / 60_000.0
                );
            }
        }
        let _ = writeln!(
            out,
            "secret values in hub logs: {}",
            if self.leaks.is_empty() {
                "none".to_owned()
            } else {
                format!("{} FOUND", self.leaks.len())
            }
        );
    }

    fn targets_table(&self, out: &mut String) {
        if self.targets.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\n{:<44} {:<26} {:<24} verdict",
            "target (ARCHITECTURE.md)", "goal", "measured"
        );
        for target in &self.targets {
            let _ = writeln!(
                out,
                "{:<44} {:<26} {:<24} {}",
                target.what,
                target.target,
                target.measured,
                crate::figures::verdict(target.met)
            );
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let rotations = vec![Rotation {
            index: 1,
            version: "a".repeat(32),
            revision: 2,
            applied: crate::stats::percentiles(&[std::time::Duration::from_millis(40)]),
            converged: 3,
            duration_s: 0.2,
            store_applied_s: Some(0.5),
            hub_cpu_s: 0.12,
            hub_cpu_us_per_agent: crate::figures::cpu_us_per_agent(0.12, 3),
            hub_cpu_per_replica_s: vec![0.12],
            fleet_cpu_s: 0.3,
            stalled_closes: 0,
            in_sync_reconnects: 0,
            keyvault_calls: BTreeMap::from([("get_secret".to_owned(), 1)]),
            status_flushes: 1,
            status_rows: 3,
            bytes_sent: 900,
            replica_killed: false,
        }];
        let figures = crate::figures::headline(&rotations, 3, AgentsArg::Real, 60 * 1024);
        Report {
            version: "0.1.0".to_owned(),
            started: "2026-11-26T03:00:00Z".to_owned(),
            clusters: 3,
            agent_kind: AgentsArg::Real,
            agents: "real agent code".to_owned(),
            kube_transport: Some(crate::agents::KubeTransport::Memory),
            kube_transport_reason: "requested (--kube-transport memory)".to_owned(),
            figures,
            replicas: vec![ReplicaFigures {
                id: "loadtest-hub".to_owned(),
                agents: 3,
                ..ReplicaFigures::default()
            }],
            replica_kill: None,
            database: "sqlite".to_owned(),
            initial_convergence_s: 1.5,
            rotations,
            hub: HubFigures {
                rss_per_agent_bytes: 60 * 1024,
                ..HubFigures::default()
            },
            fleet: FleetFigures::default(),
            missed_notifications: 0,
            restart: None,
            status_truth: StatusTruth {
                checked: 3,
                ..StatusTruth::default()
            },
            drift: Some(crate::drift::DriftFigures {
                injected: 2,
                edited: 1,
                deleted: 1,
                repaired: 2,
                reported: 2,
                repaired_s: 0.4,
                reported_s: 1.2,
            }),
            drift_skipped: None,
            baseline: None,
            leaks: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn table_shows_every_rotation_and_the_verdict() {
        let mut report = report();
        let table = report.table();
        assert!(table.contains("3/3"), "{table}");
        assert!(
            table.contains("3 clusters · real agents · 1 hub replica(s)"),
            "{table}"
        );
        assert!(
            table.contains("Kubernetes API transport: memory (requested (--kube-transport memory))"),
            "{table}"
        );
        assert!(table.contains("result: PASSED"), "{table}");
        assert!(
            table.contains("2 Secrets tampered with (1 edited, 1 deleted), 2 repaired"),
            "{table}"
        );
        report.failures.push("1 status mismatch".to_owned());
        let table = report.table();
        assert!(
            table.contains("result: FAILED") && table.contains("1 status mismatch"),
            "{table}"
        );
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["rotations"][0]["applied"]["p50_ms"], 40);
        assert_eq!(json["kube_transport"], "memory");
        assert_eq!(json["agent_kind"], "real");
        assert_eq!(
            json["kube_transport_reason"],
            "requested (--kube-transport memory)"
        );
    }

    #[test]
    fn the_headline_figures_are_rows_with_their_targets_in_text_and_json() {
        let mut report = report();
        report.targets = crate::figures::targets(&report);
        let table = report.table();
        // 0.12 CPU seconds over 3 clusters: 40,000 µs per agent (a fleet of 3: not judged).
        let cpu_row = table
            .lines()
            .find(|line| line.starts_with("hub CPU per agent per rotation"))
            .expect("cpu row");
        assert!(
            cpu_row.contains("40000.0 µs") && cpu_row.contains("≤ 45 µs"),
            "{cpu_row}"
        );
        assert!(cpu_row.contains("n/a"), "{cpu_row}");
        let rss_row = table
            .lines()
            .find(|line| line.starts_with("hub RSS per connected agent"))
            .expect("rss row");
        assert!(
            rss_row.contains("60.0 KiB") && rss_row.contains("≤ 48 KiB"),
            "{rss_row}"
        );
        let p99_row = table
            .lines()
            .find(|line| line.starts_with("rotation p99, sync-now to held "))
            .expect("p99 row");
        assert!(
            p99_row.contains("40 ms") && p99_row.contains("≤ 1000 ms") && p99_row.contains("met"),
            "{p99_row}"
        );
        // The rotation row shows µs per agent too.
        let rotation_row = table
            .lines()
            .find(|line| line.starts_with("1 "))
            .expect("rotation row");
        assert!(rotation_row.contains("40000.0"), "{rotation_row}");
        assert!(
            table.contains("hub CPU per agent per rotation               ≤ 45 µs (real agents)"),
            "{table}"
        );
        let json = serde_json::to_value(&report).expect("serializes");
        let cpu = &json["figures"]["hub_cpu_us_per_agent_per_rotation"];
        assert_eq!(cpu["value"], 40_000.0);
        assert_eq!(cpu["target"], 45.0);
        assert_eq!(cpu["unit"], "µs");
        assert_eq!(json["figures"]["hub_rss_kib_per_agent"]["value"], 60.0);
        assert_eq!(json["figures"]["hub_rss_kib_per_agent"]["target"], 48.0);
        assert_eq!(json["figures"]["rotation_p99_ms"]["value"], 40.0);
        assert_eq!(json["figures"]["rotation_p99_ms"]["met"], true);
        assert_eq!(json["rotations"][0]["hub_cpu_us_per_agent"], 40_000.0);
    }

    /// The leader reads a version once for the fleet; every other replica once more for itself.
    #[test]
    fn key_vault_gets_are_judged_per_replica() {
        let gets = |report: &Report| {
            crate::figures::targets(report)
                .into_iter()
                .find(|target| target.what.starts_with("Key Vault GETs"))
                .expect("the Key Vault target")
        };
        let mut report = report();
        report.rotations[0].keyvault_calls = BTreeMap::from([("get".to_owned(), 2)]);
        let one = gets(&report);
        assert_eq!(
            (one.target.as_str(), one.met),
            ("1 per changed version", Some(false))
        );
        report.replicas.push(report.replicas[0].clone());
        let two = gets(&report);
        assert_eq!(two.target, "1 per changed version and replica (2)");
        assert_eq!((two.measured.as_str(), two.met), ("[2]", Some(true)));
        report.rotations[0].keyvault_calls = BTreeMap::from([("get".to_owned(), 3)]);
        assert_eq!(gets(&report).met, Some(false));
    }

    #[test]
    fn protocol_runs_say_so_and_show_replicas_and_the_kill() {
        let mut report = report();
        report.agent_kind = AgentsArg::Protocol;
        report.kube_transport = None;
        report.kube_transport_reason = "protocol agents: no Kubernetes API".to_owned();
        report.drift = None;
        report.drift_skipped = Some("n/a (protocol agents)".to_owned());
        report.replicas = (0..2)
            .map(|index| ReplicaFigures {
                id: format!("loadtest-hub-{index}"),
                grpc_addr: format!("127.0.0.1:{}", 7000 + index),
                pids: if index == 1 { vec![10, 11] } else { vec![9] },
                agents: 2,
                cpu_s: 1.5,
                kills: index as u32,
                ..ReplicaFigures::default()
            })
            .collect();
        report.rotations[0].replica_killed = true;
        report.replica_kill = Some(ReplicaKill {
            replica: 1,
            replica_id: "loadtest-hub-1".to_owned(),
            leader: Some(0),
            rotation: 1,
            at_s: 0.25,
            applied_before: 2,
            restarted: false,
            all_back_in_sync_s: Some(2.5),
        });
        let table = report.table();
        assert!(
            table.contains("3 clusters · protocol agents · 2 hub replica(s)"),
            "{table}"
        );
        assert!(table.contains("Kubernetes API transport: none"), "{table}");
        assert!(table.contains("drift: n/a (protocol agents)"), "{table}");
        assert!(table.contains("(replica killed)"), "{table}");
        assert!(
            table.contains("replica loadtest-hub-1 (127.0.0.1:7001, pid 10 → 11)")
                && table.contains("killed 1×"),
            "{table}"
        );
        assert!(
            table.contains("replica 1 (loadtest-hub-1) at 0.25 s after sync-now, 2/3 clusters applied by then; leader replica 0; left down, its agents failed over; every cluster back in sync 2.5 s after the kill"),
            "{table}"
        );
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["agent_kind"], "protocol");
        assert!(json["kube_transport"].is_null());
        assert_eq!(json["drift_skipped"], "n/a (protocol agents)");
        assert_eq!(json["replica_kill"]["replica_id"], "loadtest-hub-1");
        assert_eq!(json["replicas"][1]["pids"], serde_json::json!([10, 11]));
    }
}
