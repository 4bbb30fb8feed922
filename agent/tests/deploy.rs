//! `deploy/charts/keyfleet-agent` is what a platform team installs, so it is checked like code:
//! rendered by the real Helm (`scripts/tools/helm`, installed under `target/tools/` on first use)
//! over the values matrix in the chart's `ci/` directory, `helm lint --strict` passes, every
//! object parses as the Kubernetes type it declares (and nothing in it is lost on the way: no
//! misspelt field), the Deployment sets only environment variables the agent reads, and the RBAC
//! grants exactly what the agent uses. That last one is proven by running the agent's Kubernetes
//! side against the fake API server with a token holding only the rendered rules: everything it
//! does succeeds, and every verb granted was used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use keyfleet_agent::cluster::{Cluster as _, ClusterEvent, Credential, CredentialStore as _};
use keyfleet_agent::config::Cli;
use keyfleet_agent::hub::desired_from_payload;
use keyfleet_agent::kube::{KubeCluster, KubeCredentialStore, KubeSettings};
use keyfleet_agent::metrics::Metrics;
use keyfleet_agent::reconcile::{DeletionPolicy, DesiredSecret, DriftKind};
use keyfleet_proto::{digest, v1};
use keyfleet_testkit::helm::{self, Document};
use keyfleet_testkit::kube::{
    ClusterHandle, Config, FakeKube, Kind, Object, Permissions, RequestRecord, Verb,
};
use zeroize::Zeroizing;

const CHART: &str = "keyfleet-agent";
/// The release name docs/agent.md installs with: object names are the chart's name.
const RELEASE: &str = "keyfleet-agent";
const SERVICE_ACCOUNT: &str = "keyfleet-agent";
const AGENT_NAMESPACE: &str = "keyfleet-system";
const TARGET: &str = "team-a";

/// Every Kubernetes object of one rendering, by kind.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    deployments: Vec<Deployment>,
    secrets: Vec<Secret>,
    config_maps: Vec<ConfigMap>,
}

/// `document` as `T`, every field kept.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(document: &Document, origin: &str) -> T {
    helm::strict(&document.value).unwrap_or_else(|error| panic!("{origin}: {} {error}", document.kind()))
}

/// `helm template` of the chart in `keyfleet-system`, parsed strictly.
fn render(values: &[&Path], set: &[&str]) -> Manifests {
    let documents = helm::template(CHART, RELEASE, AGENT_NAMESPACE, values, set)
        .unwrap_or_else(|error| panic!("{error}"));
    let mut manifests = Manifests::default();
    for document in &documents {
        let origin = format!("{values:?} {set:?} {}", document.source);
        match document.kind() {
            "ServiceAccount" => manifests.service_accounts.push(typed(document, &origin)),
            "Role" => manifests.roles.push(typed(document, &origin)),
            "RoleBinding" => manifests.role_bindings.push(typed(document, &origin)),
            "ClusterRole" => manifests.cluster_roles.push(typed(document, &origin)),
            "ClusterRoleBinding" => manifests.cluster_role_bindings.push(typed(document, &origin)),
            "Deployment" => manifests.deployments.push(typed(document, &origin)),
            "Secret" => manifests.secrets.push(typed(document, &origin)),
            "ConfigMap" => manifests.config_maps.push(typed(document, &origin)),
            other => panic!("{origin}: unexpected kind {other:?}"),
        }
    }
    manifests
}

/// The defaults: cluster-wide Secret rights.
fn cluster_wide() -> Manifests {
    render(&[], &[])
}

/// Limited to the one namespace the exercise writes in.
fn namespaced() -> Manifests {
    render(
        &[],
        &["rbac.scope=namespaces", &format!("rbac.namespaces={{{TARGET}}}")],
    )
}

