//! `deploy/charts/keyfleet-hub`, rendered by the real Helm (`scripts/tools/helm`) over the values
//! matrix in its `ci/` directory: `helm lint --strict` passes, every object parses strictly as its
//! Kubernetes type (the ServiceMonitor, a CRD, against the fields the chart uses), the container's
//! arguments are parsed by the hub's own CLI parser, and the objects agree with one another (ports,
//! probes, mounted files, selectors, Workload Identity, security context).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keyfleet_hub::config::{Cli, Command, ServeArgs};
use keyfleet_testkit::helm::{self, Document};

const CHART: &str = "keyfleet-hub";
const RELEASE: &str = "keyfleet-hub";
const NAMESPACE: &str = "keyfleet";

/// One rendering, by kind.
#[derive(Default)]
struct Rendered {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    budgets: Vec<PodDisruptionBudget>,
    config_maps: Vec<ConfigMap>,
    service_monitors: Vec<serde_json::Value>,
    prometheus_rules: Vec<serde_json::Value>,
}

fn render(values: &[&Path], set: &[&str]) -> Rendered {
    let documents =
        helm::template(CHART, RELEASE, NAMESPACE, values, set).unwrap_or_else(|error| panic!("{error}"));
    let mut rendered = Rendered::default();
    for document in &documents {
        let origin = format!("{values:?} {set:?} {}", document.source);
        match document.kind() {
            "Deployment" => rendered.deployments.push(typed(document, &origin)),
            "Service" => rendered.services.push(typed(document, &origin)),
            "ServiceAccount" => rendered.service_accounts.push(typed(document, &origin)),
            "PodDisruptionBudget" => rendered.budgets.push(typed(document, &origin)),
            "ConfigMap" => rendered.config_maps.push(typed(document, &origin)),
            "ServiceMonitor" => {
                check_service_monitor_shape(&document.value, &origin);
                rendered.service_monitors.push(document.value.clone());
            }
            "PrometheusRule" => {
                check_prometheus_rule(&document.value, &origin);
                rendered.prometheus_rules.push(document.value.clone());
            }
            other => panic!("{origin}: unexpected kind {other:?}"),
        }
        assert_eq!(
            document.value["metadata"]["namespace"].as_str(),
            Some(NAMESPACE),
            "{origin}: every object lives in the release namespace"
        );
    }
    rendered
}

/// The PrometheusRule (a CRD, monitoring.coreos.com/v1) carries exactly the groups of
/// deploy/monitoring/keyfleet-rules.yaml, the file promtool tests.
fn check_prometheus_rule(value: &serde_json::Value, origin: &str) {
    assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1", "{origin}");
    let spec_keys: Vec<&String> = value["spec"].as_object().expect("spec").keys().collect();
    assert_eq!(spec_keys, ["groups"], "{origin}: PrometheusRule spec");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/keyfleet-rules.yaml");
    let rules: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&file).expect("keyfleet-rules.yaml"))
            .expect("rules YAML");
    assert_eq!(
        value["spec"]["groups"], rules["groups"],
        "{origin}: the chart's PrometheusRule differs from deploy/monitoring/keyfleet-rules.yaml"
    );
}

/// `document` as `T`, every field kept.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(document: &Document, origin: &str) -> T {
    helm::strict(&document.value).unwrap_or_else(|error| panic!("{origin}: {} {error}", document.kind()))
}

/// The ServiceMonitor is a CRD (monitoring.coreos.com/v1, not in k8s-openapi): only the fields
/// the chart uses are allowed, with the types the CRD gives them.
fn check_service_monitor_shape(value: &serde_json::Value, origin: &str) {
    let allowed = serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "", "namespace": "", "labels": {}},
        "spec": {
            "selector": {"matchLabels": {}},
            "namespaceSelector": {"matchNames": [""]},
            "endpoints": [{"port": "", "path": "", "interval": "", "scrapeTimeout": ""}],
        },
    });
    fn walk(value: &serde_json::Value, allowed: &serde_json::Value, path: &str, origin: &str) {
        use serde_json::Value;
        match (value, allowed) {
            (Value::Object(map), Value::Object(shape)) if shape.is_empty() => {
                for (key, item) in map {
                    assert!(item.is_string(), "{origin}: {path}.{key} must be a string");
                }
            }
            (Value::Object(map), Value::Object(shape)) => {
                for (key, item) in map {
                    let inner = shape.get(key).unwrap_or_else(|| {
                        panic!("{origin}: {path}.{key} is not a ServiceMonitor field the chart uses")
                    });
                    walk(item, inner, &format!("{path}.{key}"), origin);
                }
            }
            (Value::Array(items), Value::Array(shape)) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, &shape[0], &format!("{path}[{index}]"), origin);
                }
            }
            (Value::String(text), Value::String(expected)) => assert!(
                expected.is_empty() || text == expected,
                "{origin}: {path} is {text:?}, not {expected:?}"
            ),
            _ => panic!("{origin}: {path} has the wrong type: {value}"),
        }
    }
    walk(value, &allowed, "", origin);
    assert!(
        value["spec"]["endpoints"]
            .as_array()
            .is_some_and(|endpoints| !endpoints.is_empty()),
        "{origin}: one endpoint at least"
    );
}

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec")
}

