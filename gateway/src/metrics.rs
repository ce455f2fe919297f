//! Prometheus metrics of the gateway, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The `class` label of `mattermost_responses_total`, each created at 0.
pub const RESPONSE_CLASSES: &[&str] = &["2xx", "4xx", "429", "5xx", "network"];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Mattermost events accepted, by source (websocket, webhook, slash, action, dialog).
    pub events_in: Family<Labels, Counter>,
    /// Publish → JetStream ack, seconds.
    pub publish_latency: Histogram,
    /// Mattermost REST calls made by egress, by call and outcome.
    pub egress_calls: Family<Labels, Counter>,
    /// Mattermost's answers by status class (2xx, 4xx, 429, 5xx, network).
    pub mattermost_responses: Family<Labels, Counter>,
    /// 429 answers from Mattermost (retried; never shown to users).
    pub rate_limited: Counter,
    /// Reply operations the egress leader holds, not yet applied.
    pub egress_queue_depth: Gauge,
    /// Reply operation created → applied, seconds.
    pub egress_lag: Histogram,
    /// Reply operations Mattermost refused for good (or that outlived the replies stream).
    pub dead_letters: Counter,
    /// 1 while this replica is the egress leader.
    pub egress_leader: Gauge,
    /// The circuit in front of Mattermost: 0 closed, 1 half-open (probing), 2 open.
    pub circuit_state: Gauge,
    /// Times the circuit opened (Mattermost stopped answering).
    pub circuit_opened: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ccfleet_gateway");
        let events_in = Family::<Labels, Counter>::default();
        registry.register("events_in", "Mattermost events accepted", events_in.clone());
        let publish_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "publish_latency_seconds",
            "Publish to JetStream until acknowledged",
            publish_latency.clone(),
        );
        let egress_calls = Family::<Labels, Counter>::default();
        registry.register(
            "egress_calls",
            "Mattermost REST calls made by egress",
            egress_calls.clone(),
        );
        let mattermost_responses = Family::<Labels, Counter>::default();
        for class in RESPONSE_CLASSES {
            let _ = mattermost_responses.get_or_create(&vec![("class", (*class).to_owned())]);
        }
        registry.register(
            "mattermost_responses",
            "Mattermost's answers to REST calls, by status class",
            mattermost_responses.clone(),
        );
        let egress_queue_depth = Gauge::default();
        registry.register(
            "egress_queue_depth",
            "Reply operations held by the egress leader, not yet applied",
            egress_queue_depth.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "mattermost_429",
            "Rate-limited answers from Mattermost",
            rate_limited.clone(),
        );
        let egress_lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "egress_lag_seconds",
            "Reply operation created until applied to Mattermost",
            egress_lag.clone(),
        );
        let dead_letters = Counter::default();
        registry.register(
            "dead_letters",
            "Reply operations refused for good and dead-lettered",
            dead_letters.clone(),
        );
        let egress_leader = Gauge::default();
        registry.register(
            "egress_leader",
            "1 while this replica applies replies",
            egress_leader.clone(),
        );
        let circuit_state = Gauge::default();
        registry.register(
            "mattermost_circuit_state",
            "Circuit in front of Mattermost: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let circuit_opened = Counter::default();
        registry.register(
            "mattermost_circuit_opened",
            "Times the circuit in front of Mattermost opened",
            circuit_opened.clone(),
        );
        Self {
            registry,
            events_in,
            publish_latency,
            egress_calls,
            mattermost_responses,
            rate_limited,
            egress_queue_depth,
            egress_lag,
            dead_letters,
            egress_leader,
            circuit_state,
            circuit_opened,
        }
    }
}

impl Metrics {
    pub fn event_in(&self, source: &'static str) {
        self.events_in
            .get_or_create(&vec![("source", source.to_owned())])
            .inc();
    }

    pub fn egress_call(&self, call: &'static str, outcome: &'static str) {
        self.egress_calls
            .get_or_create(&vec![
                ("call", call.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// One answer from Mattermost, by its class (one of [`RESPONSE_CLASSES`]).
    pub fn mattermost_response(&self, class: &'static str) {
        self.mattermost_responses
            .get_or_create(&vec![("class", class.to_owned())])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
