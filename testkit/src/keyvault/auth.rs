//! Entra's side of the emulator: principals, their permissions, and HMAC-signed JWTs (access tokens
//! it issues, federated service-account tokens it can mint for workload identity tests).
//! The emulator is the only verifier of its tokens.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The audience of Key Vault tokens (and the `resource` of the challenge).
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";
/// Audience Entra requires in a federated assertion.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Default issuer of federated (service account) tokens.
pub const DEFAULT_FEDERATED_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Default federated subject of the default principal.
pub const DEFAULT_FEDERATED_SUBJECT: &str = "system:serviceaccount:keyfleet:keyfleet-hub";

/// A Key Vault data-plane permission (access policy vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read a value.
    Get,
    /// List secrets, versions and deleted secrets.
    List,
    /// Create versions.
    Set,
    /// Soft delete.
    Delete,
    /// Recover a deleted secret.
    Recover,
    /// Purge a deleted secret.
    Purge,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Self; 6] = [
        Self::Get,
        Self::List,
        Self::Set,
        Self::Delete,
        Self::Recover,
        Self::Purge,
    ];

    /// The name Key Vault uses in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Set => "set",
            Self::Delete => "delete",
            Self::Recover => "recover",
            Self::Purge => "purge",
        }
    }
}

/// How a principal may be a managed identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ManagedIdentity {
    /// The resource's system-assigned identity (chosen when the request names none).
    SystemAssigned,
    /// A user-assigned identity, chosen by client id, object id or resource id.
    UserAssigned,
}

/// A federated identity credential: tokens from `issuer` for `subject` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federated {
    /// `iss` of the assertion.
    pub issuer: String,
    /// `sub` of the assertion.
    pub subject: String,
}

/// An application (service principal or managed identity) of the emulated tenant.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Principal {
    /// Application (client) id.
    pub client_id: String,
    /// Object id (defaults to `<client id>-oid`).
    #[serde(default)]
    pub object_id: Option<String>,
    /// Client secret, if it authenticates with one.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Federated credentials (workload identity).
    #[serde(default)]
    pub federated: Vec<Federated>,
    /// Whether the managed identity endpoint serves it.
    #[serde(default)]
    pub managed_identity: Option<ManagedIdentity>,
    /// Granted data-plane permissions.
    #[serde(default = "all_permissions")]
    pub permissions: BTreeSet<Permission>,
}

fn all_permissions() -> BTreeSet<Permission> {
    Permission::ALL.into_iter().collect()
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("client_id", &self.client_id)
            .field("object_id", &self.object_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("federated", &self.federated)
            .field("managed_identity", &self.managed_identity)
            .field("permissions", &self.permissions)
            .finish()
    }
}

impl Principal {
    /// A principal with a client secret and every permission.
    pub fn with_secret(client_id: &str, secret: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            object_id: None,
            client_secret: Some(secret.to_owned()),
            federated: Vec::new(),
            managed_identity: None,
            permissions: all_permissions(),
        }
    }

    /// The object id.
    pub fn object_id(&self) -> String {
        self.object_id
            .clone()
            .unwrap_or_else(|| format!("{}-oid", self.client_id))
    }

    /// Replaces the permissions.
    pub fn permissions(mut self, permissions: &[Permission]) -> Self {
        self.permissions = permissions.iter().copied().collect();
        self
    }

    /// Adds a federated credential.
    pub fn federated(mut self, issuer: &str, subject: &str) -> Self {
        self.federated.push(Federated {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
        });
        self
    }

    /// Makes it a managed identity.
    pub fn managed(mut self, kind: ManagedIdentity) -> Self {
        self.managed_identity = Some(kind);
        self
    }
}

/// The claims of an access token the emulator issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AccessClaims {
    /// `{authority}/{tenant}/v2.0`.
    pub iss: String,
    /// `https://vault.azure.net`.
    pub aud: String,
    /// Tenant id.
    pub tid: String,
    /// Client id.
    pub appid: String,
    /// Object id.
    pub oid: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
}