fn container(deployment: &Deployment) -> &Container {
    let [container] = pod(deployment).containers.as_slice() else {
        panic!("one container");
    };
    container
}

fn container_port(container: &Container, name: &str) -> i32 {
    container
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container port {name}"))
        .container_port
}

/// The hub's own parser on the container's arguments.
fn serve_args(container: &Container, origin: &str) -> ServeArgs {
    let args = container.args.clone().unwrap_or_default();
    let cli = Cli::try_parse_from(std::iter::once("keyfleet".to_owned()).chain(args.clone()))
        .unwrap_or_else(|error| panic!("{origin}: the hub refuses {args:?}: {error}"));
    match cli.command {
        Command::Serve(serve) => serve,
        other => panic!("{origin}: not serve: {other:?}"),
    }
}

/// The volume (and key) a file path in the container comes from: `(volume name, key)`.
fn file_source(pod: &PodSpec, container: &Container, file: &Path) -> (String, String) {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| file.starts_with(&mount.mount_path))
        .unwrap_or_else(|| panic!("{} is on no mounted volume", file.display()));
    assert_eq!(
        mount.read_only,
        Some(true),
        "{} is mounted read-only",
        mount.mount_path
    );
    let relative = file
        .strip_prefix(&mount.mount_path)
        .expect("under the mount")
        .to_string_lossy()
        .into_owned();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == mount.name)
        .unwrap_or_else(|| panic!("volume {}", mount.name));
    let items = volume
        .secret
        .as_ref()
        .and_then(|secret| secret.items.clone())
        .or_else(|| volume.config_map.as_ref().and_then(|map| map.items.clone()));
    let key = match items {
        Some(items) => items
            .iter()
            .find(|item| item.path == relative)
            .unwrap_or_else(|| panic!("{} is no item of volume {}", file.display(), volume.name))
            .key
            .clone(),
        None => relative,
    };
    (volume.name.clone(), key)
}

