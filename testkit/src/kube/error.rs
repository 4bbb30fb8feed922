//! The errors of starting the server and of managing clusters through a handle.

use std::net::SocketAddr;

use super::status::ApiError;

/// Errors from starting the server or managing clusters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS material could not be generated.
    #[error("generate tls material for the fake kubernetes api")]
    Tls(#[source] crate::tls::Error),
    /// Binding the listen address failed.
    #[error("bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A cluster name that cannot be a URL path segment.
    #[error("invalid cluster name {0:?}: use lowercase letters, digits, '-' and '.'")]
    ClusterName(String),
    /// A bearer token that cannot be an HTTP header value (the token itself is not shown).
    #[error("invalid bearer token for cluster {cluster}: not a valid http header value")]
    InvalidToken {
        /// The cluster's name.
        cluster: String,
    },
    /// The API refused a handle write.
    #[error("{kind} {namespace}/{name}: {reason}", reason = .source.message)]
    Api {
        /// Kind.
        kind: &'static str,
        /// Namespace ("" for cluster-scoped).
        namespace: String,
        /// Name.
        name: String,
        /// The Status the API would have returned.
        source: Box<ApiError>,
    },
}
