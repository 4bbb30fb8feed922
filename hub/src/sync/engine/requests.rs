//! Any replica, the same answers. Only the Key Vault leader polls, but the CLI and Event Grid
//! reach whichever replica the load balancer picks:
//! - `sync-now` on another replica is written to the store as a request (`poll_requests`, with a
//!   NOTIFY that wakes every replica); the leader serves it on its next change-log wake-up (or
//!   tail tick, 1 s) and writes the result back; the asking replica reads it (bounded wait).
//! - An Event Grid notification on another replica is such a request too (a targeted fetch).
//! - The leader publishes each store's last poll in `store_polls` after every sweep; every
//!   replica answers "how did the last poll go" from there (the leader from memory first).
//!
//! A request nobody served within [`REQUEST_TTL`] (no leader, or a leader that died) is
//! answered as expired, never swept late; the leader prunes requests older than an hour.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;

use super::Engine;
use super::leader::PollerRegistry;
use crate::store::{PollAsk, PollResult, Store, StorePoll};
use crate::sync::control::{ControlError, StoreHealth, SyncNowOutcome};
use crate::vault::eventgrid::vault_name;

/// How long a forwarded `sync-now` waits for the leader's answer.
pub(super) const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the asking replica reads the answer back.
const ANSWER_POLL: Duration = Duration::from_millis(100);
/// A request older than this is answered as expired instead of served.
const REQUEST_TTL: Duration = Duration::from_secs(60);
/// Requests (done or not) are deleted after this.
const REQUEST_RETENTION: Duration = Duration::from_secs(3600);
/// Open requests read per wake-up.
const REQUEST_PAGE: u32 = 100;

impl Engine {
    /// `sync-now` on a replica that does not lead: ask the leader through the store and wait
    /// (at most [`FORWARD_TIMEOUT`]) for its answer, on a task of its own.
    pub(super) fn forward_sync_now(
        &self,
        store: Option<String>,
        reply: oneshot::Sender<Result<SyncNowOutcome, ControlError>>,
    ) {
        let db = self.store.clone();
        let replica = self.config.replica.clone();
        tokio::spawn(async move {
            let _ = reply.send(forward(&db, &replica, PollAsk::Sweep(store)).await);
        });
    }

    /// An Event Grid notification for `secret` of `vault`: the leader fetches it now from every
    /// store reading that vault; another replica asks the leader through the store. The stores
    /// reached (empty on a replica that forwarded, or when no store reads the vault).
    pub(super) async fn secret_changed(&mut self, vault: &str, secret: &str) -> Result<Vec<String>, String> {
        if self.vaults.leads() {
            return Ok(self.fetch_now(vault, secret));
        }
        let ask = PollAsk::Fetch {
            vault: vault.to_owned(),
            secret: secret.to_owned(),
        };
        self.store
            .request_poll(&ask, &self.config.replica)
            .await
            .map(|_| Vec::new())
            .map_err(|error| format!("cannot forward the notification to the Key Vault leader: {error}"))
    }

    /// Targeted fetch of `secret` by every poller of a store reading `vault`; the stores.
    fn fetch_now(&self, vault: &str, secret: &str) -> Vec<String> {
        self.vaults
            .stores
            .iter()
            .filter(|(_, state)| vault_name(&state.spec.vault_url) == vault.to_ascii_lowercase())
            .filter_map(|(name, state)| {
                let poller = state.poller_handle()?;
                poller.fetch_now(secret);
                Some(name.clone())
            })
            .collect()
    }

