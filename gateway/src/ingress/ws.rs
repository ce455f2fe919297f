//! The Mattermost WebSocket listener: bot mentions, direct messages, replies in threads
//! the bot is in, and reactions on the bot's posts or on session roots.
//!
//! Reconnects with backoff and resumes with `connection_id` + `sequence_number`, so the
//! server replays what was missed while it still has it. An event is consumed (its `seq`
//! counted) only after its publish was acknowledged.
//!
//! When the server cannot resume (its 128-event dead queue overflowed, the connection
//! expired, the server restarted) it answers with a new `hello`: the events in between
//! are gone from the WebSocket. The listener then catches up over REST: it lists every
//! post created in the bot's channels since the last moment it had consumed everything
//! (less a margin for clock skew) and handles them like `posted` events, oldest first,
//! before reading on. Posts seen twice are collapsed by their `Nats-Msg-Id` (the post id)
//! and by the worker's inbound record. Reactions made during such a gap are not listed
//! (Mattermost has no "reactions since" call); buttons do not go over the WebSocket.

use std::time::Duration;
use tracing::Instrument as _;

use futures::StreamExt;
use proto::v1::{EventBody, MessagePosted, Reaction, Source, User};
use proto::{ChannelId, ChatEvent, FileId, PostId, ThreadId, UserId};
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::{channel_type, mentions_user};
use crate::mattermost::{self, Post};
use crate::publish::{Error as PublishError, Publisher};

/// How far before the last fully consumed moment a catch-up lists posts: covers clock
/// skew between the gateway and Mattermost and posts still being broadcast then.
pub const CATCH_UP_MARGIN_MS: u64 = 60_000;

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
    /// Marked up under this name once the first connection stands (`/readyz`): a gateway
    /// is not ready before it can see mentions.
    pub ready: Option<(std::sync::Arc<common::health::Health>, &'static str)>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) data: Value,
    #[serde(default)]
    pub(crate) broadcast: Value,
    pub(crate) seq: Option<u64>,
}

impl Envelope {
    /// One text frame; `None` if it is not an event envelope.
    pub(crate) fn read(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// A `hello`'s connection id (to resume with).
    pub(crate) fn connection_id(&self) -> &str {
        self.data["connection_id"].as_str().unwrap_or_default()
    }

    /// The sequence number to resume after this event.
    pub(crate) fn next_seq(&self) -> Option<u64> {
        self.seq.map(|seq| seq.saturating_add(1))
    }

    /// The channel a broadcast went to.
    pub(crate) fn channel_id(&self) -> &str {
        self.broadcast["channel_id"].as_str().unwrap_or_default()
    }

    /// A `posted` event's post (a JSON string inside the data) and what the event says
    /// about it; `None` without a readable post.
    pub(crate) fn posted(&self, bot_id: &str) -> Option<Posted<'_>> {
        let post = self.data["post"]
            .as_str()
            .and_then(|p| serde_json::from_str::<WirePost>(p).ok())?;
        let mentions: Vec<String> = self.data["mentions"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        Some(Posted {
            post,
            mentions_bot: mentions.iter().any(|m| m == bot_id),
            kind: self.data["channel_type"].as_str().unwrap_or("O"),
            username: self.data["sender_name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('@')
                .to_owned(),
        })
    }

    /// A reaction event's reaction (a JSON string inside the data).
    pub(crate) fn reaction(&self) -> Option<WireReaction> {
        self.data["reaction"]
            .as_str()
            .and_then(|r| serde_json::from_str::<WireReaction>(r).ok())
    }
}

/// What a `posted` event carries.
#[derive(Debug)]
pub(crate) struct Posted<'a> {
    pub(crate) post: WirePost,
    pub(crate) mentions_bot: bool,
    /// The channel type code (`O`, `P`, `D`, `G`).
    pub(crate) kind: &'a str,
    pub(crate) username: String,
}

/// Where a connection stands, kept across reconnects.
#[derive(Debug, Default)]
struct Cursor {
    /// The connection to resume and the next `seq` wanted.
    resume: Option<(String, u64)>,
    /// Local time (Unix ms) up to which every event was consumed: after a connection
    /// that could not be resumed, posts are listed from here (less the margin).
    consumed_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WirePost {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) channel_id: String,
    #[serde(default)]
    pub(crate) root_id: String,
    #[serde(default)]
    pub(crate) user_id: String,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) create_at: i64,
    #[serde(default)]
    pub(crate) file_ids: Vec<String>,
    #[serde(default, rename = "type")]
    pub(crate) kind: String,
}

