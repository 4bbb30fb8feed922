//! The manifests in `deploy/agent/` are what a platform team applies, so they are checked like
//! code: every document parses as the Kubernetes type it declares (and nothing in it is lost on the
//! way: no misspelt field), the Deployment sets only environment variables the agent reads, and
//! the RBAC grants exactly what the agent uses. That last one is proven by running the agent's
//! Kubernetes side against the fake API server with a token holding only the manifests' rules:
//! everything it does succeeds, and every verb granted was used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use keyfleet_agent::cluster::{Cluster as _, ClusterEvent, Credential, CredentialStore as _};
use keyfleet_agent::config::Cli;
use keyfleet_agent::hub::desired_from_payload;
use keyfleet_agent::kube::{KubeCluster, KubeCredentialStore, KubeSettings};
use keyfleet_agent::metrics::Metrics;
use keyfleet_agent::reconcile::{DeletionPolicy, DesiredSecret, DriftKind};
use keyfleet_proto::{digest, v1};
use keyfleet_testkit::kube::{
    ClusterHandle, Config, FakeKube, Kind, Object, Permissions, RequestRecord, Verb,
};
use serde::Deserialize as _;
use zeroize::Zeroizing;

const SERVICE_ACCOUNT: &str = "keyfleet-agent";
const AGENT_NAMESPACE: &str = "keyfleet-system";
const TARGET: &str = "team-a";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent")
}

/// Every Kubernetes object of the manifests, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    deployments: Vec<Deployment>,
}

/// Parses `value` as `T` and checks that serializing it again gives the same document: a field
/// the type does not know (a typo, a wrong nesting) would be dropped silently otherwise.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: serde_json::Value, origin: &str) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|error| panic!("{origin}: {error}"));
    let again = serde_json::to_value(&object).expect("serialize");
    if let Some(path) = first_difference(&value, &again, String::new()) {
        panic!("{origin}: {path} is not part of the type (misspelt or misplaced?)");
    }
    object
}

/// The path of the first field of `written` that `parsed` does not hold the same way.
fn first_difference(written: &serde_json::Value, parsed: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match (written, parsed) {
        (Value::Object(written), Value::Object(parsed)) => written.iter().find_map(|(key, value)| {
            let path = format!("{path}.{key}");
            match parsed.get(key) {
                Some(other) => first_difference(value, other, path),
                None => Some(path),
            }
        }),
        (Value::Array(written), Value::Array(parsed)) if written.len() == parsed.len() => written
            .iter()
            .zip(parsed)
            .enumerate()
            .find_map(|(index, (value, other))| first_difference(value, other, format!("{path}[{index}]"))),
        _ => (written != parsed).then_some(path),
    }
}

/// Loads the `*.yaml` files of `dir` (not its subdirectories) into `manifests`.
fn load_dir(dir: &Path, manifests: &mut Manifests) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut loaded = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{} document {}", file.display(), index + 1);
            let value =
                serde_json::Value::deserialize(document).unwrap_or_else(|error| panic!("{origin}: {error}"));
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Namespace" => manifests.namespaces.push(typed(value, &origin)),
                "ServiceAccount" => manifests.service_accounts.push(typed(value, &origin)),
                "Role" => manifests.roles.push(typed(value, &origin)),
                "RoleBinding" => manifests.role_bindings.push(typed(value, &origin)),
                "ClusterRole" => manifests.cluster_roles.push(typed(value, &origin)),
                "ClusterRoleBinding" => manifests.cluster_role_bindings.push(typed(value, &origin)),
                "Deployment" => manifests.deployments.push(typed(value, &origin)),
                other => panic!("{origin}: unexpected kind {other:?}"),
            }
            loaded.push(format!(
                "{kind} in {}",
                file.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
    }
    loaded
}

/// The default set (`deploy/agent/*.yaml`: cluster-wide Secret rights).
fn cluster_wide() -> Manifests {
    let mut manifests = Manifests::default();
    load_dir(&deploy_dir(), &mut manifests);
    manifests
}

/// The allow-list set: the default set without its cluster-wide Secret rights, plus
/// `deploy/agent/namespaced/`.
fn namespaced() -> Manifests {
    let mut manifests = cluster_wide();
    manifests.cluster_roles.clear();
    manifests.cluster_role_bindings.clear();
    load_dir(&deploy_dir().join("namespaced"), &mut manifests);
    manifests
}

fn user() -> String {
    format!("system:serviceaccount:{AGENT_NAMESPACE}:{SERVICE_ACCOUNT}")
}

fn binds_agent(subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>) -> bool {
    subjects.into_iter().flatten().any(|subject| {
        subject.kind == "ServiceAccount"
            && subject.name == SERVICE_ACCOUNT
            && subject.namespace.as_deref() == Some(AGENT_NAMESPACE)
    })
}