/// What every rendering must hold, whatever the values.
fn check_consistent(rendered: &Rendered, origin: &str) -> ServeArgs {
    let [deployment] = rendered.deployments.as_slice() else {
        panic!("{origin}: one Deployment");
    };
    let pod = pod(deployment);
    let container = container(deployment);
    let serve = serve_args(container, origin);

    // Ports: both listeners on every interface, on the ports the container and Services name.
    assert!(
        serve.ops_addr.ip().is_unspecified(),
        "{origin}: --ops-addr {}",
        serve.ops_addr
    );
    assert!(
        serve.grpc_addr.ip().is_unspecified(),
        "{origin}: --grpc-addr {}",
        serve.grpc_addr
    );
    assert_eq!(
        i32::from(serve.ops_addr.port()),
        container_port(container, "ops"),
        "{origin}"
    );
    assert_eq!(
        i32::from(serve.grpc_addr.port()),
        container_port(container, "grpc"),
        "{origin}"
    );
    for (probe, path) in [
        (&container.readiness_probe, "/readyz"),
        (&container.liveness_probe, "/healthz"),
        (&container.startup_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .unwrap_or_else(|| panic!("{origin}: an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path), "{origin}");
        assert_eq!(get.port, IntOrString::String("ops".into()), "{origin}");
    }
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.match_labels.clone())
        .expect("selector");
    let pod_labels = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .expect("pod labels");
    for (key, value) in &selector {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "{origin}: the pods carry the selector"
        );
    }
    let (eventgrid, services): (Vec<&Service>, Vec<&Service>) =
        rendered.services.iter().partition(|service| {
            service
                .metadata
                .name
                .as_deref()
                .is_some_and(|name| name.ends_with("-eventgrid"))
        });
    let [grpc, ops] = services.as_slice() else {
        panic!("{origin}: two Services (gRPC, ops) besides the Event Grid one");
    };
    let (grpc, ops) = (*grpc, *ops);
    // The Event Grid webhook: on when its flags are, on its own ClusterIP Service (for an
    // HTTPS ingress), with its code from the Secret the values name.
    match (serve.eventgrid_addr, eventgrid.as_slice()) {
        (None, []) => {}
        (Some(addr), [service]) => {
            assert!(addr.ip().is_unspecified(), "{origin}: --eventgrid-addr {addr}");
            assert_eq!(
                i32::from(addr.port()),
                container_port(container, "eventgrid"),
                "{origin}"
            );
            let spec = service.spec.as_ref().expect("service spec");
            assert_eq!(
                spec.type_.as_deref(),
                Some("ClusterIP"),
                "{origin}: behind an ingress"
            );
            assert_eq!(spec.selector.as_ref(), Some(&selector), "{origin}");
            let code = serve
                .eventgrid_code_file
                .as_deref()
                .expect("--eventgrid-code-file");
            let (volume, _) = file_source(pod, container, code);
            assert_eq!(volume, "eventgrid", "{origin}");
        }
        (addr, services) => panic!(
            "{origin}: --eventgrid-addr {addr:?} with {} Event Grid Services",
            services.len()
        ),
    }
    for (service, name) in [(grpc, "grpc"), (ops, "ops")] {
        let spec = service.spec.as_ref().expect("service spec");
        assert_eq!(
            spec.selector.as_ref(),
            Some(&selector),
            "{origin}: {name} Service selects the hub"
        );
        let [port] = spec.ports.as_deref().unwrap_or_default() else {
            panic!("{origin}: one port on the {name} Service");
        };
        assert_eq!(port.name.as_deref(), Some(name), "{origin}");
        assert_eq!(
            port.target_port,
            Some(IntOrString::String(name.into())),
            "{origin}"
        );
        assert_eq!(port.protocol.as_deref(), Some("TCP"), "{origin}: layer 4");
    }
    assert_eq!(
        ops.spec.as_ref().and_then(|spec| spec.type_.as_deref()),
        Some("ClusterIP"),
        "{origin}: /metrics never on a load balancer"
    );

    // Files: TLS from a kubernetes.io/tls Secret's keys, tokens and specs from mounted volumes.
    let tls_cert = serve.tls_cert.as_deref().expect("--tls-cert");
    let tls_key = serve.tls_key.as_deref().expect("--tls-key");
    let (cert_volume, cert_key) = file_source(pod, container, tls_cert);
    let (key_volume, key_key) = file_source(pod, container, tls_key);
    assert_eq!(
        (cert_key.as_str(), key_key.as_str()),
        ("tls.crt", "tls.key"),
        "{origin}"
    );
    assert_eq!(cert_volume, key_volume, "{origin}: one TLS Secret");
    file_source(
        pod,
        container,
        serve.admin_token_file.as_deref().expect("--admin-token-file"),
    );
    // The database is Postgres: the hub refuses to start without its digest key.
    let (digest_volume, _) = file_source(
        pod,
        container,
        serve.digest_key_file.as_deref().expect("--digest-key-file"),
    );
    let digest_secret = pod
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == digest_volume)
        .and_then(|volume| volume.secret.as_ref())
        .and_then(|secret| secret.secret_name.clone());
    assert!(
        digest_secret.is_some(),
        "{origin}: the digest key comes from a Secret"
    );
    if let Some(ca) = &serve.admin_client_ca {
        let (ca_volume, _) = file_source(pod, container, ca);
        if let Some(crl) = &serve.admin_client_crl {
            let (crl_volume, _) = file_source(pod, container, crl);
            assert_eq!(crl_volume, ca_volume, "{origin}: the CRL comes with its CA");
        }
    }
    if let Some(dir) = &serve.config_dir {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| Path::new(&mount.mount_path) == dir)
            .unwrap_or_else(|| panic!("{origin}: --config-dir is a mounted ConfigMap"));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name);
        assert!(
            volume.and_then(|volume| volume.config_map.as_ref()).is_some(),
            "{origin}"
        );
    }

    // Environment: only variables the hub reads; the database URL only from a Secret.
    let known: Vec<String> = Cli::command()
        .find_subcommand("serve")
        .expect("serve")
        .get_arguments()
        .filter_map(|argument| Some(argument.get_env()?.to_string_lossy().into_owned()))
        .chain(
            Cli::command()
                .get_arguments()
                .filter_map(|argument| Some(argument.get_env()?.to_string_lossy().into_owned())),
        )
        .collect();
    let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> = container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.as_str(), var))
        .collect();
    for name in env.keys() {
        assert!(
            known.iter().any(|known| known == name),
            "{origin}: the hub does not read {name}"
        );
    }
    let database = env["KEYFLEET_DATABASE"]
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref());
    assert!(
        database.is_some(),
        "{origin}: the database URL comes from a Secret"
    );
    assert!(
        !container
            .args
            .iter()
            .flatten()
            .any(|arg| arg.starts_with("--database")),
        "{origin}: never the database URL in the arguments"
    );
    assert!(
        env.contains_key("KEYFLEET_REPLICA_ID"),
        "{origin}: replicas named by pod"
    );

    // Shutdown: the pod waits for the drain.
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        u64::try_from(grace).expect("positive") > serve.shutdown_grace.as_secs(),
        "{origin}: terminationGracePeriodSeconds {grace} > --shutdown-grace"
    );

    // Locked down.
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
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true), "{origin}");
    assert_eq!(security.allow_privilege_escalation, Some(false), "{origin}");
    assert_eq!(
        security.capabilities.as_ref().and_then(|caps| caps.drop.clone()),
        Some(vec!["ALL".to_owned()]),
        "{origin}"
    );
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "{origin}: no Kubernetes API use"
    );

    // Workload Identity: the ServiceAccount's client id and the pod label come together.
    let [account] = rendered.service_accounts.as_slice() else {
        panic!("{origin}: one ServiceAccount");
    };
    assert_eq!(pod.service_account_name, account.metadata.name, "{origin}");
    let client_id = account
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get("azure.workload.identity/client-id"));
    let uses = pod_labels.get("azure.workload.identity/use").map(String::as_str);
    assert_eq!(
        client_id.is_some(),
        uses == Some("true"),
        "{origin}: Workload Identity half-set"
    );

    // The PodDisruptionBudget and ServiceMonitor select what they must.
    for budget in &rendered.budgets {
        let spec = budget.spec.as_ref().expect("pdb spec");
        assert_eq!(
            spec.selector
                .as_ref()
                .and_then(|selector| selector.match_labels.as_ref()),
            Some(&selector),
            "{origin}"
        );
        assert!(
            spec.max_unavailable.is_some() != spec.min_available.is_some(),
            "{origin}"
        );
    }
    let ops_labels = ops.metadata.labels.clone().unwrap_or_default();
    for monitor in &rendered.service_monitors {
        let wanted = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        for (key, value) in wanted {
            assert_eq!(
                ops_labels.get(key).map(String::as_str),
                value.as_str(),
                "{origin}: selects the ops Service"
            );
        }
        let grpc_labels = grpc.metadata.labels.clone().unwrap_or_default();
        assert!(
            wanted
                .iter()
                .any(|(key, value)| grpc_labels.get(key).map(String::as_str) != value.as_str()),
            "{origin}: the ServiceMonitor must not select the gRPC Service"
        );
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "ops", "{origin}");
        assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics", "{origin}");
    }
    serve
}

