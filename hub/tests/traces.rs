//! OpenTelemetry traces of one rotation, received by a real OTLP/gRPC trace service in this
//! process (`opentelemetry-proto`'s tonic server): a `keyfleet serve` process exporting to it
//! (`--otlp-endpoint`, the flag behind `OTEL_EXPORTER_OTLP_ENDPOINT`) sends the Admin RPC spans,
//! `vault.poll` with its `vault.get` children, `rotation` with `record_version`, `render` and
//! `plan` below it, and `sync.stream` for each agent stream; the service name is keyfleet-hub; and
//! no attribute, event or resource carries the secret's value (raw, as JSON, or base64).
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use support::TestDb;
use support::serve::{
    ServeEnv, ServeProcess, docker_config, first_revision_everywhere, fleet_setup, start_agents,
};

const KEY: &str = "regcred";
const CONVERGE: Duration = Duration::from_secs(90);
const FIRST: &str = "tr4ce-first-Pa55w0rd-7c1d";
const SECOND: &str = "tr4ce-second-Pa55w0rd-e9b2";

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
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Span> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.clone())
            .collect()
    }

    /// Waits until `done` holds for the spans received, for at most 30 s (the batch exporter
    /// sends every 5 s).
    async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
            assert!(Instant::now() < deadline, "{what}: spans so far {names:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
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

fn all_texts(request: &ExportTraceServiceRequest) -> Vec<String> {
    let of = |attributes: &[KeyValue]| -> Vec<String> {
        attributes
            .iter()
            .flat_map(|attribute| [attribute.key.clone(), text(attribute.value.as_ref())])
            .collect()
    };
    let mut out = Vec::new();
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
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spans_of_one_rotation_arrive_linked_and_without_values() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    kv.set_secret("acr-pull", &docker_config(FIRST), &[]).unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let endpoint = format!("http://{otlp}");
    let hub = ServeProcess::start_with(
        &env,
        "hub-a",
        "127.0.0.1:0".parse().unwrap(),
        &["--otlp-endpoint", &endpoint],
    )
    .await;
    let mut admin = env.admin(&hub).await;
    let tokens = fleet_setup(&mut admin, &kv, 2, 1).await;
    let agents = start_agents(&[env.hub_address(&hub)], tokens);
    let first = first_revision_everywhere(CONVERGE, &agents, KEY).await;

    // The rotation: a new version, seen at once by sync-now.
    let version = kv.set_secret("acr-pull", &docker_config(SECOND), &[]).unwrap();
    admin
        .sync_now(v1::SyncNowRequest { store: String::new() })
        .await
        .unwrap();
    support::serve::all_agents(CONVERGE, &agents, "every cluster holds the rotation", |state| {
        state.revision(KEY).is_some_and(|revision| revision > first)
    })
    .await;
    admin
        .get_status(v1::GetStatusRequest {
            fleet_secret: KEY.to_owned(),
            lagging_limit: 0,
        })
        .await
        .unwrap();
    // Streams end: their spans close.
    drop(agents);

    let spans = receiver
        .until("the rotation's spans, the admin RPCs and the streams", |spans| {
            let rotation = spans.iter().find(|span| {
                span.name == "rotation" && attribute(span, "version").as_deref() == Some(version.as_str())
            });
            rotation.is_some_and(|rotation| {
                ["record_version", "render", "plan", "rollout.wave"]
                    .iter()
                    .all(|child| {
                        spans
                            .iter()
                            .any(|span| span.name == *child && span.parent_span_id == rotation.span_id)
                    })
            }) && !named(spans, "admin.SyncNow").is_empty()
                && !named(spans, "admin.GetStatus").is_empty()
                && named(spans, "sync.stream").len() >= 2
                && spans.iter().any(|span| {
                    span.name == "vault.get"
                        && attribute(span, "version").as_deref() == Some(version.as_str())
                })
        })
        .await;

    let rotation = spans
        .iter()
        .find(|span| {
            span.name == "rotation" && attribute(span, "version").as_deref() == Some(version.as_str())
        })
        .unwrap();
    assert!(rotation.parent_span_id.is_empty(), "a rotation is a root span");
    assert_eq!(attribute(rotation, "key").as_deref(), Some("acr-pull"));
    assert_eq!(attribute(rotation, "store").as_deref(), Some("shared-kv"));
    for child in ["record_version", "render", "plan"] {
        let span = spans
            .iter()
            .find(|span| span.name == child && span.parent_span_id == rotation.span_id)
            .unwrap();
        assert_eq!(
            span.trace_id, rotation.trace_id,
            "{child} is in the rotation's trace"
        );
        assert!(
            span.end_time_unix_nano <= rotation.end_time_unix_nano,
            "{child} ends within the rotation"
        );
    }
    // The rotation lasts until its rollout's last wave: every wave it went through is its child
    // and ends within it (the example rolls out in three waves).
    let waves: Vec<&Span> = spans
        .iter()
        .filter(|span| span.name == "rollout.wave" && span.parent_span_id == rotation.span_id)
        .collect();
    assert!(!waves.is_empty(), "the rotation's waves are its children");
    assert!(
        waves
            .iter()
            .all(|wave| wave.end_time_unix_nano <= rotation.end_time_unix_nano),
        "each wave ends within the rotation"
    );
    let render = spans
        .iter()
        .find(|span| span.name == "render" && span.parent_span_id == rotation.span_id)
        .unwrap();
    assert_eq!(attribute(render, "fleet_secret").as_deref(), Some(KEY));
    // The fetch of the new version is a child of the sweep that found it.
    let get = spans
        .iter()
        .find(|span| {
            span.name == "vault.get" && attribute(span, "version").as_deref() == Some(version.as_str())
        })
        .unwrap();
    let poll = spans
        .iter()
        .find(|span| span.span_id == get.parent_span_id)
        .expect("vault.get has a parent");
    assert_eq!(poll.name, "vault.poll");
    assert_eq!(attribute(poll, "store").as_deref(), Some("shared-kv"));
    // A stream's span names its cluster id, nothing else.
    let stream = named(&spans, "sync.stream")[0];
    assert!(stream.parent_span_id.is_empty());
    assert!(uuid::Uuid::parse_str(&attribute(stream, "cluster").unwrap()).is_ok());

    // Service name and no value anywhere.
    let requests = receiver.requests.lock().unwrap().clone();
    let service = requests[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|attribute| attribute.key == "service.name")
        .map(|attribute| text(attribute.value.as_ref()));
    assert_eq!(service.as_deref(), Some("keyfleet-hub"));
    let base64 = base64::engine::general_purpose::STANDARD;
    for password in [FIRST, SECOND] {
        let forms = [
            password.to_owned(),
            docker_config(password),
            base64.encode(docker_config(password)),
            base64.encode(format!("keyfleet-pull:{password}")),
        ];
        for request in &requests {
            for text in all_texts(request) {
                for form in &forms {
                    assert!(
                        !text.contains(form.as_str()),
                        "a span carries a secret value: {text}"
                    );
                }
            }
        }
    }
    let names: std::collections::BTreeSet<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    println!("spans received: {} ({names:?})", spans.len());
    server.abort();
    db.drop_db().await;
}
