//! Golden tests over real ESO manifests from ESO's own documentation (`hub/tests/fixtures/eso/`,
//! each file naming its source): each case's `input/` converts to exactly `expected.yaml` with
//! exactly the findings in `findings.txt`. A stale golden file is rewritten and the test fails,
//! so the change shows in the diff.

use std::path::{Path, PathBuf};

use super::*;
use crate::spec::read_path;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eso")
}

/// Converts a case's inputs, with file names relative to the case directory.
fn convert(case: &Path) -> Imported {
    let mut files = read_path(&case.join("input")).expect("inputs");
    for file in &mut files {
        file.name = Path::new(&file.name)
            .strip_prefix(case)
            .map(|path| path.display().to_string())
            .unwrap_or_else(|_| file.name.clone());
    }
    import(&files, &Options::default())
}

#[test]
fn the_documented_eso_manifests_convert_as_recorded() {
    let mut stale = Vec::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "{cases:?}");
    for case in cases {
        let imported = convert(&case);
        let findings: String = imported
            .findings
            .iter()
            .map(|finding| format!("{finding}\n"))
            .collect();
        for (file, text) in [("expected.yaml", imported.to_yaml()), ("findings.txt", findings)] {
            let path = case.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, &text).expect("write golden file");
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(stale.is_empty(), "rewritten (review and commit them): {stale:#?}");
}

/// Key mappings survive: every converted `data[]` entry keeps its `secretKey` and Key Vault name.
#[test]
fn key_mappings_are_kept() {
    let imported = convert(&fixtures().join("service-principal"));
    let secret = imported
        .documents
        .iter()
        .find(|document| document.kind == "FleetSecret")
        .expect("a FleetSecret");
    let value: Value = serde_json::from_str(&secret.json).expect("json");
    let data: Vec<(&str, &str)> = value["spec"]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|entry| {
            (
                entry["secretKey"].as_str().expect("secretKey"),
                entry["remoteRef"]["key"].as_str().expect("key"),
            )
        })
        .collect();
    assert_eq!(
        data,
        [
            ("database-username", "database-username"),
            ("database-password", "database-password"),
            ("db-client-cert", "cert/db-client-cert"),
        ]
    );
    assert_eq!(value["spec"]["target"]["namespaces"], json!(["default"]));
    assert_eq!(value["spec"]["storeRef"], json!("azure-store"));
    // The dropped entries are each reported with their path.
    for path in [
        "spec.data[2].remoteRef.metadataPolicy",
        "spec.data[3].remoteRef.metadataPolicy",
        "spec.data[5].remoteRef.key",
    ] {
        assert!(
            imported
                .findings
                .iter()
                .any(|finding| finding.path == path && finding.severity == Severity::Warning),
            "{path}: {:#?}",
            imported.findings
        );
    }
    // refreshInterval 1h0m0s became the store's poll interval; the client secret a file.
    let store: Value = serde_json::from_str(&imported.documents[0].json).expect("json");
    assert_eq!(store["spec"]["provider"]["azurekv"]["pollInterval"], json!("1h"));
    assert_eq!(
        store["spec"]["provider"]["azurekv"]["clientSecret"],
        json!({ "file": "/etc/keyfleet/credentials/azure-secret-sp/ClientSecret" })
    );
    assert_eq!(imported.worst(), Some(Severity::Warning));
}

/// `cert/NAME` keeps ESO's meaning (the certificate's DER); ESO refuses `dataFrom.extract` of a
/// certificate, so that entry is reported, not turned into keyfleet's tls.crt/tls.key extract.
#[test]
fn certificate_references_keep_their_eso_meaning() {
    let files = [SpecFile {
        name: "tls.yaml".to_owned(),
        content: "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: { name: tls, namespace: web }\nspec:\n  secretStoreRef: { kind: ClusterSecretStore, name: kv }\n  data:\n    - { secretKey: ca.crt, remoteRef: { key: cert/web-ca, property: ignored, version: 0123456789abcdef0123456789abcdef } }\n    - { secretKey: bundle, remoteRef: { key: secret/web-tls } }\n  dataFrom:\n    - extract: { key: cert/web-tls }\n".to_owned(),
    }];
    let imported = import(&files, &Options::default());
    let secret = imported
        .documents
        .iter()
        .find(|document| document.kind == "FleetSecret")
        .expect("a FleetSecret");
    let value: Value = serde_json::from_str(&secret.json).expect("json");
    assert_eq!(
        value["spec"]["data"][0]["remoteRef"],
        json!({"key": "cert/web-ca", "version": "0123456789abcdef0123456789abcdef"})
    );
    assert_eq!(value["spec"]["data"][1]["remoteRef"], json!({"key": "web-tls"}));
    assert!(
        value["spec"]
            .get("dataFrom")
            .is_none_or(|from| from.as_array().is_some_and(Vec::is_empty)),
        "{value}"
    );
    let lines: Vec<String> = imported.findings.iter().map(ToString::to_string).collect();
    assert!(
        lines.iter().any(|line| line.starts_with(
            "tls.yaml:7: warning: spec.data[0].remoteRef.property = \"ignored\": ESO ignores property"
        )),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|line| line.starts_with("tls.yaml:10: warning: spec.dataFrom[0].extract.key = \"cert/web-tls\": ESO refuses dataFrom.extract")),
        "{lines:#?}"
    );
}

