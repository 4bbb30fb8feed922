//! The change-log tail: every replica follows the store's change log from its cursor (NOTIFY is
//! a wake-up, the cursor poll the guarantee) and reloads what each entry names: specs, pins,
//! rollouts, clusters, revisions. A cursor the leader pruned past reloads everything.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::leader::StoreState;
use super::revisions::SecretState;
use super::{Engine, EngineError, rollout_progress};
use crate::spec::{self, Kind, Spec};
use crate::store::{ChangeKind, SpecKind};

/// Change-log entries read per page.
const PAGE: u32 = 1000;

impl Engine {
    /// Reads the change log from the cursor and reloads what it names.
    pub(super) async fn catch_up(&mut self) -> Result<(), EngineError> {
        loop {
            let changes = self.store.changes_since(self.cursor, PAGE).await?;
            // Read after the page, so entries pruned while it was read are noticed too.
            if self.cursor < self.store.change_horizon().await? {
                let latest = self.store.latest_change().await?;
                tracing::warn!(
                    cursor = self.cursor,
                    latest,
                    "the change log was pruned past this replica's cursor; reloading everything"
                );
                self.cursor = latest;
                self.reload_all().await?;
                continue;
            }
            let Some(last) = changes.last().map(|change| change.seq) else {
                return Ok(());
            };
            let mut specs = false;
            let mut pins = false;
            let mut rollouts = false;
            let mut revisions = false;
            let mut clusters = false;
            for change in &changes {
                match change.kind {
                    ChangeKind::Spec => specs = true,
                    ChangeKind::Pin => pins = true,
                    ChangeKind::Rollout => rollouts = true,
                    ChangeKind::Revision => revisions = true,
                    ChangeKind::Cluster => clusters = true,
                }
            }
            if specs {
                self.load_specs().await?;
            }
            if pins {
                self.load_pins().await?;
            }
            if rollouts {
                // The leader reads back what it recorded itself: plan again only if that differs
                // from what this replica planned with (a follower, an admin's pause or resume).
                let before = std::mem::take(&mut self.rollouts);
                let loaded = self.load_rollouts().await;
                if loaded.is_err() {
                    self.rollouts = before;
                    loaded?;
                } else if self.rollouts != before {
                    self.replan = true;
                }
            }
            if clusters {
                self.reload_clusters().await?;
                self.replan = true;
            }
            if revisions && !self.vaults.leads() {
                self.follow_revisions().await?;
            }
            // Only now: a reload that failed (the store went away) is read again next time.
            self.cursor = last;
            if changes.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Reloads everything the change log could name: for a cursor the log was pruned past.
    async fn reload_all(&mut self) -> Result<(), EngineError> {
        self.load_specs().await?;
        self.load_pins().await?;
        self.load_rollouts().await?;
        self.reload_clusters().await?;
        if !self.vaults.leads() {
            self.follow_revisions().await?;
        }
        self.replan = true;
        Ok(())
    }

    /// Loads every spec: an unchanged SecretStore keeps its client and poller; a FleetSecret of a
    /// new generation renders again; a removed one is removed from clusters (its policy kept).
    pub(super) async fn load_specs(&mut self) -> Result<(), EngineError> {
        let stored = self.store.list_specs().await?;
        let mut stores = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for row in stored {
            let kind = match row.kind {
                SpecKind::SecretStore => Kind::SecretStore,
                SpecKind::FleetSecret => Kind::FleetSecret,
            };
            let parsed =
                spec::parse_stored(kind, &row.name, &row.yaml).map_err(|source| EngineError::StoredSpec {
                    kind: kind.as_str(),
                    name: row.name.clone(),
                    source,
                })?;
            match parsed {
                Spec::SecretStore(spec) => {
                    stores.insert(row.name, (spec, row.generation));
                }
                Spec::FleetSecret(spec) => {
                    secrets.insert(row.name, (spec, row.generation));
                }
            }
        }
        let mut old_stores = std::mem::take(&mut self.vaults.stores);
        for (name, (spec, generation)) in stores {
            if let Some(state) = old_stores.remove(&name)
                && state.generation == generation
            {
                self.vaults.stores.insert(name, state);
                continue;
            }
            match self.vaults.build(spec, generation) {
                Ok(state) => {
                    let state: StoreState = state;
                    self.vaults.stores.insert(name.clone(), state);
                    if self.vaults.leads() {
                        self.start_poller(&name);
                    }
                }
                Err(error) => {
                    tracing::error!(store = %name, error = %error, "cannot build the Key Vault client");
                }
            }
        }
        self.vaults.forget_removed();
        let mut old = std::mem::take(&mut self.secrets);
        for (name, (spec, generation)) in secrets {
            self.deleted.remove(&name);
            match old.remove(&name) {
                Some(mut state) => {
                    if state.generation != generation {
                        state.spec = Arc::new(spec);
                        state.generation = generation;
                        self.dirty.insert(name.clone());
                    }
                    self.secrets.insert(name, state);
                }
                None => {
                    self.secrets
                        .insert(name.clone(), SecretState::new(Arc::new(spec), generation));
                    self.dirty.insert(name);
                }
            }
        }
        for (name, state) in old {
            tracing::info!(fleet_secret = %name, "FleetSecret deleted; removing it from clusters");
            self.deleted.insert(name, state.spec.target.deletion_policy);
        }
        self.replan = true;
        self.update_watch_sets();
        Ok(())
    }

    /// Loads the pins; a fleet secret whose pins changed renders again.
    pub(super) async fn load_pins(&mut self) -> Result<(), EngineError> {
        let mut pins: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for pin in self.store.pins().await? {
            pins.entry(pin.fleet_secret)
                .or_default()
                .insert(pin.remote_key, pin.version);
        }
        for name in self.secrets.keys() {
            if pins.get(name) != self.pins.get(name) {
                self.dirty.insert(name.clone());
            }
        }
        self.pins = pins;
        Ok(())
    }

    /// Loads the recorded rollout progress.
    pub(super) async fn load_rollouts(&mut self) -> Result<(), EngineError> {
        self.rollouts = self
            .store
            .rollouts()
            .await?
            .iter()
            .map(|record| (record.fleet_secret.clone(), rollout_progress(record)))
            .collect();
        Ok(())
    }
}
