//! The WebSocket hub: connections, per-connection `seq`, the 128-event dead queue used to
//! resume a connection, and delivery of events to the users allowed to see them.
//!
//! One mutex guards all connections; publishing assigns each receiving connection its next
//! `seq` and queues the text while holding it, so every connection sees its events in order.
//! Sockets never write under the lock: each has a bounded queue drained by its own task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::model::new_id;
use super::server::{SERVER_VERSION, Shared, lock, token_from};

/// Events kept per connection for resumption (`deadQueueSize`).
pub(crate) const DEAD_QUEUE_SIZE: usize = 128;
/// Largest client message (`SocketMaxMessageSizeKb`).
const MAX_CLIENT_MESSAGE: usize = 8 * 1024;
/// Events buffered for a socket before it counts as too slow and is closed, like the
/// server's full send channel.
const SEND_QUEUE: usize = 4096;

/// The `broadcast` object of an event envelope.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Broadcast {
    pub omit_users: Option<HashMap<String, bool>>,
    pub user_id: String,
    pub channel_id: String,
    pub team_id: String,
    pub connection_id: String,
    pub omit_connection_id: String,
}

/// An event to deliver to some users' connections.
pub(crate) struct Event {
    pub name: &'static str,
    pub data: Map<String, Value>,
    pub broadcast: Broadcast,
    pub recipients: Vec<String>,
    /// Receivers who get `data.mentions = "[\"<their id>\"]"`.
    pub mentioned: HashSet<String>,
}

struct Conn {
    user_id: String,
    next_seq: i64,
    queue: VecDeque<(i64, Arc<str>)>,
    tx: Option<mpsc::Sender<Arc<str>>>,
    inactive_since: Option<Instant>,
    /// Bumped whenever a socket takes over the connection, so a stale socket task cannot
    /// deactivate its successor.
    epoch: u64,
}

impl Conn {
    fn push(&mut self, head: &str) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let text: Arc<str> = Arc::from(format!("{head},\"seq\":{seq}}}"));
        if self.queue.len() == DEAD_QUEUE_SIZE {
            self.queue.pop_front();
        }
        self.queue.push_back((seq, text.clone()));
        if let Some(tx) = &self.tx
            && tx.try_send(text).is_err()
        {
            // Too slow (or gone): drop the socket; the client may resume from the dead queue.
            self.tx = None;
            self.inactive_since = Some(Instant::now());
        }
    }
}

#[derive(Default)]
struct HubInner {
    conns: HashMap<String, Conn>,
    by_user: HashMap<String, HashSet<String>>,
}

pub(crate) struct Hub {
    inner: Mutex<HubInner>,
    reconnect_window: Duration,
}

pub(crate) struct Registered {
    pub conn_id: String,
    pub epoch: u64,
    pub rx: mpsc::Receiver<Arc<str>>,
}

fn head(name: &str, data: &Map<String, Value>, broadcast: &Broadcast) -> String {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    let broadcast = serde_json::to_string(broadcast).unwrap_or_else(|_| "{}".into());
    format!("{{\"event\":\"{name}\",\"data\":{data},\"broadcast\":{broadcast}")
}

impl Hub {
    pub fn new(reconnect_window: Duration) -> Self {
        Hub {
            inner: Mutex::new(HubInner::default()),
            reconnect_window,
        }
    }

    pub fn publish(&self, event: Event) {
        let plain = head(event.name, &event.data, &event.broadcast);
        let mut inner = lock(&self.inner);
        let HubInner { conns, by_user } = &mut *inner;
        for user in &event.recipients {
            let Some(ids) = by_user.get(user) else {
                continue;
            };
            let text = if event.mentioned.contains(user) {
                let mut data = event.data.clone();
                data.insert(
                    "mentions".into(),
                    Value::from(serde_json::to_string(&[user]).unwrap_or_default()),
                );
                head(event.name, &data, &event.broadcast)
            } else {
                plain.clone()
            };
            for id in ids {
                if let Some(conn) = conns.get_mut(id) {
                    conn.push(&text);
                }
            }
        }
    }

