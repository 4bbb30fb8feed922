//! Test harness for the gRPC surface: a real hub (tonic over TLS on 127.0.0.1:0) that the
//! protocol-level test agent of `keyfleet_testkit::agent` talks to, and scratch Postgres databases.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub mod serve;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyfleet_hub::domain::{ClusterId, SecretValue};
use keyfleet_hub::fleet::EncodedRevision;
use keyfleet_hub::fleet::credentials::{self, Credentials};
use keyfleet_hub::fleet::{ClusterDesired, Fleet, FleetConfig, FleetEvent, RemovalPolicy};
use keyfleet_hub::grpc::convert;
use keyfleet_hub::grpc::server::{self, TlsMaterial, TlsSource};
use keyfleet_hub::grpc::sync::{SyncConfig, SyncService};
use keyfleet_hub::render::RenderedSecret;
use keyfleet_hub::spec::{CreationPolicy, DeletionPolicy, TargetNamespaces};
pub use keyfleet_testkit::agent::{Applied, HelloOptions, HubAddress, TestAgent};
use tokio::sync::{mpsc, oneshot};

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
    /// Where test agents connect.
    pub endpoint: HubAddress,
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
            endpoint: HubAddress::new(addr, material.ca_pem.unwrap()),
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

pub fn applied_of(items: &[Arc<EncodedRevision>]) -> Applied {
    items
        .iter()
        .map(|item| (item.key.clone(), (item.revision, item.sha256.0.to_vec())))
        .collect()
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

    /// The database's URL.
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.admin_url).unwrap();
        url.set_path(&self.name);
        url.to_string()
    }

    /// Stages a store outage (`false`): no new connection to this database is accepted and every
    /// open one is terminated, as in a failover or a network blip; `true` ends it.
    pub async fn set_reachable(&self, reachable: bool) {
        use sqlx::{Connection as _, Executor as _};
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}",
                self.name
            )))
            .await
            .unwrap();
        if !reachable {
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{}' AND pid <> pg_backend_pid()",
                    self.name
                )))
                .await
                .unwrap();
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
