//! `keyfleet.v1.SecretSync/Sync`: one bidi stream per cluster over the [`Fleet`].
//!
//! 1. The cluster is the owner of the `authorization: Bearer kfc_…` credential (looked up by its
//!    sha256 in [`Credentials`]); nothing the agent says can change it. Then that cluster's own
//!    bucket ([`PerKeyAdmission`]: a few new streams at once, then one per
//!    `per_cluster_period`; its refusals never touch the shared queue, so one credential
//!    flooding Sync cannot push other clusters), then the shared admission bucket
//!    ([`Admission`]: a refusal says when to come back, spread at the admission rate, never
//!    beyond its horizon).
//! 2. Hello → `Welcome{in_sync: true}` when the applied digest equals the desired set's digest
//!    (nothing else is sent), else `NeedVersions` → `VersionPage`s → `Welcome{in_sync: false}` →
//!    `Update`s with only the difference. An agent holding nothing skips the paging.
//! 3. Updates are planned by the stream's `fleet::Session` (coalescing, ≤ k in flight); each
//!    `Ack` is checked as a whole before anything is recorded.
//!
//! Updates are written by a hand-rolled codec: the `SecretPayload` bytes encoded once per revision
//! ([`EncodedRevision`]) are copied into the frame as they are, never re-serialized per stream.
//! The wire is identical to the generated `HubMessage`, so agents use the generated client.

mod checks;
mod codec;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use keyfleet_proto::{limits, v1};
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataMap;
use tonic::server::{NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

pub use codec::{AgentMessageDecoder, Outbound, OutboundEncoder, OutboundStream, SyncCodec};
use stream::Stream;

use crate::fleet::Fleet;
use crate::fleet::credentials::Credentials;
pub use crate::grpc::admission::RETRY_AFTER_MS;
use crate::grpc::admission::{Admission, PerKeyAdmission};

/// Settings of the Sync service.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Short id of this replica, sent in Welcome (at most 32 bytes; longer is cut).
    pub hub_instance: String,
    /// Most items per VersionPage the hub asks for (1-1,000).
    pub page_size: u32,
    /// How long a new stream may take to send Hello, and each VersionPage.
    pub handshake_timeout: Duration,
    /// New streams admitted per second on average (token refill rate; fractions allowed). The
    /// default lets 10,000 agents back after a hub restart within the 30 s of ARCHITECTURE.md,
    /// Performance Targets ((10,000 − burst) / rate = 18 s): the loadtest measured a restart of 10,000 in-sync agents at 10.5
    /// hub CPU-seconds including TLS handshakes (about 1 ms each), so 500/s is half a core.
    pub admission_per_second: f64,
    /// Burst of new streams admitted at once.
    pub admission_burst: u32,
    /// One cluster opens at most `per_cluster_burst` new streams at once, then one per this
    /// period (fairness: a cluster credential flooding Sync only exhausts its own bucket).
    pub per_cluster_period: Duration,
    /// Burst of new streams per cluster. The default (10, then one per 2 s) never refuses an
    /// agent that follows its reconnect backoff; the loadtest's kill -9 and restart cost each
    /// cluster one or two.
    pub per_cluster_burst: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            hub_instance: "hub".to_owned(),
            page_size: 1_000,
            handshake_timeout: Duration::from_secs(10),
            admission_per_second: 500.0,
            admission_burst: 1_000,
            per_cluster_period: Duration::from_secs(2),
            per_cluster_burst: 10,
        }
    }
}

/// The Sync service. Not ready (streams get UNAVAILABLE) until [`SyncService::set_ready`].
#[derive(Clone)]
pub struct SyncService {
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    fleet: Fleet,
    credentials: Credentials,
    config: SyncConfig,
    admission: Admission,
    per_cluster: PerKeyAdmission<crate::domain::ClusterId>,
    ready: AtomicBool,
}

