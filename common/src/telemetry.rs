//! Logging and tracing: `tracing` with human or JSON output, and an OpenTelemetry layer.
//!
//! A tracer provider is always installed so that every hop has real trace and span ids to
//! propagate; spans are exported over OTLP/HTTP only when `telemetry.otlp_endpoint` is
//! set. W3C trace context travels in NATS message headers ([`inject`], [`extract`]).
//! Messaging spans ([`publish_span`], [`process_span`]) follow OpenTelemetry's messaging
//! conventions: named `{operation} {destination}` with a destination that never names a
//! thread. Spans are exported whatever `telemetry.log_level` says: the log filter applies
//! to the log output only, and the exporter takes the info spans of ccfleet's own crates.
//! JSON log lines carry the `trace_id` and `span_id` of the span they were written in.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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

impl Guard {
    /// Exports every span ended so far (tests call it before reading what was exported).
    pub fn force_flush(&self) -> Result<(), opentelemetry_sdk::error::OTelSdkError> {
        self.provider.force_flush()
    }
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

/// The target of spans that only give log lines context (a thread actor's whole life):
/// [`export_filter`] leaves them out.
pub const LOG_ONLY: &str = "ccfleet::log";

/// Which spans are exported: the info spans of ccfleet's crates, only warnings from the
/// rest (dependencies' spans would start traces of their own).
pub fn export_filter() -> Targets {
    Targets::new().with_default(Level::WARN).with_targets(
        ["gateway", "worker", "common", "loadtest"]
            .into_iter()
            .map(|target| (target, Level::INFO)),
    )
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
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(export_filter());
    let fmt = match config.log_format {
        LogFormat::Json => json_layer(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(env_filter))
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

/// JSON log lines, one per event, with the current span and, when the OpenTelemetry layer
/// is installed too, the `trace_id` and `span_id` of the span the event was written in.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(format::JsonFields::new())
        .event_format(TraceJson(
            format::Format::default().json().with_current_span(true),
        ))
        .with_writer(writer)
}

struct TraceJson(format::Format<format::Json>);

impl<S, N> FormatEvent<S, N> for TraceJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The nearest span the OpenTelemetry layer has started (a span it filtered out
        // has no ids of its own).
        let ids = ctx.lookup_current().and_then(|current| {
            current.scope().find_map(|span| {
                let extensions = span.extensions();
                let data = extensions.get::<tracing_opentelemetry::OtelData>()?;
                let trace_id = data
                    .trace_id()
                    .filter(|id| *id != opentelemetry::TraceId::INVALID)?;
                Some((trace_id, data.span_id()?))
            })
        });
        match (ids, line.strip_suffix("}\n")) {
            (Some((trace_id, span_id)), Some(head)) => writeln!(
                writer,
                "{head},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            _ => writer.write_str(&line),
        }
    }
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

/// Links `span` to the trace context carried in `headers` (for an operation that serves
/// several messages, where no single one is its parent).
pub fn link(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    link_context(span, &extract(headers));
}

/// Links `span` to the span of `cx`, when `cx` has one.
pub fn link_context(span: &tracing::Span, cx: &opentelemetry::Context) {
    let linked = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// The trace id of `span` (32 hex digits), when it is part of a trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let id = span.context().span().span_context().trace_id();
    (id != opentelemetry::TraceId::INVALID).then(|| id.to_string())
}

/// The link to a trace from `telemetry.trace_url` (`{trace_id}` replaced); `None` when
/// the template is empty.
pub fn trace_link(template: &str, trace_id: &str) -> Option<String> {
    (!template.is_empty()).then(|| template.replace("{trace_id}", trace_id))
}

/// The `Nats-Msg-Id` of a message, or "" without one.
pub fn message_id(headers: Option<&async_nats::HeaderMap>) -> &str {
    headers
        .and_then(|h| h.get(proto::names::MSG_ID_HEADER))
        .map_or("", |v| v.as_str())
}

/// A PRODUCER span for publishing one message to `subject`. `destination` is the subject
/// without what varies per thread (`proto::names::Names::events_destination`, …): the span
/// is named `publish {destination}`. Inject its context ([`inject_span`]) into the
/// message's headers so the consumer's span joins the trace.
pub fn publish_span(destination: &str, subject: &str, message_id: &str) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = %subject,
        messaging.destination.template = %destination,
        messaging.message.id = %message_id,
        thread_id = tracing::field::Empty,
    )
}

/// A CONSUMER span for processing messages delivered by the durable `consumer`, named
/// `process {destination}`. The caller decides whether it follows the producer
/// ([`follow`]: one message) or links to it ([`link`]: several).
pub fn process_span(
    destination: &str,
    subject: &str,
    message_id: &str,
    consumer: &str,
) -> tracing::Span {
    tracing::info_span!(
        "process",
        otel.name = %format_args!("process {destination}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.destination.template = %destination,
        messaging.consumer.group.name = %consumer,
        messaging.message.id = %message_id,
        thread_id = tracing::field::Empty,
    )
}