    /// Registers a socket for `user_id`, resuming `resume = (connection_id, sequence_number)`
    /// when the hub still holds every event from that seq on; otherwise starts a fresh
    /// connection with a `hello` at seq 0.
    pub fn register(&self, user_id: &str, resume: Option<(String, i64)>) -> Registered {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let mut inner = lock(&self.inner);
        self.reap(&mut inner);
        if let Some((conn_id, seq)) = resume
            && let Some(conn) = inner.conns.get_mut(&conn_id)
            && conn.user_id == user_id
        {
            let oldest = conn.queue.front().map_or(conn.next_seq, |(s, _)| *s);
            if seq >= oldest && seq <= conn.next_seq {
                for (_, text) in conn.queue.iter().filter(|(s, _)| *s >= seq) {
                    // A fresh channel holds far more than the dead queue.
                    let _ = tx.try_send(text.clone());
                }
                conn.tx = Some(tx);
                conn.inactive_since = None;
                conn.epoch += 1;
                return Registered {
                    conn_id,
                    epoch: conn.epoch,
                    rx,
                };
            }
            // Events were lost: the server resets to a new connection.
            inner.conns.remove(&conn_id);
            if let Some(ids) = inner.by_user.get_mut(user_id) {
                ids.remove(&conn_id);
            }
        }
        let conn_id = new_id();
        let mut conn = Conn {
            user_id: user_id.to_owned(),
            next_seq: 0,
            queue: VecDeque::new(),
            tx: Some(tx),
            inactive_since: None,
            epoch: 0,
        };
        let mut data = Map::new();
        data.insert("connection_id".into(), Value::from(conn_id.clone()));
        data.insert("server_version".into(), Value::from(SERVER_VERSION));
        let broadcast = Broadcast {
            user_id: user_id.to_owned(),
            ..Broadcast::default()
        };
        conn.push(&head("hello", &data, &broadcast));
        inner.conns.insert(conn_id.clone(), conn);
        inner
            .by_user
            .entry(user_id.to_owned())
            .or_default()
            .insert(conn_id.clone());
        Registered {
            conn_id,
            epoch: 0,
            rx,
        }
    }

    /// Marks a connection's socket gone; its events keep queueing for a resume.
    pub fn deactivate(&self, conn_id: &str, epoch: u64) {
        let mut inner = lock(&self.inner);
        if let Some(conn) = inner.conns.get_mut(conn_id)
            && conn.epoch == epoch
        {
            conn.tx = None;
            conn.inactive_since = Some(Instant::now());
        }
    }

    /// Forgets connections whose socket has been gone longer than the reconnect window.
    fn reap(&self, inner: &mut HubInner) {
        let window = self.reconnect_window;
        let HubInner { conns, by_user } = inner;
        conns.retain(|id, c| {
            let keep = c.inactive_since.is_none_or(|t| t.elapsed() < window);
            if !keep && let Some(ids) = by_user.get_mut(&c.user_id) {
                ids.remove(id);
            }
            keep
        });
    }

    pub fn connection_count(&self) -> usize {
        lock(&self.inner)
            .conns
            .values()
            .filter(|c| c.tx.is_some())
            .count()
    }
}

/// `GET /api/v4/websocket`: header/cookie auth now, or an `authentication_challenge` later.
pub(crate) async fn upgrade(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let params: HashMap<String, String> = query
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let resume = match params.get("connection_id").filter(|c| !c.is_empty()) {
        None => None,
        Some(conn_id) => {
            match params
                .get("sequence_number")
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(seq) => Some((conn_id.clone(), seq)),
                None => {
                    return ApiError::bad_request(
                        "api.websocket_handler.invalid_param.app_error",
                        "Invalid sequence_number parameter.",
                    )
                    .into_response();
                }
            }
        }
    };
    let user = match token_from(&headers, None) {
        None => None,
        Some(token) => match session_user(&sh, &token) {
            Some(u) => Some(u),
            None => return ApiError::unauthorized().into_response(),
        },
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| run_socket(sh, socket, user, resume))
}

