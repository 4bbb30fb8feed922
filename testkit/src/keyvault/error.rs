//! The errors of starting the emulator and of loading its principals file.

use std::net::SocketAddr;

/// Errors starting the emulator or loading its configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener failed.
    #[error("bind {addr}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The test CA or certificate could not be made.
    #[error("test certificate")]
    Tls(#[from] crate::tls::Error),
    /// The principals file could not be read.
    #[error("read principals file {path}")]
    ReadPrincipals {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The principals file is not valid.
    #[error("parse principals file {path}")]
    ParsePrincipals {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: serde_yaml::Error,
    },
}
