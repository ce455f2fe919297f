//! A stand-in for prometheus-nats-exporter (`-varz -jsz=all`), for tests only: it serves,
//! at `/metrics`, the exporter's metric names and labels for JetStream streams and
//! consumers (`jetstream_stream_*`, `jetstream_consumer_*`) and server statistics
//! (`gnatsd_varz_*`), read on each scrape from nats-server's own monitoring endpoints
//! (`/jsz?consumers=true&config=true`, `/varz`).
//!
//! Why a stand-in: the exporter is a Go program and cannot be built here; the JetStream
//! dashboard is written against its names (the exporter's `collector/jsz.go` and
//! `collector/collector.go`), and this lets a real Prometheus evaluate that dashboard's
//! queries against real numbers from a real nats-server. It covers only the names and
//! labels the dashboard uses plus their siblings; it is not a replacement in production.
//!
//! Invariant: a metric name served here is one the exporter serves, with the same type
//! (every JetStream value is a gauge there) and a subset of its labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `/varz` fields served as `gnatsd_varz_<field>` (numbers only, as the exporter does).
const VARZ_FIELDS: &[&str] = &[
    "connections",
    "total_connections",
    "in_msgs",
    "out_msgs",
    "in_bytes",
    "out_bytes",
    "mem",
    "cpu",
    "slow_consumers",
    "subscriptions",
    "routes",
    "remotes",
    "leafnodes",
];

/// Stream statistics: exporter name suffix, `/jsz` field of the stream's `state`.
const STREAM_FIELDS: &[(&str, &str)] = &[
    ("total_messages", "messages"),
    ("total_bytes", "bytes"),
    ("first_seq", "first_seq"),
    ("last_seq", "last_seq"),
    ("consumer_count", "consumer_count"),
];

/// Consumer statistics: exporter name suffix, path in the `/jsz` consumer object.
const CONSUMER_FIELDS: &[(&str, &[&str])] = &[
    ("delivered_consumer_seq", &["delivered", "consumer_seq"]),
    ("delivered_stream_seq", &["delivered", "stream_seq"]),
    ("num_ack_pending", &["num_ack_pending"]),
    ("num_redelivered", &["num_redelivered"]),
    ("num_waiting", &["num_waiting"]),
    ("num_pending", &["num_pending"]),
    ("ack_floor_stream_seq", &["ack_floor", "stream_seq"]),
    ("ack_floor_consumer_seq", &["ack_floor", "consumer_seq"]),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read {url}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

#[derive(Clone)]
struct Monitor {
    /// nats-server's monitoring base URL, e.g. `http://127.0.0.1:8222`.
    base: String,
    http: reqwest::Client,
}

impl Monitor {
    async fn get(&self, path: &str) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let fetch = |source| Error::Fetch {
            url: url.clone(),
            source,
        };
        self.http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fetch)?
            .json()
            .await
            .map_err(fetch)
    }
}

