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

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut};
use keyfleet_proto::v1::{self, agent_message, hub_message};
use keyfleet_proto::{PROTOCOL_VERSION, limits};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::server::{NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use crate::domain::Sha256;
use crate::fleet::EncodedRevision;
use crate::fleet::credentials::Credentials;
use crate::fleet::{
    CloseReason, DriftKind, Fleet, ItemOutcome, ItemRefusal, NackCode, PlannedUpdate, Session,
};
pub use crate::grpc::admission::RETRY_AFTER_MS;
use crate::grpc::admission::{Admission, PerKeyAdmission};
use crate::grpc::convert;

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
        Ok(Response::new(OutboundStream {
            end: Some(end_rx),
            rx,
            done: false,
        }))
    }
}

/// One message to an agent: a generated message, or an update carrying pre-encoded payloads.
#[derive(Debug)]
pub enum Outbound {
    /// Any hub message but Update.
    Message(v1::HubMessage),
    /// An Update whose payloads are already encoded.
    Update(PlannedUpdate),
}

impl Outbound {
    /// Encoded length in bytes (without the 5-byte gRPC frame header).
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Message(message) => message.encoded_len(),
            Self::Update(update) => {
                let body = update_body_len(update);
                prost::encoding::key_len(3) + prost::encoding::encoded_len_varint(body as u64) + body
            }
        }
    }

    fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Self::Message(message) => {
                // The buffer grows as needed: encoding cannot fail.
                let _ = message.encode(buf);
            }
            Self::Update(update) => {
                use prost::encoding::{WireType, encode_key, encode_varint, message, uint64};
                encode_key(3, WireType::LengthDelimited, buf);
                encode_varint(update_body_len(update) as u64, buf);
                uint64::encode(1, &update.nonce, buf);
                for upsert in &update.upserts {
                    encode_key(2, WireType::LengthDelimited, buf);
                    encode_varint(upsert.payload.len() as u64, buf);
                    buf.put_slice(&upsert.payload);
                }
                for removal in removals(update) {
                    message::encode(3, &removal, buf);
                }
            }
        }
    }
}

fn removals(update: &PlannedUpdate) -> impl Iterator<Item = v1::Removal> + '_ {
    update.removals.iter().map(|(key, policy)| v1::Removal {
        key: key.clone(),
        deletion_policy: convert::deletion_policy(*policy) as i32,
    })
}

fn update_body_len(update: &PlannedUpdate) -> usize {
    use prost::encoding::{encoded_len_varint, key_len, message, uint64};
    let upserts: usize = update
        .upserts
        .iter()
        .map(|upsert: &Arc<EncodedRevision>| {
            key_len(2) + encoded_len_varint(upsert.payload.len() as u64) + upsert.payload.len()
        })
        .sum();
    let removals: usize = removals(update)
        .map(|removal| message::encoded_len(3, &removal))
        .sum();
    uint64::encoded_len(1, &update.nonce) + upserts + removals
}

/// The codec of the Sync stream: [`Outbound`] out, `AgentMessage` in.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

/// Encoder half of [`SyncCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboundEncoder;

/// Decoder half of [`SyncCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentMessageDecoder;

impl Codec for SyncCodec {
    type Encode = Outbound;
    type Decode = v1::AgentMessage;
    type Encoder = OutboundEncoder;
    type Decoder = AgentMessageDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        AgentMessageDecoder
    }
}

/// Initial size of each stream's encode and decode buffers. Most messages of a Sync stream are
/// a few hundred bytes (Hello, Ack, Heartbeat, an Update of one Secret); larger ones grow the
/// buffer as needed. tonic's default (8 KiB each way) was 16 KiB of the hub's ~66 KiB per
/// connected agent, mostly idle (heaptrack of the loadtest's hub).
const STREAM_BUFFER_BYTES: usize = 1024;
/// Encoded bytes after which a stream yields to others (tonic's default).
const STREAM_YIELD_BYTES: usize = 32 * 1024;

fn stream_buffer_settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, STREAM_YIELD_BYTES)
}

