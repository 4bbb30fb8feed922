//! Admin authentication by client certificate (mTLS) on the hub's one TLS listener, served as
//! `keyfleet serve --admin-client-ca` serves it: Sync, Enrollment and Admin together, the
//! listener asking every client for a certificate without requiring one, and only the Admin
//! service checking it; with `--admin-client-crl`, a revoked certificate is refused at the next
//! call once the CRL file lists it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser as _;
use keyfleet_hub::cli::{self, CliError};
use keyfleet_hub::config::{Cli, Command};
use keyfleet_hub::domain::Sha256;
use keyfleet_hub::fleet::credentials::{self, Credentials};
use keyfleet_hub::fleet::{Fleet, FleetEvent};
use keyfleet_hub::grpc::admin::{AdminAuth, AdminService};
use keyfleet_hub::grpc::client_ca::ClientCa;
use keyfleet_hub::grpc::enroll::EnrollService;
use keyfleet_hub::grpc::server::{self, TlsMaterial, TlsSource};
use keyfleet_hub::grpc::sync::{SyncConfig, SyncService};
use keyfleet_hub::store::Store;
use keyfleet_hub::sync::control::{ControlError, HubControl, SyncNowOutcome};
use keyfleet_proto::v1;
use keyfleet_proto::v1::admin_client::AdminClient;
use keyfleet_testkit::tls::{ServerCert, TestCa};
use support::{Applied, HelloOptions, TestAgent, default_fleet_config, desired, revision};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const ADMIN_TOKEN: &str = "kfa_mtls-test-admin-token-0123456789";

struct NoControl;

#[async_trait]
impl HubControl for NoControl {
    async fn changed(&self) {}

    async fn sync_now(&self, _store: Option<String>) -> Result<SyncNowOutcome, ControlError> {
        Ok(SyncNowOutcome::default())
    }
}

struct Hub {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    server_ca_pem: String,
    admins: TestCa,
    store: Store,
    fleet: Fleet,
    credentials: Credentials,
    _events: mpsc::Receiver<FleetEvent>,
    _stop: oneshot::Sender<()>,
}

impl Hub {
    async fn start() -> Self {
        Self::start_with_crl(false).await
    }

    /// With `crl`, the admin CA's CRL file is DIR/admins.crl (empty at start; rewrite it to revoke).
    async fn start_with_crl(crl: bool) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let material = TlsMaterial::load(&TlsSource::SelfSigned {
            dir: dir.path().join("tls"),
            sans: vec![],
        })
        .unwrap();
        let admins = TestCa::generate("keyfleet admins").unwrap();
        let mut client_ca = ClientCa::from_pem(admins.cert_pem()).unwrap();
        if crl {
            let path = dir.path().join("admins.crl");
            std::fs::write(&path, admins.revocation_list(&[]).unwrap()).unwrap();
            client_ca = client_ca.with_crl_file(&path).unwrap();
        }
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("hub.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let admin = AdminService::new(store.clone(), Arc::new(NoControl)).into_server(
            AdminAuth::new([("ops".to_owned(), Sha256::of(ADMIN_TOKEN.as_bytes()))])
                .with_client_ca(client_ca.clone()),
        );
        let (fleet, events) = Fleet::new(default_fleet_config());
        let credentials = Credentials::default();
        let sync = SyncService::new(fleet.clone(), credentials.clone(), SyncConfig::default());
        sync.set_ready(true);
        let enroll = EnrollService::new(store.clone(), credentials.clone(), 100, 100);
        let routes = tonic::service::Routes::new(sync.into_server())
            .add_service(enroll.into_server())
            .add_service(admin);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving_material = material.clone();
        tokio::spawn(async move {
            server::serve_requesting_client_certs(listener, &serving_material, &client_ca, routes, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            dir,
            server_ca_pem: material.ca_pem.unwrap(),
            admins,
            store,
            fleet,
            credentials,
            _events: events,
            _stop: stop,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// A TLS channel trusting the hub, presenting `client` when given.
    async fn channel(&self, client: Option<&ServerCert>) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.server_ca_pem))
            .domain_name("localhost");
        if let Some(client) = client {
            tls = tls.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    /// Writes `cert` to DIR/NAME.pem and DIR/NAME-key.pem.
    fn write_cert(&self, name: &str, cert: &ServerCert) -> (String, String) {
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, &cert.cert_pem).unwrap();
        std::fs::write(&key_path, &cert.key_pem).unwrap();
        (cert_path.display().to_string(), key_path.display().to_string())
    }

    /// Runs `keyfleet ARGS --hub … --hub-ca …` plus `auth` (credential flags) and returns its output.
    async fn cli(&self, args: &[&str], auth: &[&str]) -> Result<String, CliError> {
        let ca = self.dir.path().join("tls").join("ca.pem");
        let url = self.url();
        let mut argv = vec!["keyfleet"];
        argv.extend_from_slice(args);
        argv.extend(["--hub", &url, "--hub-ca", ca.to_str().unwrap()]);
        argv.extend_from_slice(auth);
        let Command::Client(command) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("{argv:?} is not a client command");
        };
        let mut out = Vec::new();
        cli::run(command, &mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }
}

#[tokio::test]
async fn a_certificate_from_the_admin_ca_is_accepted_without_a_token() {
    let hub = Hub::start().await;
    let alice = hub.admins.issue_client("alice@platform").unwrap();
    let (cert, key) = hub.write_cert("alice", &alice);

    // The CLI with --client-cert/--client-key and no token at all.
    let out = hub
        .cli(
            &["cluster", "add", "prod-eu-1", "--label", "env=prod"],
            &["--client-cert", &cert, "--client-key", &key],
        )
        .await
        .unwrap();
    assert!(out.starts_with("cluster/prod-eu-1 created\n"), "{out}");
    let out = hub
        .cli(
            &["cluster", "list"],
            &["--client-cert", &cert, "--client-key", &key],
        )
        .await
        .unwrap();
    assert!(out.contains("prod-eu-1"), "{out}");

    // The token still works on the same listener, alone.
    let token_file = hub.dir.path().join("admin-token");
    std::fs::write(&token_file, format!("ops:{ADMIN_TOKEN}\n")).unwrap();
    hub.cli(
        &["cluster", "label", "prod-eu-1", "ring=canary"],
        &["--admin-token-file", token_file.to_str().unwrap()],
    )
    .await
    .unwrap();

    // The audit log names who did what: the certificate's subject CN, or the token.
    let audit: Vec<(String, String)> = hub
        .store
        .audit(10)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|event| (event.actor, event.action))
        .collect();
    assert_eq!(
        audit,
        [
            ("cert:alice@platform".to_owned(), "cluster.create".to_owned()),
            ("token:ops".to_owned(), "cluster.label".to_owned()),
        ]
    );

