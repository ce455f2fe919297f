//! The Claude Code CLI driver: the stream-json protocol over the CLI's stdin/stdout,
//! driven the way the official Agent SDK drives it.
//!
//! An [`Agent`] owns the reader of the CLI's stdout and yields typed [`Event`]s; its
//! cheap-clone [`AgentHandle`] writes to stdin: prompts, answers to permission requests,
//! `interrupt`, `set_permission_mode`. Runtimes (`crate::runtime`) build the I/O pair and
//! hand back a ready (initialized) `Agent`.
//!
//! Invariants:
//! * stdin stays open until the owner closes it ([`AgentHandle::close_stdin`] or
//!   [`Agent::shutdown`]); closing it while a permission request is pending fails that tool.
//! * A permission request waits for an answer forever (the CLI has no timeout); the owner
//!   decides how long to wait. Pending requests are listed by
//!   [`AgentHandle::pending_permissions`].
//! * Control requests from the CLI other than `can_use_tool` are answered with an error at
//!   once; unknown stdout lines are logged at debug level and skipped.

mod event;
pub mod protocol;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use event::{
    AgentError, Event, Init, PermissionAnswer, PermissionDenial, PermissionKind, PermissionMode,
    PermissionRequest, Question, QuestionOption, Retry, TodoItem, TurnResult, Usage,
};
use protocol::Incoming;

/// Longest stdout line accepted (the SDK allows 1 MB; real lines reach about 17 KB).
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing to the CLI's stdin failed")]
    Write(#[source] std::io::Error),
    #[error("the CLI's stdin is closed")]
    StdinClosed,
    #[error("the CLI exited or closed its stdout")]
    Exited,
    #[error("the CLI did not answer `{subtype}` within {timeout:?}")]
    ControlTimeout {
        subtype: &'static str,
        timeout: Duration,
    },
    #[error("the CLI refused `{subtype}`: {message}")]
    ControlRejected {
        subtype: &'static str,
        message: String,
    },
    #[error("no pending permission request {request_id}")]
    UnknownRequest { request_id: String },
}

impl Error {
    /// Whether trying again (possibly with a new CLI process) can succeed. Permanent
    /// errors are the caller's mistakes or refusals.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Write(_) | Error::StdinClosed | Error::Exited | Error::ControlTimeout { .. } => {
                true
            }
            Error::ControlRejected { .. } | Error::UnknownRequest { .. } => false,
        }
    }
}

/// The CLI's pipes, as a runtime provides them.
pub struct AgentIo {
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// How long `initialize`, `interrupt` and `set_permission_mode` wait for the CLI.
    pub control_timeout: Duration,
    /// Events buffered before the reader stops reading stdout (back-pressure).
    pub event_buffer: usize,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            control_timeout: Duration::from_secs(60),
            event_buffer: 1024,
        }
    }
}

type Stdin = Pin<Box<dyn AsyncWrite + Send>>;

struct Inner {
    stdin: tokio::sync::Mutex<Option<Stdin>>,
    /// Control requests the host sent, by request id.
    control: Mutex<HashMap<String, oneshot::Sender<Result<Value, String>>>>,
    /// `can_use_tool` requests not answered yet, by request id.
    permissions: Mutex<Vec<PermissionRequest>>,
    next_id: AtomicU64,
    options: AgentOptions,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writing side of a session's CLI. Cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle").finish_non_exhaustive()
    }
}

/// A running CLI: the event stream plus an [`AgentHandle`].
pub struct Agent {
    handle: AgentHandle,
    /// Boxed: the channel's blocks hold 32 slots each, and an idle session keeps one.
    events: mpsc::Receiver<Box<Event>>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts reading the CLI's stdout. Nothing is written yet: call
    /// [`AgentHandle::initialize`] next (runtimes do).
    pub fn new(io: AgentIo, options: AgentOptions) -> Self {
        let (tx, events) = mpsc::channel(options.event_buffer.max(1));
        let inner = Arc::new(Inner {
            stdin: tokio::sync::Mutex::new(Some(io.stdin)),
            control: Mutex::new(HashMap::new()),
            permissions: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            options,
        });
        let reader = tokio::spawn(read_stdout(io.stdout, inner.clone(), tx));
        Self {
            handle: AgentHandle { inner },
            events,
            reader: Some(reader),
        }
    }