impl Encoder for OutboundEncoder {
    type Item = Outbound;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffer_settings()
    }

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for AgentMessageDecoder {
    type Item = v1::AgentMessage;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffer_settings()
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<v1::AgentMessage>, Status> {
        let message = v1::AgentMessage::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|error| Status::invalid_argument(format!("agent message: {error}")))?;
        Ok(Some(message))
    }
}

/// The hub → agent half of a stream: a terminal status (revocation, protocol error) overtakes
/// anything still queued.
pub struct OutboundStream {
    end: Option<oneshot::Receiver<Status>>,
    rx: mpsc::Receiver<Outbound>,
    done: bool,
}

impl futures::Stream for OutboundStream {
    type Item = Result<Outbound, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(end) = self.end.as_mut() {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    self.end = None;
                    self.rx.close();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.end = None,
                Poll::Pending => {}
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                // The stream task drops its sender before it hands over the final status: wait
                // for that status (or for the task to end without one) instead of ending with OK,
                // which would tell an agent that broke the protocol that all went well.
                let Some(end) = self.end.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(end).poll(cx) {
                    Poll::Ready(Ok(status)) => {
                        self.done = true;
                        self.end = None;
                        Poll::Ready(Some(Err(status)))
                    }
                    Poll::Ready(Err(_)) => {
                        self.end = None;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            next => next.map(|next| next.map(Ok)),
        }
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

/// How a stream ends, before it becomes a status.
enum End {
    Close(CloseReason),
    Stalled,
    AgentGone,
    Status(Status),
}

impl From<Status> for End {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

struct Stream {
    service: SyncService,
    cluster: crate::domain::ClusterId,
    out: mpsc::Sender<Outbound>,
}

fn invalid(message: String) -> End {
    End::Status(Status::invalid_argument(message))
}

impl Stream {
    async fn run(self, mut inbound: Streaming<v1::AgentMessage>) -> Result<(), Status> {
        let cluster = self.cluster;
        let mut session = None;
        let result = self.drive(&mut inbound, &mut session).await;
        let status = match result {
            Ok(()) | Err(End::AgentGone) => None,
            Err(End::Close(reason @ (CloseReason::Revoked | CloseReason::Replaced))) => {
                crate::grpc::status::close(reason)
            }
            Err(End::Close(CloseReason::Drain { reconnect_after })) => {
                let drain = v1::HubMessage {
                    body: Some(hub_message::Body::Drain(v1::Drain {
                        reconnect_after_ms: u32::try_from(reconnect_after.as_millis())
                            .unwrap_or(u32::MAX)
                            .min(600_000),
                        reason: "shutdown".to_owned(),
                    })),
                };
                // A stream too slow to take even this is closed without it.
                let drain = Outbound::Message(drain);
                let bytes = drain.encoded_len();
                if self.out.try_send(drain).is_ok() {
                    self.count_bytes(bytes);
                }
                None
            }
            Err(End::Stalled) => {
                if let Some(session) = &session {
                    session.record_stall();
                }
                Some(Status::unavailable(format!(
                    "stream stalled: no progress for {:?}; reconnect and resync",
                    self.service.inner.fleet.config().stall_timeout
                )))
            }
            Err(End::Status(status)) => Some(status),
        };
        match &status {
            Some(status) => {
                tracing::info!(%cluster, code = ?status.code(), message = status.message(), "sync stream closed")
            }
            None => tracing::debug!(%cluster, "sync stream ended"),
        }
        drop(session);
        status.map_or(Ok(()), Err)
    }

    /// Counts a message's bytes, with its 5-byte gRPC frame header.
    fn count_bytes(&self, bytes: usize) {
        self.service
            .inner
            .fleet
            .metrics()
            .bytes_sent
            .inc_by(bytes as u64 + 5);
    }

    /// Sends one message, unless the stream must close or the agent stops reading for the stall
    /// timeout.
    async fn send(&self, session: Option<&Session>, message: Outbound) -> Result<(), End> {
        let bytes = message.encoded_len();
        let stall = self.service.inner.fleet.config().stall_timeout;
        let deadline = sleep(stall);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                permit = self.out.reserve() => {
                    let permit = permit.map_err(|_| End::AgentGone)?;
                    permit.send(message);
                    self.count_bytes(bytes);
                    return Ok(());
                }
                () = woken(session) => {
                    if let Some(reason) = session.and_then(Session::close_reason) {
                        return Err(End::Close(reason));
                    }
                    // A desired-set change: the main loop replans after this send.
                    if let Some(session) = session {
                        session.rewake();
                    }
                }
                () = &mut deadline => return Err(End::Stalled),
            }
        }
    }

    /// Waits for the next agent message during the handshake, honouring closes and the timeout.
    async fn recv_handshake(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
        session: Option<&Session>,
        what: &str,
    ) -> Result<agent_message::Body, End> {
        let deadline = sleep(self.service.inner.config.handshake_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                message = inbound.message() => {
                    return match message {
                        Ok(Some(v1::AgentMessage { body: Some(body) })) => Ok(body),
                        Ok(Some(v1::AgentMessage { body: None })) => {
                            Err(invalid("agent message: empty body".to_owned()))
                        }
                        Ok(None) => Err(End::AgentGone),
                        Err(status) => Err(End::Status(status)),
                    };
                }
                () = woken(session) => {
                    if let Some(reason) = session.and_then(Session::close_reason) {
                        return Err(End::Close(reason));
                    }
                    if let Some(session) = session {
                        session.rewake();
                    }
                }
                () = &mut deadline => {
                    return Err(End::Status(Status::deadline_exceeded(format!(
                        "no {what} within {:?}",
                        self.service.inner.config.handshake_timeout
                    ))));
                }
            }
        }
    }

    async fn drive(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
        slot: &mut Option<Session>,
    ) -> Result<(), End> {
        let hello = match self.recv_handshake(inbound, None, "hello").await? {
            agent_message::Body::Hello(hello) => hello,
            _ => {
                return Err(invalid(
                    "agent message: the first message must be hello".to_owned(),
                ));
            }
        };
        check_hello(&hello)?;
        let session = slot.insert(
            self.service
                .inner
                .fleet
                .attach(self.cluster)
                .map_err(|error| End::Status(crate::grpc::status::attach(&error)))?,
        );
        let empty = keyfleet_proto::digest::set_digest([]);
        let in_sync = session.accept_if_in_sync(&hello.applied_digest);
        if !in_sync {
            if hello.applied_count == 0 && hello.applied_digest == empty {
                session.set_applied([]);
            } else {
                self.send(
                    Some(session),
                    Outbound::Message(v1::HubMessage {
                        body: Some(hub_message::Body::NeedVersions(v1::NeedVersions {
                            page_size: self.service.inner.config.page_size,
                        })),
                    }),
                )
                .await?;
                let items = self.read_pages(inbound, session, &hello).await?;
                session.set_applied(items);
            }
        }
        let config = self.service.inner.fleet.config();
        self.send(
            Some(session),
            Outbound::Message(v1::HubMessage {
                body: Some(hub_message::Body::Welcome(v1::Welcome {
                    in_sync,
                    hub_instance: self.service.inner.config.hub_instance.clone(),
                    heartbeat_interval_ms: u32::try_from(config.heartbeat_interval.as_millis())
                        .unwrap_or(u32::MAX),
                    max_inflight: config.max_inflight.clamp(1, limits::MAX_INFLIGHT),
                })),
            }),
        )
        .await?;
        session.announce(&hello.agent_version, in_sync).await;
        tracing::info!(cluster = %self.cluster, agent_version = %hello.agent_version, in_sync,
            "agent connected");
        self.serve(inbound, session).await
    }

    async fn read_pages(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
        session: &Session,
        hello: &v1::Hello,
    ) -> Result<Vec<(String, u64, Sha256)>, End> {
        let page_size = self.service.inner.config.page_size as usize;
        let mut items: Vec<v1::AppliedItem> = Vec::new();
        let mut keys = std::collections::HashSet::new();
        loop {
            let page = match self
                .recv_handshake(inbound, Some(session), "version_page")
                .await?
            {
                agent_message::Body::VersionPage(page) => page,
                _ => {
                    return Err(invalid(
                        "agent message: expected version_page after need_versions".to_owned(),
                    ));
                }
            };
            if page.items.len() > page_size {
                return Err(invalid(format!(
                    "version_page.items: {} items, the hub asked for at most {page_size}",
                    page.items.len()
                )));
            }
            for (index, item) in page.items.iter().enumerate() {
                check_key(&item.key)
                    .map_err(|what| invalid(format!("version_page.items[{index}].key: {what}")))?;
                if item.sha256.len() != 32 {
                    return Err(invalid(format!(
                        "version_page.items[{index}].sha256: {} bytes, expected 32",
                        item.sha256.len()
                    )));
                }
                if !keys.insert(item.key.clone()) {
                    return Err(invalid(format!(
                        "version_page.items[{index}].key: {:?} was already reported",
                        item.key
                    )));
                }
            }
            items.extend(page.items);
            if items.len() > limits::MAX_APPLIED {
                return Err(invalid(format!(
                    "version_page: more than {} applied items",
                    limits::MAX_APPLIED
                )));
            }
            if page.last {
                break;
            }
        }
        if items.len() != hello.applied_count as usize
            || keyfleet_proto::digest::applied_items_digest(&items)[..] != hello.applied_digest[..]
        {
            return Err(invalid(format!(
                "version_page: {} items that do not match hello.applied_digest/applied_count ({})",
                items.len(),
                hello.applied_count
            )));
        }
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let sha256 = Sha256::from_slice(&item.sha256)?;
                Some((item.key, item.revision, sha256))
            })
            .collect())
    }

    async fn serve(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
        session: &mut Session,
    ) -> Result<(), End> {
        let heartbeat = self.service.inner.fleet.config().heartbeat_interval;
        let mut heartbeat_at = Instant::now() + jittered(heartbeat);
        loop {
            if let Some(reason) = session.close_reason() {
                return Err(End::Close(reason));
            }
            while let Some(update) = session.next_update(Instant::now()).await {
                tracing::debug!(cluster = %self.cluster, nonce = update.nonce,
                    upserts = update.upserts.len(), removals = update.removals.len(), "sending update");
                self.send(Some(session), Outbound::Update(update)).await?;
            }
            let deadline = session.deadline(Instant::now());
            tokio::select! {
                () = session.woken() => {}
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(session, message).await?,
                    Ok(None) => return Err(End::AgentGone),
                    Err(status) => return Err(End::Status(status)),
                },
                () = sleep_until(heartbeat_at) => {
                    heartbeat_at = Instant::now() + jittered(heartbeat);
                    self.send(Some(session), Outbound::Message(v1::HubMessage {
                        body: Some(hub_message::Body::Heartbeat(v1::Heartbeat {
                            sent_at_unix_ms: unix_ms(),
                        })),
                    })).await?;
                }
                () = sleep_until(deadline.unwrap_or(heartbeat_at)), if deadline.is_some() => {
                    if session.stalled(Instant::now()) {
                        return Err(End::Stalled);
                    }
                }
            }
        }
    }

    async fn handle(&self, session: &mut Session, message: v1::AgentMessage) -> Result<(), End> {
        match message.body {
            Some(agent_message::Body::Ack(ack)) => {
                let results = ack_results(ack.results)?;
                session
                    .ack(ack.nonce, results, Instant::now())
                    .await
                    .map_err(|error| invalid(error.to_string()))
            }
            Some(agent_message::Body::Heartbeat(_)) => Ok(()),
            Some(agent_message::Body::Drift(drift)) => {
                check_key(&drift.key).map_err(|what| invalid(format!("drift.key: {what}")))?;
                if drift.namespace.is_empty() || drift.namespace.len() > 63 {
                    return Err(invalid(format!(
                        "drift.namespace: {} bytes, expected 1-63",
                        drift.namespace.len()
                    )));
                }
                let kind = match v1::DriftKind::try_from(drift.kind) {
                    Ok(v1::DriftKind::Modified) => DriftKind::Modified,
                    Ok(v1::DriftKind::Deleted) => DriftKind::Deleted,
                    _ => DriftKind::Unspecified,
                };
                if drift.failure.len() > limits::MAX_ERROR_MESSAGE_BYTES {
                    return Err(invalid(format!(
                        "drift.failure: {} bytes, limit {}",
                        drift.failure.len(),
                        limits::MAX_ERROR_MESSAGE_BYTES
                    )));
                }
                let failure = Some(drift.failure).filter(|failure| !failure.is_empty());
                match &failure {
                    None => tracing::info!(cluster = %self.cluster, key = %drift.key,
                        namespace = %drift.namespace, ?kind, "agent repaired drift"),
                    Some(why) => tracing::warn!(cluster = %self.cluster, key = %drift.key,
                        namespace = %drift.namespace, ?kind, failure = %why, "agent could not repair drift"),
                }
                session
                    .drift(drift.key, drift.namespace, kind, drift.revision, failure)
                    .await;
                Ok(())
            }
            Some(agent_message::Body::Hello(_)) => Err(invalid("hello: sent twice on one stream".to_owned())),
            Some(agent_message::Body::VersionPage(_)) => {
                Err(invalid("version_page: not requested on this stream".to_owned()))
            }
            None => Err(invalid("agent message: empty body".to_owned())),
        }
    }
}

