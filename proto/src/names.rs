//! Every NATS subject, stream, consumer and KV bucket name, in one place.
//!
//! Names hang off a prefix so that several fleets (or several tests) can share one NATS
//! server without seeing each other. Subject tokens and key parts are typed ids; an id
//! from outside is read with its `parse` ([`crate::ids::check_token`]: no `.`, `*`, `>`,
//! whitespace, nothing empty or over-long), so no input can add a token or a wildcard.
//!
//! The keys inside the posts bucket are a contract too (the gateway writes them, the
//! worker reads some back, and a running fleet's bucket holds them across upgrades), so
//! they are built here: [`joined_thread_key`], [`post_thread_key`], [`post_ref_key`],
//! [`post_intent_key`], [`applied_seq_key`].

use crate::ids::{LocalRef, PostId, SessionId, ThreadId, WorkerId};

/// The default prefix of a production fleet.
pub const DEFAULT_PREFIX: &str = "ccfleet";

/// The header that carries the dedupe id of a JetStream publish.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Names {
    /// `prefix` must be a single subject token: ASCII letters, digits, `_` or `-`.
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        debug_assert!(is_token(&prefix), "invalid prefix {prefix:?}");
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn upper(&self) -> String {
        self.prefix.to_ascii_uppercase().replace('-', "_")
    }

    /// The stream of inbound chat events.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// All subjects of the events stream.
    pub fn events_subjects(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The subject of one thread's events.
    pub fn event_subject(&self, thread: &ThreadId) -> String {
        format!("{}.events.{}", self.prefix, thread)
    }

    /// The events subjects as one low-cardinality destination (`<p>.events`), for telemetry:
    /// span names must not carry a thread id.
    pub fn events_destination(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The replies subjects as one low-cardinality destination (`<p>.replies`).
    pub fn replies_destination(&self) -> String {
        format!("{}.replies", self.prefix)
    }

    /// The queue subjects as one low-cardinality destination (`<p>.queue`).
    pub fn queue_destination(&self) -> String {
        format!("{}.queue", self.prefix)
    }

    /// The stream of outbound reply operations.
    pub fn replies_stream(&self) -> String {
        format!("{}_REPLIES", self.upper())
    }

    pub fn replies_subjects(&self) -> String {
        format!("{}.replies.>", self.prefix)
    }

    pub fn reply_subject(&self, thread: &ThreadId) -> String {
        format!("{}.replies.{}", self.prefix, thread)
    }

    /// One-off notices about a thread (e.g. its queue position), outside its session's
    /// sequence.
    pub fn notice_subject(&self, thread: &ThreadId) -> String {
        format!("{}.replies.{}.notice", self.prefix, thread)
    }

    /// The stream of threads waiting for a worker with a free slot.
    pub fn queue_stream(&self) -> String {
        format!("{}_QUEUE", self.upper())
    }

    pub fn queue_subjects(&self) -> String {
        format!("{}.queue.>", self.prefix)
    }

    pub fn queue_subject(&self, thread: &ThreadId) -> String {
        format!("{}.queue.{}", self.prefix, thread)
    }

    /// The shared consumer of the queue, pulled by workers with free slots.
    pub fn claim_consumer(&self) -> String {
        "claim".to_owned()
    }

    /// The shared consumer of the events stream that routes events of unowned threads.
    pub fn dispatch_consumer(&self) -> String {
        "dispatch".to_owned()
    }

    /// The durable consumer delivering one thread's events, in order, to its owner.
    pub fn thread_consumer(&self, thread: &ThreadId) -> String {
        format!("t-{thread}")
    }

    /// Reply operations that exhausted their retries.
    pub fn dead_letter_subject(&self, thread: &ThreadId) -> String {
        format!("{}.dead.{}", self.prefix, thread)
    }

    /// The stream that keeps dead-lettered reply operations for operators to inspect.
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.upper())
    }

    pub fn dead_subjects(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    /// The durable consumer the gateways share to apply replies.
    pub fn egress_consumer(&self) -> String {
        "egress".to_owned()
    }

    /// The durable consumer through which a worker receives its owned threads' events.
    pub fn worker_consumer(&self, worker: &WorkerId) -> String {
        format!("worker-{worker}")
    }

    /// The KV bucket of thread leases (thread → owning worker).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    /// The KV bucket of egress state: local post references → Mattermost post ids, the
    /// last applied sequence of each session, and the threads the bot takes part in.
    pub fn posts_bucket(&self) -> String {
        format!("{}_posts", self.prefix)
    }

    /// The leases key of the gateway replica currently applying replies.
    pub fn egress_leader_key(&self) -> &'static str {
        "egress-leader"
    }

    /// Where one worker answers operators' commands ([`crate::control::WorkerCommand`]);
    /// core NATS request/reply, outside every stream.
    pub fn worker_control_subject(&self, worker: &WorkerId) -> String {
        format!("{}.control.{}", self.prefix, worker)
    }

    /// The KV bucket of live workers and their free capacity.
    pub fn workers_bucket(&self) -> String {
        format!("{}_workers", self.prefix)
    }

    /// The KV bucket of the user directory the gateway keeps for workers (workers never
    /// call Mattermost): configured approvers and allowed users, pinned to user ids
    /// ([`crate::kv::Directory`] under [`DIRECTORY_KEY`]).
    pub fn directory_bucket(&self) -> String {
        format!("{}_directory", self.prefix)
    }
}

