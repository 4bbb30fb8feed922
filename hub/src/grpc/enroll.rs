//! `keyfleet.v1.Enrollment/Enroll`: a one-time enrollment token (`kfe_…`, from
//! `keyfleet cluster add`) is traded for the cluster's long-lived credential (`kfc_…`).
//!
//! Only hashes are stored: the token is looked up by `Sha256::of(token)` and consumed atomically;
//! the new credential's hash is stored and added to the in-memory [`Credentials`] index. An
//! unknown, used or expired token gets the same UNAUTHENTICATED answer (tokens cannot be probed);
//! the precise reason is logged on the hub. Neither token nor credential is ever logged or echoed.
//! A malformed token (not `kfe_` + 43 base64url characters) or agent version is refused first,
//! with INVALID_ARGUMENT and without taking an admission slot; well-formed ones then pass an
//! [`Admission`] bucket (they cost a store lookup); a refusal says when to come back, never more
//! than [`crate::grpc::admission::MAX_HINT`] away.

use chrono::Utc;
use keyfleet_proto::limits;
use keyfleet_proto::v1::{self, enrollment_server};
use tonic::{Request, Response, Status};

use crate::domain::Sha256;
use crate::fleet::credentials::{self, Credentials};
use crate::grpc::admission::Admission;
use crate::store::{Store, TokenRejection};
use crate::sync::admin::ENROLLMENT_TOKEN_PREFIX;

/// Enrollments doing store work at once on one replica. An enrollment is five statements in a row;
/// admitted at 500/s with a burst, a fleet enrolling at once (a first install of 10,000 clusters)
/// otherwise held every connection of the store's pool (16) for seconds, and the engine, the status
/// writer and the Admin API (`keyfleet status`) timed out waiting ("store unavailable"). Waiting
/// enrollments queue here, in memory, bounded by the admission burst.
const STORE_CONCURRENCY: usize = 4;

/// The answer for any token that cannot be used.
const REFUSED: &str = "enrollment token is unknown, already used or expired";

/// How long after its first use a token still enrolls its cluster again: an agent whose reply was
/// lost (a dropped connection, a crash before it stored the credential) retries with the same
/// token. The retry gets a fresh credential that replaces the undelivered one, and is audited as
/// `enroll.replay`. Long enough for an agent's backoff (at most 60 s) to come back several times,
/// short enough that a token found later is worthless.
pub const REPLAY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

