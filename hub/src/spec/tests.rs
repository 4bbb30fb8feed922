//! Table tests for spec parsing and validation, all through [`check`].

use super::*;

const STORE: &str = "\
kind: SecretStore
name: shared-kv
provider:
  azurekv:
    vaultUrl: https://shared-kv.vault.azure.net
    authType: WorkloadIdentity
    pollInterval: 30s
    rateLimit: { perSecond: 50, burst: 100 }
";

const REGCRED: &str = "\
kind: FleetSecret
name: regcred
storeRef: shared-kv
data:
  - secretKey: .dockerconfigjson
    remoteRef: { key: acr-pull, version: \"\", property: \"\" }
target:
  name: regcred
  type: kubernetes.io/dockerconfigjson
  namespaces: [default, ci]
  template: { metadata: { labels: { app.kubernetes.io/part-of: registry } } }
  creationPolicy: Owner
  deletionPolicy: Retain
clusters:
  matchLabels: { env: prod }
rollout:
  waves: [{ matchLabels: { ring: canary } }, { percent: 10 }, { percent: 100 }]
  pauseOnErrorRate: 1%
";

/// Parses `input` as `regcred.yaml` (with the shared-kv store known) and compares the outcome:
/// `Ok(n)` = n specs accepted, `Err(lines)` = exactly these issue lines.
fn check(input: &str, expected: Result<usize, &[&str]>) {
    let files = [SpecFile {
        name: "regcred.yaml".to_owned(),
        content: input.to_owned(),
    }];
    let known: BTreeSet<String> = ["shared-kv".to_owned()].into();
    match (parse_files(&files, &known), expected) {
        (Ok(specs), Ok(n)) => assert_eq!(specs.len(), n, "{input}"),
        (Err(SpecError::Invalid(issues)), Err(want)) => {
            let got: Vec<String> = issues.iter().map(ToString::to_string).collect();
            assert_eq!(got, want, "{input}");
        }
        (got, want) => panic!("{input}\ngot {got:?}\nexpected {want:?}"),
    }
}

/// REGCRED with one line replaced.
fn regcred_with(from: &str, to: &str) -> String {
    assert!(REGCRED.contains(from), "{from}");
    REGCRED.replacen(from, to, 1)
}

#[test]
fn the_design_example_is_accepted() {
    check(&format!("{STORE}---\n{REGCRED}"), Ok(2));
    check(REGCRED, Ok(1));
}

#[test]
fn the_regcred_example_parses_into_the_model() {
    let files = [SpecFile {
        name: "regcred.yaml".to_owned(),
        content: format!("{STORE}---\n{REGCRED}"),
    }];
    let specs = parse_files(&files, &BTreeSet::new()).expect("valid");
    let Spec::SecretStore(store) = &specs[0].spec else {
        panic!("store first")
    };
    assert_eq!(store.vault_url.as_str(), "https://shared-kv.vault.azure.net/");
    assert_eq!(store.poll_interval, Duration::from_secs(30));
    assert_eq!((store.rate_per_second, store.rate_burst), (50, 100));
    let Spec::FleetSecret(secret) = &specs[1].spec else {
        panic!("secret second")
    };
    assert_eq!(specs[1].line, 10);
    assert_eq!(secret.remote_keys(), vec!["acr-pull"]);
    assert_eq!(secret.data[0].remote_ref.version, None);
    assert_eq!(
        secret.target.namespaces,
        TargetNamespaces::List(vec!["default".into(), "ci".into()])
    );
    assert_eq!(
        secret
            .target
            .labels
            .get("app.kubernetes.io/part-of")
            .map(String::as_str),
        Some("registry")
    );
    assert_eq!(
        secret.clusters.match_labels.get("env").map(String::as_str),
        Some("prod")
    );
    let rollout = secret.rollout.as_ref().expect("rollout");
    assert_eq!(rollout.waves.len(), 3);
    assert_eq!(rollout.waves[1], Wave::Percent(10));
    assert!((rollout.pause_on_error_rate - 0.01).abs() < 1e-9);
    // The canonical YAML round-trips to the same model.
    let again = parse_stored(Kind::FleetSecret, "regcred", &specs[1].canonical_yaml).expect("round trip");
    assert_eq!(again, specs[1].spec);
}

#[test]
fn rejected_inputs_name_file_line_and_field() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            regcred_with("creationPolicy: Owner", "creationPolicy: Own"),
            &[r#"regcred.yaml:12: target.creationPolicy: unknown value "Own", expected Owner|Merge|Orphan"#],
        ),
        (
            regcred_with("storeRef: shared-kv", "storeRef: shared-kv\ncolour: blue"),
            &[
                r#"regcred.yaml:4: colour: unknown field "colour", expected one of "storeRef", "data", "dataFrom", "target", "clusters", "rollout", "nearExpiryThreshold""#,
            ],
        ),
        (
            regcred_with(
                "storeRef: shared-kv",
                "storeRef: shared-kv\nnearExpiryThreshold: 10m",
            ),
            &["regcred.yaml:4: nearExpiryThreshold: must be between 1h and 365d"],
        ),
        (
            regcred_with(
                "storeRef: shared-kv",
                "storeRef: shared-kv\nnearExpiryThreshold: soon",
            ),
            &[r#"regcred.yaml:4: nearExpiryThreshold: invalid duration "soon", expected e.g. 14d or 720h"#],
        ),
        (
            regcred_with("  namespaces: [default, ci]", "  namespaces: default"),
            &[r#"regcred.yaml:10: target.namespaces: invalid type: string "default", expected a sequence"#],
        ),
        (
            regcred_with("name: regcred\nstoreRef", "name: Regcred_1\nstoreRef"),
            &[
                r#"regcred.yaml:2: name: invalid name "Regcred_1": a DNS-1123 subdomain (at most 253 characters of a-z, 0-9, - and ., alphanumeric at both ends)"#,
            ],
        ),
        (
            regcred_with("key: acr-pull", "key: acr_pull"),
            &[
                r#"regcred.yaml:6: data[0].remoteRef.key: invalid Key Vault secret name "acr_pull": 1-127 characters of 0-9, a-z, A-Z and -"#,
            ],
        ),
        (
            regcred_with("version: \"\"", "version: \"v1\""),
            &[
                r#"regcred.yaml:6: data[0].remoteRef.version: invalid Key Vault version "v1": 32 hex characters, or empty for the latest"#,
            ],
        ),
        (
            regcred_with(
                "type: kubernetes.io/dockerconfigjson",
                "type: kubernetes.io/dockerconfig",
            ),
            &[
                r#"regcred.yaml:9: target.type: unknown Secret type "kubernetes.io/dockerconfig", expected one of Opaque|kubernetes.io/dockerconfigjson|kubernetes.io/dockercfg|kubernetes.io/basic-auth|kubernetes.io/ssh-auth|kubernetes.io/tls|bootstrap.kubernetes.io/token or a domain-prefixed custom type"#,
            ],
        ),
        (
            regcred_with("secretKey: .dockerconfigjson", "secretKey: config"),
            &[
                r#"regcred.yaml:9: target.type: Secrets of type kubernetes.io/dockerconfigjson need the key ".dockerconfigjson": add it to data[].secretKey or target.template.data"#,
            ],
        ),
        (
            regcred_with(
                "matchLabels: { env: prod }",
                "matchExpressions: [{ key: env, operator: Is, values: [prod] }]",
            ),
            &[
                r#"regcred.yaml:15: clusters.matchExpressions[0].operator: unknown value "Is", expected In|NotIn|Exists|DoesNotExist"#,
            ],
        ),
        (
            regcred_with(
                "matchLabels: { env: prod }",
                "matchExpressions: [{ key: env, operator: In }]",
            ),
            &["regcred.yaml:15: clusters.matchExpressions[0].values: In needs at least one value"],
        ),
        (
            regcred_with("{ percent: 10 }", "{ percent: 0 }"),
            &["regcred.yaml:17: rollout.waves[1].percent: must be between 1 and 100"],
        ),
        (
            regcred_with("{ percent: 100 }", "{ percent: 5 }"),
            &[
                "regcred.yaml:17: rollout.waves[2].percent: percentages are cumulative and must increase (previous wave: 10)",
            ],
        ),
        (
            regcred_with("pauseOnErrorRate: 1%", "pauseOnErrorRate: 150%"),
            &[
                r#"regcred.yaml:18: rollout.pauseOnErrorRate: expected a percentage such as "1%" (0-100%) or a fraction between 0 and 1"#,
            ],
        ),
        (
            regcred_with("storeRef: shared-kv", "storeRef: other-kv"),
            &[r#"regcred.yaml:1: storeRef: no SecretStore named "other-kv""#],
        ),
        (
            regcred_with(
                "  namespaces: [default, ci]\n",
                "  namespaces: [default, ci]\n  namespaceSelector: { matchLabels: { a: b } }\n",
            ),
            &[
                "regcred.yaml:11: target.namespaceSelector: namespaces and namespaceSelector are mutually exclusive",
            ],
        ),
        (
            regcred_with(
                "labels: { app.kubernetes.io/part-of: registry }",
                "labels: { keyfleet.io/revision: \"1\" }",
            ),
            &[
                "regcred.yaml:11: target.template.metadata.labels.keyfleet.io/revision: reserved for keyfleet's own bookkeeping",
            ],
        ),
        (
            "kind: FleetSecret\nname: empty\nstoreRef: shared-kv\ntarget: { namespaces: [default] }\n"
                .to_owned(),
            &["regcred.yaml:1: at least one data or dataFrom entry is required"],
        ),
        (
            "kind: ExternalSecret\nname: x\n".to_owned(),
            &[r#"regcred.yaml:1: kind: unknown value "ExternalSecret", expected SecretStore|FleetSecret"#],
        ),
        (
            "name: x\n".to_owned(),
            &["regcred.yaml:1: kind: missing, expected SecretStore|FleetSecret"],
        ),
        (
            "kind: FleetSecret\nstoreRef: shared-kv\n".to_owned(),
            &[r#"regcred.yaml:1: missing field "name""#],
        ),
        (
            "kind: FleetSecret\nname: [\n".to_owned(),
            &["regcred.yaml:2: unclosed bracket '['"],
        ),
    ];
    for (input, expected) in cases {
        check(&input, Err(expected));
    }
}

#[test]
fn forbidden_policy_combinations_are_rejected() {
    let merge_delete = regcred_with("creationPolicy: Owner", "creationPolicy: Merge")
        .replace("deletionPolicy: Retain", "deletionPolicy: Delete");
    check(
        &merge_delete,
        Err(&[
            "regcred.yaml:13: target.deletionPolicy: Delete cannot be combined with creationPolicy Merge (the Secret is not keyfleet's to delete)",
        ]),
    );
    let orphan_delete = regcred_with("creationPolicy: Owner", "creationPolicy: Orphan")
        .replace("deletionPolicy: Retain", "deletionPolicy: Delete");
    check(
        &orphan_delete,
        Err(&[
            "regcred.yaml:13: target.deletionPolicy: Delete cannot be combined with creationPolicy Orphan (orphaned Secrets are never deleted)",
        ]),
    );
    check(
        &regcred_with("deletionPolicy: Retain", "deletionPolicy: Delete"),
        Ok(1),
    );
}

#[test]
fn store_rules_follow_azure_naming_and_auth() {
    let cases: Vec<(String, Result<usize, &[&str]>)> = vec![
        (STORE.to_owned(), Ok(1)),
        (
            STORE.replace("https://shared-kv.vault", "https://x.vault"),
            Err(&[
                r#"regcred.yaml:5: provider.azurekv.vaultUrl: invalid Key Vault name "x": 3-24 characters of a-z, 0-9 and -, starting with a letter, not ending with - and without --"#,
            ]),
        ),
        (
            STORE.replace("https://", "http://"),
            Err(&["regcred.yaml:5: provider.azurekv.vaultUrl: must be an https:// URL"]),
        ),
        (
            STORE.replace("https://shared-kv.vault.azure.net", "https://127.0.0.1:8443"),
            Ok(1),
        ),
        (
            STORE.replace("WorkloadIdentity", "Password"),
            Err(&[
                r#"regcred.yaml:6: provider.azurekv.authType: unknown value "Password", expected WorkloadIdentity|ManagedIdentity|ServicePrincipal|AzureCli"#,
            ]),
        ),
        (
            STORE.replace(
                "WorkloadIdentity",
                "ServicePrincipal\n    tenantId: t\n    clientId: c\n    clientSecret: { env: KV_SECRET }",
            ),
            Ok(1),
        ),
        (
            STORE.replace(
                "WorkloadIdentity",
                "ServicePrincipal\n    tenantId: t\n    clientId: c",
            ),
            Err(&[
                "regcred.yaml:4: provider.azurekv: clientSecret: required with authType ServicePrincipal (env or file)",
            ]),
        ),
        (
            STORE.replace(
                "WorkloadIdentity",
                "ServicePrincipal\n    tenantId: t\n    clientId: c\n    clientSecret: { value: hunter2 }",
            ),
            Err(&[
                r#"regcred.yaml:9: provider.azurekv.clientSecret.value: unknown field "value", expected "env" or "file""#,
            ]),
        ),
        (
            STORE.replace("30s", "soon"),
            Err(&[
                r#"regcred.yaml:7: provider.azurekv.pollInterval: invalid duration "soon", expected e.g. 30s or 5m"#,
            ]),
        ),
        (
            STORE.replace("perSecond: 50", "perSecond: 5000"),
            Err(&[
                "regcred.yaml:8: provider.azurekv.rateLimit.perSecond: must be between 1 and 400",
                "regcred.yaml:8: provider.azurekv.rateLimit.burst: must be between perSecond and 4000",
            ]),
        ),
    ];
    for (input, expected) in cases {
        check(&input, expected);
    }
}

#[test]
fn templates_and_data_from_are_validated() {
    let templated = "\
kind: FleetSecret
name: regcred
storeRef: shared-kv
data:
  - { secretKey: username, remoteRef: { key: acr-pull, property: username } }
  - { secretKey: password, remoteRef: { key: acr-pull, property: password } }
  - { secretKey: server, remoteRef: { key: acr-pull, property: server } }
target:
  type: kubernetes.io/dockerconfigjson
  namespaces: [default]
  template:
    data:
      .dockerconfigjson: '{\"auths\":{\"{{ .server }}\":{\"auth\":\"{{ printf \"%s:%s\" .username .password | b64enc }}\"}}}'
";
    check(templated, Ok(1));
    check(
        &templated.replace("{{ .server }}", "{{ .registry }}"),
        Err(&[
            r#"regcred.yaml:13: target.template.data..dockerconfigjson: template refers to "registry", which no data[].secretKey provides"#,
        ]),
    );
    check(
        &templated.replace("b64enc", "sha1"),
        Err(&[
            r#"regcred.yaml:13: target.template.data..dockerconfigjson: template syntax error at offset 75: unknown function "sha1"; known: b64enc, b64dec, printf, quote, squote, toJson, toString, upper, lower, trim, trimPrefix, trimSuffix, replace, default, empty, contains, hasPrefix, hasSuffix, indent, nindent, index, eq, ne, not, and, or, len, filterPEM, pkcs12cert, pkcs12certPass, pkcs12key, pkcs12keyPass"#,
        ]),
    );
    let find = "\
kind: FleetSecret
name: platform
storeRef: shared-kv
dataFrom:
  - find: { name: { regexp: \"^acr-\" }, tags: { team: platform } }
  - extract: { key: bundle }
target: { namespaces: [default] }
";
    check(find, Ok(1));
    check(
        &find.replace("^acr-", "(unclosed"),
        Err(&["regcred.yaml:5: dataFrom[0].find.name.regexp: invalid regular expression: unclosed group"]),
    );
    check(
        &find.replace("- extract: { key: bundle }", "- {}"),
        Err(&["regcred.yaml:6: dataFrom[1]: exactly one of extract, find is required"]),
    );
}

/// `cert/NAME` reads a Key Vault certificate (through its companion secret `NAME`): in `data` as
/// ESO (the DER certificate), in `dataFrom.extract` as `tls.crt` + `tls.key`. `key/` stays refused.
#[test]
fn certificate_references_are_read_and_key_references_refused() {
    let tls = "\
kind: FleetSecret
name: ingress-tls
storeRef: shared-kv
dataFrom:
  - extract: { key: cert/ingress }
data:
  - { secretKey: cert.der, remoteRef: { key: cert/ingress, version: 0123456789abcdef0123456789abcdef } }
target: { namespaces: [default], type: kubernetes.io/tls }
";
    check(tls, Ok(1));
    let files = [SpecFile {
        name: "tls.yaml".to_owned(),
        content: tls.to_owned(),
    }];
    let known: BTreeSet<String> = ["shared-kv".to_owned()].into();
    let Some(Spec::FleetSecret(parsed)) = parse_files(&files, &known)
        .expect("valid")
        .pop()
        .map(|loaded| loaded.spec)
    else {
        panic!("a FleetSecret");
    };
    assert_eq!(
        parsed.remote_keys(),
        ["ingress"],
        "the companion secret is what is watched"
    );
    assert_eq!(parsed.data[0].remote_ref.object, ObjectType::Certificate);
    assert!(matches!(&parsed.data_from[0], DataFrom::Extract(r) if r.object == ObjectType::Certificate));
    check(
        &tls.replace("version: 0123456789abcdef0123456789abcdef", "property: a.b"),
        Err(&[
            "regcred.yaml:7: data[0].remoteRef.property: a certificate (cert/) is not JSON: property does not apply",
        ]),
    );
    check(
        &tls.replace(
            "{ key: cert/ingress }",
            "{ key: cert/ingress, decodingStrategy: Base64 }",
        ),
        Err(&[
            "regcred.yaml:5: dataFrom[0].extract.decodingStrategy: extract of a certificate (cert/) yields PEM tls.crt and tls.key: decodingStrategy does not apply",
        ]),
    );
    check(
        &tls.replace("{ key: cert/ingress }", "{ key: key/signing }"),
        Err(&[
            "regcred.yaml:5: dataFrom[0].extract.key: key/ objects (Key Vault keys) are not supported: keyfleet distributes secrets and certificates",
        ]),
    );
}

#[test]
fn duplicate_names_across_files_are_rejected() {
    let files = [
        SpecFile {
            name: "a.yaml".to_owned(),
            content: REGCRED.to_owned(),
        },
        SpecFile {
            name: "b.yaml".to_owned(),
            content: format!("{STORE}---\n{REGCRED}"),
        },
    ];
    let error = parse_files(&files, &BTreeSet::new()).expect_err("duplicate");
    assert_eq!(
        error.to_string(),
        r#"b.yaml:10: name: FleetSecret "regcred" is also defined at a.yaml:1"#
    );
}

#[test]
fn directories_are_read_recursively_in_path_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("b.yaml"), REGCRED).expect("write");
    std::fs::create_dir(dir.path().join("stores")).expect("mkdir");
    std::fs::write(dir.path().join("stores/a.yml"), STORE).expect("write");
    std::fs::write(dir.path().join("README.md"), "not yaml").expect("write");
    let files = read_path(dir.path()).expect("readable");
    assert_eq!(files.len(), 2);
    assert!(files[0].name.ends_with("b.yaml"));
    let specs = parse_files(&files, &BTreeSet::new()).expect("valid");
    assert_eq!(specs.len(), 2);
    let missing = read_path(&dir.path().join("nope")).expect_err("missing");
    assert!(missing.to_string().starts_with("cannot read "), "{missing}");
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let files = read_path(&dir).expect("examples readable");
    let specs = parse_files(&files, &BTreeSet::new()).unwrap_or_else(|error| panic!("{error}"));
    let names: Vec<&str> = specs.iter().map(|loaded| loaded.spec.name()).collect();
    assert_eq!(names, vec!["regcred-templated", "shared-kv", "regcred"]);
}

#[test]
fn near_expiry_threshold_is_read_and_kept_in_the_canonical_yaml() {
    let input = regcred_with(
        "storeRef: shared-kv",
        "storeRef: shared-kv\nnearExpiryThreshold: 14d",
    );
    let files = [SpecFile {
        name: "regcred.yaml".to_owned(),
        content: input,
    }];
    let known: BTreeSet<String> = ["shared-kv".to_owned()].into();
    let specs = parse_files(&files, &known).expect("valid");
    let (secret, yaml) = specs
        .iter()
        .find_map(|loaded| match &loaded.spec {
            Spec::FleetSecret(secret) => Some((secret, &loaded.canonical_yaml)),
            Spec::SecretStore(_) => None,
        })
        .expect("a FleetSecret");
    assert!(yaml.contains("nearExpiryThreshold: 14d"), "{yaml}");
    assert_eq!(
        secret.near_expiry_threshold,
        Some(std::time::Duration::from_secs(14 * 86_400))
    );
}

/// REGCRED in the Kubernetes shape.
const REGCRED_K8S: &str = "\
apiVersion: keyfleet.io/v1
kind: FleetSecret
metadata:
  name: regcred
  labels: { team: platform }
  annotations: { config.kubernetes.io/origin: regcred.yaml }
spec:
  storeRef: shared-kv
  data:
    - secretKey: .dockerconfigjson
      remoteRef: { key: acr-pull, version: \"\", property: \"\" }
  target:
    name: regcred
    type: kubernetes.io/dockerconfigjson
    namespaces: [default, ci]
    template: { metadata: { labels: { app.kubernetes.io/part-of: registry } } }
    creationPolicy: Owner
    deletionPolicy: Retain
  clusters:
    matchLabels: { env: prod }
  rollout:
    waves: [{ matchLabels: { ring: canary } }, { percent: 10 }, { percent: 100 }]
    pauseOnErrorRate: 1%
";

fn parse_one(content: &str) -> LoadedSpec {
    let files = [SpecFile {
        name: "regcred.yaml".to_owned(),
        content: content.to_owned(),
    }];
    let known: BTreeSet<String> = ["shared-kv".to_owned()].into();
    let mut specs = parse_files(&files, &known).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(specs.len(), 1);
    specs.remove(0)
}

#[test]
fn the_kubernetes_shape_reads_into_the_same_model_as_the_flat_shape() {
    let flat = parse_one(REGCRED);
    let shaped = parse_one(REGCRED_K8S);
    assert_eq!(flat.spec, shaped.spec);
    assert!(flat.legacy_shape);
    assert!(!shaped.legacy_shape);
    // Without labels or annotations the store keeps the flat shape (with apiVersion), which the
    // previous release reads, whichever shape was written; with them, the Kubernetes shape.
    let unlabelled = parse_one(
        &REGCRED_K8S.replace("  labels: { team: platform }\n", "").replace(
            "  annotations: { config.kubernetes.io/origin: regcred.yaml }\n",
            "",
        ),
    );
    assert!(
        flat.canonical_yaml.starts_with(
            "apiVersion: keyfleet.io/v1\nkind: FleetSecret\nname: regcred\nstoreRef: shared-kv\n"
        ),
        "{}",
        flat.canonical_yaml
    );
    assert_eq!(unlabelled.canonical_yaml, flat.canonical_yaml);
    assert!(
        shaped.canonical_yaml.starts_with("apiVersion: keyfleet.io/v1\nkind: FleetSecret\nmetadata:\n  name: regcred\n  labels:\n    team: platform\n"),
        "{}",
        shaped.canonical_yaml
    );
    // What the store keeps parses back to the same spec, in either shape, and shows in the
    // Kubernetes shape.
    for loaded in [&flat, &shaped] {
        let again = parse_stored(Kind::FleetSecret, "regcred", &loaded.canonical_yaml).expect("round trip");
        assert_eq!(again, loaded.spec);
        let shown = kubernetes_yaml(&loaded.canonical_yaml).expect("readable");
        assert!(
            shown.starts_with("apiVersion: keyfleet.io/v1\nkind: FleetSecret\nmetadata:\n  name: regcred\n"),
            "{shown}"
        );
        assert_eq!(parse_one(&shown).spec, loaded.spec);
    }
    // A spec stored by an earlier release (flat canonical YAML) still parses.
    assert_eq!(
        parse_stored(Kind::FleetSecret, "regcred", REGCRED).expect("flat stored"),
        flat.spec
    );
}

#[test]
fn kubernetes_shaped_rejections_name_the_full_path() {
    let with = |from: &str, to: &str| {
        assert!(REGCRED_K8S.contains(from), "{from}");
        REGCRED_K8S.replacen(from, to, 1)
    };
    check(
        &with("creationPolicy: Owner", "creationPolicy: Own"),
        Err(&[
            r#"regcred.yaml:17: spec.target.creationPolicy: unknown value "Own", expected Owner|Merge|Orphan"#,
        ]),
    );
    check(
        &with("  name: regcred\n  labels", "  name: Regcred_1\n  labels"),
        Err(&[
            r#"regcred.yaml:4: metadata.name: invalid name "Regcred_1": a DNS-1123 subdomain (at most 253 characters of a-z, 0-9, - and ., alphanumeric at both ends)"#,
        ]),
    );
    check(
        &with("apiVersion: keyfleet.io/v1\n", ""),
        Err(&["regcred.yaml:1: apiVersion: missing, expected keyfleet.io/v1"]),
    );
    check(
        &with("keyfleet.io/v1", "external-secrets.io/v1"),
        Err(&[
            r#"regcred.yaml:1: apiVersion: unknown value "external-secrets.io/v1", expected keyfleet.io/v1"#,
        ]),
    );
    check(
        &with("  storeRef: shared-kv\n", "  storeRef: other-kv\n"),
        Err(&[r#"regcred.yaml:1: spec.storeRef: no SecretStore named "other-kv""#]),
    );
    check(
        &with("  labels: { team: platform }", "  namespace: apps"),
        Err(&[
            r#"regcred.yaml:5: metadata.namespace: unknown field "namespace", expected one of "name", "labels", "annotations""#,
        ]),
    );
    check(
        &with("  labels: { team: platform }", "  labels: { team: \"a b\" }"),
        Err(&[
            r#"regcred.yaml:5: metadata.labels.team: invalid label value "a b": at most 63 characters of a-z, A-Z, 0-9, -, _ and ., alphanumeric at both ends"#,
        ]),
    );
    check(
        &format!("{REGCRED_K8S}status: {{}}\n"),
        Err(&[
            r#"regcred.yaml:24: status: unknown field "status", expected one of "apiVersion", "kind", "metadata", "spec""#,
        ]),
    );
    check(
        &with(
            "  data:\n    - secretKey: .dockerconfigjson\n      remoteRef: { key: acr-pull, version: \"\", property: \"\" }\n",
            "",
        ),
        Err(&[
            "regcred.yaml:7: spec: at least one data or dataFrom entry is required",
            r#"regcred.yaml:11: spec.target.type: Secrets of type kubernetes.io/dockerconfigjson need the key ".dockerconfigjson": add it to data[].secretKey or target.template.data"#,
        ]),
    );
}

#[test]
fn the_flat_shape_is_accepted_with_a_deprecation_warning() {
    let files = [
        SpecFile {
            name: "flat.yaml".to_owned(),
            content: format!("{STORE}---\n{REGCRED}"),
        },
        SpecFile {
            name: "shaped.yaml".to_owned(),
            content: REGCRED_K8S.to_owned(),
        },
    ];
    let warnings: Vec<String> = deprecation_warnings(&files)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("flat.yaml:1: deprecated flat spec shape: write apiVersion: keyfleet.io/v1"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("flat.yaml:10: deprecated flat spec shape"),
        "{warnings:?}"
    );
}
