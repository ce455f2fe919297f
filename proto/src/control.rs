//! Operator commands: what the gateway's admin API sends to workers.
//!
//! They travel through NATS like everything else; the gateway only forwards them, the
//! worker decides. Two paths:
//!
//! - stopping a session is a [`v1::ButtonAction`](crate::v1::ButtonAction) with the action
//!   [`ADMIN_STOP_ACTION`] published on the thread's events subject, so it reaches whichever
//!   worker owns the thread, in order with the thread's other events, and survives a
//!   takeover. People cannot forge it: the gateway takes a button's action only from a
//!   context it signed, and it signs no context with this action;
//! - draining a worker is a request on that worker's [`control
//!   subject`](crate::names::Names::worker_control_subject), answered by the worker, as
//!   JSON (like the KV values in [`crate::kv`], readers ignore fields they do not know).

use serde::{Deserialize, Serialize};

/// The button action that stops a thread's session on an operator's request.
pub const ADMIN_STOP_ACTION: &str = "admin_stop";

/// The context of an [`ADMIN_STOP_ACTION`]: who asked (an admin token's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStop {
    pub by: String,
}

/// A request on a worker's control subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum WorkerCommand {
    /// Stop claiming threads; let running turns finish and release every session
    /// (resumable elsewhere); then idle until the process is stopped.
    Drain { by: String },
}

/// A worker's answer on its control subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReply {
    pub worker: String,
    /// Whether the worker is draining (or drained) now.
    pub draining: bool,
    /// Sessions it still owned when it answered.
    pub owned: u64,
}

impl WorkerCommand {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command serializes")
    }

    /// `None` for a command this version does not know.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl WorkerReply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a reply serializes")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_keep_their_json_shape() {
        let drain = WorkerCommand::Drain { by: "ops".into() };
        assert_eq!(
            String::from_utf8(drain.encode()).unwrap(),
            r#"{"command":"drain","by":"ops"}"#
        );
        assert_eq!(WorkerCommand::decode(&drain.encode()), Some(drain));
        assert_eq!(WorkerCommand::decode(br#"{"command":"explode"}"#), None);
        let reply = WorkerReply::decode(br#"{"worker":"w-1","draining":true,"owned":2,"new":1}"#);
        assert_eq!(
            reply,
            Some(WorkerReply {
                worker: "w-1".into(),
                draining: true,
                owned: 2
            })
        );
    }
}
