//! Issue #6's "done when", end to end: the real `keyfleet serve` binary on port 0 with a scratch
//! Postgres database (from `DATABASE_URL`) and the Key Vault emulator holding two versions of the
//! regcred secret; the real `keyfleet` CLI applies `deploy/examples/regcred.yaml` (its vault URL
//! pointed at the emulator) and adds a cluster; a protocol-level test agent enrolls and syncs;
//! `keyfleet status regcred -o json` shows the revision and the targeted cluster; `keyfleet rollout
//! pin regcred --version <older>` makes the agent receive a revision whose data is the older
//! version's value, and `unpin` brings the latest back. Admin calls go by token and by client
//! certificate (mTLS), and the audit log names both. Then the digest key is rotated and the hub
//! restarted: it restores the current revision (its digest checked under the previous key), and
//! neither any table of the database nor the hub's log holds a plain SHA-256 of a Key Vault value
//! or of a payload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use keyfleet_hub::store::Store;
use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{self, KeyVaultConfig, KeyVaultEmulator};
use keyfleet_testkit::tls::TestCa;
use serde_json::Value;
use sqlx::{Connection as _, Executor as _};
use support::{Applied, HelloOptions, TestAgent};
use tokio::io::AsyncBufReadExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const KEYFLEET: &str = env!("CARGO_BIN_EXE_keyfleet");
/// How long the hub may take to start (migrations, first Key Vault sweep) on a loaded machine.
const START: Duration = Duration::from_secs(120);
/// Bound for a state the hub reaches without an event we can wait on (status flushes).
const SETTLE: Duration = Duration::from_secs(30);

/// A fresh Postgres database next to `DATABASE_URL`'s, dropped by [`ScratchDb::drop_db`].
struct ScratchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create() -> Self {
        let admin_url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a Postgres server (scripts/test sets it)");
        let name = format!("keyfleet_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    async fn drop_db(&self) {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .unwrap();
    }
}

/// `keyfleet serve` as a child process; its log is kept and printed when the test fails.
struct HubProcess {
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The task draining the log; it ends at EOF, after the process's last line.
    reader: tokio::task::JoinHandle<()>,
    grpc_addr: SocketAddr,
}

impl HubProcess {
    /// Starts `keyfleet serve ARGS` and waits for its "hub ready" log line, then reads the
    /// addresses from its ready file.
    async fn start(args: &[String], env: &[(&str, String)], ready_file: &Path) -> Self {
        let mut child = tokio::process::Command::new(KEYFLEET)
            .arg("serve")
            .args(args)
            .arg("--ready-file")
            .arg(ready_file)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .env("KEYFLEET_LOG", "info")
            .env("KEYFLEET_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keyfleet serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let reader = {
            let log = Arc::clone(&log);
            // Drains the log for the hub's whole life (a full pipe would block it).
            tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("hub ready")
                        && let Some(ready) = ready_tx.take()
                    {
                        let _ = ready.send(());
                    }
                    log.lock().unwrap().push(line);
                }
            })
        };
        let print_log = |log: &Mutex<Vec<String>>| log.lock().unwrap().join("\n");
        match tokio::time::timeout(START, ready_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("keyfleet serve exited before it was ready:\n{}", print_log(&log)),
            Err(_) => panic!(
                "keyfleet serve was not ready within {START:?}:\n{}",
                print_log(&log)
            ),
        }
        let ready: Value = serde_json::from_slice(&std::fs::read(ready_file).unwrap()).unwrap();
        Self {
            child,
            log,
            reader,
            grpc_addr: ready["grpc_addr"].as_str().unwrap().parse().unwrap(),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the graceful exit (drain, status flush) with status 0.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(signalled.success());
        let exit = tokio::time::timeout(START, self.child.wait())
            .await
            .expect("keyfleet serve stops within the bound")
            .unwrap();
        // The process has exited; its last lines may still be in the pipe: read them to EOF.
        tokio::time::timeout(START, &mut self.reader)
            .await
            .expect("the log reaches EOF once the process exited")
            .expect("the log reader does not panic");
        assert!(
            exit.success(),
            "keyfleet serve exited with {exit}:\n{}",
            self.log()
        );
        assert!(self.log().contains("hub stopped"), "{}", self.log());
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- keyfleet serve log ---\n{}\n--- end of log ---", self.log());
        }
    }
}

