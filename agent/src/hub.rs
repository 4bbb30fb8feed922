//! The hub client: enrollment, the Sync stream, and every proto ⇄ domain conversion of the agent.
//! It is the only agent module that names `keyfleet_proto::v1` types.
//!
//! # Sync session
//! Hello{applied digest + count, rebuilt by the cluster from annotations} → Welcome (in sync, or
//! Updates follow) or NeedVersions → VersionPages → Welcome. Each Update is validated item by item
//! (names, sizes, selector, sha256) before anything is applied; invalid items are NACKed and the
//! rest proceed; one Ack per Update with one result per item. Hub Heartbeats are answered; three
//! heartbeat intervals of silence end the session. Drift found by the cluster is reported with
//! DriftReport. Drain{reconnect_after_ms} closes the session and reconnects after that delay.
//!
//! # Reconnects
//! Full-jitter exponential backoff (1 s → 60 s): the n-th retry waits a uniform random time in
//! `[0, min(60 s, 1 s · 2ⁿ)]`. It resets after a session that reached Welcome and stayed up for
//! [`SyncSettings::stable_after`], and after a Drain (the hub already jitters that delay). A
//! refusal with `retry-after-ms` metadata (the hub's admission queue: RESOURCE_EXHAUSTED) waits
//! that long instead, and does not grow the backoff: the hub spaced the refused agents at the
//! rate it admits them, and a backoff grown by every refusal would leave them away long after
//! their turn (minutes for 10,000 agents after a hub restart).
//!
//! Dropping the future returned by [`SyncClient::run`] closes the stream; nothing else needs to be
//! cleaned up (server-side apply requests are idempotent).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use keyfleet_proto::v1::{
    self, AgentMessage, agent_message, enrollment_client::EnrollmentClient, hub_message,
    secret_sync_client::SecretSyncClient,
};
use keyfleet_proto::{PROTOCOL_VERSION, digest, limits};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

use crate::cluster::{Cluster, ClusterEvent, Credential, CredentialStore};
use crate::metrics::Metrics;
use crate::reconcile::{
    Applied, CreationPolicy, DeletionPolicy, DesiredSecret, DriftKind, ErrorCode, MANAGED_BY_LABEL, Operator,
    RESERVED_ANNOTATION_PREFIX, Refusal, Requirement, SecretBytes, Selector, Targets,
};

