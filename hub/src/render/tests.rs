//! Rendering tests: the regcred cases from the seeds, ESO's precedence rules, and errors that never
//! quote a value.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::spec::{self, Spec, SpecFile};

const SECRET_WORD: &str = "s3cr3t-Pa55";

fn fleet_secret(yaml: &str) -> FleetSecretSpec {
    let store = "kind: SecretStore\nname: shared-kv\nprovider: { azurekv: { vaultUrl: https://shared-kv.vault.azure.net } }\n";
    let files = [SpecFile {
        name: "test.yaml".to_owned(),
        content: format!("{store}---\n{yaml}"),
    }];
    let mut specs = spec::parse_files(&files, &BTreeSet::new()).unwrap_or_else(|error| panic!("{error}"));
    match specs.pop().map(|loaded| loaded.spec) {
        Some(Spec::FleetSecret(secret)) => secret,
        other => panic!("expected a FleetSecret, got {other:?}"),
    }
}

fn example(name: &str) -> FleetSecretSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let files = spec::read_path(&dir.join(name)).expect("example readable");
    let mut all = Vec::new();
    if name != "regcred.yaml" {
        all = spec::read_path(&dir.join("regcred.yaml")).expect("store example");
    }
    all.extend(files);
    let specs = spec::parse_files(&all, &BTreeSet::new()).unwrap_or_else(|error| panic!("{error}"));
    specs
        .into_iter()
        .rev()
        .find_map(|loaded| match loaded.spec {
            Spec::FleetSecret(secret) => Some(secret),
            Spec::SecretStore(_) => None,
        })
        .expect("a FleetSecret")
}

fn sources(pairs: &[(&str, &str)]) -> Sources {
    Sources {
        named: pairs
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_owned(),
                    SourceValue {
                        version: format!("{:0>32}", key.len()),
                        value: SecretValue::new(value.as_bytes()),
                    },
                )
            })
            .collect(),
        found: BTreeMap::new(),
    }
}

fn text(value: &SecretValue) -> &str {
    std::str::from_utf8(value.expose()).expect("utf-8")
}

