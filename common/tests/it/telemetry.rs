use common::config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use tracing::subscriber::with_default;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn the_current_span_context_is_injected_into_and_extracted_from_nats_headers() {
    let config = TelemetryConfig {
        log_level: "info".into(),
        log_format: LogFormat::Text,
        otlp_endpoint: String::new(),
        sample_ratio: 1.0,
    };
    let provider = common::telemetry::tracer_provider(&config, "test").unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    with_default(subscriber, || {
        let span = tracing::info_span!("receive");
        let _guard = span.enter();
        let mut headers = async_nats::HeaderMap::new();
        common::telemetry::inject(&mut headers);
        let traceparent = headers
            .get(proto::trace::TRACEPARENT)
            .expect("traceparent set")
            .to_string();
        assert!(traceparent.starts_with("00-"), "{traceparent}");

        let cx = common::telemetry::extract(Some(&headers));
        let trace_id = cx.span().span_context().trace_id().to_string();
        assert!(traceparent.contains(&trace_id));

        // A span on the next hop joins the same trace.
        let next = tracing::info_span!("handle");
        common::telemetry::follow(&next, Some(&headers));
        let _g = next.enter();
        let mut forwarded = async_nats::HeaderMap::new();
        common::telemetry::inject(&mut forwarded);
        assert!(
            forwarded
                .get(proto::trace::TRACEPARENT)
                .unwrap()
                .to_string()
                .contains(&trace_id)
        );
    });
}
