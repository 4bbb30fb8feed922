//! A throwaway certificate authority for test servers and clients: generates a CA, issues server
//! certificates for loopback names and client certificates for a common name, and builds rustls
//! server configs. Ring only.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Errors while generating or loading test certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused the parameters.
    #[error("generate certificate")]
    Generate(#[source] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("build tls config")]
    Rustls(#[source] rustls::Error),
    /// Writing a PEM file failed.
    #[error("write {path}")]
    Write {
        /// File that could not be written.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A test CA that can issue server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A leaf certificate (server or client) with its private key, both PEM.
pub struct ServerCert {
    /// Leaf certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: rustls::pki_types::PrivatePkcs8KeyDer<'static>,
    serial: Vec<u8>,
}

impl TestCa {
    /// Generates a fresh CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Generate)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let cert = params.self_signed(&key).map_err(Error::Generate)?;
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        Ok(Self { issuer, cert_pem })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, &self.cert_pem).map_err(|source| Error::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Issues a server certificate valid for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Result<ServerCert, Error> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(Error::Generate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "keyfleet test server");
        let serial = random_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::Generate)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial,
        })
    }

    /// Issues a client certificate (extended key usage clientAuth) whose subject common name is
    /// `common_name`.
    pub fn issue_client(&self, common_name: &str) -> Result<ServerCert, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Generate)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = random_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::Generate)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial,
        })
    }

    /// A CRL (PEM) signed by this CA revoking `revoked` (certificates it issued), valid from
    /// 2024 to 2100.
    pub fn revocation_list(&self, revoked: &[&ServerCert]) -> Result<String, Error> {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(u64::from(rand::random::<u32>())),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&cert.serial),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 2),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(Error::Generate)?
            .pem()
            .map_err(Error::Generate)
    }
}

/// A positive 16-byte serial number (the high bit clear: DER integers are signed).
fn random_serial() -> Vec<u8> {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial.to_vec()
}

impl ServerCert {
    /// The certificate, DER.
    pub fn cert_der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.cert_der
    }

    /// A rustls server config presenting this certificate, offering `alpn` protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Rustls)?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], self.key_der.clone_key().into())
            .map_err(Error::Rustls)?;
        config.alpn_protocols = alpn.iter().map(|proto| proto.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn issued_certificate_chains_to_the_ca() {
        let ca = TestCa::generate("keyfleet test ca").expect("generate ca");
        let server = ca.issue(&["localhost", "127.0.0.1"]).expect("issue");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.key_pem.contains("PRIVATE KEY"));
        let config = server
            .server_config(&[b"h2", b"http/1.1"])
            .expect("server config");
        assert_eq!(config.alpn_protocols.len(), 2);

        // Verify the leaf with a client that trusts only this CA.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
            .next()
            .expect("one cert")
            .expect("valid pem");
        roots.add(ca_der).expect("add root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        verifier
            .verify_server_cert(&server.cert_der, &[], &name, &[], now)
            .expect("leaf verifies against the test ca");
    }
}
