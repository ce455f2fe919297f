//! The ccfleet wire format.
//!
//! Every message that crosses NATS is an [`Envelope`]: `{ version, kind, payload }`,
//! serialized with postcard. postcard is positional, so a released version is frozen:
//! fields and enum variants are never reordered, removed or inserted; a change is a new
//! version module next to [`v1`]. Golden bytes of every released version live in
//! `proto/tests/data` and are decoded in CI forever, so fleets with mixed versions can do
//! rolling upgrades.
//!
//! Invariants: this crate does no I/O and knows nothing of tokio; every subject, stream,
//! consumer and bucket name (and every key of the posts bucket) is defined here, in
//! [`names`], and nowhere else; so are the `/claude` verbs and the reactions that act, in
//! [`commands`].

pub mod commands;
pub mod control;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod kv;
pub mod names;
pub mod trace;
pub mod v1;

pub use envelope::{
    CURRENT, Envelope, Error, Kind, MIN_SUPPORTED, Message, pin_write_version, write_version,
};
pub use ids::{
    ChannelId, FileId, IdError, LocalRef, PostId, SessionId, ThreadId, UserId, WorkerId,
};
pub use v1::{ChatEvent, ReplyOp};
