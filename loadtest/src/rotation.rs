//! One rotation: a new Key Vault version, sync-now, every cluster followed until it holds the new
//! revision; during the last one, drift (real agents) and the replica kill (`--kill-replica`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use keyfleet_testkit::keyvault;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::config::AgentsArg;
use crate::drift::{self, DriftFigures};
use crate::figures;
use crate::hub_process::Metrics;
use crate::replicas::Replicas;
use crate::report::{ReplicaKill, Rotation};
use crate::scenario::{Run, docker_config};
use crate::tracker::{Progress, Tracker};
use crate::{procfs, stats};

/// What a rotation produced.
pub(crate) struct RotationOutcome {
    pub(crate) rotation: Rotation,
    pub(crate) drift: Option<DriftFigures>,
    pub(crate) kill: Option<ReplicaKill>,
}

impl Run {
    /// Rotation `index` (1-based) after revision `previous_revision`.
    pub(crate) async fn rotate(
        &mut self,
        index: usize,
        previous_revision: u64,
    ) -> anyhow::Result<RotationOutcome> {
        let own_pid = std::process::id();
        let clusters = self.clusters;
        let value = docker_config();
        self.values.push(value.as_bytes().to_vec());
        let kv_before = self.kv.counters();
        let metrics_before = self.replicas.scrape_counters(&self.http).await?;
        let cpu_before = self.replicas.cpu()?;
        let fleet_before = procfs::sample(own_pid)?;
        let version = self
            .kv
            .set_secret(&self.args.remote_key, &value, &[("team", "platform")])
            .map_err(|error| anyhow::anyhow!("rotate the secret: {} {}", error.code, error.message))?;
        let last = index == self.args.rotations as usize;
        // The replica to kill is chosen before the rotation (not the Key Vault leader), so drift
        // is injected only where the agents' replica stays up: a drift report in flight to a
        // replica killed with -9 is the replica kill's check, not the drift check's.
        let victim = if last && self.args.kill_replica {
            let leader = self.replicas.leader(&self.http).await;
            Some(pick_victim(self.replicas.len(), leader))
        } else {
            None
        };
        let replica_count = self.replicas.len().max(1);
        let drift_candidates: Vec<usize> = (0..clusters)
            .filter(|index| victim.is_none_or(|victim| index % replica_count != victim))
            .collect();
        let since = Instant::now();
        self.admin.sync_now().await?;
        let revision = wait_for_revision(
            &self.admin,
            &self.fleet_secret,
            previous_revision,
            Duration::from_secs(30),
        )
        .await?;
        let progress = self.tracker.expect(revision, since);
        let bar = progress_bar(self.args.quiet, index, clusters);
        let follow = follow_progress(progress, bar.clone());
        let timeout = self.args.converge_timeout;
        let kind = self.fleet.kind();
        let Run {
            args,
            replicas,
            http,
            tracker,
            fleet,
            names,
            secret_name,
            namespaces,
            ..
        } = self;
        // Drift while the last rotation fans out: a few Secrets edited or deleted by hand, each
        // once its cluster holds the new revision (an edit that lands before the agent writes the
        // revision is simply overwritten by the rollout: no drift to repair).
        let inject = async {
            match fleet.handles() {
                Some(handles) if last && !args.no_drift => Some(
                    drift::inject_once_applied(
                        tracker,
                        handles,
                        &drift_candidates,
                        names,
                        secret_name,
                        namespaces,
                        revision,
                        timeout,
                    )
                    .await,
                ),
                _ => None,
            }
        };
        let kill = async {
            match victim {
                Some(victim) => Some(
                    kill_replica(
                        replicas, http, tracker, victim, kind, index, since, timeout, clusters,
                    )
                    .await,
                ),
                None => None,
            }
        };
        let ((latencies, behind), tampered, kill) = tokio::join!(tracker.wait(timeout), inject, kill);
        follow.abort();
        bar.finish_and_clear();
        let kill = kill.transpose()?;
        let duration_s = since.elapsed().as_secs_f64();
        let cpu_after = self.replicas.cpu()?;
        let fleet_cpu = procfs::sample(own_pid)?.cpu - fleet_before.cpu;
        let cpu_per_replica: Vec<f64> = cpu_after
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| after.saturating_sub(*before).as_secs_f64())
            .collect();
        let hub_cpu_s: f64 = cpu_per_replica.iter().sum();
        if kill.is_some() {
            self.reconnect_admin().await?;
        }
        // Acks reach the store in batches: let the last flush land before reading the counters.
        let store_applied_s = wait_for_applied(&self.admin, &self.fleet_secret, revision, clusters, timeout)
            .await
            .then(|| since.elapsed().as_secs_f64());
        let metrics_after = self.replicas.scrape_counters(&self.http).await?;
        let kv_after = self.kv.counters();
        let rotation = Rotation {
            index,
            version,
            revision,
            applied: stats::percentiles(&latencies),
            converged: latencies.len(),
            duration_s,
            store_applied_s,
            hub_cpu_s,
            hub_cpu_us_per_agent: figures::cpu_us_per_agent(hub_cpu_s, clusters),
            hub_cpu_per_replica_s: cpu_per_replica,
            fleet_cpu_s: fleet_cpu.as_secs_f64(),
            stalled_closes: delta(
                &metrics_before,
                &metrics_after,
                "keyfleet_hub_fleet_stalled_closes_total",
            ),
            in_sync_reconnects: delta(
                &metrics_before,
                &metrics_after,
                "keyfleet_hub_fleet_in_sync_hellos_total",
            ),
            keyvault_calls: calls_between(&kv_before, &kv_after, Some(keyvault::DEFAULT_CLIENT_ID)),
            status_flushes: delta(
                &metrics_before,
                &metrics_after,
                "keyfleet_hub_status_flushes_total",
            ),
            status_rows: delta(&metrics_before, &metrics_after, "keyfleet_hub_status_rows_total"),
            bytes_sent: delta(
                &metrics_before,
                &metrics_after,
                "keyfleet_hub_fleet_sent_bytes_total",
            ),
            replica_killed: kill.is_some(),
        };
        eprintln!("{}", rotation_line(&rotation, clusters));
        if !behind.is_empty() {
            self.failures.push(format!(
                "rotation {index}: {} clusters did not converge within {:?} (e.g. {})",
                behind.len(),
                timeout,
                behind.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(kill) = &kill
            && kill.all_back_in_sync_s.is_none()
        {
            self.failures.push(format!(
                "after replica {} was killed, not every cluster was back in sync within {timeout:?}",
                kill.replica_id
            ));
        }
        let mut drift_figures = None;
        if let Some((injected, at)) = tampered {
            let figures = drift::check(
                &self.admin,
                &injected,
                at,
                self.started,
                &self.secret_name,
                &self.namespaces,
            )
            .await?;
            eprintln!(
                "drift: {} Secrets tampered with, {} repaired in {:.1} s, {} reported by the hub in {:.1} s",
                figures.injected, figures.repaired, figures.repaired_s, figures.reported, figures.reported_s
            );
            if figures.repaired < figures.injected || figures.reported < figures.injected {
                self.failures.push(format!(
                    "drift: {} Secrets tampered with, only {} repaired and {} reported",
                    figures.injected, figures.repaired, figures.reported
                ));
            }
            drift_figures = Some(figures);
        }
        Ok(RotationOutcome {
            rotation,
            drift: drift_figures,
            kill,
        })
    }

    /// After a replica kill: the Admin client moves to a running replica if its own is down.
    async fn reconnect_admin(&mut self) -> anyhow::Result<()> {
        if self.replicas.is_up(0) {
            return Ok(());
        }
        let Some(up) = (0..self.replicas.len()).find(|&index| self.replicas.is_up(index)) else {
            bail!("no hub replica is running");
        };
        self.admin =
            Admin::connect(&self.replicas.url(up), self.replicas.ca_pem(), &self.admin_token).await?;
        Ok(())
    }
}

/// The replica to kill: the highest-numbered one that does not lead the Key Vault pollers
/// (replica 0 serves the Admin client, so it is the last choice); with no leader known, the
/// highest-numbered one.
pub(crate) fn pick_victim(replicas: usize, leader: Option<usize>) -> usize {
    (0..replicas)
        .rev()
        .find(|&index| Some(index) != leader)
        .unwrap_or(replicas.saturating_sub(1))
}

/// Once about half the fleet holds the rotation's revision, kill -9 replica `victim` (restarted
/// on its ports for real agents, which know one hub address), then wait until every cluster
/// holds the revision and every agent has a stream again.
#[allow(clippy::too_many_arguments)]
async fn kill_replica(
    replicas: &mut Replicas,
    http: &reqwest::Client,
    tracker: &Tracker,
    victim: usize,
    kind: AgentsArg,
    rotation: usize,
    since: Instant,
    timeout: Duration,
    clusters: usize,
) -> anyhow::Result<ReplicaKill> {
    let mut progress = tracker.progress();
    let half = clusters.div_ceil(2);
    let _ = tokio::time::timeout(timeout, wait_progress(&mut progress, |p| p.converged >= half)).await;
    let leader = replicas.leader(http).await;
    let applied_before = progress.borrow().converged;
    let killed_at = Instant::now();
    replicas.kill(victim, http).await?;
    let replica_id = replicas.ids()[victim].clone();
    eprintln!(
        "replica {victim} ({replica_id}) killed (SIGKILL) with {applied_before}/{clusters} clusters on the new revision"
    );
    let restarted = kind == AgentsArg::Real;
    if restarted {
        replicas.restart(victim).await?;
    }
    let deadline = killed_at + timeout;
    let converged =
        tokio::time::timeout_at(deadline, wait_progress(&mut progress, |p| p.converged >= p.total))
            .await
            .is_ok();
    let mut all_back_in_sync_s = None;
    if converged {
        loop {
            let connected = replicas
                .scrape_live(http)
                .await
                .map(|metrics| metrics.sum("keyfleet_hub_fleet_connected_agents") as usize)
                .unwrap_or(0);
            if connected >= clusters {
                all_back_in_sync_s = Some(killed_at.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(ReplicaKill {
        replica: victim,
        replica_id,
        leader,
        rotation,
        at_s: killed_at.saturating_duration_since(since).as_secs_f64(),
        applied_before,
        restarted,
        all_back_in_sync_s,
    })
}

/// Waits until `ready` holds for the tracker's progress (or its sender is gone).
async fn wait_progress(
    progress: &mut tokio::sync::watch::Receiver<Progress>,
    ready: impl FnMut(&Progress) -> bool,
) {
    let _ = progress.wait_for(ready).await.map(|_| ());
}

/// Polls the Admin API (`ListFleetSecrets`, cheap) until the FleetSecret's revision is above
/// `after`.
pub(crate) async fn wait_for_revision(
    admin: &Admin,
    fleet_secret: &str,
    after: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        match admin.revision(fleet_secret).await {
            Ok(revision) if revision > after => return Ok(revision),
            Ok(_) => {}
            // A hub that says "retry later" (its store is busy, e.g. while 10,000 agents enroll
            // at once) is asked again until the deadline; anything else is an error.
            Err(crate::admin::AdminError::Call { source, .. })
                if source.code() == tonic::Code::Unavailable && Instant::now() < deadline => {}
            Err(error) => return Err(error.into()),
        }
        if Instant::now() >= deadline {
            bail!("the hub rendered no revision of {fleet_secret} after {after} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the Admin API until the store says every cluster applied `revision`; false when the
/// timeout passed first.
pub(crate) async fn wait_for_applied(
    admin: &Admin,
    fleet_secret: &str,
    revision: u64,
    clusters: usize,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = admin.status(fleet_secret, 1).await
            && status.revision == revision
            && status.applied as usize >= clusters
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn progress_bar(quiet: bool, index: usize, clusters: usize) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(clusters as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} applied · {msg} · {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("rotation {index}"));
    bar
}

fn follow_progress(
    mut progress: tokio::sync::watch::Receiver<Progress>,
    bar: indicatif::ProgressBar,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let current = *progress.borrow_and_update();
            bar.set_position(current.converged as u64);
            bar.set_message(format!("pending {}", current.total - current.converged));
            if progress.changed().await.is_err() {
                return;
            }
        }
    })
}

fn rotation_line(rotation: &Rotation, clusters: usize) -> String {
    match &rotation.applied {
        Some(p) => format!(
            "rotation {}: revision {} on {}/{} clusters; first {} ms, p50 {} ms, p99 {} ms, last {} ms; {} Key Vault calls; hub CPU {:.2} s ({:.1} µs per agent)",
            rotation.index,
            rotation.revision,
            rotation.converged,
            clusters,
            p.first_ms,
            p.p50_ms,
            p.p99_ms,
            p.last_ms,
            rotation.keyvault_calls.values().sum::<u64>(),
            rotation.hub_cpu_s,
            rotation.hub_cpu_us_per_agent
        ),
        None => format!("rotation {}: no cluster converged", rotation.index),
    }
}

fn delta(before: &Metrics, after: &Metrics, name: &str) -> u64 {
    (after.sum(name) - before.sum(name)).max(0.0) as u64
}

/// Key Vault calls by operation between two counter snapshots, for one principal (or all).
pub(crate) fn calls_between(
    before: &keyvault::Counters,
    after: &keyvault::Counters,
    principal: Option<&str>,
) -> BTreeMap<String, u64> {
    let total = |counters: &keyvault::Counters| {
        let mut by_operation: BTreeMap<String, u64> = BTreeMap::new();
        for row in &counters.calls {
            if principal.is_none_or(|principal| row.principal == principal || row.principal == "anonymous") {
                *by_operation.entry(row.operation.clone()).or_default() += row.count;
            }
        }
        by_operation
    };
    let before = total(before);
    total(after)
        .into_iter()
        .map(|(operation, count)| {
            let delta = count - before.get(&operation).copied().unwrap_or(0);
            (operation, delta)
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_victim_is_never_the_leader_and_replica_zero_last() {
        assert_eq!(pick_victim(2, Some(0)), 1);
        assert_eq!(pick_victim(2, Some(1)), 0);
        assert_eq!(pick_victim(3, Some(2)), 1);
        assert_eq!(pick_victim(3, None), 2);
        assert_eq!(pick_victim(4, Some(0)), 3);
    }
}
