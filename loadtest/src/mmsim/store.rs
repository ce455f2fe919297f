//! The simulator's in-memory state and the rules that guard it (permissions, post validity).
//!
//! Everything here is synchronous: handlers take the lock, apply one operation and release it
//! before any await, so one slow client never blocks another. The whole store serialises to
//! JSON for `--state`; short-lived entries (pending post ids, trigger ids) are not persisted.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::model::{
    Bot, Channel, ChannelMember, Command, FileInfo, OutgoingWebhook, POST_MESSAGE_MAX_RUNES, Post,
    Reaction, Team, TeamMember, User, UserAccessToken, channel_type, new_id,
};

/// How long a `pending_post_id` dedupes a retried create (`PendingPostIDsCacheTTL`),
/// counted from the first create: the server's `deduplicateCreatePost` keys its cache by the
/// pending post id alone (not by user) and a hit does not extend the entry.
const PENDING_POST_TTL_MS: i64 = 30_000;
/// `file_ids` may hold at most this many runes of JSON (`Post.IsValid`).
const FILE_IDS_MAX_RUNES: usize = 300;
/// Size at which expired pending post ids are purged.
const PENDING_POSTS_PURGE_AT: usize = 10_000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Store {
    pub users: HashMap<String, UserRec>,
    pub usernames: HashMap<String, String>,
    /// Bearer token → session (login sessions and personal access tokens alike).
    pub sessions: HashMap<String, Session>,
    pub access_tokens: HashMap<String, UserAccessToken>,
    pub teams: HashMap<String, TeamRec>,
    pub team_names: HashMap<String, String>,
    pub channels: HashMap<String, ChannelRec>,
    pub posts: HashMap<String, PostRec>,
    pub files: HashMap<String, FileRec>,
    pub bots: HashMap<String, Bot>,
    pub hooks: HashMap<String, OutgoingWebhook>,
    pub commands: HashMap<String, Command>,
    pub command_webhooks: HashMap<String, CommandWebhook>,
    #[serde(skip)]
    pub pending_posts: HashMap<String, (String, i64)>,
    #[serde(skip)]
    pub triggers: HashMap<String, Trigger>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserRec {
    pub user: User,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub user_id: String,
    /// Set for personal access tokens (which never expire).
    pub access_token_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TeamRec {
    pub team: Team,
    pub members: HashMap<String, TeamMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChannelRec {
    pub channel: Channel,
    pub members: HashMap<String, ChannelMember>,
    /// Post ids in creation order.
    pub posts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PostRec {
    pub post: Post,
    pub reactions: Vec<Reaction>,
    /// Reply ids in creation order (root posts only).
    pub replies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileRec {
    pub info: FileInfo,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// A slash command's `response_url` (`model.CommandWebhook`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommandWebhook {
    pub command_id: String,
    pub user_id: String,
    pub channel_id: String,
    pub root_id: String,
    pub create_at: i64,
    pub use_count: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    pub user_id: String,
    pub create_at: i64,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// What REST post creation needs; webhook and command replies fill it too.
#[derive(Debug, Default, Clone)]
pub(crate) struct NewPost {
    pub user_id: String,
    pub channel_id: String,
    pub root_id: String,
    pub message: String,
    pub props: Map<String, Value>,
    pub file_ids: Vec<String>,
    pub pending_post_id: String,
    pub post_type: String,
    pub priority: Option<Value>,
}

/// The outcome of a create: the post, and whether it is a deduplicated retry.
pub(crate) struct Created {
    pub post: Post,
    pub duplicate: bool,
}

/// Who sees channel events, and the channel facts `posted` carries.
#[derive(Debug, Clone)]
pub(crate) struct ChannelAudience {
    pub channel: Channel,
    pub members: Vec<String>,
}

pub(crate) fn forbidden() -> ApiError {
    ApiError::forbidden(
        "api.context.permissions.app_error",
        "You do not have the appropriate permissions.",
    )
}

impl Store {
    pub fn user(&self, id: &str) -> Result<&User, ApiError> {
        self.users.get(id).map(|r| &r.user).ok_or_else(|| {
            ApiError::not_found("app.user.missing_account.const", "Unable to find the user.")
        })
    }

    pub fn channel(&self, id: &str) -> Result<&ChannelRec, ApiError> {
        self.channels.get(id).ok_or_else(|| {
            ApiError::not_found(
                "app.channel.get.existing.app_error",
                "Unable to find the existing channel.",
            )
        })
    }

    pub fn team(&self, id: &str) -> Result<&TeamRec, ApiError> {
        self.teams.get(id).ok_or_else(|| {
            ApiError::not_found(
                "app.team.get.find.app_error",
                "Unable to find the existing team.",
            )
        })
    }

    pub fn post(&self, id: &str) -> Result<&PostRec, ApiError> {
        match self.posts.get(id) {
            Some(rec) if rec.post.delete_at == 0 => Ok(rec),
            _ => Err(ApiError::not_found(
                "app.post.get.app_error",
                "Unable to get the post.",
            )),
        }
    }

    pub fn is_admin(&self, user_id: &str) -> bool {
        self.users
            .get(user_id)
            .is_some_and(|r| r.user.is_system_admin())
    }

    /// Reading: members; team members for public channels; system admins everywhere.
    pub fn can_read(&self, user_id: &str, channel: &ChannelRec) -> bool {
        channel.members.contains_key(user_id)
            || self.is_admin(user_id)
            || (channel.channel.channel_type == channel_type::OPEN
                && self
                    .teams
                    .get(&channel.channel.team_id)
                    .is_some_and(|t| t.members.contains_key(user_id)))
    }

    /// Posting, reacting, uploading: channel members and system admins.
    pub fn can_write(&self, user_id: &str, channel: &ChannelRec) -> bool {
        channel.members.contains_key(user_id) || self.is_admin(user_id)
    }

    pub fn readable_channel(
        &self,
        user_id: &str,
        channel_id: &str,
    ) -> Result<&ChannelRec, ApiError> {
        let ch = self.channel(channel_id)?;
        if self.can_read(user_id, ch) {
            Ok(ch)
        } else {
            Err(forbidden())
        }
    }

    pub fn audience(&self, channel_id: &str) -> Option<ChannelAudience> {
        self.channels.get(channel_id).map(|c| ChannelAudience {
            channel: c.channel.clone(),
            members: c.members.keys().cloned().collect(),
        })
    }

    pub fn username(&self, user_id: &str) -> String {
        self.users
            .get(user_id)
            .map(|u| u.user.username.clone())
            .unwrap_or_default()
    }

    pub fn add_channel_member(
        &mut self,
        channel_id: &str,
        user_id: &str,
        now: i64,
    ) -> Option<ChannelMember> {
        let ch = self.channels.get_mut(channel_id)?;
        let member = ch
            .members
            .entry(user_id.to_owned())
            .or_insert_with(|| ChannelMember {
                channel_id: channel_id.to_owned(),
                user_id: user_id.to_owned(),
                roles: "channel_user".into(),
                last_viewed_at: 0,
                notify_props: default_channel_notify_props(),
                last_update_at: now,
                scheme_user: true,
                ..ChannelMember::default()
            });
        Some(member.clone())
    }

    /// Validates and stores a post; the caller has checked the poster may write to the channel.
    pub fn create_post(&mut self, np: NewPost, now: i64) -> Result<Created, ApiError> {
        // Purge in bulk, rarely, so the hot path stays O(1).
        if self.pending_posts.len() > PENDING_POSTS_PURGE_AT {
            self.pending_posts
                .retain(|_, (_, at)| now - *at < PENDING_POST_TTL_MS);
        }
        let pending_key = (!np.pending_post_id.is_empty()).then(|| np.pending_post_id.clone());
        if let Some(key) = &pending_key
            && let Some((post_id, at)) = self.pending_posts.get(key)
            && now - *at < PENDING_POST_TTL_MS
            && let Some(rec) = self.posts.get(post_id)
        {
            return Ok(Created {
                post: rec.post.clone(),
                duplicate: true,
            });
        }
        validate_message(&np.message)?;
        if serde_json::to_string(&np.file_ids).map_or(0, |s| s.chars().count()) > FILE_IDS_MAX_RUNES
        {
            return Err(ApiError::bad_request(
                "model.post.is_valid.file_ids.app_error",
                "Invalid file ids.",
            ));
        }
        if !np.root_id.is_empty() {
            let bad_root = || {
                ApiError::bad_request(
                    "api.post.create_post.root_id.app_error",
                    "Invalid RootId parameter.",
                )
            };
            let root = self.posts.get(&np.root_id).ok_or_else(bad_root)?;
            if !root.post.root_id.is_empty() || root.post.delete_at != 0 {
                return Err(bad_root());
            }
            if root.post.channel_id != np.channel_id {
                return Err(ApiError::bad_request(
                    "api.post.create_post.channel_root_id.app_error",
                    "Invalid ChannelId for RootId parameter.",
                ));
            }
        }
        let mut files = Vec::new();
        let mut file_ids = Vec::new();
        let id = new_id();
        for fid in &np.file_ids {
            // Like the server, ids that are unknown, foreign or already attached are dropped.
            if let Some(f) = self.files.get_mut(fid)
                && f.info.user_id == np.user_id
                && f.info.post_id.is_empty()
                && f.info.channel_id == np.channel_id
            {
                f.info.post_id = id.clone();
                files.push(f.info.clone());
                file_ids.push(fid.clone());
            }
        }
        let mut post = Post {
            id: id.clone(),
            create_at: now,
            update_at: now,
            user_id: np.user_id.clone(),
            channel_id: np.channel_id.clone(),
            root_id: np.root_id.clone(),
            message: np.message,
            post_type: np.post_type,
            props: np.props,
            file_ids,
            pending_post_id: np.pending_post_id,
            ..Post::default()
        };
        post.metadata.files = files;
        post.metadata.priority = np.priority;
        if !post.root_id.is_empty()
            && let Some(root) = self.posts.get_mut(&post.root_id)
        {
            root.replies.push(id.clone());
            root.post.reply_count += 1;
            root.post.last_reply_at = now;
            root.post.update_at = now;
            post.reply_count = root.post.reply_count;
        }
        if let Some(ch) = self.channels.get_mut(&post.channel_id) {
            ch.posts.push(id.clone());
            ch.channel.last_post_at = now;
            ch.channel.total_msg_count += 1;
            if post.root_id.is_empty() {
                ch.channel.last_root_post_at = now;
            }
        }
        if let Some(key) = pending_key {
            self.pending_posts.insert(key, (id.clone(), now));
        }
        self.posts.insert(
            id,
            PostRec {
                post: post.clone(),
                reactions: Vec::new(),
                replies: Vec::new(),
            },
        );
        Ok(Created {
            post,
            duplicate: false,
        })
    }

    /// The post with reactions in its metadata, as the REST API returns it.
    pub fn post_view(&self, rec: &PostRec) -> Post {
        let mut post = rec.post.stripped();
        post.metadata.reactions = rec.reactions.clone();
        post
    }

    /// Users mentioned by a post in a channel, besides its author (`posted.mentions`).
    pub fn mentions(&self, post: &Post, audience: &ChannelAudience) -> HashSet<String> {
        let mut out = HashSet::new();
        if audience.channel.channel_type == channel_type::DIRECT {
            out.extend(audience.members.iter().cloned());
        } else {
            for word in post.message.split_whitespace() {
                let Some(name) = word.strip_prefix('@') else {
                    continue;
                };
                let name = name.trim_end_matches(|c: char| {
                    !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
                });
                let name = name.trim_end_matches('.').to_lowercase();
                if matches!(name.as_str(), "channel" | "all" | "here") {
                    out.extend(audience.members.iter().cloned());
                } else if let Some(uid) = self.usernames.get(&name)
                    && audience.members.contains(uid)
                {
                    out.insert(uid.clone());
                }
            }
        }
        out.remove(&post.user_id);
        out
    }
}

pub(crate) fn validate_message(message: &str) -> Result<(), ApiError> {
    let len = message.chars().count();
    if len > POST_MESSAGE_MAX_RUNES {
        return Err(ApiError::bad_request(
            "model.post.is_valid.message_length.app_error",
            &format!(
                "Message length of {len} exceeds the maximum of {POST_MESSAGE_MAX_RUNES} characters."
            ),
        ));
    }
    Ok(())
}

/// Splits a long webhook reply into posts of at most the message limit (`SplitWebhookPost`).
pub(crate) fn split_message(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= POST_MESSAGE_MAX_RUNES {
        return vec![text.to_owned()];
    }
    chars
        .chunks(POST_MESSAGE_MAX_RUNES)
        .map(|c| c.iter().collect())
        .collect()
}

pub(crate) fn default_user_notify_props() -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("channel", "true"),
        ("comments", "never"),
        ("desktop", "mention"),
        ("desktop_sound", "true"),
        ("email", "true"),
        ("first_name", "false"),
        ("mention_keys", ""),
        ("push", "mention"),
        ("push_status", "away"),
    ] {
        m.insert(k.into(), Value::from(v));
    }
    m
}

pub(crate) fn default_channel_notify_props() -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("desktop", "default"),
        ("email", "default"),
        ("mark_unread", "all"),
        ("push", "default"),
        ("ignore_channel_mentions", "default"),
    ] {
        m.insert(k.into(), Value::from(v));
    }
    m
}

pub(crate) fn default_timezone() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("automaticTimezone".into(), Value::from(""));
    m.insert("manualTimezone".into(), Value::from(""));
    m.insert("useAutomaticTimezone".into(), Value::from("true"));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_channel() -> Store {
        let mut s = Store::default();
        s.channels.insert(
            "c".into(),
            ChannelRec {
                channel: Channel {
                    id: "c".into(),
                    channel_type: "O".into(),
                    ..Channel::default()
                },
                members: HashMap::new(),
                posts: Vec::new(),
            },
        );
        s
    }

    fn np(msg: &str, root: &str) -> NewPost {
        NewPost {
            user_id: "u".into(),
            channel_id: "c".into(),
            root_id: root.into(),
            message: msg.into(),
            ..NewPost::default()
        }
    }

    #[test]
    fn replies_to_replies_are_rejected() {
        let mut s = store_with_channel();
        let root = s.create_post(np("root", ""), 1).map(|c| c.post).ok();
        let root = root.map(|p| p.id).unwrap_or_default();
        let reply = s.create_post(np("reply", &root), 2).map(|c| c.post.id).ok();
        let reply = reply.unwrap_or_default();
        let err = s.create_post(np("nested", &reply), 3).err();
        assert_eq!(
            err.map(|e| e.id),
            Some("api.post.create_post.root_id.app_error".to_owned())
        );
        assert_eq!(s.posts[&root].post.reply_count, 1);
    }

    #[test]
    fn message_limit_counts_runes() {
        assert!(validate_message(&"é".repeat(POST_MESSAGE_MAX_RUNES)).is_ok());
        let err = validate_message(&"a".repeat(POST_MESSAGE_MAX_RUNES + 1)).err();
        assert_eq!(err.map(|e| e.status), Some(http::StatusCode::BAD_REQUEST));
    }

    #[test]
    fn pending_post_id_dedupes_within_ttl() {
        let mut s = store_with_channel();
        let mut p = np("x", "");
        p.pending_post_id = "u:1".into();
        let a = s.create_post(p.clone(), 1).map(|c| c.post.id).ok();
        let b = s.create_post(p.clone(), 2).ok();
        assert!(b.as_ref().is_some_and(|c| c.duplicate));
        assert_eq!(a, b.map(|c| c.post.id));
        let c = s.create_post(p, 1 + PENDING_POST_TTL_MS).ok();
        assert!(c.is_some_and(|c| !c.duplicate));
    }

    #[test]
    fn split_keeps_every_rune() {
        let text = "x".repeat(POST_MESSAGE_MAX_RUNES * 2 + 5);
        let parts = split_message(&text);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), text);
    }
}
