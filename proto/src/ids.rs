//! Typed identifiers. Mattermost ids are 26-character strings; ours are strings too, but
//! never bare: a `ThreadId` cannot be passed where a `PostId` is expected.
//!
//! Ids become NATS subject tokens (`<p>.events.<thread>`), consumer names (`t-<thread>`)
//! and KV keys (`post.<id>`), where `.` separates tokens, `*` and `>` are wildcards and
//! whitespace ends a subject: an id from outside (Mattermost, a request, a subject) is
//! read with `parse`, which refuses anything but [`ID_CHARS`] within [`MAX_ID_LEN`] bytes
//! with an [`IdError`]. `new` is for ids this fleet made itself (uuids, derived names).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id accepted from outside, in bytes. Mattermost ids are 26; ours (uuids,
/// `<hostname>-<n>`) stay well below.
pub const MAX_ID_LEN: usize = 128;

/// What an id may hold besides ASCII letters and digits: characters valid in a NATS
/// subject token, a consumer name and a KV key alike.
pub const ID_CHARS: &str = "-_=";

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; at most {max} are accepted")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {id:?} contains {found:?}; ids are ASCII letters, digits, `-`, `_` and `=`")]
    BadChar {
        kind: &'static str,
        id: String,
        found: char,
    },
}

/// Checks `id` as a token (see [`IdError`]). `kind` names it in the error.
pub fn check_token(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    if let Some(found) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ID_CHARS.contains(*c)))
    {
        let shown: String = id.chars().take(40).collect();
        return Err(IdError::BadChar {
            kind,
            id: shown,
            found,
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub String);

        impl $name {
            /// An id this fleet made itself. Text from outside goes through `parse`.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// An id read from outside: refused unless it is safe as a NATS subject token
            /// and KV key.
            pub fn parse(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check_token(stringify!($name), &id)?;
                Ok(Self(id))
            }

            /// Whether this id is safe as a subject token and KV key.
            pub fn check(&self) -> Result<(), IdError> {
                check_token(stringify!($name), &self.0)
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
    /// Both are ids already checked (or made) as `PostId`s.
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What NATS accepts as one subject token, and as a KV key (`nats-server`'s
    /// `validKeyRe` `^[-/_=\.a-zA-Z0-9]+$`), and as a consumer name (no `.`, `*`, `>`, `/`,
    /// `\\`, whitespace).
    fn nats_safe(id: &str) -> bool {
        let token =
            !id.is_empty() && !id.contains(['.', '*', '>']) && !id.chars().any(char::is_whitespace);
        let key = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b));
        let consumer = !id.contains(['/', '\\']);
        token && key && consumer
    }

    #[test]
    fn mattermost_ids_and_ours_are_accepted() {
        for id in [
            "o9p3tf1d5pgzjfbrw3e1ymqwmo",
            "0190c0de-7a0b-7cc1-9e8f-1234567890ab",
            "worker-host-1",
            "notice-action-x",
            "a=b_c",
        ] {
            assert_eq!(ThreadId::parse(id).map(|t| t.0), Ok(id.to_owned()));
        }
    }

    #[test]
    fn what_would_change_a_subject_is_refused_with_its_kind() {
        assert_eq!(
            ThreadId::parse(""),
            Err(IdError::Empty { kind: "ThreadId" })
        );
        for (id, found) in [
            ("a.b", '.'),
            ("a*", '*'),
            (">", '>'),
            ("a b", ' '),
            ("a\nb", '\n'),
            ("a/b", '/'),
            ("ünï", 'ü'),
        ] {
            assert!(
                matches!(PostId::parse(id), Err(IdError::BadChar { kind: "PostId", found: f, .. }) if f == found),
                "{id:?}"
            );
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            WorkerId::parse(long),
            Err(IdError::TooLong {
                kind: "WorkerId",
                len: MAX_ID_LEN + 1,
                max: MAX_ID_LEN
            })
        );
        assert!(WorkerId::parse("a".repeat(MAX_ID_LEN)).is_ok());
    }

    proptest! {
        /// Whatever the text, what `parse` accepts is safe as a subject token, a consumer
        /// name and a KV key, and every such text of bounded length is accepted.
        #[test]
        fn parse_accepts_exactly_the_nats_safe_ids(
            id in prop_oneof!["\\PC{0,140}", "[a-zA-Z0-9._*> /=\t-]{0,140}"]
        ) {
            let parsed = ThreadId::parse(id.clone());
            let safe = nats_safe(&id)
                && id.len() <= MAX_ID_LEN
                && !id.contains(['/'])
                && id.is_ascii();
            prop_assert_eq!(parsed.is_ok(), safe, "{:?}", id);
            if let Ok(t) = parsed {
                prop_assert_eq!(t.check(), Ok(()));
                prop_assert_eq!(t.as_str(), id.as_str());
            }
        }

        #[test]
        fn generated_safe_ids_are_accepted(id in "[A-Za-z0-9_=-]{1,128}") {
            prop_assert!(SessionId::parse(id.clone()).is_ok());
            prop_assert!(UserId::parse(id).is_ok());
        }
    }
}
