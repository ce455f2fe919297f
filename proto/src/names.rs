//! Every NATS subject, stream, consumer and KV bucket name, in one place.
//!
//! Names hang off a prefix so that several fleets (or several tests) can share one NATS
//! server without seeing each other. Subject tokens are Mattermost ids (lowercase
//! alphanumerics), which are valid subject tokens as they are.

use crate::ids::{ThreadId, WorkerId};

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

    /// The KV bucket of live workers and their free capacity.
    pub fn workers_bucket(&self) -> String {
        format!("{}_workers", self.prefix)
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

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
