//! Key Vault certificate objects, as Key Vault keeps them: a certificate version holds the public
//! certificate (`cer`, DER), its thumbprint (`x5t`) and validity, and Key Vault keeps next to it a
//! *companion secret* of the same name and version whose value is the certificate with its private
//! key: PEM text (`application/x-pem-file`: the key, then the certificates) or a base64 PFX
//! (`application/x-pkcs12`, no password). Also generates test certificates (rcgen) in both forms.
//! Pure: no IO, no HTTP, no logging.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Datelike as _;
use zeroize::Zeroizing;

/// `contentType` of a companion secret holding PEM.
pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";
/// `contentType` of a companion secret holding a base64 PFX.
pub const PFX_CONTENT_TYPE: &str = "application/x-pkcs12";

/// A generated certificate and its private key. `Debug` shows the subject only.
pub struct TestCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER (what Key Vault serves as `cer`).
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
    key_der: Zeroizing<Vec<u8>>,
    common_name: String,
}

impl fmt::Debug for TestCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCertificate")
            .field("common_name", &self.common_name)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl TestCertificate {
    /// A self-signed ECDSA P-256 certificate for `common_name` and `dns_names`, valid from the
    /// start of today (UTC) for a year.
    pub fn self_signed(common_name: &str, dns_names: &[&str]) -> Result<Self, rcgen::Error> {
        let names: Vec<String> = dns_names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let today = chrono::Utc::now().date_naive();
        let (year, month, day) = (today.year(), today.month(), today.day());
        let (month, day) = (u8::try_from(month).unwrap_or(1), u8::try_from(day).unwrap_or(1));
        params.not_before = rcgen::date_time_ymd(year, month, day);
        params.not_after = rcgen::date_time_ymd(year + 1, month, day.min(28));
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            key_der: Zeroizing::new(key.serialize_der()),
            common_name: common_name.to_owned(),
        })
    }

    /// The companion secret's PEM form as Key Vault writes it: the private key, then the
    /// certificate.
    pub fn pem_bundle(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}{}", self.key_pem.as_str(), self.cert_pem))
    }

    /// A PFX (PKCS#12) of the key and certificate with an empty password, as Key Vault exports
    /// one.
    pub fn pfx(&self) -> Result<Vec<u8>, p12_keystore::error::Error> {
        self.pfx_with_password("")
    }

    /// A PFX (PKCS#12) of the key and certificate protected by `password`.
    pub fn pfx_with_password(&self, password: &str) -> Result<Vec<u8>, p12_keystore::error::Error> {
        let certificate = p12_keystore::Certificate::from_der(&self.cert_der)?;
        let chain = p12_keystore::PrivateKeyChain::new(self.key_der.as_slice(), [1u8; 20], [certificate]);
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            &self.common_name,
            p12_keystore::KeyStoreEntry::PrivateKeyChain(chain),
        );
        store.writer(password).write()
    }
}

/// What Key Vault derives from an imported certificate (PEM text or PFX bytes).
pub(super) struct Imported {
    /// `contentType` of the companion secret.
    pub content_type: &'static str,
    /// The companion secret's value: the PEM text, or the PFX in base64.
    pub value: Zeroizing<String>,
    /// The leaf certificate, DER.
    pub cer: Vec<u8>,
    /// `nbf` (unix seconds).
    pub not_before: i64,
    /// `exp` (unix seconds).
    pub expires: i64,
    /// The subject, as `CN=…`.
    pub subject: String,
    /// DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// `RSA` or `EC`.
    pub key_type: &'static str,
}

