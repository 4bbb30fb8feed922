//! Tracing and OpenTelemetry: a `tracing` subscriber (text or JSON), optional OTLP export of
//! traces and metrics, and a guard that flushes the exporters on drop.

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
    /// OTLP/gRPC collector endpoint for traces and metrics, e.g. `http://127.0.0.1:4317`.
    /// Unset: no export.
    #[arg(long, env = "KEYFLEET_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Flushes and shuts down the OpenTelemetry exporters when dropped.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Guard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
        if let Some(meter) = self.meter.take() {
            let _ = meter.shutdown();
        }
    }
}

/// Installs the global subscriber. Logs go to stderr so stdout stays for command output.
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
    };
    let mut guard = Guard {
        tracer: None,
        meter: None,
    };
    let otel = match &config.otlp_endpoint {
        Some(endpoint) => {
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("keyfleet-hub")
                .build();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.clone())
                .build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let meter = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_periodic_exporter(metrics)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_meter_provider(meter.clone());
            let layer = tracing_opentelemetry::layer().with_tracer(tracer.tracer("keyfleet-hub"));
            guard.tracer = Some(tracer);
            guard.meter = Some(meter);
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(guard)
}
