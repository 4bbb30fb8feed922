//! The agent's OpenTelemetry traces (issue #18 item 5), received by a real OTLP/gRPC trace service
//! in this process (`opentelemetry-proto`'s tonic server): the real agent binary, under the real
//! hub binary and against the fake Kubernetes API, exports (`--otlp-endpoint`, the flag behind
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) an `agent.update` span per Update with an `agent.apply` child per
//! item (key and revision as attributes), as service keyfleet-agent; then, after a Secret is
//! deleted behind its back, an `agent.repair` span. No attribute, event or resource carries the
//! secret's value (raw or base64).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use keyfleet_testkit::kube::{Config, FakeKube};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use support::processes::{AgentProcess, HubProcess, hub_binary};

const FLEET_SECRET: &str = "app-token";
const VALUE: &str = "tr4ce-agent-Pa55w0rd-41c9";

/// Every export request received.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Span> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.clone())
            .collect()
    }

    /// Waits until `done` holds for the spans received, for at most 30 s (the batch exporter
    /// sends every 5 s).
    async fn until(&self, what: &str, agent: &AgentProcess, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
            assert!(
                Instant::now() < deadline,
                "{what}: spans so far {names:?}; agent log:\n{}",
                agent.log.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .map(|attribute| text(attribute.value.as_ref()))
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// Every text the exports carry: resource attributes, span names, attributes, events, statuses.
fn all_texts(requests: &[ExportTraceServiceRequest]) -> Vec<String> {
    let of = |attributes: &[KeyValue]| -> Vec<String> {
        attributes
            .iter()
            .flat_map(|attribute| [attribute.key.clone(), text(attribute.value.as_ref())])
            .collect()
    };
    let mut out = Vec::new();
    for request in requests {
        for resource in &request.resource_spans {
            if let Some(resource) = &resource.resource {
                out.extend(of(&resource.attributes));
            }
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    out.push(span.name.clone());
                    out.extend(of(&span.attributes));
                    for event in &span.events {
                        out.push(event.name.clone());
                        out.extend(of(&event.attributes));
                    }
                    if let Some(status) = &span.status {
                        out.push(status.message.clone());
                    }
                }
            }
        }
    }
    out
}

fn specs(vault_url: &str) -> String {
    format!(
        r#"kind: SecretStore
name: kv
provider:
  azurekv:
    vaultUrl: {vault}
    authType: WorkloadIdentity
    pollInterval: 30s
---
kind: FleetSecret
name: {FLEET_SECRET}
storeRef: kv
data:
  - secretKey: token
    remoteRef: {{ key: app-token, version: "", property: "" }}
target:
  name: {FLEET_SECRET}
  type: Opaque
  namespaces: [a]
  creationPolicy: Owner
  deletionPolicy: Delete
clusters:
  matchLabels: {{ env: prod }}
"#,
        vault = vault_url.trim_end_matches('/'),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_exports_update_apply_and_repair_spans_without_values() {
    let hub_binary = hub_binary();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp: SocketAddr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default())
        .await
        .expect("key vault");
    let version = kv.set_secret("app-token", VALUE, &[]).expect("vault secret");
    let fake = FakeKube::start(Config::default()).await.expect("fake kube");
    let kube = fake.cluster("default").expect("default cluster");
    for namespace in ["a", "keyfleet-system"] {
        kube.create_namespace(namespace).expect("namespace");
    }
    let hub = HubProcess::start(&hub_binary, dir.path(), &kv).await;
    let mut admin = hub.admin();
    admin.apply("app.yaml", specs(kv.vault_url().as_str())).await;
    let token = admin.add_cluster("cluster-1", &[("env", "prod")]).await;
    let endpoint = format!("http://{otlp}");
    let agent = AgentProcess::start_with(
        dir.path(),
        1,
        &hub,
        &kube.kubeconfig_yaml(),
        &token,
        &["--otlp-endpoint", &endpoint],
    );

    let spans = receiver
        .until("an agent.apply span", &agent, |spans| {
            !named(spans, "agent.apply").is_empty()
        })
        .await;
    let apply = named(&spans, "agent.apply")[0];
    assert_eq!(attribute(apply, "key").as_deref(), Some(FLEET_SECRET));
    assert_eq!(attribute(apply, "revision").as_deref(), Some("1"));
    let update = named(&spans, "agent.update")
        .into_iter()
        .find(|update| update.span_id == apply.parent_span_id)
        .unwrap_or_else(|| panic!("agent.apply's parent is an agent.update: {spans:#?}"));
    assert_eq!(attribute(update, "upserts").as_deref(), Some("1"));
    // The Secret landed, and the hub told the agent which Key Vault version it holds.
    let secret = kube.get_secret("a", FLEET_SECRET).expect("written");
    assert_eq!(
        secret
            .meta
            .annotations
            .get("keyfleet.io/key-vault-versions")
            .map(String::as_str),
        Some(format!(r#"{{"app-token":"{version}"}}"#).as_str()),
        "the hub sends the revision's Key Vault versions"
    );

    // Drift: the Secret deleted behind the agent's back is written back under agent.repair.
    assert!(kube.delete_secret("a", FLEET_SECRET));
    let spans = receiver
        .until("an agent.repair span", &agent, |spans| {
            !named(spans, "agent.repair").is_empty()
        })
        .await;
    let repair = named(&spans, "agent.repair")[0];
    assert_eq!(attribute(repair, "key").as_deref(), Some(FLEET_SECRET));
    assert_eq!(attribute(repair, "namespace").as_deref(), Some("a"));

    let requests = receiver.requests.lock().expect("lock").clone();
    let texts = all_texts(&requests);
    assert!(
        texts.iter().any(|text| text == "keyfleet-agent"),
        "the service name is keyfleet-agent: {texts:?}"
    );
    let base64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
    for text in &texts {
        assert!(
            !text.contains(VALUE) && !text.contains(&base64),
            "a span carries the value: {text}"
        );
    }
    server.abort();
}
