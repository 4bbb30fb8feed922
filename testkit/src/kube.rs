//! A fake Kubernetes API server, faithful enough for kubectl, the official Python client and
//! kube-rs, serving many clusters from one process.
//!
//! It serves discovery and OpenAPI v3, Namespaces and Secrets (get, list with selectors and
//! paging, create, update with optimistic concurrency, delete, merge/strategic/JSON patch,
//! server-side apply with managedFields and conflicts), watch (bookmarks, resume, 410,
//! `sendInitialEvents`), `Status` bodies for every error, per-token permissions, and injected
//! faults.
//!
//! One server serves many independent clusters: `https://HOST:PORT/clusters/<name>/…`, plus the
//! unprefixed root as cluster `default`. Each has its own objects, tokens, resourceVersion counter
//! and write counters. An empty cluster costs a few KiB. A client in the same process can also
//! reach a cluster without a socket: [`ClusterHandle::in_memory_api`] is a tower `Service` over the
//! same router (prefix, authentication, authorization, faults, watches), minus TLS and TCP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyfleet_testkit::kube::Error> {
//! use keyfleet_testkit::kube::{Config, FakeKube};
//! let kube = FakeKube::start(Config::default()).await?;
//! let cluster = kube.add_cluster("c1")?;
//! std::fs::write("kubeconfig", cluster.kubeconfig_yaml()).ok();
//! # Ok(()) }
//! ```
//!
//! Protobuf request bodies (kubectl's typed `create secret`/`create namespace`) are decoded for
//! create and update; responses are always JSON: objects, or the `meta.k8s.io/v1` `Table`
//! kubectl asks for (get, list, watch), with the apiserver's columns. Not supported: kinds other
//! than Secret, Namespace and Event (`events.k8s.io/v1` and core `v1`, one store: `kube/events.rs`).

mod api;
mod cluster;
mod discovery;
mod error;
mod events;
mod memory;
mod model;
mod patch;
mod protobuf;
mod query;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::broadcast;

pub use cluster::{Config, WriteEvent};
pub use error::Error;
pub use memory::InMemoryApi;
pub use model::{Field, Kind, ManagedFields, Object, Operation, SecretBytes};
pub use status::ApiError;
pub use store::{EventType, Permissions, RequestRecord, Rule, Verb, WriteCounts};

use crate::tls::TestCa;
use cluster::{Cluster, Inner};
use store::{Preconditions, WriteOptions};

