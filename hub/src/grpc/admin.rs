//! The `Admin` gRPC service behind the `keyfleet` CLI: inventory, enrollment tokens, specs,
//! status, rollouts, pins and sync-now, over the store.
//!
//! **Invariants:**
//! - Authentication ([`AdminAuth`]) is an admin bearer token (SHA-256 of the presented token
//!   compared in constant time with the configured digests) OR a client certificate chaining to
//!   the admin client CA (`--admin-client-ca`, see [`crate::grpc::client_ca`]). It is separate
//!   from agent authentication: a cluster credential is never accepted here, and a certificate
//!   never authenticates an agent.
//! - Every mutation writes the store, appends a change (`store.append_change`) and an audit event
//!   (actor [`AdminActor`]: `token` or `cert:<subject CN>`, action, subject; names only, never a
//!   value), then calls [`HubControl::changed`] so the running hub reacts at once. ApplySpecs
//!   writes its specs, changes and audit events in one transaction (all or nothing).
//! - Enrollment tokens are `kfe_` + 43 base64url characters from 32 random bytes; only their
//!   SHA-256 is stored, and the token is returned once.
//! - Bad input is `INVALID_ARGUMENT` naming the field; an unknown name is `NOT_FOUND`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use keyfleet_proto::v1;
use keyfleet_proto::v1::admin_server::{Admin, AdminServer};
use rand::RngCore as _;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::domain::{ClusterState, Labels, Sha256, SyncState};
use crate::grpc::client_ca::ClientCa;
use crate::grpc::convert::selector_from_proto;
use crate::spec::{self, FleetSecretSpec, Kind, Spec, SpecFile};
use crate::store::{
    ChangeKind, Cluster, PinRecord, RevisionRecord, RolloutRecord, SpecAction, SpecKind, SpecOutcome,
    SpecWrite, Store, StoreError, StoredSpec, SyncStatus,
};
use crate::sync::plan::{
    self, PlanCluster, PlanFleetSecret, PlanInput, PlanStatus, RevisionRef, RolloutProgress,
};

/// Actor recorded in the audit log for a call authenticated by an admin token.
pub const TOKEN_ACTOR: &str = "token";
/// Enrollment token lifetime when the request says 0.
pub const DEFAULT_TOKEN_TTL_SECONDS: u32 = 86_400;
/// Shortest enrollment token lifetime accepted.
pub const MIN_TOKEN_TTL_SECONDS: u32 = 60;
/// Longest enrollment token lifetime accepted.
pub const MAX_TOKEN_TTL_SECONDS: u32 = 604_800;
/// Prefix of enrollment tokens.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "kfe_";
/// Most inventory labels on one cluster.
pub const MAX_LABELS: usize = 64;
/// Most files in one ApplySpecs request.
pub const MAX_APPLY_FILES: usize = 1_000;
/// Longest file name in an ApplySpecs request, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 1_024;
/// Lagging clusters listed when the request says 0.
pub const DEFAULT_LAGGING_LIMIT: u32 = 20;
/// Most lagging clusters listed per FleetSecret.
pub const MAX_LAGGING_LIMIT: u32 = 1_000;
/// How long a disconnected cluster holds a rollout wave back in the status this service reports
/// (see [`crate::sync::plan`]); the runtime's default, change both with
/// [`AdminService::with_offline_grace`].
pub const OFFLINE_GRACE: TimeDelta = TimeDelta::minutes(5);

/// What a sync-now did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncNowOutcome {
    /// Stores that were polled.
    pub stores: Vec<String>,
    /// New Key Vault versions found.
    pub new_versions: u32,
}

/// The running hub, as the Admin service sees it (implemented by the serve runtime).
#[async_trait]
pub trait HubControl: Send + Sync + 'static {
    /// Specs, inventory, pins or rollouts changed in the store: re-read and re-plan now.
    async fn changed(&self);
    /// Polls one SecretStore (or all when `None`) now.
    async fn sync_now(&self, store: Option<String>) -> Result<SyncNowOutcome, Status>;
    /// Health of the last poll of each SecretStore, by name (absent: not polled yet).
    async fn store_health(&self) -> BTreeMap<String, StoreHealth> {
        BTreeMap::new()
    }
}

/// Outcome of a SecretStore's last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// Whether it succeeded.
    pub healthy: bool,
    /// Why it failed (names only, never a value); empty when healthy.
    pub last_error: String,
}

/// Who made an Admin call, as the audit log names it: [`TOKEN_ACTOR`] or `cert:<subject CN>`.
/// [`AdminAuth`] puts it in the request extensions of every call it lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminActor(String);

