//! Admin authentication by client certificate (`keyfleet serve --admin-client-ca FILE`).
//!
//! With a client CA, the hub's one TLS listener asks every client for a certificate (hinting this
//! CA's subjects) without requiring one, since agents authenticate by credential, and lets any
//! certificate through whose private key the client proves ([`ClientCa::listener_verifier`]). The
//! chain is checked where it matters, per Admin call, by [`ClientCa::verify`] (called from
//! [`crate::grpc::admin::AdminAuth`]), which also names the caller by the certificate's subject
//! common name. So a foreign certificate gets a clear UNAUTHENTICATED answer from the Admin
//! service instead of a handshake failure the client may only see as a closed connection, and a
//! certificate never affects an agent.
//!
//! With `--admin-client-crl`, [`ClientCa::verify`] also refuses a revoked certificate (`crl.rs`:
//! the file is re-read when it changes).
//!
//! **Invariant:** only the Admin service looks at client certificates, and never without
//! [`ClientCa::verify`]; the Sync and Enrollment services ignore them (a certificate never makes
//! an agent).

mod crl;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::Digest as _;

/// Longest common name recorded as an actor (longer ones are cut).
pub const MAX_ACTOR_NAME: usize = 128;

/// Errors of loading the admin client CA.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    /// The file could not be read.
    #[error("read {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable CA certificate.
    #[error("{path}: {what}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// The CA bundle whose certificates authenticate admins, and optionally its revocation lists.
#[derive(Clone)]
pub struct ClientCa {
    roots: usize,
    trust: Arc<RootCertStore>,
    /// Without revocation: the listener's handshake checks, and the per-call chain check when
    /// there is no CRL file.
    verifier: Arc<dyn ClientCertVerifier>,
    crl: Option<Arc<crl::CrlFile>>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("ClientCa");
        debug.field("roots", &self.roots);
        if let Some(crl) = &self.crl {
            debug.field("crl", crl);
        }
        debug.finish()
    }
}

impl ClientCa {
    /// Reads a PEM bundle of CA certificates.
    pub fn load(path: &Path) -> Result<Self, ClientCaError> {
        let pem = std::fs::read_to_string(path).map_err(|source| ClientCaError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|what| ClientCaError::Pem {
            path: path.to_owned(),
            what,
        })
    }

    /// From PEM text holding one or more CA certificates; the error says what is wrong.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|error| format!("not a PEM certificate bundle ({error})"))?;
        if certs.is_empty() {
            return Err("no PEM certificate found".to_owned());
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if ignored > 0 {
            return Err(format!(
                "{ignored} certificate(s) are not usable as a trust anchor"
            ));
        }
        let trust = Arc::new(roots);
        let verifier = crl::verifier(&trust, Vec::new())?;
        Ok(Self {
            roots: added,
            trust,
            verifier,
            crl: None,
        })
    }

    /// Also refuses the certificates revoked by the CRLs in `path` (PEM or DER), re-read when the
    /// file changes. An unreadable or invalid file is an error now.
    pub fn with_crl_file(mut self, path: &Path) -> Result<Self, ClientCaError> {
        let (file, lists) = crl::CrlFile::load(path, Arc::clone(&self.trust))?;
        tracing::info!(file = %path.display(), lists, "admin client CRL loaded");
        self.crl = Some(Arc::new(file));
        Ok(self)
    }

    /// Like [`ClientCa::with_crl_file`], from the CRLs' bytes (PEM or DER), never re-read.
    pub fn with_crls(mut self, bytes: &[u8]) -> Result<Self, String> {
        self.verifier = crl::verifier(&self.trust, crl::parse(bytes)?)?;
        Ok(self)
    }

    /// The listener's client certificate verifier: asks for a certificate (hinting this CA's
    /// subjects), requires none, checks the handshake signature that proves the client holds the
    /// certificate's key, and leaves the chain to [`ClientCa::verify`] in the Admin service.
    pub fn listener_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(DeferredChainCheck(Arc::clone(&self.verifier)))
    }

    /// Checks that `chain` (end entity first, as TLS presents it) chains to this CA for client
    /// authentication, now. Returns the actor name: `cert:<subject CN>` (or `cert:sha256:<16 hex>`
    /// of the certificate when it has no common name).
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<String, String> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err("no client certificate".to_owned());
        };
        let verifier = match &self.crl {
            Some(crl) => crl.verifier(),
            None => Arc::clone(&self.verifier),
        };
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|error| refusal(&error))?;
        Ok(match common_name(end_entity) {
            Some(name) => format!("cert:{name}"),
            None => {
                let digest = sha2::Sha256::digest(end_entity.as_ref());
                format!("cert:sha256:{}", hex::encode(&digest[..8]))
            }
        })
    }
}

/// The webpki verifier of the admin CA for everything but the chain, which is checked per Admin
/// call instead (see the module documentation).
#[derive(Debug)]
struct DeferredChainCheck(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredChainCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to `ClientCa::verify`, the only consumer of client certificates.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a certificate is refused, in words an operator acts on.
fn refusal(error: &rustls::Error) -> String {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it is not issued by the hub's admin client CA (--admin-client-ca)".to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "it has expired".to_owned(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "it is not valid yet".to_owned(),
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            "it is revoked (listed in --admin-client-crl)".to_owned()
        }
        other => other.to_string(),
    }
}

/// The last common name (OID 2.5.4.3) of the certificate's subject, with control characters
/// replaced and cut to [`MAX_ACTOR_NAME`] characters. `None` when there is none or the DER does
/// not parse (it was verified before, so that means "no usable name").
pub fn common_name(cert: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, certificate, _) = tlv(cert).filter(|(tag, _, _)| *tag == SEQUENCE)?;
    let (_, tbs, _) = tlv(certificate).filter(|(tag, _, _)| *tag == SEQUENCE)?;
    let mut fields = tbs;
    // version [0] EXPLICIT is optional.
    if fields.first() == Some(&0xA0) {
        fields = tlv(fields)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        fields = tlv(fields)?.2;
    }
    let (_, mut subject, _) = tlv(fields).filter(|(tag, _, _)| *tag == SEQUENCE)?;
    let mut found = None;
    while !subject.is_empty() {
        let (tag, mut set, rest) = tlv(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, attribute, rest) = tlv(set).filter(|(tag, _, _)| *tag == SEQUENCE)?;
            set = rest;
            let (oid_tag, oid, value) = tlv(attribute)?;
            if oid_tag == OID && oid == CN {
                let (value_tag, value, _) = tlv(value)?;
                found = decode_string(value_tag, value).or(found);
            }
        }
    }
    found.map(|name| {
        name.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(MAX_ACTOR_NAME)
            .collect()
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// One DER tag-length-value: (tag, contents, rest). Single-byte tags only (all X.509 needs here).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let bytes = usize::from(first & 0x7F);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let (length, rest) = rest.split_at(bytes);
        let length = length
            .iter()
            .fold(0usize, |total, byte| (total << 8) | usize::from(*byte));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String.
        0x0C | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_owned),
        // BMPString: UTF-16BE.
        0x1E if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
