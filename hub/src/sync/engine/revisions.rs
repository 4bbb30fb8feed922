//! Revisions: rendering a FleetSecret from the Key Vault values at the versions it uses,
//! recording a new revision (leader), reproducing recorded ones from their versions (followers,
//! and the previous revision after a start or failover), and keeping the current and previous
//! revision of each FleetSecret encoded once, through the [`RevisionEncoder`] the engine is given.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::{Engine, EngineError, sources};
use crate::domain::Sha256;
use crate::fleet::EncodedRevision;
use crate::render::{self, RenderedSecret};
use crate::spec::FleetSecretSpec;
use crate::store::{ChangeKind, NewRevision, RevisionRecord};
use crate::sync::plan::RevisionRef;
use crate::vault::FetchedSecret;

/// Encodes a rendered Secret for the wire. The engine owns this seam so that it never names the
/// wire format; `grpc::convert::ProtoEncoder` implements it and `app` wires it in.
pub trait RevisionEncoder: Send + Sync + 'static {
    /// The canonical digest of a rendering, independent of the revision number: what the agent
    /// recomputes, and what the store records keyed.
    fn digest(&self, rendered: &RenderedSecret) -> Sha256;
    /// Encodes `rendered` as revision `revision`, once; every stream shares the bytes. `sources`
    /// are the (Key Vault secret, version) it was rendered from: the agent records them on the
    /// Secret (names and ids only; not part of the digest).
    fn encode(
        &self,
        rendered: &RenderedSecret,
        revision: u64,
        sources: &[(String, String)],
    ) -> EncodedRevision;
}

/// A revision built in this process.
#[derive(Clone)]
pub(super) struct Built {
    pub(super) reference: RevisionRef,
    pub(super) encoded: Arc<EncodedRevision>,
}

/// One FleetSecret: its spec and the revisions it has here.
pub(super) struct SecretState {
    pub(super) spec: Arc<FleetSecretSpec>,
    pub(super) generation: u64,
    pub(super) current: Option<Built>,
    /// The revision before `current` (its bytes are in `Values::built` when this process could
    /// build or reproduce them).
    pub(super) previous: Option<RevisionRef>,
    /// The `current` number whose previous revision was looked up in the store already.
    previous_looked_up: Option<u64>,
}

impl SecretState {
    pub(super) fn new(spec: Arc<FleetSecretSpec>, generation: u64) -> Self {
        Self {
            spec,
            generation,
            current: None,
            previous: None,
            previous_looked_up: None,
        }
    }
}

/// Key Vault values and the revisions built from them.
#[derive(Default)]
pub(super) struct Values {
    /// The current and previous revision of every fleet secret as built (or reproduced) here, by
    /// (fleet secret, number): clusters beyond a rollout's wave still hold the previous one.
    pub(super) built: HashMap<(String, u64), Arc<EncodedRevision>>,
    /// Latest value of every watched Key Vault secret, by (store, key).
    latest: HashMap<(String, String), FetchedSecret>,
    /// Values at fixed, pinned or recorded versions, by (store, key, version).
    versioned: HashMap<(String, String, String), FetchedSecret>,
}

impl Values {
    /// A value a poller fetched: the latest of its key, and that version's value.
    pub(super) fn remember(&mut self, store: String, key: String, secret: FetchedSecret) {
        self.versioned.insert(
            (store.clone(), key.clone(), secret.version.clone()),
            secret.clone(),
        );
        self.latest.insert((store, key), secret);
    }
}

impl Engine {
    /// Renders dirty fleet secrets (leader) or follows the leader's revisions, then plans.
    /// On a store failure nothing is lost: the fleet secrets it had to render stay dirty and the
    /// plan is made again on the next try.
    pub(super) async fn rebuild(&mut self) -> Result<(), EngineError> {
        let dirty = std::mem::take(&mut self.dirty);
        let result = self.render_and_plan(&dirty).await;
        if result.is_err() {
            self.dirty.extend(dirty);
            self.replan = true;
        } else {
            // The rotations of these fleet secrets are handed to the streams: their spans end,
            // unless a rollout still has waves to go (then the last wave ends them).
            for name in &dirty {
                if !self.progressing.contains(name) {
                    self.rotations.remove(name);
                }
            }
        }
        result
    }

