//! Tracing and OpenTelemetry: a `tracing` subscriber (text or JSON), optional OTLP/gRPC export of
//! the hub's spans, and a guard that flushes the exporter on drop.
//!
//! **Traces only (decision):** metrics are served to Prometheus on `/metrics` (`docs/metrics.md`);
//! an OTel meter would carry the same figures twice, so none is exported. The spans: `admin.*`
//! (each Admin RPC), `vault.poll` (a change-detection sweep) with `vault.get` (a version fetched)
//! below it, `rotation` (a new Key Vault version from the moment the engine records it, through
//! `render` and `plan`, to the desired sets handed to the streams and, with a rollout strategy,
//! to its last wave: each `rollout.wave` the leader starts is its child) and `sync.stream` (an
//! agent stream's life). The agent exports its own spans (`agent.update`, `agent.apply`,
//! `agent.remove`, `agent.repair`; `agent/src/telemetry.rs`). Attributes are names, versions,
//! revisions and counts, never a value (`hub/tests/traces.rs` checks it against a real OTLP
//! receiver).

use clap::{Args, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging and tracing flags.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Log filter in `RUST_LOG` syntax, e.g. `info,keyfleet_hub=debug`.
    #[arg(long, env = "KEYFLEET_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(
        long,
        env = "KEYFLEET_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`: exports the hub's traces (Admin
    /// RPCs, Key Vault polls and fetches, rotations, rollout waves, agent streams; never a value).
    /// Metrics are not exported over OTLP: scrape /metrics. The service name is
    /// `OTEL_SERVICE_NAME` (default keyfleet-hub); other `OTEL_*` exporter variables apply. Unset:
    /// no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
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

/// Installs the global subscriber. Logs go to stderr so stdout stays for command output; `--log`
/// filters the logs, the exported spans are the hub's own at info level and above.
pub fn init(config: &Config) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|error| anyhow::anyhow!("invalid --log filter {:?}: {error}", config.log))?;
    let fmt = match config.log_format {
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
    let otel = match config
        .otlp_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.is_empty())
    {
        Some(endpoint) => {
            let mut resource = opentelemetry_sdk::Resource::builder();
            // The SDK reads OTEL_SERVICE_NAME itself; only the default is ours.
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name("keyfleet-hub");
            }
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("keyfleet-hub"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("keyfleet_hub", tracing::Level::INFO),
                );
            guard.tracer = Some(tracer);
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry().with(fmt).with(otel).try_init()?;
    Ok(guard)
}
