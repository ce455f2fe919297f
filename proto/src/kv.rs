//! The values that cross processes through NATS KV buckets. Workers and gateways of
//! different versions read each other's values during a rolling upgrade, so their formats
//! are a contract like the wire format: golden files in `proto/tests/data/kv` are read by
//! every later version.
//!
//! - leases bucket: a thread's (or the egress leader's) lease value is the holder's
//!   [`WorkerId`] (or gateway id) as UTF-8 text;
//! - workers bucket: a worker's [`Heartbeat`], as JSON;
//! - posts bucket: `thread.<root>` → `1`, `post.<id>` → the thread id, `ref.<local>` → the
//!   Mattermost post id, `applied.<session>` → the last applied `seq` in decimal;
//! - directory bucket: `configured-users` → the [`Directory`], as JSON.
//!
//! Readers ignore JSON fields they do not know, so a newer writer may add some.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{UserId, WorkerId};

/// What a worker publishes about its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Slots neither used nor reserved.
    pub free: u64,
    /// Threads it owns.
    pub owned: u64,
    /// Its `worker.max_sessions`.
    pub max: u64,
}

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a heartbeat serializes")
    }

    /// `None` for a value this version cannot read.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A lease's holder, from its value.
pub fn lease_holder(value: &[u8]) -> WorkerId {
    WorkerId::new(String::from_utf8_lossy(value).into_owned())
}

/// A sequence number stored as decimal text (`applied.<session>`); `None` if unreadable.
pub fn decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The user a configured entry (`worker.approvers`, `worker.allowed_users`) stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The Mattermost user id: what authorizes.
    pub id: UserId,
    /// The user's name when the gateway last looked (shown, never compared); empty when
    /// the user could not be read (deleted).
    #[serde(default)]
    pub username: String,
}

/// The configured users' pins, written by gateways, read by workers: entry (`alice`, or
/// `id:<id>`, as `common::config::UserEntry` normalizes it) → the user it stands for. An
/// entry is pinned once, to the user its name named then, and keeps that user through
/// renames; an entry missing here names nobody yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub pins: BTreeMap<String, Pin>,
}

impl Directory {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a directory serializes")
    }

    /// `None` for a value this version cannot read.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The user `entry` stands for, if pinned.
    pub fn user_of(&self, entry: &str) -> Option<&UserId> {
        self.pins.get(entry).map(|pin| &pin.id)
    }
}