/// The claims of a federated assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AssertionClaims {
    /// Issuer (the cluster's OIDC issuer).
    pub iss: String,
    /// Subject (the service account).
    pub sub: String,
    /// Audience (`api://AzureADTokenExchange`).
    pub aud: String,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issued at (unix seconds).
    pub iat: i64,
}

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TokenError {
    /// Not three base64url parts with JSON inside.
    #[error("token is malformed")]
    Malformed,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// `exp` is in the past.
    #[error("token is expired")]
    Expired,
}

/// Signs and verifies HS256 JWTs with one key.
#[derive(Clone)]
pub(super) struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// A signer with a random key.
    pub(super) fn random() -> Self {
        Self {
            key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// A compact HS256 JWT over `claims`.
    pub(super) fn sign<T: Serialize>(&self, claims: &T) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{header}.{body}");
        let signature = URL_SAFE_NO_PAD.encode(self.mac(signed.as_bytes()));
        format!("{signed}.{signature}")
    }

    /// Verifies the signature and expiry of `token` and returns its claims.
    pub(super) fn verify<T: for<'de> Deserialize<'de> + HasExpiry>(
        &self,
        token: &str,
        now: i64,
    ) -> Result<T, TokenError> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let expected = self.mac(format!("{header}.{body}").as_bytes());
        if !constant_time_eq(&signature, &expected) {
            return Err(TokenError::Signature);
        }
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        let claims: T = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        if claims.exp() <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Claims with an `exp`.
pub(super) trait HasExpiry {
    /// Unix seconds.
    fn exp(&self) -> i64;
}

impl HasExpiry for AccessClaims {
    fn exp(&self) -> i64 {
        self.exp
    }
}

impl HasExpiry for AssertionClaims {
    fn exp(&self) -> i64 {
        self.exp
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A federated assertion the emulator accepts (what a cluster's OIDC issuer would sign).
pub(super) fn mint_assertion(
    signer: &Signer,
    issuer: &str,
    subject: &str,
    lifetime: std::time::Duration,
) -> String {
    let iat = now();
    signer.sign(&AssertionClaims {
        iss: issuer.to_owned(),
        sub: subject.to_owned(),
        aud: FEDERATED_AUDIENCE.to_owned(),
        exp: iat + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
        iat,
    })
}

/// Unix seconds now.
pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://127.0.0.1:1/t/v2.0".into(),
            aud: VAULT_RESOURCE.into(),
            tid: "t".into(),
            appid: "c".into(),
            oid: "o".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn tokens_round_trip_and_are_checked() {
        let signer = Signer::random();
        let token = signer.sign(&claims(100));
        assert_eq!(signer.verify::<AccessClaims>(&token, 50), Ok(claims(100)));
        assert_eq!(
            signer.verify::<AccessClaims>(&token, 100),
            Err(TokenError::Expired)
        );
        let other = Signer::random();
        assert_eq!(
            other.verify::<AccessClaims>(&token, 50),
            Err(TokenError::Signature)
        );
        let mut tampered = token.clone();
        tampered.insert(tampered.find('.').map_or(0, |i| i + 2), 'x');
        assert!(signer.verify::<AccessClaims>(&tampered, 50).is_err());
        assert_eq!(
            signer.verify::<AccessClaims>("opaque", 50),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn principal_debug_hides_the_secret() {
        let principal = Principal::with_secret("app", "s3cr3t-value");
        let printed = format!("{principal:?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
    }

    #[test]
    fn principals_parse_with_all_permissions_by_default() {
        let principal: Principal =
            serde_yaml::from_str("clientId: a\nclientSecret: b\nmanagedIdentity: userAssigned\n")
                .expect("yaml");
        assert_eq!(principal.permissions.len(), Permission::ALL.len());
        assert_eq!(principal.managed_identity, Some(ManagedIdentity::UserAssigned));
        let limited: Principal = serde_yaml::from_str("clientId: a\npermissions: [get]\n").expect("yaml");
        assert_eq!(limited.permissions, BTreeSet::from([Permission::Get]));
    }
}
