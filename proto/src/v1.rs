//! Version 1 of the messages. Released: frozen. Never reorder, remove or insert a field or
//! a variant here; add a `v2` module instead.

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, FileId, LocalRef, PostId, SessionId, ThreadId, UserId};

/// Something a person did in Mattermost, as the gateway received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// The Mattermost-derived id used for dedupe (`Nats-Msg-Id`): the post id, or a stable
    /// id built from the reaction, action or command (see the gateway).
    pub event_id: String,
    pub thread: ThreadId,
    pub channel: ChannelId,
    pub user: User,
    /// When the gateway received it, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// A post that mentions the bot, or a reply in a thread the bot is in, or a DM.
    Message(MessagePosted),
    SlashCommand(SlashCommand),
    ButtonAction(ButtonAction),
    Reaction(Reaction),
    DialogSubmission(DialogSubmission),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelType {
    Open,
    Private,
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    WebSocket,
    OutgoingWebhook,
    SlashCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosted {
    pub post_id: PostId,
    /// The root post when the message is a reply.
    pub root_id: Option<PostId>,
    pub text: String,
    pub file_ids: Vec<FileId>,
    pub mentions_bot: bool,
    pub channel_type: ChannelType,
    pub source: Source,
    /// Mattermost's `create_at`, milliseconds since the Unix epoch.
    pub create_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashCommand {
    /// The command word, e.g. `/claude`.
    pub command: String,
    /// Everything after the command word.
    pub text: String,
    pub trigger_id: String,
    pub team_id: String,
    /// Set when the command was typed in a thread.
    pub root_id: Option<PostId>,
    pub response_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ButtonAction {
    /// The post that carries the button.
    pub post_id: PostId,
    /// The action the button stands for (from the verified context).
    pub action: String,
    /// The verified context, as JSON.
    pub context_json: String,
    pub trigger_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub post_id: PostId,
    pub emoji: String,
    /// `true` for `reaction_added`, `false` for `reaction_removed`.
    pub added: bool,
    pub create_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogSubmission {
    pub callback_id: String,
    pub state: String,
    /// The submitted fields, as a JSON object.
    pub submission_json: String,
    pub cancelled: bool,
}

/// One change a worker wants made to a thread. The gateway applies a thread's operations
/// in `seq` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyOp {
    pub thread: ThreadId,
    pub channel: ChannelId,
    pub session: SessionId,
    /// Per-session sequence number, strictly increasing from 1.
    pub seq: u64,
    /// When the worker produced it, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a post in the thread, known from now on by `local`.
    CreatePost {
        local: LocalRef,
        message: String,
        /// Post `props` (attachments with buttons, …) as a JSON object.
        props_json: Option<String>,
    },
    /// Replace the text (and props) of a post created earlier. `streaming` updates may be
    /// coalesced: only the newest text of a burst is sent.
    UpdatePost {
        local: LocalRef,
        message: String,
        props_json: Option<String>,
        streaming: bool,
    },
    AddReaction {
        target: PostTarget,
        emoji: String,
    },
    RemoveReaction {
        target: PostTarget,
        emoji: String,
    },
    /// A message only `user` sees.
    Ephemeral {
        user: UserId,
        message: String,
    },
    /// Upload files from the object store and attach them to a new post.
    AttachFiles {
        local: LocalRef,
        message: String,
        files: Vec<FileUpload>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostTarget {
    Mattermost(PostId),
    Local(LocalRef),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUpload {
    pub name: String,
    pub object_key: String,
    pub content_type: String,
    pub size: u64,
}