fn ci_values() -> Vec<PathBuf> {
    let files = helm::ci_values(CHART).expect("ci values");
    assert!(files.len() >= 4, "the values matrix: {files:?}");
    files
}

fn replicas(rendered: &Rendered) -> Option<i32> {
    rendered.deployments[0]
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
}

#[test]
fn every_values_file_lints_strictly_and_renders_consistent_typed_objects() {
    for file in ci_values() {
        helm::lint(CHART, &[&file], &[]).unwrap_or_else(|error| panic!("{error}"));
        let rendered = render(&[&file], &[]);
        check_consistent(&rendered, &file.display().to_string());
    }
    // Replicas beyond the files, with and without the budget.
    for (count, budget) in [("1", "false"), ("3", "true"), ("5", "true")] {
        let set = [
            format!("replicaCount={count}"),
            format!("podDisruptionBudget.enabled={budget}"),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        let rendered = render(&[], &set);
        check_consistent(&rendered, &format!("{set:?}"));
        assert_eq!(replicas(&rendered).map(|n| n.to_string()).as_deref(), Some(count));
        assert_eq!(rendered.budgets.len(), usize::from(budget == "true"));
    }
}

#[test]
fn the_defaults_are_a_highly_available_internal_hub() {
    let rendered = render(&[], &[]);
    let serve = check_consistent(&rendered, "defaults");
    assert_eq!(replicas(&rendered), Some(2));
    assert_eq!(rendered.budgets.len(), 1);
    assert!(rendered.service_monitors.is_empty());
    assert!(rendered.config_maps.is_empty());
    assert!(serve.migrate);
    assert_eq!(serve.config_dir, None, "no specs configured");
    assert_eq!((serve.grpc_addr.port(), serve.ops_addr.port()), (7443, 9090));
    let grpc = &rendered.services[0];
    assert_eq!(
        grpc.spec.as_ref().and_then(|spec| spec.type_.as_deref()),
        Some("LoadBalancer")
    );
    assert_eq!(
        grpc.metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get("service.beta.kubernetes.io/azure-load-balancer-internal"))
            .map(String::as_str),
        Some("true")
    );
    let container = container(&rendered.deployments[0]);
    assert_eq!(
        container.image.as_deref(),
        Some(
            format!(
                "registry.example.com/keyfleet/keyfleet:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        ),
        "the image tag is the hub's version (Chart.yaml appVersion)"
    );
    // Sized from the measured 56 KiB per agent: the defaults carry 5,000 agents on one replica.
    let resources = container.resources.as_ref().expect("resources");
    let request = &resources.requests.as_ref().expect("requests")["memory"].0;
    let limit = &resources.limits.as_ref().expect("limits")["memory"].0;
    let mib = |quantity: &str| -> u64 {
        quantity
            .strip_suffix("Mi")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{quantity} in Mi"))
    };
    assert!(
        mib(request) * 1024 >= 64 * 1024 + 56 * 5_000,
        "memory request {request}"
    );
    assert_eq!(mib(limit), 2 * mib(request), "memory limit {limit}");
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|limits| !limits.contains_key("cpu")),
        "no CPU limit: a rotation's burst is not throttled"
    );
}

