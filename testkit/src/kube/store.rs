//! One simulated cluster's state: objects, resourceVersion counter, bounded event history for
//! watches, tokens, write counters and injected faults. Every write goes through [`State`]'s
//! methods, which implement the apiserver's semantics (optimistic concurrency, managedFields,
//! server-side apply, Secret rules). Nothing here does IO.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use super::model::{Body, Field, Kind, ManagedFields, Object, Operation};
use super::patch;
use super::status::{ApiError, Cause};

/// Largest total Secret data size the apiserver accepts.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// An API verb, for permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// GET one object.
    Get,
    /// GET a collection.
    List,
    /// GET a collection with `watch`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH (including server-side apply).
    Patch,
    /// DELETE one object.
    Delete,
    /// DELETE a collection.
    DeleteCollection,
}

impl Verb {
    /// The RBAC verb name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// One allow rule: empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    /// Allowed verbs (empty: all).
    pub verbs: Vec<Verb>,
    /// Allowed resources (empty: both).
    pub resources: Vec<Kind>,
    /// Namespaces the rule applies in (empty: every namespace and the cluster scope).
    pub namespaces: Vec<String>,
    /// Object names the rule is limited to, as RBAC `resourceNames` (empty: any). A limited
    /// rule never matches a request without a name (list, watch, create by POST).
    pub names: Vec<String>,
}

/// What a bearer token may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Permissions {
    /// The user name reported in 403 messages.
    pub user: String,
    /// Allow rules; a request is allowed when one rule matches.
    pub rules: Vec<Rule>,
}

impl Permissions {
    /// Everything, everywhere.
    pub fn admin() -> Self {
        Self {
            user: "keyfleet-test-admin".to_owned(),
            rules: vec![Rule::default()],
        }
    }

    /// Nothing until rules are added.
    pub fn none(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            rules: Vec::new(),
        }
    }

    /// Adds a rule allowing `verbs` on `resources` in `namespaces` (empty slices: any).
    pub fn allow(mut self, verbs: &[Verb], resources: &[Kind], namespaces: &[&str]) -> Self {
        self.rules.push(Rule {
            verbs: verbs.to_vec(),
            resources: resources.to_vec(),
            namespaces: namespaces.iter().map(|ns| (*ns).to_owned()).collect(),
            names: Vec::new(),
        });
        self
    }

    /// Adds a rule like [`Self::allow`] limited to the objects named `names` (RBAC
    /// `resourceNames`).
    pub fn allow_named(
        mut self,
        verbs: &[Verb],
        resources: &[Kind],
        namespaces: &[&str],
        names: &[&str],
    ) -> Self {
        self.rules.push(Rule {
            verbs: verbs.to_vec(),
            resources: resources.to_vec(),
            namespaces: namespaces.iter().map(|ns| (*ns).to_owned()).collect(),
            names: names.iter().map(|name| (*name).to_owned()).collect(),
        });
        self
    }

    /// True when some rule allows `verb` on `kind` in `namespace` (None: cluster scope), for a
    /// request that names no object.
    pub fn allows(&self, verb: Verb, kind: Kind, namespace: Option<&str>) -> bool {
        self.allows_named(verb, kind, namespace, None)
    }

    /// True when some rule allows `verb` on `kind` in `namespace` for the object `name` (None:
    /// a request without a name).
    pub fn allows_named(&self, verb: Verb, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> bool {
        self.rules.iter().any(|rule| {
            (rule.verbs.is_empty() || rule.verbs.contains(&verb))
                && (rule.resources.is_empty() || rule.resources.contains(&kind))
                && (rule.namespaces.is_empty()
                    || namespace.is_some_and(|ns| rule.namespaces.iter().any(|allowed| allowed == ns)))
                && (rule.names.is_empty() || name.is_some_and(|name| rule.names.iter().any(|n| n == name)))
        })
    }
}

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
pub struct Event {
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
pub struct Committed {
    /// The event recorded.
    pub event: Event,
}

/// How a write names its field manager and how it treats validation and dry runs.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `fieldManager` (or derived from the User-Agent for non-apply writes).
    pub manager: String,
    /// `dryRun=All`: compute and validate, store nothing.
    pub dry_run: bool,
    /// `force` for server-side apply.
    pub force: bool,
}

