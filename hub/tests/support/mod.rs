//! Test harness for the gRPC surface: a real hub (tonic over TLS on 127.0.0.1:0) and a
//! protocol-level test agent speaking `keyfleet.v1` with the generated client. The agent applies
//! nothing; it keeps (key → revision, sha256) like a real agent rebuilt from annotations.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyfleet_hub::domain::{ClusterId, SecretValue};
use keyfleet_hub::fleet::credentials::{self, Credentials};
use keyfleet_hub::fleet::{ClusterDesired, Fleet, FleetConfig, FleetEvent, RemovalPolicy};
use keyfleet_hub::grpc::convert::{self, EncodedRevision};
use keyfleet_hub::grpc::server::{self, TlsMaterial, TlsSource};
use keyfleet_hub::grpc::sync::{SyncConfig, SyncService};
use keyfleet_hub::render::RenderedSecret;
use keyfleet_hub::spec::{CreationPolicy, DeletionPolicy, TargetNamespaces};
use keyfleet_proto::v1::secret_sync_client::SecretSyncClient;
use keyfleet_proto::v1::{self, agent_message, hub_message};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Status, Streaming};

/// Upper bound for anything that should happen promptly (a bound, never a sleep).
pub const PROMPT: Duration = Duration::from_secs(10);

/// Awaits `future` or panics after `bound`.
pub async fn within<T>(bound: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not within {bound:?}"),
    }
}

/// A running hub with its registry and events.
pub struct Hub {
    pub addr: std::net::SocketAddr,
    pub ca_pem: String,
    pub fleet: Fleet,
    pub credentials: Credentials,
    pub sync: SyncService,
    pub events: mpsc::Receiver<FleetEvent>,
    shutdown: Option<oneshot::Sender<()>>,
    view: Option<keyfleet_hub::status::StatusView>,
    _dir: tempfile::TempDir,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub fn default_fleet_config() -> FleetConfig {
    FleetConfig {
        max_inflight: 4,
        stall_timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        heartbeat_interval: Duration::from_secs(30),
        drain_window: Duration::from_secs(2),
        event_capacity: 100_000,
    }
}

impl Hub {
    pub async fn start() -> Self {
        Self::start_with(
            default_fleet_config(),
            SyncConfig {
                hub_instance: "test-hub".to_owned(),
                ..SyncConfig::default()
            },
        )
        .await
    }

    pub async fn start_with(fleet_config: FleetConfig, sync_config: SyncConfig) -> Self {
        Self::start_inner(fleet_config, sync_config, None).await
    }

    /// A hub with the Enrollment service and a status writer over `store` (the writer consumes
    /// the fleet events; `events` stays empty).
    pub async fn start_with_store(
        store: keyfleet_hub::store::Store,
        status: keyfleet_hub::status::StatusConfig,
    ) -> (Self, keyfleet_hub::status::StatusView) {
        let hub = Self::start_inner(
            default_fleet_config(),
            SyncConfig::default(),
            Some((store, status)),
        )
        .await;
        let view = hub.view.clone().unwrap();
        (hub, view)
    }

