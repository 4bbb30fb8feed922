//! Key Vault certificates (`remoteRef.key: cert/NAME`) end to end against the Key Vault emulator:
//! the hub reads a certificate through its companion secret (the official secrets crate; PEM or
//! PFX), renders a `kubernetes.io/tls` Secret from it, rolls it out through a real `keyfleet
//! serve` to protocol agents, and follows a renewal (a new certificate version is a new version of
//! the companion secret). No key material reaches an error, a `Debug` print or the hub's log.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use keyfleet_hub::domain::Sha256;
use keyfleet_hub::render::{self, RenderedSecret, SourceValue, Sources};
use keyfleet_hub::spec::{
    self, AuthType, AzureEnvironment, CredentialSource, FleetSecretSpec, SecretStoreSpec, Spec, SpecFile,
};
use keyfleet_hub::vault::{AzureKeyVault, SecretSource, VaultOptions};
use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, KeyVaultConfig, KeyVaultEmulator, KeyVaultHandle,
    PEM_CONTENT_TYPE, PFX_CONTENT_TYPE, TestCertificate,
};
use support::TestDb;
use support::serve::{ServeEnv, ServeProcess, all_agents, start_agents, status_until};

const CONVERGE: Duration = Duration::from_secs(90);

/// A store on the emulator, polled every second.
fn store_yaml(vault_url: &url::Url) -> String {
    format!(
        "apiVersion: keyfleet.io/v1\nkind: SecretStore\nmetadata: {{ name: kv }}\nspec:\n  provider:\n    azurekv:\n      vaultUrl: {}\n      authType: WorkloadIdentity\n      pollInterval: 1s\n",
        vault_url.as_str().trim_end_matches('/')
    )
}

/// The TLS Secret of an ingress, from the Key Vault certificate `ingress-tls`: `tls.crt` and
/// `tls.key` by `dataFrom.extract`, and the certificate's DER as ESO's `cert/` gives it.
const TLS_FLEET_SECRET: &str = "\
apiVersion: keyfleet.io/v1
kind: FleetSecret
metadata: { name: ingress-tls }
spec:
  storeRef: kv
  dataFrom:
    - extract: { key: cert/ingress-tls }
  data:
    - { secretKey: cert.der, remoteRef: { key: cert/ingress-tls } }
  target: { name: ingress-tls, type: kubernetes.io/tls, namespaces: [web] }
";

fn fleet_secret(vault_url: &url::Url) -> FleetSecretSpec {
    let files = [SpecFile {
        name: "tls.yaml".to_owned(),
        content: format!("{}---\n{TLS_FLEET_SECRET}", store_yaml(vault_url)),
    }];
    spec::parse_files(&files, &BTreeSet::new())
        .unwrap()
        .into_iter()
        .find_map(|loaded| match loaded.spec {
            Spec::FleetSecret(secret) => Some(secret),
            Spec::SecretStore(_) => None,
        })
        .unwrap()
}

/// What the hub must render for `value` (the companion secret at one version).
fn rendered(vault_url: &url::Url, version: &str, value: &[u8]) -> RenderedSecret {
    let sources = Sources {
        named: [(
            "ingress-tls".to_owned(),
            SourceValue {
                version: version.to_owned(),
                value: keyfleet_hub::domain::SecretValue::new(value.to_vec()),
            },
        )]
        .into(),
        found: Default::default(),
    };
    render::render(&fleet_secret(vault_url), &sources).unwrap()
}

fn without_whitespace(text: &[u8]) -> String {
    String::from_utf8(text.to_vec())
        .unwrap()
        .split_whitespace()
        .collect()
}

fn source(handle: &KeyVaultHandle, dir: &tempfile::TempDir) -> AzureKeyVault {
    let secret = dir.path().join("client.secret");
    std::fs::write(&secret, DEFAULT_CLIENT_SECRET).unwrap();
    let spec = SecretStoreSpec {
        name: "kv".to_owned(),
        vault_url: handle.vault_url().clone(),
        auth: AuthType::ServicePrincipal {
            tenant_id: keyfleet_testkit::keyvault::DEFAULT_TENANT.to_owned(),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: CredentialSource::File(secret),
        },
        environment: AzureEnvironment::PublicCloud,
        poll_interval: Duration::from_secs(30),
        rate_per_second: 100,
        rate_burst: 200,
    };
    let options = VaultOptions {
        ca_pem: Some(handle.ca_pem().as_bytes().to_vec()),
        authority_host: Some(handle.authority_url().clone()),
        verify_challenge_resource: false,
        ..VaultOptions::default()
    };
    AzureKeyVault::new(&spec, &options).unwrap()
}

