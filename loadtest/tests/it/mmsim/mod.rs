//! Mattermost simulator tests. They reach the simulator only over HTTP and the WebSocket
//! (the public API, plus the simulator-only `/sim/` endpoints), and each ends by asserting
//! the contract checker saw no violation, so every exchange of the suite is checked.

mod contract;
mod integrations;
mod limits;
mod rest;
mod standalone;
mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use loadtest::mmsim::client::SimControl;
use loadtest::mmsim::{Options, Sim, SimHandle, spec_path};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen "at once".
pub const WAIT: Duration = Duration::from_secs(10);

/// Whether the official spec is present (contract checking on); says so once if not.
pub fn spec_available() -> bool {
    let present = spec_path().exists();
    if !present {
        eprintln!(
            "SKIPPED: contract checks — OpenAPI spec not found at {} (set MMSIM_OPENAPI_SPEC)",
            spec_path().display()
        );
    }
    present
}

/// A simulator running in-process on a loopback port.
pub struct Harness {
    pub base: String,
    pub ctl: SimControl,
    shutdown: CancellationToken,
    sim: Option<SimHandle>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Options::default()).await
    }

    /// Starts with `options`, contract checking switched on when the spec is present.
    pub async fn start_with(mut options: Options) -> Harness {
        if spec_available() {
            options.contract_spec = Some(spec_path());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let sim = Sim::start(listener, options, shutdown.clone())
            .await
            .expect("simulator starts");
        Harness {
            base: sim.base_url().to_owned(),
            ctl: SimControl::new(sim.base_url()),
            shutdown,
            sim: Some(sim),
        }
    }

    /// Asserts no contract violation, then stops the simulator and waits for it.
    pub async fn finish(mut self) {
        let report = self.ctl.contract().await.expect("contract report");
        assert!(
            report.violations.is_empty(),
            "contract violations: {:#?}",
            report.violations
        );
        self.stop().await;
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(sim) = self.sim.take() {
            sim.wait().await.expect("simulator stops cleanly");
        }
    }
}

/// What an integration endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(&self.body).expect("form body")
    }

    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// A scripted answer: status, content type, body.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    pub fn empty() -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: String::new(),
        }
    }
}

#[derive(Clone)]
struct IntegrationState {
    tx: mpsc::UnboundedSender<Received>,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
}

/// A stand-in integration (the gateway's role): records every request, answers as scripted
/// per path (default: empty 200).
pub struct Integration {
    pub base: String,
    rx: mpsc::UnboundedReceiver<Received>,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    shutdown: CancellationToken,
}

async fn record(
    State(st): State<IntegrationState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let _ = st.tx.send(Received {
        path: path.clone(),
        headers,
        body,
    });
    let reply = st
        .replies
        .lock()
        .expect("replies lock")
        .get(&path)
        .cloned()
        .unwrap_or_else(Reply::empty);
    (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        [("content-type", reply.content_type)],
        reply.body,
    )
        .into_response()
}

impl Integration {
    pub async fn start() -> Integration {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::unbounded_channel();
        let replies = Arc::new(Mutex::new(HashMap::new()));
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::any(record))
            .with_state(IntegrationState {
                tx,
                replies: replies.clone(),
            });
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Integration {
            base,
            rx,
            replies,
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn reply(&self, path: &str, reply: Reply) {
        self.replies
            .lock()
            .expect("replies lock")
            .insert(path.to_owned(), reply);
    }

    /// The next request, within [`WAIT`].
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("integration called in time")
            .expect("integration channel open")
    }

    /// Asserts nothing arrives within `within`.
    pub async fn assert_quiet(&mut self, within: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(within, self.rx.recv()).await {
            panic!("unexpected integration call to {}", r.path);
        }
    }
}

impl Drop for Integration {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `f` until it yields `Some`, within [`WAIT`].
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
