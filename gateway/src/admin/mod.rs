//! The admin API: `/admin/v1` on the gateway's listener, for operators and `ccfleet-ctl`.
//!
//! Bearer tokens from `gateway.admin_tokens`, each `read` (look) or `admin` (also act);
//! see [`auth`], the sans-IO decision. What it shows is read from the workers' record in
//! PostgreSQL ([`record`]) and from NATS (leases, heartbeats, the queue). What it does
//! reaches workers through NATS like everything else (see `proto::control`): a stop is an
//! event on the thread's subject for whichever worker owns it, a drain a request to one
//! worker. The gateway decides nothing about sessions: it forwards, and it audits every
//! action in `admin_audit` before carrying it out (an action that cannot be audited is
//! not carried out). The API is described by `gateway/openapi/admin.json`, served at
//! `/admin/v1/openapi.json`.

pub mod auth;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::config::{AdminScope, AdminToken};
use futures::StreamExt;
use proto::{ChannelId, ChatEvent, PostId, ThreadId, UserId, WorkerId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use auth::{Caller, Denied};
use record::{Filter, Record};

/// The OpenAPI document of this API, as checked in.
pub const OPENAPI: &str = include_str!("../../openapi/admin.json");

/// Default and largest page of the session list.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// How long a worker has to answer a drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin handlers share (part of [`AppState`]).
#[derive(Clone)]
pub struct Admin {
    pub tokens: Arc<Vec<AdminToken>>,
    /// `None` when no admin token is configured (every request is then 401 anyway).
    pub record: Option<Record>,
    pub leases: async_nats::jetstream::kv::Store,
    pub workers: async_nats::jetstream::kv::Store,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("token {name:?} has the read scope; this needs admin")]
    Forbidden { name: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the admin API has no database configured")]
    NoDatabase,
    #[error("the record is unavailable")]
    Record(#[from] record::Error),
    #[error("NATS is unavailable")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the stop could not be queued")]
    Publish(#[from] crate::publish::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::NoDatabase | Error::Record(_) | Error::Nats(_) | Error::Publish(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        let message = if status.is_server_error() {
            tracing::error!(
                error = &self as &dyn std::error::Error,
                "admin request failed"
            );
            "temporarily unavailable, please retry".to_owned()
        } else {
            self.to_string()
        };
        let body = Json(json!({ "error": code, "message": message }));
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}

fn nats_error(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Nats(Box::new(err))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/sessions", get(list_sessions))
        .route("/sessions/stop-all", post(stop_all))
        .route("/sessions/{id}", get(session))
        .route("/sessions/{id}/stop", post(stop))
        .route("/workers", get(workers))
        .route("/workers/{id}/drain", post(drain))
        .route("/queue", get(queue))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

impl Admin {
    fn record(&self) -> Result<&Record, Error> {
        self.record.as_ref().ok_or(Error::NoDatabase)
    }

    /// The caller, if its token allows what `needs`. A refused action is audited.
    async fn caller(
        &self,
        headers: &HeaderMap,
        needs: AdminScope,
        action: &str,
        target: &str,
    ) -> Result<Caller, Error> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match auth::authorize(&self.tokens, authorization, needs) {
            Ok(caller) => Ok(caller),
            Err(Denied::Unauthenticated) => Err(Error::Unauthorized),
            Err(Denied::Forbidden(caller)) => {
                if needs == AdminScope::Admin
                    && let Ok(record) = self.record()
                    && let Err(err) = record
                        .audit(&caller.name, action, target, "forbidden")
                        .await
                {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "could not audit a refused admin action"
                    );
                }
                Err(Error::Forbidden { name: caller.name })
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    user: Option<String>,
    channel: Option<String>,
    worker: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    let admin = &state.admin;
    admin.caller(&headers, AdminScope::Read, "list", "").await?;
    let Query(query) = query.map_err(|err| Error::BadRequest(err.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let filter = Filter {
        state: query.state,
        user: query.user,
        channel: query.channel,
        worker: query.worker,
        after: query.cursor,
    };
    let (sessions, more) = admin.record()?.sessions(&filter, limit).await?;
    let next_cursor = more
        .then(|| sessions.last().map(|s| s.thread_id.clone()))
        .flatten();
    Ok(Json(
        json!({ "sessions": sessions, "next_cursor": next_cursor }),
    ))
}

async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let admin = &state.admin;
    admin
        .caller(&headers, AdminScope::Read, "show", &id)
        .await?;
    let record = admin.record()?;
    let Some(session) = record.session(&id).await? else {
        return Err(Error::NotFound(format!("no session {id}")));
    };
    let thread = session.thread_id.clone();
    let running = lease_holder(&admin.leases, &thread).await?;
    Ok(Json(json!({
        "session": session,
        "running_on": running.map(|w| w.to_string()),
        "turns": record.turns(&thread).await?,
        "approvals": record.approvals(&thread).await?,
        "admin_audit": record.audit_of(&thread).await?,
    })))
}

/// The worker holding a thread's lease now, if any.
async fn lease_holder(
    leases: &async_nats::jetstream::kv::Store,
    thread: &str,
) -> Result<Option<WorkerId>, Error> {
    // A key from a request's path: checked before it names a key (`proto::ids`).
    let thread = ThreadId::parse(thread).map_err(|err| Error::BadRequest(err.to_string()))?;
    let value = leases.get(thread.as_str()).await.map_err(nats_error)?;
    Ok(value.map(|v| proto::kv::lease_holder(&v)))
}

/// Sends the stop of a thread's session to its owner (through the thread's subject).
/// `None` when no worker holds the thread: nothing runs, nothing to stop.
async fn send_stop(
    state: &AppState,
    caller: &Caller,
    session: &record::SessionSummary,
) -> Result<Option<WorkerId>, Error> {
    let Some(worker) = lease_holder(&state.admin.leases, &session.thread_id).await? else {
        return Ok(None);
    };
    let context = serde_json::to_string(&proto::control::AdminStop {
        by: caller.name.clone(),
    })
    .expect("a stop serializes");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let event = ChatEvent {
        event_id: format!("admin-stop:{}", uuid::Uuid::new_v4()),
        // From the record, which took them from checked events; checked again because
        // they name the events subject.
        thread: ThreadId::parse(session.thread_id.as_str())
            .map_err(|err| Error::BadRequest(err.to_string()))?,
        channel: ChannelId::new(session.channel_id.clone()),
        user: proto::v1::User {
            id: UserId::new(format!("admin:{}", caller.name)),
            username: caller.name.clone(),
        },
        received_at_ms: now_ms,
        body: proto::v1::EventBody::ButtonAction(proto::v1::ButtonAction {
            post_id: PostId::new(session.thread_id.clone()),
            action: proto::control::ADMIN_STOP_ACTION.to_owned(),
            context_json: context,
            trigger_id: None,
        }),
    };
    state.publisher.publish(&event, "admin").await?;
    Ok(Some(worker))
}

async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let admin = &state.admin;
    let caller = admin
        .caller(&headers, AdminScope::Admin, "stop", &id)
        .await?;
    let record = admin.record()?;
    let Some(session) = record.session(&id).await? else {
        record.audit(&caller.name, "stop", &id, "not_found").await?;
        return Err(Error::NotFound(format!("no session {id}")));
    };
    let audit = record
        .audit(&caller.name, "stop", &session.thread_id, "requested")
        .await?;
    let sent = send_stop(&state, &caller, &session).await;
    let (outcome, detail) = match &sent {
        Ok(Some(worker)) => ("accepted", format!("sent to worker {worker}")),
        Ok(None) => ("not_running", "no worker holds the thread".to_owned()),
        Err(err) => ("failed", common::error_chain(err)),
    };
    if let Err(err) = record.finish(audit, outcome, Some(&detail)).await {
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            audit,
            outcome,
            "could not finish an audit row"
        );
    }
    match sent? {
        Some(worker) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "thread_id": session.thread_id,
                "session_id": session.session_id,
                "worker": worker.to_string(),
                "outcome": "stopping",
            })),
        )),
        None => Err(Error::Conflict(format!(
            "session {} is not running: nothing to stop",
            session.thread_id
        ))),
    }
}