    /// A handle for writing to the CLI from elsewhere.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// The next event; `None` once the CLI closed its stdout (it exited) and every
    /// event before that was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await.map(|event| *event)
    }

    /// The next event, or `None` if none arrives within `timeout` or the CLI exited.
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
            .map(|event| *event)
    }

    /// Closes stdin and waits until the CLI closes stdout (it exits after the current
    /// turn), or `grace` passes. Remaining events are dropped. Returns whether the CLI
    /// finished within `grace`.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.handle.close_stdin().await;
        let Some(reader) = self.reader.take() else {
            return true;
        };
        let drain = async { while self.events.recv().await.is_some() {} };
        let finished = tokio::time::timeout(grace, drain).await.is_ok();
        if !finished {
            reader.abort();
        }
        if let Err(err) = reader.await
            && !err.is_cancelled()
        {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "agent reader failed"
            );
        }
        finished
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl AgentHandle {
    fn next_request_id(&self, what: &str) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("req_{n}_{what}")
    }

    async fn write_line(&self, value: &Value) -> Result<(), Error> {
        let mut line = value.to_string();
        line.push('\n');
        let mut stdin = self.inner.stdin.lock().await;
        let Some(stdin) = stdin.as_mut() else {
            return Err(Error::StdinClosed);
        };
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(Error::Write)?;
        stdin.flush().await.map_err(Error::Write)
    }

    async fn control(
        &self,
        subtype: &'static str,
        build: impl FnOnce(&str) -> Value,
    ) -> Result<Value, Error> {
        let request_id = self.next_request_id(subtype);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.control).insert(request_id.clone(), tx);
        if let Err(err) = self.write_line(&build(&request_id)).await {
            lock(&self.inner.control).remove(&request_id);
            return Err(err);
        }
        let timeout = self.inner.options.control_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(message))) => Err(Error::ControlRejected { subtype, message }),
            Ok(Err(_)) => Err(Error::Exited),
            Err(_) => {
                lock(&self.inner.control).remove(&request_id);
                Err(Error::ControlTimeout { subtype, timeout })
            }
        }
    }

    /// Sends `initialize` and waits for the CLI's answer (its commands, models, account,
    /// version and current permission mode).
    pub async fn initialize(&self) -> Result<Value, Error> {
        self.control("initialize", protocol::initialize).await
    }

    /// Sends a user prompt. The CLI queues prompts sent while a turn runs.
    pub async fn send_message(&self, text: &str) -> Result<(), Error> {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.write_line(&protocol::user_message(text, &uuid)).await
    }

    /// Answers a pending permission request.
    pub async fn respond(&self, request_id: &str, answer: PermissionAnswer) -> Result<(), Error> {
        let request = {
            let mut pending = lock(&self.inner.permissions);
            let at = pending.iter().position(|r| r.request_id == request_id);
            at.map(|at| pending.remove(at))
        };
        let Some(request) = request else {
            return Err(Error::UnknownRequest {
                request_id: request_id.to_owned(),
            });
        };
        let line = protocol::permission_response(&request, &answer);
        if let Err(err) = self.write_line(&line).await {
            lock(&self.inner.permissions).insert(0, request);
            return Err(err);
        }
        Ok(())
    }

    /// Permission requests waiting for an answer, oldest first by arrival.
    pub fn pending_permissions(&self) -> Vec<PermissionRequest> {
        lock(&self.inner.permissions).clone()
    }

    /// Interrupts the running turn; its `TurnResult` (`is_error`, `aborted_*`) follows.
    pub async fn interrupt(&self) -> Result<(), Error> {
        self.control("interrupt", protocol::interrupt)
            .await
            .map(drop)
    }

    /// Switches the permission mode for the following tool calls.
    pub async fn set_permission_mode(&self, mode: PermissionMode) -> Result<(), Error> {
        self.control("set_permission_mode", |id| {
            protocol::set_permission_mode(id, mode)
        })
        .await
        .map(drop)
    }

    /// Closes the CLI's stdin: it finishes the current turn and exits.
    pub async fn close_stdin(&self) {
        let stdin = self.inner.stdin.lock().await.take();
        if let Some(mut stdin) = stdin {
            // The CLI may already be gone; nothing to do about a failed shutdown.
            let _ = stdin.shutdown().await;
        }
    }
}