    async fn render_and_plan(
        &mut self,
        dirty: &std::collections::BTreeSet<String>,
    ) -> Result<(), EngineError> {
        if self.vaults.leads() {
            self.announce_revisions().await?;
            for name in dirty {
                let span = match self.rotations.get(name) {
                    Some(rotation) => tracing::info_span!(parent: rotation, "render", fleet_secret = %name),
                    None => tracing::info_span!("render", fleet_secret = %name),
                };
                tracing::Instrument::instrument(self.render_one(name), span).await?;
            }
        } else if !dirty.is_empty() {
            self.follow_revisions().await?;
        }
        self.restore_previous().await?;
        let rotation = dirty.iter().find_map(|name| self.rotations.get(name));
        let span = match rotation {
            Some(rotation) => tracing::info_span!(parent: rotation, "plan", fleet_secrets = dirty.len()),
            None => tracing::info_span!("plan", fleet_secrets = dirty.len()),
        };
        for name in dirty {
            if let Some(other) = self.rotations.get(name)
                && other.id() != rotation.and_then(tracing::Span::id)
            {
                span.follows_from(other);
            }
        }
        tracing::Instrument::instrument(self.plan_and_send(), span).await
    }

    /// Records the Key Vault versions whose record failed, then appends the change-log entry of
    /// every revision recorded here but not announced yet (its append failed): followers learn of
    /// it.
    async fn announce_revisions(&mut self) -> Result<(), EngineError> {
        while let Some(record) = self.unrecorded_versions.first() {
            self.store.upsert_secret_version(record).await?;
            self.unrecorded_versions.remove(0);
        }
        while let Some(name) = self.unannounced.first().cloned() {
            self.store.append_change(ChangeKind::Revision, &name).await?;
            self.unannounced.remove(&name);
        }
        Ok(())
    }

    /// Renders one fleet secret from the values at the versions it uses; records a revision when
    /// the result differs.
    async fn render_one(&mut self, name: &str) -> Result<(), EngineError> {
        let Some(state) = self.secrets.get(name) else {
            return Ok(());
        };
        let spec = Arc::clone(&state.spec);
        let generation = state.generation;
        let Some(store_state) = self.vaults.stores.get(&spec.store_ref) else {
            tracing::warn!(fleet_secret = %name, store = %spec.store_ref, "FleetSecret refers to an unknown SecretStore");
            return Ok(());
        };
        let source = Arc::clone(&store_state.source);
        let pins = self.pins.get(name).cloned().unwrap_or_default();
        let wanted = sources::wanted_versions(&spec, &pins);
        // Fetch what is not cached: fixed and pinned versions.
        for (key, version) in &wanted {
            let Some(version) = version else {
                continue;
            };
            let cache_key = (spec.store_ref.clone(), key.clone(), version.clone());
            if let Entry::Vacant(entry) = self.values.versioned.entry(cache_key) {
                match source.get(key, Some(version)).await {
                    Ok(secret) => {
                        entry.insert(secret);
                    }
                    Err(error) => {
                        tracing::warn!(fleet_secret = %name, key = %key, version = %version, error = %error, "cannot fetch a pinned or fixed version");
                        return Ok(());
                    }
                }
            }
        }
        let sources = match sources::assemble(&spec, &wanted, &self.values.latest, &self.values.versioned) {
            Ok(sources) => sources,
            Err(missing) => {
                tracing::info!(fleet_secret = %name, key = %missing, "waiting for the first value of a Key Vault secret");
                return Ok(());
            }
        };
        let rendered = match render::render(&spec, &sources) {
            Ok(rendered) => rendered,
            Err(error) => {
                tracing::error!(fleet_secret = %name, error = %error, "cannot render; clusters keep the previous revision");
                return Ok(());
            }
        };
        let sha256 = self.encoder.digest(&rendered);
        let unchanged = self
            .secrets
            .get(name)
            .and_then(|state| state.current.as_ref())
            .is_some_and(|current| current.encoded.sha256 == sha256);
        if unchanged {
            return Ok(());
        }
        let versions = sources.versions();
        let number = self
            .store
            .upsert_revision(&NewRevision {
                fleet_secret: name.to_owned(),
                sha256,
                spec_generation: generation,
                sources: versions.clone(),
            })
            .await?;
        let encoded = Arc::new(self.encoder.encode(&rendered, number, &versions));
        self.install(name, number, encoded);
        self.unannounced.insert(name.to_owned());
        self.announce_revisions().await?;
        // The digest as stored (keyed): a plain digest of rendered values is never logged.
        let digest = self.store.digest_keys().key(&sha256);
        tracing::info!(fleet_secret = %name, revision = number, digest = %digest, "new revision");
        Ok(())
    }

    /// Makes `number` the current revision of `name`; the current one becomes the previous one.
    /// Only these two stay built.
    fn install(&mut self, name: &str, number: u64, encoded: Arc<EncodedRevision>) {
        let Some(state) = self.secrets.get_mut(name) else {
            return;
        };
        if let Some(current) = &state.current
            && current.reference.number != number
        {
            state.previous = Some(current.reference);
            state.previous_looked_up = Some(number);
        }
        state.current = Some(Built {
            reference: RevisionRef { number },
            encoded: Arc::clone(&encoded),
        });
        let previous = state.previous.map(|previous| previous.number);
        self.values.built.retain(|(built_name, built_number), _| {
            built_name != name || *built_number == number || Some(*built_number) == previous
        });
        self.values.built.insert((name.to_owned(), number), encoded);
        self.replan = true;
    }

