use keyfleet_testkit::tls::TestCa;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};

use super::*;

fn ca(name: &str) -> TestCa {
    TestCa::generate(name).expect("generate a CA")
}

#[test]
fn a_certificate_of_the_ca_is_named_by_its_common_name() {
    let admins = ca("admins");
    let client = ClientCa::from_pem(admins.cert_pem()).expect("bundle");
    let alice = admins.issue_client("alice@example.com").expect("client cert");
    assert_eq!(
        client.verify(std::slice::from_ref(alice.cert_der())),
        Ok("cert:alice@example.com".to_owned())
    );
    assert_eq!(format!("{client:?}"), "ClientCa { roots: 1 }");
}

#[test]
fn a_certificate_of_another_ca_is_refused_with_the_reason() {
    let admins = ca("admins");
    let client = ClientCa::from_pem(admins.cert_pem()).expect("bundle");
    let mallory = ca("someone else").issue_client("mallory").expect("client cert");
    let reason = client
        .verify(std::slice::from_ref(mallory.cert_der()))
        .expect_err("foreign CA");
    assert_eq!(
        reason,
        "it is not issued by the hub's admin client CA (--admin-client-ca)"
    );
    assert_eq!(client.verify(&[]), Err("no client certificate".to_owned()));
}

#[test]
fn a_bundle_trusts_every_ca_in_it() {
    let first = ca("first");
    let second = ca("second");
    let bundle = format!("{}{}", first.cert_pem(), second.cert_pem());
    let client = ClientCa::from_pem(&bundle).expect("bundle");
    for (issuer, name) in [(&first, "one"), (&second, "two")] {
        let cert = issuer.issue_client(name).expect("client cert");
        assert_eq!(
            client.verify(std::slice::from_ref(cert.cert_der())),
            Ok(format!("cert:{name}"))
        );
    }
}

/// A CA made with rcgen directly (TestCa issues only what tests commonly need).
fn rcgen_ca(name: &str) -> (ClientCa, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("ca");
    let client = ClientCa::from_pem(&cert.pem()).expect("bundle");
    (client, Issuer::new(params, key))
}

#[test]
fn a_certificate_restricted_to_server_auth_is_not_an_admin_certificate() {
    let (client, issuer) = rcgen_ca("admins");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("key");
    let server_auth_only = params.signed_by(&key, &issuer).expect("leaf");
    assert!(
        client
            .verify(std::slice::from_ref(server_auth_only.der()))
            .is_err()
    );
}

#[test]
fn a_certificate_without_a_common_name_is_named_by_its_digest() {
    let (client, issuer) = rcgen_ca("admins");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "ops");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("leaf");
    let actor = client.verify(std::slice::from_ref(cert.der())).expect("valid");
    let digest = actor.strip_prefix("cert:sha256:").expect("named by digest");
    assert_eq!(digest.len(), 16, "{actor}");
}