#[test]
fn everything_on_renders_workload_identity_specs_monitoring_and_mtls() {
    let file = helm::chart_dir(CHART).join("ci/full-values.yaml");
    let rendered = render(&[&file], &[]);
    let serve = check_consistent(&rendered, "full");
    assert_eq!(replicas(&rendered), Some(3));
    assert_eq!(rendered.service_monitors.len(), 1);
    assert_eq!(rendered.prometheus_rules.len(), 1);
    assert_eq!(rendered.config_maps.len(), 1);
    assert!(
        rendered.config_maps[0]
            .data
            .as_ref()
            .is_some_and(|data| data.contains_key("regcred.yaml"))
    );
    assert!(serve.config_dir.is_some() && serve.admin_client_ca.is_some());
    assert_eq!(
        serve.admin_client_crl.as_deref(),
        Some(Path::new("/etc/keyfleet/admin-ca/ca.crl")),
        "crlKey adds --admin-client-crl"
    );
    assert!(serve.migrate);
    assert_eq!(
        serve.eventgrid_addr.map(|addr| addr.port()),
        Some(8088),
        "eventGrid.enabled adds the webhook"
    );
    let annotations = rendered.service_accounts[0]
        .metadata
        .annotations
        .clone()
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get("azure.workload.identity/client-id")
            .map(String::as_str),
        Some("00000000-0000-0000-0000-000000000001")
    );
    assert_eq!(
        annotations
            .get("azure.workload.identity/tenant-id")
            .map(String::as_str),
        Some("00000000-0000-0000-0000-000000000002")
    );
    let pod = pod(&rendered.deployments[0]);
    let tls = pod
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == "tls")
        .expect("tls volume");
    assert_eq!(
        tls.secret
            .as_ref()
            .and_then(|secret| secret.secret_name.as_deref()),
        Some("keyfleet-grpc-cert")
    );
    let digest = pod
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == "digest-key")
        .and_then(|volume| volume.secret.as_ref())
        .expect("digest-key volume");
    assert_eq!(digest.secret_name.as_deref(), Some("keyfleet-digest"));
    assert_eq!(
        digest.items.as_ref().map(|items| items[0].key.as_str()),
        Some("digest-keys")
    );
}

#[test]
fn inconsistent_values_are_refused_at_render_time() {
    for (set, says) in [
        (
            &["workloadIdentity.enabled=true"][..],
            "workloadIdentity.clientId",
        ),
        (&["tls.secretName="][..], "tls.secretName"),
        (&["database.existingSecret="][..], "database.existingSecret"),
        (&["digestKey.existingSecret="][..], "digestKey.existingSecret"),
    ] {
        let error = helm::template(CHART, RELEASE, NAMESPACE, &[], set)
            .expect_err("refused")
            .to_string();
        assert!(error.contains(says), "{set:?}: {error}");
    }
}