    async fn start_inner(
        fleet_config: FleetConfig,
        sync_config: SyncConfig,
        store: Option<(keyfleet_hub::store::Store, keyfleet_hub::status::StatusConfig)>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let material = TlsMaterial::load(&TlsSource::SelfSigned {
            dir: dir.path().to_owned(),
            sans: vec![],
        })
        .unwrap();
        let (fleet, mut events) = Fleet::new(fleet_config);
        let credentials = Credentials::default();
        let sync = SyncService::new(fleet.clone(), credentials.clone(), sync_config);
        sync.set_ready(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut routes = tonic::service::Routes::new(sync.clone().into_server());
        let mut view = None;
        if let Some((store, status)) = store {
            let enroll =
                keyfleet_hub::grpc::enroll::EnrollService::new(store.clone(), credentials.clone(), 100, 100);
            routes = routes.add_service(enroll.into_server());
            let writer = keyfleet_hub::status::StatusWriter::new(store, fleet.clone(), status);
            view = Some(writer.view());
            let (_unused, empty) = mpsc::channel(1);
            let fleet_events = std::mem::replace(&mut events, empty);
            tokio::spawn(writer.run(fleet_events));
        }
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let tls = material.server_config();
        tokio::spawn(async move {
            server::serve(listener, tls, routes, async {
                let _ = shutdown_rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            ca_pem: material.ca_pem.unwrap(),
            fleet,
            credentials,
            sync,
            events,
            shutdown: Some(shutdown),
            view,
            _dir: dir,
        }
    }

    /// A new cluster with a credential registered in the index.
    pub fn enroll(&self, n: u128) -> (ClusterId, String) {
        let cluster = ClusterId(uuid::Uuid::from_u128(n));
        let credential = credentials::new_credential();
        self.credentials
            .insert(keyfleet_hub::domain::Sha256::of(credential.as_bytes()), cluster);
        (cluster, credential)
    }

    /// One TLS connection that pins the hub's CA.
    pub async fn channel(&self) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Next event matching `pick`, skipping others.
    pub async fn event<T>(&mut self, mut pick: impl FnMut(&FleetEvent) -> Option<T>) -> T {
        within(PROMPT, "fleet event", async {
            loop {
                let event = self.events.recv().await.expect("event channel open");
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
        })
        .await
    }
}

/// A rendered revision encoded once.
pub fn revision(key: &str, revision: u64, value: &[u8]) -> Arc<EncodedRevision> {
    revision_with_policy(key, revision, value, DeletionPolicy::Retain)
}

pub fn revision_with_policy(
    key: &str,
    revision: u64,
    value: &[u8],
    deletion_policy: DeletionPolicy,
) -> Arc<EncodedRevision> {
    let rendered = RenderedSecret {
        key: key.to_owned(),
        secret_name: key.to_owned(),
        secret_type: "Opaque".to_owned(),
        namespaces: TargetNamespaces::List(vec!["default".to_owned()]),
        data: [("value".to_owned(), SecretValue::new(value.to_vec()))].into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        creation_policy: CreationPolicy::Owner,
        deletion_policy,
        immutable: false,
    };
    Arc::new(convert::encode_revision(&rendered, revision))
}

pub fn desired(items: &[Arc<EncodedRevision>]) -> Arc<ClusterDesired> {
    Arc::new(ClusterDesired {
        items: items
            .iter()
            .map(|item| (item.key.clone(), Arc::clone(item)))
            .collect(),
        removals: BTreeMap::<String, RemovalPolicy>::new(),
    })
}

/// What a test agent holds: key → (revision, sha256).
pub type Applied = BTreeMap<String, (u64, Vec<u8>)>;

pub fn applied_of(items: &[Arc<EncodedRevision>]) -> Applied {
    items
        .iter()
        .map(|item| (item.key.clone(), (item.revision, item.sha256.0.to_vec())))
        .collect()
}

/// Options of a test agent's Hello.
#[derive(Clone)]
pub struct HelloOptions {
    pub protocol: u32,
    pub agent_version: String,
}

impl Default for HelloOptions {
    fn default() -> Self {
        Self {
            protocol: keyfleet_proto::PROTOCOL_VERSION,
            agent_version: "0.1.0-test".to_owned(),
        }
    }
}

/// A protocol-level agent.
pub struct TestAgent {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub rx: Streaming<v1::HubMessage>,
    pub applied: Applied,
    /// Encoded bytes received (messages + 5-byte frame headers).
    pub received_bytes: usize,
}

impl TestAgent {
    pub async fn connect(hub: &Hub, credential: &str, applied: Applied) -> Result<Self, Status> {
        Self::connect_with(hub, Some(credential), applied, HelloOptions::default()).await
    }

    pub async fn connect_with(
        hub: &Hub,
        credential: Option<&str>,
        applied: Applied,
        options: HelloOptions,
    ) -> Result<Self, Status> {
        let channel = hub.channel().await;
        Self::connect_on(channel, credential, applied, options).await
    }

    pub async fn connect_on(
        channel: Channel,
        credential: Option<&str>,
        applied: Applied,
        options: HelloOptions,
    ) -> Result<Self, Status> {
        let mut client = SecretSyncClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let digest = keyfleet_proto::digest::set_digest(
            applied
                .iter()
                .map(|(key, (revision, sha))| (key.as_str(), *revision, sha.as_slice())),
        );
        tx.send(v1::AgentMessage {
            body: Some(agent_message::Body::Hello(v1::Hello {
                agent_version: options.agent_version,
                protocol: options.protocol,
                boot_id: rand::random::<[u8; 16]>().to_vec(),
                applied_digest: digest.to_vec(),
                applied_count: u32::try_from(applied.len()).unwrap(),
            })),
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(credential) = credential {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {credential}").parse().unwrap());
        }
        let response = client.sync(request).await?;
        Ok(Self {
            tx,
            rx: response.into_inner(),
            applied,
            received_bytes: 0,
        })
    }

    /// The next hub message (`Ok(None)` when the stream ended cleanly).
    pub async fn next(&mut self) -> Result<Option<v1::HubMessage>, Status> {
        let message = within(PROMPT, "hub message", self.rx.message()).await?;
        if let Some(message) = &message {
            self.received_bytes += message.encoded_len() + 5;
        }
        Ok(message)
    }

    /// The next non-heartbeat message body.
    pub async fn next_body(&mut self) -> Result<Option<hub_message::Body>, Status> {
        loop {
            match self.next().await? {
                None => return Ok(None),
                Some(v1::HubMessage {
                    body: Some(hub_message::Body::Heartbeat(_)),
                }) => {}
                Some(message) => return Ok(message.body),
            }
        }
    }

    pub async fn send(&self, body: agent_message::Body) {
        self.tx
            .send(v1::AgentMessage { body: Some(body) })
            .await
            .expect("stream open");
    }

    /// Runs the handshake: answers NeedVersions with pages of `page` items; returns Welcome.
    pub async fn handshake(&mut self) -> v1::Welcome {
        loop {
            match self.next_body().await.expect("handshake") {
                Some(hub_message::Body::Welcome(welcome)) => return welcome,
                Some(hub_message::Body::NeedVersions(need)) => self.send_pages(need.page_size).await,
                other => panic!("unexpected during handshake: {other:?}"),
            }
        }
    }

    pub async fn send_pages(&self, page_size: u32) {
        let items: Vec<v1::AppliedItem> = self
            .applied
            .iter()
            .map(|(key, (revision, sha))| v1::AppliedItem {
                key: key.clone(),
                revision: *revision,
                sha256: sha.clone(),
            })
            .collect();
        let chunks: Vec<&[v1::AppliedItem]> = if items.is_empty() {
            vec![&[]]
        } else {
            items.chunks(page_size as usize).collect()
        };
        let last = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            self.send(agent_message::Body::VersionPage(v1::VersionPage {
                items: chunk.to_vec(),
                last: index == last,
            }))
            .await;
        }
    }

    /// Waits for the next Update.
    pub async fn update(&mut self) -> v1::Update {
        match self.next_body().await.expect("update") {
            Some(hub_message::Body::Update(update)) => update,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    /// Applies an update (checking each payload's digest) and acks every item.
    pub async fn apply_and_ack(&mut self, update: &v1::Update) {
        let mut results = Vec::new();
        for payload in &update.upserts {
            assert_eq!(
                keyfleet_proto::digest::payload_sha256(payload).to_vec(),
                payload.sha256,
                "payload digest"
            );
            self.applied
                .insert(payload.key.clone(), (payload.revision, payload.sha256.clone()));
            results.push(v1::ItemResult {
                key: payload.key.clone(),
                revision: payload.revision,
                error: None,
            });
        }
        for removal in &update.removals {
            self.applied.remove(&removal.key);
            results.push(v1::ItemResult {
                key: removal.key.clone(),
                revision: 0,
                error: None,
            });
        }
        self.send(agent_message::Body::Ack(v1::Ack {
            nonce: update.nonce,
            results,
        }))
        .await;
    }

    /// Reads until the stream ends; returns the terminal status (Ok for a clean end).
    pub async fn end(&mut self) -> Result<(), Status> {
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }
}

/// A fresh, migrated Postgres database named after a random id (created from `DATABASE_URL`,
/// which scripts/test sets); dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub store: keyfleet_hub::store::Store,
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        use sqlx::{Connection as _, Executor as _};
        let base = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a Postgres server (scripts/test sets it)");
        let name = format!("keyfleet_fanout_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&name);
        let store = keyfleet_hub::store::Store::connect(url.as_str()).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            store,
            admin_url: base,
            name,
        }
    }

    pub async fn drop_db(self) {
        use sqlx::{Connection as _, Executor as _};
        self.store.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {} WITH (FORCE)",
                self.name
            )))
            .await
            .unwrap();
    }
}

/// Enrolls over gRPC.
pub async fn enroll_rpc(hub: &Hub, token: &str) -> Result<v1::EnrollResponse, Status> {
    let mut client = keyfleet_proto::v1::enrollment_client::EnrollmentClient::new(hub.channel().await);
    client
        .enroll(v1::EnrollRequest {
            token: token.to_owned(),
            agent_version: "0.1.0-test".to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}
