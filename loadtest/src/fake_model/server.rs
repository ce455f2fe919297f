//! The HTTP side of the fake model: routes, SSE encoding, the request record.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::script::{Conversation, Reply, ToolCall};

/// One request the fake received, as the model would see it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Header names are lower case; `x-api-key` and `authorization` values are redacted.
    pub headers: std::collections::BTreeMap<String, String>,
    /// [`fingerprint`] of the credential the request carried (`x-api-key`, else the
    /// `Authorization` value), so tests can check which key arrived without the fake
    /// keeping it; empty without one.
    #[serde(default)]
    pub credential: String,
    /// The JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
    /// The HTTP status the fake answered.
    pub status: u16,
    /// The usage the fake reported for it (the API's `usage` object, final counts), when it
    /// answered a message.
    #[serde(default)]
    pub usage: Option<Value>,
    /// When the request (with its body) had arrived; not serialized.
    #[serde(skip)]
    pub received: Option<std::time::Instant>,
}

impl RecordedRequest {
    /// The `messages` of a Messages API request.
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every `text` and `tool_result` content in `messages`, concatenated: what tests
    /// search to check that something reached the model.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        for message in self.messages() {
            collect_text(message.get("content").unwrap_or(&Value::Null), &mut out);
        }
        out
    }
}

fn collect_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        Value::Object(map) => {
            for key in ["text", "content", "input"] {
                if let Some(v) = map.get(key) {
                    if key == "input" {
                        out.push_str(&v.to_string());
                        out.push('\n');
                    } else {
                        collect_text(v, out);
                    }
                }
            }
        }
        _ => {}
    }
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests answered with an error so far, per prompt with a `[[flaky:…]]` marker.
    flaky: Mutex<std::collections::HashMap<String, u32>>,
    /// Scripted rate limits, by [`fingerprint`] of the credential.
    limits: Mutex<std::collections::HashMap<String, Limit>>,
}

/// A scripted rate limit for one credential: its requests are answered `status` with
/// `retry-after: retry_after_s`, `times` times (`None`: until cleared). Set with
/// [`FakeModel::limit`] or `POST /fake/limits` (this as JSON, `credential` being the
/// [`fingerprint`] of the `x-api-key` or `Authorization` value); `DELETE /fake/limits`
/// clears them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Limit {
    pub credential: String,
    /// 429 or 529 (any 4xx/5xx is accepted).
    pub status: u16,
    pub retry_after_s: u64,
    #[serde(default)]
    pub times: Option<u32>,
}

/// A running fake model API. Cheap to clone; [`FakeModel::shutdown`] stops the server and
/// waits for it. Dropping the last clone stops it too.
#[derive(Debug, Clone)]
pub struct FakeModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Arc<ServerTask>,
}

#[derive(Debug)]
struct ServerTask {
    cancel: CancellationToken,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FakeModel {
    /// Serves on `listener` until `cancel` fires or [`FakeModel::shutdown`] is called.
    /// Must be called within a Tokio runtime.
    pub fn start(listener: TcpListener, cancel: CancellationToken) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let cancel = cancel.child_token();
        let app = router(shared.clone());
        let stop = cancel.clone();
        let handle = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "fake model server failed"
                );
            }
        });
        Ok(Self {
            addr,
            shared,
            task: Arc::new(ServerTask {
                cancel,
                handle: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The recorded `POST /v1/messages` requests only.
    pub fn message_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.starts_with("/v1/messages"))
            .collect()
    }

    /// Answers the requests of `limit.credential` with its rate limit from now on.
    pub fn limit(&self, limit: Limit) {
        lock(&self.shared.limits).insert(limit.credential.clone(), limit);
    }

    /// Lifts every scripted rate limit.
    pub fn unlimit(&self) {
        lock(&self.shared.limits).clear();
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Stops accepting, lets open streams finish, and waits for the server task.
    pub async fn shutdown(&self) {
        self.task.cancel.cancel();
        let handle = lock(&self.task.handle).take();
        if let Some(handle) = handle
            && let Err(err) = handle.await
        {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "fake model task failed"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/fake/requests", get(list_requests).delete(clear_requests))
        .route("/fake/limits", post(set_limit).delete(clear_limits))
        // The CLI probes `HEAD /api/hello` unless non-essential traffic is disabled.
        .route("/api/hello", any(|| async { StatusCode::OK }))
        .fallback(not_found)
        .with_state(shared)
}

async fn list_requests(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.requests).clone()).into_response()
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.requests).clear();
    StatusCode::NO_CONTENT
}

async fn set_limit(
    State(shared): State<Arc<Shared>>,
    axum::Json(limit): axum::Json<Limit>,
) -> StatusCode {
    if !(400..=599).contains(&limit.status) {
        return StatusCode::BAD_REQUEST;
    }
    lock(&shared.limits).insert(limit.credential.clone(), limit);
    StatusCode::NO_CONTENT
}

async fn clear_limits(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.limits).clear();
    StatusCode::NO_CONTENT
}