async fn stop_all(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), Error> {
    let admin = &state.admin;
    let caller = admin
        .caller(&headers, AdminScope::Admin, "stop_all", "*")
        .await?;
    let record = admin.record()?;
    let audit = record
        .audit(&caller.name, "stop_all", "*", "requested")
        .await?;
    let mut stopping = Vec::new();
    let mut failed = Vec::new();
    for session in record.owned().await? {
        match send_stop(&state, &caller, &session).await {
            Ok(Some(worker)) => {
                let _ = record
                    .audit(&caller.name, "stop", &session.thread_id, "accepted")
                    .await;
                stopping.push(json!({
                    "thread_id": session.thread_id,
                    "session_id": session.session_id,
                    "worker": worker.to_string(),
                }));
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(thread = %session.thread_id, error = &err as &dyn std::error::Error, "stop failed");
                failed.push(session.thread_id.clone());
            }
        }
    }
    let (outcome, detail) = if failed.is_empty() {
        ("accepted", format!("{} sessions stopping", stopping.len()))
    } else {
        (
            "failed",
            format!(
                "{} sessions stopping; not reached: {}",
                stopping.len(),
                failed.join(", ")
            ),
        )
    };
    if let Err(err) = record.finish(audit, outcome, Some(&detail)).await {
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            audit,
            "could not finish an audit row"
        );
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "stopping": stopping, "failed": failed })),
    ))
}

