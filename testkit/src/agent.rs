//! A protocol-level test agent: speaks `keyfleet.v1` (Enrollment and the Sync stream) with the
//! generated client and applies nothing.
//!
//! It keeps what it "applied" in memory as key → (revision, sha256), exactly what a real agent
//! rebuilds from its Secrets' annotations, and recomputes each payload's sha256 before taking it.
//!
//! - [`HubAddress`]: where a hub listens and the CA it is pinned to.
//! - [`enroll`]: trades a one-time enrollment token for a cluster credential.
//! - [`TestAgent`]: one Sync stream, stepped by the test: handshake (answering `NeedVersions` with
//!   pages), updates, acks and NACKs on demand, the stream's end.
//! - [`RunningAgent`]: a task that keeps a stream open across a list of hubs, moving to the next
//!   one with jittered backoff when a stream fails or drains (so it follows a replica failover),
//!   applies and acks every update (unless acks are held), and publishes its [`AgentState`].
//!
//! Used by the hub's integration tests; cheap enough (one connection, no Kubernetes) to simulate
//! thousands of clusters in one process.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use keyfleet_proto::v1::enrollment_client::EnrollmentClient;
use keyfleet_proto::v1::secret_sync_client::SecretSyncClient;
use keyfleet_proto::v1::{self, agent_message, hub_message};
use prost::Message as _;
use rand::Rng as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};

/// What a test agent holds: key → (revision, sha256).
pub type Applied = BTreeMap<String, (u64, Vec<u8>)>;

/// Gives up on a hub message after this long by default (a bound, never a pause).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// gRPC metadata the hub sets on `RESOURCE_EXHAUSTED`: milliseconds to wait before retrying.
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Errors of a test agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The hub URL or TLS settings are unusable.
    #[error("invalid hub address {url}")]
    Address {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection to the hub.
    #[error("cannot connect to the hub at {url}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The hub refused the call or ended the stream with a status.
    #[error("hub answered {}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// Nothing arrived in time.
    #[error("no hub message within {0:?}")]
    Timeout(Duration),
    /// The stream ended cleanly where a message was expected.
    #[error("the hub ended the stream during {0}")]
    Ended(&'static str),
    /// A message the protocol does not allow at this point.
    #[error("unexpected hub message during {during}: {got}")]
    Unexpected {
        /// The step.
        during: &'static str,
        /// What came (its kind, never its payload).
        got: &'static str,
    },
    /// The agent's side of the stream is gone (the hub closed it).
    #[error("the stream is closed; cannot send {0}")]
    Closed(&'static str),
    /// A payload's announced sha256 does not match its content; it was refused.
    #[error("payload {key} revision {revision}: the announced sha256 does not match the content")]
    Digest {
        /// FleetSecret key.
        key: String,
        /// Revision.
        revision: u64,
    },
}

impl AgentError {
    /// The gRPC status, when the hub answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code: the hub's, or the nearest one for local failures.
    pub fn code(&self) -> Code {
        match self {
            Self::Status(status) => status.code(),
            Self::Address { .. } => Code::InvalidArgument,
            Self::Connect { .. } | Self::Closed(_) => Code::Unavailable,
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Ended(_) | Self::Unexpected { .. } | Self::Digest { .. } => Code::Internal,
        }
    }

    /// The hub's status message, or this error's text.
    pub fn message(&self) -> String {
        match self {
            Self::Status(status) => status.message().to_owned(),
            other => other.to_string(),
        }
    }
}

/// Where a hub serves gRPC and the CA its certificate chains to.
#[derive(Clone)]
pub struct HubAddress {
    /// `https://HOST:PORT`.
    pub url: String,
    /// PEM of the CA to pin.
    pub ca_pem: String,
    /// Name the certificate must carry (`localhost` for the hub's development CA).
    pub domain: String,
}

impl fmt::Debug for HubAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubAddress")
            .field("url", &self.url)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl HubAddress {
    /// A hub on `addr` with a certificate for `localhost` from `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: impl Into<String>) -> Self {
        Self {
            url: format!("https://{addr}"),
            ca_pem: ca_pem.into(),
            domain: "localhost".to_owned(),
        }
    }

    /// One TLS connection (connects now; fails within 5 s when nothing answers).
    pub async fn channel(&self) -> Result<Channel, AgentError> {
        let address = |source| AgentError::Address {
            url: self.url.clone(),
            source,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.domain.clone());
        Endpoint::from_shared(self.url.clone())
            .map_err(address)?
            .tls_config(tls)
            .map_err(address)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|source| AgentError::Connect {
                url: self.url.clone(),
                source,
            })
    }
}