#[test]
fn regcred_from_a_docker_config_value_is_copied_verbatim() {
    let spec = example("regcred.yaml");
    let config = format!(r#"{{"auths":{{"acr.example.io":{{"auth":"{SECRET_WORD}"}}}}}}"#);
    let rendered = render(&spec, &sources(&[("acr-pull", &config)])).expect("renders");
    assert_eq!(rendered.secret_type, "kubernetes.io/dockerconfigjson");
    assert_eq!(rendered.secret_name, "regcred");
    assert_eq!(text(&rendered.data[".dockerconfigjson"]), config);
    assert_eq!(
        rendered
            .labels
            .get("app.kubernetes.io/part-of")
            .map(String::as_str),
        Some("registry")
    );
    assert_eq!(
        rendered.namespaces,
        TargetNamespaces::List(vec!["default".to_owned(), "ci".to_owned()])
    );
}

#[test]
fn regcred_from_username_password_and_server_goes_through_the_template() {
    let spec = example("regcred-from-properties.yaml");
    let parts = format!(r#"{{"username":"puller","password":"{SECRET_WORD}\"x","server":"acr.example.io"}}"#);
    let rendered = render(&spec, &sources(&[("acr-pull-parts", &parts)])).expect("renders");
    assert_eq!(rendered.data.len(), 1, "only the templated key is kept");
    let config: serde_json::Value =
        serde_json::from_slice(rendered.data[".dockerconfigjson"].expose()).expect("valid JSON");
    let entry = &config["auths"]["acr.example.io"];
    assert_eq!(entry["username"], "puller");
    assert_eq!(entry["password"], format!("{SECRET_WORD}\"x"));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("puller:{SECRET_WORD}\"x"));
    assert_eq!(entry["auth"], auth);
}

#[test]
fn an_invalid_docker_config_is_refused_without_quoting_it() {
    let spec = example("regcred.yaml");
    let cases = [
        (
            format!("{{\"auths\": {SECRET_WORD}"),
            "not JSON (line 1 column 11)",
        ),
        (
            format!(r#"{{"registries":{{"{SECRET_WORD}":{{}}}}}}"#),
            "no \"auths\" member",
        ),
        (
            format!(r#"{{"auths":{{"{SECRET_WORD}":{{"user":"{SECRET_WORD}"}}}}}}"#),
            "registry entry 0 has neither",
        ),
        (
            format!(r#"{{"auths":{{"r":{{"auth":1,"x":"{SECRET_WORD}"}}}}}}"#),
            "auth is not a string",
        ),
        (r#"{"auths":{}}"#.to_owned(), "no registry entry"),
    ];
    for (value, expected) in cases {
        let error = render(&spec, &sources(&[("acr-pull", &value)])).expect_err("invalid config");
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(
            !message.contains(SECRET_WORD) && !format!("{error:?}").contains(SECRET_WORD),
            "{message}"
        );
    }
}

#[test]
fn data_overrides_data_from_and_values_decode() {
    let spec = fleet_secret(
        "\
kind: FleetSecret
name: app
storeRef: shared-kv
dataFrom:
  - extract: { key: bundle }
  - find: { name: { regexp: \"^team-\" } }
data:
  - { secretKey: token, remoteRef: { key: token-b64, decodingStrategy: Base64 } }
  - { secretKey: host, remoteRef: { key: bundle, property: db.host } }
target: { namespaces: [apps] }
",
    );
    let mut sources = sources(&[
        (
            "bundle",
            r#"{"token":"from-bundle","db":{"host":"db1","port":5432}}"#,
        ),
        ("token-b64", "ZnJvbS1kYXRh"),
    ]);
    sources.found.insert(
        1,
        [(
            "team-a".to_owned(),
            SourceValue {
                version: "f".repeat(32),
                value: SecretValue::new(b"a".to_vec()),
            },
        )]
        .into(),
    );
    let rendered = render(&spec, &sources).expect("renders");
    let data: BTreeMap<&str, &str> = rendered.data.iter().map(|(k, v)| (k.as_str(), text(v))).collect();
    assert_eq!(
        data,
        BTreeMap::from([
            ("db", r#"{"host":"db1","port":5432}"#),
            ("host", "db1"),
            ("team-a", "a"),
            ("token", "from-data"),
        ])
    );
    assert_eq!(sources.versions().len(), 3);
}

#[test]
fn merge_policy_keeps_data_keys_beside_templated_ones() {
    let spec = fleet_secret(
        "\
kind: FleetSecret
name: basic
storeRef: shared-kv
data:
  - { secretKey: username, remoteRef: { key: user } }
target:
  type: kubernetes.io/basic-auth
  namespaces: [apps]
  template:
    mergePolicy: Merge
    data: { greeting: 'hello {{ .username | upper }}' }
",
    );
    let rendered = render(&spec, &sources(&[("user", "bob")])).expect("renders");
    assert_eq!(text(&rendered.data["username"]), "bob");
    assert_eq!(text(&rendered.data["greeting"]), "hello BOB");
}

#[test]
fn source_errors_name_the_key_and_never_the_value() {
    let spec = fleet_secret(
        "\
kind: FleetSecret
name: app
storeRef: shared-kv
data:
  - { secretKey: host, remoteRef: { key: bundle, property: db.host } }
  - { secretKey: token, remoteRef: { key: token, decodingStrategy: Base64 } }
target: { namespaces: [apps] }
",
    );
    let cases: Vec<(Sources, &str)> = vec![
        (
            sources(&[("token", "dG9r")]),
            r#"no value for Key Vault secret "bundle""#,
        ),
        (
            sources(&[("bundle", SECRET_WORD), ("token", "dG9r")]),
            r#"Key Vault secret "bundle" is not a JSON object, so property "db.host" cannot be read from it"#,
        ),
        (
            sources(&[
                ("bundle", &format!(r#"{{"db":{{"port":"{SECRET_WORD}"}}}}"#)),
                ("token", "dG9r"),
            ]),
            r#"Key Vault secret "bundle" has no property "db.host""#,
        ),
        (
            sources(&[("bundle", r#"{"db":{"host":"h"}}"#), ("token", SECRET_WORD)]),
            r#"Key Vault secret "token" is not valid base64 (decodingStrategy)"#,
        ),
    ];
    for (sources, expected) in cases {
        let error = render(&spec, &sources).expect_err("fails");
        assert_eq!(error.to_string(), expected);
        assert!(!format!("{error:?}").contains(SECRET_WORD));
    }
}

#[test]
fn oversized_secrets_are_refused() {
    let spec = fleet_secret(
        "kind: FleetSecret\nname: big\nstoreRef: shared-kv\ndata: [{ secretKey: blob, remoteRef: { key: blob } }]\ntarget: { namespaces: [apps] }\n",
    );
    let big = "x".repeat(keyfleet_proto::limits::MAX_SECRET_DATA_BYTES);
    let error = render(&spec, &sources(&[("blob", &big)])).expect_err("too large");
    assert!(matches!(error, RenderError::TooLarge { .. }), "{error}");
}

#[test]
fn data_digest_tells_renderings_apart_without_showing_them() {
    let a = BTreeMap::from([("k".to_owned(), SecretValue::new(b"v1".to_vec()))]);
    let b = BTreeMap::from([("k".to_owned(), SecretValue::new(b"v2".to_vec()))]);
    assert_ne!(data_digest(&a), data_digest(&b));
    assert_eq!(data_digest(&a), data_digest(&a.clone()));
}

/// The FleetSecrets `keyfleet import eso` wrote for ESO's documented dockerconfigjson examples
/// (`hub/tests/fixtures/eso/dockerconfigjson`) render what ESO's guide says they render.
#[test]
fn imported_eso_dockerconfigjson_examples_render_as_eso_documents() {
    let expected =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eso/dockerconfigjson/expected.yaml");
    let yaml = std::fs::read_to_string(expected).expect("golden output");
    let store = "apiVersion: keyfleet.io/v1\nkind: SecretStore\nmetadata: { name: example }\nspec: { provider: { azurekv: { vaultUrl: https://example.vault.azure.net } } }\n";
    let files = [SpecFile {
        name: "imported.yaml".to_owned(),
        content: format!("{store}---\n{yaml}"),
    }];
    let secrets: BTreeMap<String, FleetSecretSpec> = spec::parse_files(&files, &BTreeSet::new())
        .unwrap_or_else(|error| panic!("{error}"))
        .into_iter()
        .filter_map(|loaded| match loaded.spec {
            Spec::FleetSecret(secret) => Some((secret.name.clone(), secret)),
            Spec::SecretStore(_) => None,
        })
        .collect();
    // Registry name, host and password: `{"auths":{"<name | lower>.<host>":{…,"auth":b64(name:password)}}}`.
    let rendered = render(
        &secrets["dk-cfg-example-default"],
        &sources(&[
            ("docker-registry-name", "myRegistry"),
            ("docker-registry-host", "docker.io"),
            ("docker-registry-password", SECRET_WORD),
        ]),
    )
    .expect("renders");
    assert_eq!(rendered.secret_type, "kubernetes.io/dockerconfigjson");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("myRegistry:{SECRET_WORD}"));
    assert_eq!(
        text(&rendered.data[".dockerconfigjson"]),
        format!(
            r#"{{"auths":{{"myregistry.docker.io":{{"username":"myRegistry","password":"{SECRET_WORD}","auth":"{auth}"}}}}}}"#
        )
    );
    // A whole docker config through `toString`: copied as it is.
    let config = r#"{"auths":{"registry.example.io":{"auth":"dXNlcjpwYXNz"}}}"#;
    let rendered = render(
        &secrets["dk-cfg-example-apps"],
        &sources(&[("docker-config-example", config)]),
    )
    .expect("renders");
    assert_eq!(text(&rendered.data[".dockerconfigjson"]), config);
    assert_eq!(rendered.secret_name, "secret-to-be-created");
}

/// ESO's documented PKCS#12 ExternalSecret, as `keyfleet import eso` wrote it
/// (`hub/tests/fixtures/eso/pkcs12`), over a PFX as Key Vault serves it (base64): a
/// `kubernetes.io/tls` Secret holding what OpenSSL prints for that archive.
#[test]
fn imported_eso_pkcs12_example_renders_a_tls_secret() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |path: &str| std::fs::read_to_string(fixtures.join(path)).expect("fixture");
    let store = "apiVersion: keyfleet.io/v1\nkind: SecretStore\nmetadata: { name: azure-store }\nspec: { provider: { azurekv: { vaultUrl: https://azure-store.vault.azure.net } } }\n";
    let files = [SpecFile {
        name: "imported.yaml".to_owned(),
        content: format!("{store}---\n{}", read("eso/pkcs12/expected.yaml")),
    }];
    let Some(Spec::FleetSecret(secret)) = spec::parse_files(&files, &BTreeSet::new())
        .unwrap_or_else(|error| panic!("{error}"))
        .pop()
        .map(|loaded| loaded.spec)
    else {
        panic!("a FleetSecret")
    };
    let pfx = read("pkcs12/tls.p12.b64").replace('\n', "");
    let rendered = render(&secret, &sources(&[("tls-client-credentials", &pfx)])).expect("renders");
    assert_eq!(rendered.secret_type, "kubernetes.io/tls");
    assert_eq!(text(&rendered.data["tls.crt"]), read("pkcs12/tls.crt.pem"));
    assert_eq!(text(&rendered.data["tls.key"]), read("pkcs12/tls.key.pem"));
}

fn pkcs12_fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pkcs12")
            .join(name),
    )
    .expect("fixture")
}

/// The DER of the first PEM block of `pem`.
fn first_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

/// `cert/NAME`: the companion secret Key Vault keeps for a certificate, as a base64 PFX or as PEM
/// text, becomes a `kubernetes.io/tls` Secret through `dataFrom.extract` (chain leaf first and
/// key, as OpenSSL prints them), and the certificate's DER in `data` (Key Vault's `cer`, as ESO).
#[test]
fn certificates_render_tls_secrets_from_pfx_or_pem() {
    let (crt, key) = (pkcs12_fixture("tls.crt.pem"), pkcs12_fixture("tls.key.pem"));
    let pfx = pkcs12_fixture("tls.p12.b64").replace('\n', "");
    let pem = format!("{key}{crt}");
    let spec = fleet_secret(
        "\
kind: FleetSecret
name: ingress-tls
storeRef: shared-kv
dataFrom:
  - extract: { key: cert/ingress }
data:
  - { secretKey: ca.der, remoteRef: { key: cert/ingress } }
target: { namespaces: [apps], type: kubernetes.io/tls }
",
    );
    for value in [&pfx, &pem] {
        let rendered = render(&spec, &sources(&[("ingress", value)])).expect("renders");
        assert_eq!(rendered.secret_type, "kubernetes.io/tls");
        assert_eq!(text(&rendered.data["tls.crt"]), crt);
        assert_eq!(text(&rendered.data["tls.key"]), key);
        assert_eq!(rendered.data["ca.der"].expose(), first_der(&crt));
        assert_eq!(rendered.data.len(), 3);
    }
    // Without dataFrom, a tls Secret needs its keys from somewhere: named, never quoted.
    let no_key = fleet_secret(
        "\
kind: FleetSecret
name: cert-only
storeRef: shared-kv
data:
  - { secretKey: tls.crt, remoteRef: { key: cert/ingress } }
target: { namespaces: [apps], type: kubernetes.io/tls }
",
    );
    let error = render(&no_key, &sources(&[("ingress", &pfx)])).expect_err("no tls.key");
    assert_eq!(
        error.to_string(),
        "Secrets of type kubernetes.io/tls need the key \"tls.key\""
    );
    // A secret that is no certificate: the reason names the certificate, never the value.
    let error = render(&spec, &sources(&[("ingress", SECRET_WORD)])).expect_err("not a certificate");
    assert_eq!(
        error.to_string(),
        "Key Vault certificate \"ingress\": the certificate's secret is neither PEM text nor base64"
    );
    let only_cert = crt.clone();
    let error = render(&spec, &sources(&[("ingress", &only_cert)])).expect_err("no key");
    assert_eq!(
        error.to_string(),
        "Key Vault certificate \"ingress\": the certificate's PEM holds no private key"
    );
    let debug = format!("{:?}", crate::spec::template::certificate_parts(pem.as_bytes()));
    assert!(!debug.contains("PRIVATE") && !debug.contains("MII"), "{debug}");
}
