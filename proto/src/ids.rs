//! Typed identifiers. Mattermost ids are 26-character strings; ours are strings too, but
//! never bare: a `ThreadId` cannot be passed where a `PostId` is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }
    };
}

string_id!(
    /// A Mattermost thread: the id of its root post. One thread is one Claude Code session.
    ThreadId
);
string_id!(
    /// A ccfleet session (one per thread, stable across worker migrations).
    SessionId
);
string_id!(
    /// A worker process of the fleet.
    WorkerId
);
string_id!(
    /// A Mattermost post.
    PostId
);
string_id!(
    /// A Mattermost user.
    UserId
);
string_id!(
    /// A Mattermost channel.
    ChannelId
);
string_id!(
    /// A Mattermost file attachment.
    FileId
);

impl ThreadId {
    /// The thread a post belongs to: its root if it is a reply, else the post itself.
    pub fn of_post(post_id: &PostId, root_id: Option<&PostId>) -> Self {
        match root_id {
            Some(root) if !root.0.is_empty() => ThreadId(root.0.clone()),
            _ => ThreadId(post_id.0.clone()),
        }
    }
}

/// A worker-local name for a post it asked the gateway to create. The gateway maps it to
/// the Mattermost post id once the post exists, so a worker can update a post it has not
/// seen the id of yet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LocalRef {
    pub session: SessionId,
    pub seq: u32,
}

impl fmt::Display for LocalRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.session, self.seq)
    }
}
