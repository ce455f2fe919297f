//! The worker: claims Mattermost threads as Claude Code sessions and drives the CLI.
//!
//! Invariants: one owner per thread at a time (a KV lease), each thread's events handled
//! in arrival order (one durable consumer per thread, read only by the lease holder); a
//! prompt is acknowledged only after its turn ended and was checkpointed; workers never
//! call Mattermost, they publish reply operations for the gateway.

pub mod access;
pub mod agent;
pub mod approvals;
pub mod claim;
pub mod ctx;
pub mod directory;
pub mod egress;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod prompt;
pub mod records;
pub mod render;
pub mod replies;
pub mod repo;
pub mod runtime;
pub mod session;
pub mod stats;
pub mod transcript;

pub use fleet::Worker;
