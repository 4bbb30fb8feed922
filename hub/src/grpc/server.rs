//! The gRPC listener: TLS material (files, or a development CA written to a directory) and
//! [`serve`], which runs tonic with HTTP/2 keepalive, `TCP_NODELAY` and the protocol's message
//! size limit. With an admin client CA, [`serve_requesting_client_certs`] does the TLS handshakes
//! itself (tonic's TLS settings cannot defer the chain check to the Admin service).
//!
//! **Idle and slow connections** ([`ListenerLimits`]), on both paths: every TLS handshake is
//! bounded by [`TLS_HANDSHAKE_TIMEOUT`] (10 s; a connection that sends no ClientHello is closed
//! then), and at most `max_connections` connections are held at once, handshakes included (a
//! semaphore permit travels with the connection and is released when it closes); one accepted
//! beyond the cap is closed at once. The default cap is the process's open-file limit minus
//! [`FD_RESERVE`] (the store pool, Key Vault clients, the ops endpoint and logs must never be
//! starved by the listener), so a flood of idle sockets can neither exhaust the hub's descriptors
//! nor hold them for longer than the handshake bound. Handshake tasks on the client-certificate
//! path exist only for connections holding a permit, so they are bounded by the same cap.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpIncoming};
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
    /// The loaded certificate or key is unusable.
    #[error("tls material: {0}")]
    Material(&'static str),
    /// rustls refused the certificate, the key or the configuration.
    #[error("tls configuration")]
    Rustls(#[source] rustls::Error),
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

    /// The tonic server TLS configuration (no client certificates).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// A rustls server configuration that asks every client for a certificate without requiring
    /// one ([`ClientCa::listener_verifier`]), offering HTTP/2.
    pub fn rustls_config_requesting_client_certs(
        &self,
        admin_client_ca: &ClientCa,
    ) -> Result<rustls::ServerConfig, ServerError> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| ServerError::Material("the certificate chain is not valid PEM"))?;
        if chain.is_empty() {
            return Err(ServerError::Material("no certificate in the certificate chain"));
        }
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|_| ServerError::Material("the private key is not valid PEM"))?
            .ok_or(ServerError::Material("no private key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ServerError::Rustls)?
            .with_client_cert_verifier(admin_client_ca.listener_verifier())
            .with_single_cert(chain, key)
            .map_err(ServerError::Rustls)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
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

/// A TLS handshake that takes longer is abandoned and its connection closed (both paths).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open files kept out of the listener's reach (store pool, Key Vault, ops endpoint, logs).
pub const FD_RESERVE: usize = 256;
/// The connection cap when the open-file limit cannot be read.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;
/// The smallest connection cap the default ever picks.
const MIN_MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds of the gRPC listener against idle and slow connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections held at once, TLS handshakes included; one more is closed at once.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for ListenerLimits {
    /// [`default_max_connections`] and [`TLS_HANDSHAKE_TIMEOUT`].
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The soft open-file limit minus [`FD_RESERVE`] (at least 64), or 10,000 when the limit cannot
/// be read (`/proc/self/limits`, Linux). 19,744 under the 20,000 limit the loadtest sets for
/// 10,000 clusters; 768 under the common default of 1,024 (raise it for a large fleet).
pub fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_open_files(&limits))
        .map_or(FALLBACK_MAX_CONNECTIONS, |limit| {
            limit.saturating_sub(FD_RESERVE).max(MIN_MAX_CONNECTIONS)
        })
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text (`None` when unlimited or absent).
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `routes` on `listener` with TLS until `shutdown` resolves (then in-flight streams are
/// given tonic's graceful shutdown; drain the fleet first), with the default [`ListenerLimits`].
pub async fn serve(
    listener: TcpListener,
    tls: ServerTlsConfig,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_with_limits(listener, tls, routes, ListenerLimits::default(), shutdown).await
}

/// [`serve`] with explicit [`ListenerLimits`].
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: ServerTlsConfig,
    routes: Routes,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    builder()
        .tls_config(tls.timeout(limits.handshake_timeout))
        .map_err(ServerError::Transport)?
        .add_routes(routes)
        .serve_with_incoming_shutdown(capped_incoming(listener, limits.max_connections), shutdown)
        .await
        .map_err(ServerError::Transport)
}

/// Like [`serve`], but every client is asked for a certificate signed under `admin_client_ca`
/// (required of nobody): the handshakes run here, each in its own task and bounded by
/// [`TLS_HANDSHAKE_TIMEOUT`], with [`TlsMaterial::rustls_config_requesting_client_certs`]. The
/// Admin service checks a presented chain per call and names its holder
/// ([`crate::grpc::admin::AdminAuth`]); the other services never look at it.
pub async fn serve_requesting_client_certs(
    listener: TcpListener,
    material: &TlsMaterial,
    admin_client_ca: &ClientCa,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_requesting_client_certs_with_limits(
        listener,
        material,
        admin_client_ca,
        routes,
        ListenerLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve_requesting_client_certs`] with explicit [`ListenerLimits`].
pub async fn serve_requesting_client_certs_with_limits(
    listener: TcpListener,
    material: &TlsMaterial,
    admin_client_ca: &ClientCa,
    routes: Routes,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let acceptor = TlsAcceptor::from(Arc::new(
        material.rustls_config_requesting_client_certs(admin_client_ca)?,
    ));
    let (connections, incoming) = mpsc::channel::<std::io::Result<TlsStream<Capped<TcpStream>>>>(64);
    tokio::spawn(handshake_loop(
        capped_incoming(listener, limits.max_connections),
        acceptor,
        limits.handshake_timeout,
        connections,
    ));
    builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await
        .map_err(ServerError::Transport)
}

/// The tonic server settings every listener shares.
fn builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(100))
}

fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// Accepted connections, each holding one of `max_connections` permits for as long as it is
/// open; a connection accepted while none is free is closed at once (counted, logged every
/// 1,000th).
fn capped_incoming(
    listener: TcpListener,
    max_connections: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<Capped<TcpStream>>> + Send + Unpin + 'static {
    let permits = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let refused = AtomicU64::new(0);
    tcp_incoming(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Capped {
                inner: stream,
                _permit: permit,
            })),
            Err(_) => {
                let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
                if count % 1_000 == 1 {
                    tracing::warn!(
                        max_connections,
                        refused = count,
                        "connection closed: at the connection cap"
                    );
                }
                drop(stream);
                None
            }
        },
        Err(error) => Some(Err(error)),
    })
}

/// A connection holding one permit of the listener's cap until it is dropped.
pub struct Capped<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: Connected> Connected for Capped<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Capped<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Capped<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts capped connections and hands each completed TLS handshake to the server; ends when
/// the server stops (its receiver is dropped), which closes the listener. A handshake task exists
/// only for a connection holding a permit, so they are bounded by the cap.
async fn handshake_loop(
    mut tcp: impl tokio_stream::Stream<Item = std::io::Result<Capped<TcpStream>>> + Unpin,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    connections: mpsc::Sender<std::io::Result<TlsStream<Capped<TcpStream>>>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = tcp.next() => accepted,
            () = connections.closed() => return,
        };
        let stream = match accepted {
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::debug!(error = %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            None => return,
        };
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send(Ok(tls)).await;
                }
                Ok(Err(error)) => tracing::debug!(error = %error, "tls handshake failed"),
                Err(_) => tracing::debug!(timeout = ?handshake_timeout, "tls handshake timed out"),
            }
        });
    }
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
    fn the_listener_asks_for_client_certificates_without_requiring_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let material = TlsMaterial::load(&TlsSource::SelfSigned {
            dir: dir.path().to_owned(),
            sans: vec![],
        })
        .expect("generate");
        let admins = keyfleet_testkit::tls::TestCa::generate("admins").expect("ca");
        let client_ca = ClientCa::from_pem(admins.cert_pem()).expect("bundle");
        let config = material
            .rustls_config_requesting_client_certs(&client_ca)
            .expect("config");
        assert_eq!(config.alpn_protocols, [b"h2".to_vec()]);
        let verifier = client_ca.listener_verifier();
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert_eq!(verifier.root_hint_subjects().len(), 1, "hints the admin CA");
        let broken = TlsMaterial {
            key_pem: "no key here".to_owned(),
            ..material
        };
        let error = broken
            .rustls_config_requesting_client_certs(&client_ca)
            .expect_err("no key");
        assert_eq!(error.to_string(), "tls material: no private key");
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_below_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63432                63432                processes \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(soft_open_files(limits), Some(20_000));
        assert_eq!(
            soft_open_files("Max open files  unlimited  unlimited  files"),
            None
        );
        assert_eq!(soft_open_files(""), None);
        let cap = default_max_connections();
        assert!(cap >= MIN_MAX_CONNECTIONS, "{cap}");
        if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| soft_open_files(&text))
        {
            assert!(
                cap <= limit.saturating_sub(FD_RESERVE).max(MIN_MAX_CONNECTIONS),
                "{cap} {limit}"
            );
        }
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
