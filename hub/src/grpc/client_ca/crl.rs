//! Certificate revocation for admin client certificates (`--admin-client-crl FILE`): PEM (one or
//! more `X509 CRL` blocks) or one DER CRL, signed by a CA of `--admin-client-ca`.
//!
//! **Decisions** (docs/security.md): only the end-entity certificate is checked (admins' chains
//! are short; a CRL for an intermediate may be added to the same file); a certificate whose issuer
//! has no CRL in the file is accepted (a bundle of several CAs with a CRL for one keeps the others
//! working); a CRL past its nextUpdate still applies (a stale list still names what it revoked).
//! The file is re-read when its modification time or size changes, checked at each Admin call
//! that presents a certificate, so a revocation takes effect at the next call with no restart; a
//! file that no longer parses keeps the last good lists (logged at error: revoked stays revoked).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use super::ClientCaError;

/// What identifies one version of the file without reading it.
type Stamp = (Option<SystemTime>, u64);

/// The CRL file, and the verifier built from its last good content.
pub(super) struct CrlFile {
    path: PathBuf,
    roots: Arc<RootCertStore>,
    state: Mutex<Loaded>,
}

struct Loaded {
    stamp: Stamp,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for CrlFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlFile").field("path", &self.path).finish()
    }
}

impl CrlFile {
    /// Reads `path` now (an error refuses to start) and builds the verifier over `roots`.
    pub(super) fn load(path: &Path, roots: Arc<RootCertStore>) -> Result<(Self, usize), ClientCaError> {
        let stamp = stamp(path).map_err(|source| ClientCaError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (verifier, lists) = read(path, &roots)?;
        let file = Self {
            path: path.to_owned(),
            roots,
            state: Mutex::new(Loaded { stamp, verifier }),
        };
        Ok((file, lists))
    }

    /// The verifier of the file's current content: re-read when it changed since the last call.
    pub(super) fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match stamp(&self.path) {
            Ok(now) if now != state.stamp => match read(&self.path, &self.roots) {
                Ok((verifier, lists)) => {
                    tracing::info!(file = %self.path.display(), lists, "admin client CRL reloaded");
                    *state = Loaded { stamp: now, verifier };
                }
                Err(error) => {
                    tracing::error!(error = %error, "cannot reload --admin-client-crl; the last lists read stay in force");
                    state.stamp = now;
                }
            },
            Ok(_) => {}
            Err(error) => {
                tracing::error!(file = %self.path.display(), error = %error, "cannot read --admin-client-crl; the last lists read stay in force");
            }
        }
        Arc::clone(&state.verifier)
    }
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.modified().ok(), metadata.len()))
}

/// The verifier over `roots` with the CRLs of `path`, and how many lists it holds.
fn read(
    path: &Path,
    roots: &Arc<RootCertStore>,
) -> Result<(Arc<dyn ClientCertVerifier>, usize), ClientCaError> {
    let bytes = std::fs::read(path).map_err(|source| ClientCaError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |what: String| ClientCaError::Pem {
        path: path.to_owned(),
        what,
    };
    let crls = parse(&bytes).map_err(invalid)?;
    let lists = crls.len();
    let verifier = verifier(roots, crls).map_err(invalid)?;
    Ok((verifier, lists))
}

/// The lists of a PEM or DER CRL file.
pub(super) fn parse(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        if bytes.is_empty() {
            return Err("empty CRL file".to_owned());
        }
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = rustls_pemfile::crls(&mut &bytes[..])
        .collect::<Result<_, _>>()
        .map_err(|error| format!("not a PEM CRL file ({error})"))?;
    if crls.is_empty() {
        return Err("no PEM X509 CRL block found".to_owned());
    }
    Ok(crls)
}

/// The per-call verifier: `roots`, and revocation by `crls` as the module says.
pub(super) fn verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider).allow_unauthenticated();
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    builder
        .build()
        .map_err(|error| format!("cannot verify client certificates with it ({error})"))
}
