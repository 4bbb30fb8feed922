//! The hub replicas of a run (`--replicas N`): N `keyfleet serve` processes on one store, each
//! with its own gRPC and ops port, the same development TLS CA (replica 0 creates it, the others
//! serve certificates from a copy), the same admin token and digest key. They can be killed
//! (`SIGKILL`) one at a time or all at once and started again on the same ports.
//!
//! CPU and RSS are read from `/proc` per replica and summed; CPU and the hub's counters survive a
//! kill (the last reading before the kill is kept), so a figure taken across one still counts
//! what the killed process did.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::try_join_all;

use crate::hub_process::{HubCommand, HubProcess, Metrics, Ready};
use crate::procfs;

/// What every replica shares.
#[derive(Debug, Clone)]
pub struct HubSetup {
    /// The program (a `keyfleet` binary, or this one with `prefix` `["hub"]`).
    pub binary: PathBuf,
    /// Arguments before `serve`.
    pub prefix: Vec<String>,
    /// `serve` arguments every replica takes (store, admin token, digest key, Key Vault CA, …);
    /// addresses, TLS directory and replica id are added per replica.
    pub args: Vec<String>,
    /// Environment (the Key Vault workload identity).
    pub env: Vec<(String, String)>,
    /// The run's directory (logs, ready files, TLS directories).
    pub work: PathBuf,
}

/// One replica and what its earlier processes did.
struct Replica {
    id: String,
    ready: Ready,
    command: HubCommand,
    process: Option<HubProcess>,
    /// Every process id it ran as.
    pids: Vec<u32>,
    /// CPU of its killed processes.
    retired_cpu: Duration,
    /// Highest VmHWM of any of its processes.
    peak_rss: u64,
    /// The last scrape of its killed processes (counters only).
    retired: Metrics,
    /// Times it was killed.
    kills: u32,
}

/// The replicas.
pub struct Replicas {
    replicas: Vec<Replica>,
    ca_pem: String,
}

/// How long a replica may take to write its ready file.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

impl Replicas {
    /// Starts `count` replicas: replica 0 first (it migrates the store and creates the CA), then
    /// the others at once.
    pub async fn start(setup: &HubSetup, count: usize) -> anyhow::Result<Self> {
        let first = start_replica(setup, 0, count).await?;
        let ca_dir = setup.work.join("tls");
        let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).context("read the hub CA")?;
        for index in 1..count {
            let dir = tls_dir(setup, index);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            for file in ["ca.pem", "ca-key.pem"] {
                std::fs::copy(ca_dir.join(file), dir.join(file))
                    .with_context(|| format!("copy the hub CA into {}", dir.display()))?;
            }
        }
        let others = try_join_all((1..count).map(|index| start_replica(setup, index, count))).await?;
        let mut replicas = vec![first];
        replicas.extend(others);
        Ok(Self { replicas, ca_pem })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The CA every replica's certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// gRPC addresses, by replica.
    pub fn grpc_addrs(&self) -> Vec<SocketAddr> {
        self.replicas
            .iter()
            .map(|replica| replica.ready.grpc_addr)
            .collect()
    }

    /// `https://localhost:PORT` of replica `index` (its certificate names localhost).
    pub fn url(&self, index: usize) -> String {
        format!(
            "https://localhost:{}",
            self.replicas[index].ready.grpc_addr.port()
        )
    }

    /// Replica ids (`--replica-id`).
    pub fn ids(&self) -> Vec<String> {
        self.replicas.iter().map(|replica| replica.id.clone()).collect()
    }