/// The running server. Dropping it stops the server.
pub struct FakeKube {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKube {
    /// Generates a CA, binds `config.addr` and serves HTTPS (h2 and http/1.1). The root cluster
    /// `default` exists from the start.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let ca = TestCa::generate("keyfleet fake kube ca").map_err(Error::Tls)?;
        let cert = ca.issue(&["localhost", "127.0.0.1"]).map_err(Error::Tls)?;
        let tls = cert.server_config(&[b"h2", b"http/1.1"]).map_err(Error::Tls)?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let inner = Inner::new(
            config,
            ca.cert_pem().to_owned(),
            format!("https://127.0.0.1:{}", addr.port()),
        );
        inner.add_cluster("default")?;
        let task = tokio::spawn(server::serve(listener, tls, inner.clone()));
        tracing::info!(%addr, "fake kubernetes api listening");
        Ok(Self { inner, addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (the root cluster `default`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// Adds a cluster served under `/clusters/<name>` (or returns it if it exists). `default`
    /// is the unprefixed root.
    pub fn add_cluster(&self, name: &str) -> Result<ClusterHandle, Error> {
        let cluster = self.inner.add_cluster(name)?;
        Ok(ClusterHandle {
            inner: self.inner.clone(),
            cluster,
        })
    }

    /// An existing cluster.
    pub fn cluster(&self, name: &str) -> Option<ClusterHandle> {
        self.inner.cluster(name).map(|cluster| ClusterHandle {
            inner: self.inner.clone(),
            cluster,
        })
    }

    /// Number of clusters served.
    pub fn cluster_count(&self) -> usize {
        self.inner.cluster_count()
    }

    /// Every stored change in every cluster from now on (API and handle writes), with its commit
    /// time. Slow receivers lag (see `broadcast`).
    pub fn subscribe(&self) -> broadcast::Receiver<WriteEvent> {
        self.inner.subscribe()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One simulated cluster: its URL and credentials, direct object access that bypasses auth
/// (for tests that simulate drift), write counters and fault injection.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("name", &self.cluster.name)
            .finish_non_exhaustive()
    }
}

impl ClusterHandle {
    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.cluster.name
    }

    /// The API server URL for this cluster (`https://127.0.0.1:PORT/clusters/<name>`, or the
    /// root for `default`).
    pub fn server_url(&self) -> String {
        if &*self.cluster.name == "default" {
            self.inner.base_url.clone()
        } else {
            format!("{}/clusters/{}", self.inner.base_url, self.cluster.name)
        }
    }

    /// A bearer token with full permissions on this cluster.
    pub fn token(&self) -> &str {
        &self.cluster.token
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// A kubeconfig for this cluster (CA inline, the full-permission token, namespace default).
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_with_token(&self.cluster.token)
    }

    /// A kubeconfig using `token`.
    pub fn kubeconfig_yaml_with_token(&self, token: &str) -> String {
        let name = &self.cluster.name;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.inner.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\n\
             current-context: {name}\n",
            server = self.server_url(),
        )
    }

    /// This cluster's API in process, authenticated with the full-permission token: a tower
    /// `Service` for `kube::Client::new(service, "default")`. Requests take the same route as
    /// over HTTPS ([`Self::server_url`]) minus TLS and TCP, so the client holds no socket.
    pub fn in_memory_api(&self) -> InMemoryApi {
        self.in_memory_api_with_token(&self.cluster.token)
            .expect("generated tokens are hex, a valid header value")
    }

    /// [`Self::in_memory_api`] authenticated with `token`.
    pub fn in_memory_api_with_token(&self, token: &str) -> Result<InMemoryApi, Error> {
        let mut authorization =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::InvalidToken {
                cluster: self.cluster.name.to_string(),
            })?;
        authorization.set_sensitive(true);
        let prefix = if &*self.cluster.name == "default" {
            String::new()
        } else {
            format!("/clusters/{}", self.cluster.name)
        };
        Ok(InMemoryApi::new(
            api::router(self.inner.clone()),
            prefix,
            authorization,
        ))
    }

    /// Registers another bearer token with `permissions`.
    pub fn add_token(&self, token: &str, permissions: Permissions) {
        self.cluster.lock().add_token(token.to_owned(), permissions);
    }

    /// The Secret `namespace/name`, if it exists.
    pub fn get_secret(&self, namespace: &str, name: &str) -> Option<Arc<Object>> {
        self.cluster.lock().get(Kind::Secret, Some(namespace), name)
    }

    /// Every Secret in `namespace` (all namespaces when None).
    pub fn list_secrets(&self, namespace: Option<&str>) -> Vec<Arc<Object>> {
        self.cluster
            .lock()
            .list(Kind::Secret, namespace, None)
            .cloned()
            .collect()
    }

    /// Creates or replaces a Secret as an Update by `manager`, bypassing auth and faults
    /// (someone editing the Secret by hand). Labels, annotations, data, type and immutable are
    /// taken from `secret`; its managedFields and resourceVersion are ignored.
    pub fn put_secret(&self, secret: Object, manager: &str) -> Result<Arc<Object>, Error> {
        let namespace = secret
            .meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = secret.meta.name.clone();
        let api_error = |source| Error::Api {
            kind: "Secret",
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        };
        let options = WriteOptions {
            manager: manager.to_owned(),
            dry_run: false,
            force: false,
        };
        let mut state = self.cluster.lock();
        let mut secret = secret;
        secret.meta.resource_version = 0;
        secret.meta.managed_fields.clear();
        let written = if state.get(Kind::Secret, Some(&namespace), &name).is_some() {
            state.update(Some(&namespace), &name, secret, &options)
        } else {
            state.create(Some(&namespace), secret, &options)
        }
        .map_err(api_error)?;
        drop(state);
        self.inner
            .publish(&self.cluster, written.committed.into_iter().collect(), None);
        Ok(written.object)
    }

    /// Deletes a Secret, bypassing auth. False when it did not exist.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> bool {
        self.delete(Kind::Secret, Some(namespace), name)
    }