/// Serves `/metrics` on `listener` until `shutdown`, reading `monitor_url` on each scrape.
pub async fn serve(
    listener: TcpListener,
    monitor_url: &str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let monitor = Monitor {
        base: monitor_url.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(monitor);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(monitor): State<Monitor>) -> impl IntoResponse {
    let scraped = async {
        let varz = monitor.get("/varz").await?;
        let jsz = monitor.get("/jsz?consumers=true&config=true").await?;
        Ok::<_, Error>(render(&varz, &jsz))
    };
    match scraped.await {
        Ok(text) => (
            StatusCode::OK,
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        ),
        Err(err) => (
            StatusCode::BAD_GATEWAY,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{err}: {:?}", std::error::Error::source(&err)),
        ),
    }
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A leader label as the exporter computes it: "true" without a cluster, else whether
/// this server leads.
fn is_leader(object: &Value, server_name: &str) -> &'static str {
    match object.get("cluster").and_then(|c| c.get("leader")) {
        Some(Value::String(leader)) if leader != server_name => "false",
        _ => "true",
    }
}

/// The Prometheus text exposition for one server's `/varz` and `/jsz` answers.
pub fn render(varz: &Value, jsz: &Value) -> String {
    let server_id = text(varz, &["server_id"]);
    let server_name = text(varz, &["server_name"]);
    let cluster = text(jsz, &["meta_cluster", "name"]);
    let mut out = String::new();
    let server = labels(&[("server_id", server_id)]);
    for field in VARZ_FIELDS {
        let name = format!("gnatsd_varz_{field}");
        let _ = writeln!(out, "# HELP {name} {field}\n# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{server} {}", number(varz, &[field]));
    }

    // The text format wants each family's samples together, under its TYPE line.
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut sample = |name: String, labels: String, value: f64| {
        let _ = writeln!(families.entry(name).or_default(), "{labels} {value}");
    };
    for account in jsz
        .get("account_details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let account_name = text(account, &["name"]);
        let account_id = text(account, &["id"]);
        for stream in account
            .get("stream_detail")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let stream_labels = [
                ("server_id", server_id),
                ("server_name", server_name),
                ("cluster", cluster),
                ("account", account_name),
                ("account_id", account_id),
                ("stream_name", text(stream, &["name"])),
                ("is_stream_leader", is_leader(stream, server_name)),
            ];
            for (suffix, field) in STREAM_FIELDS {
                sample(
                    format!("jetstream_stream_{suffix}"),
                    labels(&stream_labels),
                    number(stream, &["state", field]),
                );
            }
            for consumer in stream
                .get("consumer_detail")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let mut consumer_labels = stream_labels.to_vec();
                consumer_labels.push(("consumer_name", text(consumer, &["name"])));
                consumer_labels.push(("is_consumer_leader", is_leader(consumer, server_name)));
                for (suffix, path) in CONSUMER_FIELDS {
                    sample(
                        format!("jetstream_consumer_{suffix}"),
                        labels(&consumer_labels),
                        number(consumer, path),
                    );
                }
            }
        }
    }
    for (name, samples) in families {
        let _ = writeln!(out, "# TYPE {name} gauge");
        for line in samples.lines() {
            let _ = writeln!(out, "{name}{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exporters_names_and_labels() {
        let varz = serde_json::json!({"server_id": "NABC", "server_name": "n0", "connections": 3, "in_msgs": 10});
        let jsz = serde_json::json!({"account_details": [{"name": "$G", "id": "$G", "stream_detail": [
            {"name": "CCFLEET_QUEUE", "state": {"messages": 2, "bytes": 100, "first_seq": 1, "last_seq": 2, "consumer_count": 1},
             "consumer_detail": [{"name": "claim", "num_pending": 2, "num_ack_pending": 1,
                                  "delivered": {"consumer_seq": 5, "stream_seq": 6},
                                  "cluster": {"leader": "n1"}}]}]}]});
        let text = render(&varz, &jsz);
        assert!(
            text.contains("gnatsd_varz_connections{server_id=\"NABC\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("gnatsd_varz_slow_consumers{server_id=\"NABC\"} 0\n"));
        let stream = "server_id=\"NABC\",server_name=\"n0\",cluster=\"\",account=\"$G\",account_id=\"$G\",stream_name=\"CCFLEET_QUEUE\",is_stream_leader=\"true\"";
        assert!(
            text.contains(&format!("jetstream_stream_total_messages{{{stream}}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!("jetstream_stream_last_seq{{{stream}}} 2\n")));
        // Another server leads the consumer: this one reports it, not as leader.
        let consumer = format!("{stream},consumer_name=\"claim\",is_consumer_leader=\"false\"");
        assert!(
            text.contains(&format!("jetstream_consumer_num_pending{{{consumer}}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "jetstream_consumer_delivered_stream_seq{{{consumer}}} 6\n"
        )));
        // One TYPE line per family, its samples under it.
        assert_eq!(
            text.matches("# TYPE jetstream_consumer_num_pending gauge")
                .count(),
            1
        );
    }
}
