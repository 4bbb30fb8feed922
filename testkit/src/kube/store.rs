//! One simulated cluster's state: objects, resourceVersion counter, bounded event history for
//! watches, tokens, write counters and injected faults. Every write goes through [`State`]'s
//! methods, which implement the apiserver's semantics; nothing here does IO.

mod apply;
mod faults;
mod ownership;
mod permissions;
mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use super::model::{Body, Kind, Object};
use super::patch;
use super::status::{ApiError, Cause};

pub(super) use faults::{Faults, HoldEnd, WriteFault, WriteHold};
use ownership::record_update;
pub use permissions::{Permissions, RequestRecord, Rule, Verb};
use validate::validate;

/// Counts of write requests a cluster received through its API (handle writes are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Authorized write requests (POST, PUT, PATCH, DELETE), whatever their outcome.
    pub requests: u64,
    /// Writes that changed stored state (each bumped the resourceVersion).
    pub changes: u64,
    /// Server-side apply requests.
    pub applies: u64,
    /// Server-side apply requests that changed nothing.
    pub noop_applies: u64,
    /// Objects created.
    pub creates: u64,
    /// Objects modified.
    pub updates: u64,
    /// Objects deleted.
    pub deletes: u64,
}

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created (or entered the selector).
    Added,
    /// Changed.
    Modified,
    /// Deleted (or left the selector).
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// A stored change, kept in the bounded history that watches resume from.
#[derive(Debug, Clone)]
pub(super) struct Event {
    /// The resourceVersion the change produced.
    pub resource_version: u64,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for deletes: as deleted, with the deletion's RV).
    pub object: Arc<Object>,
    /// The object before the change (for selector transitions).
    pub previous: Option<Arc<Object>>,
}

/// A committed change, reported to the caller so that it can notify watchers and subscribers.
#[derive(Debug, Clone)]
pub(super) struct Committed {
    /// The event recorded.
    pub event: Event,
}

/// How a write names its field manager and how it treats validation and dry runs.
#[derive(Debug, Clone)]
pub(super) struct WriteOptions {
    /// `fieldManager` (or derived from the User-Agent for non-apply writes).
    pub manager: String,
    /// `dryRun=All`: compute and validate, store nothing.
    pub dry_run: bool,
    /// `force` for server-side apply.
    pub force: bool,
}

/// Which kind of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (merge semantics for these kinds).
    Strategic,
    /// `application/json-patch+json`.
    Json,
}

/// A cluster's objects and bookkeeping.
#[derive(Debug)]
pub(super) struct State {
    resource_version: u64,
    objects: BTreeMap<(Kind, String, String), Arc<Object>>,
    history: VecDeque<Event>,
    /// Every event with a resourceVersion above this is in `history`.
    compacted: u64,
    history_limit: usize,
    tokens: HashMap<String, Arc<Permissions>>,
    /// Write counters.
    pub writes: WriteCounts,
    /// Bumped to end every open watch.
    pub watch_epoch: u64,
    /// Injected faults.
    pub faults: Faults,
    /// Authorized requests, recorded once each, while recording is on.
    pub recorded: Option<BTreeSet<RequestRecord>>,
    /// Events (their own store: `kube/events.rs`).
    pub events: super::events::Events,
}

/// Outcome of a successful write.
#[derive(Debug)]
pub(super) struct Written {
    /// The object as stored (or as it would be, on a dry run).
    pub object: Arc<Object>,
    /// True when it was created (201).
    pub created: bool,
    /// The change, unless the write was a no-op or a dry run.
    pub committed: Option<Committed>,
}

fn key(kind: Kind, namespace: Option<&str>, name: &str) -> (Kind, String, String) {
    (kind, namespace.unwrap_or_default().to_owned(), name.to_owned())
}

