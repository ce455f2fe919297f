//! What can go wrong while the actor handles a thread's event, and what that means for the
//! event: a retryable error leaves it for another delivery (NAK with backoff, at most
//! [`MAX_DELIVER`] deliveries, the last of which tells the thread it failed); a permanent
//! one ends it (TERM) with a notice in the thread.

use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often JetStream delivers one of a thread's events before the actor gives up on it
/// (with a visible failure in the thread). Set as `max_deliver` on thread consumers.
pub const MAX_DELIVER: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the event could not be decoded")]
    Undecodable(#[source] proto::Error),
    #[error("the session's record could not be read or written")]
    Records(#[from] crate::records::Error),
    #[error("a reply could not be published")]
    Replies(#[from] crate::replies::Error),
    #[error("the session's container or process could not start")]
    Runtime(#[from] crate::runtime::Error),
    #[error("the session's checkpoint could not be read")]
    Checkpoint(#[source] object_store::Error),
    #[error("the session's checkpoint could not be stored")]
    CheckpointStore(#[source] object_store::Error),
    #[error("the session's checkpoint could not be written to or read from a local file")]
    CheckpointFile(#[source] std::io::Error),
    #[error("the thread's events could not be opened")]
    Consumer(#[source] BoxError),
    #[error("the thread's post references could not be read")]
    Posts(#[source] async_nats::jetstream::kv::EntryError),
    #[error("the session is not attached")]
    NotAttached,
}

impl Error {
    /// Whether another delivery of the same event may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Undecodable(_) | Error::NotAttached => false,
            Error::Records(err) => err.is_retryable(),
            Error::Replies(err) => err.is_retryable(),
            Error::Runtime(_)
            | Error::Checkpoint(_)
            | Error::CheckpointStore(_)
            | Error::CheckpointFile(_)
            | Error::Consumer(_)
            | Error::Posts(_) => true,
        }
    }

    /// The `kind` label of `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Undecodable(_) => "undecodable",
            Error::Records(_) => "records",
            Error::Replies(_) => "replies",
            Error::Runtime(_) => "runtime",
            Error::Checkpoint(_) => "checkpoint",
            Error::CheckpointStore(_) => "checkpoint_store",
            Error::CheckpointFile(_) => "checkpoint_file",
            Error::Consumer(_) => "consumer",
            Error::Posts(_) => "posts",
            Error::NotAttached => "not_attached",
        }
    }

    /// A checkpoint refused because the session's files exceed their limit: (size, limit).
    pub fn too_large(&self) -> Option<(u64, u64)> {
        match self {
            Error::Runtime(err) => err.too_large(),
            _ => None,
        }
    }

    /// The error and its causes, for the thread: "what failed: why: why".
    pub fn chain(&self) -> String {
        common::error_chain(self)
    }

    pub(crate) fn consumer(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Consumer(Box::new(err))
    }
}

/// The wait before delivery `delivered + 1` of an event whose handling failed: doubling
/// from half a second, at most 30 s.
pub fn backoff(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_millis(500 * 2u64.pow(exponent)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Message;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(100), Duration::from_secs(30));
        assert_eq!(backoff(0), Duration::from_millis(500));
    }

    #[test]
    fn only_undecodable_events_and_bugs_are_permanent() {
        let undecodable = proto::ChatEvent::decode(&[0xff, 0xff]).unwrap_err();
        assert!(!Error::Undecodable(undecodable).is_retryable());
        assert!(!Error::NotAttached.is_retryable());
        let io = std::io::Error::other("nats down");
        assert!(Error::consumer(io).is_retryable());
    }
}