impl SyncService {
    /// A service over `fleet`, authenticating against `credentials`.
    pub fn new(fleet: Fleet, credentials: Credentials, config: SyncConfig) -> Self {
        let admission = Admission::new(config.admission_per_second, config.admission_burst);
        let per_cluster = PerKeyAdmission::new(config.per_cluster_period, config.per_cluster_burst);
        let mut config = config;
        config.page_size = config.page_size.clamp(1, limits::MAX_ITEMS as u32);
        config.hub_instance = crate::domain::truncate_utf8(&config.hub_instance, 32).to_owned();
        Self {
            inner: Arc::new(ServiceInner {
                fleet,
                credentials,
                config,
                admission,
                per_cluster,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// Opens (or closes) the service to agents: set it once the desired sets are computed, so a
    /// reconnecting agent is never told to remove what the hub simply has not loaded yet.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// The tonic service to add to the server's routes.
    pub fn into_server(self) -> SyncServer {
        SyncServer { service: self }
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<crate::domain::ClusterId, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))?;
        let credential = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be \"Bearer <credential>\"")
            })?;
        self.inner
            .credentials
            .lookup(credential.trim())
            .ok_or_else(|| Status::unauthenticated("unknown or revoked cluster credential"))
    }

    fn admit(&self, cluster: crate::domain::ClusterId) -> Result<(), Status> {
        self.inner.per_cluster.check(&cluster).map_err(|hint| {
            self.inner.fleet.metrics().admission_rejects.inc();
            Admission::refusal("new streams for this cluster", hint)
        })?;
        self.inner.admission.check().map_err(|hint| {
            self.inner.fleet.metrics().admission_rejects.inc();
            Admission::refusal("new streams", hint)
        })
    }

    async fn open(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<OutboundStream>, Status> {
        // Readiness first: until the runtime is ready the credential index may not be loaded yet
        // (a hub restarting under 10,000 reconnecting agents told dozens of them that their
        // valid credential was unknown).
        if self.inner.fleet.is_draining() {
            return Err(Status::unavailable("hub is draining"));
        }
        if !self.inner.ready.load(Ordering::Acquire) {
            return Err(Status::unavailable("hub is not ready"));
        }
        let cluster = self.authenticate(request.metadata())?;
        if self.inner.fleet.is_revoked(cluster) {
            return Err(Status::unauthenticated("unknown or revoked cluster credential"));
        }
        self.admit(cluster)?;
        let inbound = request.into_inner();
        let capacity = self.inner.fleet.config().max_inflight as usize + 4;
        let (out, rx) = mpsc::channel(capacity);
        let (end, end_rx) = oneshot::channel();
        let stream = Stream {
            service: self.clone(),
            cluster,
            out,
        };
        // A stream's life, as one span (a root: the open RPC ends at once, the stream lives on).
        let span = tracing::info_span!(parent: None, "sync.stream", cluster = %cluster);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = stream.run(inbound).await;
                if let Err(status) = result {
                    let _ = end.send(status);
                }
            },
            span,
        ));
        Ok(Response::new(OutboundStream::new(rx, end_rx)))
    }
}

/// The tower service carrying [`SyncService`] (the generated server with [`SyncCodec`]).
#[derive(Clone)]
pub struct SyncServer {
    service: SyncService,
}

impl NamedService for SyncServer {
    const NAME: &'static str = v1::secret_sync_server::SERVICE_NAME;
}

struct SyncMethod(SyncService);

impl StreamingService<v1::AgentMessage> for SyncMethod {
    type Response = Outbound;
    type ResponseStream = OutboundStream;
    type Future = futures::future::BoxFuture<'static, Result<Response<OutboundStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<v1::AgentMessage>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.open(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for SyncServer
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move {
            if request.uri().path() != "/keyfleet.v1.SecretSync/Sync" {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(SyncCodec).apply_max_message_size_config(
                Some(limits::MAX_MESSAGE_BYTES),
                Some(limits::MAX_MESSAGE_BYTES),
            );
            Ok(grpc.streaming(SyncMethod(service), request).await)
        })
    }
}
