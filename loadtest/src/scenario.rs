//! The fleet rotation simulation, start to end: Key Vault emulator, the real hub binary, N
//! simulated clusters with the real agent code, enrollment, the regcred FleetSecret, R rotations
//! followed live, a kill -9 restart, the status truth check, the polling baseline, the leak scan
//! and the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures::StreamExt as _;
use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{self, KeyVaultConfig, KeyVaultEmulator, KeyVaultHandle, Principal};
use keyfleet_testkit::kube::FakeKube;
use rand::Rng as _;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::agents::{self, Agents};
use crate::baseline::{self, Baseline};
use crate::config::Args;
use crate::hub_process::{HubCommand, HubProcess, Metrics};
use crate::report::{self, Report, Rotation};
use crate::tracker::Tracker;
use crate::{drift, leakcheck, procfs, stats};

/// The Key Vault secret the example FleetSecret reads.
/// The principal the polling baseline authenticates as (one per cluster in reality; one client
/// id here, with a token per refresh, which is what the emulator counts).
const BASELINE_CLIENT: &str = "eso-cluster";
const BASELINE_SECRET: &str = "eso-cluster-secret";
/// Fleet size from which per-agent and per-10,000 figures are judged against their targets.
const MEASURABLE_FLEET: usize = 500;
/// Registry the generated docker config points at.
const REGISTRY: &str = "keyfleetdemo.azurecr.io";

