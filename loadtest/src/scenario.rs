//! The fleet rotation simulation, start to end: Key Vault emulator, the hub replicas (each
//! `keyfleet serve` in its own process), N simulated clusters (real agents with fake Kubernetes
//! APIs, or protocol-level agents), enrollment, the regcred FleetSecret, R rotations followed
//! live (`rotation.rs`: drift, a replica kill), a kill -9 restart, the status truth check, the
//! polling baseline (`checks.rs`), the leak scan and the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures::StreamExt as _;
use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{self, KeyVaultConfig, KeyVaultEmulator, KeyVaultHandle, Principal};
use rand::Rng as _;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::agents;
use crate::config::{AgentsArg, Args};
use crate::fleet::Fleet;
use crate::replicas::{HubSetup, Replicas};
use crate::report::{self, Report};
use crate::rotation::{wait_for_applied, wait_for_revision};
use crate::tracker::Tracker;
use crate::{figures, leakcheck, procfs};

/// The principal the polling baseline authenticates as (one per cluster in reality; one client
/// id here, with a token per refresh, which is what the emulator counts).
pub(crate) const BASELINE_CLIENT: &str = "eso-cluster";
pub(crate) const BASELINE_SECRET: &str = "eso-cluster-secret";
/// Registry the generated docker config points at.
const REGISTRY: &str = "keyfleetdemo.azurecr.io";

/// What the phases of a run share.
pub(crate) struct Run {
    pub(crate) args: Args,
    pub(crate) clusters: usize,
    pub(crate) names: Vec<String>,
    pub(crate) kv: KeyVaultHandle,
    /// Every value the Key Vault secret had (for the leak scan).
    pub(crate) values: Vec<Vec<u8>>,
    pub(crate) replicas: Replicas,
    pub(crate) admin: Admin,
    pub(crate) admin_token: String,
    pub(crate) http: reqwest::Client,
    pub(crate) fleet: Fleet,
    pub(crate) tracker: Tracker,
    /// The FleetSecret's name (the key protocol agents hold).
    pub(crate) fleet_secret: String,
    /// The target Secret's name and namespaces.
    pub(crate) secret_name: String,
    pub(crate) namespaces: Vec<String>,
    pub(crate) started: chrono::DateTime<chrono::Utc>,
    pub(crate) failures: Vec<String>,
}