/// The scripted rate limit `credential` is under now, counted as used.
fn limited(shared: &Shared, credential: &str) -> Option<Response> {
    let mut limits = lock(&shared.limits);
    let limit = limits.get_mut(credential)?;
    match &mut limit.times {
        Some(0) => return None,
        Some(n) => *n -= 1,
        None => {}
    }
    let (status, retry_after) = (limit.status, limit.retry_after_s);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut response = error_response(
        code,
        error_type(status),
        &format!("fake {status} (scripted limit)"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Some(response)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("{method} {} is not served by the fake model", uri.path()),
    )
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The API's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// A short, one-way fingerprint of a credential (the first 16 hex digits of its SHA-256).
/// `Authorization` values are fingerprinted whole (`Bearer …`).
pub fn fingerprint(credential: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(credential.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = std::time::Instant::now();
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let authorized = headers.contains_key("x-api-key") || headers.contains_key("authorization");
    let credential = headers
        .get("x-api-key")
        .or_else(|| headers.get("authorization"))
        .map(|v| fingerprint(&String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_default();
    let limit = if authorized {
        limited(&shared, &credential)
    } else {
        None
    };
    let (status, response, usage) = match (&parsed, limit) {
        (_, Some(response)) => (response.status().as_u16(), response, None),
        (Err(err), None) => (
            400,
            error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("body is not JSON: {err}"),
            ),
            None,
        ),
        (Ok(_), None) if !authorized => (
            401,
            error_response(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
            ),
            None,
        ),
        (Ok(body), None) => answer(&shared, body),
    };
    let record = RecordedRequest {
        credential,
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                let name = name.as_str().to_ascii_lowercase();
                let value = if name == "x-api-key" || name == "authorization" {
                    "***".to_owned()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name, value)
            })
            .collect(),
        body: parsed.unwrap_or(Value::Null),
        status,
        usage,
        received: Some(received),
    };
    lock(&shared.requests).push(record);
    response
}

fn answer(shared: &Shared, body: &Value) -> (u16, Response, Option<Value>) {
    let conversation = Conversation::from_request(body);
    if let Some((status, times)) = conversation.flaky() {
        let mut failed = lock(&shared.flaky);
        let count = failed.entry(conversation.prompt.clone()).or_default();
        if *count < times {
            *count += 1;
            let (status, response) = error_status(status);
            return (status, response, None);
        }
    }
    let random = uuid::Uuid::new_v4().simple().to_string();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-fake")
        .to_owned();
    match conversation.reply(&random[..20]) {
        Reply::Error { status } => {
            let (status, response) = error_status(status);
            (status, response, None)
        }
        Reply::Message {
            text,
            text_duration_ms,
            tool,
        } => {
            let input_tokens = (body.to_string().len() / 4).max(1) as u64;
            let message = FakeMessage {
                id: format!("msg_fake_{}", &random[..20]),
                model,
                input_tokens,
                // Made up, but never 0, so a meter that drops a kind is caught.
                cache_read_tokens: input_tokens / 3 + 1,
                cache_creation_tokens: input_tokens / 10 + 1,
                text,
                tool,
            };
            let request_id = format!("req_fake_{}", &random[20..]);
            let usage = message.complete().get("usage").cloned();
            let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let response = if streaming {
                sse_response(&message, text_duration_ms, &request_id)
            } else {
                (
                    [
                        (header::CONTENT_TYPE, "application/json".to_owned()),
                        (header::HeaderName::from_static("request-id"), request_id),
                    ],
                    message.complete().to_string(),
                )
                    .into_response()
            };
            (200, response, usage)
        }
    }
}

fn error_status(status: u16) -> (u16, Response) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        error_response(code, error_type(status), &format!("fake {status}")),
    )
}