fn well_formed(token: &str) -> bool {
    token.strip_prefix(ENROLLMENT_TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The Enrollment service.
pub struct EnrollService {
    store: Store,
    credentials: Credentials,
    admission: Admission,
    /// [`STORE_CONCURRENCY`] permits around the store work of an enrollment.
    store_slots: tokio::sync::Semaphore,
    replay_window: chrono::TimeDelta,
}

impl EnrollService {
    /// Enrollments are limited to `per_second` (burst `burst`) per replica.
    pub fn new(store: Store, credentials: Credentials, per_second: u32, burst: u32) -> Self {
        Self {
            store,
            credentials,
            admission: Admission::new(f64::from(per_second.max(1)), burst),
            store_slots: tokio::sync::Semaphore::new(STORE_CONCURRENCY),
            replay_window: REPLAY_WINDOW,
        }
    }

    /// How long a used token may enroll its cluster again ([`REPLAY_WINDOW`] by default; zero
    /// turns replays off).
    #[must_use]
    pub fn with_replay_window(mut self, window: chrono::TimeDelta) -> Self {
        self.replay_window = window;
        self
    }

    /// The tonic service to add to the server's routes.
    pub fn into_server(self) -> enrollment_server::EnrollmentServer<Self> {
        enrollment_server::EnrollmentServer::new(self).max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl enrollment_server::Enrollment for EnrollService {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        // The shape first: a malformed request costs no admission slot and no store lookup, so
        // an anonymous flood of garbage cannot push real enrollments back.
        let request = request.into_inner();
        if !well_formed(&request.token) {
            return Err(Status::invalid_argument(
                "token: expected \"kfe_\" followed by 43 base64url characters",
            ));
        }
        if request.agent_version.len() > limits::MAX_AGENT_VERSION_BYTES {
            return Err(Status::invalid_argument(format!(
                "agent_version: {} bytes, limit {}",
                request.agent_version.len(),
                limits::MAX_AGENT_VERSION_BYTES
            )));
        }
        if let Err(hint) = self.admission.check() {
            return Err(Admission::refusal("enrollments", hint));
        }
        // Never closed: the error arm cannot happen.
        let _slot = self
            .store_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("hub is shutting down"))?;
        let token_hash = Sha256::of(request.token.as_bytes());
        let mut replay = false;
        let cluster = match self.store.consume_enrollment_token(&token_hash, Utc::now()).await {
            Ok(Ok(cluster)) => cluster,
            Ok(Err(TokenRejection::Used)) if self.replay_window > chrono::TimeDelta::zero() => {
                let since = Utc::now() - self.replay_window;
                match self.store.recently_consumed_token(&token_hash, since).await {
                    Ok(Some(cluster)) => {
                        replay = true;
                        cluster
                    }
                    Ok(None) => {
                        tracing::warn!(reason = "already used", token = ?token_hash, "enrollment refused");
                        return Err(Status::unauthenticated(REFUSED));
                    }
                    Err(error) => return Err(crate::grpc::status::enroll_store(&error)),
                }
            }
            Ok(Err(rejection)) => {
                let reason = match rejection {
                    TokenRejection::Unknown => "unknown",
                    TokenRejection::Used => "already used",
                    TokenRejection::Expired => "expired",
                    TokenRejection::ClusterRevoked => "issued for a revoked cluster",
                };
                tracing::warn!(reason, token = ?token_hash, "enrollment refused");
                return Err(Status::unauthenticated(REFUSED));
            }
            Err(error) => return Err(crate::grpc::status::enroll_store(&error)),
        };
        let credential = credentials::new_credential();
        let credential_hash = Sha256::of(credential.as_bytes());
        match self.store.set_cluster_credential(cluster, &credential_hash).await {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict(_)) => {
                tracing::warn!(%cluster, "enrollment refused: cluster revoked meanwhile");
                return Err(Status::unauthenticated(REFUSED));
            }
            Err(error) => {
                tracing::error!(%cluster, "enrollment: cannot store the credential");
                return Err(crate::grpc::status::enroll_store(&error));
            }
        }
        self.credentials.insert(credential_hash, cluster);
        let name = match self.store.cluster_by_id(cluster).await {
            Ok(Some(record)) => record.name,
            Ok(None) | Err(_) => String::new(),
        };
        if let Err(error) = self
            .store
            .append_audit(
                &format!("cluster:{name}"),
                if replay { "enroll.replay" } else { "enroll" },
                &name,
                Utc::now(),
            )
            .await
        {
            tracing::warn!(%cluster, error = %error, "cannot audit an enrollment");
        }
        // Other replicas reload their credential index on a cluster change; until then the
        // agent's stream is refused there and it retries with backoff.
        if let Err(error) = self
            .store
            .append_change(crate::store::ChangeKind::Cluster, &name)
            .await
        {
            tracing::warn!(%cluster, error = %error, "cannot announce an enrollment to other replicas");
        }
        tracing::info!(%cluster, cluster_name = %name, agent_version = %request.agent_version,
            replay, "cluster enrolled");
        Ok(Response::new(v1::EnrollResponse {
            cluster_name: name,
            cluster_id: cluster.to_string(),
            credential,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_issued_tokens_are_well_formed() {
        let token = crate::sync::admin::new_enrollment_token();
        assert!(well_formed(&token), "{token}");
        assert_eq!(token.len(), 47);
        assert!(!well_formed(&token.replace("kfe_", "kfc_")));
        assert!(!well_formed("kfe_short"));
    }
}