    /// Process ids of the running replicas (`None` for one that is down).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.replicas
            .iter()
            .map(|replica| replica.process.as_ref().and_then(HubProcess::pid))
            .collect()
    }

    /// Whether replica `index` runs.
    pub fn is_up(&self, index: usize) -> bool {
        self.replicas[index].process.is_some()
    }

    /// The log files of every replica (for the leak scan).
    pub fn logs(&self) -> Vec<PathBuf> {
        self.replicas
            .iter()
            .map(|replica| replica.command.log.clone())
            .collect()
    }

    /// One line per replica: id, pid, addresses (printed at start, for `perf record -p`).
    pub fn describe(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|replica| {
                format!(
                    "hub replica {} pid {} grpc {} ops {} log {}",
                    replica.id,
                    replica
                        .process
                        .as_ref()
                        .and_then(HubProcess::pid)
                        .map_or("-".to_owned(), |pid| pid.to_string()),
                    replica.ready.grpc_addr,
                    replica.ready.ops_addr,
                    replica.command.log.display()
                )
            })
            .collect()
    }

    /// CPU (user + system) per replica over every process it ran as, now.
    pub fn cpu(&mut self) -> anyhow::Result<Vec<Duration>> {
        self.replicas
            .iter_mut()
            .map(|replica| {
                let current = match replica.process.as_ref().and_then(HubProcess::pid) {
                    Some(pid) => {
                        let sample = procfs::sample(pid)?;
                        replica.peak_rss = replica.peak_rss.max(sample.peak_rss_bytes);
                        sample.cpu
                    }
                    None => Duration::ZERO,
                };
                Ok(replica.retired_cpu + current)
            })
            .collect()
    }

    /// CPU summed over the replicas, now.
    pub fn cpu_total(&mut self) -> anyhow::Result<Duration> {
        Ok(self.cpu()?.into_iter().sum())
    }

    /// RSS per replica now (0 for one that is down).
    pub fn rss(&mut self) -> anyhow::Result<Vec<u64>> {
        self.replicas
            .iter_mut()
            .map(
                |replica| match replica.process.as_ref().and_then(HubProcess::pid) {
                    Some(pid) => {
                        let sample = procfs::sample(pid)?;
                        replica.peak_rss = replica.peak_rss.max(sample.peak_rss_bytes);
                        Ok(sample.rss_bytes)
                    }
                    None => Ok(0),
                },
            )
            .collect()
    }

    /// Peak RSS (VmHWM) per replica, the highest of its processes.
    pub fn peak_rss(&mut self) -> anyhow::Result<Vec<u64>> {
        self.rss()?;
        Ok(self.replicas.iter().map(|replica| replica.peak_rss).collect())
    }

    /// Open files per running replica, summed.
    pub fn open_files(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        for pid in self.pids().into_iter().flatten() {
            total += procfs::open_files(pid)?;
        }
        Ok(total)
    }

    /// Times each replica was killed.
    pub fn kills(&self) -> Vec<u32> {
        self.replicas.iter().map(|replica| replica.kills).collect()
    }

    /// Every process ids each replica ran as.
    pub fn all_pids(&self) -> Vec<Vec<u32>> {
        self.replicas.iter().map(|replica| replica.pids.clone()).collect()
    }

    /// The running replicas' metrics, merged (gauges: what holds now).
    pub async fn scrape_live(&self, http: &reqwest::Client) -> anyhow::Result<Metrics> {
        let mut merged = Metrics::default();
        for replica in self.replicas.iter().filter(|replica| replica.process.is_some()) {
            merged.merge(&Metrics::scrape(http, replica.ready.ops_addr).await?);
        }
        Ok(merged)
    }

    /// Counters over every process of every replica: the running ones' plus the last scrape of
    /// the killed ones (so a delta across a kill still counts what the killed process did).
    pub async fn scrape_counters(&self, http: &reqwest::Client) -> anyhow::Result<Metrics> {
        let mut merged = self.scrape_live(http).await?;
        for replica in &self.replicas {
            merged.merge(&replica.retired);
        }
        Ok(merged)
    }

    /// Index of the replica leading the Key Vault pollers (`keyfleet_hub_leader` 1), if one
    /// says so.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<usize> {
        for (index, replica) in self.replicas.iter().enumerate() {
            if replica.process.is_none() {
                continue;
            }
            if let Ok(metrics) = Metrics::scrape(http, replica.ready.ops_addr).await
                && metrics.sum("keyfleet_hub_leader") >= 1.0
            {
                return Some(index);
            }
        }
        None
    }

    /// `SIGKILL` to replica `index` (no drain): its CPU and counters so far are kept.
    pub async fn kill(&mut self, index: usize, http: &reqwest::Client) -> anyhow::Result<()> {
        let replica = &mut self.replicas[index];
        let Some(process) = replica.process.take() else {
            return Ok(());
        };
        // Read what it did (a scrape is best effort: it is about to die anyway).
        if let Ok(metrics) = Metrics::scrape(http, replica.ready.ops_addr).await {
            replica.retired.merge(&metrics);
        }
        if let Some(pid) = process.pid()
            && let Ok(sample) = procfs::sample(pid)
        {
            replica.retired_cpu += sample.cpu;
            replica.peak_rss = replica.peak_rss.max(sample.peak_rss_bytes);
        }
        replica.kills += 1;
        process.kill().await?;
        Ok(())
    }

    /// Starts replica `index` again on its ports (after [`Replicas::kill`]).
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let replica = &mut self.replicas[index];
        if replica.process.is_some() {
            return Ok(());
        }
        let process = HubProcess::start(replica.command.clone(), READY_TIMEOUT)
            .await
            .with_context(|| format!("restart hub replica {}", replica.id))?;
        replica.pids.extend(process.pid());
        replica.process = Some(process);
        Ok(())
    }

    /// Kills every running replica.
    pub async fn kill_all(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        for index in 0..self.replicas.len() {
            self.kill(index, http).await?;
        }
        Ok(())
    }

    /// Starts every replica that is down, at once, on its ports.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        let started = try_join_all(
            self.replicas
                .iter()
                .filter(|replica| replica.process.is_none())
                .map(|replica| {
                    let command = replica.command.clone();
                    let id = replica.id.clone();
                    async move {
                        HubProcess::start(command, READY_TIMEOUT)
                            .await
                            .with_context(|| format!("restart hub replica {id}"))
                    }
                }),
        )
        .await?;
        let mut started = started.into_iter();
        for replica in self
            .replicas
            .iter_mut()
            .filter(|replica| replica.process.is_none())
        {
            if let Some(process) = started.next() {
                replica.pids.extend(process.pid());
                replica.process = Some(process);
            }
        }
        Ok(())
    }

    /// `SIGTERM` to every running replica (drain), `SIGKILL` after `grace`.
    pub async fn terminate(self, grace: Duration) -> anyhow::Result<()> {
        for replica in self.replicas {
            if let Some(process) = replica.process {
                process.terminate(grace).await?;
            }
        }
        Ok(())
    }
}