/// One granted (verb, resource) with its scope, as RBAC evaluates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    verb: Verb,
    kind: Kind,
    /// None: every namespace (a ClusterRole bound cluster-wide).
    namespace: Option<String>,
    /// RBAC `resourceNames` (empty: any).
    names: Vec<String>,
}

fn verb(name: &str) -> Verb {
    match name {
        "get" => Verb::Get,
        "list" => Verb::List,
        "watch" => Verb::Watch,
        "create" => Verb::Create,
        "update" => Verb::Update,
        "patch" => Verb::Patch,
        "delete" => Verb::Delete,
        "deletecollection" => Verb::DeleteCollection,
        other => panic!("verb {other:?} (wildcards are not granted to the agent)"),
    }
}

fn grants_of(rules: &[PolicyRule], namespace: Option<&str>, grants: &mut Vec<Grant>) {
    for rule in rules {
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "the agent uses the core API group only: {rule:?}"
        );
        for resource in rule.resources.iter().flatten() {
            let kind = match resource.as_str() {
                "secrets" => Kind::Secret,
                "namespaces" => Kind::Namespace,
                other => panic!("resource {other:?} is nothing the agent uses"),
            };
            for name in &rule.verbs {
                grants.push(Grant {
                    verb: verb(name),
                    kind,
                    namespace: namespace.map(str::to_owned),
                    names: rule.resource_names.clone().unwrap_or_default(),
                });
            }
        }
    }
}

/// What the agent's ServiceAccount may do according to the bindings in `manifests`.
fn grants(manifests: &Manifests) -> Vec<Grant> {
    let mut grants = Vec::new();
    for binding in &manifests.cluster_role_bindings {
        if !binds_agent(binding.subjects.as_ref()) {
            continue;
        }
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        let role = manifests
            .cluster_roles
            .iter()
            .find(|role| role.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
            .unwrap_or_else(|| panic!("ClusterRole {} is in the manifests", binding.role_ref.name));
        grants_of(role.rules.as_deref().unwrap_or_default(), None, &mut grants);
    }
    for binding in &manifests.role_bindings {
        if !binds_agent(binding.subjects.as_ref()) {
            continue;
        }
        let namespace = binding.metadata.namespace.as_deref().expect("namespaced binding");
        let rules = match binding.role_ref.kind.as_str() {
            "Role" => manifests
                .roles
                .iter()
                .find(|role| {
                    role.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                        && role.metadata.namespace.as_deref() == Some(namespace)
                })
                .and_then(|role| role.rules.clone()),
            "ClusterRole" => manifests
                .cluster_roles
                .iter()
                .find(|role| role.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
                .and_then(|role| role.rules.clone()),
            other => panic!("roleRef kind {other}"),
        }
        .unwrap_or_else(|| panic!("the role of RoleBinding {namespace}/{:?}", binding.metadata.name));
        grants_of(&rules, Some(namespace), &mut grants);
    }
    grants.sort();
    grants.dedup();
    grants
}

fn permissions(grants: &[Grant]) -> Permissions {
    grants
        .iter()
        .fold(Permissions::none(&user()), |permissions, grant| {
            let namespaces: Vec<&str> = grant.namespace.iter().map(String::as_str).collect();
            let names: Vec<&str> = grant.names.iter().map(String::as_str).collect();
            permissions.allow_named(&[grant.verb], &[grant.kind], &namespaces, &names)
        })
}

fn used(grant: &Grant, request: &RequestRecord) -> bool {
    request.verb == grant.verb
        && request.kind == grant.kind
        && (grant.namespace.is_none() || request.namespace == grant.namespace)
        && (grant.names.is_empty()
            || request
                .name
                .as_ref()
                .is_some_and(|name| grant.names.contains(name)))
}

fn payload(key: &str, revision: u64, value: &str) -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: key.into(),
        revision,
        secret_name: key.into(),
        r#type: "Opaque".into(),
        namespaces: vec![TARGET.into()],
        data: [("token".to_string(), value.as_bytes().to_vec())].into(),
        deletion_policy: v1::DeletionPolicy::Delete as i32,
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    payload
}

fn desired(payload: v1::SecretPayload) -> DesiredSecret {
    desired_from_payload(payload).expect("valid payload")
}

async fn next_event(events: &mut tokio::sync::mpsc::Receiver<ClusterEvent>) -> ClusterEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("cluster alive")
}