/// The read buffer of the CLI's stdout, and what the line buffer keeps between lines.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Reads stdout lines until EOF, routing control responses and forwarding events.
async fn read_stdout(
    stdout: Pin<Box<dyn AsyncRead + Send>>,
    inner: Arc<Inner>,
    events: mpsc::Sender<Box<Event>>,
) {
    // Every session holds one of these for its whole life, mostly idle: a small read
    // buffer (lines longer than it are assembled in `line`), and `line` gives back what a
    // long line (a big tool result) made it grow to.
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        line.shrink_to(READ_BUFFER_BYTES);
        match read_line(&mut reader, &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "reading the CLI's stdout failed"
                );
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let incoming = match protocol::parse_line(text) {
            Ok(incoming) => incoming,
            Err(err) => {
                // The CLI prints a few plain-text diagnostics; they are not protocol.
                tracing::debug!(
                    error = &err as &dyn std::error::Error,
                    line = %truncate(text, 300),
                    "non-JSON line from the CLI"
                );
                continue;
            }
        };
        match incoming {
            Incoming::Events(list) => {
                for event in list {
                    match &event {
                        Event::PermissionRequest(request) => {
                            lock(&inner.permissions).push(request.clone());
                        }
                        Event::PermissionCancelled { request_id } => {
                            lock(&inner.permissions).retain(|r| &r.request_id != request_id);
                        }
                        _ => {}
                    }
                    if events.send(Box::new(event)).await.is_err() {
                        // Nobody listens any more; keep routing control responses.
                        tracing::trace!("agent event dropped: no receiver");
                    }
                }
            }
            Incoming::ControlResponse { request_id, result } => {
                let waiter = lock(&inner.control).remove(&request_id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(result);
                    }
                    None => tracing::debug!(%request_id, "control response nobody waits for"),
                }
            }
            Incoming::UnsupportedControlRequest {
                request_id,
                subtype,
            } => {
                tracing::warn!(%request_id, %subtype, "unsupported control request from the CLI");
                let handle = AgentHandle {
                    inner: inner.clone(),
                };
                let answer = protocol::control_error(
                    &request_id,
                    &format!("ccfleet does not support {subtype}"),
                );
                if let Err(err) = handle.write_line(&answer).await {
                    tracing::debug!(
                        error = &err as &dyn std::error::Error,
                        "answering a control request failed"
                    );
                }
            }
            Incoming::Ignored { kind } => tracing::trace!(%kind, "CLI line skipped"),
        }
    }
    // Wake everyone waiting on a control response: the CLI is gone.
    lock(&inner.control).clear();
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE_BYTES`]; longer lines are
/// skipped whole (and logged).
async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    let mut overflow = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if !overflow && line.len() + n <= MAX_LINE_BYTES {
            line.extend_from_slice(chunk);
        } else if !overflow {
            overflow = true;
            line.clear();
        }
        reader.consume(n);
        total += n;
        if done {
            if overflow {
                tracing::warn!(bytes = total, "CLI stdout line over the limit skipped");
                line.clear();
                line.push(b'\n');
            }
            return Ok(total);
        }
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