async fn woken(session: Option<&Session>) {
    match session {
        Some(session) => session.woken().await,
        None => std::future::pending().await,
    }
}

fn check_hello(hello: &v1::Hello) -> Result<(), End> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(End::Status(Status::failed_precondition(format!(
            "hello.protocol: agent speaks protocol {}, this hub speaks {PROTOCOL_VERSION}",
            hello.protocol
        ))));
    }
    if hello.agent_version.len() > limits::MAX_AGENT_VERSION_BYTES {
        return Err(invalid(format!(
            "hello.agent_version: {} bytes, limit {}",
            hello.agent_version.len(),
            limits::MAX_AGENT_VERSION_BYTES
        )));
    }
    if hello.boot_id.len() != 16 {
        return Err(invalid(format!(
            "hello.boot_id: {} bytes, expected 16",
            hello.boot_id.len()
        )));
    }
    if hello.applied_digest.len() != 32 {
        return Err(invalid(format!(
            "hello.applied_digest: {} bytes, expected 32",
            hello.applied_digest.len()
        )));
    }
    if hello.applied_count as usize > limits::MAX_APPLIED {
        return Err(invalid(format!(
            "hello.applied_count: {}, limit {}",
            hello.applied_count,
            limits::MAX_APPLIED
        )));
    }
    Ok(())
}