    /// Follower: reproduce the revisions the leader recorded, from the recorded versions.
    pub(super) async fn follow_revisions(&mut self) -> Result<(), EngineError> {
        for record in self.store.latest_revisions().await? {
            let Some(state) = self.secrets.get(&record.fleet_secret) else {
                continue;
            };
            if state
                .current
                .as_ref()
                .is_some_and(|current| current.reference.number == record.revision)
            {
                continue;
            }
            if let Some(encoded) = self.reproduce(&record).await {
                self.install(&record.fleet_secret, record.revision, encoded);
            }
        }
        Ok(())
    }

    /// Gives every fleet secret whose previous revision is unknown here (after a start or a
    /// failover, when the process that built it is gone) the revision the store recorded before
    /// its current one, reproduced from its recorded Key Vault versions: clusters beyond a
    /// rollout's current wave keep it. When it cannot be reproduced (rendered from an older spec,
    /// or its versions are gone), its reference still holds those clusters where they are, and a
    /// cluster that needs its bytes gets the current revision (`send_plan`).
    async fn restore_previous(&mut self) -> Result<(), EngineError> {
        let missing: Vec<(String, u64)> = self
            .secrets
            .iter()
            .filter(|(_, state)| state.previous.is_none())
            .filter_map(|(name, state)| {
                let current = state.current.as_ref()?.reference.number;
                (state.previous_looked_up != Some(current)).then(|| (name.clone(), current))
            })
            .collect();
        for (name, current) in missing {
            if let Some(state) = self.secrets.get_mut(&name) {
                state.previous_looked_up = Some(current);
            }
            let Some(record) = self.store.revision_before(&name, current).await? else {
                continue;
            };
            let encoded = self.reproduce(&record).await;
            let Some(state) = self.secrets.get_mut(&name) else {
                continue;
            };
            let still_current = state
                .current
                .as_ref()
                .is_some_and(|built| built.reference.number == current);
            if state.previous.is_some() || !still_current {
                continue;
            }
            state.previous = Some(RevisionRef {
                number: record.revision,
            });
            tracing::info!(
                fleet_secret = %name,
                revision = record.revision,
                reproduced = encoded.is_some(),
                "previous revision restored"
            );
            if let Some(encoded) = encoded {
                self.values.built.insert((name, record.revision), encoded);
            }
            self.replan = true;
        }
        Ok(())
    }

    /// Rebuilds a recorded revision from the Key Vault versions it was rendered from (one GET per
    /// version not cached here) and checks it against the recorded (keyed) digest; `None`, logged, when it cannot.
    async fn reproduce(&mut self, record: &RevisionRecord) -> Option<Arc<EncodedRevision>> {
        let name = &record.fleet_secret;
        let state = self.secrets.get(name)?;
        let spec = Arc::clone(&state.spec);
        let Some(store_state) = self.vaults.stores.get(&spec.store_ref) else {
            tracing::warn!(fleet_secret = %name, store = %spec.store_ref, "FleetSecret refers to an unknown SecretStore");
            return None;
        };
        let source = Arc::clone(&store_state.source);
        for (key, version) in &record.sources {
            let cache_key = (spec.store_ref.clone(), key.clone(), version.clone());
            if self.values.versioned.contains_key(&cache_key) {
                continue;
            }
            match source.get(key, Some(version)).await {
                Ok(secret) => {
                    self.values.versioned.insert(cache_key, secret);
                }
                Err(error) => {
                    tracing::warn!(fleet_secret = %name, revision = record.revision, key = %key, version = %version, error = %error, "cannot fetch a recorded version");
                    return None;
                }
            }
        }
        let sources = sources::recorded(&spec, &record.sources, &spec.store_ref, &self.values.versioned);
        let rendered = match render::render(&spec, &sources) {
            Ok(rendered) => rendered,
            Err(error) => {
                tracing::error!(fleet_secret = %name, revision = record.revision, error = %error, "cannot reproduce a recorded revision");
                return None;
            }
        };
        if !self
            .store
            .digest_keys()
            .matches(&record.digest, &self.encoder.digest(&rendered))
        {
            match record.digest.key() {
                Some(key) if !self.store.digest_keys().knows(key) => {
                    tracing::warn!(fleet_secret = %name, revision = record.revision, digest_key = %key, "cannot check a reproduced revision: its digest is keyed with a key this hub does not hold (--digest-key-file)");
                }
                _ => {
                    tracing::warn!(fleet_secret = %name, revision = record.revision, "reproduced revision differs from the recorded digest (rendered from another spec)");
                }
            }
            return None;
        }
        Some(Arc::new(self.encoder.encode(
            &rendered,
            record.revision,
            &record.sources,
        )))
    }
}