impl State {
    /// An empty cluster with `default`, `kube-system` and `kube-public`, keeping `history_limit`
    /// events for watches.
    pub(super) fn new(history_limit: usize) -> Self {
        let mut state = Self {
            resource_version: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            history_limit,
            tokens: HashMap::new(),
            writes: WriteCounts::default(),
            watch_epoch: 0,
            faults: Faults::default(),
            recorded: None,
            events: super::events::Events::default(),
        };
        for name in ["default", "kube-system", "kube-public"] {
            let mut namespace = Object::new_namespace(name);
            namespace.meta.uid = uuid::Uuid::new_v4().to_string();
            state.resource_version += 1;
            namespace.meta.resource_version = state.resource_version;
            state
                .objects
                .insert(key(Kind::Namespace, None, name), Arc::new(namespace));
        }
        state.compacted = state.resource_version;
        state
    }

    /// The current resourceVersion.
    pub(super) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Steps the counter for a write outside the watched objects (an Event) and returns it.
    pub(super) fn next_resource_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Forgets the whole event history: resuming a watch from any resourceVersion a client has
    /// seen gets 410. The counter steps once (as when other resources are written), so a relist
    /// returns a resourceVersion that can be watched from.
    pub(super) fn compact(&mut self) {
        self.resource_version += 1;
        self.history.clear();
        self.compacted = self.resource_version;
    }

    /// Registers `token`.
    pub(super) fn add_token(&mut self, token: String, permissions: Permissions) {
        self.tokens.insert(token, Arc::new(permissions));
    }

    /// Registers `token` with permissions shared across clusters.
    pub(super) fn add_token_shared(&mut self, token: String, permissions: Arc<Permissions>) {
        self.tokens.insert(token, permissions);
    }

    /// The permissions of `token`.
    pub(super) fn token(&self, token: &str) -> Option<Arc<Permissions>> {
        self.tokens.get(token).cloned()
    }

    /// One object.
    pub(super) fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Arc<Object>> {
        self.objects.get(&key(kind, namespace, name)).cloned()
    }

