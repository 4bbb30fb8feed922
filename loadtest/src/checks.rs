//! The checks after the rotations: the kill -9 restart of every hub replica, the status truth
//! (each cluster's held revision against the store's record, through the Admin API) and the
//! per-cluster polling baseline (ESO's model) against the same emulator.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;

use crate::baseline::{self, Baseline};
use crate::hub_process::Metrics;
use crate::report::{self, Restart, Rotation};
use crate::rotation::{calls_between, wait_for_applied};
use crate::scenario::{BASELINE_CLIENT, BASELINE_SECRET, Run};

/// How long every agent may take to come back after the restart.
const RESTART_BOUND: Duration = Duration::from_secs(120);

impl Run {
    /// Kills every replica with `SIGKILL`, starts them again on their ports, and measures how
    /// long until every agent has a stream (in sync) again.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<Restart> {
        let clusters = self.clusters;
        self.replicas.kill_all(&self.http).await?;
        eprintln!("hub killed (SIGKILL); restarting");
        let cpu_before = self.replicas.cpu_total()?;
        self.replicas.restart_all().await?;
        for line in self.replicas.describe() {
            eprintln!("keyfleet-loadtest: restarted {line}");
        }
        let ready_at = Instant::now();
        let deadline = ready_at + RESTART_BOUND;
        let mut metrics;
        loop {
            metrics = self.replicas.scrape_live(&self.http).await?;
            if connected(&metrics) >= clusters || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all_back_s = ready_at.elapsed().as_secs_f64();
        let connected = connected(&metrics);
        if connected < clusters {
            self.failures.push(format!(
                "after the restart only {connected}/{clusters} agents reconnected within {RESTART_BOUND:?}"
            ));
        }
        let hub_cpu = self.replicas.cpu_total()?.saturating_sub(cpu_before);
        // The restarted processes' own counters (their first scrape starts from zero).
        let bytes = metrics.sum("keyfleet_hub_fleet_sent_bytes_total");
        Ok(Restart {
            all_back_s,
            hub_cpu_s: hub_cpu.as_secs_f64(),
            admission_refusals: metrics.sum("keyfleet_hub_fleet_admission_rejects_total") as u64,
            in_sync_reconnects: metrics.sum("keyfleet_hub_fleet_in_sync_hellos_total") as u64,
            bytes_per_agent: bytes / clusters.max(1) as f64,
        })
    }

    /// Waits (bounded) for the store to count `revision` applied everywhere, then compares what
    /// each cluster holds with what the store records.
    pub(crate) async fn status_truth(&mut self, revision: u64) -> report::StatusTruth {
        wait_for_applied(
            &self.admin,
            &self.fleet_secret,
            revision,
            self.clusters,
            self.args.converge_timeout,
        )
        .await;
        let admin = &self.admin;
        let tracker = &self.tracker;
        let fleet_secret = self.fleet_secret.as_str();
        let results: Vec<Option<String>> = futures::stream::iter(self.names.iter())
            .map(|name| {
                let admin = admin.clone();
                async move {
                    let actual = tracker.held(name);
                    let recorded = match admin.cluster(name).await {
                        Ok(response) => response
                            .secrets
                            .iter()
                            .find(|secret| secret.fleet_secret == fleet_secret)
                            .map(|secret| (secret.applied_revision, secret.state.clone())),
                        Err(error) => return Some(format!("{name}: cannot read its status: {error}")),
                    };
                    match (actual, recorded) {
                        (Some(actual), Some((applied, _))) if actual == applied => None,
                        (actual, recorded) => Some(format!(
                            "{name}: cluster holds {actual:?}, store says {:?}",
                            recorded.map(|(applied, state)| format!("{applied} ({state})"))
                        )),
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mismatches: Vec<String> = results.into_iter().flatten().collect();
        let truth = report::StatusTruth {
            checked: self.names.len(),
            mismatches: mismatches.len(),
            examples: mismatches.into_iter().take(5).collect(),
        };
        if truth.mismatches > 0 {
            self.failures.push(format!(
                "{} clusters' Secrets differ from the store's status",
                truth.mismatches
            ));
        }
        truth
    }

    /// The same rotations under ESO's model: per cluster and refresh a new client, a token and a
    /// GET per key.
    pub(crate) async fn baseline(&self, rotations: &[Rotation]) -> anyhow::Result<report::Baseline> {
        let hub_calls: u64 = rotations
            .iter()
            .map(|rotation| rotation.keyvault_calls.values().sum::<u64>())
            .sum();
        let kv = &self.kv;
        let target = baseline::Target {
            vault_url: kv.vault_url().clone(),
            authority_url: kv.authority_url().clone(),
            tenant: kv.tenant().to_owned(),
            client_id: BASELINE_CLIENT.to_owned(),
            client_secret: BASELINE_SECRET.to_owned(),
            ca_pem: kv.ca_pem().as_bytes().to_vec(),
        };
        let plan = baseline::Plan {
            clusters: self.clusters,
            keys: vec![self.args.remote_key.clone()],
            refresh_interval: self.args.baseline_refresh,
            concurrency: 64,
        };
        let runner = Baseline::new(target, plan)?;
        let mut per_rotation = Vec::new();
        let mut keyvault_calls = Vec::new();
        eprintln!(
            "polling baseline: one refresh of {} clusters per rotation, ESO's way",
            self.clusters
        );
        for _ in 0..self.args.rotations {
            let before = kv.counters();
            per_rotation.push(runner.refresh_all().await);
            let after = kv.counters();
            keyvault_calls.push(calls_between(&before, &after, Some(BASELINE_CLIENT)));
        }
        let baseline_calls: u64 = keyvault_calls.iter().flat_map(|calls| calls.values()).sum();
        let staleness = runner.staleness(&mut rand::rng());
        Ok(report::Baseline {
            model: format!(
                "ESO: per cluster and refresh a new client (401 challenge), a new Entra token and one GET per key; refreshInterval {}",
                humantime::format_duration(self.args.baseline_refresh)
            ),
            per_rotation,
            keyvault_calls,
            staleness,
            calls_ratio: baseline_calls as f64 / hub_calls.max(1) as f64,
        })
    }
}

fn connected(metrics: &Metrics) -> usize {
    metrics.sum("keyfleet_hub_fleet_connected_agents") as usize
}