#[test]
fn one_external_secret_in_several_namespaces_is_one_fleet_secret() {
    let manifest = |namespace: &str| {
        format!(
            "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {{ name: app, namespace: {namespace} }}\nspec:\n  secretStoreRef: {{ kind: ClusterSecretStore, name: kv }}\n  data: [{{ secretKey: token, remoteRef: {{ key: app-token }} }}]\n"
        )
    };
    let files = [
        SpecFile {
            name: "a.yaml".to_owned(),
            content: manifest("team-a"),
        },
        SpecFile {
            name: "b.yaml".to_owned(),
            content: manifest("team-b"),
        },
    ];
    let imported = import(&files, &Options::default());
    assert_eq!(imported.documents.len(), 1, "{:#?}", imported.findings);
    assert!(
        imported.documents[0]
            .yaml
            .contains("namespaces:\n    - team-a\n    - team-b\n"),
        "{}",
        imported.documents[0].yaml
    );
    assert_eq!(imported.worst(), Some(Severity::Note));
}

#[test]
fn go_durations_parse_as_eso_writes_them() {
    assert_eq!(go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
    assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(go_duration("15s"), Some(Duration::from_secs(15)));
    assert_eq!(go_duration("0"), Some(Duration::ZERO));
    assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(go_duration("1d"), None);
    assert_eq!(go_duration(""), None);
    assert_eq!(go_duration("h"), None);
}

#[test]
fn other_providers_and_kinds_are_reported_not_converted() {
    let files = [SpecFile {
        name: "aws.yaml".to_owned(),
        content: "apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: { name: aws }\nspec:\n  provider:\n    aws: { service: SecretsManager, region: eu-west-1 }\n---\napiVersion: external-secrets.io/v1alpha1\nkind: PushSecret\nmetadata: { name: push }\nspec: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: cm }\n".to_owned(),
    }];
    let imported = import(&files, &Options::default());
    assert!(imported.documents.is_empty());
    let lines: Vec<String> = imported.findings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "aws.yaml:6: error: spec.provider.aws: provider aws is not Azure Key Vault; keyfleet reads Azure Key Vault only, so the store is not converted",
            r#"aws.yaml:8: error: apiVersion = "external-secrets.io/v1alpha1": unsupported version; expected one of external-secrets.io/v1, external-secrets.io/v1beta1 (convert older manifests with ESO's own tooling first)"#,
            "aws.yaml:13: note: ConfigMap (v1) is not an External Secrets Operator resource; skipped",
        ]
    );
}

#[test]
fn a_cluster_external_secret_targets_its_namespace_selector() {
    let files = [SpecFile {
        name: "ces.yaml".to_owned(),
        content: "\
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: { name: shared }
spec:
  provider:
    azurekv: { authType: WorkloadIdentity, vaultUrl: https://shared-kv.vault.azure.net }
---
apiVersion: external-secrets.io/v1
kind: ClusterExternalSecret
metadata: { name: pull, labels: { team: platform } }
spec:
  externalSecretName: regcred
  namespaceSelectors:
    - matchLabels: { pulls: acr }
  refreshTime: 1m
  externalSecretSpec:
    refreshInterval: 15m
    secretStoreRef: { kind: ClusterSecretStore, name: shared }
    target:
      template: { type: kubernetes.io/dockerconfigjson }
    data:
      - { secretKey: .dockerconfigjson, remoteRef: { key: acr-pull } }
"
        .to_owned(),
    }];
    let imported = import(&files, &Options::default());
    let lines: Vec<String> = imported.findings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            r#"ces.yaml:15: warning: spec.refreshTime = "1m": how often ESO re-lists namespaces; keyfleet's agents follow namespace changes as they happen"#
        ]
    );
    assert_eq!(
        imported.to_yaml(),
        "\
apiVersion: keyfleet.io/v1
kind: SecretStore
metadata:
  name: shared
spec:
  provider:
    azurekv:
      vaultUrl: https://shared-kv.vault.azure.net
      authType: WorkloadIdentity
      pollInterval: 15m
---
apiVersion: keyfleet.io/v1
kind: FleetSecret
metadata:
  name: pull
  labels:
    team: platform
spec:
  storeRef: shared
  data:
  - secretKey: .dockerconfigjson
    remoteRef:
      key: acr-pull
  target:
    name: regcred
    namespaceSelector:
      matchLabels:
        pulls: acr
    template:
      type: kubernetes.io/dockerconfigjson
"
    );
}
