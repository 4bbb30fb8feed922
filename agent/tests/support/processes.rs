//! Real processes for end-to-end fault tests: the hub (`keyfleet serve`, on SQLite, against the
//! Key Vault emulator) and the agent binary (against the fake Kubernetes API), each killed with
//! SIGKILL when the test says so, their logs followed line by line.
//!
//! The hub binary belongs to another package, so cargo does not build it for the agent's tests:
//! [`hub_binary`] builds it into the same target directory and profile (a no-op when it is
//! current), or takes `KEYFLEET_HUB_BIN`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyfleet_agent::hub::{HubEndpoint, channel};
use keyfleet_proto::v1::{self, admin_client::AdminClient};
use keyfleet_testkit::keyvault::{self, KeyVaultHandle};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tonic::transport::Channel;

/// The `keyfleet` hub binary of this build: `KEYFLEET_HUB_BIN`, else built next to the agent
/// binary (same target directory and profile). Call it before any bounded wait: a cold build
/// takes minutes.
pub fn hub_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYFLEET_HUB_BIN") {
        return path.into();
    }
    let agent = Path::new(env!("CARGO_BIN_EXE_keyfleet-agent"));
    let profile_dir = agent.parent().expect("the agent binary's directory");
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    // What cargo set for this test binary is not the build's environment: a build script that
    // watches one of these (ring watches CARGO_MANIFEST_DIR) would rebuild half the tree twice.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name == "CARGO_RUSTC_CURRENT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            build.env_remove(&*name);
        }
    }
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "keyfleet-hub",
            "--bin",
            "keyfleet",
            "--target-dir",
        ])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build for the hub binary");
    assert!(
        status.success(),
        "building the hub binary (keyfleet) failed: {status}"
    );
    let hub = profile_dir.join(format!("keyfleet{}", std::env::consts::EXE_SUFFIX));
    assert!(hub.exists(), "no hub binary at {}", hub.display());
    hub
}

/// Lines a process logged so far; the count changes with every line.
#[derive(Clone)]
pub struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
    ended: watch::Receiver<bool>,
}