    /// The leader serves the requests other replicas wrote (see the module documentation).
    pub(super) async fn serve_requests(&mut self) -> Result<(), crate::store::StoreError> {
        if !self.vaults.leads() {
            return Ok(());
        }
        let open = self.store.open_poll_requests(REQUEST_PAGE).await?;
        let serving = &mut self.vaults.serving;
        serving.retain(|id| open.iter().any(|request| request.id == *id));
        let fresh: Vec<_> = open
            .into_iter()
            .filter(|request| serving.insert(request.id))
            .collect();
        for request in fresh {
            let age = (Utc::now() - request.requested_at).to_std().unwrap_or_default();
            let (id, db, replica) = (request.id, self.store.clone(), self.config.replica.clone());
            if age > REQUEST_TTL {
                let result = PollResult {
                    error: Some(format!(
                        "expired: no Key Vault leader served it within {}s",
                        REQUEST_TTL.as_secs()
                    )),
                    ..PollResult::default()
                };
                complete(&db, id, &replica, &result).await;
                continue;
            }
            tracing::info!(request = id, from = %request.requested_by, ask = ?request.ask, "serving another replica's poll request");
            match request.ask {
                PollAsk::Sweep(store) => {
                    let (reply, answer) = oneshot::channel();
                    self.sync_now(store, reply);
                    tokio::spawn(async move {
                        let result = match answer.await {
                            Ok(Ok(outcome)) => PollResult {
                                stores: outcome.stores,
                                new_versions: outcome.new_versions,
                                error: None,
                            },
                            Ok(Err(error)) => PollResult {
                                error: Some(error.to_string()),
                                ..PollResult::default()
                            },
                            Err(_) => PollResult {
                                error: Some("the Key Vault leader is shutting down".to_owned()),
                                ..PollResult::default()
                            },
                        };
                        complete(&db, id, &replica, &result).await;
                    });
                }
                PollAsk::Fetch { vault, secret } => {
                    let stores = self.fetch_now(&vault, &secret);
                    complete(
                        &db,
                        id,
                        &replica,
                        &PollResult {
                            stores,
                            ..PollResult::default()
                        },
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    /// The leader publishes each store's last sweep once (`store_polls`), and prunes old
    /// requests; a failure is only logged (the next tick retries).
    pub(super) async fn publish_polls(&mut self) {
        if !self.vaults.leads() {
            return;
        }
        let polls: Vec<StorePoll> = self
            .vaults
            .last_outcomes()
            .into_iter()
            .filter(|(store, outcome)| self.vaults.published.get(store) != Some(&outcome.finished))
            .map(|(store, outcome)| StorePoll {
                store,
                replica: self.config.replica.clone(),
                polled_at: outcome.finished,
                healthy: outcome.error.is_none(),
                last_error: outcome.error.clone().unwrap_or_default(),
                last_success_at: outcome.error.is_none().then_some(outcome.finished),
            })
            .collect();
        if polls.is_empty() {
            return;
        }
        match self.store.record_store_polls(&polls).await {
            Ok(()) => {
                for poll in polls {
                    self.vaults.published.insert(poll.store, poll.polled_at);
                }
            }
            Err(error) => tracing::warn!(error = %error, "cannot publish the stores' last polls yet"),
        }
        if self.vaults.prune_requests_due() {
            let older_than = Utc::now() - REQUEST_RETENTION;
            if let Err(error) = self.store.prune_poll_requests(older_than).await {
                tracing::warn!(error = %error, "cannot prune old poll requests");
            }
        }
    }
}

/// Writes a request's result; a failure is logged (the asker then times out, saying so).
async fn complete(db: &Store, id: i64, replica: &str, result: &PollResult) {
    if let Err(error) = db.complete_poll_request(id, replica, result).await {
        tracing::warn!(request = id, error = %error, "cannot record the answer to a poll request");
    }
}

/// Writes `ask` for the leader and reads its answer back, for at most [`FORWARD_TIMEOUT`].
async fn forward(db: &Store, replica: &str, ask: PollAsk) -> Result<SyncNowOutcome, ControlError> {
    let unavailable = |error: crate::store::StoreError| ControlError::Forward(error.to_string());
    let id = db.request_poll(&ask, replica).await.map_err(unavailable)?;
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    loop {
        if let Some(result) = db.poll_result(id).await.map_err(unavailable)? {
            return match result.error {
                None => Ok(SyncNowOutcome {
                    stores: result.stores,
                    new_versions: result.new_versions,
                }),
                Some(message) => Err(ControlError::Forward(message)),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ControlError::NoLeader(FORWARD_TIMEOUT));
        }
        tokio::time::sleep(ANSWER_POLL).await;
    }
}

/// Store health as every replica answers it: what the leader published, overridden by this
/// replica's own pollers when it leads.
pub(super) async fn store_health(db: &Store, pollers: &PollerRegistry) -> BTreeMap<String, StoreHealth> {
    let mut health: BTreeMap<String, StoreHealth> = match db.store_polls().await {
        Ok(polls) => polls
            .into_iter()
            .map(|poll| {
                (
                    poll.store,
                    StoreHealth {
                        healthy: poll.healthy,
                        last_error: poll.last_error,
                    },
                )
            })
            .collect(),
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the stores' last polls");
            BTreeMap::new()
        }
    };
    health.extend(super::leader::store_health(pollers));
    health
}