struct FakeMessage {
    id: String,
    model: String,
    input_tokens: u64,
    cache_read_tokens: u64,
    cache_creation_tokens: u64,
    text: String,
    tool: Option<ToolCall>,
}

impl FakeMessage {
    fn output_tokens(&self) -> u64 {
        let tool_len = self
            .tool
            .as_ref()
            .map(|t| t.input.to_string().len())
            .unwrap_or(0);
        ((self.text.len() + tool_len) / 4).max(1) as u64
    }

    fn stop_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn content(&self) -> Vec<Value> {
        let mut content = Vec::new();
        if !self.text.is_empty() || self.tool.is_none() {
            content.push(json!({"type": "text", "text": self.text}));
        }
        if let Some(tool) = &self.tool {
            content.push(
                json!({"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}),
            );
        }
        content
    }

    /// The non-streaming response body.
    fn complete(&self) -> Value {
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": self.content(), "stop_reason": self.stop_reason(), "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens,
                      "cache_creation_input_tokens": self.cache_creation_tokens,
                      "cache_read_input_tokens": self.cache_read_tokens,
                      "output_tokens": self.output_tokens()}
        })
    }

    /// The SSE events, each with the delay before it is sent.
    fn events(&self, text_duration: Duration) -> Vec<(Duration, String, Value)> {
        let mut events = vec![
            (
                Duration::ZERO,
                "message_start".to_owned(),
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_tokens,
                              "cache_creation_input_tokens": self.cache_creation_tokens,
                              "cache_read_input_tokens": self.cache_read_tokens,
                              "output_tokens": 1}}}),
            ),
            (Duration::ZERO, "ping".to_owned(), json!({"type": "ping"})),
        ];
        let mut index = 0;
        if !self.text.is_empty() || self.tool.is_none() {
            events.push((
                Duration::ZERO,
                "content_block_start".to_owned(),
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "text", "text": ""}}),
            ));
            let chunks = chunk_text(&self.text, text_duration);
            let pause = text_duration / chunks.len().max(1) as u32;
            for chunk in chunks {
                events.push((
                    pause,
                    "content_block_delta".to_owned(),
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": chunk}}),
                ));
            }
            events.push((
                Duration::ZERO,
                "content_block_stop".to_owned(),
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        if let Some(tool) = &self.tool {
            events.push((
                Duration::ZERO,
                "content_block_start".to_owned(),
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}}),
            ));
            // The real API splits the JSON anywhere; so does the fake, at a char boundary.
            let input = tool.input.to_string();
            let mid = (0..=input.len() / 2)
                .rev()
                .find(|&i| input.is_char_boundary(i))
                .unwrap_or(0);
            for part in [&input[..mid], &input[mid..]] {
                events.push((
                    Duration::ZERO,
                    "content_block_delta".to_owned(),
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            events.push((
                Duration::ZERO,
                "content_block_stop".to_owned(),
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push((
            Duration::ZERO,
            "message_delta".to_owned(),
            json!({"type": "message_delta",
                   "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
                   "usage": {"output_tokens": self.output_tokens()}}),
        ));
        events.push((
            Duration::ZERO,
            "message_stop".to_owned(),
            json!({"type": "message_stop"}),
        ));
        events
    }
}

/// Splits text into stream chunks: about 40 characters each, or finer when it is
/// streamed slowly (at least one chunk per 100 ms).
fn chunk_text(text: &str, duration: Duration) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let by_time = (duration.as_millis() / 100).max(1) as usize;
    let size = chars.len().div_ceil(by_time).clamp(1, 40);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn sse_response(message: &FakeMessage, text_duration_ms: u64, request_id: &str) -> Response {
    let events = message.events(Duration::from_millis(text_duration_ms));
    let stream = futures::stream::iter(events).then(|(delay, name, data)| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", request_id)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