/// Directory-bucket key of the configured users' pins ([`crate::kv::Directory`]).
pub const DIRECTORY_KEY: &str = "configured-users";

/// Posts-bucket key marking a thread the bot takes part in (value `1`), so later replies
/// in it are forwarded.
pub fn joined_thread_key(thread: &ThreadId) -> String {
    format!("thread.{thread}")
}

/// Posts-bucket key of a post the bot wrote; the value is its thread's id.
pub fn post_thread_key(post: &PostId) -> String {
    format!("post.{post}")
}

/// Posts-bucket key of a local post reference; the value is the Mattermost post id.
/// `part` counts continuation posts of a split message; part 0 is the post itself (the
/// one buttons and reactions sit on).
pub fn post_ref_key(local: &LocalRef, part: usize) -> String {
    format!("ref.{}.{}.{part}", local.session, local.seq)
}

/// Posts-bucket key written just before a create of `post_ref_key(local, part)` is sent:
/// once it exists, an earlier attempt may have created the post (value: Unix ms, text).
pub fn post_intent_key(local: &LocalRef, part: usize) -> String {
    format!("intent.{}.{}.{part}", local.session, local.seq)
}

/// Posts-bucket key marking a post an operation of which Mattermost refused for good, once
/// the thread was told (value `1`): later refusals of the same post are dead-lettered
/// without another note.
pub fn refused_post_key(local: &LocalRef) -> String {
    format!("refused.{}.{}", local.session, local.seq)
}

/// Posts-bucket key of a session's last applied reply `seq` (decimal text).
pub fn applied_seq_key(session: &SessionId) -> String {
    format!("applied.{session}")
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What NATS KV accepts as a key (`nats-server` `validKeyRe`, without the leading or
    /// trailing `.` it also refuses).
    fn is_kv_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    #[test]
    fn posts_keys_keep_their_released_shape() {
        // Live buckets hold these keys: changing one strands what a fleet already wrote.
        let local = LocalRef {
            session: SessionId::from("s1"),
            seq: 7,
        };
        assert_eq!(joined_thread_key(&ThreadId::from("abc")), "thread.abc");
        assert_eq!(post_thread_key(&PostId::from("p1")), "post.p1");
        assert_eq!(post_ref_key(&local, 0), "ref.s1.7.0");
        assert_eq!(post_ref_key(&local, 2), "ref.s1.7.2");
        assert_eq!(applied_seq_key(&SessionId::from("s1")), "applied.s1");
        assert_eq!(refused_post_key(&local), "refused.s1.7");
        assert_eq!(post_intent_key(&local, 1), "intent.s1.7.1");
    }

    proptest! {
        #[test]
        fn posts_keys_are_valid_and_never_collide(
            a in "[a-z0-9]{1,26}",
            b in "[a-z0-9]{1,26}",
            seq in any::<u32>(),
            part in 0usize..16,
        ) {
            let local = LocalRef { session: SessionId::new(a.clone()), seq };
            let keys = [
                joined_thread_key(&ThreadId::new(a.clone())),
                post_thread_key(&PostId::new(a.clone())),
                post_ref_key(&local, part),
                applied_seq_key(&SessionId::new(a.clone())),
                refused_post_key(&local),
            ];
            for key in &keys {
                prop_assert!(is_kv_key(key), "{key}");
            }
            // Kinds never share a key, even for the same id.
            for (i, x) in keys.iter().enumerate() {
                for y in &keys[i + 1..] {
                    prop_assert_ne!(x, y);
                }
            }
            // Within a kind, different ids give different keys.
            prop_assert_eq!(
                joined_thread_key(&ThreadId::new(a.clone())) == joined_thread_key(&ThreadId::new(b.clone())),
                a == b
            );
            let other = LocalRef { session: SessionId::new(b.clone()), seq };
            prop_assert_eq!(post_ref_key(&local, part) == post_ref_key(&other, part), a == b);
            prop_assert_eq!(refused_post_key(&local) == refused_post_key(&other), a == b);
        }
    }

    #[test]
    fn names_hang_off_the_prefix() {
        let names = Names::new("t-1");
        assert_eq!(names.events_stream(), "T_1_EVENTS");
        assert_eq!(
            names.event_subject(&ThreadId::from("abc")),
            "t-1.events.abc"
        );
        assert_eq!(names.replies_subjects(), "t-1.replies.>");
        assert_eq!(names.leases_bucket(), "t-1_leases");
    }
}
