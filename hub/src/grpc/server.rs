//! The gRPC listener: TLS material (files, or a development CA written to a directory) and
//! [`serve`], which runs tonic with HTTP/2 keepalive, `TCP_NODELAY` and the protocol's message
//! size limit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::grpc::client_ca::ClientCa;

/// Common name of the development CA written by `--tls-self-signed`.
const DEV_CA_NAME: &str = "keyfleet development CA";

/// Errors of the gRPC listener and its TLS material.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A certificate or key file could not be read.
    #[error("read {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the development CA could not be written.
    #[error("write {path}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or no private key.
    #[error("{path}: {what}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What is missing or wrong.
        what: &'static str,
    },
    /// Certificate generation failed (bad SAN, unusable key).
    #[error("generate the development certificates")]
    Generate(#[source] rcgen::Error),
    /// tonic refused the TLS configuration or the server failed.
    #[error("grpc server")]
    Transport(#[source] tonic::transport::Error),
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: certificate chain and private key.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A development CA in `dir` (created on first use, reused afterwards; agents pin
    /// `dir/ca.pem`) and a fresh server certificate for localhost, 127.0.0.1 and `sans`.
    SelfSigned {
        /// Directory for `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`.
        dir: PathBuf,
        /// Extra DNS names or IP addresses.
        sans: Vec<String>,
    },
}

/// A server certificate and key, PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Certificate chain.
    pub cert_pem: String,
    /// Private key (never logged).
    pub key_pem: String,
    /// The development CA certificate, for `SelfSigned`.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<present>"))
            .finish()
    }
}

impl TlsMaterial {
    /// Reads or generates the material.
    pub fn load(source: &TlsSource) -> Result<Self, ServerError> {
        match source {
            TlsSource::Files { cert, key } => {
                let cert_pem = read(cert)?;
                let key_pem = read(key)?;
                if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ServerError::Pem {
                        path: cert.clone(),
                        what: "no PEM certificate found",
                    });
                }
                if !key_pem.contains("PRIVATE KEY-----") {
                    return Err(ServerError::Pem {
                        path: key.clone(),
                        what: "no PEM private key found",
                    });
                }
                Ok(Self {
                    cert_pem,
                    key_pem,
                    ca_pem: None,
                })
            }
            TlsSource::SelfSigned { dir, sans } => self_signed(dir, sans),
        }
    }

    /// The tonic server TLS configuration, without client certificates.
    pub fn server_config(&self) -> ServerTlsConfig {
        self.server_config_with(None)
    }

    /// The tonic server TLS configuration. With `admin_client_ca`, every client is asked for a
    /// certificate but none is required (agents authenticate by credential); a certificate that is
    /// given must chain to that CA, and only the Admin service looks at it
    /// ([`crate::grpc::admin::AdminAuth`]).
    pub fn server_config_with(&self, admin_client_ca: Option<&ClientCa>) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match admin_client_ca {
            Some(client_ca) => config
                .client_ca_root(client_ca.tonic_certificate())
                .client_auth_optional(true),
            None => config,
        }
    }
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|source| ServerError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), ServerError> {
    let error = |source| ServerError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(error)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(error)
}

fn ca_params() -> Result<CertificateParams, ServerError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(ServerError::Generate)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, DEV_CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Creates (or reuses) the development CA in `dir` and issues a server certificate.
fn self_signed(dir: &Path, sans: &[String]) -> Result<TlsMaterial, ServerError> {
    std::fs::create_dir_all(dir).map_err(|source| ServerError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let (ca_pem, ca_key) = if ca_path.exists() && ca_key_path.exists() {
        let key_pem = read(&ca_key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| ServerError::Pem {
            path: ca_key_path.clone(),
            what: "not a usable private key",
        })?;
        (read(&ca_path)?, key)
    } else {
        let key = KeyPair::generate().map_err(ServerError::Generate)?;
        let cert = ca_params()?.self_signed(&key).map_err(ServerError::Generate)?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
        write(&ca_path, &cert.pem(), false)?;
        tracing::info!(ca = %ca_path.display(), "generated a development CA; agents pin this file");
        (cert.pem(), key)
    };
    // Issued certificates name the CA by its distinguished name and key, which is all a reused
    // CA needs to be rebuilt from.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let mut params = CertificateParams::new(names).map_err(ServerError::Generate)?;
    params.distinguished_name.push(DnType::CommonName, "keyfleet hub");
    let key = KeyPair::generate().map_err(ServerError::Generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(ServerError::Generate)?;
    let material = TlsMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(ca_pem),
    };
    write(&dir.join("server.pem"), &material.cert_pem, false)?;
    write(&dir.join("server-key.pem"), &material.key_pem, true)?;
    Ok(material)
}

/// HTTP/2 keepalive ping interval (tonic's default is off).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// HTTP/2 keepalive ping timeout.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `routes` on `listener` with TLS until `shutdown` resolves (then in-flight streams are
/// given tonic's graceful shutdown; drain the fleet first).
pub async fn serve(
    listener: TcpListener,
    tls: ServerTlsConfig,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    Server::builder()
        .tls_config(tls)
        .map_err(ServerError::Transport)?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(100))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(ServerError::Transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_reuses_its_ca_and_names_the_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = TlsSource::SelfSigned {
            dir: dir.path().to_owned(),
            sans: vec!["hub.example".to_owned()],
        };
        let first = TlsMaterial::load(&source).expect("generate");
        let second = TlsMaterial::load(&source).expect("reuse");
        assert_eq!(first.ca_pem, second.ca_pem, "the CA agents pin survives restarts");
        assert_ne!(first.cert_pem, second.cert_pem);
        for file in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"] {
            assert!(dir.path().join(file).exists(), "{file}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private keys are not group/world readable");
        }
        let printed = format!("{first:?}");
        assert!(!printed.contains("PRIVATE"), "{printed}");
    }

    #[test]
    fn missing_or_wrong_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let error = TlsMaterial::load(&TlsSource::Files {
            cert: cert.clone(),
            key: cert.clone(),
        })
        .expect_err("missing");
        assert!(error.to_string().contains("cert.pem"), "{error}");
        std::fs::write(&cert, "not pem").expect("write");
        let error = TlsMaterial::load(&TlsSource::Files {
            cert: cert.clone(),
            key: cert,
        })
        .expect_err("not pem");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