/// What one `keyfleet` CLI run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The CLI's connection flags.
struct Cli {
    hub: String,
    hub_ca: PathBuf,
    token_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Cli {
    /// `keyfleet ARGS` with the admin token.
    async fn run(&self, args: &[&str]) -> Run {
        self.run_as(args, &["--admin-token-file", self.token_file.to_str().unwrap()])
            .await
    }

    /// `keyfleet ARGS` with the client certificate and no token.
    async fn run_with_cert(&self, args: &[&str]) -> Run {
        let cert = self.cert.to_str().unwrap();
        let key = self.key.to_str().unwrap();
        self.run_as(args, &["--client-cert", cert, "--client-key", key])
            .await
    }

    async fn run_as(&self, args: &[&str], auth: &[&str]) -> Run {
        let output = tokio::process::Command::new(KEYFLEET)
            .args(args)
            .args(["--hub", &self.hub, "--hub-ca", self.hub_ca.to_str().unwrap()])
            .args(auth)
            .env_remove("KEYFLEET_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run keyfleet");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// `keyfleet ARGS` that must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert_eq!(run.code, 0, "keyfleet {args:?}: {}{}", run.stdout, run.stderr);
        run.stdout
    }

    /// `keyfleet status regcred -o json` (by client certificate), parsed.
    async fn status(&self) -> Value {
        let run = self.run_with_cert(&["status", "regcred", "-o", "json"]).await;
        assert_eq!(run.code, 0, "keyfleet status: {}{}", run.stdout, run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    }

    /// Polls the status (no event tells us when the status writer flushed) until `done` holds.
    async fn status_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {SETTLE:?}; last status {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A docker config JSON for the registry with this password.
fn docker_config(password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("pull:{password}"));
    serde_json::json!({
        "auths": { "keyfleet.azurecr.io": { "username": "pull", "password": password, "auth": auth } }
    })
    .to_string()
}

/// The next Update for regcred (acked), with its revision and `.dockerconfigjson` bytes; its
/// plain payload sha256 is added to `digests`.
async fn next_regcred(agent: &mut TestAgent, digests: &mut Vec<[u8; 32]>) -> (u64, Vec<u8>) {
    let update = agent.update().await.unwrap();
    agent.apply_and_ack(&update).await.unwrap();
    let payload = update
        .upserts
        .iter()
        .find(|payload| payload.key == "regcred")
        .unwrap_or_else(|| panic!("an update without regcred: {update:?}"));
    assert_eq!(payload.r#type, "kubernetes.io/dockerconfigjson");
    assert_eq!(payload.secret_name, "regcred");
    assert_eq!(payload.namespaces, ["default", "ci"]);
    digests.push(
        payload
            .sha256
            .clone()
            .try_into()
            .expect("a 32-byte payload sha256"),
    );
    (
        payload.revision,
        payload.data.get(".dockerconfigjson").cloned().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_apply_status_and_pin_an_older_version_end_to_end() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = ScratchDb::create().await;
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(scenario(&db.url))).await;
    db.drop_db().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // Key Vault: two versions of the regcred secret.
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let older_value = docker_config("first-password");
    let latest_value = docker_config("second-password");
    let older = kv.set_secret("acr-pull", &older_value, &[]).unwrap();
    let latest = kv.set_secret("acr-pull", &latest_value, &[]).unwrap();
    assert_ne!(older, latest);
    std::fs::write(path("kv-ca.pem"), kv.ca_pem()).unwrap();
    std::fs::write(
        path("federated-token"),
        kv.mint_federated_token(
            keyvault::DEFAULT_FEDERATED_ISSUER,
            keyvault::DEFAULT_FEDERATED_SUBJECT,
        ),
    )
    .unwrap();

    // The digest key (one hex line).
    let key_a = "5a".repeat(32);
    std::fs::write(path("digest-key"), format!("{key_a}\n")).unwrap();
    let mut payload_digests: Vec<[u8; 32]> = Vec::new();

    // Admin credentials: a token, and a client certificate from the admin CA.
    std::fs::write(
        path("admin-token"),
        "# name:token, at least 32 bytes\ne2e-admin:kfa_e2e-admin-token-0123456789abcdef\n",
    )
    .unwrap();
    let admins = TestCa::generate("keyfleet e2e admins").unwrap();
    admins.write_cert(&path("admins.pem")).unwrap();
    let alice = admins.issue_client("alice@platform").unwrap();
    std::fs::write(path("alice.pem"), &alice.cert_pem).unwrap();
    std::fs::write(path("alice-key.pem"), &alice.key_pem).unwrap();

    let show = |name: &str| path(name).display().to_string();
    let args: Vec<String> = [
        "--database",
        database_url,
        "--migrate",
        "--grpc-addr",
        "127.0.0.1:0",
        "--ops-addr",
        "127.0.0.1:0",
        "--tls-self-signed",
        &show("tls"),
        "--admin-token-file",
        &show("admin-token"),
        "--admin-client-ca",
        &show("admins.pem"),
        "--digest-key-file",
        &show("digest-key"),
        "--vault-ca-file",
        &show("kv-ca.pem"),
        "--vault-skip-challenge-resource-check",
        "--replica-id",
        "e2e-hub",
    ]
    .map(str::to_owned)
    .to_vec();
    let env = [
        ("AZURE_TENANT_ID", kv.tenant().to_owned()),
        ("AZURE_CLIENT_ID", keyvault::DEFAULT_CLIENT_ID.to_owned()),
        ("AZURE_FEDERATED_TOKEN_FILE", show("federated-token")),
        ("AZURE_AUTHORITY_HOST", kv.authority_url().to_string()),
    ];
    let hub = HubProcess::start(&args, &env, &path("ready.json")).await;
    assert_ne!(hub.grpc_addr.port(), 0);
    let cli = Cli {
        hub: format!("https://localhost:{}", hub.grpc_addr.port()),
        hub_ca: path("tls").join("ca.pem"),
        token_file: path("admin-token"),
        cert: path("alice.pem"),
        key: path("alice-key.pem"),
    };

    // The example as shipped, with its SecretStore pointed at the emulator.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/regcred.yaml"),
    )
    .unwrap();
    let shipped_url = "vaultUrl: https://shared-kv.vault.azure.net";
    assert!(
        example.contains(shipped_url),
        "the example changed: update this test"
    );
    let vault_url = kv.vault_url().as_str().trim_end_matches('/');
    std::fs::write(
        path("regcred.yaml"),
        example.replace(shipped_url, &format!("vaultUrl: {vault_url}")),
    )
    .unwrap();
    let out = cli.ok(&["apply", "-f", &show("regcred.yaml")]).await;
    assert_eq!(
        out,
        "secretstore/shared-kv created (generation 1)\nfleetsecret/regcred created (generation 1)\n"
    );

    // A cluster in the canary wave, and its agent.
    let out = cli
        .ok(&[
            "cluster",
            "add",
            "prod-eu-1",
            "--label",
            "env=prod",
            "--label",
            "ring=canary",
        ])
        .await;
    let token = out
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("kfe_"))
        .unwrap_or_else(|| panic!("no enrollment token in {out}"))
        .to_owned();
    let channel = agent_channel(hub.grpc_addr, &cli.hub_ca).await;
    let credential = keyfleet_proto::v1::enrollment_client::EnrollmentClient::new(channel.clone())
        .enroll(v1::EnrollRequest {
            token,
            agent_version: "0.1.0-e2e".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    let mut agent = TestAgent::connect_on(
        channel,
        Some(&credential),
        Applied::new(),
        HelloOptions::default(),
    )
    .await
    .unwrap();
    agent.handshake().await.unwrap();

    // The latest version reaches the agent; status shows its revision and the targeted cluster.
    let (first, data) = next_regcred(&mut agent, &mut payload_digests).await;
    assert_eq!(data, latest_value.as_bytes(), "the latest Key Vault version");
    let status = cli
        .status_until("the first revision applied", |status| {
            status["revision"] == first && status["applied"] == 1
        })
        .await;
    assert_eq!(status["name"], "regcred");
    assert_eq!(status["targeted"], 1, "{status:#}");
    assert_eq!(
        status["sources"],
        serde_json::json!([{ "remoteKey": "acr-pull", "version": latest, "expires": null, "notBefore": null }])
    );
    assert_eq!(status["pins"], serde_json::json!([]));

    // Pin the older version: a new revision carrying the older value.
    cli.ok(&["rollout", "pin", "regcred", "--version", &older]).await;
    let (pinned, data) = next_regcred(&mut agent, &mut payload_digests).await;
    assert!(pinned > first, "a new revision: {pinned} after {first}");
    assert_eq!(
        data,
        older_value.as_bytes(),
        "the pinned (older) Key Vault version"
    );
    let status = cli
        .status_until("the pinned revision applied", |status| {
            status["revision"] == pinned && status["applied"] == 1
        })
        .await;
    assert_eq!(
        status["pins"],
        serde_json::json!([{ "remoteKey": "acr-pull", "version": older }])
    );
    assert_eq!(status["sources"][0]["version"], older.as_str());

    // Unpin (by client certificate): back to the latest value, in a newer revision again.
    let run = cli.run_with_cert(&["rollout", "unpin", "regcred"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let (unpinned, data) = next_regcred(&mut agent, &mut payload_digests).await;
    assert!(unpinned > pinned, "a new revision: {unpinned} after {pinned}");
    assert_eq!(data, latest_value.as_bytes(), "the latest version again");
    let status = cli
        .status_until("the unpinned revision applied", |status| {
            status["revision"] == unpinned && status["applied"] == 1
        })
        .await;
    assert_eq!(status["pins"], serde_json::json!([]));
    assert_eq!(status["sources"][0]["version"], latest.as_str());

    // A certificate from another CA is refused, with a message that says so.
    let mallory = TestCa::generate("someone else")
        .unwrap()
        .issue_client("mallory")
        .unwrap();
    std::fs::write(path("mallory.pem"), &mallory.cert_pem).unwrap();
    std::fs::write(path("mallory-key.pem"), &mallory.key_pem).unwrap();
    let refused = cli
        .run_as(
            &["status", "regcred"],
            &[
                "--client-cert",
                &show("mallory.pem"),
                "--client-key",
                &show("mallory-key.pem"),
            ],
        )
        .await;
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "the client certificate is not accepted: it is not issued by the hub's admin client CA"
        ),
        "{}",
        refused.stderr
    );

    // The audit log names who did what: the token or the certificate's subject.
    let store = Store::connect(database_url).await.unwrap();
    let audit: Vec<(String, String, String)> = store
        .audit(100)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|event| (event.actor, event.action, event.subject))
        .collect();
    store.close().await;
    // What the hub did itself (each Key Vault version, each wave) is audited as actor `hub`.
    let (by_hub, audit): (Vec<_>, Vec<_>) = audit.into_iter().partition(|(actor, _, _)| actor == "hub");
    assert!(
        by_hub
            .iter()
            .any(|(_, action, subject)| action == "keyvault.version"
                && subject.starts_with("secretstore/shared-kv acr-pull ")),
        "{by_hub:?}"
    );
    assert!(
        by_hub.iter().any(|(_, action, _)| action == "rollout.wave"),
        "{by_hub:?}"
    );
    let expected = [
        ("token:e2e-admin", "spec.created", "secretstore/shared-kv"),
        ("token:e2e-admin", "spec.created", "fleetsecret/regcred"),
        ("token:e2e-admin", "cluster.create", "cluster/prod-eu-1"),
        ("cluster:prod-eu-1", "enroll", "prod-eu-1"),
        ("token:e2e-admin", "pin.set", "fleetsecret/regcred/acr-pull"),
        ("cert:alice@platform", "pin.remove", "fleetsecret/regcred"),
    ]
    .map(|(actor, action, subject)| (actor.to_owned(), action.to_owned(), subject.to_owned()));
    assert_eq!(audit, expected);

    // No secret value in the hub's log.
    let log = hub.log();
    for value in [&older_value, &latest_value] {
        assert!(!log.contains(value.as_str()), "a secret value in the hub log");
    }
    assert!(!log.contains("first-password") && !log.contains("second-password"));
    drop(agent);
    hub.stop().await;

    // Rotate the digest key (new one first, the old one kept) and restart: the current revision
    // is restored, not rendered again under a new number (its digest, keyed with the previous
    // key, still verifies).
    let key_b = "c3".repeat(32);
    std::fs::write(path("digest-key"), format!("{key_b}\n{key_a}\n")).unwrap();
    let hub = HubProcess::start(&args, &env, &path("ready.json")).await;
    let cli = Cli {
        hub: format!("https://localhost:{}", hub.grpc_addr.port()),
        ..cli
    };
    let status = cli
        .status_until("the revision restored after the rotation", |status| {
            status["revision"] == unpinned
        })
        .await;
    assert_eq!(status["revision"], unpinned, "{status:#}");
    // A write under the new key: pin the older version again (a new revision, keyed with B).
    cli.ok(&["rollout", "pin", "regcred", "--version", &older]).await;
    let status = cli
        .status_until("a revision recorded under the new key", |status| {
            status["revision"].as_u64() > Some(unpinned)
        })
        .await;
    let rotated_log = hub.log();
    hub.stop().await;
    assert!(rotated_log.contains("digest keys loaded"), "{rotated_log}");
    assert!(status["revision"].as_u64() > Some(unpinned));
    let keys = keyfleet_hub::domain::DigestKeys::parse(&format!("{key_b}\n{key_a}")).unwrap();
    let store = Store::connect(database_url)
        .await
        .unwrap()
        .with_digest_keys(keys.clone());
    let latest = store.latest_revisions().await.unwrap();
    assert_eq!(
        latest[0].digest.key(),
        Some(keys.current()),
        "written under the new key"
    );
    store.close().await;

    // No plain digest anywhere: of the values (the poller records them), of the payloads (the
    // revisions and the acknowledged status); neither in the database nor in either log.
    let mut plain: Vec<[u8; 32]> = payload_digests.clone();
    for value in [&older_value, &latest_value] {
        plain.push(keyfleet_hub::domain::Sha256::of(value.as_bytes()).0);
    }
    assert!(payload_digests.len() >= 3, "{payload_digests:?}");
    assert_no_plain_digest_in_the_database(database_url, &plain).await;
    for log in [&log, &rotated_log] {
        for digest in &plain {
            let hex = hex::encode(digest);
            assert!(
                !log.contains(&hex[..12]),
                "a plain digest ({}) in the hub log",
                &hex[..12]
            );
        }
    }
    kv.shutdown().await;
}

/// Scans every column of every table for each digest, as bytes and as hex text.
async fn assert_no_plain_digest_in_the_database(database_url: &str, digests: &[[u8; 32]]) {
    let mut connection = sqlx::PgConnection::connect(database_url).await.unwrap();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text
         FROM information_schema.columns c
         JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert!(
        columns.iter().any(|(table, ..)| table == "revisions"),
        "{columns:?}"
    );
    let mut scanned = 0;
    for (table, column, data_type) in &columns {
        let haystack = if data_type == "bytea" {
            format!("\"{column}\"")
        } else {
            format!("convert_to(\"{column}\"::text, 'UTF8')")
        };
        for digest in digests {
            for needle in [digest.to_vec(), hex::encode(digest).into_bytes()] {
                let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM \"{table}\" WHERE position($1::bytea in {haystack}) > 0"
                )))
                .bind(needle)
                .fetch_one(&mut connection)
                .await
                .unwrap();
                assert_eq!(hits, 0, "{table}.{column} holds a plain digest");
                scanned += 1;
            }
        }
    }
    assert!(scanned > 0);
}

