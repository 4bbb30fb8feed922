//! PEM and PKCS#12 (PFX) handling, shared by the template functions (`filterPEM`, `pkcs12cert`,
//! `pkcs12key`) and by rendering of Key Vault certificate references (`cert/NAME`): a
//! certificate's companion secret, PEM text or a base64 PFX without a password, split into the
//! certificate chain, the private key and the leaf certificate. Every buffer is zeroized on drop;
//! messages never show a value.

use base64::Engine as _;
use zeroize::Zeroizing;

use super::Bytes;

/// A Key Vault certificate's parts. `Debug` shows lengths only.
pub struct CertificateParts {
    /// Every certificate as `CERTIFICATE` PEM, leaf first (`tls.crt`).
    pub chain_pem: Bytes,
    /// The private key as PEM (`tls.key`): PKCS#8 `PRIVATE KEY` from a PFX; from PEM text, the
    /// block as Key Vault holds it (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    pub key_pem: Bytes,
    /// The leaf certificate, DER: what Key Vault serves as the certificate's `cer`.
    pub leaf_der: Bytes,
}

impl std::fmt::Debug for CertificateParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateParts")
            .field("chain_pem", &format_args!("<{} bytes>", self.chain_pem.len()))
            .field(
                "key_pem",
                &format_args!("<redacted {} bytes>", self.key_pem.len()),
            )
            .field("leaf_der", &format_args!("<{} bytes>", self.leaf_der.len()))
            .finish()
    }
}

/// Splits a Key Vault certificate's companion secret value: PEM text (Key Vault's
/// `application/x-pem-file`: the key, then the certificates, leaf first) or a base64 PFX
/// (`application/x-pkcs12`, no password). The form is read from the value itself, so the
/// content type need not travel with it.
pub fn certificate_parts(value: &[u8]) -> Result<CertificateParts, &'static str> {
    let text =
        std::str::from_utf8(value).map_err(|_| "the certificate's secret is neither PEM text nor base64")?;
    if text.contains("-----BEGIN ") {
        let certificates = pem_ders("CERTIFICATE", text)?;
        let leaf_der = certificates
            .first()
            .cloned()
            .ok_or("the certificate's PEM holds no CERTIFICATE block")?;
        let mut chain_pem: Bytes = Zeroizing::new(Vec::new());
        for der in &certificates {
            pem_block(&mut chain_pem, "CERTIFICATE", der);
        }
        let mut key_pem: Bytes = Zeroizing::new(Vec::new());
        for block_type in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            if let Some(der) = pem_ders(block_type, text)?.first() {
                pem_block(&mut key_pem, block_type, der);
                break;
            }
        }
        if key_pem.is_empty() {
            return Err("the certificate's PEM holds no private key");
        }
        return Ok(CertificateParts {
            chain_pem,
            key_pem,
            leaf_der,
        });
    }
    let compact: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|byte| !byte.is_ascii_whitespace()).collect());
    let archive = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_slice())
            .map_err(|_| "the certificate's secret is neither PEM text nor base64")?,
    );
    let store = open_pkcs12(&archive, "")?;
    let certificates = chain(&store);
    let leaf_der = Zeroizing::new(
        certificates
            .first()
            .map(|certificate| certificate.as_der().to_vec())
            .ok_or("the certificate's PFX holds no certificate")?,
    );
    let mut chain_pem: Bytes = Zeroizing::new(Vec::new());
    for certificate in certificates {
        pem_block(&mut chain_pem, "CERTIFICATE", certificate.as_der());
    }
    let (_, keys) = store
        .private_key_chain()
        .ok_or("the certificate's PFX holds no private key")?;
    let mut key_pem: Bytes = Zeroizing::new(Vec::new());
    pem_block(&mut key_pem, "PRIVATE KEY", keys.key());
    Ok(CertificateParts {
        chain_pem,
        key_pem,
        leaf_der,
    })
}

/// ESO's `filterPEM`: every PEM block of `block_type` in `input`, re-encoded as Go's
/// `pem.EncodeToMemory` writes it (64-column base64, a final newline), in order. Splits a Key
/// Vault certificate's secret in PEM form (certificate chain and private key) into `tls.crt` and
/// `tls.key`.
pub(super) fn filter_pem(block_type: &str, input: &str) -> Result<Bytes, &'static str> {
    let mut output: Bytes = Zeroizing::new(Vec::new());
    for der in pem_ders(block_type, input)? {
        pem_block(&mut output, block_type, &der);
    }
    Ok(output)
}