/// Which kind of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (merge semantics for these kinds).
    Strategic,
    /// `application/json-patch+json`.
    Json,
}

/// Injected faults for the next API calls.
#[derive(Debug, Default)]
pub struct Faults {
    /// Added to every API call.
    pub latency: Duration,
    /// Errors to return, one per call, front first.
    pub queued: VecDeque<ApiError>,
    /// Errors for the next write requests naming one object, taken in order.
    pub writes: Vec<WriteFault>,
    /// While set, open watches deliver events up to this resourceVersion only; the later ones
    /// wait in the history and arrive, in order, once it is cleared (watches lagging behind the
    /// writes, as under load).
    pub watches_held_after: Option<u64>,
}

/// An injected failure of the next write request (update, patch or delete) naming one object.
#[derive(Debug, Clone)]
pub struct WriteFault {
    /// Kind of the object.
    pub kind: Kind,
    /// Its namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What the client gets.
    pub error: ApiError,
    /// Commit the write first, then answer the error (the client cannot tell whether the write
    /// happened, as after a timeout or a lost response).
    pub after_commit: bool,
    /// Matching writes to let through before this one fails.
    pub pass: usize,
}

impl Faults {
    /// Takes the first write fault for the named object, if any.
    pub fn take_write_fault(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<WriteFault> {
        let namespace = namespace.unwrap_or_default();
        let index = self
            .writes
            .iter()
            .position(|fault| fault.kind == kind && fault.namespace == namespace && fault.name == name)?;
        if self.writes[index].pass > 0 {
            self.writes[index].pass -= 1;
            return None;
        }
        Some(self.writes.remove(index))
    }
}

/// A cluster's objects and bookkeeping.
#[derive(Debug)]
pub struct State {
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
}

/// An authorized API request, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestRecord {
    /// The token's user.
    pub user: String,
    /// The verb.
    pub verb: Verb,
    /// The resource.
    pub kind: Kind,
    /// The namespace (None: cluster scope; a Namespace object is in itself).
    pub namespace: Option<String>,
    /// The object named by the request, if any.
    pub name: Option<String>,
}

