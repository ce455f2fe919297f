//! Logging and tracing: `tracing` with human or JSON output, and an OpenTelemetry layer.
//!
//! A tracer provider is always installed so that every hop has real trace and span ids to
//! propagate; spans are exported over OTLP/HTTP only when `telemetry.otlp_endpoint` is
//! set. W3C trace context travels in NATS message headers ([`inject`], [`extract`]).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("could not build the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Flushes and shuts down the exporter when dropped. Keep it alive for the life of `main`.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A failed final flush has nowhere to be reported but stderr.
        if let Err(err) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {err}");
        }
    }
}

/// The tracer provider for `service`, exporting to `config.otlp_endpoint` when it is set.
pub fn tracer_provider(
    config: &TelemetryConfig,
    service: &'static str,
) -> Result<SdkTracerProvider, Error> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))));
    if !config.otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig as _;
        let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&endpoint)
            .build()
            .map_err(|source| Error::Exporter { endpoint, source })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber and propagator. Call once, from `main`.
pub fn init(config: &TelemetryConfig, service: &'static str) -> Result<Guard, Error> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => filter,
        _ => config.log_level.clone(),
    };
    let env_filter =
        EnvFilter::try_new(&filter).map_err(|source| Error::Filter { filter, source })?;
    let provider = tracer_provider(config, service)?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(Error::AlreadyInstalled)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        git_sha = option_env!("CCFLEET_GIT_SHA").unwrap_or("unknown"),
        otlp = !config.otlp_endpoint.is_empty(),
        "telemetry initialised"
    );
    Ok(Guard { provider })
}

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        [proto::trace::TRACEPARENT, proto::trace::TRACESTATE]
            .into_iter()
            .filter(|k| self.0.get(*k).is_some())
            .collect()
    }
}

/// Writes the W3C trace context of `span` into NATS headers.
pub fn inject_span(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Writes the W3C trace context of the current span into NATS headers.
pub fn inject(headers: &mut async_nats::HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// Reads a W3C trace context from NATS headers.
pub fn extract(headers: Option<&async_nats::HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => opentelemetry::Context::new(),
    }
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn follow(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let _ = span.set_parent(extract(headers));
}