/// Everything the agent does to a cluster, with a token holding only `grants`: credential load
/// and save, apply, rotation, drift repair, Merge and its removal, Retain, Delete. Returns the
/// requests it made.
async fn exercise(grants: &[Grant], allowed_namespaces: Option<&[&str]>) -> Vec<RequestRecord> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let handle: ClusterHandle = fake.cluster("default").expect("default cluster");
    for namespace in [AGENT_NAMESPACE, TARGET] {
        handle.create_namespace(namespace).expect("namespace");
    }
    handle
        .put_secret(
            Object::new_secret(TARGET, "shared").with_data("theirs", b"keep-me"),
            "kubectl-create",
        )
        .expect("foreign secret");
    handle.add_token("agent-token", permissions(grants));
    handle.record_requests();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&handle.kubeconfig_yaml_with_token("agent-token"))
        .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");

    let store = KubeCredentialStore::new(client.clone(), AGENT_NAMESPACE, "keyfleet-agent-credential");
    assert!(store.load().await.expect("load before enrollment").is_none());
    store
        .save(&Credential {
            cluster_name: "c1".into(),
            cluster_id: "id-1".into(),
            secret: Zeroizing::new("kfc_test-credential".into()),
        })
        .await
        .expect("save the credential");
    assert!(store.load().await.expect("load after enrollment").is_some());

    let mut settings = KubeSettings::new(AGENT_NAMESPACE, "keyfleet-agent-credential");
    settings.namespace_cache_ttl = Duration::ZERO;
    settings.sync_timeout = Duration::from_secs(10);
    settings.allowed_namespaces =
        allowed_namespaces.map(|namespaces| namespaces.iter().map(|ns| (*ns).to_owned()).collect());
    let (cluster, mut events) = KubeCluster::new(client, settings, Metrics::default());
    let body = async {
        cluster
            .upsert(desired(payload("regcred", 1, "value-1")))
            .await
            .expect("create");
        cluster
            .upsert(desired(payload("regcred", 2, "value-2")))
            .await
            .expect("rotate");
        assert!(handle.delete_secret(TARGET, "regcred"));
        assert!(matches!(
            next_event(&mut events).await,
            ClusterEvent::Drift {
                kind: DriftKind::Deleted,
                ..
            }
        ));
        let mut merge = payload("shared", 1, "value-1");
        merge.creation_policy = v1::CreationPolicy::Merge as i32;
        merge.sha256 = digest::payload_sha256(&merge).to_vec();
        cluster.upsert(desired(merge)).await.expect("merge");
        cluster
            .remove("shared", DeletionPolicy::Delete)
            .await
            .expect("remove merged fields");
        let mut kept = payload("kept", 1, "value-1");
        kept.deletion_policy = v1::DeletionPolicy::Retain as i32;
        kept.sha256 = digest::payload_sha256(&kept).to_vec();
        cluster.upsert(desired(kept)).await.expect("create kept");
        cluster
            .remove("kept", DeletionPolicy::Retain)
            .await
            .expect("release");
        cluster
            .remove("regcred", DeletionPolicy::Delete)
            .await
            .expect("delete");
        assert!(cluster.applied().await.expect("applied").is_empty());
    };
    tokio::select! {
        () = cluster.run_watcher() => panic!("watcher ended"),
        () = body => {}
    }
    assert!(handle.get_secret(TARGET, "regcred").is_none());
    assert!(handle.get_secret(TARGET, "kept").is_some());
    handle
        .recorded_requests()
        .into_iter()
        .filter(|request| request.user == user())
        .collect()
}

/// The agent did everything with these grants alone (else `exercise` failed), and used each.
async fn check_rbac(manifests: &Manifests, allowed_namespaces: Option<&[&str]>) {
    let grants = grants(manifests);
    assert!(!grants.is_empty(), "no rules bound to the agent's ServiceAccount");
    let requests = exercise(&grants, allowed_namespaces).await;
    let unused: Vec<&Grant> = grants
        .iter()
        .filter(|grant| !requests.iter().any(|request| used(grant, request)))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used by the agent: {unused:?}"
    );
}

#[tokio::test]
async fn the_cluster_wide_rbac_grants_exactly_what_the_agent_uses() {
    check_rbac(&cluster_wide(), None).await;
}

#[tokio::test]
async fn the_namespaced_rbac_grants_exactly_what_an_agent_with_an_allow_list_uses() {
    check_rbac(&namespaced(), Some(&[TARGET])).await;
}