    /// Creates a Namespace (no-op if it exists).
    pub fn create_namespace(&self, name: &str) -> Result<(), Error> {
        let mut state = self.cluster.lock();
        if state.get(Kind::Namespace, None, name).is_some() {
            return Ok(());
        }
        let options = WriteOptions {
            manager: "keyfleet-testkit".to_owned(),
            dry_run: false,
            force: false,
        };
        let written = state
            .create(None, Object::new_namespace(name), &options)
            .map_err(|source| Error::Api {
                kind: "Namespace",
                namespace: String::new(),
                name: name.to_owned(),
                source: Box::new(source),
            })?;
        drop(state);
        self.inner
            .publish(&self.cluster, written.committed.into_iter().collect(), None);
        Ok(())
    }

    /// Deletes a Namespace and its Secrets. False when it did not exist.
    pub fn delete_namespace(&self, name: &str) -> bool {
        self.delete(Kind::Namespace, None, name)
    }

    fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let result = self
            .cluster
            .lock()
            .delete(kind, namespace, name, &Preconditions::default(), false);
        match result {
            Ok((_, committed)) => {
                self.inner.publish(&self.cluster, committed, None);
                true
            }
            Err(_) => false,
        }
    }

    /// Every Event of the cluster, `events.k8s.io/v1` shaped.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.cluster.lock().events.all()
    }

    /// Waits until the cluster's Events (`events.k8s.io/v1` shaped) satisfy `done`, and returns
    /// them: `done` is checked now and after every Event create, patch or delete, so a test waits
    /// on the condition instead of polling. Unbounded: wrap it in `tokio::time::timeout`.
    pub async fn until_events(
        &self,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut writes = self.cluster.event_writes.subscribe();
        loop {
            // Marked seen before reading: a write after this read wakes the wait below.
            writes.borrow_and_update();
            let events = self.events();
            if done(&events) {
                return events;
            }
            // The sender lives in the cluster this handle holds: `changed` cannot fail.
            let _ = writes.changed().await;
        }
    }

    /// Starts recording every authorized request (once per user, verb, object), e.g. to check
    /// that a set of RBAC rules grants no more than a client uses.
    pub fn record_requests(&self) {
        self.cluster.lock().recorded.get_or_insert_default();
    }

    /// The requests recorded since [`Self::record_requests`].
    pub fn recorded_requests(&self) -> Vec<RequestRecord> {
        self.cluster
            .lock()
            .recorded
            .as_ref()
            .map(|recorded| recorded.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Write requests received through the API so far.
    pub fn writes(&self) -> WriteCounts {
        self.cluster.lock().writes
    }

    /// The cluster's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.cluster.lock().resource_version()
    }

    /// Adds `latency` before every API call (zero to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.cluster.lock().faults.latency = latency;
    }

    /// The next `count` API calls fail with `code` (500 InternalError or 503 ServiceUnavailable).
    pub fn fail_next(&self, count: usize, code: u16) {
        let mut state = self.cluster.lock();
        for _ in 0..count {
            state.faults.queued.push_back(ApiError::injected(code));
        }
    }

    /// The next write request (update, patch or delete) to Secret `namespace`/`name` fails with
    /// `code` and changes nothing; other requests are not affected.
    pub fn fail_next_write(&self, namespace: &str, name: &str, code: u16) {
        self.push_write_fault(namespace, name, 1, code, false);
    }

    /// Like [`Self::fail_next_write`] for the `nth` next write to that Secret (1 is the next):
    /// the ones before succeed.
    pub fn fail_nth_write(&self, namespace: &str, name: &str, nth: usize, code: u16) {
        self.push_write_fault(namespace, name, nth, code, false);
    }

    /// The next write request to Secret `namespace`/`name` is committed, then answered with
    /// `code`: the client cannot tell that it happened (a timeout or a lost response).
    pub fn fail_next_write_after_commit(&self, namespace: &str, name: &str, code: u16) {
        self.push_write_fault(namespace, name, 1, code, true);
    }

    /// The next write request to Secret `namespace`/`name` fails with `code` and `message` (the
    /// `Status` body's text, as an admission webhook or the apiserver would word it) and changes
    /// nothing.
    pub fn fail_next_write_with_message(&self, namespace: &str, name: &str, code: u16, message: &str) {
        self.push_write_error(
            namespace,
            name,
            1,
            ApiError::injected_with_message(code, message),
            false,
        );
    }

    fn push_write_fault(&self, namespace: &str, name: &str, nth: usize, code: u16, after_commit: bool) {
        self.push_write_error(namespace, name, nth, ApiError::injected(code), after_commit);
    }

    fn push_write_error(&self, namespace: &str, name: &str, nth: usize, error: ApiError, after_commit: bool) {
        self.cluster.lock().faults.writes.push(store::WriteFault {
            kind: Kind::Secret,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            error,
            after_commit,
            pass: nth.saturating_sub(1),
        });
    }

    /// Holds every write request (create, update, patch, delete) to a Secret in `namespace`
    /// from now on, until the returned [`WriteHold`] releases or fails them: a write as slow as
    /// the test wants, e.g. to kill the client between two writes. Reads are not held.
    pub fn hold_writes(&self, namespace: &str) -> WriteHold {
        let hold = Arc::new(store::WriteHold::new());
        self.cluster
            .lock()
            .faults
            .write_holds
            .insert(namespace.to_owned(), Arc::clone(&hold));
        WriteHold {
            namespace: namespace.to_owned(),
            hold,
            cluster: Arc::clone(&self.cluster),
        }
    }

    /// The next `count` API calls get 429 with `Retry-After: retry_after_seconds`.
    pub fn throttle_next(&self, count: usize, retry_after_seconds: u64) {
        let mut state = self.cluster.lock();
        for _ in 0..count {
            state
                .faults
                .queued
                .push_back(ApiError::too_many_requests(retry_after_seconds));
        }
    }

    /// Ends every open watch on this cluster (clients see the stream close).
    pub fn drop_watches(&self) {
        self.cluster.lock().watch_epoch += 1;
        self.cluster.changed.notify_waiters();
    }

    /// Holds back every open watch's events from now on until [`Self::release_watches`]:
    /// writes still succeed (and their responses arrive) while the watchers lag behind, as under
    /// load.
    pub fn hold_watches(&self) {
        let mut state = self.cluster.lock();
        state.faults.watches_held_after = Some(state.resource_version());
    }

    /// Lets held watches deliver the events up to `resource_version`, in order, and keeps
    /// holding the later ones.
    pub fn hold_watches_after(&self, resource_version: u64) {
        self.cluster.lock().faults.watches_held_after = Some(resource_version);
        self.cluster.changed.notify_waiters();
    }

    /// Lets held watches deliver every pending event, in order.
    pub fn release_watches(&self) {
        self.cluster.lock().faults.watches_held_after = None;
        self.cluster.changed.notify_waiters();
    }

    /// Forgets the event history: resuming a watch from any earlier resourceVersion gets 410.
    /// Combine with [`Self::drop_watches`] to force clients to relist.
    pub fn expire_history(&self) {
        self.cluster.lock().compact();
    }
}

