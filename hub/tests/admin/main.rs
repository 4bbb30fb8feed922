//! The Admin service and the `keyfleet` CLI over real gRPC on 127.0.0.1:0, against a SQLite store
//! in a temporary directory and, when `DATABASE_URL` names a Postgres server, a fresh Postgres
//! database too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use clap::Parser as _;
use keyfleet_hub::cli::{self, CliError};
use keyfleet_hub::config::{Cli, ClientArgs, Command};
use keyfleet_hub::domain::{Sha256, SyncState};
use keyfleet_hub::grpc::admin::{AdminAuth, AdminService};
use keyfleet_hub::store::{ChangeKind, NewRevision, StatusRow, Store};
use keyfleet_hub::sync::control::{ControlError, HubControl, SyncNowOutcome};
use keyfleet_proto::v1;
use sqlx::{Connection as _, Executor as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

mod cluster_admin;
mod command_line;
mod spec_status;

use cluster_admin::clusters;
use spec_status::specs_and_status;

const ADMIN_TOKEN: &str = "kfa_test-admin-token-0123456789abcdef";

/// The hub side of the Admin service, recording what it was told.
#[derive(Default)]
struct TestControl {
    changed: AtomicUsize,
    synced: std::sync::Mutex<Vec<Option<String>>>,
}

#[async_trait]
impl HubControl for TestControl {
    async fn changed(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }

    async fn sync_now(&self, store: Option<String>) -> Result<SyncNowOutcome, ControlError> {
        self.synced.lock().unwrap().push(store.clone());
        Ok(SyncNowOutcome {
            stores: vec![store.unwrap_or_else(|| "shared-kv".to_owned())],
            new_versions: 2,
        })
    }
}

struct Hub {
    addr: SocketAddr,
    store: Store,
    control: Arc<TestControl>,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl Hub {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client_args(&self, token: &str) -> ClientArgs {
        ClientArgs {
            hub_url: self.url(),
            insecure: true,
            admin_token: Some(token.to_owned()),
            ..ClientArgs::default()
        }
    }

    async fn client(&self) -> cli::Client {
        cli::connect(&self.client_args(ADMIN_TOKEN)).await.unwrap()
    }

    fn changed(&self) -> usize {
        self.control.changed.load(Ordering::SeqCst)
    }

    /// Runs `keyfleet ARGS --hub … --admin-token-file …` and returns its output.
    async fn cli(&self, args: &[&str]) -> Result<String, CliError> {
        self.cli_as(ADMIN_TOKEN, args).await
    }

    /// The same with another token.
    async fn cli_as(&self, token: &str, args: &[&str]) -> Result<String, CliError> {
        self.cli_full(token, args, "").await
    }

    /// `keyfleet ARGS` with `stdin` as its standard input (`-f -`).
    async fn cli_stdin(&self, args: &[&str], stdin: &str) -> Result<String, CliError> {
        self.cli_full(ADMIN_TOKEN, args, stdin).await
    }

    /// `keyfleet ARGS --hub … --admin-token-file …` with this token and standard input.
    async fn cli_full(&self, token: &str, args: &[&str], stdin: &str) -> Result<String, CliError> {
        let (out, result) = self.cli_output(token, args, stdin).await;
        result.map(|()| out)
    }

    /// The same, returning what was printed whatever the outcome.
    async fn cli_output(&self, token: &str, args: &[&str], stdin: &str) -> (String, Result<(), CliError>) {
        let token_file = self.dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let url = self.url();
        let mut argv = vec!["keyfleet"];
        argv.extend_from_slice(args);
        argv.extend([
            "--hub",
            &url,
            "--insecure",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ]);
        let Command::Client(command) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("{argv:?} is not a client command");
        };
        let mut out = Vec::new();
        let result = cli::run_io(command, &mut stdin.as_bytes(), &mut out).await;
        (String::from_utf8(out).unwrap(), result)
    }
}

async fn start_with(url: Option<String>) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let url = url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("hub.db").display()));
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let control = Arc::new(TestControl::default());
    let service = AdminService::new(store.clone(), Arc::clone(&control) as Arc<dyn HubControl>).into_server(
        AdminAuth::new([("platform-admin".to_owned(), Sha256::of(ADMIN_TOKEN.as_bytes()))]),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    Hub {
        addr,
        store,
        control,
        dir,
        _stop: stop,
    }
}

async fn start() -> Hub {
    start_with(None).await
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn spec_file(name: &str, content: &str) -> v1::SpecFile {
    v1::SpecFile {
        name: name.to_owned(),
        content: content.to_owned(),
    }
}

const STORE_SPEC: &str = "\
kind: SecretStore
name: shared-kv
provider:
  azurekv:
    vaultUrl: https://shared-kv.vault.azure.net
    authType: WorkloadIdentity
";

/// A FleetSecret for env=prod clusters in two waves (canary, then main) that pauses on any error.
const WAVED_SPEC: &str = "\
kind: FleetSecret
name: waved
storeRef: shared-kv
data:
  - { secretKey: token, remoteRef: { key: api-token } }
target:
  namespaces: [default]
clusters:
  matchLabels: { env: prod }
rollout:
  waves: [{ matchLabels: { ring: canary } }, { matchLabels: { ring: main } }]
  pauseOnErrorRate: 0%
";

const PLAIN_SPEC: &str = "\
kind: FleetSecret
name: plain
storeRef: shared-kv
data:
  - { secretKey: a, remoteRef: { key: key-a } }
  - { secretKey: b, remoteRef: { key: key-b } }
target:
  namespaces: [default]
";

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("an error status");
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn only_the_admin_token_is_accepted() {
    let hub = start().await;
    let mut admin = hub.client().await;
    let created = admin
        .create_cluster(v1::CreateClusterRequest {
            name: "c1".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let enrollment = created.token.unwrap().token;
    // An agent's secrets (its enrollment token, a cluster credential) are not admin tokens.
    for token in [enrollment.as_str(), "kfc_cluster-credential", "wrong"] {
        let mut client = cli::connect(&hub.client_args(token)).await.unwrap();
        let (code, message) = code(client.list_clusters(v1::ListClustersRequest::default()).await);
        assert_eq!(code, Code::Unauthenticated, "{token}");
        assert!(!message.contains(token), "{message}");
    }
    // No header at all.
    let channel = tonic::transport::Endpoint::from_shared(hub.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = v1::admin_client::AdminClient::new(channel);
    let (code, _) = code(anonymous.list_clusters(v1::ListClustersRequest::default()).await);
    assert_eq!(code, Code::Unauthenticated);
}

#[tokio::test]
async fn clusters_on_sqlite() {
    clusters(start().await).await;
}

#[tokio::test]
async fn specs_and_status_on_sqlite() {
    specs_and_status(start().await).await;
}

/// Both scenarios on a fresh Postgres database, when `DATABASE_URL` names a server.
#[tokio::test]
async fn clusters_specs_and_status_on_postgres() {
    let Ok(base) = std::env::var("DATABASE_URL") else {
        eprintln!("DATABASE_URL is not set: the Postgres run is skipped");
        return;
    };
    for scenario in 0..2 {
        let name = format!("keyfleet_admin_{}", uuid::Uuid::new_v4().simple());
        let mut server = sqlx::PgConnection::connect(&base).await.unwrap();
        server
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&name);
        let hub = start_with(Some(url.to_string())).await;
        let store = hub.store.clone();
        if scenario == 0 {
            clusters(hub).await;
        } else {
            specs_and_status(hub).await;
        }
        store.close().await;
        server
            .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .await
            .unwrap();
    }
}
