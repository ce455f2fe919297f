//! The Mattermost WebSocket listener: bot mentions, direct messages, replies in threads
//! the bot is in, and reactions on the bot's posts or on session roots.
//!
//! Reconnects with backoff and resumes with `connection_id` + `sequence_number`, so the
//! server replays what was missed while it still has it. An event is consumed (its `seq`
//! counted) only after its publish was acknowledged.

use std::time::Duration;

use futures::StreamExt;
use proto::v1::{EventBody, MessagePosted, Reaction, Source, User};
use proto::{ChatEvent, PostId, ThreadId};
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::channel_type;
use crate::publish::{Error as PublishError, Publisher};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Mattermost URL {0}")]
    Url(String),
    #[error("WebSocket connection failed")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
}

pub struct Listener {
    pub ws_url: String,
    /// For usernames, which reaction events do not carry.
    pub mattermost: crate::mattermost::Client,
    usernames: std::sync::Mutex<std::collections::HashMap<String, String>>,
    pub token: String,
    pub bot_id: String,
    pub bot_username: String,
    pub publisher: Publisher,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    broadcast: Value,
    seq: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct WirePost {
    id: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    root_id: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    create_at: i64,
    #[serde(default)]
    file_ids: Vec<String>,
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct WireReaction {
    user_id: String,
    post_id: String,
    emoji_name: String,
    #[serde(default)]
    create_at: i64,
}

impl Listener {
    pub fn new(
        mattermost: crate::mattermost::Client,
        token: &str,
        bot_id: &str,
        bot_username: &str,
        publisher: Publisher,
    ) -> Result<Self, Error> {
        let mattermost_url = mattermost.base_url().to_owned();
        let base = mattermost_url.trim_end_matches('/');
        let ws_url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/api/v4/websocket")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/api/v4/websocket")
        } else {
            return Err(Error::Url(base.to_owned()));
        };
        Ok(Self {
            ws_url,
            mattermost,
            usernames: Default::default(),
            token: token.to_owned(),
            bot_id: bot_id.to_owned(),
            bot_username: bot_username.to_owned(),
            publisher,
        })
    }