/// Write requests to Secrets in one namespace, held by [`ClusterHandle::hold_writes`] until
/// [`WriteHold::release`] or [`WriteHold::fail`]; dropping it releases them.
pub struct WriteHold {
    namespace: String,
    hold: Arc<store::WriteHold>,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for WriteHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHold")
            .field("cluster", &self.cluster.name)
            .field("namespace", &self.namespace)
            .field("arrived", &self.arrived())
            .finish()
    }
}

impl WriteHold {
    /// Write requests that reached the hold so far.
    pub fn arrived(&self) -> usize {
        *self.hold.arrived.borrow()
    }

    /// Waits until at least `count` write requests reached the hold.
    pub async fn until_arrived(&self, count: usize) {
        let mut arrived = self.hold.arrived.subscribe();
        // The sender lives in `self.hold`: the wait ends only when the count is reached.
        let _ = arrived.wait_for(|arrived| *arrived >= count).await;
    }

    /// Lets the held writes proceed and stops holding.
    pub fn release(self) {
        self.end(store::HoldEnd::Release);
    }

    /// Answers the held writes `code` (500 or 503) without changing anything, and stops holding:
    /// a client killed while its write was held leaves no trace of it.
    pub fn fail(self, code: u16) {
        self.end(store::HoldEnd::Fail(code));
    }

    /// Stops holding (later writes pass) and ends the held ones as `end` says, once.
    fn end(&self, end: store::HoldEnd) {
        {
            let mut state = self.cluster.lock();
            if state
                .faults
                .write_holds
                .get(&self.namespace)
                .is_some_and(|hold| Arc::ptr_eq(hold, &self.hold))
            {
                state.faults.write_holds.remove(&self.namespace);
            }
        }
        self.hold.end.send_if_modified(|current| {
            let holding = *current == store::HoldEnd::Holding;
            if holding {
                *current = end;
            }
            holding
        });
    }
}

impl Drop for WriteHold {
    fn drop(&mut self) {
        self.end(store::HoldEnd::Release);
    }
}