/// Errors of the hub client.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The hub URL or CA could not be used.
    #[error("invalid hub endpoint {url}: {reason}")]
    Endpoint {
        /// URL as configured.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No stored credential and no enrollment token.
    #[error("not enrolled: credential Secret {namespace}/{name} not found and no enrollment token given")]
    NotEnrolled {
        /// Agent namespace.
        namespace: String,
        /// Credential Secret name.
        name: String,
    },
    /// The hub refused the enrollment token for good.
    #[error("enrollment refused by the hub ({code:?}): {message}")]
    EnrollRefused {
        /// gRPC code.
        code: tonic::Code,
        /// Hub message.
        message: String,
    },
    /// The hub answered enrollment with something unusable.
    #[error("invalid enrollment response: {0}")]
    EnrollResponse(&'static str),
}

/// How to reach the hub.
#[derive(Clone)]
pub struct HubEndpoint {
    /// `https://host:port` (or `http://` for plaintext).
    pub url: String,
    /// PEM of the CA that signed the hub certificate (required for https).
    pub ca_pem: Option<String>,
}

impl fmt::Debug for HubEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubEndpoint")
            .field("url", &self.url)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Builds a lazily connecting channel with the pinned CA and HTTP/2 keepalive.
pub fn channel(endpoint: &HubEndpoint) -> Result<Channel, HubError> {
    let invalid = |reason: String| HubError::Endpoint {
        url: endpoint.url.clone(),
        reason,
    };
    let mut builder = Endpoint::from_shared(endpoint.url.clone())
        .map_err(|error| invalid(error.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if endpoint.url.starts_with("https://") {
        let ca = endpoint
            .ca_pem
            .as_ref()
            .ok_or_else(|| invalid("an https hub needs its CA (--hub-ca)".into()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        builder = builder
            .tls_config(tls)
            .map_err(|error| invalid(error.to_string()))?;
    }
    Ok(builder.connect_lazy())
}

/// Full-jitter exponential backoff.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// 1 s → 60 s, seeded from the OS.
    pub fn new() -> Self {
        Self::with_rng(
            Duration::from_secs(1),
            Duration::from_secs(60),
            StdRng::from_os_rng(),
        )
    }

    /// Custom bounds and random source (tests seed it).
    pub fn with_rng(base: Duration, cap: Duration, rng: StdRng) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// Upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay: uniform in `[0, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.random_range(0..=millis))
    }

    /// Back to the base.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

fn retryable_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    )
}

/// Returns the stored credential, or enrolls with `token` and stores the result. Retries the
/// store and transient hub failures with backoff; an enrollment the hub refuses is an error.
pub async fn ensure_credential<S: CredentialStore>(
    store: &S,
    channel: Channel,
    token: Option<&str>,
    agent_version: &str,
    not_enrolled: impl FnOnce() -> HubError,
    backoff: &mut Backoff,
) -> Result<Credential, HubError> {
    loop {
        match store.load().await {
            Ok(Some(credential)) => {
                tracing::info!(cluster = %credential.cluster_name, "using the stored credential");
                return Ok(credential);
            }
            Ok(None) => break,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    ?delay,
                    "cannot read the credential secret"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    backoff.reset();
    let token = token.ok_or_else(not_enrolled)?;
    let mut client = EnrollmentClient::new(channel);
    let credential = loop {
        let request = v1::EnrollRequest {
            token: token.to_owned(),
            agent_version: agent_version.to_owned(),
        };
        match client.enroll(request).await {
            Ok(response) => break credential_from(response.into_inner())?,
            Err(status) if retryable_code(status.code()) => {
                let delay = retry_after(&status).unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(code = ?status.code(), message = status.message(), ?delay, "enrollment failed, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(status) => {
                return Err(HubError::EnrollRefused {
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
    };
    tracing::info!(cluster = %credential.cluster_name, cluster_id = %credential.cluster_id, "enrolled");
    backoff.reset();
    loop {
        match store.save(&credential).await {
            Ok(()) => return Ok(credential),
            Err(error) => {
                // The token is spent: keep trying, the credential exists only in memory.
                let delay = backoff.next_delay();
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    ?delay,
                    "cannot store the credential, retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn credential_from(response: v1::EnrollResponse) -> Result<Credential, HubError> {
    let secret = Zeroizing::new(response.credential);
    if secret.is_empty() || secret.len() > 256 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HubError::EnrollResponse(
            "credential is empty, too long or not printable ascii",
        ));
    }
    if response.cluster_name.is_empty() || response.cluster_name.len() > 63 {
        return Err(HubError::EnrollResponse("cluster_name is empty or too long"));
    }
    Ok(Credential {
        cluster_name: response.cluster_name,
        cluster_id: response.cluster_id,
        secret,
    })
}

fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let value = status.metadata().get("retry-after-ms")?.to_str().ok()?;
    value.parse().ok().map(Duration::from_millis)
}

/// Sync client settings.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Reported in Hello (truncated to the protocol limit).
    pub agent_version: String,
    /// This incarnation's id.
    pub boot_id: [u8; 16],
    /// How long to wait for the hub's first message.
    pub first_message_timeout: Duration,
    /// Heartbeat interval assumed when Welcome announces 0.
    pub default_heartbeat: Duration,
    /// A session that reached Welcome and lasted this long resets the backoff.
    pub stable_after: Duration,
}

impl SyncSettings {
    /// Defaults with a random boot id.
    pub fn new(agent_version: impl Into<String>) -> Self {
        Self {
            agent_version: agent_version.into(),
            boot_id: rand::random(),
            first_message_timeout: Duration::from_secs(30),
            default_heartbeat: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    Drained(Duration),
    Resync,
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

fn failed(reason: impl Into<String>) -> SessionEnd {
    SessionEnd::Failed {
        reason: reason.into(),
        retry_after: None,
    }
}

/// The Sync client of one agent.
pub struct SyncClient<'a, C> {
    channel: Channel,
    credential: &'a Credential,
    settings: &'a SyncSettings,
    cluster: &'a C,
    metrics: &'a Metrics,
}

impl<'a, C: Cluster> SyncClient<'a, C> {
    /// Assembles a client.
    pub fn new(
        channel: Channel,
        credential: &'a Credential,
        settings: &'a SyncSettings,
        cluster: &'a C,
        metrics: &'a Metrics,
    ) -> Self {
        Self {
            channel,
            credential,
            settings,
            cluster,
            metrics,
        }
    }

    /// Keeps a session open, reconnecting with backoff, until the future is dropped.
    pub async fn run(&self, events: &mut mpsc::Receiver<ClusterEvent>, backoff: &mut Backoff) {
        let mut pending_drift = Vec::new();
        loop {
            let started = Instant::now();
            let mut welcomed = false;
            let end = self.session(events, &mut welcomed, &mut pending_drift).await;
            self.metrics.connected.set(0);
            if welcomed && started.elapsed() >= self.settings.stable_after {
                backoff.reset();
            }
            let delay = match end {
                SessionEnd::Drained(delay) => {
                    tracing::info!(?delay, "hub drained the stream");
                    backoff.reset();
                    delay
                }
                SessionEnd::Resync => {
                    tracing::info!("reconnecting to resync the applied state");
                    if welcomed {
                        Duration::ZERO
                    } else {
                        backoff.next_delay()
                    }
                }
                SessionEnd::Failed { reason, retry_after } => {
                    let delay = match retry_after {
                        Some(hint) => hint,
                        None => backoff.next_delay(),
                    };
                    tracing::warn!(%reason, ?delay, "sync stream ended, reconnecting");
                    delay
                }
            };
            self.metrics.reconnects.inc();
            tokio::time::sleep(delay).await;
        }
    }

    async fn session(
        &self,
        events: &mut mpsc::Receiver<ClusterEvent>,
        welcomed: &mut bool,
        pending_drift: &mut Vec<ClusterEvent>,
    ) -> SessionEnd {
        // A resync asked for while disconnected is answered by this session's Hello; drift
        // reports wait (across failed sessions) until a Welcome.
        while let Ok(event) = events.try_recv() {
            if event != ClusterEvent::Resync && pending_drift.len() < 64 {
                pending_drift.push(event);
            }
        }
        let applied = match self.cluster.applied().await {
            Ok(applied) => applied,
            Err(error) => return failed(format!("cannot rebuild the applied state: {error}")),
        };
        if applied.len() > limits::MAX_APPLIED {
            return failed(format!(
                "{} applied keys exceed the protocol limit of {}",
                applied.len(),
                limits::MAX_APPLIED
            ));
        }
        let hello = hello(self.settings, &applied);
        let (tx, rx) = mpsc::channel::<AgentMessage>(4);
        if tx.send(hello).await.is_err() {
            return failed("request stream closed before hello");
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = Zeroizing::new(format!("Bearer {}", self.credential.secret.as_str()));
        match tonic::metadata::MetadataValue::try_from(bearer.as_str()) {
            Ok(mut value) => {
                value.set_sensitive(true);
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => return failed("credential is not a valid header value"),
        }
        let mut client = SecretSyncClient::new(self.channel.clone())
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);
        let mut inbound = match client.sync(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return status_end(&status),
        };
        let mut silence = self.settings.first_message_timeout;
        let mut events_open = true;
        loop {
            let deadline = tokio::time::sleep(silence);
            tokio::select! {
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(message)) => message,
                        Ok(None) => return failed("hub closed the stream"),
                        Err(status) => return status_end(&status),
                    };
                    let Some(body) = message.body else {
                        return failed("hub message without body");
                    };
                    match body {
                        hub_message::Body::Welcome(welcome) => {
                            *welcomed = true;
                            self.metrics.connected.set(1);
                            let interval = if welcome.heartbeat_interval_ms == 0 {
                                self.settings.default_heartbeat
                            } else {
                                Duration::from_millis(u64::from(welcome.heartbeat_interval_ms))
                            };
                            silence = interval.saturating_mul(3);
                            tracing::info!(in_sync = welcome.in_sync, hub = %welcome.hub_instance, applied = applied.len(), "sync stream established");
                            for event in pending_drift.drain(..) {
                                if let Some(message) = drift_message(event)
                                    && tx.send(message).await.is_err()
                                {
                                    return failed("request stream closed");
                                }
                            }
                        }
                        hub_message::Body::NeedVersions(need) => {
                            let page_size = usize::try_from(need.page_size)
                                .unwrap_or(limits::MAX_ITEMS)
                                .clamp(1, limits::MAX_ITEMS);
                            for page in version_pages(&applied, page_size) {
                                if tx.send(page).await.is_err() {
                                    return failed("request stream closed");
                                }
                            }
                        }
                        hub_message::Body::Update(update) => {
                            let ack = match self.handle_update(update).await {
                                Ok(ack) => ack,
                                Err(reason) => return failed(reason),
                            };
                            if tx.send(ack).await.is_err() {
                                return failed("request stream closed");
                            }
                        }
                        hub_message::Body::Heartbeat(_) => {
                            if tx.send(heartbeat()).await.is_err() {
                                return failed("request stream closed");
                            }
                        }
                        hub_message::Body::Drain(drain) => {
                            let delay = Duration::from_millis(u64::from(drain.reconnect_after_ms.min(600_000)));
                            tracing::info!(reason = %drain.reason, ?delay, "drain requested");
                            return SessionEnd::Drained(delay);
                        }
                    }
                }
                event = events.recv(), if events_open => match event {
                    Some(ClusterEvent::Resync) => return SessionEnd::Resync,
                    Some(event) if *welcomed => {
                        if let Some(message) = drift_message(event)
                            && tx.send(message).await.is_err()
                        {
                            return failed("request stream closed");
                        }
                    }
                    Some(event) => {
                        if pending_drift.len() < 64 {
                            pending_drift.push(event);
                        }
                    }
                    // The cluster side is gone; keep serving the hub.
                    None => events_open = false,
                },
                () = deadline => return failed(format!("no message from the hub for {silence:?}")),
            }
        }
    }

    /// Validates every item first, then applies the valid ones in order. `Err` is a protocol
    /// violation that ends the stream.
    async fn handle_update(&self, update: v1::Update) -> Result<AgentMessage, String> {
        let total = update.upserts.len() + update.removals.len();
        if total > limits::MAX_ITEMS {
            return Err(format!(
                "update {} has {total} items, more than {}",
                update.nonce,
                limits::MAX_ITEMS
            ));
        }
        let mut results = Vec::with_capacity(total);
        let mut seen = BTreeSet::new();
        let mut valid = Vec::with_capacity(update.upserts.len());
        for payload in update.upserts {
            let (key, revision) = (payload.key.clone(), payload.revision);
            if !seen.insert(key.clone()) {
                results.push(nack(
                    key,
                    revision,
                    &Refusal::new(ErrorCode::Invalid, false, "key repeated in one update"),
                ));
                continue;
            }
            match desired_from_payload(payload) {
                Ok(desired) => valid.push(desired),
                Err(refusal) => results.push(nack(key, revision, &refusal)),
            }
        }
        let mut removals = Vec::with_capacity(update.removals.len());
        for removal in update.removals {
            let refusal = if !seen.insert(removal.key.clone()) {
                Some(Refusal::new(
                    ErrorCode::Invalid,
                    false,
                    "key repeated in one update",
                ))
            } else if let Err(reason) = check_subdomain(&removal.key) {
                Some(Refusal::new(ErrorCode::Invalid, false, format!("key: {reason}")))
            } else {
                None
            };
            match refusal {
                Some(refusal) => results.push(nack(removal.key, 0, &refusal)),
                None => removals.push((removal.key, deletion_policy(removal.deletion_policy))),
            }
        }
        for desired in valid {
            let (key, revision) = (desired.key.clone(), desired.revision);
            match self.cluster.upsert(desired).await {
                Ok(()) => {
                    self.metrics.applied_ok.inc();
                    results.push(v1::ItemResult {
                        key,
                        revision,
                        error: None,
                    });
                }
                Err(refusal) => {
                    tracing::warn!(%key, revision, code = ?refusal.code, message = %refusal.message, "upsert refused");
                    self.metrics.applied_refused.inc();
                    results.push(nack(key, revision, &refusal));
                }
            }
        }
        for (key, policy) in removals {
            match self.cluster.remove(&key, policy).await {
                Ok(()) => results.push(v1::ItemResult {
                    key,
                    revision: 0,
                    error: None,
                }),
                Err(refusal) => {
                    tracing::warn!(%key, code = ?refusal.code, message = %refusal.message, "removal refused");
                    results.push(nack(key, 0, &refusal));
                }
            }
        }
        Ok(AgentMessage {
            body: Some(agent_message::Body::Ack(v1::Ack {
                nonce: update.nonce,
                results,
            })),
        })
    }
}

fn status_end(status: &tonic::Status) -> SessionEnd {
    if status.code() == tonic::Code::Unauthenticated {
        tracing::error!(
            message = status.message(),
            "hub refused the credential (revoked or unknown)"
        );
    }
    SessionEnd::Failed {
        reason: format!("hub answered {:?}: {}", status.code(), status.message()),
        retry_after: retry_after(status),
    }
}

fn hello(settings: &SyncSettings, applied: &BTreeMap<String, Applied>) -> AgentMessage {
    let digest = digest::set_digest(
        applied
            .iter()
            .map(|(key, applied)| (key.as_str(), applied.revision, &applied.sha256[..])),
    );
    let mut agent_version = settings.agent_version.clone();
    truncate_utf8(&mut agent_version, limits::MAX_AGENT_VERSION_BYTES);
    AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            agent_version,
            protocol: PROTOCOL_VERSION,
            boot_id: settings.boot_id.to_vec(),
            applied_digest: digest.to_vec(),
            applied_count: u32::try_from(applied.len()).unwrap_or(u32::MAX),
        })),
    }
}

fn version_pages(applied: &BTreeMap<String, Applied>, page_size: usize) -> Vec<AgentMessage> {
    let items: Vec<v1::AppliedItem> = applied
        .iter()
        .map(|(key, applied)| v1::AppliedItem {
            key: key.clone(),
            revision: applied.revision,
            sha256: applied.sha256.to_vec(),
        })
        .collect();
    if items.is_empty() {
        return vec![version_page(Vec::new(), true)];
    }
    let pages = items.len().div_ceil(page_size);
    items
        .chunks(page_size)
        .enumerate()
        .map(|(index, chunk)| version_page(chunk.to_vec(), index + 1 == pages))
        .collect()
}

fn version_page(items: Vec<v1::AppliedItem>, last: bool) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::VersionPage(v1::VersionPage { items, last })),
    }
}

fn heartbeat() -> AgentMessage {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    AgentMessage {
        body: Some(agent_message::Body::Heartbeat(v1::Heartbeat {
            sent_at_unix_ms: now,
        })),
    }
}

fn drift_message(event: ClusterEvent) -> Option<AgentMessage> {
    let ClusterEvent::Drift {
        key,
        namespace,
        kind,
        revision,
    } = event
    else {
        return None;
    };
    let kind = match kind {
        DriftKind::Modified => v1::DriftKind::Modified,
        DriftKind::Deleted => v1::DriftKind::Deleted,
    };
    Some(AgentMessage {
        body: Some(agent_message::Body::Drift(v1::DriftReport {
            key,
            namespace,
            kind: kind as i32,
            revision,
        })),
    })
}

fn nack(key: String, revision: u64, refusal: &Refusal) -> v1::ItemResult {
    let mut message = refusal.message.clone();
    truncate_utf8(&mut message, limits::MAX_ERROR_MESSAGE_BYTES);
    v1::ItemResult {
        key,
        revision,
        error: Some(v1::ItemError {
            code: error_code(refusal.code) as i32,
            retryable: refusal.retryable,
            message,
        }),
    }
}

fn error_code(code: ErrorCode) -> v1::ErrorCode {
    match code {
        ErrorCode::Invalid => v1::ErrorCode::Invalid,
        ErrorCode::DigestMismatch => v1::ErrorCode::DigestMismatch,
        ErrorCode::NotOwned => v1::ErrorCode::NotOwned,
        ErrorCode::NamespaceMissing => v1::ErrorCode::NamespaceMissing,
        ErrorCode::Forbidden => v1::ErrorCode::Forbidden,
        ErrorCode::KubernetesUnavailable => v1::ErrorCode::KubernetesUnavailable,
        ErrorCode::Conflict => v1::ErrorCode::Conflict,
        ErrorCode::Immutable => v1::ErrorCode::Immutable,
        ErrorCode::Internal => v1::ErrorCode::Internal,
    }
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn deletion_policy(value: i32) -> DeletionPolicy {
    match v1::DeletionPolicy::try_from(value) {
        Ok(v1::DeletionPolicy::Delete) => DeletionPolicy::Delete,
        _ => DeletionPolicy::Retain,
    }
}

fn invalid(message: String) -> Refusal {
    Refusal::new(ErrorCode::Invalid, false, message)
}

/// DNS-1123 subdomain: at most 253 bytes of `[a-z0-9.-]`, alphanumeric at both ends.
fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} must be 1-253 bytes"));
    }
    name.split('.').try_for_each(|part| {
        check_label_chars(part).map_err(|()| format!("{name:?} is not a DNS-1123 subdomain"))
    })
}

