//! One admitted stream's life: the handshake (Hello, version pages, Welcome), then updates,
//! acks, drift reports and heartbeats until the agent leaves or the fleet closes the stream, and
//! the status it ends with.

use std::time::Duration;

use keyfleet_proto::limits;
use keyfleet_proto::v1::{self, agent_message, hub_message};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};
use tonic::{Status, Streaming};

use super::SyncService;
use super::checks::{ack_results, check_hello, check_key};
use super::codec::Outbound;
use crate::domain::Sha256;
use crate::fleet::{CloseReason, DriftKind, Session};

/// How a stream ends, before it becomes a status.
pub(super) enum End {
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

/// One stream's task: reads the agent's messages, sends through `out`.
pub(super) struct Stream {
    pub(super) service: SyncService,
    pub(super) cluster: crate::domain::ClusterId,
    /// Boxed: a channel's first block holds 32 slots, ~2.5 KiB per stream for `Outbound`
    /// itself, 256 bytes for a box.
    pub(super) out: mpsc::Sender<Box<Outbound>>,
}

pub(super) fn invalid(message: String) -> End {
    End::Status(Status::invalid_argument(message))
}

impl Stream {
    pub(super) async fn run(self, mut inbound: Streaming<v1::AgentMessage>) -> Result<(), Status> {
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
                let drain = Box::new(Outbound::Message(drain));
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
    pub(super) async fn send(&self, session: Option<&Session>, message: Outbound) -> Result<(), End> {
        let bytes = message.encoded_len();
        let stall = self.service.inner.fleet.config().stall_timeout;
        let deadline = sleep(stall);
        tokio::pin!(deadline);
        let mut changed = false;
        let sent = loop {
            tokio::select! {
                permit = self.out.reserve() => {
                    let Ok(permit) = permit else { break Err(End::AgentGone) };
                    permit.send(Box::new(message));
                    self.count_bytes(bytes);
                    break Ok(());
                }
                () = woken(session) => {
                    if let Some(reason) = session.and_then(Session::close_reason) {
                        break Err(End::Close(reason));
                    }
                    // A desired-set change: noted, handed back to the main loop below (re-armed
                    // here, the wake-up would fire again at once and spin this loop).
                    changed = true;
                }
                () = &mut deadline => break Err(End::Stalled),
            }
        };
        rearm(session, changed);
        sent
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
        let mut changed = false;
        let received = loop {
            tokio::select! {
                message = inbound.message() => {
                    break match message {
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
                        break Err(End::Close(reason));
                    }
                    // Noted for after the handshake (see `send`).
                    changed = true;
                }
                () = &mut deadline => {
                    break Err(End::Status(Status::deadline_exceeded(format!(
                        "no {what} within {:?}",
                        self.service.inner.config.handshake_timeout
                    ))));
                }
            }
        };
        rearm(session, changed);
        received
    }

    /// The handshake, then the stream's life. The handshake runs boxed: its state (Hello, pages,
    /// their timeouts) is dead once the stream serves, and the task, which lives as long as the
    /// stream, would otherwise be sized for it.
    async fn drive(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
        slot: &mut Option<Session>,
    ) -> Result<(), End> {
        Box::pin(self.handshake(inbound, slot)).await?;
        match slot.as_mut() {
            Some(session) => self.serve(inbound, session).await,
            None => Ok(()),
        }
    }

    /// Hello → attach → (NeedVersions → pages) → Welcome → `Connected`.
    async fn handshake(
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
        Ok(())
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
        // An idle stream waits in the `select!` below for its whole life, so the task is sized
        // by that state plus the largest future awaited from it: planning, sending and handling
        // a message run boxed (one short-lived allocation each) to keep that size small.
        let heartbeat = self.service.inner.fleet.config().heartbeat_interval;
        let mut heartbeat_at = Instant::now() + jittered(heartbeat);
        loop {
            if let Some(reason) = session.close_reason() {
                return Err(End::Close(reason));
            }
            while let Some(update) = Box::pin(session.next_update(Instant::now())).await {
                tracing::debug!(cluster = %self.cluster, nonce = update.nonce,
                    upserts = update.upserts.len(), removals = update.removals.len(), "sending update");
                Box::pin(self.send(Some(session), Outbound::Update(update))).await?;
            }
            // One timer for both the heartbeat and the queue's deadline (stall or retry).
            let wake_at = session
                .deadline(Instant::now())
                .map_or(heartbeat_at, |deadline| deadline.min(heartbeat_at));
            tokio::select! {
                () = session.woken() => {}
                message = inbound.message() => match message {
                    Ok(Some(message)) => Box::pin(self.handle(session, message)).await?,
                    Ok(None) => return Err(End::AgentGone),
                    Err(status) => return Err(End::Status(status)),
                },
                () = sleep_until(wake_at) => {
                    let now = Instant::now();
                    if session.stalled(now) {
                        return Err(End::Stalled);
                    }
                    if now >= heartbeat_at {
                        heartbeat_at = now + jittered(heartbeat);
                        Box::pin(self.send(Some(session), Outbound::Message(v1::HubMessage {
                            body: Some(hub_message::Body::Heartbeat(v1::Heartbeat {
                                sent_at_unix_ms: unix_ms(),
                            })),
                        }))).await?;
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

/// Re-arms a desired-set wake-up that a wait consumed without acting on it, once that wait is
/// over: the main loop plans after it. Re-arming inside the wait made its next `woken` fire at
/// once, a busy loop on both cores for as long as an agent took to answer (seen as a hub at
/// 190 % CPU after a replica kill, its failed-over agents mid-handshake during a rollout).
fn rearm(session: Option<&Session>, changed: bool) {
    if changed && let Some(session) = session {
        session.rewake();
    }
}

async fn woken(session: Option<&Session>) {
    match session {
        Some(session) => session.woken().await,
        None => std::future::pending().await,
    }
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

fn unix_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