/// Calls `Enroll` with a one-time token.
pub async fn enroll(hub: &HubAddress, token: &str) -> Result<v1::EnrollResponse, AgentError> {
    let mut client = EnrollmentClient::new(hub.channel().await?);
    Ok(client
        .enroll(v1::EnrollRequest {
            token: token.to_owned(),
            agent_version: HelloOptions::default().agent_version,
        })
        .await?
        .into_inner())
}

/// The digest a Hello announces for `applied`.
pub fn applied_digest(applied: &Applied) -> [u8; 32] {
    keyfleet_proto::digest::set_digest(
        applied
            .iter()
            .map(|(key, (revision, sha))| (key.as_str(), *revision, sha.as_slice())),
    )
}

/// Options of a test agent's Hello.
#[derive(Clone, Debug)]
pub struct HelloOptions {
    /// `Hello.protocol`.
    pub protocol: u32,
    /// `Hello.agent_version`.
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

/// One Sync stream, stepped by the test.
pub struct TestAgent {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: Streaming<v1::HubMessage>,
    /// What it holds.
    pub applied: Applied,
    /// Encoded bytes received (messages + 5-byte gRPC frame headers).
    pub received_bytes: usize,
    /// Payloads refused because their sha256 did not match.
    pub digest_mismatches: u64,
    timeout: Duration,
}

impl TestAgent {
    /// Opens a stream with `credential`, announcing `applied`.
    pub async fn connect(hub: &HubAddress, credential: &str, applied: Applied) -> Result<Self, AgentError> {
        Self::connect_with(hub, Some(credential), applied, HelloOptions::default()).await
    }

    /// Opens a stream with an optional credential and custom Hello options.
    pub async fn connect_with(
        hub: &HubAddress,
        credential: Option<&str>,
        applied: Applied,
        options: HelloOptions,
    ) -> Result<Self, AgentError> {
        let channel = hub.channel().await?;
        Self::connect_on(channel, credential, applied, options).await
    }