/// DNS-1123 label: at most 63 bytes of `[a-z0-9-]`, alphanumeric at both ends.
fn check_dns_label(name: &str) -> Result<(), String> {
    if name.len() > 63 || check_label_chars(name).is_err() {
        return Err(format!("{name:?} is not a DNS-1123 label"));
    }
    Ok(())
}

fn check_label_chars(part: &str) -> Result<(), ()> {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last))
            if alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-') =>
        {
            Ok(())
        }
        _ => Err(()),
    }
}

/// Kubernetes qualified name (`[prefix/]name`), as used for label and annotation keys.
fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_subdomain(prefix)?;
    }
    if check_label_value(name).is_err() || name.is_empty() {
        return Err(format!("{key:?} is not a qualified name"));
    }
    Ok(())
}

/// Label value: at most 63 bytes of `[A-Za-z0-9._-]`, alphanumeric at both ends (or empty).
fn check_label_value(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = value.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

fn check_data_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > 253
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("data key {key:?} must be 1-253 bytes of [-._a-zA-Z0-9]"));
    }
    Ok(())
}

fn selector_from(selector: v1::LabelSelector) -> Result<Selector, String> {
    if selector.match_labels.len() > 64 || selector.match_expressions.len() > 64 {
        return Err("namespace_selector has more than 64 entries".into());
    }
    for (key, value) in &selector.match_labels {
        check_qualified_name(key)?;
        check_label_value(value)?;
    }
    let mut match_expressions = Vec::with_capacity(selector.match_expressions.len());
    for requirement in selector.match_expressions {
        check_qualified_name(&requirement.key)?;
        let operator = match requirement.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(format!("unknown selector operator {other:?}")),
        };
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values == requirement.values.is_empty() || requirement.values.len() > 64 {
            return Err(format!(
                "selector requirement on {:?}: {} takes {} values",
                requirement.key,
                requirement.operator,
                if needs_values { "1-64" } else { "no" }
            ));
        }
        for value in &requirement.values {
            check_label_value(value)?;
        }
        match_expressions.push(Requirement {
            key: requirement.key,
            operator,
            values: requirement.values,
        });
    }
    Ok(Selector {
        match_labels: selector.match_labels.into_iter().collect(),
        match_expressions,
    })
}

