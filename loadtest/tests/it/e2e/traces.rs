//! One trace per user message: the fleet's OTLP/HTTP export, received on a loopback port
//! and decoded, follows a mention from the gateway's ingress through the worker's turn,
//! its tool call and approval wait, the checkpoint and uploads, back to Mattermost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::mmsim::client::EventKind;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use super::support::*;

const TURN: Duration = Duration::from_secs(60);
const TRACE_URL: &str = "http://traces.test/trace/{trace_id}";

/// Spans received, in arrival order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

async fn export(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let spans = request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans);
    received.0.lock().unwrap().extend(spans);
    // An empty ExportTraceServiceResponse.
    Vec::new()
}

/// An OTLP/HTTP receiver on 127.0.0.1:0, on its own thread and runtime, so the exporter's
/// blocking flush never waits on the test's runtime.
fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(export))
        .with_state(received.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (url, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s,
        _ => "",
    }
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(AnyValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn duration_ms(span: &Span) -> f64 {
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6
}

/// One trace's spans, by id, with their children in start order.
struct Trace {
    spans: HashMap<Vec<u8>, Span>,
    children: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

impl Trace {
    fn new(spans: Vec<Span>) -> Self {
        let mut children: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        let mut sorted = spans.clone();
        sorted.sort_by_key(|s| s.start_time_unix_nano);
        for span in &sorted {
            children
                .entry(span.parent_span_id.clone())
                .or_default()
                .push(span.span_id.clone());
        }
        let spans = spans.into_iter().map(|s| (s.span_id.clone(), s)).collect();
        Self { spans, children }
    }

    fn named(&self, name: &str) -> Vec<&Span> {
        let mut found: Vec<&Span> = self.spans.values().filter(|s| s.name == name).collect();
        found.sort_by_key(|s| s.start_time_unix_nano);
        found
    }

    fn one(&self, name: &str) -> &Span {
        let found = self.named(name);
        assert_eq!(found.len(), 1, "one {name:?} span in\n{}", self.listing());
        found[0]
    }

    fn parent(&self, span: &Span) -> Option<&Span> {
        self.spans.get(&span.parent_span_id)
    }

    fn parent_name(&self, span: &Span) -> &str {
        self.parent(span).map_or("(none)", |p| p.name.as_str())
    }

    fn children_of(&self, span: &Span) -> Vec<&Span> {
        self.children
            .get(&span.span_id)
            .map(|ids| ids.iter().map(|id| &self.spans[id]).collect())
            .unwrap_or_default()
    }

    fn roots(&self) -> Vec<&Span> {
        let mut roots: Vec<&Span> = self
            .spans
            .values()
            .filter(|s| !self.spans.contains_key(&s.parent_span_id))
            .collect();
        roots.sort_by_key(|s| s.start_time_unix_nano);
        roots
    }

    /// Span names with durations, indented by parent; kinds and links noted.
    fn listing(&self) -> String {
        fn walk(trace: &Trace, span: &Span, depth: usize, out: &mut String) {
            let kind = match SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified) {
                SpanKind::Producer => " [producer]",
                SpanKind::Consumer => " [consumer]",
                SpanKind::Client => " [client]",
                SpanKind::Server => " [server]",
                _ => "",
            };
            let links = match span.links.len() {
                0 => String::new(),
                n => format!(" (links: {n})"),
            };
            let status = attr_int(span, "http.response.status_code")
                .map(|s| format!(" → {s}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:indent$}{}{kind}{status}{links}  {:.1} ms\n",
                "",
                span.name,
                duration_ms(span),
                indent = depth * 2
            ));
            for child in trace.children_of(span) {
                walk(trace, child, depth + 1, out);
            }
        }
        let mut out = String::new();
        for root in self.roots() {
            walk(self, root, 0, &mut out);
        }
        out
    }
}

fn kind(span: &Span) -> SpanKind {
    SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified)
}

fn assert_messaging(span: &Span, operation: &str, operation_type: &str, destination: &str) {
    assert_eq!(attr_str(span, "messaging.system"), "nats", "{}", span.name);
    assert_eq!(
        attr_str(span, "messaging.operation.name"),
        operation,
        "{}",
        span.name
    );
    assert_eq!(
        attr_str(span, "messaging.operation.type"),
        operation_type,
        "{}",
        span.name
    );
    assert!(
        attr_str(span, "messaging.destination.name").starts_with(&format!("{destination}.")),
        "{}: {}",
        span.name,
        attr_str(span, "messaging.destination.name")
    );
    assert!(
        !attr_str(span, "messaging.message.id").is_empty(),
        "{} has a message id",
        span.name
    );
    assert_eq!(span.name, format!("{operation} {destination}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mention_is_one_trace_from_ingress_to_the_posts_it_causes() {
    let (endpoint, received) = receiver();
    let env = TestEnv::new().await;
    let mut telemetry = env.config.telemetry.clone();
    telemetry.otlp_endpoint = endpoint;
    telemetry.log_level = "warn".into();
    // Installed before the fleet's test subscriber, which then stands aside. nextest
    // runs each test in its own process, so this provider sees only this fleet.
    let guard =
        Arc::new(common::telemetry::init(&telemetry, "ccfleet-e2e").expect("telemetry installs"));
    let fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.telemetry.trace_url = TRACE_URL.into();
    })
    .await;
    let prefix = fleet.config.nats.prefix.clone();
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo traced > traced.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = wait_for_post(&fleet, &root.id, TURN, "the permission request", |p| {
        p.message.contains("Permission needed")
    })
    .await;
    react_when_known(&fleet, &prompt, "+1").await;
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    wait_for_post(&fleet, &root.id, TURN, "the artifact links", |p| {
        p.message.contains("traced.txt")
    })
    .await;

    // Spans end as their work ends (the last reply is applied after it is visible):
    // flush until the trace holds everything, or show what it holds.
    let replies = format!("process {prefix}.replies");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let flush = guard.clone();
        tokio::task::spawn_blocking(move || flush.force_flush())
            .await
            .unwrap()
            .expect("the spans are exported");
        let spans = received.spans();
        let turn = spans
            .iter()
            .find(|s| s.name == "turn" && attr_str(s, "thread_id") == root.id);
        if let Some(turn) = turn {
            let trace_id = turn.trace_id.clone();
            let trace = Trace::new(
                spans
                    .into_iter()
                    .filter(|s| s.trace_id == trace_id)
                    .collect(),
            );
            // Every span's parent arrived too (a parent ends after its children).
            let complete = trace.roots().len() == 1
                && !trace.named("checkpoint").is_empty()
                && !trace.named("artifacts").is_empty()
                && trace
                    .named(&replies)
                    .iter()
                    .filter(|s| !trace.children_of(s).is_empty())
                    .count()
                    >= 3;
            if complete || tokio::time::Instant::now() > deadline {
                break trace;
            }
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no turn span for the thread among {} spans",
                spans.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let listing = trace.listing();
    println!("trace {}:\n{listing}", hex(&trace.one("turn").trace_id));

    // One root: the gateway's ingress of the mention; the worker's turn in the same trace.
    let roots = trace.roots();
    assert_eq!(roots.len(), 1, "one root:\n{listing}");
    let ingress = roots[0];
    assert_eq!(ingress.name, "ingress websocket", "{listing}");
    assert!(ingress.parent_span_id.is_empty(), "a new trace");

    // ingress → publish events (PRODUCER) → process events (CONSUMER, the thread's
    // consumer and the dispatcher) → turn.
    let events = format!("{prefix}.events");
    let publish = trace.one(&format!("publish {events}"));
    assert_eq!(kind(publish), SpanKind::Producer);
    assert_eq!(trace.parent_name(publish), "ingress websocket");
    assert_messaging(publish, "publish", "send", &events);
    assert_eq!(
        attr_str(publish, "messaging.message.id"),
        root.id,
        "the Nats-Msg-Id is the post's id"
    );
    let processed = trace.named(&format!("process {events}"));
    let consumers: Vec<&str> = processed
        .iter()
        .map(|s| attr_str(s, "messaging.consumer.group.name"))
        .collect();
    assert!(consumers.contains(&"dispatch"), "{consumers:?}");
    for span in &processed {
        assert_eq!(kind(span), SpanKind::Consumer);
        assert_eq!(span.parent_span_id, publish.span_id, "{listing}");
        assert!(span.links.is_empty(), "one message: a parent, not a link");
        assert_messaging(span, "process", "process", &events);
    }
    let queue = format!("{prefix}.queue");
    let queued = trace.one(&format!("publish {queue}"));
    assert_eq!(kind(queued), SpanKind::Producer);
    assert_eq!(
        attr_str(
            trace.parent(queued).unwrap(),
            "messaging.consumer.group.name"
        ),
        "dispatch"
    );
    assert_messaging(queued, "publish", "send", &queue);
    let claimed = trace.one(&format!("process {queue}"));
    assert_eq!(kind(claimed), SpanKind::Consumer);
    assert_eq!(claimed.parent_span_id, queued.span_id);
    assert_messaging(claimed, "process", "process", &queue);

    let turn = trace.one("turn");
    let received_by = trace.parent(turn).expect("the turn has a parent");
    assert_eq!(received_by.name, format!("process {events}"));
    assert!(
        attr_str(received_by, "messaging.consumer.group.name").starts_with("t-"),
        "the turn runs under the thread consumer's span"
    );
    assert_eq!(attr_int(turn, "turn"), Some(1));
    assert_eq!(attr_str(turn, "thread_id"), root.id);
    assert!(!attr_str(turn, "session_id").is_empty());
    assert_eq!(attr_str(turn, "user.id"), fleet.demo().id);
    assert!(attr(turn, "gen_ai.request.model").is_some());

    // turn → tool call → approval wait, which lasts until the reaction's answer.
    let tool = trace.one("execute_tool Bash");
    assert_eq!(tool.parent_span_id, turn.span_id);
    assert_eq!(attr_str(tool, "gen_ai.tool.name"), "Bash");
    let wait = trace.one("approval wait");
    assert_eq!(wait.parent_span_id, tool.span_id, "{listing}");
    assert!(duration_ms(wait) > 0.0);
    assert!(wait.end_time_unix_nano <= tool.end_time_unix_nano);

    // turn → checkpoint and artifacts, each with its upload.
    for name in ["checkpoint", "artifacts"] {
        let span = trace.one(name);
        assert_eq!(span.parent_span_id, turn.span_id, "{name}");
        let uploads = trace.children_of(span);
        assert!(
            uploads
                .iter()
                .any(|u| u.name == "upload" && kind(u) == SpanKind::Client),
            "{name} uploads:\n{listing}"
        );
    }

    // turn → reply publish (PRODUCER) → egress apply (CONSUMER) → Mattermost call (CLIENT).
    let replies_destination = format!("{prefix}.replies");
    let published = trace.named(&format!("publish {replies_destination}"));
    assert!(published.len() >= 3, "{listing}");
    for span in &published {
        assert_eq!(kind(span), SpanKind::Producer);
        assert_messaging(span, "publish", "send", &replies_destination);
    }
    assert!(
        published.iter().any(|s| s.parent_span_id == turn.span_id),
        "{listing}"
    );
    let applied = trace.named(&replies);
    assert!(!applied.is_empty(), "{listing}");
    let mut calls = 0;
    for span in &applied {
        assert_eq!(kind(span), SpanKind::Consumer);
        assert_messaging(span, "process", "process", &replies_destination);
        assert_eq!(attr_str(span, "messaging.consumer.group.name"), "egress");
        let parent = trace
            .parent(span)
            .expect("an apply has its operation as parent");
        assert_eq!(parent.name, format!("publish {replies_destination}"));
        assert_eq!(
            attr_str(span, "messaging.message.id"),
            attr_str(parent, "messaging.message.id"),
            "an apply continues the operation it applies"
        );
        for call in trace.children_of(span) {
            if kind(call) != SpanKind::Client {
                continue;
            }
            calls += 1;
            let method = attr_str(call, "http.request.method");
            assert!(["POST", "PUT", "GET"].contains(&method), "{method}");
            assert_eq!(call.name, method);
            assert!(attr_str(call, "url.full").contains("/api/v4/"));
            assert_eq!(attr_str(call, "server.address"), "127.0.0.1");
            let status = attr_int(call, "http.response.status_code").unwrap_or_default();
            assert!(
                (200..300).contains(&status),
                "{status}: {:?}",
                call.attributes
            );
        }
    }
    assert!(calls >= 3, "Mattermost calls under the applies:\n{listing}");
    // Coalesced streaming edits are one apply linked to every operation it served.
    for span in applied.iter().filter(|s| !s.links.is_empty()) {
        assert!(span.links.iter().all(|l| l.trace_id == turn.trace_id));
    }

    // The turn's record carries the trace id (for `/claude status` and the admin API).
    let records = worker::records::Records::new(env.pool());
    let turns = records.turn_traces(&root.id, 5).await.unwrap();
    let trace_id = hex(&turn.trace_id);
    assert_eq!(turns[0].trace_id.as_deref(), Some(trace_id.as_str()));
    // `/claude status` links the turn to it.
    let mut events = fleet.demo().websocket().await.unwrap();
    fleet
        .demo()
        .execute_command(fleet.channel_id(), "/claude status", Some(&root.id))
        .await
        .unwrap();
    let link = format!("[turn 1](http://traces.test/trace/{trace_id})");
    let status = events
        .wait_for(TURN, |e| {
            e.kind() == EventKind::EphemeralMessage
                && e.post().is_some_and(|p| p.message.contains("Traces:"))
        })
        .await
        .expect("the status, privately")
        .post()
        .unwrap()
        .message;
    assert!(status.contains(&link), "{status}");

    assert_contract(&fleet).await;
    fleet.stop().await;
}
