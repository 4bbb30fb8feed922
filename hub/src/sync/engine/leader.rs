//! The Key Vault side of the engine: which SecretStores are loaded (their clients come from the
//! [`SourceFactory`]), the leadership (one replica polls Key Vault, by store lock), the pollers it
//! runs, sync-now, and recording each new version the pollers report (sha256 only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Engine, EngineError, sources};
use crate::spec::{DataFrom, SecretStoreSpec};
use crate::store::{Leadership, SecretVersionRecord};
use crate::sync::control::{ControlError, StoreHealth, SyncNowOutcome};
use crate::vault::{self, FindFilter, PollerHandle, SecretSource, SourceFactory, VaultChange, WatchSet};

/// Name of the store lock the Key Vault leader holds.
const LEADER_LOCK: &str = "keyfleet-vault-pollers";

/// The running pollers by store, for [`crate::sync::control::HubControl::store_health`].
pub(super) type PollerRegistry = Arc<std::sync::Mutex<BTreeMap<String, PollerHandle>>>;

/// One SecretStore: its spec, its client and (on the leader) its poller.
pub(super) struct StoreState {
    pub(super) spec: SecretStoreSpec,
    pub(super) generation: u64,
    pub(super) source: Arc<dyn SecretSource>,
    poller: Option<PollerTask>,
}

impl StoreState {
    /// The store's poller, when this replica runs it.
    pub(super) fn poller_handle(&self) -> Option<&PollerHandle> {
        self.poller.as_ref().map(|poller| &poller.handle)
    }
}

/// A running poller: dropping it stops the poller.
struct PollerTask {
    handle: PollerHandle,
    watch: watch::Sender<WatchSet>,
    _stop: tokio_util::sync::DropGuard,
}

/// Leadership, stores and pollers.
pub(super) struct Vaults {
    sources: Arc<dyn SourceFactory>,
    pub(super) leadership: Option<Leadership>,
    pub(super) stores: BTreeMap<String, StoreState>,
    pollers: PollerRegistry,
    changes_tx: mpsc::Sender<VaultChange>,
    /// What the pollers found.
    pub(super) changes: mpsc::Receiver<VaultChange>,
    /// Other replicas' poll requests this leader is serving (`requests`).
    pub(super) serving: BTreeSet<i64>,
    /// The end of each store's last sweep published in `store_polls`.
    pub(super) published: BTreeMap<String, DateTime<Utc>>,
    /// When old poll requests were last pruned.
    last_request_prune: Option<std::time::Instant>,
}

impl Vaults {
    pub(super) fn new(sources: Arc<dyn SourceFactory>) -> Self {
        let (changes_tx, changes) = mpsc::channel(4096);
        Self {
            sources,
            leadership: None,
            stores: BTreeMap::new(),
            pollers: PollerRegistry::default(),
            changes_tx,
            changes,
            serving: BTreeSet::new(),
            published: BTreeMap::new(),
            last_request_prune: None,
        }
    }

    pub(super) fn registry(&self) -> PollerRegistry {
        Arc::clone(&self.pollers)
    }

    /// Each store's last sweep, from the running pollers.
    pub(super) fn last_outcomes(&self) -> Vec<(String, vault::SweepOutcome)> {
        lock(&self.pollers)
            .iter()
            .filter_map(|(store, poller)| Some((store.clone(), poller.last_outcome()?)))
            .collect()
    }

    /// Whether old poll requests are due for pruning (every ten minutes); marks them pruned.
    pub(super) fn prune_requests_due(&mut self) -> bool {
        let due = self
            .last_request_prune
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(600));
        if due {
            self.last_request_prune = Some(std::time::Instant::now());
        }
        due
    }

    /// Whether this replica leads the Key Vault pollers.
    pub(super) fn leads(&self) -> bool {
        self.leadership.is_some()
    }

    /// Stops every poller: another replica leads now.
    pub(super) fn lose_leadership(&mut self) {
        tracing::warn!("lost the Key Vault leadership; stopping pollers");
        self.leadership = None;
        for state in self.stores.values_mut() {
            state.poller = None;
        }
        lock(&self.pollers).clear();
        self.serving.clear();
        self.published.clear();
    }

    /// A client for `spec` (kept while the generation is the same).
    pub(super) fn build(
        &self,
        spec: SecretStoreSpec,
        generation: u64,
    ) -> Result<StoreState, vault::VaultError> {
        let source = self.sources.source(&spec)?;
        Ok(StoreState {
            spec,
            generation,
            source,
            poller: None,
        })
    }

    /// Drops registry entries of stores no longer loaded.
    pub(super) fn forget_removed(&self) {
        let stores = &self.stores;
        lock(&self.pollers).retain(|name, _| stores.contains_key(name));
    }
}