/// The key's base64 body lines, to look for in logs and prints.
fn key_lines(certificate: &TestCertificate) -> Vec<String> {
    certificate
        .key_pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 20)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_certificate_is_read_through_its_companion_secret_in_pfx_or_pem() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = TestCertificate::self_signed("ingress.example", &["ingress.example"]).unwrap();
    let v1 = kv.set_certificate("ingress-tls", &first.pfx().unwrap()).unwrap();
    let vault = source(&kv, &dir);

    let fetched = vault.get("ingress-tls", None).await.unwrap();
    assert_eq!(
        fetched.version, v1,
        "the certificate's version is the companion secret's"
    );
    assert_eq!(fetched.content_type.as_deref(), Some(PFX_CONTENT_TYPE));
    assert!(
        fetched.expires.is_some() && fetched.not_before.is_some(),
        "validity of the certificate"
    );
    let tls = rendered(kv.vault_url(), &fetched.version, fetched.value.expose());
    assert_eq!(tls.secret_type, "kubernetes.io/tls");
    assert_eq!(
        without_whitespace(tls.data["tls.crt"].expose()),
        without_whitespace(first.cert_pem.as_bytes())
    );
    assert_eq!(
        without_whitespace(tls.data["tls.key"].expose()),
        without_whitespace(first.key_pem.as_bytes())
    );
    assert_eq!(tls.data["cert.der"].expose(), first.cert_der.as_slice());

    // Renewed in PEM form: a new version of the same companion secret.
    let renewed = TestCertificate::self_signed("ingress.example", &["ingress.example"]).unwrap();
    let v2 = kv
        .set_certificate("ingress-tls", renewed.pem_bundle().as_bytes())
        .unwrap();
    let versions = vault.list_versions("ingress-tls").await.unwrap();
    let mut listed: Vec<&str> = versions.iter().map(|v| v.version.as_str()).collect();
    listed.sort_unstable();
    let mut expected = vec![v1.as_str(), v2.as_str()];
    expected.sort_unstable();
    assert_eq!(listed, expected);
    let latest = vault.get("ingress-tls", None).await.unwrap();
    assert_eq!(
        (latest.version.as_str(), latest.content_type.as_deref()),
        (v2.as_str(), Some(PEM_CONTENT_TYPE))
    );
    let tls = rendered(kv.vault_url(), &latest.version, latest.value.expose());
    assert_eq!(
        without_whitespace(tls.data["tls.key"].expose()),
        without_whitespace(renewed.key_pem.as_bytes())
    );
    let old = vault.get("ingress-tls", Some(&v1)).await.unwrap();
    assert_eq!(old.content_type.as_deref(), Some(PFX_CONTENT_TYPE));

    // No key material in a Debug print of what was fetched or rendered.
    let printed = format!("{latest:?} {tls:?} {first:?}");
    for line in key_lines(&renewed).iter().chain(&key_lines(&first)) {
        assert!(!printed.contains(line.as_str()), "{printed}");
    }
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    kv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_fleet_secret_from_a_certificate_rolls_out_and_follows_its_renewal() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let first = TestCertificate::self_signed("shop.example", &["shop.example"]).unwrap();
    let v1 = kv
        .set_certificate("ingress-tls", first.pem_bundle().as_bytes())
        .unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let hub = ServeProcess::start(&env, "hub-a", any_port).await;
    let mut admin = env.admin(&hub).await;
    admin
        .apply_specs(v1::ApplySpecsRequest {
            files: vec![
                v1::SpecFile {
                    name: "store.yaml".to_owned(),
                    content: store_yaml(kv.vault_url()),
                },
                v1::SpecFile {
                    name: "tls.yaml".to_owned(),
                    content: TLS_FLEET_SECRET.to_owned(),
                },
            ],
            dry_run: false,
        })
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for index in 0..3 {
        let response = admin
            .create_cluster(v1::CreateClusterRequest {
                name: format!("cluster-{index:03}"),
                labels: [("env".to_owned(), "prod".to_owned())].into_iter().collect(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(response.token.unwrap().token);
    }
    let agents = start_agents(&[env.hub_address(&hub)], tokens);

    // Every cluster holds exactly the TLS Secret rendered from the certificate (the agents check
    // each payload's sha256; this compares it with the expected rendering's).
    let holds = |expected: Sha256| {
        move |state: &keyfleet_testkit::agent::AgentState| {
            state
                .applied
                .get("ingress-tls")
                .is_some_and(|(_, sha)| Sha256::from_slice(sha) == Some(expected))
        }
    };
    let expected = keyfleet_hub::grpc::convert::rendered_sha256(&rendered(
        kv.vault_url(),
        &v1,
        first.pem_bundle().as_bytes(),
    ));
    all_agents(
        CONVERGE,
        &agents,
        "every cluster holds the TLS Secret",
        holds(expected),
    )
    .await;

    // Renewal (as PFX): the poller sees the companion secret's new version and rolls it out.
    let renewed = TestCertificate::self_signed("shop.example", &["shop.example"]).unwrap();
    let pfx = renewed.pfx().unwrap();
    let renewed_at = Instant::now();
    let v2 = kv.set_certificate("ingress-tls", &pfx).unwrap();
    let value = base64::engine::general_purpose::STANDARD.encode(&pfx);
    let expected =
        keyfleet_hub::grpc::convert::rendered_sha256(&rendered(kv.vault_url(), &v2, value.as_bytes()));
    all_agents(
        CONVERGE,
        &agents,
        "every cluster holds the renewed certificate",
        holds(expected),
    )
    .await;
    let took = renewed_at.elapsed();
    println!(
        "certificate renewal to every cluster: {} ms (pollInterval 1s)",
        took.as_millis()
    );
    let status = status_until(
        "ingress-tls",
        &mut admin,
        "every cluster applied the renewal",
        |status| status.applied == 3 && status.sources.iter().any(|source| source.version == v2),
    )
    .await;
    assert_eq!(status.targeted, 3, "{status:?}");
    // Key Vault gives the companion secret the certificate's validity, so expiry governance
    // (NearExpiry, Expired) covers certificates as it covers secrets.
    let served = status.sources.iter().find(|source| source.version == v2).unwrap();
    assert!(
        served.expires.is_some() && served.not_before.is_some(),
        "{served:?}"
    );

    // The hub's log names the certificate, never its key.
    for line in key_lines(&first).iter().chain(&key_lines(&renewed)) {
        assert!(!hub.logged(line), "key material in the hub's log");
    }
    assert!(!hub.logged("PRIVATE KEY"));
    drop(agents);
    db.drop_db().await;
}
