//! Claiming threads: the sans-IO decisions ([`state`]) and the I/O shell beside them —
//! [`dispatch`] (route each event), [`pull`] (claim queued threads while slots are free),
//! [`heartbeat`] (publish free slots), [`janitor`] (re-queue threads of dead workers) and
//! [`queue`] (enqueue, pending events, shared consumers). The session actor
//! ([`crate::session`]) keeps the lease once a thread is claimed.

pub(crate) mod dispatch;
pub(crate) mod heartbeat;
pub(crate) mod janitor;
pub(crate) mod pull;
pub(crate) mod queue;
pub mod state;

/// Why routing, claiming or the janitor failed (retried by their loops).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease lookup failed")]
    Lease(#[source] async_nats::jetstream::kv::EntryError),
    #[error(transparent)]
    Records(#[from] crate::records::Error),
    #[error("could not queue the thread")]
    Queue(#[source] async_nats::jetstream::context::PublishError),
    #[error(transparent)]
    Replies(#[from] crate::replies::Error),
}