    /// Objects of `kind` (in `namespace` if given), in key order, starting after `after`.
    pub(super) fn list<'a>(
        &'a self,
        kind: Kind,
        namespace: Option<&'a str>,
        after: Option<(String, String)>,
    ) -> impl Iterator<Item = &'a Arc<Object>> + 'a {
        let start = match after {
            Some((ns, name)) => std::ops::Bound::Excluded((kind, ns, name)),
            None => std::ops::Bound::Included((kind, String::new(), String::new())),
        };
        self.objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |((k, _, _), _)| *k == kind)
            .filter(move |((_, ns, _), _)| namespace.is_none_or(|wanted| wanted == ns))
            .map(|(_, object)| object)
    }

    /// Retained events above `after`, or the 410 error when `after` is older than the window.
    pub(super) fn events_after(&self, after: u64) -> Result<Vec<Event>, ApiError> {
        if after < self.compacted {
            return Err(ApiError::expired(after, self.compacted));
        }
        let start = self
            .history
            .partition_point(|event| event.resource_version <= after);
        Ok(self.history.range(start..).cloned().collect())
    }

    fn namespace_exists(&self, namespace: &str) -> Result<(), ApiError> {
        match self.get(Kind::Namespace, None, namespace) {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found("namespaces", namespace)),
        }
    }

    fn commit(&mut self, mut object: Object, previous: Option<Arc<Object>>, kind: EventType) -> Committed {
        self.resource_version += 1;
        object.meta.resource_version = self.resource_version;
        let object = Arc::new(object);
        let object_key = key(object.kind(), object.meta.namespace.as_deref(), &object.meta.name);
        match kind {
            EventType::Deleted => {
                self.objects.remove(&object_key);
                self.writes.deletes += 1;
            }
            EventType::Added => {
                self.objects.insert(object_key, object.clone());
                self.writes.creates += 1;
            }
            EventType::Modified => {
                self.objects.insert(object_key, object.clone());
                self.writes.updates += 1;
            }
        }
        let event = Event {
            resource_version: self.resource_version,
            kind,
            object,
            previous,
        };
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(evicted) = self.history.pop_front() {
                self.compacted = evicted.resource_version;
            }
        }
        Committed { event }
    }

    /// Counts an authorized write request.
    pub(super) fn count_request(&mut self) {
        self.writes.requests += 1;
    }

    fn finish(&mut self, object: Object, previous: Option<Arc<Object>>, options: &WriteOptions) -> Written {
        let created = previous.is_none();
        if options.dry_run {
            return Written {
                object: Arc::new(object),
                created,
                committed: None,
            };
        }
        let kind = if created {
            EventType::Added
        } else {
            EventType::Modified
        };
        let committed = self.commit(object, previous, kind);
        self.writes.changes += 1;
        Written {
            object: committed.event.object.clone(),
            created,
            committed: Some(committed),
        }
    }

    /// POST: creates `object` (already decoded) in `namespace`.
    pub(super) fn create(
        &mut self,
        namespace: Option<&str>,
        mut object: Object,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let kind = object.kind();
        check_namespace_field(&mut object, namespace)?;
        if let Some(namespace) = namespace {
            self.namespace_exists(namespace)?;
        }
        if object.meta.name.is_empty() {
            match object.meta.generate_name.take() {
                Some(prefix) if !prefix.is_empty() => {
                    let suffix: String = uuid::Uuid::new_v4()
                        .simple()
                        .to_string()
                        .chars()
                        .take(5)
                        .collect();
                    object.meta.name = format!("{prefix}{suffix}");
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind.name(),
                        kind.resource(),
                        "",
                        vec![required("metadata.name")],
                    ));
                }
            }
        }
        if self.get(kind, namespace, &object.meta.name).is_some() {
            return Err(ApiError::already_exists(kind.resource(), &object.meta.name));
        }
        object.fold_string_data();
        prepare_new(&mut object);
        record_update(None, &mut object, &options.manager);
        default_fields(&mut object);
        validate(None, &object)?;
        Ok(self.finish(object, None, options))
    }

    /// PUT: replaces the object, with optimistic concurrency when a resourceVersion is given.
    pub(super) fn update(
        &mut self,
        namespace: Option<&str>,
        name: &str,
        mut object: Object,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let kind = object.kind();
        check_namespace_field(&mut object, namespace)?;
        if object.meta.name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object.meta.name
            )));
        }
        let live = self
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
        if object.meta.resource_version != 0 && object.meta.resource_version != live.meta.resource_version {
            return Err(ApiError::stale(kind.resource(), name));
        }
        object.fold_string_data();
        keep_server_fields(&mut object, &live);
        record_update(Some(&live), &mut object, &options.manager);
        default_fields(&mut object);
        validate(Some(&live), &object)?;
        if object.same_content(&live) {
            return Ok(Written {
                object: live,
                created: false,
                committed: None,
            });
        }
        Ok(self.finish(object, Some(live), options))
    }

    /// PATCH with a merge, strategic merge or JSON patch.
    pub(super) fn patch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        body: &Value,
        options: &WriteOptions,
    ) -> Result<(Written, Vec<String>), ApiError> {
        let mut unknown = Vec::new();
        let live = self
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
        let mut document = live.to_json();
        match patch_type {
            PatchType::Merge | PatchType::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge(&mut document, body);
            }
            PatchType::Json => patch::json_patch(&mut document, body)?,
        }
        let object = Object::from_json(kind, &document, &mut unknown)?;
        // The patched resourceVersion is a precondition: a patch that sets a stale one conflicts.
        if object.meta.resource_version != live.meta.resource_version {
            return Err(ApiError::stale(kind.resource(), name));
        }
        Ok((self.update(namespace, name, object, options)?, unknown))
    }

    /// DELETE one object, with optional uid / resourceVersion preconditions. Deleting a
    /// Namespace deletes its Secrets first (the namespace controller's work, done at once).
    pub(super) fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        dry_run: bool,
    ) -> Result<(Arc<Object>, Vec<Committed>), ApiError> {
        let live = self
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
        if let Some(uid) = &preconditions.uid
            && *uid != live.meta.uid
        {
            return Err(ApiError::precondition(
                kind.resource(),
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    live.meta.uid
                ),
            ));
        }
        if let Some(rv) = preconditions.resource_version
            && rv != live.meta.resource_version
        {
            return Err(ApiError::precondition(
                kind.resource(),
                name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    live.meta.resource_version
                ),
            ));
        }
        if dry_run {
            return Ok((live, Vec::new()));
        }
        let mut committed = Vec::new();
        if kind == Kind::Namespace {
            let secrets: Vec<Arc<Object>> = self.list(Kind::Secret, Some(name), None).cloned().collect();
            for secret in secrets {
                committed.push(self.commit((*secret).clone(), Some(secret), EventType::Deleted));
                self.writes.changes += 1;
            }
        }
        let mut object = (*live).clone();
        if let Body::Namespace(ns) = &mut object.body {
            ns.phase = "Terminating".to_owned();
            object.meta.deletion_timestamp = Some(Utc::now());
        }
        let deleted = self.commit(object, Some(live), EventType::Deleted);
        self.writes.changes += 1;
        let object = deleted.event.object.clone();
        committed.push(deleted);
        Ok((object, committed))
    }
}