impl Log {
    /// Copies `stderr` to `path` line by line and publishes each line.
    fn follow(stderr: tokio::process::ChildStderr, path: PathBuf) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let (ended_tx, ended) = watch::channel(false);
        let shared = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut file = tokio::fs::File::create(&path).await.ok();
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(file) = &mut file {
                    let _ = file.write_all(format!("{line}\n").as_bytes()).await;
                }
                let total = {
                    let mut lines = shared.lock().expect("log lines");
                    lines.push(line);
                    lines.len()
                };
                count_tx.send_replace(total);
            }
            ended_tx.send_replace(true);
        });
        Self { lines, count, ended }
    }

    /// Whether some line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Waits until a line contains `needle`; panics with the tail after `bound` or when the
    /// process ended first.
    pub async fn wait_for_line(&self, who: &str, needle: &str, bound: Duration) {
        let mut count = self.count.clone();
        let mut ended = self.ended.clone();
        let found = tokio::time::timeout(bound, async {
            loop {
                if self.logged(needle) {
                    return true;
                }
                tokio::select! {
                    changed = count.changed() => if changed.is_err() { return self.logged(needle) },
                    _ = ended.wait_for(|ended| *ended) => return self.logged(needle),
                }
            }
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "{who}: no log line with {needle:?} within {bound:?}; last lines:\n{}",
            self.tail(40)
        );
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("log lines");
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A running `keyfleet serve` on a fresh SQLite store, its TLS material and admin token in `dir`.
pub struct HubProcess {
    /// Where agents and admins reach it.
    pub url: String,
    /// The development CA its certificate chains to.
    pub ca_pem: String,
    /// Its log.
    pub log: Log,
    admin_token: String,
    child: Child,
}

impl HubProcess {
    /// Starts `binary` with its files in `dir`, Key Vault `kv`, and waits until it is ready.
    pub async fn start(binary: &Path, dir: &Path, kv: &KeyVaultHandle) -> Self {
        let admin_token = format!("kfa_{}", uuid::Uuid::new_v4().simple());
        std::fs::write(dir.join("admin-token"), &admin_token).expect("admin token");
        std::fs::write(dir.join("kv-ca.pem"), kv.ca_pem()).expect("kv ca");
        std::fs::write(
            dir.join("federated-token"),
            kv.mint_federated_token(
                keyvault::DEFAULT_FEDERATED_ISSUER,
                keyvault::DEFAULT_FEDERATED_SUBJECT,
            ),
        )
        .expect("federated token");
        let ready_file = dir.join("hub.ready.json");
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--database")
            .arg(format!("sqlite://{}", dir.join("hub.db").display()))
            .arg("--migrate")
            .args(["--grpc-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
            .arg("--tls-self-signed")
            .arg(dir.join("tls"))
            .arg("--admin-token-file")
            .arg(dir.join("admin-token"))
            .arg("--vault-ca-file")
            .arg(dir.join("kv-ca.pem"))
            .arg("--vault-skip-challenge-resource-check")
            .arg("--ready-file")
            .arg(&ready_file)
            .env("AZURE_TENANT_ID", kv.tenant())
            .env("AZURE_CLIENT_ID", keyvault::DEFAULT_CLIENT_ID)
            .env("AZURE_FEDERATED_TOKEN_FILE", dir.join("federated-token"))
            .env("AZURE_AUTHORITY_HOST", kv.authority_url().as_str())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keyfleet serve");
        let log = Log::follow(child.stderr.take().expect("stderr"), dir.join("hub.log"));
        log.wait_for_line("hub", "hub ready", Duration::from_secs(120))
            .await;
        let ready: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ready_file).expect("ready file")).expect("ready json");
        let grpc_addr: std::net::SocketAddr = ready["grpc_addr"]
            .as_str()
            .expect("grpc_addr")
            .parse()
            .expect("grpc address");
        Self {
            url: format!("https://localhost:{}", grpc_addr.port()),
            ca_pem: std::fs::read_to_string(dir.join("tls").join("ca.pem")).expect("hub ca"),
            log,
            admin_token,
            child,
        }
    }

    /// An Admin API client.
    pub fn admin(&self) -> Admin {
        let channel = channel(&HubEndpoint {
            url: self.url.clone(),
            ca_pem: Some(self.ca_pem.clone()),
        })
        .expect("admin channel");
        Admin {
            client: AdminClient::new(channel),
            token: self.admin_token.clone(),
        }
    }

    /// Whether the hub is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The Admin API, as `keyfleet` (the CLI) calls it.
pub struct Admin {
    client: AdminClient<Channel>,
    token: String,
}

impl Admin {
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        let mut value: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", self.token).parse().expect("header value");
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
        request
    }

    /// Applies specs (all or nothing).
    pub async fn apply(&mut self, name: &str, content: String) {
        let request = self.request(v1::ApplySpecsRequest {
            files: vec![v1::SpecFile {
                name: name.to_owned(),
                content,
            }],
            dry_run: false,
        });
        self.client.apply_specs(request).await.expect("apply specs");
    }

    /// Adds a cluster; returns its enrollment token.
    pub async fn add_cluster(&mut self, name: &str, labels: &[(&str, &str)]) -> String {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let request = self.request(v1::CreateClusterRequest {
            name: name.to_owned(),
            labels: labels.into_iter().collect(),
            token_ttl_seconds: 0,
        });
        let response = self.client.create_cluster(request).await.expect("create cluster");
        response.into_inner().token.expect("enrollment token").token
    }

    /// GetStatus of one FleetSecret.
    pub async fn status(&mut self, fleet_secret: &str) -> v1::FleetSecretStatus {
        let request = self.request(v1::GetStatusRequest {
            fleet_secret: fleet_secret.to_owned(),
            lagging_limit: 5,
        });
        self.client
            .get_status(request)
            .await
            .expect("get status")
            .into_inner()
            .fleet_secrets
            .into_iter()
            .next()
            .expect("the fleet secret's status")
    }
}

/// A running `keyfleet-agent` binary.
pub struct AgentProcess {
    /// Its log.
    pub log: Log,
    child: Child,
}

impl AgentProcess {
    /// Starts the agent against `hub` and the cluster of `kubeconfig` (files in `dir`; the log
    /// is `dir/agent-<incarnation>.log`). It enrolls with `token` unless its credential Secret
    /// already exists.
    pub fn start(dir: &Path, incarnation: usize, hub: &HubProcess, kubeconfig: &str, token: &str) -> Self {
        Self::start_with(dir, incarnation, hub, kubeconfig, token, &[])
    }

    /// [`Self::start`] with `extra` arguments appended (e.g. `--instance NAME`).
    pub fn start_with(
        dir: &Path,
        incarnation: usize,
        hub: &HubProcess,
        kubeconfig: &str,
        token: &str,
        extra: &[&str],
    ) -> Self {
        std::fs::write(dir.join("kubeconfig"), kubeconfig).expect("kubeconfig");
        std::fs::write(dir.join("agent-hub-ca.pem"), &hub.ca_pem).expect("hub ca");
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyfleet-agent"))
            .args(["--hub-url", &hub.url, "--enrollment-token", token])
            .args(["--ops-addr", "127.0.0.1:0", "--log", "info"])
            .arg("--hub-ca")
            .arg(dir.join("agent-hub-ca.pem"))
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keyfleet-agent");
        let log = Log::follow(
            child.stderr.take().expect("stderr"),
            dir.join(format!("agent-{incarnation}.log")),
        );
        Self { log, child }
    }

    /// SIGKILL, and waits until the process is gone: no shutdown, no last write.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill -9 the agent");
    }
}
