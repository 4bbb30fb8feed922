//! The `Admin` gRPC service behind the `keyfleet` CLI. It authenticates the caller
//! ([`AdminAuth`], `admin/auth.rs`), checks what only the wire can get wrong (selectors, enums),
//! calls the Admin use case ([`crate::sync::admin::Admin`]) and converts its domain view to
//! proto. Errors map to gRPC codes in [`crate::grpc::status`].
//!
//! **Invariants:** the caller ([`AdminActor`]: `token` or `cert:<subject CN>`) is the actor every
//! mutation records; a use case never sees a proto type; bad input is `INVALID_ARGUMENT` naming
//! the field, an unknown name `NOT_FOUND`.

mod auth;
mod history;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use keyfleet_proto::v1;
use keyfleet_proto::v1::admin_server::{Admin as AdminApi, AdminServer};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use auth::actor_of;
pub use auth::{AdminActor, AdminAuth, TOKEN_ACTOR};

use crate::domain::Labels;
use crate::grpc::convert::selector_from_proto;
use crate::grpc::status;
use crate::spec::SpecFile;
use crate::store::Cluster;
use crate::store::Store;
use crate::sync::admin::{Admin, AdminError, ClusterSecretView, FleetSecretStatus, IssuedToken};
use crate::sync::control::HubControl;

/// The Admin service.
#[derive(Clone, Debug)]
pub struct AdminService {
    admin: Admin,
}

/// The service wrapped in its authentication, ready for `Server::add_service` or `Routes`.
pub type AuthenticatedAdmin = InterceptedService<AdminServer<AdminService>, AdminAuth>;

impl AdminService {
    /// Over this store, telling `control` (the running engine) about every change.
    pub fn new(store: Store, control: Arc<dyn HubControl>) -> Self {
        Self {
            admin: Admin::new(store, control),
        }
    }

    /// Uses the engine's offline grace, so that the rollout status reported here is the decision
    /// the engine takes.
    #[must_use]
    pub fn with_offline_grace(mut self, offline_grace: TimeDelta) -> Self {
        self.admin = self.admin.with_offline_grace(offline_grace);
        self
    }

    /// The `NearExpiry` threshold of FleetSecrets that set none (`--near-expiry-threshold`).
    #[must_use]
    pub fn with_near_expiry_threshold(mut self, threshold: std::time::Duration) -> Self {
        self.admin = self.admin.with_near_expiry_threshold(threshold);
        self
    }

    /// The Admin use cases this service serves (shared with the metrics refresh).
    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    /// The tonic service, behind `auth`.
    pub fn into_server(self, auth: AdminAuth) -> AuthenticatedAdmin {
        AdminServer::with_interceptor(self, auth)
    }
}

fn admin_err(error: AdminError) -> Status {
    status::admin(error)
}

