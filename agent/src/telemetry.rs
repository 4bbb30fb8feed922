//! The agent's tracing subscriber (text or JSON on stderr) and the optional OTLP/gRPC export of
//! its spans (`--otlp-endpoint`, the standard `OTEL_EXPORTER_OTLP_ENDPOINT`): `agent.update` (an
//! Update from the hub, with its nonce and item count), `agent.apply` / `agent.remove` (one item:
//! key, revision, target count) and `agent.repair` (a drifted Secret written back). Attributes are
//! names, revisions and counts, never a value (`agent/tests/traces.rs` checks it against a real
//! OTLP receiver). Traces only: metrics are served on `/metrics`.

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

const QUIET_KUBE_CLIENT: &str = "kube_client::client=error";

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flushes and shuts down the OpenTelemetry exporter when dropped.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Guard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
    }
}

/// Installs the global subscriber; with `otlp_endpoint`, also exports the agent's spans.
pub fn init(filter: &str, format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Guard> {
    let mut filter = EnvFilter::try_new(filter)
        .map_err(|error| anyhow::anyhow!("invalid --log filter {filter:?}: {error}"))?;
    // kube's client logs a whole response body when it cannot decode it; for a Secret that
    // would be its data. Keep that target at error unless the operator asks for it by name.
    if !filter.to_string().contains("kube_client") {
        filter = filter.add_directive(QUIET_KUBE_CLIENT.parse()?);
    }
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let mut guard = Guard { tracer: None };
    let otel = match otlp_endpoint.filter(|endpoint| !endpoint.is_empty()) {
        Some(endpoint) => {
            let mut resource = opentelemetry_sdk::Resource::builder();
            // The SDK reads OTEL_SERVICE_NAME itself; only the default is ours.
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name("keyfleet-agent");
            }
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| anyhow::anyhow!("--otlp-endpoint {endpoint}: {error}"))?;
            let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("keyfleet-agent"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("keyfleet_agent", tracing::Level::INFO),
                );
            guard.tracer = Some(tracer);
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|error| anyhow::anyhow!("install the tracing subscriber: {error}"))?;
    Ok(guard)
}
