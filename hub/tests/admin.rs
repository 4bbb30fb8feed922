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

async fn clusters(hub: Hub) {
    let mut admin = hub.client().await;
    let before = Utc::now();
    let created = admin
        .create_cluster(v1::CreateClusterRequest {
            name: "prod-eu-1".to_owned(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            token_ttl_seconds: 3_600,
        })
        .await
        .unwrap()
        .into_inner();
    let cluster = created.cluster.unwrap();
    let token = created.token.unwrap();
    assert_eq!(
        (cluster.name.as_str(), cluster.state.as_str()),
        ("prod-eu-1", "pending")
    );
    assert!(!cluster.connected);
    assert_eq!(token.cluster_name, "prod-eu-1");
    assert!(
        token.token.starts_with("kfe_") && token.token.len() == 47,
        "{}",
        token.token
    );
    let expires = token.expires.unwrap().seconds;
    assert!((before.timestamp() + 3_599..=Utc::now().timestamp() + 3_601).contains(&expires));
    // Only the digest is stored: the store accepts the token by its hash.
    let enrolled = hub
        .store
        .consume_enrollment_token(&Sha256::of(token.token.as_bytes()), Utc::now())
        .await
        .unwrap()
        .expect("token accepted once");
    assert_eq!(enrolled.to_string(), cluster.id);

    admin
        .create_cluster(v1::CreateClusterRequest {
            name: "dev-1".to_owned(),
            labels: [("env".to_owned(), "dev".to_owned())].into(),
            token_ttl_seconds: 0,
        })
        .await
        .unwrap();
    assert_eq!(hub.changed(), 2, "every mutation tells the hub");

    // Bad input names the field; duplicates and unknown names have their codes.
    let bad = |name: &str, labels: &[(&str, &str)], ttl: u32| v1::CreateClusterRequest {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        token_ttl_seconds: ttl,
    };
    for (request, code_, field) in [
        (bad("prod-eu-1", &[], 0), Code::AlreadyExists, "prod-eu-1"),
        (bad("Prod_EU", &[], 0), Code::InvalidArgument, "name: "),
        (bad("", &[], 0), Code::InvalidArgument, "name: required"),
        (
            bad("c2", &[("bad key!", "x")], 0),
            Code::InvalidArgument,
            "labels[bad key!]: ",
        ),
        (
            bad("c2", &[("env", "-x")], 0),
            Code::InvalidArgument,
            "labels[env]: ",
        ),
        (bad("c2", &[], 30), Code::InvalidArgument, "token_ttl_seconds: "),
        (
            bad("c2", &[], 604_801),
            Code::InvalidArgument,
            "token_ttl_seconds: ",
        ),
    ] {
        let (got, message) = code(admin.create_cluster(request).await);
        assert_eq!(got, code_, "{message}");
        assert!(message.contains(field), "{message}");
    }
    assert!(
        hub.store.cluster_by_name("c2").await.unwrap().is_none(),
        "nothing half-created"
    );

    // List with a selector, label, show.
    let selector = v1::LabelSelector {
        match_labels: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    let listed = admin
        .list_clusters(v1::ListClustersRequest {
            selector: Some(selector),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["prod-eu-1"]
    );
    let bad_selector = v1::LabelSelector {
        match_expressions: vec![v1::LabelRequirement {
            key: "env".to_owned(),
            operator: "Near".to_owned(),
            values: vec![],
        }],
        ..Default::default()
    };
    let (got, message) = code(
        admin
            .list_clusters(v1::ListClustersRequest {
                selector: Some(bad_selector),
            })
            .await,
    );
    assert_eq!(got, Code::InvalidArgument);
    assert!(message.starts_with("selector: "), "{message}");

    let labeled = admin
        .label_cluster(v1::LabelClusterRequest {
            name: "dev-1".to_owned(),
            set: [("ring".to_owned(), "canary".to_owned())].into(),
            remove: vec!["env".to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labeled.labels, [("ring".to_owned(), "canary".to_owned())].into());
    let (got, _) = code(
        admin
            .label_cluster(v1::LabelClusterRequest {
                name: "nope".to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);
    let (got, _) = code(
        admin
            .get_cluster(v1::GetClusterRequest {
                name: "nope".to_owned(),
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);

    // Revoke; a revoked cluster gets no new token; an active one does.
    let revoked = admin
        .revoke_cluster(v1::RevokeClusterRequest {
            name: "dev-1".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, "revoked");
    let (got, _) = code(
        admin
            .issue_enrollment_token(v1::IssueEnrollmentTokenRequest {
                name: "dev-1".to_owned(),
                token_ttl_seconds: 0,
            })
            .await,
    );
    assert_eq!(got, Code::FailedPrecondition);
    let again = admin
        .issue_enrollment_token(v1::IssueEnrollmentTokenRequest {
            name: "prod-eu-1".to_owned(),
            token_ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.token, token.token);

    // Every mutation is in the change log and the audit log, without the tokens.
    let changes = hub.store.changes_since(0, 100).await.unwrap();
    assert!(changes.iter().all(|change| change.kind == ChangeKind::Cluster));
    assert_eq!(changes.len(), 5, "{changes:?}");
    let audit = hub.store.audit(100).await.unwrap();
    let mut actions: Vec<(String, String)> = audit
        .iter()
        .map(|event| (event.action.clone(), event.subject.clone()))
        .collect();
    actions.sort();
    let expected = [
        ("cluster.create", "cluster/dev-1"),
        ("cluster.create", "cluster/prod-eu-1"),
        ("cluster.label", "cluster/dev-1"),
        ("cluster.revoke", "cluster/dev-1"),
        ("cluster.token", "cluster/prod-eu-1"),
    ];
    assert_eq!(
        actions,
        expected.map(|(a, s)| (a.to_owned(), s.to_owned())),
        "{audit:?}"
    );
    assert!(
        audit.iter().all(|event| event.actor == "token:platform-admin"),
        "every call is audited by the name of its token: {audit:?}"
    );
    let printed = format!("{audit:?}");
    assert!(!printed.contains("kfe_"), "{printed}");
}

async fn specs_and_status(hub: Hub) {
    let mut admin = hub.client().await;
    // An invalid file refuses the whole request.
    let broken = WAVED_SPEC.replace(
        "namespaces: [default]",
        "namespaces: [default]\n  creationPolicy: Own",
    );
    let (got, message) = code(
        admin
            .apply_specs(v1::ApplySpecsRequest {
                files: vec![
                    spec_file("store.yaml", STORE_SPEC),
                    spec_file("waved.yaml", &broken),
                ],
                dry_run: false,
            })
            .await,
    );
    assert_eq!(got, Code::InvalidArgument);
    assert!(
        message.contains("waved.yaml:8: target.creationPolicy: "),
        "{message}"
    );
    assert!(hub.store.list_specs().await.unwrap().is_empty(), "all or nothing");
    let (got, message) = code(admin.apply_specs(v1::ApplySpecsRequest::default()).await);
    assert_eq!(
        (got, message.as_str()),
        (Code::InvalidArgument, "files: at least one file is required")
    );

    let apply = |files: Vec<v1::SpecFile>, dry_run| v1::ApplySpecsRequest { files, dry_run };
    let applied = admin
        .apply_specs(apply(
            vec![
                spec_file("store.yaml", STORE_SPEC),
                spec_file("waved.yaml", WAVED_SPEC),
                spec_file("plain.yaml", PLAIN_SPEC),
            ],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    let summary = |objects: &[v1::AppliedObject]| -> Vec<String> {
        objects
            .iter()
            .map(|o| format!("{}/{} {} {}", o.kind, o.name, o.action, o.generation))
            .collect()
    };
    assert_eq!(
        summary(&applied.objects),
        [
            "SecretStore/shared-kv created 1",
            "FleetSecret/waved created 1",
            "FleetSecret/plain created 1"
        ]
    );
    assert_eq!(hub.changed(), 1, "one apply, one wake-up");
    // A dry run reports without storing; a real run bumps the generation.
    let changed_spec = PLAIN_SPEC.replace("[default]", "[default, ci]");
    let dry = admin
        .apply_specs(apply(vec![spec_file("plain.yaml", &changed_spec)], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary(&dry.objects), ["FleetSecret/plain configured 2"]);
    assert_eq!(hub.changed(), 1);
    let real = admin
        .apply_specs(apply(
            vec![
                spec_file("store.yaml", STORE_SPEC),
                spec_file("plain.yaml", &changed_spec),
            ],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary(&real.objects),
        [
            "SecretStore/shared-kv unchanged 1",
            "FleetSecret/plain configured 2"
        ]
    );

    let stores = admin
        .list_stores(v1::ListStoresRequest {})
        .await
        .unwrap()
        .into_inner()
        .stores;
    assert_eq!(stores.len(), 1);
    assert_eq!(
        (
            stores[0].vault_url.as_str(),
            stores[0].auth_type.as_str(),
            stores[0].healthy
        ),
        ("https://shared-kv.vault.azure.net/", "WorkloadIdentity", false)
    );
    assert_eq!(stores[0].last_error, "not polled yet");

    // Inventory: a canary and two main clusters in prod, one dev cluster.
    let mut ids = std::collections::BTreeMap::new();
    for (name, env, ring) in [
        ("c1", "prod", "canary"),
        ("c2", "prod", "main"),
        ("c3", "prod", "main"),
        ("d1", "dev", "main"),
    ] {
        let created = admin
            .create_cluster(v1::CreateClusterRequest {
                name: name.to_owned(),
                labels: [
                    ("env".to_owned(), env.to_owned()),
                    ("ring".to_owned(), ring.to_owned()),
                ]
                .into(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let cluster = hub.store.cluster_by_name(name).await.unwrap().unwrap();
        assert_eq!(cluster.id.to_string(), created.cluster.unwrap().id);
        ids.insert(name, cluster.id);
    }
    let revision = hub
        .store
        .upsert_revision(&NewRevision {
            fleet_secret: "waved".to_owned(),
            sha256: Sha256::of(b"rendered"),
            spec_generation: 1,
            sources: vec![(
                "api-token".to_owned(),
                "0123456789abcdef0123456789abcdef".to_owned(),
            )],
        })
        .await
        .unwrap();
    for name in ["c1", "c2"] {
        hub.store
            .record_connect(ids[name], "replica-a", "1.0.0", Utc::now())
            .await
            .unwrap();
    }
    let row = |name: &str, applied: Option<u64>, state: SyncState, error: Option<&str>| StatusRow {
        cluster: ids[name],
        fleet_secret: "waved".to_owned(),
        desired_revision: revision,
        applied_revision: applied,
        applied_sha256: applied.map(|_| Sha256::of(b"rendered")),
        state,
        last_error: error.map(str::to_owned),
        attempts: 1,
        at: Utc::now(),
    };
    hub.store
        .upsert_status_batch(&[
            row("c1", Some(revision), SyncState::Applied, None),
            row("c2", None, SyncState::Error, Some("namespace ci not found")),
            row("c3", None, SyncState::Pending, None),
        ])
        .await
        .unwrap();

    let status = admin
        .get_status(v1::GetStatusRequest {
            fleet_secret: "waved".to_owned(),
            lagging_limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .fleet_secrets;
    assert_eq!(status.len(), 1);
    let waved = &status[0];
    assert_eq!(waved.revision, revision);
    assert_eq!(
        (
            waved.targeted,
            waved.applied,
            waved.pending,
            waved.error,
            waved.offline
        ),
        (3, 1, 0, 1, 1)
    );
    assert_eq!(waved.sources[0].remote_key, "api-token");
    let rollout = waved.rollout.clone().unwrap();
    assert_eq!(
        (rollout.state.as_str(), rollout.current_wave, rollout.waves),
        ("paused", 1, 2)
    );
    assert_eq!(rollout.reason, "error rate 1/2 (50.0%) above 0.0% in wave 2");
    let mut lagging: Vec<(&str, &str)> = waved
        .lagging
        .iter()
        .map(|lag| (lag.cluster.as_str(), lag.state.as_str()))
        .collect();
    lagging.sort();
    assert_eq!(lagging, [("c2", "error"), ("c3", "offline")]);

    // All FleetSecrets, sorted; "plain" has no revision yet and targets every cluster.
    let all = admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .fleet_secrets;
    assert_eq!(
        all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["plain", "waved"]
    );
    assert_eq!((all[0].revision, all[0].targeted), (0, 4));
    let (got, _) = code(
        admin
            .get_status(v1::GetStatusRequest {
                fleet_secret: "nope".to_owned(),
                lagging_limit: 0,
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);

    // GetCluster lists the recorded row and the targeted FleetSecret not synced yet.
    let shown = admin
        .get_cluster(v1::GetClusterRequest {
            name: "c2".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let secrets: Vec<(&str, u64, &str, &str)> = shown
        .secrets
        .iter()
        .map(|s| {
            (
                s.fleet_secret.as_str(),
                s.desired_revision,
                s.state.as_str(),
                s.last_error.as_str(),
            )
        })
        .collect();
    assert_eq!(
        secrets,
        [
            ("plain", 0, "pending", ""),
            ("waved", revision, "error", "namespace ci not found")
        ]
    );
    assert!(shown.cluster.unwrap().connected);

    // Pause and resume.
    let rollout_request = |name: &str| v1::RolloutRequest {
        fleet_secret: name.to_owned(),
    };
    let paused = admin
        .pause_rollout(rollout_request("waved"))
        .await
        .unwrap()
        .into_inner();
    let paused = paused.rollout.unwrap();
    assert_eq!(
        (paused.state.as_str(), paused.reason.as_str()),
        ("paused", "paused by admin")
    );
    let records = hub.store.rollouts().await.unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.fleet_secret == "waved" && r.paused && r.revision == revision)
    );
    let resumed = admin
        .resume_rollout(rollout_request("waved"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resumed.rollout.unwrap().reason,
        "error rate 1/2 (50.0%) above 0.0% in wave 2"
    );
    let (got, message) = code(admin.pause_rollout(rollout_request("plain")).await);
    assert_eq!(got, Code::FailedPrecondition, "{message}");
    let (got, _) = code(admin.pause_rollout(rollout_request("nope")).await);
    assert_eq!(got, Code::NotFound);

    // Pins.
    let pin = |name: &str, key: &str, version: &str| v1::PinVersionRequest {
        fleet_secret: name.to_owned(),
        remote_key: key.to_owned(),
        version: version.to_owned(),
    };
    let version = "fedcba9876543210fedcba9876543210";
    for (request, code_, fragment) in [
        (pin("waved", "", "v1"), Code::InvalidArgument, "version: "),
        (
            pin("plain", "", version),
            Code::InvalidArgument,
            "remote_key: required",
        ),
        (
            pin("plain", "key-c", version),
            Code::InvalidArgument,
            "remote_key: ",
        ),
        (pin("nope", "", version), Code::NotFound, "nope"),
    ] {
        let (got, message) = code(admin.pin_version(request).await);
        assert_eq!(got, code_, "{message}");
        assert!(message.contains(fragment), "{message}");
    }
    let pinned = admin
        .pin_version(pin("waved", "", version))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pinned.pins,
        [v1::Pin {
            remote_key: "api-token".to_owned(),
            version: version.to_owned()
        }]
    );
    admin.pin_version(pin("plain", "key-b", version)).await.unwrap();
    let unpin = |name: &str, key: &str| v1::UnpinVersionRequest {
        fleet_secret: name.to_owned(),
        remote_key: key.to_owned(),
    };
    let unpinned = admin
        .unpin_version(unpin("waved", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(unpinned.pins.is_empty());
    let (got, _) = code(admin.unpin_version(unpin("waved", "")).await);
    assert_eq!(got, Code::NotFound);

    // Sync now.
    let synced = admin
        .sync_now(v1::SyncNowRequest {
            store: "shared-kv".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (synced.stores, synced.new_versions),
        (vec!["shared-kv".to_owned()], 2)
    );
    let (got, _) = code(
        admin
            .sync_now(v1::SyncNowRequest {
                store: "nope".to_owned(),
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);
    assert_eq!(
        *hub.control.synced.lock().unwrap(),
        [Some("shared-kv".to_owned())]
    );

    // Delete: the FleetSecret and its pins go.
    admin
        .delete_fleet_secret(v1::DeleteFleetSecretRequest {
            name: "plain".to_owned(),
        })
        .await
        .unwrap();
    assert!(
        hub.store
            .pins()
            .await
            .unwrap()
            .iter()
            .all(|p| p.fleet_secret != "plain")
    );
    let (got, _) = code(
        admin
            .delete_fleet_secret(v1::DeleteFleetSecretRequest {
                name: "plain".to_owned(),
            })
            .await,
    );
    assert_eq!(got, Code::NotFound);
    let listed = admin
        .list_fleet_secrets(v1::ListFleetSecretsRequest {})
        .await
        .unwrap()
        .into_inner()
        .fleet_secrets;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].store.as_str(),
            listed[0].revision,
            listed[0].target_name.as_str()
        ),
        ("waved", "shared-kv", revision, "waved")
    );

    // The audit trail names every mutation, never a value.
    let audit = hub.store.audit(100).await.unwrap();
    let actions: std::collections::BTreeSet<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "spec.created",
        "spec.configured",
        "rollout.pause",
        "rollout.resume",
        "pin.set",
        "pin.remove",
        "sync-now",
        "fleetsecret.delete",
    ] {
        assert!(actions.contains(action), "{action} missing from {actions:?}");
    }
    let kinds: std::collections::BTreeSet<&str> = hub
        .store
        .changes_since(0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.kind.as_str())
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    for kind in ["spec", "cluster", "rollout", "pin"] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn the_cli_drives_the_admin_api_end_to_end() {
    let hub = start().await;
    let out = hub
        .cli(&[
            "cluster",
            "add",
            "prod-eu-1",
            "--label",
            "env=prod",
            "-l",
            "region=eu",
            "--token-ttl",
            "2h",
        ])
        .await
        .unwrap();
    assert!(out.starts_with("cluster/prod-eu-1 created\n"), "{out}");
    let token = out
        .split_whitespace()
        .find(|word| word.starts_with("kfe_"))
        .expect("the token is printed");
    assert_eq!(token.len(), 47);
    assert!(out.contains("expires "), "{out}");
    assert!(
        out.contains(&format!(
            "KEYFLEET_AGENT_HUB_URL={} KEYFLEET_AGENT_ENROLLMENT_TOKEN={token} keyfleet-agent",
            hub.url()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "kubectl -n keyfleet-system create secret generic keyfleet-agent-enrollment \
             --from-literal=token={token}\n"
        )),
        "the Kubernetes install steps name the token: {out}"
    );
    assert!(
        out.contains(&format!(
            "helm install keyfleet-agent deploy/charts/keyfleet-agent -n keyfleet-system --set hub.url={}\n",
            hub.url()
        )),
        "{out}"
    );
    assert!(!out.contains(ADMIN_TOKEN), "the admin token is never printed");
    hub.cli(&["cluster", "add", "dev-1", "-l", "env=dev"])
        .await
        .unwrap();

    let table = hub.cli(&["cluster", "list"]).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("STATE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("dev-1 ") && lines[2].starts_with("prod-eu-1 "),
        "{table}"
    );
    assert!(
        lines[2].contains("pending") && lines[2].contains("env=prod,region=eu"),
        "{table}"
    );
    let json = hub
        .cli(&[
            "cluster",
            "list",
            "--selector",
            "env in (prod),region",
            "-o",
            "json",
        ])
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "prod-eu-1");
    assert_eq!(listed[0]["labels"]["region"], "eu");

    let out = hub
        .cli(&["cluster", "label", "dev-1", "ring=canary", "env-"])
        .await
        .unwrap();
    assert_eq!(out, "cluster/dev-1 labeled: ring=canary\n");
    let out = hub
        .cli(&[
            "cluster",
            "token",
            "dev-1",
            "--agent-hub-url",
            "https://hub.example:7443",
        ])
        .await
        .unwrap();
    assert!(
        out.contains("KEYFLEET_AGENT_HUB_URL=https://hub.example:7443 "),
        "{out}"
    );

    // apply -f of the example, twice, and a dry run.
    let example = examples().join("regcred.yaml");
    let example = example.to_str().unwrap();
    let out = hub.cli(&["apply", "-f", example]).await.unwrap();
    assert_eq!(
        out,
        "secretstore/shared-kv created (generation 1)\nfleetsecret/regcred created (generation 1)\n"
    );
    let out = hub.cli(&["apply", "-f", example, "--dry-run"]).await.unwrap();
    assert_eq!(
        out,
        "secretstore/shared-kv unchanged (generation 1) (dry run)\nfleetsecret/regcred unchanged (generation 1) (dry run)\n"
    );
    let out = hub
        .cli(&["apply", "-f", examples().to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        out.contains("fleetsecret/regcred-templated created (generation 1)"),
        "{out}"
    );

    let out = hub.cli(&["get", "fleetsecrets"]).await.unwrap();
    assert!(
        out.lines()
            .any(|line| line.starts_with("regcred ") && line.contains("kubernetes.io/dockerconfigjson")),
        "{out}"
    );
    let out = hub.cli(&["get", "stores", "-o", "yaml"]).await.unwrap();
    assert!(
        out.contains("vaultUrl: https://shared-kv.vault.azure.net/"),
        "{out}"
    );

    // status -o json: the FleetSecret and the clusters it targets.
    let json = hub.cli(&["status", "regcred", "-o", "json"]).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["name"], "regcred");
    assert_eq!(status["targeted"], 1, "{status}");
    assert_eq!(status["offline"], 1, "{status}");
    assert_eq!(status["rollout"]["state"], "none", "no revision yet: {status}");
    let table = hub.cli(&["status"]).await.unwrap();
    assert!(table.starts_with("FLEETSECRET "), "{table}");
    assert!(table.lines().any(|line| line.starts_with("regcred ")), "{table}");

    let out = hub.cli(&["sync-now", "--store", "shared-kv"]).await.unwrap();
    assert_eq!(out, "polled 1 store(s) (shared-kv): 2 new version(s)\n");
    let out = hub
        .cli(&["delete", "fleetsecret", "regcred-templated"])
        .await
        .unwrap();
    assert_eq!(out, "fleetsecret/regcred-templated deleted\n");

    // Exit codes scripts can trust.
    let error = hub
        .cli(&["cluster", "show", "nope"])
        .await
        .expect_err("unknown cluster");
    assert_eq!(error.exit_code(), 4, "{error}");
    assert!(error.to_string().contains("cluster \"nope\""), "{error}");
    let error = hub
        .cli(&["rollout", "pause", "regcred"])
        .await
        .expect_err("no revision yet");
    assert_eq!(error.exit_code(), 1, "{error}");
    let bad = hub.dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: FleetSecret\nname: x\n").unwrap();
    let error = hub
        .cli(&["apply", "-f", bad.to_str().unwrap()])
        .await
        .expect_err("invalid spec");
    assert_eq!(error.exit_code(), 1);
    assert!(error.to_string().contains("bad.yaml:"), "{error}");
    let error = hub
        .cli(&["apply", "-f", "/nonexistent/specs"])
        .await
        .expect_err("missing file");
    assert_eq!(error.exit_code(), 2, "{error}");
    let error = hub
        .cli_as("kfa_wrong", &["cluster", "list"])
        .await
        .expect_err("refused");
    assert_eq!(error.exit_code(), 3, "{error}");
    let mut wrong = hub.client_args(ADMIN_TOKEN);
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    wrong.hub_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let error = cli::connect(&wrong).await.expect_err("nothing listens");
    assert_eq!(error.exit_code(), 3, "{error}");
    wrong.insecure = false;
    let error = cli::connect(&wrong)
        .await
        .expect_err("plaintext without --insecure");
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(error.to_string().contains("--insecure"), "{error}");
    assert!(
        !format!("{wrong:?}").contains(ADMIN_TOKEN),
        "the admin token never prints"
    );
}

/// The cluster file of the bulk enrollment tests.
const CLUSTERS: &str = "\
clusters:
  - name: prod-eu-1
    labels: {env: prod, region: eu}
  - name: prod-us-1
    labels: {env: prod, region: us}
  - name: dev-1
";

#[tokio::test]
async fn bulk_enrollment_is_idempotent_and_reports_every_cluster() {
    let hub = start().await;
    let file = hub.dir.path().join("clusters.yaml");
    std::fs::write(&file, CLUSTERS).unwrap();
    let file = file.to_str().unwrap();

    // First run: every cluster created, each with its own token, as JSON.
    let json = hub
        .cli(&[
            "cluster",
            "add",
            "-f",
            file,
            "-o",
            "json",
            "--agent-hub-url",
            "https://hub.example:7443",
        ])
        .await
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&json).unwrap();
    let created = created.as_array().unwrap();
    assert_eq!(created.len(), 3, "{json}");
    let mut tokens = std::collections::BTreeSet::new();
    for (item, name) in created.iter().zip(["prod-eu-1", "prod-us-1", "dev-1"]) {
        assert_eq!(item["name"], name, "file order: {json}");
        assert_eq!(item["outcome"], "created", "{json}");
        assert_eq!(item["hubUrl"], "https://hub.example:7443");
        assert!(item["error"].is_null());
        let token = item["token"].as_str().unwrap();
        assert!(token.starts_with("kfe_") && token.len() == 47, "{token}");
        tokens.insert(token.to_owned());
        let expires = item["expires"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(expires).is_ok(), "{expires}");
    }
    assert_eq!(tokens.len(), 3, "one token per cluster");
    assert_eq!(created[0]["labels"]["region"], "eu");
    let clusters = hub.store.list_clusters(None).await.unwrap();
    assert_eq!(clusters.len(), 3);
    let changes = hub.changed();

    // Second run, the same file from stdin: nothing changes, no token is issued.
    let out = hub
        .cli_stdin(&["cluster", "add", "-f", "-"], CLUSTERS)
        .await
        .unwrap();
    assert_eq!(
        out,
        "cluster/prod-eu-1 unchanged\ncluster/prod-us-1 unchanged\ncluster/dev-1 unchanged\n\
         3 cluster(s): 0 created, 0 relabelled, 3 unchanged, 0 failed\n"
    );
    assert!(!out.contains("kfe_"), "{out}");
    assert_eq!(hub.changed(), changes, "an unchanged run writes nothing");

    // Third run: one relabelled (the file's labels exactly), one new, one invalid, one revoked.
    hub.cli(&["cluster", "add", "old-1"]).await.unwrap();
    hub.cli(&["cluster", "revoke", "old-1"]).await.unwrap();
    let changed = "\
clusters:
  - name: prod-eu-1
    labels: {env: prod, region: eu}
  - name: prod-us-1
    labels: {env: prod, ring: canary}
  - name: prod-ap-1
    labels: {env: prod, region: ap}
  - name: Not_A_Name
  - name: old-1
";
    let (out, result) = hub
        .cli_output(ADMIN_TOKEN, &["cluster", "add", "-f", "-"], changed)
        .await;
    let error = result.expect_err("two clusters fail");
    assert_eq!(error.exit_code(), 1, "{error}");
    assert_eq!(error.to_string(), "2 of 5 clusters failed");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "cluster/prod-eu-1 unchanged", "{out}");
    assert_eq!(
        lines[1], "cluster/prod-us-1 relabelled: env=prod,ring=canary",
        "{out}"
    );
    assert_eq!(lines[2], "cluster/prod-ap-1 created", "{out}");
    assert!(
        lines[3].starts_with("  enrollment token (shown once, single use, expires ")
            && lines[3].contains(" kfe_"),
        "{out}"
    );
    assert!(lines[4].starts_with("cluster/Not_A_Name failed: "), "{out}");
    assert_eq!(
        lines[5], "cluster/old-1 failed: cluster \"old-1\" is revoked",
        "{out}"
    );
    assert_eq!(
        lines[6], "5 cluster(s): 1 created, 1 relabelled, 1 unchanged, 2 failed",
        "{out}"
    );
    assert!(lines[7].contains("docs/enrollment.md"), "{out}");
    let prod_us = hub.store.cluster_by_name("prod-us-1").await.unwrap().unwrap();
    assert_eq!(
        prod_us
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["env=prod", "ring=canary"],
        "relabelled to exactly the file's labels"
    );

    // Again as JSON: the failures are reported there too, with their reason.
    let (json, result) = hub
        .cli_output(ADMIN_TOKEN, &["cluster", "add", "-f", "-", "-o", "json"], changed)
        .await;
    assert_eq!(result.expect_err("still failing").exit_code(), 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let outcomes: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["name"].as_str().unwrap(), item["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("prod-eu-1", "unchanged"),
            ("prod-us-1", "unchanged"),
            ("prod-ap-1", "unchanged"),
            ("Not_A_Name", "failed"),
            ("old-1", "failed"),
        ]
    );
    assert!(json[4]["error"].as_str().unwrap().contains("revoked"), "{json}");
    assert!(json[3]["token"].is_null() && json[0]["token"].is_null(), "{json}");

    // --reissue-pending: a fresh token for listed clusters that never enrolled.
    let out = hub
        .cli_stdin(&["cluster", "add", "-f", "-", "--reissue-pending"], CLUSTERS)
        .await
        .unwrap();
    assert_eq!(
        out.matches("  enrollment token (shown once, single use, expires ")
            .count(),
        3,
        "{out}"
    );
    assert!(
        out.contains("cluster/dev-1 unchanged\n  enrollment token"),
        "{out}"
    );
    assert!(
        out.contains("cluster/prod-us-1 relabelled: env=prod,region=us\n"),
        "{out}"
    );
    assert!(!out.contains(ADMIN_TOKEN));

    // Usage errors are found before any request.
    let error = hub
        .cli_stdin(
            &["cluster", "add", "-f", "-"],
            "clusters:\n  - name: a\n  - name: a\n",
        )
        .await
        .expect_err("duplicate");
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(Cli::try_parse_from(["keyfleet", "cluster", "add", "a", "-f", "x.yaml"]).is_err());
    assert!(Cli::try_parse_from(["keyfleet", "cluster", "add", "--reissue-pending", "a"]).is_err());
    assert!(Cli::try_parse_from(["keyfleet", "cluster", "add"]).is_err());
}

#[tokio::test]
async fn single_cluster_add_and_token_print_json_for_scripts() {
    let hub = start().await;
    let json = hub
        .cli(&["cluster", "add", "prod-eu-1", "-l", "env=prod", "-o", "json"])
        .await
        .unwrap();
    let added: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(added["name"], "prod-eu-1");
    assert_eq!(added["outcome"], "created");
    assert_eq!(added["labels"]["env"], "prod");
    assert_eq!(added["hubUrl"], hub.url());
    assert!(added["token"].as_str().unwrap().starts_with("kfe_"));
    assert!(added["expires"].is_string());
    let yaml = hub
        .cli(&["cluster", "token", "prod-eu-1", "-o", "yaml", "--token-ttl", "1h"])
        .await
        .unwrap();
    let token: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(token["name"], "prod-eu-1");
    assert!(token["token"].as_str().unwrap().starts_with("kfe_"));
    assert_ne!(token["token"], added["token"], "a new token");
    let error = hub
        .cli(&["cluster", "add", "prod-eu-1", "-o", "json"])
        .await
        .expect_err("exists");
    assert_eq!(error.exit_code(), 1, "a single add stays strict: {error}");
}

#[tokio::test]
async fn apply_reads_stdin() {
    let hub = start().await;
    let spec = std::fs::read_to_string(examples().join("regcred.yaml")).unwrap();
    let out = hub.cli_stdin(&["apply", "-f", "-"], &spec).await.unwrap();
    assert_eq!(
        out,
        "secretstore/shared-kv created (generation 1)\nfleetsecret/regcred created (generation 1)\n"
    );
    let error = hub
        .cli_stdin(&["apply", "-f", "-"], "kind: FleetSecret\nname: x\n")
        .await
        .expect_err("invalid");
    assert!(error.to_string().contains("<stdin>:"), "{error}");
    let error = hub
        .cli_stdin(&["apply", "-f", "-", "-f", "-"], &spec)
        .await
        .expect_err("twice");
    assert_eq!(error.exit_code(), 2);
}

/// The real binary reads a pipe: `keyfleet apply -f - < regcred.yaml`.
#[tokio::test]
async fn the_binary_applies_specs_from_a_pipe() {
    let hub = start().await;
    let token_file = hub.dir.path().join("admin-token");
    // The hub's own token file format: the CLI sends the token part of `name:token`.
    std::fs::write(&token_file, format!("# admins\nplatform-admin:{ADMIN_TOKEN}\n")).unwrap();
    let spec = std::fs::File::open(examples().join("regcred.yaml")).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args([
            "apply",
            "-f",
            "-",
            "--dry-run",
            "--hub",
            &hub.url(),
            "--insecure",
            "--admin-token-file",
        ])
        .arg(&token_file)
        .stdin(std::process::Stdio::from(spec))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("fleetsecret/regcred created (generation 1) (dry run)"),
        "{stdout}"
    );
}

/// The fenced block of `docs/enrollment.md` that starts with `first_line`.
fn enrollment_doc_block(first_line: &str) -> String {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/enrollment.md"))
            .unwrap();
    let start = doc
        .find(first_line)
        .unwrap_or_else(|| panic!("docs/enrollment.md lacks {first_line:?}"));
    let block = &doc[start..];
    block[..block.find("```").unwrap()].to_owned()
}

/// docs/enrollment.md's GitOps loop, run as written with the real binary against a hub: one
/// Secret manifest per new cluster, nothing on a second run.
#[tokio::test]
async fn the_documented_gitops_loop_writes_one_secret_per_new_cluster() {
    if std::process::Command::new("jq")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("jq is not installed: the documented loop needs it (apt-get install jq)");
    }
    let hub = start().await;
    let work = hub.dir.path().join("gitops");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("clusters.yaml"), enrollment_doc_block("clusters:\n")).unwrap();
    let script = enrollment_doc_block("set -o pipefail\n");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_keyfleet"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = || {
        tokio::process::Command::new("bash")
            .args(["-c", &script])
            .current_dir(&work)
            .env("PATH", &path)
            .env("KEYFLEET_HUB", hub.url())
            .env("KEYFLEET_INSECURE", "true")
            .env("KEYFLEET_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
    };
    let output = run().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["prod-eu-1", "prod-eu-2", "dev-1"] {
        let file = work.join(format!("clusters/{name}/keyfleet/enrollment-secret.json"));
        let secret: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["metadata"]["name"], "keyfleet-agent-enrollment");
        assert_eq!(secret["metadata"]["namespace"], "keyfleet-system");
        assert!(
            secret["stringData"]["token"]
                .as_str()
                .unwrap()
                .starts_with("kfe_"),
            "{secret}"
        );
        std::fs::remove_file(&file).unwrap();
    }
    assert!(
        !work.join("enrollment.json").exists(),
        "the tokens file is removed"
    );
    let output = run().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !work
            .join("clusters/dev-1/keyfleet/enrollment-secret.json")
            .exists(),
        "a second run issues no token"
    );
}