fn tls_dir(setup: &HubSetup, index: usize) -> PathBuf {
    if index == 0 {
        setup.work.join("tls")
    } else {
        setup.work.join(format!("tls-{index}"))
    }
}

/// Starts replica `index` on free ports and pins them in its command (a restart takes the same).
async fn start_replica(setup: &HubSetup, index: usize, count: usize) -> anyhow::Result<Replica> {
    let id = if count == 1 {
        "loadtest-hub".to_owned()
    } else {
        format!("loadtest-hub-{index}")
    };
    let mut args = setup.args.clone();
    args.extend([
        "--grpc-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--ops-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--tls-self-signed".to_owned(),
        tls_dir(setup, index).display().to_string(),
        "--replica-id".to_owned(),
        id.clone(),
    ]);
    let name = if count == 1 {
        "hub".to_owned()
    } else {
        format!("hub-{index}")
    };
    let mut command = HubCommand {
        binary: setup.binary.clone(),
        prefix: setup.prefix.clone(),
        args,
        env: setup.env.clone(),
        log: setup.work.join(format!("{name}.log")),
        ready_file: setup.work.join(format!("{name}-ready.json")),
    };
    let process = HubProcess::start(command.clone(), READY_TIMEOUT)
        .await
        .with_context(|| format!("start hub replica {id}"))?;
    let ready = process.ready();
    pin_addr(&mut command.args, "--grpc-addr", ready.grpc_addr);
    pin_addr(&mut command.args, "--ops-addr", ready.ops_addr);
    Ok(Replica {
        id,
        ready,
        command,
        pids: process.pid().into_iter().collect(),
        process: Some(process),
        retired_cpu: Duration::ZERO,
        peak_rss: 0,
        retired: Metrics::default(),
        kills: 0,
    })
}

/// Replaces the value after `flag` with `addr`.
fn pin_addr(args: &mut [String], flag: &str, addr: SocketAddr) {
    if let Some(index) = args.iter().position(|arg| arg == flag)
        && let Some(value) = args.get_mut(index + 1)
    {
        *value = addr.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_address_after_its_flag() {
        let mut args = vec![
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--ops-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        pin_addr(&mut args, "--ops-addr", "127.0.0.1:9090".parse().expect("addr"));
        assert_eq!(args[1], "127.0.0.1:0");
        assert_eq!(args[3], "127.0.0.1:9090");
    }
}