/// Runs the whole simulation and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let started = chrono::Utc::now();
    let dir = tempfile::Builder::new()
        .prefix("keyfleet-loadtest-")
        .tempdir()
        .context("create the run directory")?;
    let work = dir.path().to_path_buf();
    eprintln!("keyfleet-loadtest: working in {}", work.display());
    let clusters = args.clusters as usize;
    let mut failures = Vec::new();
    let own_pid = std::process::id();
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

    // --- Key Vault emulator -------------------------------------------------------------------
    let mut kv_config = KeyVaultConfig::default();
    kv_config
        .principals
        .push(Principal::with_secret(BASELINE_CLIENT, BASELINE_SECRET));
    let kv = KeyVaultEmulator::start(kv_config)
        .await
        .context("start the Key Vault emulator")?;
    let mut values: Vec<Vec<u8>> = Vec::new();
    let initial = match &args.secret_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("read --secret-file {}", path.display()))?
        }
        None => docker_config(),
    };
    values.push(initial.as_bytes().to_vec());
    kv.set_secret(&args.remote_key, &initial, &[("team", "platform")])
        .map_err(|error| anyhow::anyhow!("set the initial secret: {} {}", error.code, error.message))?;
    std::fs::write(work.join("kv-ca.pem"), kv.ca_pem()).context("write the emulator CA")?;
    let federated = kv.mint_federated_token(
        keyvault::DEFAULT_FEDERATED_ISSUER,
        keyvault::DEFAULT_FEDERATED_SUBJECT,
    );
    std::fs::write(work.join("federated-token"), federated).context("write the federated token")?;

    // --- fake Kubernetes APIs -----------------------------------------------------------------
    let (secret_name, namespaces, spec_text) = fleet_secret_spec(&args.fleet_secret, kv.vault_url())?;
    let fleet_rss_before = procfs::sample(own_pid)?.rss_bytes;
    let kube = Arc::new(
        FakeKube::start(keyfleet_testkit::kube::Config {
            // The tracker must see every write of a burst (a rotation writes the Secret in every
            // namespace of every cluster at once; enrollment adds a credential Secret each).
            write_notifications: (clusters * (namespaces.len() + 2)).max(4096),
            ..keyfleet_testkit::kube::Config::default()
        })
        .await
        .context("start the fake Kubernetes API server")?,
    );
    let names: Vec<String> = (0..clusters).map(|index| format!("cluster-{index:05}")).collect();
    let mut handles = Vec::with_capacity(clusters);
    for name in &names {
        let handle = kube
            .add_cluster(name)
            .with_context(|| format!("add fake cluster {name}"))?;
        for namespace in namespaces.iter().map(String::as_str).chain(["keyfleet-system"]) {
            if namespace != "default" {
                let _ = handle.create_namespace(namespace);
            }
        }
        handles.push(handle);
    }
    let tracker = Tracker::start(Arc::clone(&kube), &names, &secret_name, namespaces.clone());

    // --- the hub --------------------------------------------------------------------------------
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", work.join("keyfleet.db").display()));
    let admin_token = random_token();
    // The hub's token file format (name:token); the CLI reads the same file.
    std::fs::write(work.join("admin-token"), format!("loadtest:{admin_token}\n"))
        .context("write the admin token")?;
    // The hub keys the digests it stores with this (required with Postgres; a restart reuses it).
    let digest_key: [u8; 32] = rand::rng().random();
    std::fs::write(work.join("digest-key"), hex::encode(digest_key)).context("write the digest key")?;
    let hub_command = HubCommand {
        binary: hub_binary(args.hub_binary.as_deref())?,
        args: vec![
            "--database".into(),
            database.clone(),
            "--migrate".into(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--ops-addr".into(),
            "127.0.0.1:0".into(),
            "--tls-self-signed".into(),
            work.join("tls").display().to_string(),
            "--admin-token-file".into(),
            work.join("admin-token").display().to_string(),
            "--digest-key-file".into(),
            work.join("digest-key").display().to_string(),
            "--vault-ca-file".into(),
            work.join("kv-ca.pem").display().to_string(),
            "--replica-id".into(),
            "loadtest-hub".into(),
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
        log: work.join("hub.log"),
        ready_file: work.join("hub-ready.json"),
    };
    let mut hub = HubProcess::start(hub_command, Duration::from_secs(120))
        .await
        .context("start the hub")?;
    let hub_url = format!("https://localhost:{}", hub.ready().grpc_addr.port());
    let hub_ca = std::fs::read_to_string(work.join("tls").join("ca.pem")).context("read the hub CA")?;
    let http = reqwest::Client::builder()
        .build()
        .context("build the metrics client")?;
    let admin = Admin::connect(&hub_url, &hub_ca, &admin_token).await?;
    // The simulated fleet is enrolled from scratch: an earlier run's clusters would collide with
    // its names, and this program never deletes data it did not create.
    let existing = admin.cluster_count().await?;
    if existing > 0 {
        bail!(
            "the database given by --database already holds {existing} cluster(s), from an earlier run \
             or a real fleet; pass an empty database (for example: createdb keyfleet_loadtest)"
        );
    }
    let rss_before_agents = procfs::sample(hub.pid().context("hub pid")?)?.rss_bytes;

    // --- apply the FleetSecret, enroll and start the fleet -----------------------------------
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
    let setup_started = Instant::now();
    let canaries = (clusters / 100).max(1);
    let tokens: Vec<(usize, String)> = futures::stream::iter(names.iter().enumerate())
        .map(|(index, name)| {
            let admin = admin.clone();
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
    let mut agents = Agents::new(transport.transport);
    for (index, token) in tokens {
        agents.start(&handles[index], &hub_url, &hub_ca, token).await?;
    }
    let first_revision = wait_for_revision(&admin, &fleet_secret, 0, Duration::from_secs(60)).await?;
    tracker.expect(first_revision, setup_started);
    let (_, behind) = tracker
        .wait(args.converge_timeout.max(Duration::from_secs(300)))
        .await;
    if !behind.is_empty() {
        failures.push(format!(
            "{} clusters did not converge on the first revision (e.g. {})",
            behind.len(),
            behind.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let initial_convergence_s = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "enrolled {clusters} clusters and converged on revision {first_revision} in {initial_convergence_s:.1} s"
    );
    // The first rotation's counters (statements, rows) must not include the initial status rows
    // the hub is still recording.
    if !wait_for_applied(
        &admin,
        &fleet_secret,
        first_revision,
        clusters,
        args.converge_timeout.max(Duration::from_secs(300)),
    )
    .await
    {
        failures.push(format!(
            "the store did not count all {clusters} clusters applied on revision {first_revision}"
        ));
    }
    let rss_connected = procfs::sample(hub.pid().context("hub pid")?)?.rss_bytes;
    let hub_open_files = procfs::open_files(hub.pid().context("hub pid")?)?;
    let fleet_connected = procfs::sample(own_pid)?;
    let fleet = report::FleetFigures {
        rss_connected_bytes: fleet_connected.rss_bytes,
        rss_per_cluster_bytes: fleet_connected.rss_bytes.saturating_sub(fleet_rss_before)
            / clusters.max(1) as u64,
        open_files_connected: procfs::open_files(own_pid)?,
        open_files_limit: procfs::open_files_limit(own_pid)?,
    };

    // --- rotations ------------------------------------------------------------------------------
    let mut rotations = Vec::new();
    let mut drift_figures = None;
    let mut previous_revision = first_revision;
    for index in 1..=args.rotations as usize {
        let value = docker_config();
        values.push(value.as_bytes().to_vec());
        let kv_before = kv.counters();
        let metrics_before = Metrics::scrape(&http, hub.ready().ops_addr).await?;
        let hub_before = procfs::sample(hub.pid().context("hub pid")?)?;
        let fleet_before = procfs::sample(own_pid)?;
        let version = kv
            .set_secret(&args.remote_key, &value, &[("team", "platform")])
            .map_err(|error| anyhow::anyhow!("rotate the secret: {} {}", error.code, error.message))?;
        let since = Instant::now();
        admin.sync_now().await?;
        let revision =
            wait_for_revision(&admin, &fleet_secret, previous_revision, Duration::from_secs(30)).await?;
        let progress = tracker.expect(revision, since);
        let bar = progress_bar(&args, index, clusters);
        let follow = follow_progress(progress, bar.clone());
        // Drift while the last rotation fans out: a few Secrets edited or deleted by hand, each
        // once its cluster holds the new revision (an edit that lands before the agent writes the
        // revision is simply overwritten by the rollout: no drift to repair).
        let inject = async {
            if index == args.rotations as usize && !args.no_drift {
                Some(
                    drift::inject_once_applied(
                        &tracker,
                        &handles,
                        &names,
                        &secret_name,
                        &namespaces,
                        revision,
                        args.converge_timeout,
                    )
                    .await,
                )
            } else {
                None
            }
        };
        let ((latencies, behind), tampered) = tokio::join!(tracker.wait(args.converge_timeout), inject);
        follow.abort();
        bar.finish_and_clear();
        let duration_s = since.elapsed().as_secs_f64();
        let hub_cpu = procfs::sample(hub.pid().context("hub pid")?)?.cpu - hub_before.cpu;
        let fleet_cpu = procfs::sample(own_pid)?.cpu - fleet_before.cpu;
        // Acks reach the store in batches: let the last flush land before reading the counters.
        let store_applied_s =
            wait_for_applied(&admin, &fleet_secret, revision, clusters, args.converge_timeout)
                .await
                .then(|| since.elapsed().as_secs_f64());
        let metrics_after = Metrics::scrape(&http, hub.ready().ops_addr).await?;
        let kv_after = kv.counters();
        let rotation = Rotation {
            index,
            version,
            revision,
            applied: stats::percentiles(&latencies),
            converged: latencies.len(),
            duration_s,
            store_applied_s,
            hub_cpu_s: hub_cpu.as_secs_f64(),
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
        };
        eprintln!("{}", rotation_line(&rotation, clusters));
        if !behind.is_empty() {
            failures.push(format!(
                "rotation {index}: {} clusters did not converge within {:?} (e.g. {})",
                behind.len(),
                args.converge_timeout,
                behind.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some((injected, at)) = tampered {
            let figures = drift::check(&admin, &injected, at, started, &secret_name, &namespaces).await?;
            eprintln!(
                "drift: {} Secrets tampered with, {} repaired in {:.1} s, {} reported by the hub in {:.1} s",
                figures.injected, figures.repaired, figures.repaired_s, figures.reported, figures.reported_s
            );
            if figures.repaired < figures.injected || figures.reported < figures.injected {
                failures.push(format!(
                    "drift: {} Secrets tampered with, only {} repaired and {} reported",
                    figures.injected, figures.repaired, figures.reported
                ));
            }
            drift_figures = Some(figures);
        }
        previous_revision = revision;
        rotations.push(rotation);
    }

    // --- restart: kill -9 and start again -----------------------------------------------------
    let mut hub_figures = report::HubFigures::default();
    let before_kill = procfs::sample(hub.pid().context("hub pid")?)?;
    let mut bytes_total = Metrics::scrape(&http, hub.ready().ops_addr)
        .await?
        .sum("keyfleet_hub_fleet_sent_bytes_total");
    hub_figures.rss_peak_bytes = before_kill.peak_rss_bytes;
    hub_figures.cpu_s = before_kill.cpu.as_secs_f64();
    let restart = if args.no_restart {
        None
    } else {
        // The agents know the hub by its address: the new process takes over the same ports.
        let mut command = hub.command().clone();
        let ready = hub.ready();
        pin_addr(&mut command.args, "--grpc-addr", ready.grpc_addr);
        pin_addr(&mut command.args, "--ops-addr", ready.ops_addr);
        hub.kill().await?;
        eprintln!("hub killed (SIGKILL); restarting");
        hub = HubProcess::start(command, Duration::from_secs(120))
            .await
            .context("restart the hub")?;
        let ready_at = Instant::now();
        let deadline = ready_at + Duration::from_secs(120);
        let mut metrics;
        loop {
            metrics = Metrics::scrape(&http, hub.ready().ops_addr).await?;
            if metrics.sum("keyfleet_hub_fleet_connected_agents") as usize >= clusters
                || Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all_back_s = ready_at.elapsed().as_secs_f64();
        let connected = metrics.sum("keyfleet_hub_fleet_connected_agents") as usize;
        if connected < clusters {
            failures.push(format!(
                "after the restart only {connected}/{clusters} agents reconnected within 120 s"
            ));
        }
        let bytes = metrics.sum("keyfleet_hub_fleet_sent_bytes_total");
        bytes_total += bytes;
        let after = procfs::sample(hub.pid().context("hub pid")?)?;
        hub_figures.cpu_s += after.cpu.as_secs_f64();
        hub_figures.rss_peak_bytes = hub_figures.rss_peak_bytes.max(after.peak_rss_bytes);
        Some(report::Restart {
            all_back_s,
            hub_cpu_s: after.cpu.as_secs_f64(),
            admission_refusals: metrics.sum("keyfleet_hub_fleet_admission_rejects_total") as u64,
            in_sync_reconnects: metrics.sum("keyfleet_hub_fleet_in_sync_hellos_total") as u64,
            bytes_per_agent: bytes / clusters.max(1) as f64,
        })
    };
    hub_figures.bytes_sent = bytes_total as u64;
    hub_figures.rss_connected_bytes = rss_connected;
    hub_figures.open_files_connected = hub_open_files;
    hub_figures.rss_per_agent_bytes =
        rss_connected.saturating_sub(rss_before_agents) / clusters.max(1) as u64;

    // --- status truth -------------------------------------------------------------------------
    wait_for_applied(
        &admin,
        &fleet_secret,
        previous_revision,
        clusters,
        args.converge_timeout,
    )
    .await;
    let status_truth = status_truth(&admin, &tracker, &names, &fleet_secret).await;
    if status_truth.mismatches > 0 {
        failures.push(format!(
            "{} clusters' Secrets differ from the store's status",
            status_truth.mismatches
        ));
    }

    // --- the polling baseline -----------------------------------------------------------------
    let hub_kv_calls: u64 = rotations
        .iter()
        .map(|rotation: &Rotation| rotation.keyvault_calls.values().sum::<u64>())
        .sum();
    let baseline = if args.no_baseline || args.rotations == 0 {
        None
    } else {
        Some(run_baseline(&args, &kv, clusters, hub_kv_calls).await?)
    };

    // --- leak scan ----------------------------------------------------------------------------
    let log = std::fs::read(work.join("hub.log")).context("read the hub log")?;
    let leaks = leakcheck::scan(&log, &values);
    if !leaks.is_empty() {
        failures.push(format!("{} secret values found in the hub log", leaks.len()));
    }

    let agents_note = format!(
        "real agent code (keyfleet_agent::AgentRuntime) × {clusters}, each with its own kube client to its own fake Kubernetes API ({})",
        match transport.transport {
            agents::KubeTransport::Loopback => "over loopback HTTPS",
            agents::KubeTransport::Memory => "in memory: the fake API's router called in process",
        }
    );
    let missed_notifications = tracker.missed_notifications();
    let mut report = Report {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: started.to_rfc3339(),
        clusters,
        agents: agents_note,
        kube_transport: transport.transport,
        kube_transport_reason: transport.reason,
        database: database.split(':').next().unwrap_or("sqlite").to_owned(),
        initial_convergence_s,
        rotations,
        hub: hub_figures,
        fleet,
        missed_notifications,
        restart,
        status_truth,
        drift: drift_figures,
        baseline,
        leaks,
        targets: Vec::new(),
        failures,
    };
    report.targets = targets(&report);

    if args.keep {
        eprintln!(
            "--keep: hub at {hub_url} (admin token in {}), CA {}; Ctrl-C to stop",
            work.join("admin-token").display(),
            work.join("tls/ca.pem").display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    agents.stop().await;
    hub.terminate(Duration::from_secs(10)).await?;
    kv.shutdown().await;
    if args.keep {
        let _ = dir.keep();
    }
    Ok(report)
}

/// Replaces the value after `flag` with `addr`.
fn pin_addr(args: &mut [String], flag: &str, addr: std::net::SocketAddr) {
    if let Some(index) = args.iter().position(|arg| arg == flag)
        && let Some(value) = args.get_mut(index + 1)
    {
        *value = addr.to_string();
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

fn hub_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("locate this binary")?;
    let sibling = me.with_file_name("keyfleet");
    // Run through `cargo run`: make sure the hub binary of the same profile is built and current
    // (a no-op when it is). Otherwise use the one next to this binary.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = me
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|name| name == "release");
        eprintln!("keyfleet-loadtest: building the hub binary (keyfleet) if needed");
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "--quiet", "-p", "keyfleet-hub", "--bin", "keyfleet"]);
        if release {
            command.arg("--release");
        }
        let status = command.status().context("run cargo build for the hub")?;
        if !status.success() {
            bail!("building the hub binary failed ({status})");
        }
    }
    if !sibling.exists() {
        bail!(
            "no hub binary at {}; build it with `cargo build --release --workspace --bins` or pass --hub-binary",
            sibling.display()
        );
    }
    Ok(sibling)
}

/// A docker config JSON for the demo registry with a fresh random password.
fn docker_config() -> String {
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

/// Polls the Admin API until the FleetSecret's revision is above `after`.
async fn wait_for_revision(
    admin: &Admin,
    fleet_secret: &str,
    after: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = admin.status(fleet_secret, 1).await?
            && status.revision > after
        {
            return Ok(status.revision);
        }
        if Instant::now() >= deadline {
            bail!("the hub rendered no revision of {fleet_secret} after {after} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the Admin API until the store says every cluster applied `revision`; false when the
/// timeout passed first.
async fn wait_for_applied(
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

fn progress_bar(args: &Args, index: usize, clusters: usize) -> indicatif::ProgressBar {
    if args.quiet {
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
    mut progress: tokio::sync::watch::Receiver<crate::tracker::Progress>,
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
            "rotation {}: revision {} on {}/{} clusters; first {} ms, p50 {} ms, p99 {} ms, last {} ms; {} Key Vault calls",
            rotation.index,
            rotation.revision,
            rotation.converged,
            clusters,
            p.first_ms,
            p.p50_ms,
            p.p99_ms,
            p.last_ms,
            rotation.keyvault_calls.values().sum::<u64>()
        ),
        None => format!("rotation {}: no cluster converged", rotation.index),
    }
}

fn delta(before: &Metrics, after: &Metrics, name: &str) -> u64 {
    (after.sum(name) - before.sum(name)).max(0.0) as u64
}

/// Key Vault calls by operation between two counter snapshots, for one principal (or all).
fn calls_between(
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

async fn status_truth(
    admin: &Admin,
    tracker: &Tracker,
    names: &[String],
    fleet_secret: &str,
) -> report::StatusTruth {
    let results: Vec<Option<String>> = futures::stream::iter(names.iter())
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
    report::StatusTruth {
        checked: names.len(),
        mismatches: mismatches.len(),
        examples: mismatches.into_iter().take(5).collect(),
    }
}

async fn run_baseline(
    args: &Args,
    kv: &KeyVaultHandle,
    clusters: usize,
    hub_calls: u64,
) -> anyhow::Result<report::Baseline> {
    let target = baseline::Target {
        vault_url: kv.vault_url().clone(),
        authority_url: kv.authority_url().clone(),
        tenant: kv.tenant().to_owned(),
        client_id: BASELINE_CLIENT.to_owned(),
        client_secret: BASELINE_SECRET.to_owned(),
        ca_pem: kv.ca_pem().as_bytes().to_vec(),
    };
    let plan = baseline::Plan {
        clusters,
        keys: vec![args.remote_key.clone()],
        refresh_interval: args.baseline_refresh,
        concurrency: 64,
    };
    let runner = Baseline::new(target, plan)?;
    let mut per_rotation = Vec::new();
    let mut keyvault_calls = Vec::new();
    eprintln!("polling baseline: one refresh of {clusters} clusters per rotation, ESO's way");
    for _ in 0..args.rotations {
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
            humantime::format_duration(args.baseline_refresh)
        ),
        per_rotation,
        keyvault_calls,
        staleness,
        calls_ratio: baseline_calls as f64 / hub_calls.max(1) as f64,
    })
}

/// The performance targets (ARCHITECTURE.md, Performance Targets) against the report's figures.
fn targets(report: &Report) -> Vec<report::Target> {
    let mut targets = Vec::new();
    let n = report.clusters;
    targets.push(report::Target {
        what: "connected streams on one hub".into(),
        target: "≥ 10,000".into(),
        measured: format!("{n}"),
        met: (n >= 10_000).then_some(true),
    });
    targets.push(report::Target {
        what: "hub memory per connected agent".into(),
        target: "≤ 48 KiB".into(),
        measured: format!("{:.1} KiB", report.hub.rss_per_agent_bytes as f64 / 1024.0),
        // Below a few hundred agents the process's fixed growth dominates the division.
        met: (n >= MEASURABLE_FLEET).then_some(report.hub.rss_per_agent_bytes <= 48 * 1024),
    });
    let worst_p99 = report
        .rotations
        .iter()
        .filter_map(|rotation| rotation.applied.map(|p| p.p99_ms))
        .max();
    targets.push(report::Target {
        what: "rotation p99, sync-now to Secret written".into(),
        target: "≤ 1,000 ms".into(),
        measured: worst_p99.map_or("-".into(), |ms| format!("{ms} ms (worst rotation)")),
        met: worst_p99.map(|ms| ms <= 1000),
    });
    let gets: Vec<u64> = report
        .rotations
        .iter()
        .map(|rotation| rotation.keyvault_calls.get("get").copied().unwrap_or(0))
        .collect();
    targets.push(report::Target {
        what: "Key Vault GETs per rotation (whole fleet)".into(),
        target: "1 per changed version".into(),
        measured: format!("{gets:?}"),
        met: (!gets.is_empty()).then(|| gets.iter().all(|&count| count <= 1)),
    });
    let per_10k = report
        .rotations
        .iter()
        .map(|rotation| rotation.status_flushes as f64 * 10_000.0 / n.max(1) as f64)
        .fold(0.0_f64, f64::max);
    targets.push(report::Target {
        what: "status statements per 10,000 acks".into(),
        target: "≤ 50".into(),
        measured: format!("{per_10k:.0}"),
        met: (!report.rotations.is_empty() && n >= MEASURABLE_FLEET).then_some(per_10k <= 50.0),
    });
    if let Some(restart) = &report.restart {
        targets.push(report::Target {
            what: "in-sync reconnect, hub → agent".into(),
            target: "≤ 100 bytes".into(),
            measured: format!("{:.0} bytes", restart.bytes_per_agent),
            met: Some(restart.bytes_per_agent <= 100.0),
        });
        targets.push(report::Target {
            what: "hub restart: all agents back in sync".into(),
            target: "≤ 30 s".into(),
            measured: format!("{:.1} s", restart.all_back_s),
            met: Some(restart.all_back_s <= 30.0),
        });
    }
    targets
}