impl WirePost {
    /// Neither the bot's own post nor one of Mattermost's (`system_*`).
    pub(crate) fn is_from_a_person(&self, bot_id: &str) -> bool {
        self.user_id != bot_id && !self.kind.starts_with("system_")
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireReaction {
    pub(crate) user_id: String,
    pub(crate) post_id: String,
    pub(crate) emoji_name: String,
    #[serde(default)]
    pub(crate) create_at: i64,
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
            ready: None,
            publisher,
        })
    }

    /// Listens until `shutdown`, reconnecting as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut cursor = Cursor::default();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.session(&mut cursor, &shutdown).await {
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
        cursor: &mut Cursor,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let url = match &cursor.resume {
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
        if let Some((health, name)) = &self.ready {
            health.set_up(name);
        }
        tracing::info!(
            resuming = cursor.resume.is_some(),
            "Mattermost WebSocket connected"
        );
        loop {
            let frame = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                frame = socket.next() => frame,
            };
            let received = common::now_ms();
            let text = match frame {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {
                    // A ping: the server would have sent a `hello` first had it reset.
                    cursor.consumed_ms = Some(received);
                    continue;
                }
                Some(Err(err)) => return Err(Error::Connect(err)),
            };
            let Some(envelope) = Envelope::read(&text) else {
                continue;
            };
            if envelope.event.is_empty() {
                continue; // a reply to one of our requests
            }
            if envelope.event == "hello" {
                // A new connection: whatever came after `consumed_ms` on the old one is
                // not coming over this one.
                if let Some(since) = cursor.consumed_ms
                    && !self.catch_up(since, shutdown).await
                {
                    return Ok(());
                }
                cursor.resume = Some((envelope.connection_id().to_owned(), 1));
                cursor.consumed_ms = Some(received);
                continue;
            }
            // Until the event is read and published the sequence does not move on, so a
            // reconnect resumes from it.
            let span = ingress_span(&envelope.event, "websocket");
            let handled = async {
                let event = self
                    .read_until_ok(Frame::Event(&envelope), shutdown)
                    .await?;
                if let Some(event) = event {
                    self.publish_until_acked(&event, shutdown, "websocket")
                        .await;
                }
                Some(())
            }
            .instrument(span)
            .await;
            if handled.is_none() {
                return Ok(());
            }
            if let (Some(next_seq), Some((_, next))) = (envelope.next_seq(), cursor.resume.as_mut())
            {
                *next = next_seq;
            }
            cursor.consumed_ms = Some(received);
        }
    }

    /// Handles every post created in the bot's channels since `consumed_ms` (less the
    /// margin), oldest first, retrying what fails. `false` once shutting down.
    async fn catch_up(&self, consumed_ms: u64, shutdown: &CancellationToken) -> bool {
        let since = i64::try_from(consumed_ms.saturating_sub(CATCH_UP_MARGIN_MS)).unwrap_or(0);
        let mut backoff = Duration::from_millis(100);
        let posts = loop {
            match self.list_since(since).await {
                Ok(posts) => break posts,
                Err(err) => tracing::warn!(
                    error = %common::error_chain(&err),
                    "could not list the posts missed while disconnected; retrying"
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        };
        tracing::warn!(
            since,
            posts = posts.len(),
            "the WebSocket could not resume; catching up on posts made meanwhile"
        );
        for (post, kind) in &posts {
            let listed = Listed { post, kind };
            let handled = async {
                let event = self.read_until_ok(Frame::Listed(listed), shutdown).await?;
                if let Some(event) = event {
                    self.publish_until_acked(&event, shutdown, "websocket_catch_up")
                        .await;
                }
                Some(())
            }
            .instrument(ingress_span("posted", "websocket_catch_up"))
            .await;
            if handled.is_none() {
                return false;
            }
        }
        true
    }

    /// The posts of the bot's channels created since `since` (Mattermost's clock) that
    /// may be for the bot, oldest first, each with its channel's type.
    async fn list_since(&self, since: i64) -> Result<Vec<(Post, String)>, mattermost::Error> {
        let mut listed = Vec::new();
        for channel in self.mattermost.my_channels().await? {
            let mut from = since;
            loop {
                let page = self
                    .mattermost
                    .channel_posts_since(&channel.id, from)
                    .await?;
                let full = page.posts.len() >= mattermost::SINCE_LIMIT;
                // `since` selects by last change; the next page starts after the newest.
                from = page
                    .posts
                    .values()
                    .map(|p| p.update_at)
                    .max()
                    .unwrap_or(from)
                    .max(from);
                // `order` is newest first; posts of the same millisecond keep its order.
                let mut posts = page.posts;
                listed.extend(
                    page.order
                        .iter()
                        .rev()
                        .filter_map(|id| posts.remove(id))
                        .map(|p| (p, channel.kind.clone())),
                );
                listed.extend(posts.into_values().map(|p| (p, channel.kind.clone())));
                if !full {
                    break;
                }
            }
        }
        Ok(missed(listed, since, &self.bot_id))
    }

    async fn publish_until_acked(
        &self,
        event: &ChatEvent,
        shutdown: &CancellationToken,
        source: &'static str,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.publisher.publish(event, source).await {
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

    /// The chat event of `frame` (`Some(None)`: nothing for the bot), retrying while
    /// the bot's thread membership cannot be read; `None` once shutting down.
    async fn read_until_ok(
        &self,
        frame: Frame<'_>,
        shutdown: &CancellationToken,
    ) -> Option<Option<ChatEvent>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let read = match frame {
                Frame::Event(envelope) => self.to_chat_event(envelope).await,
                Frame::Listed(listed) => self.listed(listed).await,
            };
            match read {
                Ok(event) => return Some(event),
                Err(err) => tracing::warn!(
                    error = &err as &dyn std::error::Error,
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
        let Some(posted) = envelope.posted(&self.bot_id) else {
            return Ok(None);
        };
        let Posted {
            post,
            mentions_bot,
            kind,
            username,
        } = posted;
        self.message(post, mentions_bot, kind, username).await
    }

    /// A post listed by a catch-up, as the `posted` event for it would have said.
    async fn listed(&self, listed: Listed<'_>) -> Result<Option<ChatEvent>, PublishError> {
        let Listed { post, kind } = listed;
        // Mattermost's own rule for `mentions`: a direct message mentions every member.
        let mentions_bot = kind == "D" || mentions_user(&post.message, &self.bot_username);
        let wire = WirePost {
            id: post.id.clone(),
            channel_id: post.channel_id.clone(),
            root_id: post.root_id.clone(),
            user_id: post.user_id.clone(),
            message: post.message.clone(),
            create_at: post.create_at,
            file_ids: post.file_ids.clone(),
            kind: post.kind.clone(),
        };
        if wire.user_id == self.bot_id {
            return Ok(None);
        }
        let username = self.username(&wire.user_id).await;
        self.message(wire, mentions_bot, kind, username).await
    }

    async fn message(
        &self,
        post: WirePost,
        mentions_bot: bool,
        kind: &str,
        username: String,
    ) -> Result<Option<ChatEvent>, PublishError> {
        if !post.is_from_a_person(&self.bot_id) {
            return Ok(None);
        }
        let direct = kind == "D";
        // Checked before any of them names a subject or a key; Mattermost sends nothing
        // else, so an event that fails is dropped with a warning.
        let ids = checked_ids(&post);
        let (post_id, root, channel, user_id, file_ids) = match ids {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "dropped a post whose ids are not ids");
                return Ok(None);
            }
        };
        let in_thread = match &root {
            Some(root) => {
                self.publisher
                    .in_thread(&ThreadId::new(root.as_str()))
                    .await?
            }
            None => false,
        };
        if !(mentions_bot || direct || in_thread) {
            return Ok(None);
        }
        let thread = ThreadId::of_post(&post_id, root.as_ref());
        if mentions_bot || direct {
            self.publisher.join_thread(&thread).await?;
        }
        self.publisher.stage_files(&thread, &file_ids).await;
        Ok(Some(ChatEvent {
            event_id: post.id.clone(),
            thread,
            channel,
            user: User {
                id: user_id,
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
    /// only affects what is shown: people are authorized by user id, see `directory`).
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
        let Some(reaction) = envelope.reaction() else {
            return Ok(None);
        };
        if reaction.user_id == self.bot_id {
            return Ok(None);
        }
        let ids = (
            PostId::parse(reaction.post_id.clone()),
            UserId::parse(reaction.user_id.clone()),
            ChannelId::parse(envelope.channel_id()),
        );
        let (post_id, user_id, channel) = match ids {
            (Ok(post), Ok(user), Ok(channel)) => (post, user, channel),
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                tracing::warn!(error = %err, "dropped a reaction whose ids are not ids");
                return Ok(None);
            }
        };
        let as_root = ThreadId::new(post_id.as_str());
        let thread = match self.publisher.thread_of_post(&post_id).await? {
            Some(thread) => thread,
            None if self.publisher.in_thread(&as_root).await? => as_root,
            None => return Ok(None),
        };
        let added = envelope.event == "reaction_added";
        let username = self.username(user_id.as_str()).await;
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
            channel,
            user: User {
                id: user_id,
                username,
            },
            received_at_ms: common::now_ms(),
            body: EventBody::Reaction(Reaction {
                post_id,
                emoji: reaction.emoji_name,
                added,
                create_at_ms: reaction.create_at,
            }),
        }))
    }
}

/// The ids of a post, each checked as a subject token and key (`proto::ids`).
type PostIds = (PostId, Option<PostId>, ChannelId, UserId, Vec<FileId>);

fn checked_ids(post: &WirePost) -> Result<PostIds, proto::IdError> {
    let root = match post.root_id.as_str() {
        "" => None,
        root => Some(PostId::parse(root)?),
    };
    let files = post
        .file_ids
        .iter()
        .map(|f| FileId::parse(f.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        PostId::parse(post.id.as_str())?,
        root,
        ChannelId::parse(post.channel_id.as_str())?,
        UserId::parse(post.user_id.as_str())?,
        files,
    ))
}

/// What the listener reads an event from.
#[derive(Clone, Copy)]
enum Frame<'a> {
    Event(&'a Envelope),
    Listed(Listed<'a>),
}

/// A post a catch-up listed, with its channel's type.
#[derive(Clone, Copy)]
struct Listed<'a> {
    post: &'a Post,
    kind: &'a str,
}

/// Of the posts a catch-up listed (oldest first per channel), those created since `since`
/// that a `posted` event would have carried (not deleted, not the bot's, not Mattermost's
/// own), oldest first (a stable sort: the listing's order within one millisecond), each
/// once.
fn missed(listed: Vec<(Post, String)>, since: i64, bot_id: &str) -> Vec<(Post, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(Post, String)> = listed
        .into_iter()
        .filter(|(p, _)| {
            p.create_at >= since
                && p.delete_at == 0
                && p.user_id != bot_id
                && !p.kind.starts_with("system_")
        })
        .filter(|(p, _)| seen.insert(p.id.clone()))
        .collect();
    out.sort_by_key(|(p, _)| p.create_at);
    out
}

/// The root span of one Mattermost event the bot may act on: a new trace, which follows the
/// event through the fleet to the last post it causes. Other events (typing, status) get
/// none, so they start no trace.
fn ingress_span(event: &str, source: &'static str) -> tracing::Span {
    if !matches!(event, "posted" | "reaction_added" | "reaction_removed") {
        return tracing::Span::none();
    }
    tracing::info_span!(
        parent: None,
        "ingress",
        otel.name = %format_args!("ingress {source}"),
        otel.kind = "consumer",
        mattermost.event = %event,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found while writing the `ws_envelope` fuzz harness: `seq + 1` overflowed on the largest
    /// sequence number (a panic in debug builds; resuming from 0 in release).
    #[test]
    fn the_resume_sequence_saturates() {
        let last = Envelope::read(r#"{"event":"typing","seq":18446744073709551615}"#).unwrap();
        assert_eq!(last.next_seq(), Some(u64::MAX));
        let one = Envelope::read(r#"{"event":"typing","seq":1}"#).unwrap();
        assert_eq!(one.next_seq(), Some(2));
        assert_eq!(
            Envelope::read(r#"{"event":"hello"}"#).unwrap().next_seq(),
            None
        );
    }

    fn post(id: &str, create_at: i64, user: &str) -> Post {
        Post {
            id: id.into(),
            channel_id: "c".into(),
            root_id: String::new(),
            user_id: user.into(),
            message: String::new(),
            props: Value::Null,
            file_ids: vec![],
            create_at,
            update_at: create_at,
            delete_at: 0,
            kind: String::new(),
        }
    }

    #[test]
    fn a_catch_up_keeps_users_posts_since_the_mark_oldest_first() {
        let mut deleted = post("d", 150, "u");
        deleted.delete_at = 160;
        let mut system = post("s", 150, "u");
        system.kind = "system_join_channel".into();
        let listed = vec![
            (post("b", 200, "u"), "O".to_owned()),
            (post("old", 99, "u"), "O".to_owned()),
            (post("a", 100, "u"), "O".to_owned()),
            (post("bot", 120, "bot"), "O".to_owned()),
            (deleted, "O".to_owned()),
            (system, "O".to_owned()),
            (post("b", 200, "u"), "O".to_owned()),
        ];
        let ids: Vec<String> = missed(listed, 100, "bot")
            .into_iter()
            .map(|(p, _)| p.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    proptest! {
        #[test]
        fn a_catch_up_is_ordered_and_loses_no_eligible_post(
            posts in proptest::collection::vec((0i64..50, 0u8..4, any::<bool>()), 0..40),
            since in 0i64..50,
        ) {
            let listed: Vec<(Post, String)> = posts
                .iter()
                .enumerate()
                .map(|(i, (at, user, deleted))| {
                    let mut p = post(&format!("p{i}"), *at, &format!("u{user}"));
                    if *deleted { p.delete_at = at + 1; }
                    (p, "O".to_owned())
                })
                .collect();
            let out = missed(listed.clone(), since, "u0");
            prop_assert!(out.windows(2).all(|w| w[0].0.create_at <= w[1].0.create_at));
            let eligible = listed
                .iter()
                .filter(|(p, _)| p.create_at >= since && p.delete_at == 0 && p.user_id != "u0")
                .count();
            prop_assert_eq!(out.len(), eligible);
        }
    }
}
