//! `keyfleet serve` as a real process (the binary cargo built for this test), against a scratch
//! Postgres database and the Key Vault emulator: started with `--ready-file` (readiness is the
//! "hub ready" log line, then the file names the ports), killed with SIGKILL, its log watched line
//! by line for events such as taking the Key Vault leadership.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyfleet_hub::config::ClientArgs;
use keyfleet_proto::v1;
use keyfleet_testkit::agent::{AgentConfig, AgentState, HubAddress, Identity, RunningAgent};
use keyfleet_testkit::keyvault::{self, KeyVaultHandle};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Log line of a replica that took the Key Vault leadership.
pub const LEADS: &str = "this replica leads the Key Vault pollers";

/// Files every replica shares: TLS CA, admin token, digest key, Key Vault trust and identity.
pub struct ServeEnv {
    pub dir: tempfile::TempDir,
    pub database: String,
    pub admin_token: String,
    kv_tenant: String,
    kv_authority: String,
}

impl ServeEnv {
    pub fn new(database: String, kv: &KeyVaultHandle) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin_token = format!("kfa_{}", uuid::Uuid::new_v4().simple());
        std::fs::write(
            dir.path().join("admin-token"),
            format!("test-admin:{admin_token}\n"),
        )
        .unwrap();
        // Every replica (and every restart) keys digests with the same key.
        let digest_key: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        std::fs::write(dir.path().join("digest-key"), digest_key).unwrap();
        std::fs::write(dir.path().join("kv-ca.pem"), kv.ca_pem()).unwrap();
        std::fs::write(
            dir.path().join("federated-token"),
            kv.mint_federated_token(
                keyvault::DEFAULT_FEDERATED_ISSUER,
                keyvault::DEFAULT_FEDERATED_SUBJECT,
            ),
        )
        .unwrap();
        Self {
            dir,
            database,
            admin_token,
            kv_tenant: kv.tenant().to_owned(),
            kv_authority: kv.authority_url().to_string(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The development CA every replica's certificate chains to (written by the first replica).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path("tls").join("ca.pem")).unwrap()
    }

    /// Where test agents reach `replica`.
    pub fn hub_address(&self, replica: &ServeProcess) -> HubAddress {
        HubAddress::new(replica.grpc_addr, self.ca_pem())
    }

    /// An Admin API client for `replica`.
    pub async fn admin(&self, replica: &ServeProcess) -> keyfleet_hub::cli::Client {
        keyfleet_hub::cli::connect(&ClientArgs {
            hub_url: format!("https://localhost:{}", replica.grpc_addr.port()),
            admin_token: Some(self.admin_token.clone()),
            hub_ca: Some(self.path("tls").join("ca.pem")),
            ..ClientArgs::default()
        })
        .await
        .unwrap()
    }
}

/// Lines a process logged so far; the count changes with every line.
#[derive(Clone)]
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
    /// Set once the process closed its stderr (it exited).
    ended: watch::Receiver<bool>,
}

/// A running `keyfleet serve`.
pub struct ServeProcess {
    pub replica: String,
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// The Event Grid webhook's address, when `--eventgrid-addr` was given.
    pub eventgrid_addr: Option<SocketAddr>,
    child: Child,
    log: Log,
}

impl ServeProcess {
    /// Starts replica `replica` (gRPC on `grpc_addr`, port 0 for any) and waits until it is ready.
    pub async fn start(env: &ServeEnv, replica: &str, grpc_addr: SocketAddr) -> Self {
        Self::start_with(env, replica, grpc_addr, &[]).await
    }

    /// [`ServeProcess::start`] with `extra` flags.
    pub async fn start_with(env: &ServeEnv, replica: &str, grpc_addr: SocketAddr, extra: &[&str]) -> Self {
        let ready_file = env.path(&format!("{replica}.ready.json"));
        let _ = std::fs::remove_file(&ready_file);
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyfleet"))
            .arg("serve")
            .args(["--database", &env.database])
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--ops-addr", "127.0.0.1:0"])
            .arg("--tls-self-signed")
            .arg(env.path("tls"))
            .arg("--admin-token-file")
            .arg(env.path("admin-token"))
            .arg("--digest-key-file")
            .arg(env.path("digest-key"))
            .arg("--vault-ca-file")
            .arg(env.path("kv-ca.pem"))
            .args(["--replica-id", replica])
            .arg("--vault-skip-challenge-resource-check")
            .arg("--ready-file")
            .arg(&ready_file)
            .args(extra)
            .env("AZURE_TENANT_ID", &env.kv_tenant)
            .env("AZURE_CLIENT_ID", keyvault::DEFAULT_CLIENT_ID)
            .env("AZURE_FEDERATED_TOKEN_FILE", env.path("federated-token"))
            .env("AZURE_AUTHORITY_HOST", &env.kv_authority)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keyfleet serve");
        let log = follow(child.stderr.take().unwrap(), env.path(&format!("{replica}.log")));
        let mut process = Self {
            replica: replica.to_owned(),
            grpc_addr,
            ops_addr: grpc_addr,
            eventgrid_addr: None,
            child,
            log,
        };
        process.wait_for_line("hub ready", Duration::from_secs(120)).await;
        let ready: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready_file).unwrap()).unwrap();
        process.grpc_addr = ready["grpc_addr"].as_str().unwrap().parse().unwrap();
        process.ops_addr = ready["ops_addr"].as_str().unwrap().parse().unwrap();
        process.eventgrid_addr = ready["eventgrid_addr"].as_str().map(|addr| addr.parse().unwrap());
        process
    }

    /// Whether the process is still running (it has not exited by itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id (for `/proc/<pid>/fd`).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// SIGKILL: no drain, no last flush.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Whether some line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Waits until a line contains `needle`; panics with the log's tail after `bound` or when
    /// the process ends first.
    pub async fn wait_for_line(&self, needle: &str, bound: Duration) {
        let mut count = self.log.count.clone();
        let mut ended = self.log.ended.clone();
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
        if found != Ok(true) {
            panic!(
                "replica {}: no log line with {needle:?} within {bound:?}; last lines:\n{}",
                self.replica,
                self.tail(40)
            );
        }
    }

    /// The last `n` log lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.log.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Copies the process's stderr to `path` line by line and publishes each line.