    /// Opens a stream on an existing channel.
    pub async fn connect_on(
        channel: Channel,
        credential: Option<&str>,
        applied: Applied,
        options: HelloOptions,
    ) -> Result<Self, AgentError> {
        let mut client = SecretSyncClient::new(channel)
            .max_decoding_message_size(keyfleet_proto::limits::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(64);
        let hello = v1::Hello {
            agent_version: options.agent_version,
            protocol: options.protocol,
            boot_id: rand::random::<[u8; 16]>().to_vec(),
            applied_digest: applied_digest(&applied).to_vec(),
            applied_count: u32::try_from(applied.len()).unwrap_or(u32::MAX),
        };
        tx.send(v1::AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        })
        .await
        .map_err(|_| AgentError::Closed("hello"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(credential) = credential {
            let value = format!("Bearer {credential}")
                .parse()
                .map_err(|_| Status::invalid_argument("credential is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = client.sync(request).await?;
        Ok(Self {
            tx,
            rx: response.into_inner(),
            applied,
            received_bytes: 0,
            digest_mismatches: 0,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// How long [`TestAgent::next`] waits for a message.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The next hub message (`Ok(None)` when the stream ended cleanly).
    pub async fn next(&mut self) -> Result<Option<v1::HubMessage>, AgentError> {
        let message = tokio::time::timeout(self.timeout, self.rx.message())
            .await
            .map_err(|_| AgentError::Timeout(self.timeout))??;
        if let Some(message) = &message {
            self.received_bytes += message.encoded_len() + 5;
        }
        Ok(message)
    }

    /// The next message body that is not a heartbeat.
    pub async fn next_body(&mut self) -> Result<Option<hub_message::Body>, AgentError> {
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

    /// Sends one message.
    pub async fn send(&self, body: agent_message::Body) -> Result<(), AgentError> {
        let kind = agent_kind(&body);
        self.tx
            .send(v1::AgentMessage { body: Some(body) })
            .await
            .map_err(|_| AgentError::Closed(kind))
    }

    /// Runs the handshake, answering `NeedVersions` with pages; returns the Welcome.
    pub async fn handshake(&mut self) -> Result<v1::Welcome, AgentError> {
        loop {
            match self.next_body().await? {
                Some(hub_message::Body::Welcome(welcome)) => return Ok(welcome),
                Some(hub_message::Body::NeedVersions(need)) => self.send_pages(need.page_size).await?,
                None => return Err(AgentError::Ended("the handshake")),
                Some(other) => {
                    return Err(AgentError::Unexpected {
                        during: "the handshake",
                        got: hub_kind(&other),
                    });
                }
            }
        }
    }

    /// Pages the applied state, `page_size` items per page (one empty page when nothing is held).
    pub async fn send_pages(&self, page_size: u32) -> Result<(), AgentError> {
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
            items.chunks(page_size.max(1) as usize).collect()
        };
        let last = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            self.send(agent_message::Body::VersionPage(v1::VersionPage {
                items: chunk.to_vec(),
                last: index == last,
            }))
            .await?;
        }
        Ok(())
    }

    /// Waits for the next Update.
    pub async fn update(&mut self) -> Result<v1::Update, AgentError> {
        match self.next_body().await? {
            Some(hub_message::Body::Update(update)) => Ok(update),
            None => Err(AgentError::Ended("an update")),
            Some(other) => Err(AgentError::Unexpected {
                during: "an update",
                got: hub_kind(&other),
            }),
        }
    }

    /// Takes an update into [`TestAgent::applied`] and returns the per-item results: a payload
    /// whose sha256 does not match is refused (`DIGEST_MISMATCH`) and counted, the rest applied.
    pub fn apply(&mut self, update: &v1::Update) -> Vec<v1::ItemResult> {
        let (results, mismatches) = apply_update(&mut self.applied, update);
        self.digest_mismatches += mismatches;
        results
    }

    /// Answers `nonce` with `results`.
    pub async fn ack(&self, nonce: u64, results: Vec<v1::ItemResult>) -> Result<(), AgentError> {
        self.send(agent_message::Body::Ack(v1::Ack { nonce, results }))
            .await
    }

    /// Applies an update and answers it; a digest mismatch is NACKed and returned as an error.
    pub async fn apply_and_ack(&mut self, update: &v1::Update) -> Result<(), AgentError> {
        let results = self.apply(update);
        let refused = results
            .iter()
            .find(|result| result.error.is_some())
            .map(|result| (result.key.clone(), result.revision));
        self.ack(update.nonce, results).await?;
        match refused {
            Some((key, revision)) => Err(AgentError::Digest { key, revision }),
            None => Ok(()),
        }
    }

    /// Refuses every item of `update` with one reason (nothing is applied).
    pub async fn nack(
        &self,
        update: &v1::Update,
        code: v1::ErrorCode,
        retryable: bool,
        message: &str,
    ) -> Result<(), AgentError> {
        let error = v1::ItemError {
            code: code as i32,
            retryable,
            message: message.to_owned(),
        };
        let results = update
            .upserts
            .iter()
            .map(|payload| (payload.key.clone(), payload.revision))
            .chain(update.removals.iter().map(|removal| (removal.key.clone(), 0)))
            .map(|(key, revision)| v1::ItemResult {
                key,
                revision,
                error: Some(error.clone()),
            })
            .collect();
        self.ack(update.nonce, results).await
    }

    /// Reads until the stream ends: `Ok` for a clean end, else the terminal error.
    pub async fn end(&mut self) -> Result<(), AgentError> {
        while self.next().await?.is_some() {}
        Ok(())
    }
}

/// Applies `update` to `applied`; returns the results and how many payloads were refused.
fn apply_update(applied: &mut Applied, update: &v1::Update) -> (Vec<v1::ItemResult>, u64) {
    let mut results = Vec::with_capacity(update.upserts.len() + update.removals.len());
    let mut mismatches = 0;
    for payload in &update.upserts {
        let error = if keyfleet_proto::digest::payload_sha256(payload).as_slice() == payload.sha256 {
            applied.insert(payload.key.clone(), (payload.revision, payload.sha256.clone()));
            None
        } else {
            mismatches += 1;
            Some(v1::ItemError {
                code: v1::ErrorCode::DigestMismatch as i32,
                retryable: false,
                message: "the announced sha256 does not match the payload".to_owned(),
            })
        };
        results.push(v1::ItemResult {
            key: payload.key.clone(),
            revision: payload.revision,
            error,
        });
    }
    for removal in &update.removals {
        applied.remove(&removal.key);
        results.push(v1::ItemResult {
            key: removal.key.clone(),
            revision: 0,
            error: None,
        });
    }
    (results, mismatches)
}

fn hub_kind(body: &hub_message::Body) -> &'static str {
    match body {
        hub_message::Body::Welcome(_) => "welcome",
        hub_message::Body::NeedVersions(_) => "need_versions",
        hub_message::Body::Update(_) => "update",
        hub_message::Body::Heartbeat(_) => "heartbeat",
        hub_message::Body::Drain(_) => "drain",
    }
}

fn agent_kind(body: &agent_message::Body) -> &'static str {
    match body {
        agent_message::Body::Hello(_) => "hello",
        agent_message::Body::Ack(_) => "ack",
        agent_message::Body::VersionPage(_) => "version_page",
        agent_message::Body::Heartbeat(_) => "heartbeat",
        agent_message::Body::Drift(_) => "drift",
    }
}

// === RunningAgent ===

/// How a [`RunningAgent`] authenticates.
#[derive(Clone)]
pub enum Identity {
    /// A credential obtained earlier.
    Credential(String),
    /// A one-time enrollment token, traded for a credential first.
    Token(String),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Either is a bearer secret: never printed.
        match self {
            Self::Credential(_) => f.write_str("Credential(<redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Settings of a [`RunningAgent`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The hubs (replicas) it may use, tried in turn.
    pub hubs: Vec<HubAddress>,
    /// Index of the hub it tries first.
    pub first: usize,
    /// Credential or enrollment token.
    pub identity: Identity,
    /// What it holds at start.
    pub applied: Applied,
    /// Full-jitter backoff between failed attempts: the n-th waits up to `base · 2ⁿ`, at most `cap`.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
}

impl AgentConfig {
    /// Starts on `hubs[first]` with `identity`, holding nothing, backing off 50 ms → 2 s.
    pub fn new(hubs: Vec<HubAddress>, first: usize, identity: Identity) -> Self {
        Self {
            hubs,
            first,
            identity,
            applied: Applied::new(),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(2),
        }
    }
}

/// What a [`RunningAgent`] knows, published on every change.
#[derive(Clone, Debug, Default)]
pub struct AgentState {
    /// What it holds.
    pub applied: Applied,
    /// Index of the hub serving it now (after a Welcome), `None` between streams.
    pub connected_to: Option<usize>,
    /// Streams that reached Welcome.
    pub sessions: u64,
    /// `Welcome.in_sync` of the latest stream.
    pub last_in_sync: Option<bool>,
    /// `Welcome.hub_instance` of the latest stream.
    pub hub_instance: Option<String>,
    /// Cluster id from enrollment (only when it enrolled with a token).
    pub cluster_id: Option<String>,
    /// Updates received and not answered because acks are held.
    pub held_updates: usize,
    /// Payloads refused because their sha256 did not match.
    pub digest_mismatches: u64,
    /// The latest failure (connect, refusal, stream end), for test messages.
    pub last_error: Option<String>,
}

impl AgentState {
    /// The revision held for `key`.
    pub fn revision(&self, key: &str) -> Option<u64> {
        self.applied.get(key).map(|(revision, _)| *revision)
    }
}

/// A test agent on its own task. Dropping it stops the task.
pub struct RunningAgent {
    state: watch::Receiver<AgentState>,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunningAgent {
    /// Starts the task.
    pub fn start(config: AgentConfig) -> Self {
        let (state_tx, state) = watch::channel(AgentState {
            applied: config.applied.clone(),
            ..AgentState::default()
        });
        let (hold, hold_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, state_tx, hold_rx));
        Self { state, hold, task }
    }

    /// A copy of the current state.
    pub fn state(&self) -> AgentState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<AgentState> {
        self.state.clone()
    }

    /// Waits until `ready` holds for the state (no bound: wrap it in a timeout).
    pub async fn wait_for(&self, mut ready: impl FnMut(&AgentState) -> bool) -> AgentState {
        let mut state = self.state.clone();
        match state.wait_for(|current| ready(current)).await {
            Ok(current) => current.clone(),
            // The task ended (it only does when aborted): answer with the last state.
            Err(_) => self.state(),
        }
    }

    /// While `true`, updates are received but neither applied nor answered; setting it back to
    /// `false` applies and acks the held ones (on the same stream; a new stream drops them).
    pub fn hold_acks(&self, hold: bool) {
        self.hold.send_replace(hold);
    }
}

/// Jittered exponential backoff.
struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// How one stream ended.
enum StreamEnd {
    /// Drained: reconnect after this delay, to the next hub.
    Drained(Duration),
    /// Failed: back off; a hub's retry hint when it gave one.
    Failed(String, Option<Duration>),
}

async fn run(config: AgentConfig, state: watch::Sender<AgentState>, mut hold: watch::Receiver<bool>) {
    let hubs = config.hubs.len().max(1);
    let mut index = config.first % hubs;
    let mut backoff = Backoff {
        base: config.backoff_base,
        cap: config.backoff_cap,
        attempt: 0,
    };
    let mut identity = config.identity.clone();
    loop {
        let Some(hub) = config.hubs.get(index) else {
            state.send_modify(|state| state.last_error = Some("no hub address given".to_owned()));
            return;
        };
        let sessions = state.borrow().sessions;
        let end = match &identity {
            Identity::Credential(credential) => session(hub, index, credential, &state, &mut hold).await,
            Identity::Token(token) => match enroll(hub, token).await {
                Ok(response) => {
                    state.send_modify(|state| state.cluster_id = Some(response.cluster_id));
                    identity = Identity::Credential(response.credential);
                    continue;
                }
                Err(error) => {
                    let hint = error.status().and_then(retry_after);
                    StreamEnd::Failed(format!("enroll at {}: {error}", hub.url), hint)
                }
            },
        };
        state.send_modify(|state| {
            state.connected_to = None;
            state.held_updates = 0;
        });
        if state.borrow().sessions > sessions {
            // The stream was up: a failure now is a new incident, not one more retry.
            backoff.attempt = 0;
        }
        let delay = match end {
            StreamEnd::Drained(delay) => {
                backoff.attempt = 0;
                delay
            }
            StreamEnd::Failed(error, hint) => {
                state.send_modify(|state| state.last_error = Some(error));
                hint.unwrap_or_else(|| backoff.next_delay())
            }
        };
        index = (index + 1) % hubs;
        tokio::time::sleep(delay).await;
    }
}

/// One stream: handshake, then updates until it ends.
async fn session(
    hub: &HubAddress,
    index: usize,
    credential: &str,
    state: &watch::Sender<AgentState>,
    hold: &mut watch::Receiver<bool>,
) -> StreamEnd {
    let applied = state.borrow().applied.clone();
    let mut agent = match TestAgent::connect(hub, credential, applied).await {
        Ok(agent) => agent,
        Err(error) => {
            let hint = error.status().and_then(retry_after);
            return StreamEnd::Failed(format!("connect to {}: {error}", hub.url), hint);
        }
    };
    // Heartbeats keep a healthy stream busy; silence longer than this is a dead hub.
    agent.set_timeout(Duration::from_secs(90));
    let welcome = match agent.handshake().await {
        Ok(welcome) => welcome,
        Err(error) => return StreamEnd::Failed(format!("handshake with {}: {error}", hub.url), None),
    };
    state.send_modify(|state| {
        state.connected_to = Some(index);
        state.sessions += 1;
        state.last_in_sync = Some(welcome.in_sync);
        state.hub_instance = Some(welcome.hub_instance.clone());
    });
    let mut held: VecDeque<v1::Update> = VecDeque::new();
    loop {
        let holding = *hold.borrow_and_update();
        if !holding {
            while let Some(update) = held.pop_front() {
                if let Err(error) = answer(&mut agent, &update, state).await {
                    return StreamEnd::Failed(format!("answer {}: {error}", hub.url), None);
                }
            }
        }
        let message = tokio::select! {
            message = agent.next_body() => message,
            changed = hold.changed() => {
                if changed.is_err() {
                    return StreamEnd::Failed("agent stopped".to_owned(), None);
                }
                continue;
            }
        };
        match message {
            Ok(Some(hub_message::Body::Update(update))) => {
                if *hold.borrow() {
                    held.push_back(update);
                    state.send_modify(|state| state.held_updates = held.len());
                } else if let Err(error) = answer(&mut agent, &update, state).await {
                    return StreamEnd::Failed(format!("answer {}: {error}", hub.url), None);
                }
            }
            Ok(Some(hub_message::Body::Drain(drain))) => {
                return StreamEnd::Drained(Duration::from_millis(u64::from(drain.reconnect_after_ms)));
            }
            Ok(Some(other)) => {
                return StreamEnd::Failed(
                    format!("{} sent an unexpected {}", hub.url, hub_kind(&other)),
                    None,
                );
            }
            Ok(None) => return StreamEnd::Failed(format!("{} ended the stream", hub.url), None),
            Err(error) => return StreamEnd::Failed(format!("stream from {}: {error}", hub.url), None),
        }
    }
}

/// Applies and acks one update, publishing the new state.
async fn answer(
    agent: &mut TestAgent,
    update: &v1::Update,
    state: &watch::Sender<AgentState>,
) -> Result<(), AgentError> {
    let results = agent.apply(update);
    agent.ack(update.nonce, results).await?;
    let applied = agent.applied.clone();
    let mismatches = agent.digest_mismatches;
    state.send_modify(|state| {
        state.applied = applied;
        state.digest_mismatches = mismatches;
        state.held_updates = 0;
    });
    Ok(())
}

fn retry_after(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let millis: u64 = status
        .metadata()
        .get(RETRY_AFTER_MS)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(key: &str, revision: u64, value: &[u8]) -> v1::SecretPayload {
        let mut payload = v1::SecretPayload {
            key: key.to_owned(),
            revision,
            secret_name: key.to_owned(),
            r#type: "Opaque".to_owned(),
            namespaces: vec!["default".to_owned()],
            data: [("value".to_owned(), value.to_vec())].into(),
            ..v1::SecretPayload::default()
        };
        payload.sha256 = keyfleet_proto::digest::payload_sha256(&payload).to_vec();
        payload
    }

    #[test]
    fn matching_payloads_are_taken_and_a_wrong_digest_is_refused() {
        let mut applied = Applied::new();
        applied.insert("gone".to_owned(), (1, vec![0; 32]));
        let good = payload("good", 7, b"v");
        let mut forged = payload("forged", 8, b"v");
        forged.data.insert("value".to_owned(), b"changed".to_vec());
        let update = v1::Update {
            nonce: 3,
            upserts: vec![good.clone(), forged],
            removals: vec![v1::Removal {
                key: "gone".to_owned(),
                deletion_policy: v1::DeletionPolicy::Retain as i32,
            }],
        };
        let (results, mismatches) = apply_update(&mut applied, &update);
        assert_eq!(mismatches, 1);
        assert_eq!(
            applied,
            Applied::from([("good".to_owned(), (7, good.sha256.clone()))])
        );
        let refused: Vec<(&str, i32)> = results
            .iter()
            .filter_map(|result| Some((result.key.as_str(), result.error.as_ref()?.code)))
            .collect();
        assert_eq!(refused, [("forged", v1::ErrorCode::DigestMismatch as i32)]);
        assert!(
            results
                .iter()
                .any(|result| result.key == "gone" && result.error.is_none())
        );
    }

    #[test]
    fn backoff_stays_within_its_doubling_ceiling_and_cap() {
        let mut backoff = Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            attempt: 0,
        };
        let ceilings = [50, 100, 200, 400, 800, 1600, 2000, 2000];
        for ceiling in ceilings {
            assert!(backoff.next_delay() <= Duration::from_millis(ceiling));
        }
    }

    #[test]
    fn identities_are_never_printed() {
        let text = format!(
            "{:?} {:?}",
            Identity::Credential("kfc_secret".to_owned()),
            Identity::Token("kfe_secret".to_owned())
        );
        assert!(!text.contains("secret"), "{text}");
    }
}