#[test]
fn every_manifest_parses_as_its_kind_and_the_sets_are_complete() {
    let mut manifests = Manifests::default();
    let loaded = load_dir(&deploy_dir(), &mut manifests);
    assert_eq!(
        loaded,
        [
            "Namespace in 00-namespace.yaml",
            "ServiceAccount in 10-serviceaccount.yaml",
            "Role in 20-rbac-credential.yaml",
            "RoleBinding in 20-rbac-credential.yaml",
            "ClusterRole in 30-rbac-cluster.yaml",
            "ClusterRoleBinding in 30-rbac-cluster.yaml",
            "Deployment in 40-deployment.yaml",
        ]
    );
    let loaded = load_dir(&deploy_dir().join("namespaced"), &mut Manifests::default());
    assert_eq!(
        loaded,
        [
            "ClusterRole in 30-rbac-namespaces.yaml",
            "ClusterRoleBinding in 30-rbac-namespaces.yaml",
            "Role in 31-rbac-secrets-team-a.yaml",
            "RoleBinding in 31-rbac-secrets-team-a.yaml",
        ]
    );
    assert_eq!(
        manifests.namespaces[0].metadata.name.as_deref(),
        Some(AGENT_NAMESPACE)
    );
    let account = &manifests.service_accounts[0];
    assert_eq!(
        (
            account.metadata.name.as_deref(),
            account.metadata.namespace.as_deref()
        ),
        (Some(SERVICE_ACCOUNT), Some(AGENT_NAMESPACE))
    );
}

fn memory_mib(quantity: &str) -> u64 {
    let number = quantity
        .strip_suffix("Mi")
        .unwrap_or_else(|| panic!("memory {quantity:?} in Mi"));
    number.parse().expect("a whole number of MiB")
}

#[test]
fn the_deployment_sets_only_the_agents_own_settings_and_runs_locked_down() {
    let manifests = cluster_wide();
    let deployment = &manifests.deployments[0];
    assert_eq!(deployment.metadata.namespace.as_deref(), Some(AGENT_NAMESPACE));
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1), "one Sync stream per cluster");
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid != 0));
    let [container] = pod.containers.as_slice() else {
        panic!("one container");
    };
    assert!(
        container
            .image
            .as_deref()
            .is_some_and(|image| image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION")))),
        "the image tag is the agent's version: {:?}",
        container.image
    );

    // Environment: every name is one the agent reads (clap's), the required ones are set, and
    // the values agree with the rest of the manifests.
    let known: BTreeMap<String, bool> = Cli::command()
        .get_arguments()
        .filter_map(|argument| {
            Some((
                argument.get_env()?.to_string_lossy().into_owned(),
                argument.is_required_set(),
            ))
        })
        .collect();
    let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> = container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.as_str(), var))
        .collect();
    for name in env.keys() {
        assert!(
            known.contains_key(*name),
            "{name} is not read by the agent (known: {known:?})"
        );
    }
    for (name, required) in &known {
        if *required {
            assert!(env.contains_key(name.as_str()), "required {name} is not set");
        }
    }
    assert!(env.contains_key("KEYFLEET_AGENT_ENROLLMENT_TOKEN"));
    let value = |name: &str| env[name].value.as_deref().unwrap_or_default();
    let token = env["KEYFLEET_AGENT_ENROLLMENT_TOKEN"]
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("the enrollment token comes from a Secret, never a literal");
    assert_eq!(token.optional, Some(true), "the token is gone after enrollment");
    let namespace_from = env["KEYFLEET_AGENT_NAMESPACE"]
        .value_from
        .as_ref()
        .and_then(|from| from.field_ref.as_ref())
        .expect("the namespace comes from the pod");
    assert_eq!(namespace_from.field_path, "metadata.namespace");
    let credential_role = manifests
        .roles
        .iter()
        .find(|role| role.metadata.name.as_deref() == Some("keyfleet-agent-credential"))
        .expect("credential Role");
    assert_eq!(
        credential_role.rules.as_ref().expect("rules")[0].resource_names,
        Some(vec![value("KEYFLEET_AGENT_CREDENTIAL_SECRET").to_owned()]),
        "the credential Role names the credential Secret"
    );
    let hub_ca = value("KEYFLEET_AGENT_HUB_CA");
    let mounts = container.volume_mounts.iter().flatten();
    assert!(
        mounts
            .into_iter()
            .any(|mount| hub_ca.starts_with(&mount.mount_path)),
        "{hub_ca} is on a mounted volume"
    );

    // Probes on the ops endpoint.
    let ops_port: i32 = value("KEYFLEET_AGENT_OPS_ADDR")
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("ops port");
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some("ops"))
        .expect("ops port");
    assert_eq!(port.container_port, ops_port);
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .expect("http probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("ops".into())
        );
    }

    // Sized from the measured footprint (12.5 MiB RSS with 50 Secrets; the footprint test's
    // ceiling is 32 MiB): the request covers the ceiling, the limit doubles it.
    let resources = container.resources.as_ref().expect("resources");
    let request = &resources.requests.as_ref().expect("requests")["memory"].0;
    let limit = &resources.limits.as_ref().expect("limits")["memory"].0;
    assert!(memory_mib(request) >= 32, "memory request {request}");
    assert!(
        memory_mib(limit) >= 2 * memory_mib(request),
        "memory limit {limit}"
    );
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
}