fn follow(stderr: tokio::process::ChildStderr, path: PathBuf) -> Log {
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
                let mut lines = shared.lock().unwrap();
                lines.push(line);
                lines.len()
            };
            count_tx.send_replace(total);
        }
        ended_tx.send_replace(true);
    });
    Log { lines, count, ended }
}

/// A docker config JSON like an ACR pull secret, with a fresh password.
pub fn docker_config(password: &str) -> String {
    serde_json::json!({
        "auths": {
            "keyfleet.azurecr.io": { "username": "keyfleet-pull", "password": password }
        }
    })
    .to_string()
}

/// `deploy/examples/regcred.yaml` pointed at the emulator's vault.
pub fn regcred_spec(vault_url: &url::Url) -> String {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/regcred.yaml"),
    )
    .unwrap();
    example.replace(
        "https://shared-kv.vault.azure.net",
        vault_url.as_str().trim_end_matches('/'),
    )
}

/// Waits until every agent's state satisfies `ready`, within `bound`.
pub async fn all_agents(
    bound: Duration,
    agents: &[RunningAgent],
    what: &str,
    ready: impl Fn(&AgentState) -> bool + Copy,
) {
    super::within(
        bound,
        what,
        futures::future::join_all(agents.iter().map(|agent| agent.wait_for(ready))),
    )
    .await;
}

/// Waits until the first agent (a canary) gets a revision of `fleet_secret`, then until every agent
/// holds that revision, within `bound`; returns it.
pub async fn first_revision_everywhere(bound: Duration, agents: &[RunningAgent], fleet_secret: &str) -> u64 {
    let first = super::within(
        bound,
        "a canary gets the first revision",
        agents[0].wait_for(|state| state.revision(fleet_secret).is_some()),
    )
    .await
    .revision(fleet_secret)
    .unwrap();
    all_agents(bound, agents, "every cluster holds the first revision", |state| {
        state.revision(fleet_secret) == Some(first)
    })
    .await;
    first
}

/// Reads GetStatus of `fleet_secret` until `done` holds (status rows are written in batches; no
/// event says when), for at most 30 s.
pub async fn status_until(
    fleet_secret: &str,
    admin: &mut keyfleet_hub::cli::Client,
    what: &str,
    done: impl Fn(&v1::FleetSecretStatus) -> bool,
) -> v1::FleetSecretStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = admin
            .get_status(v1::GetStatusRequest {
                fleet_secret: fleet_secret.to_owned(),
                lagging_limit: 5,
            })
            .await
            .unwrap()
            .into_inner()
            .fleet_secrets
            .into_iter()
            .next()
            .unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies the regcred example and adds `clusters` prod clusters (the first `canaries` in the
/// canary ring); returns their enrollment tokens.
pub async fn fleet_setup(
    admin: &mut keyfleet_hub::cli::Client,
    kv: &KeyVaultHandle,
    clusters: usize,
    canaries: usize,
) -> Vec<String> {
    admin
        .apply_specs(v1::ApplySpecsRequest {
            files: vec![v1::SpecFile {
                name: "regcred.yaml".to_owned(),
                content: regcred_spec(kv.vault_url()),
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for index in 0..clusters {
        let ring = if index < canaries { "canary" } else { "main" };
        let response = admin
            .create_cluster(v1::CreateClusterRequest {
                name: format!("cluster-{index:03}"),
                labels: [("env", "prod"), ("ring", ring)]
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .collect(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(response.token.unwrap().token);
    }
    tokens
}

pub fn start_agents(hubs: &[HubAddress], tokens: Vec<String>) -> Vec<RunningAgent> {
    tokens
        .into_iter()
        .enumerate()
        .map(|(index, token)| {
            RunningAgent::start(AgentConfig::new(
                hubs.to_vec(),
                index % hubs.len(),
                Identity::Token(token),
            ))
        })
        .collect()
}