/// A TLS channel to the hub that pins its development CA, as an agent dials it.
async fn agent_channel(addr: SocketAddr, ca: &Path) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `keyfleet serve` refuses what it must not run with, naming the flag or the line, never a
/// secret: a Postgres store without a digest key, a short admin token, a short digest key.
#[test]
fn serve_refuses_missing_keys_and_short_tokens_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let short_token = "kfa_only-26-bytes-long-xyz";
    std::fs::write(
        path("tokens"),
        format!("alice:kfa_alice-0123456789abcdef0123456789\nbob:{short_token}\n"),
    )
    .unwrap();
    let short_key = "00112233445566778899aabbccddeeff";
    std::fs::write(path("short-key"), format!("# current\n{short_key}\n")).unwrap();
    let serve = |args: &[&str]| {
        let output = std::process::Command::new(KEYFLEET)
            .arg("serve")
            .args([
                "--migrate",
                "--grpc-addr",
                "127.0.0.1:0",
                "--ops-addr",
                "127.0.0.1:0",
            ])
            .arg("--tls-self-signed")
            .arg(path("tls"))
            .args(args)
            .env("KEYFLEET_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} must be refused");
        String::from_utf8(output.stderr).unwrap()
    };
    let stderr = serve(&["--database", "postgres://keyfleet@127.0.0.1:1/none"]);
    assert!(
        stderr.contains("--digest-key-file (KEYFLEET_DIGEST_KEY_FILE) is required with a Postgres store"),
        "{stderr}"
    );
    let stderr = serve(&[
        "--database",
        "sqlite::memory:",
        "--admin-token-file",
        path("tokens").to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("line 2: the token is 26 bytes; at least 32"),
        "{stderr}"
    );
    assert!(!stderr.contains(short_token), "{stderr}");
    let stderr = serve(&[
        "--database",
        "sqlite::memory:",
        "--digest-key-file",
        path("short-key").to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("line 2: the key is 16 bytes; at least 32"),
        "{stderr}"
    );
    assert!(!stderr.contains(short_key), "{stderr}");
}