/// DeleteOptions preconditions.
#[derive(Debug, Clone, Default)]
pub(super) struct Preconditions {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<u64>,
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: "Required value: name or generateName is required".to_owned(),
        field: field.to_owned(),
    }
}

fn check_namespace_field(object: &mut Object, namespace: Option<&str>) -> Result<(), ApiError> {
    // An empty namespace in the body is an unset one (kubectl's typed `create` sends it so
    // without `-n`); the request's namespace fills it in, as in the apiserver.
    let body = object.meta.namespace.as_deref().filter(|body| !body.is_empty());
    match (namespace, body) {
        (Some(url), Some(body)) if url != body => Err(ApiError::bad_request(format!(
            "the namespace of the provided object does not match the namespace sent on the request ({body} vs {url})"
        ))),
        (Some(url), _) => {
            object.meta.namespace = Some(url.to_owned());
            Ok(())
        }
        (None, _) => {
            object.meta.namespace = None;
            Ok(())
        }
    }
}

fn prepare_new(object: &mut Object) {
    object.meta.generate_name = None;
    object.meta.uid = uuid::Uuid::new_v4().to_string();
    object.meta.creation_timestamp = Utc::now();
    object.meta.deletion_timestamp = None;
    if object.kind() == Kind::Namespace {
        object
            .meta
            .labels
            .insert("kubernetes.io/metadata.name".to_owned(), object.meta.name.clone());
    }
}

fn default_fields(object: &mut Object) {
    match &mut object.body {
        Body::Secret(secret) => {
            // An absent or empty type defaults to Opaque, as in the apiserver's defaulting.
            if secret.type_.as_deref().is_none_or(str::is_empty) {
                secret.type_ = Some("Opaque".to_owned());
            }
        }
        Body::Namespace(ns) => {
            if ns.spec_finalizers.is_none() {
                ns.spec_finalizers = Some(vec!["kubernetes".to_owned()]);
            }
        }
    }
}

fn keep_server_fields(object: &mut Object, live: &Object) {
    object.meta.generate_name = None;
    object.meta.uid.clone_from(&live.meta.uid);
    object.meta.creation_timestamp = live.meta.creation_timestamp;
    object.meta.deletion_timestamp = live.meta.deletion_timestamp;
    object.meta.managed_fields.clone_from(&live.meta.managed_fields);
    if let (Body::Namespace(ns), Body::Namespace(live_ns)) = (&mut object.body, &live.body) {
        ns.phase.clone_from(&live_ns.phase);
        object
            .meta
            .labels
            .insert("kubernetes.io/metadata.name".to_owned(), object.meta.name.clone());
    }
}

#[cfg(test)]
mod tests;