fn ci_values() -> Vec<PathBuf> {
    let files = helm::ci_values(CHART).expect("ci values");
    assert!(files.len() >= 3, "the values matrix: {files:?}");
    files
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
        let group = match rule.api_groups.as_deref() {
            Some([group]) => group.as_str(),
            other => panic!("one API group per rule: {other:?}"),
        };
        for resource in rule.resources.iter().flatten() {
            let kind = match (group, resource.as_str()) {
                ("", "secrets") => Kind::Secret,
                ("", "namespaces") => Kind::Namespace,
                ("events.k8s.io", "events") => Kind::Event,
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
    // Every repeat updates the Event's series at once (the patch the chart grants).
    settings.event_cooldown = Duration::ZERO;
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
        // Deleted twice: a DriftRepaired Event, then its series (create, then patch).
        for _ in 0..2 {
            assert!(handle.delete_secret(TARGET, "regcred"));
            assert!(matches!(
                next_event(&mut events).await,
                ClusterEvent::Drift {
                    kind: DriftKind::Deleted,
                    ..
                }
            ));
        }
        let series = handle.until_events(|events| {
            events.iter().any(|event| {
                event["reason"] == "DriftRepaired" && event["series"]["count"].as_i64() == Some(2)
            })
        });
        let events = tokio::time::timeout(Duration::from_secs(10), series)
            .await
            .unwrap_or_else(|_| panic!("no DriftRepaired series: {:?}", handle.events()));
        let posted = serde_json::to_string(&events).expect("json");
        assert!(
            posted.contains("\"Applied\"") && posted.contains("keyfleet.io/agent"),
            "{posted}"
        );
        assert!(
            !posted.contains("value-1") && !posted.contains("value-2"),
            "a value in an Event: {posted}"
        );
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
        () = cluster.run_events() => panic!("event poster ended"),
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

/// The rendered Deployment's environment, by name.
fn env_of(manifests: &Manifests) -> BTreeMap<String, EnvVar> {
    let [deployment] = manifests.deployments.as_slice() else {
        panic!("one Deployment");
    };
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec");
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.clone()))
        .collect()
}

/// The agent's allow-list as the rendered Deployment sets it (None: every namespace).
fn allowed_namespaces(manifests: &Manifests) -> Option<Vec<String>> {
    env_of(manifests)
        .get("KEYFLEET_AGENT_ALLOWED_NAMESPACES")
        .and_then(|var| var.value.clone())
        .map(|list| list.split(',').map(str::to_owned).collect())
}

/// The agent, configured as the rendered Deployment configures it, did everything with the
/// rendered grants alone (else `exercise` failed), and used each.
async fn check_rbac(manifests: &Manifests) {
    let grants = grants(manifests);
    assert!(!grants.is_empty(), "no rules bound to the agent's ServiceAccount");
    let allowed = allowed_namespaces(manifests);
    let allowed: Option<Vec<&str>> = allowed
        .as_ref()
        .map(|namespaces| namespaces.iter().map(String::as_str).collect());
    let requests = exercise(&grants, allowed.as_deref()).await;
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
    let manifests = cluster_wide();
    assert_eq!(allowed_namespaces(&manifests), None);
    check_rbac(&manifests).await;
}

#[tokio::test]
async fn the_namespaced_rbac_grants_exactly_what_an_agent_with_an_allow_list_uses() {
    let manifests = namespaced();
    assert_eq!(allowed_namespaces(&manifests), Some(vec![TARGET.to_owned()]));
    check_rbac(&manifests).await;
}

/// Secrets may be written exactly where the agent's allow-list says, in the same rendering (so
/// the first pod starts with both): a Role and RoleBinding per allowed namespace and no
/// cluster-wide Secret rule, or, without a list, the ClusterRole's Secret rule.
fn check_scope(manifests: &Manifests, origin: &str) {
    let grants = grants(manifests);
    let secret_scopes: Vec<Option<String>> = grants
        .iter()
        .filter(|grant| grant.kind == Kind::Secret && grant.names.is_empty())
        .map(|grant| grant.namespace.clone())
        .collect();
    match allowed_namespaces(manifests) {
        None => assert!(
            !secret_scopes.is_empty() && secret_scopes.iter().all(Option::is_none),
            "{origin}: cluster-wide Secret rights without an allow-list: {secret_scopes:?}"
        ),
        Some(allowed) => {
            let mut granted: Vec<String> = secret_scopes
                .into_iter()
                .map(|scope| {
                    scope.unwrap_or_else(|| panic!("{origin}: a cluster-wide Secret rule with an allow-list"))
                })
                .collect();
            granted.sort();
            granted.dedup();
            let mut allowed = allowed;
            allowed.sort();
            assert_eq!(granted, allowed, "{origin}: Roles and the allow-list agree");
        }
    }
    // The credential Secret: get/patch on its name only, in the agent's namespace.
    let credential = env_of(manifests)
        .get("KEYFLEET_AGENT_CREDENTIAL_SECRET")
        .and_then(|var| var.value.clone())
        .expect("KEYFLEET_AGENT_CREDENTIAL_SECRET");
    let named: Vec<&Grant> = grants.iter().filter(|grant| !grant.names.is_empty()).collect();
    assert!(
        named.iter().all(|grant| grant.names == [credential.clone()]
            && grant.namespace.as_deref() == Some(AGENT_NAMESPACE)),
        "{origin}: {named:?}"
    );
    assert_eq!(
        named.iter().map(|grant| grant.verb).collect::<Vec<_>>(),
        [Verb::Get, Verb::Patch],
        "{origin}"
    );
}

#[test]
fn every_values_file_lints_strictly_and_renders_a_locked_down_agent() {
    for file in ci_values() {
        let origin = file.display().to_string();
        helm::lint(CHART, &[&file], &[]).unwrap_or_else(|error| panic!("{error}"));
        let manifests = render(&[&file], &[]);
        let account = &manifests.service_accounts[..];
        assert_eq!(account.len(), 1, "{origin}: one ServiceAccount");
        assert_eq!(
            (
                account[0].metadata.name.as_deref(),
                account[0].metadata.namespace.as_deref()
            ),
            (Some(SERVICE_ACCOUNT), Some(AGENT_NAMESPACE)),
            "{origin}"
        );
        check_scope(&manifests, &origin);
        check_deployment(&manifests, &origin);
    }
}

#[test]
fn the_defaults_run_the_agents_own_version_with_the_documented_names() {
    let manifests = cluster_wide();
    check_deployment(&manifests, "defaults");
    let deployment = &manifests.deployments[0];
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec");
    let container = &pod.containers[0];
    assert!(
        container
            .image
            .as_deref()
            .is_some_and(|image| image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION")))),
        "the image tag is the agent's version (Chart.yaml appVersion): {:?}",
        container.image
    );
    // docs/agent.md and `keyfleet cluster add` name these.
    let env = env_of(&manifests);
    let token = env["KEYFLEET_AGENT_ENROLLMENT_TOKEN"]
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("token from a Secret");
    assert_eq!(
        (token.name.as_str(), token.key.as_str()),
        ("keyfleet-agent-enrollment", "token")
    );
    let ca = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|volume| volume.config_map.as_ref())
        .expect("the hub CA ConfigMap");
    assert_eq!(ca.name, "keyfleet-hub-ca");
    assert!(manifests.secrets.is_empty() && manifests.config_maps.is_empty());
}

#[test]
fn values_from_the_chart_create_the_token_secret_and_the_ca() {
    let file = helm::chart_dir(CHART).join("ci/inline-values.yaml");
    let manifests = render(&[&file], &[]);
    let [secret] = manifests.secrets.as_slice() else {
        panic!("the enrollment Secret");
    };
    let env = env_of(&manifests);
    let token = env["KEYFLEET_AGENT_ENROLLMENT_TOKEN"]
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("token from a Secret");
    assert_eq!(secret.metadata.name.as_deref(), Some(token.name.as_str()));
    assert!(
        secret
            .string_data
            .as_ref()
            .is_some_and(|data| data.contains_key(&token.key))
    );
    assert_eq!(manifests.config_maps.len(), 1, "the hub CA");
}

#[test]
fn inconsistent_values_are_refused_at_render_time() {
    for (set, says) in [
        (&["rbac.scope=namespaces"][..], "rbac.namespaces"),
        (&["rbac.namespaces={team-a}"][..], "rbac.scope"),
        (&["rbac.scope=everywhere"][..], "rbac.scope"),
        (&["hub.url="][..], "hub.url"),
    ] {
        let error = helm::template(CHART, RELEASE, AGENT_NAMESPACE, &[], set)
            .expect_err("refused")
            .to_string();
        assert!(error.contains(says), "{set:?}: {error}");
    }
}

fn memory_mib(quantity: &str) -> u64 {
    let number = quantity
        .strip_suffix("Mi")
        .unwrap_or_else(|| panic!("memory {quantity:?} in Mi"));
    number.parse().expect("a whole number of MiB")
}

/// The Deployment sets only the agent's own settings, consistently with the rest of the
/// rendering, and runs locked down.
fn check_deployment(manifests: &Manifests, origin: &str) {
    let [deployment] = manifests.deployments.as_slice() else {
        panic!("{origin}: one Deployment");
    };
    assert_eq!(deployment.metadata.namespace.as_deref(), Some(AGENT_NAMESPACE));
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1), "{origin}: one Sync stream per cluster");
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "{origin}"
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true), "{origin}");
    assert_eq!(pod_security.run_as_user, Some(65532), "{origin}");
    assert_eq!(
        pod_security
            .seccomp_profile
            .as_ref()
            .map(|profile| profile.type_.as_str()),
        Some("RuntimeDefault"),
        "{origin}"
    );
    let [container] = pod.containers.as_slice() else {
        panic!("{origin}: one container");
    };

    // Environment: every name is one the agent reads (clap's), the required ones are set, and
    // the values agree with the rest of the rendering.
    let known: BTreeMap<String, bool> = Cli::command()
        .get_arguments()
        .filter_map(|argument| {
            Some((
                argument.get_env()?.to_string_lossy().into_owned(),
                argument.is_required_set(),
            ))
        })
        .collect();
    let env = env_of(manifests);
    for name in env.keys() {
        assert!(
            known.contains_key(name),
            "{origin}: {name} is not read by the agent (known: {known:?})"
        );
    }
    for (name, required) in &known {
        if *required {
            assert!(env.contains_key(name), "{origin}: required {name} is not set");
        }
    }
    let value = |name: &str| {
        env.get(name)
            .and_then(|var| var.value.clone())
            .unwrap_or_default()
    };
    let token = env["KEYFLEET_AGENT_ENROLLMENT_TOKEN"]
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("the enrollment token comes from a Secret, never a literal");
    assert_eq!(
        token.optional,
        Some(true),
        "{origin}: the token is gone after enrollment"
    );
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
        Some(vec![value("KEYFLEET_AGENT_CREDENTIAL_SECRET")]),
        "{origin}: the credential Role names the credential Secret"
    );
    if let Some(hub_ca) = env.get("KEYFLEET_AGENT_HUB_CA").and_then(|var| var.value.clone()) {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| hub_ca.starts_with(&mount.mount_path))
            .unwrap_or_else(|| panic!("{origin}: {hub_ca} is on a mounted volume"));
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name)
            .expect("the CA volume");
        let items = volume
            .config_map
            .as_ref()
            .and_then(|map| map.items.clone())
            .or_else(|| volume.secret.as_ref().and_then(|secret| secret.items.clone()))
            .unwrap_or_default();
        let file = hub_ca
            .trim_start_matches(&mount.mount_path)
            .trim_start_matches('/');
        assert!(
            items.iter().any(|item| item.path == file),
            "{origin}: {hub_ca} is an item of the CA volume"
        );
    } else {
        assert!(pod.volumes.is_none(), "{origin}: no CA, no volume");
    }

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
    assert_eq!(port.container_port, ops_port, "{origin}");
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
    assert!(memory_mib(request) >= 32, "{origin}: memory request {request}");
    assert!(
        memory_mib(limit) >= 2 * memory_mib(request),
        "{origin}: memory limit {limit}"
    );
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true), "{origin}");
    assert_eq!(security.allow_privilege_escalation, Some(false), "{origin}");
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()]),
        "{origin}"
    );
}