/// Outcome of a successful write.
#[derive(Debug)]
pub struct Written {
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
    pub fn new(history_limit: usize) -> Self {
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
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Every event above `compacted()` is retained.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forgets the whole event history: resuming a watch from any resourceVersion a client has
    /// seen gets 410. The counter steps once (as when other resources are written), so a relist
    /// returns a resourceVersion that can be watched from.
    pub fn compact(&mut self) {
        self.resource_version += 1;
        self.history.clear();
        self.compacted = self.resource_version;
    }

    /// Registers `token`.
    pub fn add_token(&mut self, token: String, permissions: Permissions) {
        self.tokens.insert(token, Arc::new(permissions));
    }

    /// Registers `token` with permissions shared across clusters.
    pub fn add_token_shared(&mut self, token: String, permissions: Arc<Permissions>) {
        self.tokens.insert(token, permissions);
    }

    /// The permissions of `token`.
    pub fn token(&self, token: &str) -> Option<Arc<Permissions>> {
        self.tokens.get(token).cloned()
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Arc<Object>> {
        self.objects.get(&key(kind, namespace, name)).cloned()
    }

    /// Objects of `kind` (in `namespace` if given), in key order, starting after `after`.
    pub fn list<'a>(
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
    pub fn events_after(&self, after: u64) -> Result<Vec<Event>, ApiError> {
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
    pub fn count_request(&mut self) {
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
    pub fn create(
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
    pub fn update(
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
    pub fn patch(
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

    /// Server-side apply of `config` (decoded from an apply-patch body).
    pub fn apply(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        mut config: Object,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        check_namespace_field(&mut config, namespace)?;
        if config.meta.name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                config.meta.name
            )));
        }
        let applied = config.fields();
        let manager = options.manager.as_str();
        let Some(live) = self.get(kind, namespace, name) else {
            if let Some(namespace) = namespace {
                self.namespace_exists(namespace)?;
            }
            if config.meta.resource_version != 0 {
                return Err(ApiError::not_found(kind.resource(), name));
            }
            let mut object = config;
            object.fold_string_data();
            prepare_new(&mut object);
            object.meta.managed_fields = vec![ManagedFields {
                manager: manager.to_owned(),
                operation: Operation::Apply,
                time: Utc::now(),
                fields: applied,
            }];
            default_fields(&mut object);
            validate(None, &object)?;
            return Ok(self.finish(object, None, options));
        };
        if config.meta.resource_version != 0 && config.meta.resource_version != live.meta.resource_version {
            return Err(ApiError::stale(kind.resource(), name));
        }

        // Conflicts: fields another manager owns, applied with a different value.
        let mut conflicts: Vec<(String, Field)> = Vec::new();
        for entry in &live.meta.managed_fields {
            if entry.manager == manager {
                continue;
            }
            for field in &applied {
                let owned = entry.fields.iter().any(|owned| same_target(owned, field));
                if owned && config.value(field) != live.value(field) {
                    conflicts.push((entry.manager.clone(), field.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !options.force {
            return Err(conflict_error(kind, name, &conflicts));
        }

        let mut object = (*live).clone();
        let mut entries = live.meta.managed_fields.clone();
        for entry in &mut entries {
            if entry.manager == manager {
                continue;
            }
            // Forced: conflicting fields move to the applier.
            entry.fields.retain(|owned| {
                !conflicts
                    .iter()
                    .any(|(m, f)| *m == entry.manager && same_target(owned, f))
            });
        }
        let previous: BTreeSet<Field> = entries
            .iter()
            .filter(|e| e.manager == manager && e.operation == Operation::Apply)
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        let owned_by_others: Vec<Field> = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == Operation::Apply))
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        for field in previous.difference(&applied) {
            let kept = owned_by_others.iter().any(|other| same_target(other, field))
                || applied.iter().any(|now| same_target(now, field));
            if !kept {
                object.remove_field(field);
            }
        }
        for field in &applied {
            object.copy_field(field, &config);
        }
        object.fold_string_data();
        // The applier's own Update entry gives up what it now applies.
        for entry in &mut entries {
            if entry.manager == manager && entry.operation == Operation::Update {
                entry
                    .fields
                    .retain(|owned| !applied.iter().any(|f| same_target(owned, f)));
            }
        }
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == Operation::Apply)
        {
            Some(entry) => entry.fields = applied,
            None => entries.push(ManagedFields {
                manager: manager.to_owned(),
                operation: Operation::Apply,
                time: Utc::now(),
                fields: applied,
            }),
        }
        entries.retain(|entry| !entry.fields.is_empty());
        object.meta.managed_fields = entries;
        default_fields(&mut object);
        validate(Some(&live), &object)?;
        if object.same_content(&live) {
            self.writes.noop_applies += 1;
            return Ok(Written {
                object: live,
                created: false,
                committed: None,
            });
        }
        let now = Utc::now();
        for entry in &mut object.meta.managed_fields {
            if entry.manager == manager && entry.operation == Operation::Apply {
                entry.time = now;
            }
        }
        Ok(self.finish(object, Some(live), options))
    }

    /// DELETE one object, with optional uid / resourceVersion preconditions. Deleting a
    /// Namespace deletes its Secrets first (the namespace controller's work, done at once).
    pub fn delete(
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
pub struct Preconditions {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<u64>,
}

/// `data.k` and `stringData.k` write the same stored value.
fn same_target(a: &Field, b: &Field) -> bool {
    match (a, b) {
        (Field::Data(x) | Field::StringData(x), Field::Data(y) | Field::StringData(y)) => x == y,
        _ => a == b,
    }
}

fn conflict_error(kind: Kind, name: &str, conflicts: &[(String, Field)]) -> ApiError {
    let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (manager, field) in conflicts {
        by_manager.entry(manager).or_default().push(field.path());
    }
    let count = conflicts.len();
    let plural = if count == 1 { "conflict" } else { "conflicts" };
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(manager, fields)| {
            if fields.len() == 1 {
                format!("conflict with \"{manager}\" using v1: {}", fields[0])
            } else {
                format!(
                    "conflicts with \"{manager}\" using v1:\n- {}",
                    fields.join("\n- ")
                )
            }
        })
        .collect();
    let message = format!("Apply failed with {count} {plural}: {}", parts.join("\n"));
    let causes = conflicts
        .iter()
        .map(|(manager, field)| Cause {
            reason: "FieldManagerConflict",
            message: format!("conflict with \"{manager}\" using v1"),
            field: field.path(),
        })
        .collect();
    ApiError::apply_conflict(kind.resource(), name, message, causes)
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

/// Updates managedFields for a non-apply write: changed fields move to `manager`'s Update entry,
/// removed fields leave every entry.
pub fn record_update(live: Option<&Object>, object: &mut Object, manager: &str) {
    let new_fields = object.fields();
    let (old_fields, mut entries) = match live {
        Some(live) => (live.fields(), live.meta.managed_fields.clone()),
        None => (BTreeSet::new(), Vec::new()),
    };
    let removed: BTreeSet<&Field> = old_fields.iter().filter(|f| !new_fields.contains(*f)).collect();
    let changed: BTreeSet<Field> = new_fields
        .iter()
        .filter(|field| live.is_none_or(|live| live.value(field) != object.value(field)))
        .cloned()
        .collect();
    for entry in &mut entries {
        entry.fields.retain(|field| !removed.contains(field));
        if !(entry.manager == manager && entry.operation == Operation::Update) {
            entry
                .fields
                .retain(|field| !changed.iter().any(|c| same_target(c, field)));
        }
    }
    if !changed.is_empty() {
        let now = Utc::now();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == Operation::Update)
        {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now;
            }
            None => entries.push(ManagedFields {
                manager: manager.to_owned(),
                operation: Operation::Update,
                time: now,
                fields: changed,
            }),
        }
    }
    entries.retain(|entry| !entry.fields.is_empty());
    object.meta.managed_fields = entries;
}

fn invalid_cause(field: &str, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message,
        field: field.to_owned(),
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_qualified_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// The apiserver's validation for Secrets and Namespaces (names, label keys and values, data
/// keys and size, immutability).
pub fn validate(live: Option<&Object>, object: &Object) -> Result<(), ApiError> {
    let kind = object.kind();
    let name = &object.meta.name;
    let mut causes = Vec::new();
    let valid_name = match kind {
        Kind::Secret => is_dns_subdomain(name),
        Kind::Namespace => is_dns_label(name),
    };
    if !valid_name {
        causes.push(invalid_cause(
            "metadata.name",
            format!("Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    for (key, value) in &object.meta.labels {
        if !is_qualified_key(key) {
            causes.push(invalid_cause("metadata.labels", format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
        }
        if !value.is_empty() && !is_label_name(value) {
            causes.push(invalid_cause("metadata.labels", format!("Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
    }
    for key in object.meta.annotations.keys() {
        if !is_qualified_key(key) {
            causes.push(invalid_cause("metadata.annotations", format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
        }
    }
    if let Some(secret) = object.secret() {
        causes.extend(type_rules(object, secret));
        let mut total = 0usize;
        for (key, value) in &secret.data {
            total += value.expose().len();
            let valid = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid {
                causes.push(invalid_cause(
                    &format!("data[{key}]"),
                    format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
        }
        if total > MAX_SECRET_BYTES {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: must have at most {MAX_SECRET_BYTES} bytes"),
                field: "data".to_owned(),
            });
        }
        if let Some(live_secret) = live.and_then(Object::secret) {
            if live_secret.type_ != secret.type_ {
                causes.push(invalid_cause(
                    "type",
                    format!(
                        "Invalid value: {:?}: field is immutable",
                        secret.type_.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if live_secret.immutable == Some(true) {
                if live_secret.data != secret.data {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: field is immutable when `immutable` is set".to_owned(),
                        field: "data".to_owned(),
                    });
                }
                if secret.immutable != Some(true) {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: field is immutable when `immutable` is set".to_owned(),
                        field: "immutable".to_owned(),
                    });
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind.name(), kind.resource(), name, causes))
    }
}

fn required_key(key: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: "Required value".to_owned(),
        field: format!("data[{key}]"),
    }
}

/// The apiserver's per-type Secret rules (`ValidateSecret`).
fn type_rules(object: &Object, secret: &super::model::SecretBody) -> Vec<Cause> {
    let has = |key: &str| secret.data.contains_key(key);
    let json_key = |key: &str| -> Vec<Cause> {
        match secret.data.get(key) {
            None => vec![required_key(key)],
            Some(value) if serde_json::from_slice::<Value>(value.expose()).is_err() => vec![Cause {
                reason: "FieldValueInvalid",
                message: "Invalid value: \"<secret contents redacted>\": invalid JSON".to_owned(),
                field: format!("data[{key}]"),
            }],
            Some(_) => Vec::new(),
        }
    };
    match secret.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            if object
                .meta
                .annotations
                .contains_key("kubernetes.io/service-account.name")
            {
                Vec::new()
            } else {
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".to_owned(),
                    field: "metadata.annotations[kubernetes.io/service-account.name]".to_owned(),
                }]
            }
        }
        "kubernetes.io/dockercfg" => json_key(".dockercfg"),
        "kubernetes.io/dockerconfigjson" => json_key(".dockerconfigjson"),
        "kubernetes.io/basic-auth" => {
            if has("username") || has("password") {
                Vec::new()
            } else {
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: must contain at least one of username or password".to_owned(),
                    field: "data[username]".to_owned(),
                }]
            }
        }
        "kubernetes.io/ssh-auth" => {
            if has("ssh-privatekey") {
                Vec::new()
            } else {
                vec![required_key("ssh-privatekey")]
            }
        }
        "kubernetes.io/tls" => ["tls.crt", "tls.key"]
            .into_iter()
            .filter(|key| !has(key))
            .map(required_key)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options(manager: &str, force: bool) -> WriteOptions {
        WriteOptions {
            manager: manager.to_owned(),
            dry_run: false,
            force,
        }
    }

    fn config(body: Value) -> Object {
        let mut unknown = Vec::new();
        let object = Object::from_json(Kind::Secret, &body, &mut unknown).expect("valid body");
        assert!(unknown.is_empty(), "{unknown:?}");
        object
    }

    fn secret(data: Value, labels: Value) -> Object {
        config(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "default", "labels": labels},
            "data": data,
        }))
    }

    fn apply(state: &mut State, manager: &str, force: bool, object: Object) -> Result<Written, ApiError> {
        state.apply(
            Kind::Secret,
            Some("default"),
            "db",
            object,
            &options(manager, force),
        )
    }

    #[test]
    fn apply_creates_then_noop_keeps_resource_version() {
        let mut state = State::new(100);
        let first = apply(
            &mut state,
            "agent",
            false,
            secret(json!({"a": "MQ=="}), json!({"x": "1"})),
        )
        .expect("create");
        assert!(first.created);
        assert_eq!(first.object.meta.managed_fields.len(), 1);
        assert_eq!(
            first.object.secret().and_then(|s| s.type_.clone()).as_deref(),
            Some("Opaque")
        );
        // type was defaulted, not applied: the applier does not own it.
        assert!(!first.object.meta.managed_fields[0].fields.contains(&Field::Type));
        let rv = first.object.meta.resource_version;
        let second = apply(
            &mut state,
            "agent",
            false,
            secret(json!({"a": "MQ=="}), json!({"x": "1"})),
        )
        .expect("noop");
        assert!(second.committed.is_none());
        assert_eq!(second.object.meta.resource_version, rv);
        assert_eq!(state.writes.noop_applies, 1);
    }

    #[test]
    fn apply_conflicts_shares_equal_values_and_force_moves_ownership() {
        let mut state = State::new(100);
        apply(
            &mut state,
            "kubectl",
            false,
            secret(json!({"user": "dQ==", "password": "cA=="}), json!({})),
        )
        .expect("create");
        // Same value for user, different for password: one conflict, on password only.
        let error = apply(
            &mut state,
            "other",
            false,
            secret(json!({"user": "dQ==", "password": "eA=="}), json!({})),
        )
        .expect_err("conflict");
        assert_eq!(error.code, 409);
        assert_eq!(
            error.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.password"
        );
        let causes = &error.to_json()["details"]["causes"];
        assert_eq!(causes.as_array().map(Vec::len), Some(1));
        assert_eq!(causes[0]["field"], ".data.password");
        assert_eq!(causes[0]["reason"], "FieldManagerConflict");

        let forced = apply(
            &mut state,
            "other",
            true,
            secret(json!({"user": "dQ==", "password": "eA=="}), json!({})),
        )
        .expect("force");
        assert_eq!(forced.object.data("password"), Some(&b"x"[..]));
        let owners = |field: &Field| -> Vec<String> {
            forced
                .object
                .meta
                .managed_fields
                .iter()
                .filter(|e| e.fields.contains(field))
                .map(|e| e.manager.clone())
                .collect()
        };
        assert_eq!(owners(&Field::Data("password".into())), vec!["other".to_owned()]);
        assert_eq!(
            owners(&Field::Data("user".into())),
            vec!["kubectl".to_owned(), "other".to_owned()]
        );
    }

    #[test]
    fn apply_removes_fields_no_longer_applied_unless_shared() {
        let mut state = State::new(100);
        apply(
            &mut state,
            "a",
            false,
            secret(json!({"k1": "MQ==", "k2": "Mg=="}), json!({"l": "v"})),
        )
        .expect("create");
        apply(&mut state, "b", false, secret(json!({"k2": "Mg=="}), json!({}))).expect("b shares k2");
        let after = apply(&mut state, "a", false, secret(json!({}), json!({}))).expect("a drops all");
        assert_eq!(after.object.data("k1"), None, "k1 only a owned: removed");
        assert_eq!(after.object.data("k2"), Some(&b"2"[..]), "k2 shared with b: kept");
        assert!(after.object.meta.labels.is_empty());
    }

    #[test]
    fn update_steals_fields_and_apply_then_conflicts_with_the_editor() {
        let mut state = State::new(100);
        apply(
            &mut state,
            "agent",
            false,
            secret(json!({"k": "MQ=="}), json!({})),
        )
        .expect("create");
        let (written, _) = state
            .patch(
                Kind::Secret,
                Some("default"),
                "db",
                PatchType::Merge,
                &json!({"data": {"k": "Mg=="}}),
                &options("kubectl-edit", false),
            )
            .expect("patch");
        let editor = written
            .object
            .meta
            .managed_fields
            .iter()
            .find(|e| e.manager == "kubectl-edit")
            .expect("editor entry");
        assert_eq!(editor.operation, Operation::Update);
        assert!(editor.fields.contains(&Field::Data("k".into())));
        let error = apply(
            &mut state,
            "agent",
            false,
            secret(json!({"k": "MQ=="}), json!({})),
        )
        .expect_err("conflict");
        assert_eq!(error.code, 409);
        let repaired =
            apply(&mut state, "agent", true, secret(json!({"k": "MQ=="}), json!({}))).expect("force");
        assert_eq!(repaired.object.data("k"), Some(&b"1"[..]));
    }

    #[test]
    fn stale_update_conflicts_and_immutable_secret_refuses_data_changes() {
        let mut state = State::new(100);
        let created = apply(&mut state, "a", false, config(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"k": "MQ=="}, "immutable": true,
        })))
        .expect("create");
        let mut stale = (*created.object).clone();
        stale.meta.resource_version -= 1;
        let error = state
            .update(Some("default"), "db", stale, &options("u", false))
            .expect_err("stale");
        assert_eq!((error.code, error.reason), (409, "Conflict"));
        let error = apply(&mut state, "a", false, config(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"k": "Mg=="}, "immutable": true,
        })))
        .expect_err("immutable");
        assert_eq!(error.code, 422);
        assert!(
            error
                .message
                .contains("field is immutable when `immutable` is set"),
            "{}",
            error.message
        );
    }

    #[test]
    fn history_window_expires_old_resource_versions() {
        let mut state = State::new(2);
        let start = state.resource_version();
        for value in ["MQ==", "Mg==", "Mw=="] {
            apply(&mut state, "a", false, secret(json!({"k": value}), json!({}))).expect("apply");
        }
        assert_eq!(state.events_after(start + 1).map(|e| e.len()).ok(), Some(2));
        let error = state.events_after(start).expect_err("too old");
        assert_eq!((error.code, error.reason), (410, "Expired"));
    }

    #[test]
    fn missing_namespace_and_permissions() {
        let mut state = State::new(10);
        let body = config(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}}));
        let error = state
            .apply(Kind::Secret, Some("nope"), "db", body, &options("a", false))
            .expect_err("missing namespace");
        assert_eq!(
            (error.code, error.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );
        let perms = Permissions::none("agent")
            .allow(&[Verb::Get, Verb::Patch], &[Kind::Secret], &["apps"])
            .allow_named(&[Verb::Get], &[Kind::Secret], &["own"], &["credential"]);
        assert!(perms.allows(Verb::Patch, Kind::Secret, Some("apps")));
        assert!(perms.allows_named(Verb::Get, Kind::Secret, Some("own"), Some("credential")));
        assert!(!perms.allows_named(Verb::Get, Kind::Secret, Some("own"), Some("other")));
        assert!(
            !perms.allows(Verb::Get, Kind::Secret, Some("own")),
            "a named rule needs a name"
        );
        assert!(!perms.allows(Verb::Patch, Kind::Secret, Some("other")));
        assert!(!perms.allows(Verb::Delete, Kind::Secret, Some("apps")));
        assert!(!perms.allows(Verb::List, Kind::Namespace, None));
    }

    #[test]
    fn an_empty_namespace_in_the_body_takes_the_requests() {
        let mut state = State::new(10);
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": ""}});
        let written = state
            .create(Some("default"), config(body), &options("kubectl", false))
            .expect("created");
        assert_eq!(written.object.meta.namespace.as_deref(), Some("default"));
        let body =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "other"}});
        let error = state
            .create(Some("default"), config(body), &options("kubectl", false))
            .expect_err("mismatch");
        assert_eq!(error.code, 400);
    }

    #[test]
    fn secret_types_require_their_keys() {
        let mut state = State::new(10);
        let cases = [
            (
                json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "YQ=="}}),
                Some("data[tls.key]"),
            ),
            (
                json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "YQ==", "tls.key": "YQ=="}}),
                None,
            ),
            (
                json!({"type": "kubernetes.io/dockerconfigjson", "data": {}}),
                Some("data[.dockerconfigjson]"),
            ),
            // "notjson" in base64: present but not JSON.
            (
                json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "bm90anNvbg=="}}),
                Some("data[.dockerconfigjson]"),
            ),
            (
                json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}),
                None,
            ),
            (
                json!({"type": "kubernetes.io/basic-auth", "data": {}}),
                Some("data[username]"),
            ),
            (
                json!({"type": "kubernetes.io/ssh-auth", "data": {}}),
                Some("data[ssh-privatekey]"),
            ),
            (json!({"type": "example.com/custom", "data": {}}), None),
        ];
        for (index, (fields, expected)) in cases.into_iter().enumerate() {
            let mut body =
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("s{index}")}});
            patch::merge(&mut body, &fields);
            let result = state.create(Some("default"), config(body), &options("a", false));
            match expected {
                None => assert!(result.is_ok(), "case {index}: {result:?}"),
                Some(field) => {
                    let error = result.expect_err("invalid");
                    assert_eq!(error.code, 422, "case {index}");
                    assert!(error.message.contains(field), "case {index}: {}", error.message);
                    assert!(
                        !error.message.contains("notjson"),
                        "a value leaked into {}",
                        error.message
                    );
                }
            }
        }
    }

    #[test]
    fn create_with_generate_name_picks_a_name() {
        let mut state = State::new(10);
        let body =
            config(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "tok-"}}));
        let written = state
            .create(Some("default"), body, &options("a", false))
            .expect("create");
        let name = &written.object.meta.name;
        assert!(name.starts_with("tok-") && name.len() == 9, "{name}");
        assert!(written.object.meta.generate_name.is_none());
        let body = config(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}));
        let error = state
            .create(Some("default"), body, &options("a", false))
            .expect_err("no name");
        assert_eq!(error.code, 422);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_secrets() {
        let mut state = State::new(10);
        apply(&mut state, "a", false, secret(json!({"k": "MQ=="}), json!({}))).expect("create");
        let (_, committed) = state
            .delete(Kind::Namespace, None, "default", &Preconditions::default(), false)
            .expect("delete");
        assert_eq!(committed.len(), 2);
        assert!(state.get(Kind::Secret, Some("default"), "db").is_none());
    }
}
