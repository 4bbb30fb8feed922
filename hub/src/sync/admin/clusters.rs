//! Inventory use cases: add, list, show, label and revoke clusters, and issue enrollment tokens.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore as _;

use super::status::{ClusterSecretView, ViewState};
use super::{Admin, AdminError, invalid, require_name};
use crate::domain::{ClusterState, LabelSelector, Labels, Sha256};
use crate::spec;
use crate::store::{ChangeKind, Cluster};

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

/// An enrollment token, shown once. `Debug` hides the token.
pub struct IssuedToken {
    /// The token (a credential: printed once by the CLI, never logged).
    pub token: String,
    /// When it expires.
    pub expires: DateTime<Utc>,
    /// The cluster it enrolls.
    pub cluster_name: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires", &self.expires)
            .field("cluster_name", &self.cluster_name)
            .finish()
    }
}

/// A cluster with the status of every FleetSecret that targets it.
#[derive(Debug, Clone)]
pub struct ClusterDetail {
    /// The cluster.
    pub cluster: Cluster,
    /// Whether it is connected (the engine's definition).
    pub connected: bool,
    /// One row per targeted or recorded FleetSecret, by name.
    pub secrets: Vec<ClusterSecretView>,
}

impl Admin {
    /// Whether `cluster` is connected, as the engine counts it.
    pub fn connected(&self, cluster: &Cluster) -> bool {
        self.connectivity.connected(false, cluster, Utc::now())
    }

    /// Adds a cluster and issues its first enrollment token.
    pub async fn create_cluster(
        &self,
        actor: &str,
        name: &str,
        labels: &Labels,
        token_ttl_seconds: u32,
    ) -> Result<(Cluster, IssuedToken), AdminError> {
        check_cluster_name(name)?;
        check_labels("labels", labels)?;
        token_ttl(token_ttl_seconds)?;
        let cluster = self.store.create_cluster(name, labels).await?;
        let token = self.issue_token(&cluster, token_ttl_seconds).await?;
        self.record(
            actor,
            Some(ChangeKind::Cluster),
            "cluster.create",
            &format!("cluster/{}", cluster.name),
        )
        .await?;
        Ok((cluster, token))
    }

    /// The clusters `selector` matches (all without one), by name.
    pub async fn list_clusters(&self, selector: Option<&LabelSelector>) -> Result<Vec<Cluster>, AdminError> {
        Ok(self.store.list_clusters(selector).await?)
    }

    /// One cluster and the status of each FleetSecret it holds or should hold.
    pub async fn cluster_detail(&self, name: &str) -> Result<ClusterDetail, AdminError> {
        require_name("name", name)?;
        let cluster = self.cluster(name).await?;
        let connected = self.connected(&cluster);
        let rows = self.store.status_for_cluster(cluster.id).await?;
        let revisions = self.current_revisions().await?;
        let mut secrets: BTreeMap<String, ClusterSecretView> = rows
            .iter()
            .map(|row| (row.fleet_secret.clone(), ClusterSecretView::of(row, connected)))
            .collect();
        // Targeted FleetSecrets the sync engine has not recorded yet.
        if cluster.state != ClusterState::Revoked {
            for (name, (_, secret)) in self.fleet_secrets().await? {
                if secret.clusters.matches(&cluster.labels) && !secrets.contains_key(&name) {
                    let view = ClusterSecretView {
                        fleet_secret: name.clone(),
                        cluster: cluster.name.clone(),
                        desired_revision: revisions.get(&name).copied().unwrap_or(0),
                        applied_revision: None,
                        state: if connected {
                            ViewState::Pending
                        } else {
                            ViewState::Offline
                        },
                        last_error: None,
                        attempts: 0,
                        updated: None,
                    };
                    secrets.insert(name, view);
                }
            }
        }
        Ok(ClusterDetail {
            cluster,
            connected,
            secrets: secrets.into_values().collect(),
        })
    }