/// Validates a payload and converts it; the data moves into zeroizing buffers. Every check that
/// needs no cluster state happens here: names, sizes, selector, reserved labels and annotations,
/// and the announced sha256.
pub fn desired_from_payload(payload: v1::SecretPayload) -> Result<DesiredSecret, Refusal> {
    check_subdomain(&payload.key).map_err(|reason| invalid(format!("key: {reason}")))?;
    if payload.revision == 0 {
        return Err(invalid("revision must be positive".into()));
    }
    check_subdomain(&payload.secret_name).map_err(|reason| invalid(format!("secret_name: {reason}")))?;
    if payload.r#type.len() > 253 || payload.r#type.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(invalid(
            "type must be at most 253 bytes of printable ascii".into(),
        ));
    }
    let targets = match (payload.namespaces.is_empty(), payload.namespace_selector.clone()) {
        (false, None) => {
            if payload.namespaces.len() > limits::MAX_NAMESPACES {
                return Err(invalid(format!(
                    "{} namespaces, more than {}",
                    payload.namespaces.len(),
                    limits::MAX_NAMESPACES
                )));
            }
            let mut unique = BTreeSet::new();
            for namespace in &payload.namespaces {
                check_dns_label(namespace).map_err(|reason| invalid(format!("namespace {reason}")))?;
                if !unique.insert(namespace.as_str()) {
                    return Err(invalid(format!("namespace {namespace:?} listed twice")));
                }
            }
            Targets::Namespaces(payload.namespaces.clone())
        }
        (true, Some(selector)) => Targets::Selector(
            selector_from(selector).map_err(|reason| invalid(format!("namespace_selector: {reason}")))?,
        ),
        (true, None) => {
            return Err(invalid("neither namespaces nor namespace_selector is set".into()));
        }
        (false, Some(_)) => {
            return Err(invalid("both namespaces and namespace_selector are set".into()));
        }
    };
    let mut data_bytes = 0usize;
    for (key, value) in &payload.data {
        check_data_key(key).map_err(invalid)?;
        data_bytes += key.len() + value.len();
    }
    if data_bytes > limits::MAX_SECRET_DATA_BYTES {
        return Err(invalid(format!(
            "data is {data_bytes} bytes, more than {}",
            limits::MAX_SECRET_DATA_BYTES
        )));
    }
    for (key, value) in &payload.labels {
        check_qualified_name(key).map_err(|reason| invalid(format!("label {reason}")))?;
        check_label_value(value).map_err(|reason| invalid(format!("label {key}: {reason}")))?;
        if key == MANAGED_BY_LABEL {
            return Err(invalid(format!("label {key} is reserved for the agent")));
        }
    }
    let mut annotation_bytes = 0usize;
    for (key, value) in &payload.annotations {
        check_qualified_name(key).map_err(|reason| invalid(format!("annotation {reason}")))?;
        if key.starts_with(RESERVED_ANNOTATION_PREFIX) {
            return Err(invalid(format!("annotation {key} is reserved for the agent")));
        }
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > 256 * 1024 {
        return Err(invalid(format!(
            "annotations are {annotation_bytes} bytes, more than 262144"
        )));
    }
    let announced: [u8; 32] = payload.sha256.as_slice().try_into().map_err(|_| {
        Refusal::new(
            ErrorCode::DigestMismatch,
            false,
            format!("sha256 is {} bytes, not 32", payload.sha256.len()),
        )
    })?;
    if digest::payload_sha256(&payload) != announced {
        return Err(Refusal::new(
            ErrorCode::DigestMismatch,
            false,
            "sha256 of the payload differs from the announced one",
        ));
    }
    let creation = match v1::CreationPolicy::try_from(payload.creation_policy) {
        Ok(v1::CreationPolicy::Merge) => CreationPolicy::Merge,
        Ok(v1::CreationPolicy::Orphan) => CreationPolicy::Orphan,
        Ok(v1::CreationPolicy::Owner | v1::CreationPolicy::Unspecified) => CreationPolicy::Owner,
        Err(_) => return Err(invalid("unknown creation_policy".into())),
    };
    if v1::DeletionPolicy::try_from(payload.deletion_policy).is_err() {
        return Err(invalid("unknown deletion_policy".into()));
    }
    let secret_type = if payload.r#type.is_empty() {
        "Opaque".to_owned()
    } else {
        payload.r#type
    };
    Ok(DesiredSecret {
        key: payload.key,
        revision: payload.revision,
        sha256: announced,
        secret_name: payload.secret_name,
        secret_type,
        targets,
        data: payload
            .data
            .into_iter()
            .map(|(key, value)| (key, SecretBytes::new(value)))
            .collect(),
        labels: payload.labels.into_iter().collect(),
        annotations: payload.annotations.into_iter().collect(),
        creation,
        deletion: deletion_policy(payload.deletion_policy),
        immutable: payload.immutable,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn payload() -> v1::SecretPayload {
        let mut payload = v1::SecretPayload {
            key: "regcred".into(),
            revision: 3,
            secret_name: "regcred".into(),
            r#type: "Opaque".into(),
            namespaces: vec!["default".into()],
            data: [("token".to_string(), b"hunter2-value".to_vec())].into(),
            ..Default::default()
        };
        payload.sha256 = digest::payload_sha256(&payload).to_vec();
        payload
    }

    fn refusal(mutate: impl FnOnce(&mut v1::SecretPayload), reseal: bool) -> Refusal {
        let mut payload = payload();
        mutate(&mut payload);
        if reseal {
            payload.sha256 = digest::payload_sha256(&payload).to_vec();
        }
        desired_from_payload(payload).expect_err("must be refused")
    }

    #[test]
    fn valid_payload_converts_and_keeps_digest() {
        let desired = desired_from_payload(payload()).expect("valid");
        assert_eq!(desired.key, "regcred");
        assert_eq!(desired.creation, CreationPolicy::Owner);
        assert_eq!(desired.deletion, DeletionPolicy::Retain);
        assert_eq!(
            desired.data.get("token").map(SecretBytes::expose),
            Some(&b"hunter2-value"[..])
        );
    }

    #[test]
    fn invalid_payloads_are_refused_with_a_named_reason() {
        type Mutation = Box<dyn FnOnce(&mut v1::SecretPayload)>;
        let cases: Vec<(Mutation, bool, ErrorCode, &str)> = vec![
            (
                Box::new(|p| p.key = "Bad_Key".into()),
                true,
                ErrorCode::Invalid,
                "key",
            ),
            (
                Box::new(|p| p.secret_name = "-x".into()),
                true,
                ErrorCode::Invalid,
                "secret_name",
            ),
            (
                Box::new(|p| p.namespaces = vec!["UPPER".into()]),
                true,
                ErrorCode::Invalid,
                "namespace",
            ),
            (
                Box::new(|p| p.namespaces.clear()),
                true,
                ErrorCode::Invalid,
                "neither",
            ),
            (
                Box::new(|p| {
                    p.namespace_selector = Some(v1::LabelSelector::default());
                }),
                true,
                ErrorCode::Invalid,
                "both",
            ),
            (
                Box::new(|p| {
                    p.namespaces.clear();
                    p.namespace_selector = Some(v1::LabelSelector {
                        match_expressions: vec![v1::LabelRequirement {
                            key: "env".into(),
                            operator: "Like".into(),
                            values: vec![],
                        }],
                        ..Default::default()
                    });
                }),
                true,
                ErrorCode::Invalid,
                "operator",
            ),
            (
                Box::new(|p| {
                    p.data.insert("bad key".into(), b"v".to_vec());
                }),
                true,
                ErrorCode::Invalid,
                "data key",
            ),
            (
                Box::new(|p| {
                    p.data
                        .insert("big".into(), vec![0; limits::MAX_SECRET_DATA_BYTES]);
                }),
                true,
                ErrorCode::Invalid,
                "more than",
            ),
            (
                Box::new(|p| {
                    p.labels.insert(MANAGED_BY_LABEL.into(), "me".into());
                }),
                true,
                ErrorCode::Invalid,
                "reserved",
            ),
            (
                Box::new(|p| {
                    p.annotations.insert("keyfleet.io/revision".into(), "9".into());
                }),
                true,
                ErrorCode::Invalid,
                "reserved",
            ),
            (
                Box::new(|p| {
                    p.data.insert("token".into(), b"tampered".to_vec());
                }),
                false,
                ErrorCode::DigestMismatch,
                "sha256",
            ),
            (
                Box::new(|p| p.sha256.truncate(5)),
                false,
                ErrorCode::DigestMismatch,
                "5 bytes",
            ),
        ];
        for (mutate, reseal, code, needle) in cases {
            let refusal = refusal(mutate, reseal);
            assert_eq!(refusal.code, code, "{}", refusal.message);
            assert!(refusal.message.contains(needle), "{needle}: {}", refusal.message);
            assert!(!refusal.message.contains("hunter2"), "{}", refusal.message);
        }
    }

    #[test]
    fn backoff_ceilings_double_to_the_cap_and_delays_stay_below() {
        let mut backoff = Backoff::with_rng(
            Duration::from_secs(1),
            Duration::from_secs(60),
            StdRng::seed_from_u64(7),
        );
        let expected = [1u64, 2, 4, 8, 16, 32, 60, 60, 60];
        for ceiling in expected {
            assert_eq!(backoff.ceiling(), Duration::from_secs(ceiling));
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(ceiling), "{delay:?} > {ceiling}s");
        }
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_window() {
        let mut backoff = Backoff::with_rng(
            Duration::from_secs(60),
            Duration::from_secs(60),
            StdRng::seed_from_u64(1),
        );
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(50)));
    }

    #[test]
    fn hello_digest_matches_the_canonical_set_digest() {
        let settings = SyncSettings::new("0.1.0");
        let applied: BTreeMap<String, Applied> = [
            (
                "b".to_string(),
                Applied {
                    revision: 2,
                    sha256: [2; 32],
                },
            ),
            (
                "a".to_string(),
                Applied {
                    revision: 1,
                    sha256: [1; 32],
                },
            ),
        ]
        .into();
        let Some(agent_message::Body::Hello(hello)) = hello(&settings, &applied).body else {
            panic!("not a hello");
        };
        let items = vec![
            v1::AppliedItem {
                key: "a".into(),
                revision: 1,
                sha256: vec![1; 32],
            },
            v1::AppliedItem {
                key: "b".into(),
                revision: 2,
                sha256: vec![2; 32],
            },
        ];
        assert_eq!(
            hello.applied_digest,
            digest::applied_items_digest(&items).to_vec()
        );
        assert_eq!(hello.applied_count, 2);
        assert_eq!(hello.boot_id.len(), 16);
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
    }

    #[test]
    fn version_pages_split_and_mark_the_last() {
        let applied: BTreeMap<String, Applied> = (0..5)
            .map(|i| {
                (
                    format!("k{i}"),
                    Applied {
                        revision: i,
                        sha256: [0; 32],
                    },
                )
            })
            .collect();
        let pages = version_pages(&applied, 2);
        let flags: Vec<(usize, bool)> = pages
            .iter()
            .map(|page| match &page.body {
                Some(agent_message::Body::VersionPage(page)) => (page.items.len(), page.last),
                _ => panic!("not a page"),
            })
            .collect();
        assert_eq!(flags, vec![(2, false), (2, false), (1, true)]);
        let empty = version_pages(&BTreeMap::new(), 10);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].encoded_len() < 8);
    }
}