    // ApplySpecs records the certificate too (in its one transaction).
    let mut admin = AdminClient::new(hub.channel(Some(&alice)).await.unwrap());
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/regcred.yaml"),
    )
    .unwrap();
    admin
        .apply_specs(v1::ApplySpecsRequest {
            files: vec![v1::SpecFile {
                name: "regcred.yaml".to_owned(),
                content: spec,
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let newest = hub.store.audit(1).await.unwrap().remove(0);
    assert_eq!(
        (
            newest.actor.as_str(),
            newest.action.as_str(),
            newest.subject.as_str()
        ),
        ("cert:alice@platform", "spec.created", "fleetsecret/regcred")
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_clear_status() {
    let hub = Hub::start().await;
    let mallory = TestCa::generate("not the admins")
        .unwrap()
        .issue_client("mallory")
        .unwrap();

    // The handshake succeeds (the listener requires nothing of the chain); the Admin service
    // refuses the certificate and says why.
    let status = AdminClient::new(hub.channel(Some(&mallory)).await.unwrap())
        .list_clusters(v1::ListClustersRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "the client certificate is not accepted: it is not issued by the hub's admin client CA \
         (--admin-client-ca)"
    );

    // The CLI shows that message and exits 3 (authentication refused).
    let (cert, key) = hub.write_cert("mallory", &mallory);
    let error = hub
        .cli(
            &["cluster", "list"],
            &["--client-cert", &cert, "--client-key", &key],
        )
        .await
        .expect_err("refused");
    assert_eq!(
        error.to_string(),
        "list clusters: the client certificate is not accepted: it is not issued by the hub's \
         admin client CA (--admin-client-ca)"
    );
    assert_eq!(error.exit_code(), 3);

    // A wrong token with it: both refusals are named.
    let status = AdminClient::with_interceptor(
        hub.channel(Some(&mallory)).await.unwrap(),
        cli::BearerToken::new("kfa_wrong").unwrap(),
    )
    .list_clusters(v1::ListClustersRequest::default())
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with(
            "the admin token is not accepted, and neither is the client certificate: it is not issued"
        ),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("kfa_wrong"));

    // Token OR certificate: the admin token still authenticates a caller whose certificate is not
    // an admin's.
    let token_file = hub.dir.path().join("admin-token");
    std::fs::write(&token_file, format!("ops:{ADMIN_TOKEN}\n")).unwrap();
    let with_both = [
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ];
    hub.cli(&["cluster", "add", "dev-1"], &with_both).await.unwrap();

    // Without a certificate or a token the Admin service says what it wants.
    let status = AdminClient::new(hub.channel(None).await.unwrap())
        .list_clusters(v1::ListClustersRequest::default())
        .await
        .expect_err("no credentials");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing admin credentials: send authorization: Bearer <admin token>, or a client \
         certificate issued by the hub's admin client CA"
    );
    let audit: Vec<String> = hub
        .store
        .audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| format!("{} {} {}", event.actor, event.action, event.subject))
        .collect();
    assert_eq!(audit, ["token:ops cluster.create cluster/dev-1"]);
}

#[tokio::test]
async fn agent_streams_ignore_client_certificates() {
    let hub = Hub::start().await;
    let alice = hub.admins.issue_client("alice@platform").unwrap();
    let cluster = keyfleet_hub::domain::ClusterId(uuid::Uuid::from_u128(7));
    let credential = credentials::new_credential();
    hub.credentials.insert(Sha256::of(credential.as_bytes()), cluster);
    let item = revision("regcred", 3, b"docker config");
    hub.fleet
        .set_desired(cluster, desired(std::slice::from_ref(&item)));

    // An agent without a certificate: the listener asks for one but does not require it.
    let mut agent = TestAgent::connect_on(
        hub.channel(None).await.unwrap(),
        Some(&credential),
        Applied::new(),
        HelloOptions::default(),
    )
    .await
    .unwrap();
    let welcome = agent.handshake().await.unwrap();
    assert!(!welcome.in_sync);
    let update = agent.update().await.unwrap();
    assert_eq!(update.upserts[0].revision, 3);
    drop(agent);

    // An admin certificate does not make an agent: no credential, no stream.
    let refused = TestAgent::connect_on(
        hub.channel(Some(&alice)).await.unwrap(),
        None,
        Applied::new(),
        HelloOptions::default(),
    )
    .await
    .err()
    .expect("a certificate is not a cluster credential");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Nor an enrollment token.
    let enroll = keyfleet_proto::v1::enrollment_client::EnrollmentClient::new(
        hub.channel(Some(&alice)).await.unwrap(),
    )
    .enroll(v1::EnrollRequest {
        token: keyfleet_hub::sync::admin::new_enrollment_token(),
        agent_version: "0.1.0-test".to_owned(),
    })
    .await
    .expect_err("no token, no enrollment");
    assert_eq!(enroll.code(), Code::Unauthenticated);

    // With its credential, an agent that happens to present a certificate, an admin's or anybody
    // else's, syncs as usual: the Sync service never looks at it.
    let stranger = TestCa::generate("unrelated")
        .unwrap()
        .issue_client("some-agent")
        .unwrap();
    for certificate in [&alice, &stranger] {
        let mut agent = TestAgent::connect_on(
            hub.channel(Some(certificate)).await.unwrap(),
            Some(&credential),
            Applied::new(),
            HelloOptions::default(),
        )
        .await
        .unwrap();
        agent.handshake().await.unwrap();
        let update = agent.update().await.unwrap();
        assert_eq!(update.upserts[0].revision, 3);
        agent.apply_and_ack(&update).await.unwrap();
    }
}

#[tokio::test]
async fn a_certificate_listed_in_the_crl_is_refused_from_the_next_call() {
    let hub = Hub::start_with_crl(true).await;
    let alice = hub.admins.issue_client("alice@platform").unwrap();
    let bob = hub.admins.issue_client("bob@platform").unwrap();
    let (alice_cert, alice_key) = hub.write_cert("alice", &alice);
    let (bob_cert, bob_key) = hub.write_cert("bob", &bob);
    let as_alice = [
        "--client-cert",
        alice_cert.as_str(),
        "--client-key",
        alice_key.as_str(),
    ];
    let as_bob = [
        "--client-cert",
        bob_cert.as_str(),
        "--client-key",
        bob_key.as_str(),
    ];
    hub.cli(&["cluster", "add", "dev-1"], &as_bob).await.unwrap();

    // Revoke bob's certificate: the file changes, the running hub reads it at the next call.
    std::fs::write(
        hub.dir.path().join("admins.crl"),
        hub.admins.revocation_list(&[&bob]).unwrap(),
    )
    .unwrap();
    let error = hub
        .cli(&["cluster", "list"], &as_bob)
        .await
        .expect_err("bob is revoked");
    assert_eq!(error.exit_code(), 3, "{error}");
    let status = AdminClient::new(hub.channel(Some(&bob)).await.unwrap())
        .list_clusters(v1::ListClustersRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "the client certificate is not accepted: it is revoked (listed in --admin-client-crl)"
    );

    // Alice, of the same CA, is not listed: accepted, and audited by name.
    let out = hub.cli(&["cluster", "list"], &as_alice).await.unwrap();
    assert!(out.contains("dev-1"), "{out}");
    hub.cli(&["cluster", "label", "dev-1", "ring=canary"], &as_alice)
        .await
        .unwrap();
    let actors: Vec<String> = hub
        .store
        .audit(10)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|event| event.actor)
        .collect();
    assert_eq!(actors, ["cert:bob@platform", "cert:alice@platform"]);
}