#[async_trait]
impl AdminApi for AdminService {
    #[tracing::instrument(name = "admin.CreateCluster", skip_all)]
    async fn create_cluster(
        &self,
        request: Request<v1::CreateClusterRequest>,
    ) -> Result<Response<v1::CreateClusterResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let labels: Labels = request.labels.into_iter().collect();
        let (cluster, token) = self
            .admin
            .create_cluster(actor.as_str(), &request.name, &labels, request.token_ttl_seconds)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::CreateClusterResponse {
            cluster: Some(self.cluster_proto(&cluster)),
            token: Some(token_proto(token)),
        }))
    }

    #[tracing::instrument(name = "admin.ListClusters", skip_all)]
    async fn list_clusters(
        &self,
        request: Request<v1::ListClustersRequest>,
    ) -> Result<Response<v1::ListClustersResponse>, Status> {
        let selector = request
            .into_inner()
            .selector
            .map(|selector| selector_from_proto(&selector))
            .transpose()
            .map_err(|error| Status::invalid_argument(format!("selector: {error}")))?;
        let clusters = self
            .admin
            .list_clusters(selector.as_ref())
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::ListClustersResponse {
            clusters: clusters
                .iter()
                .map(|cluster| self.cluster_proto(cluster))
                .collect(),
        }))
    }

    #[tracing::instrument(name = "admin.GetCluster", skip_all)]
    async fn get_cluster(
        &self,
        request: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::GetClusterResponse>, Status> {
        let detail = self
            .admin
            .cluster_detail(&request.into_inner().name)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::GetClusterResponse {
            cluster: Some(cluster_proto(&detail.cluster, detail.connected)),
            secrets: detail.secrets.iter().map(secret_status_proto).collect(),
        }))
    }

    #[tracing::instrument(name = "admin.LabelCluster", skip_all)]
    async fn label_cluster(
        &self,
        request: Request<v1::LabelClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let set: Labels = request.set.into_iter().collect();
        let updated = self
            .admin
            .label_cluster(actor.as_str(), &request.name, set, &request.remove)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(self.cluster_proto(&updated)))
    }

    #[tracing::instrument(name = "admin.RevokeCluster", skip_all)]
    async fn revoke_cluster(
        &self,
        request: Request<v1::RevokeClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        let actor = actor_of(&request)?;
        let revoked = self
            .admin
            .revoke_cluster(actor.as_str(), &request.into_inner().name)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(self.cluster_proto(&revoked)))
    }

    #[tracing::instrument(name = "admin.IssueEnrollmentToken", skip_all)]
    async fn issue_enrollment_token(
        &self,
        request: Request<v1::IssueEnrollmentTokenRequest>,
    ) -> Result<Response<v1::EnrollmentToken>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let token = self
            .admin
            .issue_enrollment_token(actor.as_str(), &request.name, request.token_ttl_seconds)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(token_proto(token)))
    }

    #[tracing::instrument(name = "admin.ApplySpecs", skip_all)]
    async fn apply_specs(
        &self,
        request: Request<v1::ApplySpecsRequest>,
    ) -> Result<Response<v1::ApplySpecsResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let files: Vec<SpecFile> = request
            .files
            .into_iter()
            .map(|file| SpecFile {
                name: file.name,
                content: file.content,
            })
            .collect();
        let objects = self
            .admin
            .apply_specs(actor.as_str(), files, request.dry_run)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::ApplySpecsResponse {
            objects: objects
                .into_iter()
                .map(|object| v1::AppliedObject {
                    kind: object.kind.as_str().to_owned(),
                    name: object.name,
                    generation: object.generation,
                    action: object.action.as_str().to_owned(),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "admin.ListStores", skip_all)]
    async fn list_stores(
        &self,
        _request: Request<v1::ListStoresRequest>,
    ) -> Result<Response<v1::ListStoresResponse>, Status> {
        let stores = self.admin.list_stores().await.map_err(admin_err)?;
        Ok(Response::new(v1::ListStoresResponse {
            stores: stores
                .into_iter()
                .map(|store| v1::Store {
                    name: store.name,
                    vault_url: store.vault_url,
                    auth_type: store.auth_type.to_owned(),
                    generation: store.generation,
                    spec_yaml: store.spec_yaml,
                    healthy: store.healthy,
                    last_error: store.last_error,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "admin.ListFleetSecrets", skip_all)]
    async fn list_fleet_secrets(
        &self,
        _request: Request<v1::ListFleetSecretsRequest>,
    ) -> Result<Response<v1::ListFleetSecretsResponse>, Status> {
        let secrets = self.admin.list_fleet_secrets().await.map_err(admin_err)?;
        Ok(Response::new(v1::ListFleetSecretsResponse {
            fleet_secrets: secrets
                .into_iter()
                .map(|secret| v1::FleetSecret {
                    name: secret.name,
                    revision: secret.revision,
                    store: secret.store,
                    target_name: secret.target_name,
                    target_type: secret.target_type,
                    generation: secret.generation,
                    spec_yaml: secret.spec_yaml,
                    expires: secret.expires.map(timestamp),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "admin.DeleteFleetSecret", skip_all)]
    async fn delete_fleet_secret(
        &self,
        request: Request<v1::DeleteFleetSecretRequest>,
    ) -> Result<Response<v1::DeleteFleetSecretResponse>, Status> {
        let actor = actor_of(&request)?;
        self.admin
            .delete_fleet_secret(actor.as_str(), &request.into_inner().name)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::DeleteFleetSecretResponse {}))
    }

    async fn delete_store(
        &self,
        request: Request<v1::DeleteStoreRequest>,
    ) -> Result<Response<v1::DeleteStoreResponse>, Status> {
        let actor = actor_of(&request)?;
        self.admin
            .delete_store(actor.as_str(), &request.into_inner().name)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::DeleteStoreResponse {}))
    }

    #[tracing::instrument(name = "admin.GetStatus", skip_all)]
    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let request = request.into_inner();
        let only = Some(request.fleet_secret.as_str()).filter(|name| !name.is_empty());
        let statuses = self
            .admin
            .statuses(only, request.lagging_limit)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::GetStatusResponse {
            fleet_secrets: statuses.into_iter().map(fleet_secret_status_proto).collect(),
        }))
    }

    #[tracing::instrument(name = "admin.PauseRollout", skip_all)]
    async fn pause_rollout(
        &self,
        request: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().fleet_secret;
        self.admin
            .set_paused(actor.as_str(), &name, true)
            .await
            .map(|status| Response::new(fleet_secret_status_proto(status)))
            .map_err(admin_err)
    }

    #[tracing::instrument(name = "admin.ResumeRollout", skip_all)]
    async fn resume_rollout(
        &self,
        request: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().fleet_secret;
        self.admin
            .set_paused(actor.as_str(), &name, false)
            .await
            .map(|status| Response::new(fleet_secret_status_proto(status)))
            .map_err(admin_err)
    }

    #[tracing::instrument(name = "admin.PinVersion", skip_all)]
    async fn pin_version(
        &self,
        request: Request<v1::PinVersionRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        self.admin
            .pin_version(
                actor.as_str(),
                &request.fleet_secret,
                &request.remote_key,
                &request.version,
            )
            .await
            .map(|status| Response::new(fleet_secret_status_proto(status)))
            .map_err(admin_err)
    }

    #[tracing::instrument(name = "admin.UnpinVersion", skip_all)]
    async fn unpin_version(
        &self,
        request: Request<v1::UnpinVersionRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let key = Some(request.remote_key.as_str()).filter(|key| !key.is_empty());
        self.admin
            .unpin_version(actor.as_str(), &request.fleet_secret, key)
            .await
            .map(|status| Response::new(fleet_secret_status_proto(status)))
            .map_err(admin_err)
    }

    #[tracing::instrument(name = "admin.SyncNow", skip_all)]
    async fn sync_now(
        &self,
        request: Request<v1::SyncNowRequest>,
    ) -> Result<Response<v1::SyncNowResponse>, Status> {
        let actor = actor_of(&request)?;
        let store = Some(request.into_inner().store).filter(|store| !store.is_empty());
        let outcome = self
            .admin
            .sync_now(actor.as_str(), store)
            .await
            .map_err(admin_err)?;
        Ok(Response::new(v1::SyncNowResponse {
            stores: outcome.stores,
            new_versions: outcome.new_versions,
        }))
    }

    async fn list_history(
        &self,
        request: Request<v1::ListHistoryRequest>,
    ) -> Result<Response<v1::ListHistoryResponse>, Status> {
        actor_of(&request)?;
        let query = history::history_query(request.into_inner())?;
        let rows = self.admin.history(query).await.map_err(admin_err)?;
        Ok(Response::new(v1::ListHistoryResponse {
            entries: rows.into_iter().map(history::history_proto).collect(),
        }))
    }

    async fn list_drift(
        &self,
        request: Request<v1::ListHistoryRequest>,
    ) -> Result<Response<v1::ListDriftResponse>, Status> {
        actor_of(&request)?;
        let query = history::history_query(request.into_inner())?;
        let rows = self.admin.drift(query).await.map_err(admin_err)?;
        Ok(Response::new(v1::ListDriftResponse {
            entries: rows.into_iter().map(history::drift_proto).collect(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        actor_of(&request)?;
        let query = history::audit_query(request.into_inner())?;
        let events = self.admin.audit(query).await.map_err(admin_err)?;
        Ok(Response::new(v1::ListAuditResponse {
            events: events.into_iter().map(history::audit_proto).collect(),
        }))
    }

    async fn rollout_history(
        &self,
        request: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::RolloutHistoryResponse>, Status> {
        actor_of(&request)?;
        let name = request.into_inner().fleet_secret;
        let history = self.admin.rollout_history(&name).await.map_err(admin_err)?;
        Ok(Response::new(history::rollout_history_proto(history)))
    }

    async fn undo_rollout(
        &self,
        request: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::FleetSecretStatus>, Status> {
        let actor = actor_of(&request)?;
        let name = request.into_inner().fleet_secret;
        self.admin
            .undo_rollout(actor.as_str(), &name)
            .await
            .map(|status| Response::new(fleet_secret_status_proto(status)))
            .map_err(admin_err)
    }
}

// === conversions: domain views → proto ===

impl AdminService {
    fn cluster_proto(&self, cluster: &Cluster) -> v1::Cluster {
        cluster_proto(cluster, self.admin.connected(cluster))
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn cluster_proto(cluster: &Cluster, connected: bool) -> v1::Cluster {
    v1::Cluster {
        id: cluster.id.to_string(),
        name: cluster.name.clone(),
        labels: cluster.labels.clone().into_iter().collect(),
        state: cluster.state.as_str().to_owned(),
        connected,
        connected_replica: cluster.connected_replica.clone().unwrap_or_default(),
        agent_version: cluster.agent_version.clone().unwrap_or_default(),
        last_seen: cluster.last_seen.map(timestamp),
        created: Some(timestamp(cluster.created)),
    }
}

fn token_proto(token: IssuedToken) -> v1::EnrollmentToken {
    v1::EnrollmentToken {
        expires: Some(timestamp(token.expires)),
        cluster_name: token.cluster_name,
        token: token.token,
    }
}

fn secret_status_proto(view: &ClusterSecretView) -> v1::ClusterSecretStatus {
    v1::ClusterSecretStatus {
        fleet_secret: view.fleet_secret.clone(),
        desired_revision: view.desired_revision,
        applied_revision: view.applied_revision.unwrap_or(0),
        state: view.state.as_str().to_owned(),
        last_error: view.last_error.clone().unwrap_or_default(),
        attempts: view.attempts,
        updated: view.updated.map(timestamp),
        cluster: view.cluster.clone(),
    }
}

fn fleet_secret_status_proto(status: FleetSecretStatus) -> v1::FleetSecretStatus {
    v1::FleetSecretStatus {
        name: status.name,
        revision: status.revision,
        sources: status
            .sources
            .into_iter()
            .map(|source| v1::SourceVersion {
                remote_key: source.remote_key,
                version: source.version,
                expires: source.expires.map(timestamp),
                not_before: source.not_before.map(timestamp),
            })
            .collect(),
        targeted: status.counts.targeted,
        applied: status.counts.applied,
        pending: status.counts.pending,
        error: status.counts.error,
        offline: status.counts.offline,
        rollout: status.rollout.map(|rollout| v1::RolloutStatus {
            state: rollout.state.to_owned(),
            current_wave: rollout.current_wave,
            waves: rollout.waves,
            reason: rollout.reason,
        }),
        lagging: status.lagging.iter().map(secret_status_proto).collect(),
        pins: status
            .pins
            .into_iter()
            .map(|(remote_key, version)| v1::Pin { remote_key, version })
            .collect(),
        conditions: status
            .conditions
            .into_iter()
            .map(|condition| v1::Condition {
                r#type: condition.kind.as_str().to_owned(),
                message: condition.message,
            })
            .collect(),
        expires: status.expires.map(timestamp),
        near_expiry_threshold_seconds: status.near_expiry_threshold.as_secs(),
        drift: status.drift.reported,
        drift_unrepaired: status.drift.unrepaired,
    }
}
