//! The Admin API client the loadtest uses, as `keyfleet` CLI commands do: add clusters, apply
//! specs, ask for a sync, read status.

use std::time::Duration;

use keyfleet_proto::v1::admin_client::AdminClient;
use keyfleet_proto::v1::{self as v1};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Errors talking to the Admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The hub URL or its TLS settings were rejected.
    #[error("invalid hub URL {0}")]
    Url(String, #[source] tonic::transport::Error),
    /// Connecting to the hub failed.
    #[error("cannot connect to the hub at {0}")]
    Connect(String, #[source] tonic::transport::Error),
    /// An Admin RPC returned an error status.
    #[error("{call} failed")]
    Call {
        /// The RPC, e.g. `CreateCluster`.
        call: &'static str,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// The admin token cannot go into an `authorization` header.
    #[error("invalid admin token")]
    Token,
}

/// An authenticated Admin client (cheap to clone).
#[derive(Clone)]
pub struct Admin {
    client: AdminClient<InterceptedService<Channel, SharedInterceptor>>,
}

/// Adds `authorization: Bearer <admin token>` to every call.
#[derive(Clone)]
pub struct SharedInterceptor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for SharedInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

impl Admin {
    /// Connects over TLS, pinning `ca_pem` (the hub's development CA), as `localhost`.
    pub async fn connect(url: &str, ca_pem: &str, token: &str) -> Result<Self, AdminError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|error| AdminError::Url(url.to_owned(), error))?
            .tls_config(tls)
            .map_err(|error| AdminError::Url(url.to_owned(), error))?
            .connect_timeout(Duration::from_secs(10))
            // Every call is bounded: a hub that accepts a call and never answers fails the run
            // with the call's name instead of holding it.
            .timeout(Duration::from_secs(60))
            .http2_keep_alive_interval(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| AdminError::Connect(url.to_owned(), error))?;
        let value = format!("Bearer {token}").parse().map_err(|_| AdminError::Token)?;
        let client = AdminClient::with_interceptor(channel, SharedInterceptor(value))
            .max_decoding_message_size(keyfleet_proto::limits::MAX_MESSAGE_BYTES);
        Ok(Self { client })
    }

    /// `keyfleet cluster add NAME --label …`: the cluster and its one-time enrollment token.
    pub async fn add_cluster(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<v1::CreateClusterResponse, AdminError> {
        let request = v1::CreateClusterRequest {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            token_ttl_seconds: 0,
        };
        self.client
            .clone()
            .create_cluster(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|source| AdminError::Call {
                call: "CreateCluster",
                source,
            })
    }

    /// `keyfleet cluster list`: how many clusters the hub's store holds.
    pub async fn cluster_count(&self) -> Result<usize, AdminError> {
        self.client
            .clone()
            .list_clusters(v1::ListClustersRequest { selector: None })
            .await
            .map(|response| response.into_inner().clusters.len())
            .map_err(|source| AdminError::Call {
                call: "ListClusters",
                source,
            })
    }

    /// `keyfleet apply -f`.
    pub async fn apply(&self, files: Vec<v1::SpecFile>) -> Result<v1::ApplySpecsResponse, AdminError> {
        self.client
            .clone()
            .apply_specs(v1::ApplySpecsRequest {
                files,
                dry_run: false,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|source| AdminError::Call {
                call: "ApplySpecs",
                source,
            })
    }

    /// `keyfleet sync-now`.
    pub async fn sync_now(&self) -> Result<v1::SyncNowResponse, AdminError> {
        self.client
            .clone()
            .sync_now(v1::SyncNowRequest { store: String::new() })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|source| AdminError::Call {
                call: "SyncNow",
                source,
            })
    }

    /// The current revision of `fleet_secret` (0: none yet), from `ListFleetSecrets`: a few small
    /// reads on the hub, where `GetStatus` counts every cluster (the rotation's CPU window polls
    /// this one).
    pub async fn revision(&self, fleet_secret: &str) -> Result<u64, AdminError> {
        let response = self
            .client
            .clone()
            .list_fleet_secrets(v1::ListFleetSecretsRequest::default())
            .await
            .map_err(|source| AdminError::Call {
                call: "ListFleetSecrets",
                source,
            })?;
        Ok(response
            .into_inner()
            .fleet_secrets
            .into_iter()
            .find(|secret| secret.name == fleet_secret)
            .map_or(0, |secret| secret.revision))
    }

    /// `keyfleet status NAME`.
    pub async fn status(
        &self,
        fleet_secret: &str,
        lagging: u32,
    ) -> Result<Option<v1::FleetSecretStatus>, AdminError> {
        let response = self
            .client
            .clone()
            .get_status(v1::GetStatusRequest {
                fleet_secret: fleet_secret.to_owned(),
                lagging_limit: lagging,
            })
            .await
            .map_err(|source| AdminError::Call {
                call: "GetStatus",
                source,
            })?;
        Ok(response.into_inner().fleet_secrets.into_iter().next())
    }

    /// `keyfleet drift --since SINCE`: repaired drift, newest first.
    pub async fn drift(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<v1::DriftEntry>, AdminError> {
        self.client
            .clone()
            .list_drift(v1::ListHistoryRequest {
                since: Some(prost_types::Timestamp {
                    seconds: since.timestamp(),
                    nanos: 0,
                }),
                limit: 10_000,
                ..v1::ListHistoryRequest::default()
            })
            .await
            .map(|response| response.into_inner().entries)
            .map_err(|source| AdminError::Call {
                call: "ListDrift",
                source,
            })
    }

    /// `keyfleet cluster show NAME`.
    pub async fn cluster(&self, name: &str) -> Result<v1::GetClusterResponse, AdminError> {
        self.client
            .clone()
            .get_cluster(v1::GetClusterRequest {
                name: name.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|source| AdminError::Call {
                call: "GetCluster",
                source,
            })
    }
}