    /// Listens until `shutdown`, reconnecting as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut resume: Option<(String, u64)> = None;
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.session(&mut resume, &shutdown).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(error = %err, ?backoff, "Mattermost WebSocket disconnected; reconnecting");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn session(
        &self,
        resume: &mut Option<(String, u64)>,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let url = match resume {
            Some((connection_id, next)) => format!(
                "{}?connection_id={connection_id}&sequence_number={next}",
                self.ws_url
            ),
            None => self.ws_url.clone(),
        };
        let mut request = url.as_str().into_client_request().map_err(Error::Connect)?;
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| Error::Url("token is not a valid header value".into()))?,
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(Error::Connect)?;
        tracing::info!(resumed = resume.is_some(), "Mattermost WebSocket connected");
        loop {
            let frame = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                frame = socket.next() => frame,
            };
            let text = match frame {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(Error::Connect(err)),
            };
            let Ok(envelope) = serde_json::from_str::<Envelope>(&text) else {
                continue;
            };
            if envelope.event.is_empty() {
                continue; // a reply to one of our requests
            }
            if envelope.event == "hello" {
                let connection_id = envelope.data["connection_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                *resume = Some((connection_id, 1));
                continue;
            }
            // Until the event is read and published the sequence does not move on, so a
            // reconnect resumes from it.
            let Some(event) = self.read_until_ok(&envelope, shutdown).await else {
                return Ok(());
            };
            if let Some(event) = event {
                self.publish_until_acked(&event, shutdown).await;
            }
            if let (Some(seq), Some((_, next))) = (envelope.seq, resume.as_mut()) {
                *next = seq + 1;
            }
        }
    }

    async fn publish_until_acked(&self, event: &ChatEvent, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.publisher.publish(event, "websocket").await {
                Ok(_) => return,
                Err(err) => tracing::warn!(error = %err, "publish failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The chat event of `envelope` (`Some(None)`: nothing for the bot), retrying while
    /// the bot's thread membership cannot be read; `None` once shutting down.
    async fn read_until_ok(
        &self,
        envelope: &Envelope,
        shutdown: &CancellationToken,
    ) -> Option<Option<ChatEvent>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.to_chat_event(envelope).await {
                Ok(event) => return Some(event),
                Err(err) => tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    event = %envelope.event,
                    "could not tell whether the event belongs to a bot thread; retrying"
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn to_chat_event(&self, envelope: &Envelope) -> Result<Option<ChatEvent>, PublishError> {
        match envelope.event.as_str() {
            "posted" => self.posted(envelope).await,
            "reaction_added" | "reaction_removed" => self.reaction(envelope).await,
            _ => Ok(None),
        }
    }

    async fn posted(&self, envelope: &Envelope) -> Result<Option<ChatEvent>, PublishError> {
        let Some(post) = envelope.data["post"]
            .as_str()
            .and_then(|p| serde_json::from_str::<WirePost>(p).ok())
        else {
            return Ok(None);
        };
        if post.user_id == self.bot_id || post.kind.starts_with("system_") {
            return Ok(None);
        }
        let mentions: Vec<String> = envelope.data["mentions"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let mentions_bot = mentions.contains(&self.bot_id);
        let kind = envelope.data["channel_type"].as_str().unwrap_or("O");
        let direct = kind == "D";
        let root = (!post.root_id.is_empty()).then(|| PostId::new(post.root_id.clone()));
        let in_thread = match &root {
            Some(root) => self.publisher.in_thread(root.as_str()).await?,
            None => false,
        };
        if !(mentions_bot || direct || in_thread) {
            return Ok(None);
        }
        let post_id = PostId::new(post.id.clone());
        let thread = ThreadId::of_post(&post_id, root.as_ref());
        if mentions_bot || direct {
            self.publisher.join_thread(&thread).await?;
        }
        let file_ids: Vec<proto::FileId> = post.file_ids.iter().map(proto::FileId::new).collect();
        self.publisher.stage_files(&thread, &file_ids).await;
        let username = envelope.data["sender_name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('@')
            .to_owned();
        Ok(Some(ChatEvent {
            event_id: post.id.clone(),
            thread,
            channel: post.channel_id.as_str().into(),
            user: User {
                id: post.user_id.as_str().into(),
                username,
            },
            received_at_ms: common::now_ms(),
            body: EventBody::Message(MessagePosted {
                post_id,
                root_id: root,
                text: post.message,
                file_ids,
                mentions_bot,
                channel_type: channel_type(kind),
                source: Source::WebSocket,
                create_at_ms: post.create_at,
            }),
        }))
    }

    /// A user's name, looked up once and remembered (names rarely change; a stale one
    /// only affects display and approver checks until the gateway restarts).
    async fn username(&self, user_id: &str) -> String {
        if let Some(name) = self.usernames.lock().expect("usernames lock").get(user_id) {
            return name.clone();
        }
        match self.mattermost.user(user_id).await {
            Ok(user) => {
                let mut names = self.usernames.lock().expect("usernames lock");
                if names.len() > 100_000 {
                    names.clear();
                }
                names.insert(user_id.to_owned(), user.username.clone());
                user.username
            }
            Err(err) => {
                tracing::warn!(error = %err, user_id, "could not look up a username");
                String::new()
            }
        }
    }

    async fn reaction(&self, envelope: &Envelope) -> Result<Option<ChatEvent>, PublishError> {
        let Some(reaction) = envelope.data["reaction"]
            .as_str()
            .and_then(|r| serde_json::from_str::<WireReaction>(r).ok())
        else {
            return Ok(None);
        };
        if reaction.user_id == self.bot_id {
            return Ok(None);
        }
        let thread = match self.publisher.thread_of_post(&reaction.post_id).await? {
            Some(thread) => thread,
            None if self.publisher.in_thread(&reaction.post_id).await? => {
                ThreadId::new(reaction.post_id.clone())
            }
            None => return Ok(None),
        };
        let added = envelope.event == "reaction_added";
        let username = self.username(&reaction.user_id).await;
        let channel = envelope.broadcast["channel_id"]
            .as_str()
            .unwrap_or_default();
        Ok(Some(ChatEvent {
            event_id: format!(
                "reaction:{}:{}:{}:{}:{}",
                reaction.post_id,
                reaction.user_id,
                reaction.emoji_name,
                if added { "add" } else { "remove" },
                reaction.create_at
            ),
            thread,
            channel: channel.into(),
            user: User {
                id: reaction.user_id.as_str().into(),
                username,
            },
            received_at_ms: common::now_ms(),
            body: EventBody::Reaction(Reaction {
                post_id: PostId::new(reaction.post_id),
                emoji: reaction.emoji_name,
                added,
                create_at_ms: reaction.create_at,
            }),
        }))
    }
}