fn session_user(sh: &Shared, token: &str) -> Option<String> {
    let store = sh.read();
    let s = store.sessions.get(token)?;
    store
        .users
        .get(&s.user_id)
        .filter(|u| u.user.delete_at == 0)
        .map(|_| s.user_id.clone())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ClientMessage {
    seq: i64,
    action: String,
    data: Map<String, Value>,
}

fn reply(seq: i64, status: &str, extra: Option<(&str, Value)>) -> Message {
    let mut m = Map::new();
    m.insert("status".into(), Value::from(status));
    m.insert("seq_reply".into(), Value::from(seq));
    if let Some((k, v)) = extra {
        m.insert(k.into(), v);
    }
    Message::Text(Utf8Bytes::from(Value::Object(m).to_string()))
}

fn fail(seq: i64, id: &str, message: &str) -> Message {
    reply(
        seq,
        "FAIL",
        Some(("error", json!({"id": id, "message": message}))),
    )
}

/// Waits for a valid `authentication_challenge`; `None` closes the socket.
async fn challenge(sh: &Shared, socket: &mut WebSocket) -> Option<(String, i64)> {
    let deadline = tokio::time::sleep(sh.options.ws_auth_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return None,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let m: ClientMessage = serde_json::from_str(text.as_str()).ok()?;
                    if m.action != "authentication_challenge" {
                        continue;
                    }
                    let token = m.data.get("token").and_then(Value::as_str)?;
                    return session_user(sh, token).map(|u| (u, m.seq));
                }
                Some(Ok(_)) => {}
                _ => return None,
            },
        }
    }
}

async fn run_socket(
    sh: Arc<Shared>,
    mut socket: WebSocket,
    user: Option<String>,
    resume: Option<(String, i64)>,
) {
    let (user_id, ok_seq) = match user {
        Some(u) => (u, None),
        None => match challenge(&sh, &mut socket).await {
            Some((u, seq)) => (u, Some(seq)),
            None => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        },
    };
    let mut reg = sh.hub.register(&user_id, resume);
    // The server queues hello during registration, before the challenge's OK reply.
    while let Ok(text) = reg.rx.try_recv() {
        if socket
            .send(Message::Text(Utf8Bytes::from(&*text)))
            .await
            .is_err()
        {
            sh.hub.deactivate(&reg.conn_id, reg.epoch);
            return;
        }
    }
    if let Some(seq) = ok_seq
        && socket.send(reply(seq, "OK", None)).await.is_err()
    {
        sh.hub.deactivate(&reg.conn_id, reg.epoch);
        return;
    }
    let mut ping = tokio::time::interval(sh.options.ws_ping_interval);
    ping.tick().await;
    let mut last_seen = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = sh.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            out = reg.rx.recv() => match out {
                Some(text) => {
                    if socket.send(Message::Text(Utf8Bytes::from(&*text))).await.is_err() {
                        break;
                    }
                }
                // Taken over by a resumed socket, or dropped as too slow.
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
            incoming = socket.recv() => {
                last_seen = tokio::time::Instant::now();
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(answer) = handle_action(&sh, text.as_str())
                            && socket.send(answer).await.is_err()
                        {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > sh.options.ws_pong_wait
                    || socket.send(Message::Ping(Default::default())).await.is_err()
                {
                    break;
                }
            }
        }
    }
    sh.hub.deactivate(&reg.conn_id, reg.epoch);
}

fn handle_action(sh: &Shared, text: &str) -> Option<Message> {
    let Ok(m) = serde_json::from_str::<ClientMessage>(text) else {
        return Some(fail(
            0,
            "api.web_socket_router.bad_seq.app_error",
            "Invalid sequence for WebSocket message.",
        ));
    };
    if m.seq <= 0 {
        return Some(fail(
            m.seq,
            "api.web_socket_router.bad_seq.app_error",
            "Invalid sequence for WebSocket message.",
        ));
    }
    if m.action.is_empty() {
        return Some(fail(
            m.seq,
            "api.web_socket_router.no_action.app_error",
            "No websocket action.",
        ));
    }
    Some(match m.action.as_str() {
        "ping" => reply(
            m.seq,
            "OK",
            Some((
                "data",
                json!({"text": "pong", "version": SERVER_VERSION, "server_time": sh.now(), "node_id": ""}),
            )),
        ),
        "authentication_challenge" | "user_typing" | "presence" | "posted_ack" => {
            reply(m.seq, "OK", None)
        }
        "get_statuses" | "get_statuses_by_ids" => reply(m.seq, "OK", Some(("data", json!({})))),
        _ => fail(
            m.seq,
            "api.web_socket_router.bad_action.app_error",
            "Unknown WebSocket action.",
        ),
    })
}
