//! Idle and slow connections against the real `keyfleet serve` binary: a crowd of TCP connections
//! that never send a ClientHello neither keeps a real agent out nor holds the hub's descriptors
//! past the TLS handshake bound.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::serve::{ServeEnv, ServeProcess};
use support::{Applied, TestAgent, TestDb, within};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Idle connections opened against the hub.
const IDLE: usize = 1_500;
/// The hub's TLS handshake bound (10 s) plus slack for a loaded machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Resolves when the peer closed the connection (EOF or reset), with the time it took.
async fn closed(mut stream: TcpStream, since: Instant) -> Duration {
    let mut buf = [0_u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_keep_agents_out_nor_outlive_the_handshake_bound() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let hub = ServeProcess::start(&env, "hub-a", "127.0.0.1:0".parse().unwrap()).await;
    let mut admin = env.admin(&hub).await;
    let token = admin
        .create_cluster(v1::CreateClusterRequest {
            name: "eu-1".to_owned(),
            labels: Default::default(),
            token_ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .token;
    drop(admin);
    let address = env.hub_address(&hub);
    let credential = keyfleet_testkit::agent::enroll(&address, &token)
        .await
        .unwrap()
        .credential;
    let fds_before = open_files(hub.pid());

    // The crowd: TCP connections that never say a word.
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(hub.grpc_addr).await.unwrap());
    }
    let opened_in = opened.elapsed();

    // A real client with the cluster's credential still gets in, promptly.
    let connecting = Instant::now();
    let mut agent = within(Duration::from_secs(10), "the agent's stream", async {
        TestAgent::connect(&address, &credential, Applied::new())
            .await
            .unwrap()
    })
    .await;
    assert!(agent.handshake().await.unwrap().in_sync);
    let agent_in = connecting.elapsed();
    let fds_during = open_files(hub.pid());
    eprintln!(
        "{IDLE} idle connections opened in {opened_in:?}; agent admitted in {agent_in:?}; hub \
         open files {fds_before} before, {fds_during} with the crowd"
    );

    // Every idle connection is closed by the hub within the handshake bound.
    let waits = within(
        CLOSED_WITHIN,
        "the hub closes every idle connection",
        futures::future::join_all(idle.into_iter().map(|stream| closed(stream, opened))),
    )
    .await;
    let slowest = waits.iter().max().copied().unwrap_or_default();
    let fds_after = open_files(hub.pid());
    eprintln!(
        "all {} idle connections closed by the hub, the last {slowest:?} after they were opened; \
         hub open files {fds_after} after",
        waits.len()
    );
    assert_eq!(waits.len(), IDLE);
    assert!(
        fds_during >= fds_before + IDLE / 2,
        "the crowd reached the hub: {fds_during}"
    );
    assert!(
        fds_after <= fds_before + 16,
        "descriptors are released: {fds_before} before, {fds_after} after"
    );
    // The agent's stream survived the crowd and its eviction.
    assert!(
        TestAgent::connect(&address, &credential, Applied::new())
            .await
            .is_ok()
    );
}

/// Both listeners (tonic's TLS, and the one that handshakes itself to ask for admin client
/// certificates) hold at most `max_connections` connections: one beyond is closed at once, idle
/// ones are closed at the handshake bound, and a real client then gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_extra_connections_at_once_on_both_listeners() {
    use keyfleet_hub::grpc::client_ca::ClientCa;
    use keyfleet_hub::grpc::server::{self, ListenerLimits, TlsMaterial, TlsSource};

    let _ = rustls::crypto::ring::default_provider().install_default();
    const CAP: usize = 8;
    let limits = ListenerLimits {
        max_connections: CAP,
        handshake_timeout: Duration::from_secs(2),
    };
    for requesting_client_certs in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let material = TlsMaterial::load(&TlsSource::SelfSigned {
            dir: dir.path().to_owned(),
            sans: vec![],
        })
        .unwrap();
        let (fleet, _events) = keyfleet_hub::fleet::Fleet::new(support::default_fleet_config());
        let credentials = keyfleet_hub::fleet::credentials::Credentials::default();
        let sync = keyfleet_hub::grpc::sync::SyncService::new(fleet, credentials.clone(), Default::default());
        sync.set_ready(true);
        let cluster = keyfleet_hub::domain::ClusterId(uuid::Uuid::from_u128(1));
        let credential = keyfleet_hub::fleet::credentials::new_credential();
        credentials.insert(keyfleet_hub::domain::Sha256::of(credential.as_bytes()), cluster);
        let routes = tonic::service::Routes::new(sync.into_server());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        if requesting_client_certs {
            let admins = keyfleet_testkit::tls::TestCa::generate("admins").unwrap();
            let client_ca = ClientCa::from_pem(admins.cert_pem()).unwrap();
            let material = material.clone();
            tokio::spawn(async move {
                server::serve_requesting_client_certs_with_limits(
                    listener, &material, &client_ca, routes, limits, shutdown,
                )
                .await
                .unwrap();
            });
        } else {
            let tls = material.server_config();
            tokio::spawn(async move {
                server::serve_with_limits(listener, tls, routes, limits, shutdown)
                    .await
                    .unwrap();
            });
        }
        let address = keyfleet_testkit::agent::HubAddress::new(addr, material.ca_pem.clone().unwrap());

        let opened = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..CAP {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Beyond the cap: closed at once, long before the handshake bound.
        let extra = TcpStream::connect(addr).await.unwrap();
        let refused_after = within(
            Duration::from_secs(1),
            "the extra connection is closed",
            closed(extra, Instant::now()),
        )
        .await;
        // The idle ones go at the handshake bound, and then a real client gets in.
        let waits = within(
            Duration::from_secs(10),
            "idle connections closed",
            futures::future::join_all(idle.into_iter().map(|stream| closed(stream, opened))),
        )
        .await;
        assert!(
            waits.iter().all(|wait| *wait >= Duration::from_secs(1)),
            "{waits:?}"
        );
        let mut agent = within(Duration::from_secs(10), "a real client", async {
            TestAgent::connect(&address, &credential, Applied::new())
                .await
                .unwrap()
        })
        .await;
        assert!(agent.handshake().await.unwrap().in_sync);
        eprintln!(
            "client-cert listener: {requesting_client_certs}: connection {} closed after \
             {refused_after:?}; {CAP} idle closed after {:?}",
            CAP + 1,
            waits.iter().max()
        );
        let _ = stop.send(());
    }
}
