//! One Sync session after another: Hello, Welcome or version pages, Updates applied item by item
//! and acked, heartbeats, drift reports, Drain; reconnects with the backoff of [`super::Backoff`].
//!
//! # Sync session
//! Hello{applied digest + count, rebuilt by the cluster from annotations} → Welcome (in sync, or
//! Updates follow) or NeedVersions → VersionPages → Welcome. Each Update is validated item by item
//! (names, sizes, selector, sha256) before anything is applied; invalid items are NACKed and the
//! rest proceed; one Ack per Update with one result per item. Hub Heartbeats are answered; three
//! heartbeat intervals of silence end the session. Drift found by the cluster is reported with
//! DriftReport. Drain{reconnect_after_ms} closes the session and reconnects after that delay.
//!
//! Dropping the future returned by [`SyncClient::run`] closes the stream; nothing else needs to be
//! cleaned up (server-side apply requests are idempotent).

use std::collections::BTreeSet;
use std::time::Duration;

use keyfleet_proto::limits;
use keyfleet_proto::v1::{
    self, AgentMessage, agent_message, hub_message, secret_sync_client::SecretSyncClient,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::convert::{
    check_subdomain, deletion_policy, desired_from_payload, drift_message, heartbeat, hello, nack,
    version_pages,
};
use super::{Backoff, retry_after};
use crate::cluster::{Cluster, ClusterEvent, Credential};
use crate::metrics::Metrics;
use crate::reconcile::{ErrorCode, Refusal};

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
    #[tracing::instrument(name = "agent.update", skip_all, fields(nonce = update.nonce, upserts = update.upserts.len(), removals = update.removals.len()))]
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
