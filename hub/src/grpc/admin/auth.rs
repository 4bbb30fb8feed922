//! Admin authentication: `authorization: Bearer <admin token>` (SHA-256 of the presented token
//! compared in constant time with every configured token's digest; the caller is the token's name) OR a client certificate chaining to the
//! admin client CA (`--admin-client-ca`, see [`crate::grpc::client_ca`]). It is separate from agent
//! authentication: a cluster credential is never accepted here, and a certificate never
//! authenticates an agent.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::domain::Sha256;
use crate::grpc::client_ca::ClientCa;

/// Prefix of the actor recorded in the audit log for a call authenticated by an admin token:
/// `token:<name>` (the name from the token file).
pub const TOKEN_ACTOR: &str = "token";

/// Who made an Admin call, as the audit log names it: `token:<name>` or `cert:<subject CN>`.
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
pub(super) fn actor_of<T>(request: &Request<T>) -> Result<AdminActor, Status> {
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
    /// (name, SHA-256) of every admin token.
    tokens: Arc<[(String, Sha256)]>,
    client_ca: Option<ClientCa>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.tokens.len())
            .field("client_ca", &self.client_ca.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// Accepts the tokens whose SHA-256 is in `tokens`, each by its name (none: only
    /// certificates, when [`AdminAuth::with_client_ca`] is set; else every call is refused).
    pub fn new(tokens: impl IntoIterator<Item = (String, Sha256)>) -> Self {
        Self {
            tokens: tokens.into_iter().collect(),
            client_ca: None,
        }
    }

    /// Also accepts callers presenting a client certificate issued by `client_ca`.
    #[must_use]
    pub fn with_client_ca(mut self, client_ca: ClientCa) -> Self {
        self.client_ca = Some(client_ca);
        self
    }

    /// The name of admin token `token`, `None` when it is none. Compares every digest, in
    /// constant time each.
    pub fn accepts(&self, token: &str) -> Option<&str> {
        let presented = Sha256::of(token.as_bytes());
        self.tokens.iter().fold(None, |found, (name, digest)| {
            let equal = constant_time_eq(&digest.0, &presented.0);
            found.or(equal.then_some(name.as_str()))
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
            (Some(token), _) if let Some(name) = self.accepts(token) => {
                Ok(AdminActor(format!("{TOKEN_ACTOR}:{name}")))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_accepts_only_configured_tokens() {
        let auth = AdminAuth::new(named(&[("alice", "kfa_one"), ("ci", "kfa_two")]));
        assert_eq!(auth.accepts("kfa_one"), Some("alice"));
        assert_eq!(auth.accepts("kfa_two"), Some("ci"));
        assert_eq!(auth.accepts("kfa_three"), None);
        assert_eq!(auth.accepts(""), None);
        assert_eq!(
            AdminAuth::new([]).accepts("kfa_one"),
            None,
            "no configured token refuses everything"
        );
        let printed = format!("{auth:?}");
        assert_eq!(printed, "AdminAuth { tokens: 2, client_ca: false }");
    }

    fn named(tokens: &[(&str, &str)]) -> Vec<(String, Sha256)> {
        tokens
            .iter()
            .map(|(name, token)| ((*name).to_owned(), Sha256::of(token.as_bytes())))
            .collect()
    }

    #[test]
    fn the_interceptor_wants_a_bearer_admin_token() {
        let mut auth = AdminAuth::new(named(&[("alice", "kfa_one")]));
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
            Some("token:alice"),
            "the interceptor names the caller (the token's name) for the audit log"
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
}
