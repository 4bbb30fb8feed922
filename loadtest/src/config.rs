//! `keyfleet-loadtest` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The fleet rotation simulation: Key Vault emulator, the hub (`keyfleet serve`, its own
/// process), and N clusters (each a fake Kubernetes API with the real agent code, or a
/// protocol-level agent); rotates the shared registry credential R times and reports how fast and
/// how cheaply every cluster got it.
#[derive(Debug, Clone, Parser)]
#[command(name = "keyfleet-loadtest", version, about)]
pub struct Args {
    /// Simulated clusters.
    #[arg(long, env = "KEYFLEET_LOADTEST_CLUSTERS", default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub clusters: u32,
    /// Rotations of the Key Vault secret after the initial convergence.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub rotations: u32,
    /// Hub store: default an embedded SQLite file in the run's temporary directory;
    /// `postgres://…` for Postgres.
    #[arg(long, env = "KEYFLEET_LOADTEST_DATABASE")]
    pub database: Option<String>,
    /// Initial value of the Key Vault secret `--remote-key` (a docker config JSON); generated when
    /// absent.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The Key Vault secret the run writes and rotates: the one the FleetSecret of
    /// `--fleet-secret` reads (e.g. a spec imported from ESO with `keyfleet import eso`).
    #[arg(long, default_value = "acr-pull")]
    pub remote_key: String,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Leave everything running at the end (for `keyfleet status` and dashboards) until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// A `keyfleet` binary to run as the hub (default: this program runs the same hub code as its
    /// own process, `keyfleet-loadtest hub serve …`).
    #[arg(long, env = "KEYFLEET_LOADTEST_HUB")]
    pub hub_binary: Option<PathBuf>,
    /// What plays each cluster: `real` (the real agent code against a fake Kubernetes API) or
    /// `protocol` (a protocol-level agent: one TLS connection and Sync stream, applies and acks
    /// in memory; no Kubernetes API, no drift check).
    #[arg(long, value_enum, default_value_t = AgentsArg::Real)]
    pub agents: AgentsArg,
    /// Hub replicas (`keyfleet serve` processes on the same store); more than 1 needs a
    /// `postgres://` `--database`. Clusters are spread round-robin over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// During the last rotation, once about half the fleet applied it, kill -9 one replica (not
    /// the Key Vault leader when it can tell); needs `--replicas 2` or more.
    #[arg(long)]
    pub kill_replica: bool,
    /// How long a rotation may take before the clusters still behind count as not converged.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub converge_timeout: Duration,
    /// Skip the kill -9 / restart scenario.
    #[arg(long)]
    pub no_restart: bool,
    /// Skip the per-cluster polling baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Skip the drift check (a few clusters' Secrets edited or deleted during the last rotation,
    /// each repaired and listed by the hub's drift report).
    #[arg(long)]
    pub no_drift: bool,
    /// ESO refreshInterval assumed by the baseline's staleness figures.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub baseline_refresh: Duration,
    /// The FleetSecret spec to apply (its SecretStore document is replaced by one for the emulator).
    #[arg(long, default_value = "deploy/examples/regcred.yaml")]
    pub fleet_secret: PathBuf,
    /// How each agent reaches its cluster's fake Kubernetes API: `loopback` (HTTPS over
    /// 127.0.0.1, its own connections, as in a real cluster), `memory` (the same API router called
    /// in this process: no socket), or `auto` (loopback while the fleet's sockets fit in this
    /// process's open-file limit, memory above).
    #[arg(long, value_enum, default_value_t = KubeTransportArg::Auto)]
    pub kube_transport: KubeTransportArg,
    /// No live progress bar (for CI logs).
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Checks what clap cannot express: replicas need Postgres, `--kill-replica` needs replicas.
    pub fn validate(&self) -> Result<(), String> {
        let postgres = self
            .database
            .as_deref()
            .is_some_and(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"));
        if self.replicas > 1 && !postgres {
            return Err(format!(
                "--replicas {} needs a Postgres store shared by the replicas: --database postgres://…",
                self.replicas
            ));
        }
        if self.kill_replica && self.replicas < 2 {
            return Err("--kill-replica needs --replicas 2 or more".to_owned());
        }
        Ok(())
    }
}

/// `--agents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentsArg {
    /// The real agent code (`keyfleet_agent::AgentRuntime`) with a fake Kubernetes API each.
    Real,
    /// Protocol-level agents (`keyfleet_testkit::agent::RunningAgent`), in memory.
    Protocol,
}

impl AgentsArg {
    /// `real` or `protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Protocol => "protocol",
        }
    }
}

/// `--kube-transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeTransportArg {
    /// Loopback while it fits in the open-file limit, memory above.
    Auto,
    /// HTTPS over 127.0.0.1.
    Loopback,
    /// In process, no socket.
    Memory,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("keyfleet-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_quickstart() {
        let args = parse(&[]).expect("defaults");
        assert_eq!(args.clusters, 1500);
        assert_eq!(args.rotations, 3);
        assert!(args.database.is_none());
        assert_eq!(args.converge_timeout, Duration::from_secs(120));
        assert_eq!(args.kube_transport, KubeTransportArg::Auto);
        assert_eq!(args.agents, AgentsArg::Real);
        assert_eq!(args.replicas, 1);
        assert!(!args.kill_replica);
        assert_eq!(args.validate(), Ok(()));
    }

    #[test]
    fn replicas_need_postgres_and_a_kill_needs_replicas() {
        let sqlite = parse(&["--replicas", "2"]).expect("parses");
        assert!(sqlite.validate().expect_err("sqlite").contains("Postgres"));
        let lone = parse(&["--kill-replica", "--database", "postgres://h/db"]).expect("parses");
        assert!(lone.validate().expect_err("one replica").contains("--replicas 2"));
        let good = parse(&[
            "--agents",
            "protocol",
            "--replicas",
            "2",
            "--kill-replica",
            "--database",
            "postgres://postgres@127.0.0.1/keyfleet_lt",
        ])
        .expect("parses");
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(good.agents, AgentsArg::Protocol);
        assert_eq!(parse(&["--replicas", "0"]).expect_err("0").exit_code(), 2);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--clusters", "0"][..],
            &["--clusters", "many"],
            &["--converge-timeout", "soon"],
            &["--kube-transport", "carrier-pigeon"],
            &["--agents", "fake"],
        ] {
            let error = parse(bad).expect_err("invalid");
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
        let args = parse(&[
            "--clusters",
            "10000",
            "--rotations",
            "1",
            "--database",
            "postgres://x",
            "--kube-transport",
            "memory",
        ])
        .expect("valid");
        assert_eq!(args.clusters, 10_000);
        assert_eq!(args.kube_transport, KubeTransportArg::Memory);
    }
}