impl AdminActor {
    /// The audit log's name for this caller.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller [`AdminAuth`] authenticated (refused when the service runs without it).
fn actor_of<T>(request: &Request<T>) -> Result<AdminActor, Status> {
    request
        .extensions()
        .get::<AdminActor>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the Admin service runs without authentication"))
}

/// Authenticates Admin calls: `authorization: Bearer <admin token>` checked against the SHA-256
/// digests of the admin tokens, or a TLS client certificate chaining to the admin client CA.
/// Either one is enough; a valid certificate names the caller even when a token is sent too.
#[derive(Clone)]
pub struct AdminAuth {
    digests: Arc<[Sha256]>,
    client_ca: Option<ClientCa>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.digests.len())
            .field("client_ca", &self.client_ca.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// Accepts the tokens whose SHA-256 is in `token_sha256s` (none: only certificates, when
    /// [`AdminAuth::with_client_ca`] is set; else every call is refused).
    pub fn new(token_sha256s: impl IntoIterator<Item = Sha256>) -> Self {
        Self {
            digests: token_sha256s.into_iter().collect(),
            client_ca: None,
        }
    }

    /// Also accepts callers presenting a client certificate issued by `client_ca`.
    #[must_use]
    pub fn with_client_ca(mut self, client_ca: ClientCa) -> Self {
        self.client_ca = Some(client_ca);
        self
    }

    /// Whether `token` is an admin token. Compares every digest, in constant time each.
    pub fn accepts(&self, token: &str) -> bool {
        let presented = Sha256::of(token.as_bytes());
        self.digests.iter().fold(false, |found, digest| {
            found | constant_time_eq(&digest.0, &presented.0)
        })
    }

    /// The caller, or why it is refused.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<AdminActor, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        // Only with a configured CA: without one the listener asks for no certificate, and a
        // certificate is never trusted unverified.
        let certificate = match (&self.client_ca, request.peer_certs()) {
            (Some(client_ca), Some(chain)) if !chain.is_empty() => Some(client_ca.verify(&chain)),
            _ => None,
        };
        match (token, certificate) {
            (_, Some(Ok(name))) => Ok(AdminActor(name)),
            (Some(token), _) if self.accepts(token) => Ok(AdminActor(TOKEN_ACTOR.to_owned())),
            (Some(_), Some(Err(reason))) => Err(Status::unauthenticated(format!(
                "the admin token is not accepted, and neither is the client certificate: {reason}"
            ))),
            (Some(_), None) => Err(Status::unauthenticated("the admin token is not accepted")),
            (None, Some(Err(reason))) => Err(Status::unauthenticated(format!(
                "the client certificate is not accepted: {reason}"
            ))),
            (None, None) if self.client_ca.is_some() => Err(Status::unauthenticated(
                "missing admin credentials: send authorization: Bearer <admin token>, or a client \
                 certificate issued by the hub's admin client CA",
            )),
            (None, None) => Err(Status::unauthenticated(
                "missing admin token: send authorization: Bearer <admin token> (this hub \
                 authenticates no client certificate: it runs without --admin-client-ca)",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Interceptor for AdminAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let actor = self.authenticate(&request)?;
        request.extensions_mut().insert(actor);
        Ok(request)
    }
}

/// A new enrollment token: `kfe_` + base64url (no padding) of 32 random bytes.
pub fn new_enrollment_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{ENROLLMENT_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    zeroize::Zeroize::zeroize(&mut bytes);
    token
}

/// The Admin service.
#[derive(Clone)]
pub struct AdminService {
    store: Store,
    control: Arc<dyn HubControl>,
    offline_grace: TimeDelta,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The service wrapped in its authentication, ready for `Server::add_service` or `Routes`.
pub type AuthenticatedAdmin = InterceptedService<AdminServer<AdminService>, AdminAuth>;

impl AdminService {
    /// Over this store, telling `control` about every change.
    pub fn new(store: Store, control: Arc<dyn HubControl>) -> Self {
        Self {
            store,
            control,
            offline_grace: OFFLINE_GRACE,
        }
    }

    /// Uses the runtime's offline grace, so that the rollout status reported here is the decision
    /// the runtime takes.
    #[must_use]
    pub fn with_offline_grace(mut self, offline_grace: TimeDelta) -> Self {
        self.offline_grace = offline_grace;
        self
    }

    /// The tonic service, behind `auth`.
    pub fn into_server(self, auth: AdminAuth) -> AuthenticatedAdmin {
        AdminServer::with_interceptor(self, auth)
    }

    /// Appends the change and the audit event, then tells the hub.
    async fn record(
        &self,
        actor: &AdminActor,
        kind: Option<ChangeKind>,
        action: &str,
        subject: &str,
    ) -> Result<(), Status> {
        if let Some(kind) = kind {
            self.store
                .append_change(kind, subject)
                .await
                .map_err(store_status)?;
        }
        self.store
            .append_audit(actor.as_str(), action, subject, Utc::now())
            .await
            .map_err(store_status)?;
        tracing::info!(actor = actor.as_str(), action, subject, "admin change");
        if kind.is_some() {
            self.control.changed().await;
        }
        Ok(())
    }

    async fn cluster(&self, name: &str) -> Result<Cluster, Status> {
        self.store
            .cluster_by_name(name)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("cluster {name:?} not found")))
    }

    async fn issue_token(&self, cluster: &Cluster, ttl_seconds: u32) -> Result<v1::EnrollmentToken, Status> {
        let ttl = token_ttl(ttl_seconds)?;
        let token = new_enrollment_token();
        let expires = Utc::now() + TimeDelta::seconds(i64::from(ttl));
        self.store
            .issue_enrollment_token(cluster.id, &Sha256::of(token.as_bytes()), expires)
            .await
            .map_err(store_status)?;
        Ok(v1::EnrollmentToken {
            token,
            expires: Some(timestamp(expires)),
            cluster_name: cluster.name.clone(),
        })
    }

    /// Every stored FleetSecret, parsed, by name.
    async fn fleet_secrets(&self) -> Result<BTreeMap<String, (StoredSpec, Arc<FleetSecretSpec>)>, Status> {
        let mut secrets = BTreeMap::new();
        for stored in self.store.list_specs().await.map_err(store_status)? {
            if stored.kind != SpecKind::FleetSecret {
                continue;
            }
            match spec::parse_stored(Kind::FleetSecret, &stored.name, &stored.yaml) {
                Ok(Spec::FleetSecret(secret)) => {
                    secrets.insert(stored.name.clone(), (stored, Arc::new(secret)));
                }
                Ok(_) | Err(_) => {
                    tracing::error!(fleet_secret = %stored.name, "stored FleetSecret does not parse");
                    return Err(Status::internal(format!(
                        "stored FleetSecret {:?} does not parse",
                        stored.name
                    )));
                }
            }
        }
        Ok(secrets)
    }

    async fn fleet_secret(&self, name: &str) -> Result<(StoredSpec, Arc<FleetSecretSpec>), Status> {
        self.fleet_secrets()
            .await?
            .remove(name)
            .ok_or_else(|| Status::not_found(format!("fleetsecret {name:?} not found")))
    }

    async fn latest_revision(&self, name: &str) -> Result<Option<RevisionRecord>, Status> {
        Ok(self
            .store
            .latest_revisions()
            .await
            .map_err(store_status)?
            .into_iter()
            .find(|revision| revision.fleet_secret == name))
    }

    /// Status of the named FleetSecrets (all when `only` is `None`).
    async fn statuses(
        &self,
        only: Option<&str>,
        lagging_limit: u32,
    ) -> Result<Vec<v1::FleetSecretStatus>, Status> {
        let mut secrets = self.fleet_secrets().await?;
        if let Some(name) = only {
            secrets.retain(|key, _| key == name);
            if secrets.is_empty() {
                return Err(Status::not_found(format!("fleetsecret {name:?} not found")));
            }
        }
        let clusters = self.store.list_clusters(None).await.map_err(store_status)?;
        let rows = match only {
            Some(name) => self.store.status_for_fleet_secret(name).await,
            None => self.store.all_status().await,
        }
        .map_err(store_status)?;
        let revisions: HashMap<String, RevisionRecord> = self
            .store
            .latest_revisions()
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|revision| (revision.fleet_secret.clone(), revision))
            .collect();
        let rollouts: Vec<RolloutRecord> = self.store.rollouts().await.map_err(store_status)?;
        let pins: Vec<PinRecord> = self.store.pins().await.map_err(store_status)?;

        let plan_clusters: Vec<PlanCluster> = clusters.iter().map(plan_cluster).collect();
        let plan_secrets: Vec<PlanFleetSecret> = secrets
            .values()
            .map(|(_, secret)| PlanFleetSecret {
                spec: Arc::clone(secret),
                current: revisions.get(&secret.name).map(|revision| RevisionRef {
                    number: revision.revision,
                    sha256: revision.sha256,
                }),
                previous: None,
            })
            .collect();
        let plan_status: Vec<PlanStatus> = rows
            .iter()
            .map(|row| PlanStatus {
                cluster: row.cluster,
                fleet_secret: Arc::from(row.fleet_secret.as_str()),
                desired_revision: row.desired_revision,
                applied_revision: row.applied_revision,
                state: row.state,
            })
            .collect();
        let progress: Vec<RolloutProgress> = rollouts
            .iter()
            .map(|record| RolloutProgress {
                fleet_secret: record.fleet_secret.clone(),
                revision: record.revision,
                current_wave: record.current_wave,
                paused: record.paused,
                reason: record.reason.clone(),
            })
            .collect();
        let deleted = BTreeMap::new();
        let plan = plan::plan(&PlanInput {
            clusters: &plan_clusters,
            fleet_secrets: &plan_secrets,
            deleted: &deleted,
            status: &plan_status,
            rollouts: &progress,
            now: Utc::now(),
            offline_grace: self.offline_grace,
        });

        let mut rows_by_secret: HashMap<&str, HashMap<crate::domain::ClusterId, &SyncStatus>> =
            HashMap::new();
        for row in &rows {
            rows_by_secret
                .entry(row.fleet_secret.as_str())
                .or_default()
                .insert(row.cluster, row);
        }
        let limit = match lagging_limit {
            0 => DEFAULT_LAGGING_LIMIT,
            limit => limit.min(MAX_LAGGING_LIMIT),
        };
        let mut out = Vec::with_capacity(secrets.len());
        for (name, (_, secret)) in &secrets {
            let revision = revisions.get(name);
            let current = revision.map_or(0, |revision| revision.revision);
            let empty = HashMap::new();
            let rows = rows_by_secret.get(name.as_str()).unwrap_or(&empty);
            let mut counts = Counts::default();
            for cluster in &clusters {
                if cluster.state == ClusterState::Revoked || !secret.clusters.matches(&cluster.labels) {
                    continue;
                }
                counts.targeted += 1;
                let row = rows.get(&cluster.id);
                if current != 0 && row.is_some_and(|row| row.applied_revision == Some(current)) {
                    counts.applied += 1;
                } else if row.is_some_and(|row| row.state == SyncState::Error) {
                    counts.error += 1;
                } else if cluster.connected_replica.is_none() {
                    counts.offline += 1;
                } else {
                    counts.pending += 1;
                }
            }
            let decision = plan
                .rollouts
                .iter()
                .find(|decision| *decision.fleet_secret == **name);
            let lagging = self
                .store
                .lagging(Some(name), limit)
                .await
                .map_err(store_status)?;
            let connected: HashMap<_, _> = clusters
                .iter()
                .map(|cluster| (cluster.id, cluster.connected_replica.is_some()))
                .collect();
            out.push(v1::FleetSecretStatus {
                name: name.clone(),
                revision: current,
                sources: revision
                    .map(|revision| {
                        revision
                            .sources
                            .iter()
                            .map(|(remote_key, version)| v1::SourceVersion {
                                remote_key: remote_key.clone(),
                                version: version.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                targeted: counts.targeted,
                applied: counts.applied,
                pending: counts.pending,
                error: counts.error,
                offline: counts.offline,
                rollout: decision.map(|decision| v1::RolloutStatus {
                    state: decision.state.as_str().to_owned(),
                    current_wave: decision.current_wave,
                    waves: decision.waves,
                    reason: decision.reason.clone(),
                }),
                lagging: lagging
                    .iter()
                    .map(|row| secret_status(row, connected.get(&row.cluster).copied().unwrap_or(false)))
                    .collect(),
                pins: pins
                    .iter()
                    .filter(|pin| pin.fleet_secret == *name)
                    .map(|pin| v1::Pin {
                        remote_key: pin.remote_key.clone(),
                        version: pin.version.clone(),
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    async fn status_of(&self, name: &str) -> Result<v1::FleetSecretStatus, Status> {
        self.statuses(Some(name), DEFAULT_LAGGING_LIMIT)
            .await?
            .pop()
            .ok_or_else(|| Status::not_found(format!("fleetsecret {name:?} not found")))
    }

    async fn set_paused(
        &self,
        actor: &AdminActor,
        name: &str,
        paused: bool,
    ) -> Result<v1::FleetSecretStatus, Status> {
        require_name("fleet_secret", name)?;
        let (_, secret) = self.fleet_secret(name).await?;
        if secret.rollout.is_none() {
            return Err(Status::failed_precondition(format!(
                "fleetsecret {name:?} has no rollout strategy (it is applied everywhere at once)"
            )));
        }
        let Some(revision) = self.latest_revision(name).await? else {
            return Err(Status::failed_precondition(format!(
                "fleetsecret {name:?} has no revision yet: nothing is rolling out"
            )));
        };
        let existing = self
            .store
            .rollouts()
            .await
            .map_err(store_status)?
            .into_iter()
            .find(|record| record.fleet_secret == name && record.revision == revision.revision);
        let record = RolloutRecord {
            fleet_secret: name.to_owned(),
            revision: revision.revision,
            current_wave: existing.as_ref().map_or(0, |record| record.current_wave),
            paused,
            reason: if paused {
                plan::MANUAL_PAUSE_REASON.to_owned()
            } else {
                String::new()
            },
        };
        self.store.set_rollout(&record).await.map_err(store_status)?;
        let action = if paused { "rollout.pause" } else { "rollout.resume" };
        self.record(
            actor,
            Some(ChangeKind::Rollout),
            action,
            &format!("fleetsecret/{name}"),
        )
        .await?;
        self.status_of(name).await
    }
}

#[derive(Default)]
struct Counts {
    targeted: u32,
    applied: u32,
    pending: u32,
    error: u32,
    offline: u32,
}

fn plan_cluster(cluster: &Cluster) -> PlanCluster {
    PlanCluster {
        id: cluster.id,
        name: Arc::from(cluster.name.as_str()),
        labels: Arc::new(cluster.labels.clone()),
        state: cluster.state,
        connected: cluster.connected_replica.is_some(),
        last_seen: cluster.last_seen,
    }
}

/// Maps a store error to a gRPC status (database details are logged, not returned).
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound { what } => Status::not_found(format!("{what} not found")),
        StoreError::AlreadyExists { what } => Status::already_exists(format!("{what} already exists")),
        StoreError::Conflict(message) => Status::failed_precondition(message),
        other => {
            tracing::error!(error = %other, source = ?std::error::Error::source(&other), "store error");
            Status::internal("store error")
        }
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

fn require_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "required"));
    }
    Ok(())
}

fn check_cluster_name(name: &str) -> Result<(), Status> {
    require_name("name", name)?;
    if !spec::is_dns1123_label(name) {
        return Err(invalid(
            "name",
            format!(
                "{name:?} is not a DNS-1123 label (1-63 characters of a-z, 0-9 and -, alphanumeric at both ends)"
            ),
        ));
    }
    Ok(())
}

fn check_labels(field: &str, labels: &Labels) -> Result<(), Status> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            field,
            format!("at most {MAX_LABELS} labels, got {}", labels.len()),
        ));
    }
    for (key, value) in labels {
        if !spec::is_qualified_name(key) {
            return Err(invalid(
                &format!("{field}[{key}]"),
                "invalid key: [prefix/]name, name at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends",
            ));
        }
        if !spec::is_label_value(value) {
            return Err(invalid(
                &format!("{field}[{key}]"),
                format!(
                    "invalid value {value:?}: at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends"
                ),
            ));
        }
    }
    Ok(())
}

fn token_ttl(seconds: u32) -> Result<u32, Status> {
    match seconds {
        0 => Ok(DEFAULT_TOKEN_TTL_SECONDS),
        MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS => Ok(seconds),
        _ => Err(invalid(
            "token_ttl_seconds",
            format!(
                "{seconds} is outside {MIN_TOKEN_TTL_SECONDS}-{MAX_TOKEN_TTL_SECONDS} (0 means {DEFAULT_TOKEN_TTL_SECONDS})"
            ),
        )),
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn cluster_proto(cluster: &Cluster) -> v1::Cluster {
    v1::Cluster {
        id: cluster.id.to_string(),
        name: cluster.name.clone(),
        labels: cluster.labels.clone().into_iter().collect(),
        state: cluster.state.as_str().to_owned(),
        connected: cluster.connected_replica.is_some(),
        connected_replica: cluster.connected_replica.clone().unwrap_or_default(),
        agent_version: cluster.agent_version.clone().unwrap_or_default(),
        last_seen: cluster.last_seen.map(timestamp),
        created: Some(timestamp(cluster.created)),
    }
}

/// "applied", "pending", "error" or "offline" (a disconnected cluster short of its revision).
fn state_name(row: &SyncStatus, connected: bool) -> &'static str {
    match row.state {
        SyncState::Applied => "applied",
        SyncState::Error => "error",
        SyncState::Pending | SyncState::Undelivered if !connected => "offline",
        SyncState::Pending | SyncState::Undelivered => "pending",
    }
}

fn secret_status(row: &SyncStatus, connected: bool) -> v1::ClusterSecretStatus {
    v1::ClusterSecretStatus {
        fleet_secret: row.fleet_secret.clone(),
        desired_revision: row.desired_revision,
        applied_revision: row.applied_revision.unwrap_or(0),
        state: state_name(row, connected).to_owned(),
        last_error: row.last_error.clone().unwrap_or_default(),
        attempts: row.attempts,
        updated: Some(timestamp(row.updated)),
        cluster: row.cluster_name.clone(),
    }
}

fn spec_kind(kind: Kind) -> SpecKind {
    match kind {
        Kind::SecretStore => SpecKind::SecretStore,
        Kind::FleetSecret => SpecKind::FleetSecret,
    }
}

/// 32 hexadecimal characters, as Key Vault version ids are.
fn is_version_id(version: &str) -> bool {
    version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit())
}

#[async_trait]
impl Admin for AdminService {
    async fn create_cluster(
        &self,
        request: Request<v1::CreateClusterRequest>,
    ) -> Result<Response<v1::CreateClusterResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        check_cluster_name(&request.name)?;
        let labels: Labels = request.labels.into_iter().collect();
        check_labels("labels", &labels)?;
        token_ttl(request.token_ttl_seconds)?;
        let cluster = self
            .store
            .create_cluster(&request.name, &labels)
            .await
            .map_err(store_status)?;
        let token = self.issue_token(&cluster, request.token_ttl_seconds).await?;
        self.record(
            &actor,
            Some(ChangeKind::Cluster),
            "cluster.create",
            &format!("cluster/{}", cluster.name),
        )
        .await?;
        Ok(Response::new(v1::CreateClusterResponse {
            cluster: Some(cluster_proto(&cluster)),
            token: Some(token),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<v1::ListClustersRequest>,
    ) -> Result<Response<v1::ListClustersResponse>, Status> {
        let selector = request
            .into_inner()
            .selector
            .map(|selector| selector_from_proto(&selector))
            .transpose()
            .map_err(|error| invalid("selector", error))?;
        let clusters = self
            .store
            .list_clusters(selector.as_ref())
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::ListClustersResponse {
            clusters: clusters.iter().map(cluster_proto).collect(),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::GetClusterResponse>, Status> {
        let name = request.into_inner().name;
        require_name("name", &name)?;
        let cluster = self.cluster(&name).await?;
        let connected = cluster.connected_replica.is_some();
        let rows = self
            .store
            .status_for_cluster(cluster.id)
            .await
            .map_err(store_status)?;
        let revisions: HashMap<String, u64> = self
            .store
            .latest_revisions()
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|revision| (revision.fleet_secret, revision.revision))
            .collect();
        let mut secrets: BTreeMap<String, v1::ClusterSecretStatus> = rows
            .iter()
            .map(|row| (row.fleet_secret.clone(), secret_status(row, connected)))
            .collect();
        // Targeted FleetSecrets the sync engine has not recorded yet.
        if cluster.state != ClusterState::Revoked {
            for (name, (_, secret)) in self.fleet_secrets().await? {
                if secret.clusters.matches(&cluster.labels) && !secrets.contains_key(&name) {
                    let status = v1::ClusterSecretStatus {
                        fleet_secret: name.clone(),
                        desired_revision: revisions.get(&name).copied().unwrap_or(0),
                        state: if connected { "pending" } else { "offline" }.to_owned(),
                        cluster: cluster.name.clone(),
                        ..v1::ClusterSecretStatus::default()
                    };
                    secrets.insert(name, status);
                }
            }
        }
        Ok(Response::new(v1::GetClusterResponse {
            cluster: Some(cluster_proto(&cluster)),
            secrets: secrets.into_values().collect(),
        }))
    }

    async fn label_cluster(
        &self,
        request: Request<v1::LabelClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        require_name("name", &request.name)?;
        let set: Labels = request.set.into_iter().collect();
        check_labels("set", &set)?;
        if let Some(key) = request.remove.iter().find(|key| set.contains_key(*key)) {
            return Err(invalid("remove", format!("{key:?} is also in set")));
        }
        let cluster = self.cluster(&request.name).await?;
        let mut labels = cluster.labels.clone();
        for key in &request.remove {
            labels.remove(key);
        }
        labels.extend(set);
        check_labels("labels", &labels)?;
        let updated = self
            .store
            .set_cluster_labels(cluster.id, &labels)
            .await
            .map_err(store_status)?;
        self.record(
            &actor,
            Some(ChangeKind::Cluster),
            "cluster.label",
            &format!("cluster/{}", cluster.name),
        )
        .await?;
        Ok(Response::new(cluster_proto(&updated)))
    }

    async fn revoke_cluster(
        &self,
        request: Request<v1::RevokeClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().name;
        require_name("name", &name)?;
        let cluster = self.cluster(&name).await?;
        let revoked = self
            .store
            .revoke_cluster(cluster.id)
            .await
            .map_err(store_status)?;
        self.record(
            &actor,
            Some(ChangeKind::Cluster),
            "cluster.revoke",
            &format!("cluster/{name}"),
        )
        .await?;
        Ok(Response::new(cluster_proto(&revoked)))
    }

    async fn issue_enrollment_token(
        &self,
        request: Request<v1::IssueEnrollmentTokenRequest>,
    ) -> Result<Response<v1::EnrollmentToken>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        require_name("name", &request.name)?;
        token_ttl(request.token_ttl_seconds)?;
        let cluster = self.cluster(&request.name).await?;
        if cluster.state == ClusterState::Revoked {
            return Err(Status::failed_precondition(format!(
                "cluster {:?} is revoked",
                cluster.name
            )));
        }
        let token = self.issue_token(&cluster, request.token_ttl_seconds).await?;
        self.record(
            &actor,
            Some(ChangeKind::Cluster),
            "cluster.token",
            &format!("cluster/{}", cluster.name),
        )
        .await?;
        Ok(Response::new(token))
    }

    async fn apply_specs(
        &self,
        request: Request<v1::ApplySpecsRequest>,
    ) -> Result<Response<v1::ApplySpecsResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        if request.files.is_empty() {
            return Err(invalid("files", "at least one file is required"));
        }
        if request.files.len() > MAX_APPLY_FILES {
            return Err(invalid(
                "files",
                format!("at most {MAX_APPLY_FILES} files, got {}", request.files.len()),
            ));
        }
        if let Some((i, _)) = request
            .files
            .iter()
            .enumerate()
            .find(|(_, file)| file.name.is_empty() || file.name.len() > MAX_FILE_NAME_BYTES)
        {
            return Err(invalid(
                &format!("files[{i}].name"),
                format!("1-{MAX_FILE_NAME_BYTES} bytes"),
            ));
        }
        let stored = self.store.list_specs().await.map_err(store_status)?;
        let known_stores: BTreeSet<String> = stored
            .iter()
            .filter(|spec| spec.kind == SpecKind::SecretStore)
            .map(|spec| spec.name.clone())
            .collect();
        let files: Vec<SpecFile> = request
            .files
            .into_iter()
            .map(|file| SpecFile {
                name: file.name,
                content: file.content,
            })
            .collect();
        let loaded = spec::parse_files(&files, &known_stores)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let current: HashMap<(SpecKind, &str), &StoredSpec> = stored
            .iter()
            .map(|spec| ((spec.kind, spec.name.as_str()), spec))
            .collect();
        let writes: Vec<SpecWrite<'_>> = loaded
            .iter()
            .map(|spec| SpecWrite {
                kind: spec_kind(spec.spec.kind()),
                name: spec.spec.name(),
                yaml: &spec.canonical_yaml,
            })
            .collect();
        let outcomes: Vec<SpecOutcome> = if request.dry_run {
            writes
                .iter()
                .map(|write| match current.get(&(write.kind, write.name)) {
                    None => SpecOutcome {
                        generation: 1,
                        action: SpecAction::Created,
                    },
                    Some(existing) if existing.yaml == write.yaml => SpecOutcome {
                        generation: existing.generation,
                        action: SpecAction::Unchanged,
                    },
                    Some(existing) => SpecOutcome {
                        generation: existing.generation + 1,
                        action: SpecAction::Configured,
                    },
                })
                .collect()
        } else {
            // All or nothing: the specs, their change-log rows and audit rows in one transaction.
            self.store
                .apply_specs(&writes, actor.as_str())
                .await
                .map_err(store_status)?
        };
        let mut objects = Vec::with_capacity(writes.len());
        let mut changed = false;
        for (write, outcome) in writes.iter().zip(&outcomes) {
            if !request.dry_run && outcome.action != SpecAction::Unchanged {
                tracing::info!(
                    actor = actor.as_str(),
                    action = outcome.action.as_str(),
                    subject = %write.subject(),
                    generation = outcome.generation,
                    "spec applied"
                );
                changed = true;
            }
            objects.push(v1::AppliedObject {
                kind: write.kind.as_str().to_owned(),
                name: write.name.to_owned(),
                generation: outcome.generation,
                action: outcome.action.as_str().to_owned(),
            });
        }
        if changed {
            self.control.changed().await;
        }
        Ok(Response::new(v1::ApplySpecsResponse { objects }))
    }

    async fn list_stores(
        &self,
        _request: Request<v1::ListStoresRequest>,
    ) -> Result<Response<v1::ListStoresResponse>, Status> {
        let health = self.control.store_health().await;
        let mut stores = Vec::new();
        for stored in self.store.list_specs().await.map_err(store_status)? {
            if stored.kind != SpecKind::SecretStore {
                continue;
            }
            let Ok(Spec::SecretStore(store)) =
                spec::parse_stored(Kind::SecretStore, &stored.name, &stored.yaml)
            else {
                tracing::error!(store = %stored.name, "stored SecretStore does not parse");
                return Err(Status::internal(format!(
                    "stored SecretStore {:?} does not parse",
                    stored.name
                )));
            };
            let health = health.get(&stored.name);
            stores.push(v1::Store {
                name: stored.name.clone(),
                vault_url: store.vault_url.to_string(),
                auth_type: store.auth.as_str().to_owned(),
                generation: stored.generation,
                spec_yaml: stored.yaml.clone(),
                healthy: health.is_some_and(|health| health.healthy),
                last_error: match health {
                    Some(health) => health.last_error.clone(),
                    None => "not polled yet".to_owned(),
                },
            });
        }
        stores.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(v1::ListStoresResponse { stores }))
    }

    async fn list_fleet_secrets(
        &self,
        _request: Request<v1::ListFleetSecretsRequest>,
    ) -> Result<Response<v1::ListFleetSecretsResponse>, Status> {
        let revisions: HashMap<String, u64> = self
            .store
            .latest_revisions()
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|revision| (revision.fleet_secret, revision.revision))
            .collect();
        let fleet_secrets = self
            .fleet_secrets()
            .await?
            .into_iter()
            .map(|(name, (stored, secret))| v1::FleetSecret {
                revision: revisions.get(&name).copied().unwrap_or(0),
                store: secret.store_ref.clone(),
                target_name: secret.target.name.clone(),
                target_type: secret.target.secret_type.clone(),
                generation: stored.generation,
                spec_yaml: stored.yaml,
                name,
            })
            .collect();
        Ok(Response::new(v1::ListFleetSecretsResponse { fleet_secrets }))
    }

    async fn delete_fleet_secret(
        &self,
        request: Request<v1::DeleteFleetSecretRequest>,
    ) -> Result<Response<v1::DeleteFleetSecretResponse>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().name;
        require_name("name", &name)?;
        if !self
            .store
            .delete_spec(SpecKind::FleetSecret, &name)
            .await
            .map_err(store_status)?
        {
            return Err(Status::not_found(format!("fleetsecret {name:?} not found")));
        }
        self.store.remove_pins(&name, None).await.map_err(store_status)?;
        self.record(
            &actor,
            Some(ChangeKind::Spec),
            "fleetsecret.delete",
            &format!("fleetsecret/{name}"),
        )
        .await?;
        Ok(Response::new(v1::DeleteFleetSecretResponse {}))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let request = request.into_inner();
        if request.lagging_limit > MAX_LAGGING_LIMIT {
            return Err(invalid("lagging_limit", format!("at most {MAX_LAGGING_LIMIT}")));
        }
        let only = Some(request.fleet_secret.as_str()).filter(|name| !name.is_empty());
        let fleet_secrets = self.statuses(only, request.lagging_limit).await?;
        Ok(Response::new(v1::GetStatusResponse { fleet_secrets }))
    }

    async fn pause_rollout(
        &self,
        request: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().fleet_secret;
        self.set_paused(&actor, &name, true).await.map(Response::new)
    }

    async fn resume_rollout(
        &self,
        request: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().fleet_secret;
        self.set_paused(&actor, &name, false).await.map(Response::new)
    }

    async fn pin_version(
        &self,
        request: Request<v1::PinVersionRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        require_name("fleet_secret", &request.fleet_secret)?;
        if !is_version_id(&request.version) {
            return Err(invalid(
                "version",
                format!(
                    "{:?} is not a Key Vault version id (32 hexadecimal characters)",
                    request.version
                ),
            ));
        }
        let (_, secret) = self.fleet_secret(&request.fleet_secret).await?;
        let keys = secret.remote_keys();
        let remote_key = if request.remote_key.is_empty() {
            match keys.as_slice() {
                [only] => (*only).to_owned(),
                _ => {
                    return Err(invalid(
                        "remote_key",
                        format!(
                            "required: fleetsecret {:?} reads {} Key Vault secrets ({})",
                            request.fleet_secret,
                            keys.len(),
                            keys.join(", ")
                        ),
                    ));
                }
            }
        } else if keys.contains(&request.remote_key.as_str()) {
            request.remote_key.clone()
        } else {
            return Err(invalid(
                "remote_key",
                format!(
                    "fleetsecret {:?} does not read {:?} (it reads {})",
                    request.fleet_secret,
                    request.remote_key,
                    keys.join(", ")
                ),
            ));
        };
        self.store
            .set_pin(&request.fleet_secret, &remote_key, &request.version)
            .await
            .map_err(store_status)?;
        self.record(
            &actor,
            Some(ChangeKind::Pin),
            "pin.set",
            &format!("fleetsecret/{}/{remote_key}", request.fleet_secret),
        )
        .await?;
        self.status_of(&request.fleet_secret).await.map(Response::new)
    }

    async fn unpin_version(
        &self,
        request: Request<v1::UnpinVersionRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        require_name("fleet_secret", &request.fleet_secret)?;
        self.fleet_secret(&request.fleet_secret).await?;
        let key = Some(request.remote_key.as_str()).filter(|key| !key.is_empty());
        let removed = self
            .store
            .remove_pins(&request.fleet_secret, key)
            .await
            .map_err(store_status)?;
        if removed == 0 {
            let what = match key {
                Some(key) => format!("fleetsecret {:?} has no pin on {key:?}", request.fleet_secret),
                None => format!("fleetsecret {:?} has no pin", request.fleet_secret),
            };
            return Err(Status::not_found(what));
        }
        let subject = match key {
            Some(key) => format!("fleetsecret/{}/{key}", request.fleet_secret),
            None => format!("fleetsecret/{}", request.fleet_secret),
        };
        self.record(&actor, Some(ChangeKind::Pin), "pin.remove", &subject)
            .await?;
        self.status_of(&request.fleet_secret).await.map(Response::new)
    }

    async fn sync_now(
        &self,
        request: Request<v1::SyncNowRequest>,
    ) -> Result<Response<v1::SyncNowResponse>, Status> {
        let actor = actor_of(&request)?;
        let store = Some(request.into_inner().store).filter(|store| !store.is_empty());
        if let Some(name) = &store {
            let known = self
                .store
                .list_specs()
                .await
                .map_err(store_status)?
                .iter()
                .any(|spec| spec.kind == SpecKind::SecretStore && spec.name == *name);
            if !known {
                return Err(Status::not_found(format!("store {name:?} not found")));
            }
        }
        let subject = store.as_ref().map_or_else(
            || "secretstore/*".to_owned(),
            |name| format!("secretstore/{name}"),
        );
        let outcome = self.control.sync_now(store).await?;
        self.record(&actor, None, "sync-now", &subject).await?;
        Ok(Response::new(v1::SyncNowResponse {
            stores: outcome.stores,
            new_versions: outcome.new_versions,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_tokens_are_prefixed_base64url_of_32_bytes() {
        let token = new_enrollment_token();
        let body = token.strip_prefix(ENROLLMENT_TOKEN_PREFIX).expect("kfe_ prefix");
        assert_eq!(body.len(), 43);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .expect("base64url");
        assert_eq!(bytes.len(), 32);
        assert_ne!(new_enrollment_token(), token);
    }

    #[test]
    fn auth_accepts_only_configured_tokens() {
        let auth = AdminAuth::new([Sha256::of(b"kfa_one"), Sha256::of(b"kfa_two")]);
        assert!(auth.accepts("kfa_one"));
        assert!(auth.accepts("kfa_two"));
        assert!(!auth.accepts("kfa_three"));
        assert!(!auth.accepts(""));
        assert!(
            !AdminAuth::new([]).accepts("kfa_one"),
            "no configured token refuses everything"
        );
        let printed = format!("{auth:?}");
        assert_eq!(printed, "AdminAuth { tokens: 2, client_ca: false }");
    }

    #[test]
    fn the_interceptor_wants_a_bearer_admin_token() {
        let mut auth = AdminAuth::new([Sha256::of(b"kfa_one")]);
        let with = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().expect("ascii"));
            }
            request
        };
        let accepted = auth.call(with(Some("Bearer kfa_one"))).expect("accepted");
        assert_eq!(
            accepted.extensions().get::<AdminActor>().map(AdminActor::as_str),
            Some(TOKEN_ACTOR),
            "the interceptor names the caller for the audit log"
        );
        assert!(
            auth.call(with(Some("bearer  kfa_one"))).is_ok(),
            "the scheme is case-insensitive"
        );
        for value in [
            None,
            Some("Bearer kfa_two"),
            Some("kfa_one"),
            Some("Basic kfa_one"),
        ] {
            let status = auth.call(with(value)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value:?}");
            assert!(!status.message().contains("kfa_"), "{}", status.message());
        }
    }

    #[test]
    fn ttl_and_versions_are_checked() {
        assert_eq!(token_ttl(0).expect("default"), DEFAULT_TOKEN_TTL_SECONDS);
        assert_eq!(token_ttl(60).expect("min"), 60);
        assert_eq!(token_ttl(604_800).expect("max"), 604_800);
        for bad in [59, 604_801] {
            let status = token_ttl(bad).expect_err("out of range");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().starts_with("token_ttl_seconds: "),
                "{}",
                status.message()
            );
        }
        assert!(is_version_id("0123456789abcdef0123456789ABCDEF"));
        assert!(!is_version_id("0123"));
        assert!(!is_version_id("0123456789abcdef0123456789abcdeg"));
    }
}
