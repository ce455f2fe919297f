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
        trace_url: String::new(),
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

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn json_log_lines_carry_the_trace_and_span_ids_of_their_span() {
    let config = TelemetryConfig {
        log_level: "info".into(),
        log_format: LogFormat::Json,
        otlp_endpoint: String::new(),
        sample_ratio: 1.0,
        trace_url: String::new(),
    };
    let provider = common::telemetry::tracer_provider(&config, "test").unwrap();
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::registry()
        .with(common::telemetry::json_layer(buffer.clone()))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let (trace_id, span_id) = with_default(subscriber, || {
        tracing::info!("outside any span");
        let span = tracing::info_span!("handle", thread_id = "t1");
        let _guard = span.enter();
        tracing::info!(answer = 42, "inside");
        let cx = tracing_opentelemetry::OpenTelemetrySpanExt::context(&span);
        let context = cx.span().span_context().clone();
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].get("trace_id").is_none(), "{text}");
    assert_eq!(lines[1]["trace_id"], trace_id.as_str(), "{text}");
    assert_eq!(lines[1]["span_id"], span_id.as_str(), "{text}");
    assert_eq!(lines[1]["fields"]["answer"], 42, "{text}");
    assert_eq!(lines[1]["span"]["thread_id"], "t1", "{text}");
}