#[test]
fn common_names_are_read_from_the_subject_not_the_issuer() {
    let admins = ca("the issuing CA");
    let cert = admins.issue_client("bob").expect("client cert");
    assert_eq!(common_name(cert.cert_der()).as_deref(), Some("bob"));
    let noisy = admins.issue_client("line\nbreak").expect("client cert");
    assert_eq!(common_name(noisy.cert_der()).as_deref(), Some("line?break"));
    let long = "x".repeat(300);
    let long_cert = admins.issue_client(&long).expect("client cert");
    assert_eq!(
        common_name(long_cert.cert_der()).map(|name| name.len()),
        Some(MAX_ACTOR_NAME)
    );
    assert_eq!(common_name(b"not der"), None);
    assert_eq!(common_name(&[]), None);
    assert_eq!(common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
}

#[test]
fn bad_bundles_say_what_is_wrong() {
    assert_eq!(
        ClientCa::from_pem("").map(drop),
        Err("no PEM certificate found".to_owned())
    );
    assert_eq!(
        ClientCa::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").map(drop),
        Err("no PEM certificate found".to_owned())
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("admins.pem");
    let error = ClientCa::load(&missing).expect_err("missing file");
    assert!(error.to_string().contains("admins.pem"), "{error}");
    std::fs::write(&missing, "garbage").expect("write");
    let error = ClientCa::load(&missing).expect_err("no certificate");
    assert_eq!(
        error.to_string(),
        format!("{}: no PEM certificate found", missing.display())
    );
}

#[test]
fn common_name_string_types_decode() {
    assert_eq!(decode_string(0x0C, "zoë".as_bytes()).as_deref(), Some("zoë"));
    assert_eq!(decode_string(0x13, b"ops").as_deref(), Some("ops"));
    assert_eq!(decode_string(0x1E, &[0, b'o', 0, b'k']).as_deref(), Some("ok"));
    assert_eq!(decode_string(0x1E, &[0, b'o', 0]), None, "odd BMPString");
    assert_eq!(decode_string(0x0C, &[0xFF]), None, "invalid UTF-8");
    assert_eq!(decode_string(0x04, b"octets"), None, "not a string type");
}

#[test]
fn a_revoked_certificate_is_refused_and_the_others_accepted() {
    let admins = ca("admins");
    let alice = admins.issue_client("alice").expect("alice");
    let bob = admins.issue_client("bob").expect("bob");
    let crl = admins.revocation_list(&[&bob]).expect("crl");
    let client = ClientCa::from_pem(admins.cert_pem())
        .expect("bundle")
        .with_crls(crl.as_bytes())
        .expect("crl");
    assert_eq!(
        client.verify(std::slice::from_ref(alice.cert_der())),
        Ok("cert:alice".to_owned())
    );
    assert_eq!(
        client.verify(std::slice::from_ref(bob.cert_der())),
        Err("it is revoked (listed in --admin-client-crl)".to_owned())
    );
    // Another CA without a CRL in the file keeps working (its status is unknown, not revoked).
    let second = ca("second");
    let carol = second.issue_client("carol").expect("carol");
    let bundle = format!("{}{}", admins.cert_pem(), second.cert_pem());
    let both = ClientCa::from_pem(&bundle)
        .expect("bundle")
        .with_crls(crl.as_bytes())
        .expect("crl");
    assert_eq!(
        both.verify(std::slice::from_ref(carol.cert_der())),
        Ok("cert:carol".to_owned())
    );
    assert!(both.verify(std::slice::from_ref(bob.cert_der())).is_err());
}

#[test]
fn the_crl_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("admins.crl");
    let admins = ca("admins");
    let alice = admins.issue_client("alice").expect("alice");
    let bob = admins.issue_client("bob").expect("bob");
    std::fs::write(&path, admins.revocation_list(&[]).expect("empty crl")).expect("write");
    let client = ClientCa::from_pem(admins.cert_pem())
        .expect("bundle")
        .with_crl_file(&path)
        .expect("crl file");
    assert!(format!("{client:?}").contains("admins.crl"), "{client:?}");
    assert!(client.verify(std::slice::from_ref(bob.cert_der())).is_ok());

    // Revoke bob: the next call reads the new list.
    std::fs::write(&path, admins.revocation_list(&[&bob]).expect("crl")).expect("write");
    assert_eq!(
        client.verify(std::slice::from_ref(bob.cert_der())),
        Err("it is revoked (listed in --admin-client-crl)".to_owned())
    );
    assert!(client.verify(std::slice::from_ref(alice.cert_der())).is_ok());

    // A broken file keeps the last good lists: bob stays revoked.
    std::fs::write(
        &path,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    )
    .expect("write");
    assert!(client.verify(std::slice::from_ref(bob.cert_der())).is_err());
    assert!(client.verify(std::slice::from_ref(alice.cert_der())).is_ok());

    // DER works too.
    let der_path = dir.path().join("admins.der");
    let pem = admins.revocation_list(&[&alice]).expect("crl");
    let der = crl::parse(pem.as_bytes()).expect("pem").remove(0);
    std::fs::write(&der_path, der.as_ref()).expect("write");
    let client = ClientCa::from_pem(admins.cert_pem())
        .expect("bundle")
        .with_crl_file(&der_path)
        .expect("der crl");
    assert!(client.verify(std::slice::from_ref(alice.cert_der())).is_err());
    assert!(client.verify(std::slice::from_ref(bob.cert_der())).is_ok());
}

#[test]
fn bad_crl_files_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let admins = ca("admins");
    let client = ClientCa::from_pem(admins.cert_pem()).expect("bundle");
    let missing = client
        .clone()
        .with_crl_file(&dir.path().join("missing"))
        .unwrap_err();
    assert!(matches!(missing, ClientCaError::Read { .. }), "{missing}");
    let path = dir.path().join("bad.crl");
    std::fs::write(&path, admins.cert_pem()).expect("write");
    let error = client.clone().with_crl_file(&path).unwrap_err().to_string();
    assert!(error.contains("no PEM X509 CRL block found"), "{error}");
    std::fs::write(&path, b"\x30\x03\x02\x01\x01").expect("write");
    let error = client.with_crl_file(&path).unwrap_err().to_string();
    assert!(
        error.contains("cannot verify client certificates with it"),
        "{error}"
    );
}