/// Live workers and their capacity, from their heartbeats.
async fn heartbeats(admin: &Admin) -> Result<Vec<(String, proto::kv::Heartbeat)>, Error> {
    let mut keys = admin.workers.keys().await.map_err(nats_error)?;
    let mut workers = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(nats_error)?;
        if let Some(value) = admin.workers.get(&key).await.map_err(nats_error)?
            && let Some(beat) = proto::kv::Heartbeat::decode(&value)
        {
            workers.push((key, beat));
        }
    }
    workers.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(workers)
}

async fn workers(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, Error> {
    let admin = &state.admin;
    admin
        .caller(&headers, AdminScope::Read, "workers", "")
        .await?;
    let beats = heartbeats(admin).await?;
    let (mut capacity, mut free) = (0, 0);
    let workers: Vec<Value> = beats
        .iter()
        .map(|(id, beat)| {
            capacity += beat.max;
            free += beat.free;
            json!({ "worker": id, "max_sessions": beat.max, "owned": beat.owned, "free_slots": beat.free })
        })
        .collect();
    Ok(Json(json!({
        "workers": workers,
        "capacity": capacity,
        "free_slots": free,
    })))
}

async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let admin = &state.admin;
    let caller = admin
        .caller(&headers, AdminScope::Admin, "drain", &id)
        .await?;
    // A subject token from the request's path: checked before it names a subject.
    let worker = WorkerId::parse(id.as_str())
        .map_err(|err| Error::NotFound(format!("no worker {id:?}: {err}")))?;
    let record = admin.record()?;
    let audit = record
        .audit(&caller.name, "drain", &id, "requested")
        .await?;
    let command = proto::control::WorkerCommand::Drain {
        by: caller.name.clone(),
    };
    let subject = state.names.worker_control_subject(&worker);
    let answer = tokio::time::timeout(
        DRAIN_TIMEOUT,
        state.nats.request(subject, command.encode().into()),
    )
    .await;
    let result = match answer {
        Ok(Ok(message)) => proto::control::WorkerReply::decode(&message.payload)
            .ok_or_else(|| nats_error(std::io::Error::other("unreadable answer from the worker"))),
        Ok(Err(err)) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            Err(Error::NotFound(format!("no worker {id} is listening")))
        }
        Ok(Err(err)) => Err(nats_error(err)),
        Err(_) => Err(nats_error(std::io::Error::other(
            "the worker did not answer in time",
        ))),
    };
    let (outcome, detail) = match &result {
        Ok(reply) => (
            "accepted",
            format!("draining, {} sessions owned", reply.owned),
        ),
        Err(Error::NotFound(_)) => ("not_found", "no such worker".to_owned()),
        Err(err) => ("failed", common::error_chain(err)),
    };
    if let Err(err) = record.finish(audit, outcome, Some(&detail)).await {
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            audit,
            "could not finish an audit row"
        );
    }
    let reply = result?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "worker": reply.worker,
            "draining": reply.draining,
            "owned": reply.owned,
        })),
    ))
}

async fn queue(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, Error> {
    state
        .admin
        .caller(&headers, AdminScope::Read, "queue", "")
        .await?;
    let js = &state.publisher.js;
    let stream = js
        .get_stream(state.names.queue_stream())
        .await
        .map_err(nats_error)?;
    let mut subjects = stream
        .info_with_subjects(state.names.queue_subjects())
        .await
        .map_err(nats_error)?;
    let prefix = format!("{}.queue.", state.names.prefix());
    let mut waiting = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(nats_error)?;
        waiting.push((subject, count));
    }
    waiting.sort();
    let mut threads = Vec::new();
    for (subject, count) in waiting {
        let queued_at = stream
            .get_first_raw_message_by_subject(&subject, 1)
            .await
            .ok()
            .map(|m| m.time.unix_timestamp_nanos() / 1_000_000);
        threads.push(json!({
            "thread_id": subject.strip_prefix(&prefix).unwrap_or(&subject),
            "pending": count,
            "queued_at_ms": queued_at.map(|ms| ms as i64),
        }));
    }
    let total = threads.len();
    Ok(Json(json!({ "threads": threads, "total": total })))
}