/// A FleetSecret name: DNS-1123 subdomain, 1-253 bytes.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("{} bytes, expected 1-253", key.len()));
    }
    let ok = key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        return Err(format!("{key:?} is not a DNS-1123 subdomain"));
    }
    Ok(())
}

fn ack_results(results: Vec<v1::ItemResult>) -> Result<Vec<ItemOutcome>, End> {
    if results.len() > limits::MAX_ITEMS {
        return Err(invalid(format!(
            "ack.results: {} results, limit {}",
            results.len(),
            limits::MAX_ITEMS
        )));
    }
    results
        .into_iter()
        .enumerate()
        .map(|(index, result)| {
            let error = match result.error {
                None => None,
                Some(error) => {
                    if error.message.len() > limits::MAX_ERROR_MESSAGE_BYTES {
                        return Err(invalid(format!(
                            "ack.results[{index}].error.message: {} bytes, limit {}",
                            error.message.len(),
                            limits::MAX_ERROR_MESSAGE_BYTES
                        )));
                    }
                    Some(ItemRefusal {
                        code: nack_code(error.code),
                        retryable: error.retryable,
                        message: error.message,
                    })
                }
            };
            Ok(ItemOutcome {
                key: result.key,
                revision: result.revision,
                error,
            })
        })
        .collect()
}

fn nack_code(code: i32) -> NackCode {
    use v1::ErrorCode as E;
    match E::try_from(code) {
        Ok(E::Invalid) => NackCode::Invalid,
        Ok(E::DigestMismatch) => NackCode::DigestMismatch,
        Ok(E::NotOwned) => NackCode::NotOwned,
        Ok(E::NamespaceMissing) => NackCode::NamespaceMissing,
        Ok(E::Forbidden) => NackCode::Forbidden,
        Ok(E::KubernetesUnavailable) => NackCode::KubernetesUnavailable,
        Ok(E::Conflict) => NackCode::Conflict,
        Ok(E::Immutable) => NackCode::Immutable,
        Ok(E::Internal) => NackCode::Internal,
        Ok(E::Unspecified) | Err(_) => NackCode::Unspecified,
    }
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

fn unix_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