/// Resolves when `leadership` is lost; never without one.
pub(super) async fn lost(leadership: Option<&Leadership>) {
    match leadership {
        Some(leadership) => leadership.lost().await,
        None => std::future::pending().await,
    }
}

/// Health of each store's last poll, from the registry (absent: not polled yet).
pub(super) fn store_health(pollers: &PollerRegistry) -> BTreeMap<String, StoreHealth> {
    lock(pollers)
        .iter()
        .filter_map(|(store, poller)| {
            let outcome = poller.last_outcome()?;
            Some((
                store.clone(),
                StoreHealth {
                    healthy: outcome.error.is_none(),
                    last_error: outcome.error.unwrap_or_default(),
                },
            ))
        })
        .collect()
}

fn lock(pollers: &PollerRegistry) -> std::sync::MutexGuard<'_, BTreeMap<String, PollerHandle>> {
    pollers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine {
    /// Takes the Key Vault leadership if free; the leader runs the pollers.
    pub(super) async fn try_lead(&mut self) -> Result<bool, EngineError> {
        if self.vaults.leads() {
            return Ok(false);
        }
        let Some(leadership) = self.store.try_lead(LEADER_LOCK).await? else {
            return Ok(false);
        };
        tracing::info!(replica = %self.config.replica, "this replica leads the Key Vault pollers");
        self.vaults.leadership = Some(leadership);
        self.config.vault_metrics.set_leader(true);
        let names: Vec<String> = self.vaults.stores.keys().cloned().collect();
        for name in names {
            self.start_poller(&name);
        }
        // A new leader renders whatever changed while nobody led.
        self.dirty.extend(self.secrets.keys().cloned());
        Ok(true)
    }

    /// The first poll of every store fetches every watched key once; waits for them so the
    /// first plan has values.
    pub(super) async fn first_polls(&mut self) {
        let polls: Vec<_> = self
            .vaults
            .stores
            .iter()
            .filter_map(|(name, state)| {
                state
                    .poller
                    .as_ref()
                    .map(|poller| (name.clone(), poller.handle.first_sweep()))
            })
            .collect();
        for (name, poll) in polls {
            if let Some(vault::SweepOutcome {
                error: Some(error), ..
            }) = poll.await
            {
                tracing::warn!(store = %name, error = %error, "initial Key Vault poll failed; retrying in the background");
            }
        }
        while let Ok(change) = self.vaults.changes.try_recv() {
            self.on_vault_change(change).await;
        }
    }

    pub(super) fn start_poller(&mut self, name: &str) {
        let (watch, watch_rx) = watch::channel(self.watch_set(name));
        let tx = self.vaults.changes_tx.clone();
        let metrics = self.config.vault_metrics.clone();
        if let Some(state) = self.vaults.stores.get_mut(name) {
            let (poller, handle) = vault::Poller::new(
                name,
                Arc::clone(&state.source),
                state.spec.poll_interval,
                watch_rx,
                tx,
                metrics,
            );
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(poller.run(stop.clone()));
            lock(&self.vaults.pollers).insert(name.to_owned(), handle.clone());
            state.poller = Some(PollerTask {
                handle,
                watch,
                _stop: stop.drop_guard(),
            });
        }
    }

    /// The keys and `find` filters of every FleetSecret reading from `store`.
    fn watch_set(&self, store: &str) -> WatchSet {
        let mut set = WatchSet::default();
        for state in self
            .secrets
            .values()
            .filter(|state| state.spec.store_ref == store)
        {
            for key in state.spec.remote_keys() {
                set.keys.insert(key.to_owned());
            }
            for from in &state.spec.data_from {
                if let DataFrom::Find(find) = from {
                    set.finds.push(FindFilter {
                        name: find.name.clone(),
                        tags: find.tags.clone(),
                    });
                }
            }
        }
        set
    }

    pub(super) fn update_watch_sets(&mut self) {
        let sets: Vec<(String, WatchSet)> = self
            .vaults
            .stores
            .keys()
            .map(|name| (name.clone(), self.watch_set(name)))
            .collect();
        for (name, set) in sets {
            if let Some(poller) = self
                .vaults
                .stores
                .get(&name)
                .and_then(|state| state.poller.as_ref())
            {
                poller.watch.send_replace(set);
            }
        }
    }

    pub(super) fn sync_now(
        &self,
        store: Option<String>,
        reply: oneshot::Sender<Result<SyncNowOutcome, ControlError>>,
    ) {
        if let Some(name) = &store
            && !self.vaults.stores.contains_key(name)
        {
            let _ = reply.send(Err(ControlError::UnknownStore(name.clone())));
            return;
        }
        if !self.vaults.leads() {
            self.forward_sync_now(store, reply);
            return;
        }
        let polls: Vec<(String, _)> = self
            .vaults
            .stores
            .iter()
            .filter(|(name, _)| store.as_ref().is_none_or(|wanted| wanted == *name))
            .filter_map(|(name, state)| {
                state
                    .poller
                    .as_ref()
                    .map(|poller| (name.clone(), poller.handle.sweep()))
            })
            .collect();
        // Polls run on their own tasks: the engine keeps consuming what they send meanwhile.
        tokio::spawn(async move {
            let mut outcome = SyncNowOutcome::default();
            for (name, poll) in polls {
                match poll.await {
                    Ok(changes) => {
                        outcome.new_versions += u32::try_from(changes).unwrap_or(u32::MAX);
                        outcome.stores.push(name);
                    }
                    Err(message) => {
                        let _ = reply.send(Err(ControlError::PollFailed { store: name, message }));
                        return;
                    }
                }
            }
            let _ = reply.send(Ok(outcome));
        });
    }

    /// Records a new Key Vault version (its digest, keyed by the store), caches its value and marks the fleet
    /// secrets that read it.
    pub(super) async fn on_vault_change(&mut self, change: VaultChange) {
        let VaultChange { store, key, secret } = change;
        // One rotation: from the version recorded here to the desired sets handed to the streams.
        let rotation = tracing::info_span!(parent: None, "rotation", store = %store, key = %key,
            version = %secret.version, fleet_secrets = tracing::field::Empty);
        let record = SecretVersionRecord {
            store: store.clone(),
            name: key.clone(),
            version: secret.version.clone(),
            sha256: crate::domain::Sha256::of(secret.value.expose()),
            enabled: secret.enabled,
            created: secret.created,
            expires: secret.expires,
            not_before: secret.not_before,
        };
        let recorded = tracing::Instrument::instrument(
            self.store.upsert_secret_version(&record),
            tracing::info_span!(parent: &rotation, "record_version"),
        )
        .await;
        if let Err(error) = recorded {
            // Recorded on the next rebuild (`announce_revisions`): the value itself is in memory.
            tracing::warn!(store = %store, key = %key, error = %error, "cannot record the Key Vault version yet");
            self.unrecorded_versions.push(record);
        }
        tracing::info!(store = %store, key = %key, version = %secret.version, "new Key Vault version");
        // The version that starts a rotation is an audit row (actor: the hub; names only).
        if let Err(error) = self
            .store
            .append_audit(
                super::planning::AUDIT_ACTOR,
                "keyvault.version",
                &format!("secretstore/{store} {key} {}", secret.version),
                Utc::now(),
            )
            .await
        {
            tracing::warn!(store = %store, key = %key, error = %error, "cannot audit the new Key Vault version");
        }
        // Decision (docs/security.md, "Expired and not-yet-valid versions"): such a version is
        // rolled out like any other, loudly: this warning, the Expired/NotYetValid condition of
        // every FleetSecret serving it, its expiry gauge and the alerts.
        let now = chrono::Utc::now();
        if let Some(expires) = secret.expires.filter(|expires| *expires <= now) {
            tracing::warn!(store = %store, key = %key, version = %secret.version, %expires,
                "the new Key Vault version has already expired; it is rolled out as Key Vault serves it (status condition Expired)");
        }
        if let Some(not_before) = secret.not_before.filter(|not_before| *not_before > now) {
            tracing::warn!(store = %store, key = %key, version = %secret.version, %not_before,
                "the new Key Vault version is not valid yet; it is rolled out as Key Vault serves it (status condition NotYetValid)");
        }
        let mut reading = 0_usize;
        for (name, state) in &self.secrets {
            if state.spec.store_ref == store && sources::reads(&state.spec, &key, &secret.tags) {
                self.dirty.insert(name.clone());
                self.rotations.insert(name.clone(), rotation.clone());
                reading += 1;
            }
        }
        rotation.record("fleet_secrets", reading);
        self.values.remember(store, key, secret);
    }

    /// The leader keeps the change log bounded; a failure is only logged (the next tick retries).
    pub(super) async fn prune_change_log(&self) {
        let older_than = Utc::now() - self.config.change_log_retention;
        match self
            .store
            .prune_changes(older_than, self.config.change_log_keep)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned the change log"),
            Err(error) => tracing::warn!(error = %error, "cannot prune the change log"),
        }
        let older_than = Utc::now() - self.config.history_retention;
        match self.store.prune_history(older_than).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned sync history and drift"),
            Err(error) => tracing::warn!(error = %error, "cannot prune sync history and drift"),
        }
    }
}