impl fmt::Debug for Imported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imported")
            .field("content_type", &self.content_type)
            .field("value", &format_args!("<redacted {} bytes>", self.value.len()))
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Reads a certificate with its private key: PEM text (a `CERTIFICATE` block, the first being
/// the leaf, and a private key block, kept as it is) or PFX bytes opened with `password` (kept
/// re-encoded without a password, as Key Vault does), as Key Vault's import does.
pub(super) fn import(pem_or_pfx: &[u8], password: &str) -> Result<Imported, &'static str> {
    let is_pem = std::str::from_utf8(pem_or_pfx).is_ok_and(|text| text.contains("-----BEGIN "));
    let (content_type, value, cer) = if is_pem {
        let mut certificates = Vec::new();
        let mut has_key = false;
        for item in rustls_pemfile::read_all(&mut &pem_or_pfx[..]) {
            match item.map_err(|_| "The PEM content is not valid.")? {
                rustls_pemfile::Item::X509Certificate(der) => certificates.push(der.to_vec()),
                rustls_pemfile::Item::Pkcs1Key(_)
                | rustls_pemfile::Item::Pkcs8Key(_)
                | rustls_pemfile::Item::Sec1Key(_) => has_key = true,
                _ => {}
            }
        }
        if !has_key {
            return Err("Private key is not specified in the specified X.509 PEM certificate content.");
        }
        let leaf = certificates
            .into_iter()
            .next()
            .ok_or("No certificate was found in the specified X.509 PEM content.")?;
        let text = String::from_utf8_lossy(pem_or_pfx).into_owned();
        (PEM_CONTENT_TYPE, Zeroizing::new(text), leaf)
    } else {
        let store = p12_keystore::KeyStore::from_pkcs12(pem_or_pfx, password).map_err(|_| {
            "The specified PEM X.509 certificate content is in an unexpected format, or the password does not open the PFX."
        })?;
        let (alias, chain) = store
            .private_key_chain()
            .ok_or("Private key is not specified in the specified PFX content.")?;
        let leaf = chain
            .chain()
            .first()
            .ok_or("No certificate was found in the specified PFX.")?
            .as_der()
            .to_vec();
        // Key Vault keeps its own PFX of the key and chain, without a password.
        let mut kept = p12_keystore::KeyStore::new();
        kept.add_entry(alias, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain.clone()));
        let pfx = Zeroizing::new(
            kept.writer("")
                .write()
                .map_err(|_| "The PFX could not be re-encoded.")?,
        );
        (
            PFX_CONTENT_TYPE,
            Zeroizing::new(STANDARD.encode(pfx.as_slice())),
            leaf,
        )
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(&cer)
        .map_err(|_| "The certificate is not a valid X.509 certificate.")?;
    let dns_names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let key_type =
        if parsed.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            "RSA"
        } else {
            "EC"
        };
    Ok(Imported {
        content_type,
        value,
        not_before: parsed.validity().not_before.timestamp(),
        expires: parsed.validity().not_after.timestamp(),
        subject: parsed.subject().to_string(),
        dns_names,
        key_type,
        cer,
    })
}

/// `x5t`: the base64url SHA-1 thumbprint of the DER certificate.
pub(super) fn thumbprint(cer: &[u8]) -> String {
    use sha1::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_and_pfx_imports_agree_on_the_certificate() {
        let generated = TestCertificate::self_signed("app.example", &["app.example", "www.app.example"])
            .expect("generate");
        let pem = import(generated.pem_bundle().as_bytes(), "").expect("pem");
        assert_eq!(pem.content_type, PEM_CONTENT_TYPE);
        assert_eq!(pem.cer, generated.cert_der);
        assert_eq!(pem.value.as_str(), generated.pem_bundle().as_str());
        assert_eq!(pem.subject, "CN=app.example");
        assert_eq!(pem.dns_names, ["app.example", "www.app.example"]);
        assert_eq!(pem.key_type, "EC");
        assert!(pem.expires - pem.not_before > 360 * 86_400);
        let pfx_bytes = generated.pfx().expect("pfx");
        let pfx = import(&pfx_bytes, "").expect("pfx import");
        assert_eq!(pfx.content_type, PFX_CONTENT_TYPE);
        assert_eq!(pfx.cer, generated.cert_der);
        let kept = STANDARD.decode(pfx.value.as_bytes()).expect("base64");
        let reopened = p12_keystore::KeyStore::from_pkcs12(&kept, "").expect("kept without a password");
        let (_, chain) = reopened.private_key_chain().expect("key kept");
        assert_eq!(chain.key(), generated.key_der.as_slice());
        assert_eq!((pfx.not_before, pfx.expires), (pem.not_before, pem.expires));
        assert_eq!(thumbprint(&pfx.cer).len(), 27);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_without_quoting_it() {
        let generated = TestCertificate::self_signed("nokey.example", &["nokey.example"]).expect("generate");
        let error = import(generated.cert_pem.as_bytes(), "").expect_err("no key");
        assert_eq!(
            error,
            "Private key is not specified in the specified X.509 PEM certificate content."
        );
        assert!(import(b"not a certificate", "").is_err());
        assert!(!format!("{generated:?}").contains("PRIVATE"));
        assert!(!format!("{:?}", import(generated.pem_bundle().as_bytes(), "")).contains("PRIVATE"));
    }
}