/// The DER of every PEM block of `block_type` in `input`, in order.
fn pem_ders(block_type: &str, input: &str) -> Result<Vec<Bytes>, &'static str> {
    let begin = format!("-----BEGIN {block_type}-----");
    let end = format!("-----END {block_type}-----");
    let mut found = Vec::new();
    let mut lines = input.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != begin {
            continue;
        }
        let mut body = Zeroizing::new(String::new());
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            // RFC 1421 headers (`Proc-Type: …`) are not part of the data.
            if !line.contains(':') {
                body.push_str(line);
            }
        }
        if !closed {
            return Err("a PEM block has no END line");
        }
        found.push(Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| "a PEM block is not valid base64")?,
        ));
    }
    Ok(found)
}

/// Appends one PEM block as Go's `pem.EncodeToMemory` writes it.
fn pem_block(output: &mut Bytes, block_type: &str, der: &[u8]) {
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    output.extend_from_slice(format!("-----BEGIN {block_type}-----\n").as_bytes());
    for chunk in encoded.as_bytes().chunks(64) {
        output.extend_from_slice(chunk);
        output.push(b'\n');
    }
    output.extend_from_slice(format!("-----END {block_type}-----\n").as_bytes());
}

fn open_pkcs12(archive: &[u8], password: &str) -> Result<p12_keystore::KeyStore, &'static str> {
    p12_keystore::KeyStore::from_pkcs12(archive, password)
        .map_err(|_| "input is not a PKCS#12 archive that this password opens")
}

/// Every certificate of the archive, once, leaf first then each issuer.
fn chain(store: &p12_keystore::KeyStore) -> Vec<&p12_keystore::Certificate> {
    let mut certificates: Vec<&p12_keystore::Certificate> = Vec::new();
    for (_, entry) in store.entries() {
        match entry {
            p12_keystore::KeyStoreEntry::PrivateKeyChain(chain) => certificates.extend(chain.chain()),
            p12_keystore::KeyStoreEntry::Certificate(certificate) => certificates.push(certificate),
            _ => {}
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    certificates.retain(|certificate| seen.insert(certificate.as_der().to_vec()));
    order_chain(certificates)
}

/// ESO's `pkcs12key` / `pkcs12cert` (and their `Pass` forms): the private key as PKCS#8 `PRIVATE
/// KEY` PEM, or every certificate as `CERTIFICATE` PEM ordered leaf first, each next one the
/// issuer of the previous (certificates outside that chain follow in archive order).
pub(super) fn pkcs12(key: bool, archive: &[u8], password: &str) -> Result<Bytes, &'static str> {
    let store = open_pkcs12(archive, password)?;
    let mut output: Bytes = Zeroizing::new(Vec::new());
    if key {
        let (_, chain) = store
            .private_key_chain()
            .ok_or("the archive holds no private key")?;
        pem_block(&mut output, "PRIVATE KEY", chain.key());
        return Ok(output);
    }
    let certificates = chain(&store);
    if certificates.is_empty() {
        return Err("the archive holds no certificate");
    }
    for certificate in certificates {
        pem_block(&mut output, "CERTIFICATE", certificate.as_der());
    }
    Ok(output)
}

/// Leaf first (a certificate that issued none of the others), then its issuer, and so on.
fn order_chain(mut rest: Vec<&p12_keystore::Certificate>) -> Vec<&p12_keystore::Certificate> {
    let issued_another = |candidate: &p12_keystore::Certificate, all: &[&p12_keystore::Certificate]| {
        all.iter()
            .any(|other| other.as_der() != candidate.as_der() && other.issuer() == candidate.subject())
    };
    let mut ordered = Vec::with_capacity(rest.len());
    let Some(leaf) = rest
        .iter()
        .position(|certificate| !issued_another(certificate, &rest))
    else {
        return rest;
    };
    let mut current = rest.remove(leaf);
    loop {
        ordered.push(current);
        let next = rest.iter().position(|candidate| {
            candidate.subject() == current.issuer() && current.subject() != current.issuer()
        });
        match next {
            Some(index) => current = rest.remove(index),
            None => break,
        }
    }
    ordered.extend(rest);
    ordered
}
