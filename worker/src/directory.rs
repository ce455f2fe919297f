//! Who the configured approvers and allowed users are, by Mattermost user id.
//!
//! Workers never call Mattermost: gateways pin each configured username to the user it
//! names and keep the pins in the directory bucket (`proto::kv::Directory`, see the
//! gateway's `directory`). This reads them through a short cache; [`ids_of`] is the
//! sans-IO part: an `id:<id>` entry is its id, a username entry the id it is pinned to,
//! and an entry not pinned (yet) stands for nobody. Nothing here compares usernames.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use common::config::UserEntry;
use proto::UserId;
use proto::kv::Directory as Pins;
use proto::names::DIRECTORY_KEY;

/// How long a read of the pins is used before the bucket is read again.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// The ids `entries` (configuration text) stand for under `pins`.
pub fn ids_of(entries: &[String], pins: &Pins) -> BTreeSet<UserId> {
    entries
        .iter()
        .filter_map(|entry| match UserEntry::parse(entry)? {
            UserEntry::Id(id) => Some(UserId::new(id)),
            UserEntry::Name(name) => pins.user_of(&name).cloned(),
        })
        .collect()
}

/// The pins, read from the directory bucket at most every [`FRESH_FOR`].
pub struct Directory {
    kv: kv::Store,
    last: Mutex<Option<(Instant, Arc<Pins>)>>,
}

impl Directory {
    pub fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            last: Mutex::new(None),
        }
    }

    /// The current pins. A failed read uses the last ones read (or none: then only `id:`
    /// entries authorize anyone), logged.
    pub async fn pins(&self) -> Arc<Pins> {
        let cached = self.last.lock().expect("directory lock").clone();
        if let Some((at, pins)) = &cached
            && at.elapsed() < FRESH_FOR
        {
            return pins.clone();
        }
        let read = match self.kv.get(DIRECTORY_KEY).await {
            Ok(Some(bytes)) => Pins::decode(&bytes),
            Ok(None) => Some(Pins::default()),
            Err(err) => {
                tracing::warn!(error = %err, "could not read the user directory; using the last pins read");
                None
            }
        };
        match read {
            Some(pins) => {
                let pins = Arc::new(pins);
                *self.last.lock().expect("directory lock") = Some((Instant::now(), pins.clone()));
                pins
            }
            None => cached.map(|(_, pins)| pins).unwrap_or_default(),
        }
    }

    /// The ids of `worker.approvers`, now.
    pub async fn approvers(&self, config: &common::config::WorkerConfig) -> BTreeSet<UserId> {
        ids_of(&config.approvers, &*self.pins().await)
    }

    /// The ids of `worker.allowed_users` now; `None` when the list is empty (everyone).
    pub async fn allowed_users(
        &self,
        config: &common::config::WorkerConfig,
    ) -> Option<BTreeSet<UserId>> {
        if config.allowed_users.is_empty() {
            return None;
        }
        Some(ids_of(&config.allowed_users, &*self.pins().await))
    }
}

#[cfg(test)]
mod tests {
    use proto::kv::Pin;

    use super::*;

    #[test]
    fn entries_stand_for_their_pinned_ids_only() {
        let mut pins = Pins::default();
        pins.pins.insert(
            "carol".into(),
            Pin {
                id: UserId::from("u1"),
                username: "carol2".into(),
            },
        );
        let entries = vec![
            "@carol".to_owned(),
            "carol2".to_owned(),
            "ghost".to_owned(),
            "id:k7yq3nbgwjbsdgoqhfbnwz1n3r".to_owned(),
        ];
        assert_eq!(
            ids_of(&entries, &pins),
            BTreeSet::from([
                UserId::from("u1"),
                UserId::from("k7yq3nbgwjbsdgoqhfbnwz1n3r")
            ])
        );
    }
}