/// Runs the whole simulation and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    args.validate().map_err(anyhow::Error::msg)?;
    let started = chrono::Utc::now();
    let dir = tempfile::Builder::new()
        .prefix("keyfleet-loadtest-")
        .tempdir()
        .context("create the run directory")?;
    let work = dir.path().to_path_buf();
    eprintln!("keyfleet-loadtest: working in {}", work.display());
    let clusters = args.clusters as usize;
    let own_pid = std::process::id();

    // --- Key Vault emulator -------------------------------------------------------------------
    let mut kv_config = KeyVaultConfig::default();
    kv_config
        .principals
        .push(Principal::with_secret(BASELINE_CLIENT, BASELINE_SECRET));
    let kv = KeyVaultEmulator::start(kv_config)
        .await
        .context("start the Key Vault emulator")?;
    let initial = match &args.secret_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("read --secret-file {}", path.display()))?
        }
        None => docker_config(),
    };
    let values = vec![initial.as_bytes().to_vec()];
    kv.set_secret(&args.remote_key, &initial, &[("team", "platform")])
        .map_err(|error| anyhow::anyhow!("set the initial secret: {} {}", error.code, error.message))?;
    std::fs::write(work.join("kv-ca.pem"), kv.ca_pem()).context("write the emulator CA")?;
    let federated = kv.mint_federated_token(
        keyvault::DEFAULT_FEDERATED_ISSUER,
        keyvault::DEFAULT_FEDERATED_SUBJECT,
    );
    std::fs::write(work.join("federated-token"), federated).context("write the federated token")?;
    let (secret_name, namespaces, spec_text) = fleet_secret_spec(&args.fleet_secret, kv.vault_url())?;

    // --- the hub replicas -----------------------------------------------------------------------
    let admin_token = random_token();
    let setup = hub_setup(&args, &work, &kv, &admin_token)?;
    let mut replicas = Replicas::start(&setup, args.replicas as usize)
        .await
        .context("start the hub")?;
    for line in replicas.describe() {
        eprintln!("keyfleet-loadtest: {line}");
    }
    // Bounded: a hub whose operations endpoint stops answering fails the run with its address
    // (a metrics scrape once hung a run until the test's 10-minute limit).
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .context("build the metrics client")?;
    let admin = Admin::connect(&replicas.url(0), replicas.ca_pem(), &admin_token).await?;
    // The simulated fleet is enrolled from scratch: an earlier run's clusters would collide with
    // its names, and this program never deletes data it did not create.
    let existing = admin.cluster_count().await?;
    if existing > 0 {
        bail!(
            "the database given by --database already holds {existing} cluster(s), from an earlier run \
             or a real fleet; pass an empty database (for example: createdb keyfleet_loadtest)"
        );
    }
    let rss_before_agents = replicas.rss()?;

    // --- apply the FleetSecret ------------------------------------------------------------------
    let applied = admin
        .apply(vec![v1::SpecFile {
            name: args.fleet_secret.display().to_string(),
            content: spec_text,
        }])
        .await?;
    for object in &applied.objects {
        eprintln!("{}/{} {}", object.kind.to_lowercase(), object.name, object.action);
    }
    let fleet_secret = applied
        .objects
        .iter()
        .find(|object| object.kind == "FleetSecret")
        .map(|object| object.name.clone())
        .context("the spec file holds no FleetSecret")?;

    // --- the simulated fleet --------------------------------------------------------------------
    let fleet_rss_before = procfs::sample(own_pid)?.rss_bytes;
    let names: Vec<String> = (0..clusters).map(|index| format!("cluster-{index:05}")).collect();
    let (fleet, tracker) = match args.agents {
        AgentsArg::Real => {
            let transport = agents::choose_transport(
                args.kube_transport,
                clusters,
                procfs::open_files_limit(own_pid).map_err(|error| error.to_string()),
            );
            eprintln!(
                "keyfleet-loadtest: agents reach their fake Kubernetes APIs over {} ({})",
                transport.transport.as_str(),
                transport.reason
            );
            Fleet::real(&names, &secret_name, &namespaces, transport).await?
        }
        AgentsArg::Protocol => Fleet::protocol(&names, &fleet_secret, &replicas),
    };
    let mut run = Run {
        args,
        clusters,
        names,
        kv,
        values,
        replicas,
        admin,
        admin_token,
        http,
        fleet,
        tracker,
        fleet_secret,
        secret_name,
        namespaces,
        started,
        failures: Vec::new(),
    };
    let (first_revision, initial_convergence_s) = run.enroll_and_converge().await?;
    let rss_connected = run.replicas.rss()?;
    let hub_open_files = run.replicas.open_files()?;
    let fleet_connected = procfs::sample(own_pid)?;
    let fleet_figures = report::FleetFigures {
        rss_connected_bytes: fleet_connected.rss_bytes,
        rss_per_cluster_bytes: fleet_connected.rss_bytes.saturating_sub(fleet_rss_before)
            / clusters.max(1) as u64,
        open_files_connected: procfs::open_files(own_pid)?,
        open_files_limit: procfs::open_files_limit(own_pid)?,
    };

    // --- rotations ------------------------------------------------------------------------------
    let mut rotations = Vec::new();
    let mut drift_figures = None;
    let mut replica_kill = None;
    let mut previous_revision = first_revision;
    for index in 1..=run.args.rotations as usize {
        let outcome = run.rotate(index, previous_revision).await?;
        previous_revision = outcome.rotation.revision;
        rotations.push(outcome.rotation);
        drift_figures = drift_figures.or(outcome.drift);
        replica_kill = replica_kill.or(outcome.kill);
    }

    // --- restart: kill -9 and start again -----------------------------------------------------
    let restart = if run.args.no_restart {
        None
    } else {
        Some(run.restart().await?)
    };
    let cpu_per_replica = run.replicas.cpu()?;
    let peak_per_replica = run.replicas.peak_rss()?;
    let bytes_total = run
        .replicas
        .scrape_counters(&run.http)
        .await?
        .sum("keyfleet_hub_fleet_sent_bytes_total");
    let replica_count = run.replicas.len();
    let replica_figures: Vec<report::ReplicaFigures> = (0..replica_count)
        .map(|index| {
            let agents = (index..clusters).step_by(replica_count).count();
            let grown = rss_connected[index].saturating_sub(rss_before_agents[index]);
            report::ReplicaFigures {
                id: run.replicas.ids()[index].clone(),
                grpc_addr: run.replicas.grpc_addrs()[index].to_string(),
                pids: run.replicas.all_pids()[index].clone(),
                agents,
                cpu_s: cpu_per_replica[index].as_secs_f64(),
                rss_peak_bytes: peak_per_replica[index],
                rss_connected_bytes: rss_connected[index],
                rss_per_agent_bytes: grown / agents.max(1) as u64,
                kills: run.replicas.kills()[index],
            }
        })
        .collect();
    let grown: u64 = rss_connected
        .iter()
        .zip(&rss_before_agents)
        .map(|(connected, before)| connected.saturating_sub(*before))
        .sum();
    let hub_figures = report::HubFigures {
        rss_peak_bytes: peak_per_replica.iter().sum(),
        rss_connected_bytes: rss_connected.iter().sum(),
        rss_per_agent_bytes: grown / clusters.max(1) as u64,
        cpu_s: cpu_per_replica.iter().map(Duration::as_secs_f64).sum(),
        bytes_sent: bytes_total as u64,
        open_files_connected: hub_open_files,
    };

    // --- status truth, baseline, leak scan ----------------------------------------------------
    let status_truth = run.status_truth(previous_revision).await;
    let baseline = if run.args.no_baseline || run.args.rotations == 0 {
        None
    } else {
        Some(run.baseline(&rotations).await?)
    };
    let mut leaks = Vec::new();
    for log in run.replicas.logs() {
        let text = std::fs::read(&log).with_context(|| format!("read the hub log {}", log.display()))?;
        leaks.extend(leakcheck::scan(&text, &run.values));
    }
    if !leaks.is_empty() {
        run.failures
            .push(format!("{} secret values found in the hub log", leaks.len()));
    }

    let kind = run.fleet.kind();
    let drift_skipped = match (kind, &drift_figures) {
        (_, Some(_)) => None,
        (AgentsArg::Protocol, None) => Some("n/a (protocol agents)".to_owned()),
        (AgentsArg::Real, None) if run.args.no_drift => Some("skipped (--no-drift)".to_owned()),
        (AgentsArg::Real, None) => Some("not run (no rotation)".to_owned()),
    };
    let (kube_transport, kube_transport_reason) = match run.fleet.transport() {
        Some(choice) => (Some(choice.transport), choice.reason.clone()),
        None => (None, "protocol agents: no Kubernetes API".to_owned()),
    };
    let figures = figures::headline(&rotations, clusters, kind, hub_figures.rss_per_agent_bytes);
    let mut report = Report {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: started.to_rfc3339(),
        clusters,
        agent_kind: kind,
        agents: run.fleet.describe(clusters, replica_count),
        kube_transport,
        kube_transport_reason,
        figures,
        replicas: replica_figures,
        replica_kill,
        database: database_kind(run.args.database.as_deref()),
        initial_convergence_s,
        rotations,
        hub: hub_figures,
        fleet: fleet_figures,
        missed_notifications: run.tracker.missed_notifications(),
        restart,
        status_truth,
        drift: drift_figures,
        drift_skipped,
        baseline,
        leaks,
        targets: Vec::new(),
        failures: std::mem::take(&mut run.failures),
    };
    report.targets = figures::targets(&report);

    if run.args.keep {
        for line in run.replicas.describe() {
            eprintln!("--keep: {line}");
        }
        eprintln!(
            "--keep: hub at {} (admin token in {}), CA {}; Ctrl-C to stop",
            run.replicas.url(0),
            work.join("admin-token").display(),
            work.join("tls/ca.pem").display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let keep = run.args.keep;
    let Run {
        fleet, replicas, kv, ..
    } = run;
    fleet.stop().await;
    replicas.terminate(Duration::from_secs(10)).await?;
    kv.shutdown().await;
    if keep {
        let _ = dir.keep();
    }
    Ok(report)
}

impl Run {
    /// Enrolls every cluster, starts its agent and waits until every one holds the first
    /// revision and the store counts them all; returns that revision and the seconds it took.
    async fn enroll_and_converge(&mut self) -> anyhow::Result<(u64, f64)> {
        let clusters = self.clusters;
        let setup_started = Instant::now();
        let canaries = (clusters / 100).max(1);
        let tokens: Vec<(usize, String)> = futures::stream::iter(self.names.iter().enumerate())
            .map(|(index, name)| {
                let admin = self.admin.clone();
                async move {
                    let ring = if index < canaries { "canary" } else { "main" };
                    let region = ["westeurope", "eastus", "southeastasia"][index % 3];
                    let response = admin
                        .add_cluster(name, &[("env", "prod"), ("ring", ring), ("region", region)])
                        .await?;
                    let token = response.token.context("CreateCluster returned no token")?.token;
                    anyhow::Ok((index, token))
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        for (index, token) in tokens {
            self.fleet
                .start(index, &self.names[index], token, &self.replicas, &self.tracker)
                .await?;
        }
        let first_revision =
            wait_for_revision(&self.admin, &self.fleet_secret, 0, Duration::from_secs(60)).await?;
        self.tracker.expect(first_revision, setup_started);
        let (_, behind) = self
            .tracker
            .wait(self.args.converge_timeout.max(Duration::from_secs(300)))
            .await;
        if !behind.is_empty() {
            self.failures.push(format!(
                "{} clusters did not converge on the first revision (e.g. {})",
                behind.len(),
                behind.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let initial_convergence_s = setup_started.elapsed().as_secs_f64();
        eprintln!(
            "enrolled {clusters} clusters and converged on revision {first_revision} in {initial_convergence_s:.1} s"
        );
        // The first rotation's counters (statements, rows) must not include the initial status
        // rows the hub is still recording.
        if !wait_for_applied(
            &self.admin,
            &self.fleet_secret,
            first_revision,
            clusters,
            self.args.converge_timeout.max(Duration::from_secs(300)),
        )
        .await
        {
            self.failures.push(format!(
                "the store did not count all {clusters} clusters applied on revision {first_revision}"
            ));
        }
        Ok((first_revision, initial_convergence_s))
    }
}

/// What every hub replica is started with.
fn hub_setup(args: &Args, work: &Path, kv: &KeyVaultHandle, admin_token: &str) -> anyhow::Result<HubSetup> {
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", work.join("keyfleet.db").display()));
    // The hub's token file format (name:token); the CLI reads the same file.
    std::fs::write(work.join("admin-token"), format!("loadtest:{admin_token}\n"))
        .context("write the admin token")?;
    // The hub keys the digests it stores with this (required with Postgres; every replica and a
    // restart use the same).
    let digest_key: [u8; 32] = rand::rng().random();
    std::fs::write(work.join("digest-key"), hex::encode(digest_key)).context("write the digest key")?;
    let (binary, prefix) = hub_program(args.hub_binary.as_deref())?;
    Ok(HubSetup {
        binary,
        prefix,
        args: vec![
            "--database".into(),
            database,
            "--migrate".into(),
            "--admin-token-file".into(),
            work.join("admin-token").display().to_string(),
            "--digest-key-file".into(),
            work.join("digest-key").display().to_string(),
            "--vault-ca-file".into(),
            work.join("kv-ca.pem").display().to_string(),
            "--vault-skip-challenge-resource-check".into(),
        ],
        env: vec![
            ("AZURE_TENANT_ID".into(), kv.tenant().to_owned()),
            ("AZURE_CLIENT_ID".into(), keyvault::DEFAULT_CLIENT_ID.to_owned()),
            (
                "AZURE_FEDERATED_TOKEN_FILE".into(),
                work.join("federated-token").display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST".into(), kv.authority_url().to_string()),
            ("KEYFLEET_LOG_FORMAT".into(), "json".into()),
        ],
        work: work.to_path_buf(),
    })
}

/// The program that runs a hub replica: `--hub-binary` (a `keyfleet` binary), else this very
/// program as `keyfleet-loadtest hub serve …` (the hub library's `main_with`: the same code as
/// `keyfleet serve`, nothing to build).
fn hub_program(explicit: Option<&Path>) -> anyhow::Result<(PathBuf, Vec<String>)> {
    match explicit {
        Some(path) => Ok((path.to_path_buf(), Vec::new())),
        None => Ok((
            std::env::current_exe().context("locate this binary")?,
            vec!["hub".to_owned()],
        )),
    }
}

/// `sqlite` or `postgres`, from the URL.
fn database_kind(url: Option<&str>) -> String {
    match url.and_then(|url| url.split(':').next()) {
        Some("postgresql") => "postgres".to_owned(),
        Some(scheme) => scheme.to_owned(),
        None => "sqlite".to_owned(),
    }
}

/// The spec file with its SecretStore pointed at the emulator, plus the target Secret's name and
/// namespaces (what the tracker looks for).
fn fleet_secret_spec(path: &Path, vault_url: &url::Url) -> anyhow::Result<(String, Vec<String>, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut name = None;
    let mut namespaces = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
            .with_context(|| format!("parse {}", path.display()))?;
        if value.get("kind").and_then(serde_yaml::Value::as_str) == Some("FleetSecret") {
            // The Kubernetes shape (`spec.target`) or the deprecated flat one (`target`).
            let body = value.get("spec").unwrap_or(&value);
            let target = body.get("target").context("FleetSecret without target")?;
            name = target
                .get("name")
                .and_then(serde_yaml::Value::as_str)
                .map(str::to_owned);
            namespaces = target
                .get("namespaces")
                .and_then(serde_yaml::Value::as_sequence)
                .map(|list| {
                    list.iter()
                        .filter_map(|ns| ns.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
        }
    }
    let Some(name) = name else {
        bail!("{} holds no FleetSecret with a target name", path.display());
    };
    if namespaces.is_empty() {
        bail!(
            "{}: the loadtest needs target.namespaces (a list)",
            path.display()
        );
    }
    let rewritten = regex::Regex::new(r"(?m)^(\s*vaultUrl:\s*)\S+")
        .context("vaultUrl pattern")?
        .replace_all(
            &text,
            format!("${{1}}{}", vault_url.as_str().trim_end_matches('/')),
        )
        .into_owned();
    Ok((name, namespaces, rewritten))
}

/// A docker config JSON for the demo registry with a fresh random password.
pub(crate) fn docker_config() -> String {
    let password = random_token();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("keyfleet-pull:{password}"));
    serde_json::json!({
        "auths": {
            REGISTRY: { "username": "keyfleet-pull", "password": password, "auth": auth }
        }
    })
    .to_string()
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_hub_is_this_program_run_as_hub() {
        let (binary, prefix) = hub_program(None).expect("current exe");
        assert_eq!(binary, std::env::current_exe().expect("exe"));
        assert_eq!(prefix, ["hub"]);
        let (binary, prefix) = hub_program(Some(Path::new("/usr/bin/keyfleet"))).expect("explicit");
        assert_eq!(binary, Path::new("/usr/bin/keyfleet"));
        assert!(prefix.is_empty());
    }

    #[test]
    fn names_the_store_backend() {
        assert_eq!(database_kind(None), "sqlite");
        assert_eq!(database_kind(Some("sqlite:///tmp/x.db")), "sqlite");
        assert_eq!(database_kind(Some("postgres://h/db")), "postgres");
        assert_eq!(database_kind(Some("postgresql://h/db")), "postgres");
    }
}