    /// Sets and removes inventory labels.
    pub async fn label_cluster(
        &self,
        actor: &str,
        name: &str,
        set: Labels,
        remove: &[String],
    ) -> Result<Cluster, AdminError> {
        require_name("name", name)?;
        check_labels("set", &set)?;
        if let Some(key) = remove.iter().find(|key| set.contains_key(*key)) {
            return Err(invalid("remove", format!("{key:?} is also in set")));
        }
        let cluster = self.cluster(name).await?;
        let mut labels = cluster.labels.clone();
        for key in remove {
            labels.remove(key);
        }
        labels.extend(set);
        check_labels("labels", &labels)?;
        let updated = self.store.set_cluster_labels(cluster.id, &labels).await?;
        self.record(
            actor,
            Some(ChangeKind::Cluster),
            "cluster.label",
            &format!("cluster/{}", cluster.name),
        )
        .await?;
        Ok(updated)
    }

    /// Revokes a cluster: its credential and stream are cut off on every replica.
    pub async fn revoke_cluster(&self, actor: &str, name: &str) -> Result<Cluster, AdminError> {
        require_name("name", name)?;
        let cluster = self.cluster(name).await?;
        // The store appends the change in the revocation's own transaction.
        let revoked = self.store.revoke_cluster(cluster.id).await?;
        self.record(actor, None, "cluster.revoke", &format!("cluster/{name}"))
            .await?;
        self.control.changed().await;
        Ok(revoked)
    }

    /// A new enrollment token for a cluster that is not revoked.
    pub async fn issue_enrollment_token(
        &self,
        actor: &str,
        name: &str,
        token_ttl_seconds: u32,
    ) -> Result<IssuedToken, AdminError> {
        require_name("name", name)?;
        token_ttl(token_ttl_seconds)?;
        let cluster = self.cluster(name).await?;
        if cluster.state == ClusterState::Revoked {
            return Err(AdminError::FailedPrecondition(format!(
                "cluster {:?} is revoked",
                cluster.name
            )));
        }
        let token = self.issue_token(&cluster, token_ttl_seconds).await?;
        self.record(
            actor,
            Some(ChangeKind::Cluster),
            "cluster.token",
            &format!("cluster/{}", cluster.name),
        )
        .await?;
        Ok(token)
    }

    async fn cluster(&self, name: &str) -> Result<Cluster, AdminError> {
        self.store
            .cluster_by_name(name)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("cluster {name:?} not found")))
    }

    async fn issue_token(&self, cluster: &Cluster, ttl_seconds: u32) -> Result<IssuedToken, AdminError> {
        let ttl = token_ttl(ttl_seconds)?;
        let token = new_enrollment_token();
        let expires = Utc::now() + TimeDelta::seconds(i64::from(ttl));
        self.store
            .issue_enrollment_token(cluster.id, &Sha256::of(token.as_bytes()), expires)
            .await?;
        Ok(IssuedToken {
            token,
            expires,
            cluster_name: cluster.name.clone(),
        })
    }
}

fn check_cluster_name(name: &str) -> Result<(), AdminError> {
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

/// Inventory labels: at most [`MAX_LABELS`], Kubernetes label syntax.
pub(crate) fn check_labels(field: &str, labels: &Labels) -> Result<(), AdminError> {
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

/// The token lifetime a request asks for (0: the default), checked.
pub(crate) fn token_ttl(seconds: u32) -> Result<u32, AdminError> {
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;

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
    fn an_issued_token_never_prints() {
        let token = IssuedToken {
            token: new_enrollment_token(),
            expires: Utc::now(),
            cluster_name: "prod-1".to_owned(),
        };
        assert!(!format!("{token:?}").contains("kfe_"));
    }

    #[test]
    fn ttls_are_checked() {
        assert_eq!(token_ttl(0).expect("default"), DEFAULT_TOKEN_TTL_SECONDS);
        assert_eq!(token_ttl(60).expect("min"), 60);
        assert_eq!(token_ttl(604_800).expect("max"), 604_800);
        for bad in [59, 604_801] {
            let error = token_ttl(bad).expect_err("out of range");
            assert!(error.to_string().starts_with("token_ttl_seconds: "), "{error}");
        }
    }
}
