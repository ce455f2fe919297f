//! The user directory workers authorize by: `worker.approvers` and `worker.allowed_users`
//! pinned to Mattermost user ids, kept in the directory bucket (`proto::kv::Directory`).
//! Workers never call Mattermost, so the gateway resolves for them.
//!
//! A username entry is pinned once, to the user that name belongs to when the gateway
//! first finds it, and from then on follows that *user* (looked up by id each refresh, so
//! its current name is known), never the name: after `alice` is renamed `alice2`, whoever
//! takes the name `alice` gains nothing, and `alice2` keeps her rights. Re-resolving names
//! would hand the rights to the new holder of a freed name. An `id:<id>` entry is its id.
//! [`refresh`] is the sans-IO decision; [`Directory::run`] the loop around it. Every
//! gateway replica runs it; writes are compare-and-set on the key's revision, so two
//! replicas never pin one entry to different users.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::kv;
use common::config::UserEntry;
use proto::UserId;
use proto::kv::{Directory as Pins, Pin};
use proto::names::DIRECTORY_KEY;
use tokio_util::sync::CancellationToken;

use crate::mattermost;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read the directory bucket")]
    Read(#[source] async_nats::jetstream::kv::EntryError),
    #[error("could not look users up in Mattermost")]
    Mattermost(#[source] mattermost::Error),
}

/// What a refresh found worth telling an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A username entry was pinned to the user that has the name now.
    Pinned { entry: String, id: UserId },
    /// The pinned user now has another name; the entry still stands for that user.
    Renamed { entry: String, now: String },
    /// Someone else has the entry's name now; they gain nothing from it.
    NameTaken { entry: String, by: UserId },
    /// No user has the name (yet): the entry stands for nobody.
    Unknown { entry: String },
}

/// The entries' normalized keys, as workers look them up.
pub fn entry_key(entry: &UserEntry) -> String {
    match entry {
        UserEntry::Name(name) => name.clone(),
        UserEntry::Id(id) => format!("id:{id}"),
    }
}

/// The next pins from the current ones and what Mattermost answered now: `by_name` maps
/// a (lower-case) username to its user's id, `by_id` a user id to its current username.
/// Pins of entries no longer configured are kept (re-adding the entry later must not pin
/// someone else).
pub fn refresh(
    entries: &[UserEntry],
    current: &Pins,
    by_name: &HashMap<String, UserId>,
    by_id: &HashMap<UserId, String>,
) -> (Pins, Vec<Note>) {
    let mut next = current.clone();
    let mut notes = Vec::new();
    for entry in entries {
        let key = entry_key(entry);
        match entry {
            UserEntry::Id(id) => {
                let id = UserId::new(id.as_str());
                let username = by_id.get(&id).cloned().unwrap_or_default();
                next.pins.insert(key, Pin { id, username });
            }
            UserEntry::Name(name) => match current.pins.get(&key) {
                Some(pin) => {
                    let now = by_id.get(&pin.id).cloned().unwrap_or_default();
                    if !now.is_empty() && now != *name && now != pin.username {
                        notes.push(Note::Renamed {
                            entry: key.clone(),
                            now: now.clone(),
                        });
                    }
                    if let Some(other) = by_name.get(name).filter(|other| **other != pin.id)
                        && by_id.get(&pin.id) != Some(name)
                    {
                        notes.push(Note::NameTaken {
                            entry: key.clone(),
                            by: other.clone(),
                        });
                    }
                    // A user that could not be read keeps its pin and its last name.
                    let username = if now.is_empty() {
                        pin.username.clone()
                    } else {
                        now
                    };
                    next.pins.insert(
                        key,
                        Pin {
                            id: pin.id.clone(),
                            username,
                        },
                    );
                }
                None => match by_name.get(name) {
                    Some(id) => {
                        notes.push(Note::Pinned {
                            entry: key.clone(),
                            id: id.clone(),
                        });
                        next.pins.insert(
                            key,
                            Pin {
                                id: id.clone(),
                                username: name.clone(),
                            },
                        );
                    }
                    None => notes.push(Note::Unknown { entry: key }),
                },
            },
        }
    }
    (next, notes)
}

/// What one refresh did.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub notes: Vec<Note>,
    /// Whether it wrote new pins.
    pub wrote: bool,
}

/// The loop that keeps the directory current.
pub struct Directory {
    pub kv: kv::Store,
    pub mattermost: mattermost::Client,
    /// `worker.approvers` and `worker.allowed_users`, parsed (validated at start).
    pub entries: Vec<UserEntry>,
    pub every: Duration,
}

impl Directory {
    pub fn from_config(
        config: &common::config::Config,
        kv: kv::Store,
        mattermost: mattermost::Client,
    ) -> Self {
        let entries: BTreeSet<UserEntry> = config
            .worker
            .approvers
            .iter()
            .chain(&config.worker.allowed_users)
            .filter_map(|e| UserEntry::parse(e))
            .collect();
        Self {
            kv,
            mattermost,
            entries: entries.into_iter().collect(),
            every: Duration::from_secs(config.gateway.directory_refresh_s),
        }
    }

    /// Refreshes every `every` until `cancel`; a failed refresh is logged and tried again
    /// at the next tick (the pins in the bucket stay as they were meanwhile).
    pub async fn run(self, cancel: CancellationToken) {
        if self.entries.is_empty() {
            return;
        }
        let mut first = true;
        loop {
            match self.refresh_once().await {
                Ok(refreshed) => {
                    // What stays the same is told once, not every tick.
                    if first || refreshed.wrote {
                        refreshed.notes.iter().for_each(log);
                    }
                    first = false;
                }
                Err(err) => tracing::warn!(
                    error = %common::error_chain(&err),
                    "could not refresh the user directory; authorizing by the pins already stored"
                ),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One refresh: read the pins, ask Mattermost, write what changed.
    pub async fn refresh_once(&self) -> Result<Refreshed, Error> {
        let stored = self.kv.entry(DIRECTORY_KEY).await.map_err(Error::Read)?;
        let (current, revision) = match &stored {
            Some(entry) if entry.operation == kv::Operation::Put => {
                match Pins::decode(&entry.value) {
                    Some(pins) => (pins, Some(entry.revision)),
                    None => {
                        // A newer gateway's format: leave it to that one.
                        tracing::warn!(
                            "the user directory was written by a newer version; not touching it"
                        );
                        return Ok(Refreshed::default());
                    }
                }
            }
            Some(entry) => (Pins::default(), Some(entry.revision)),
            None => (Pins::default(), None),
        };
        let names: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                UserEntry::Name(name) => Some(name.clone()),
                UserEntry::Id(_) => None,
            })
            .collect();
        let mut ids: BTreeSet<String> = current
            .pins
            .values()
            .map(|pin| pin.id.as_str().to_owned())
            .collect();
        ids.extend(self.entries.iter().filter_map(|e| match e {
            UserEntry::Id(id) => Some(id.clone()),
            UserEntry::Name(_) => None,
        }));
        let ids: Vec<String> = ids.into_iter().collect();
        let (named, found) = tokio::join!(
            async {
                if names.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.mattermost.users_by_usernames(&names).await
                }
            },
            async {
                if ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.mattermost.users_by_ids(&ids).await
                }
            },
        );
        // Mattermost's answers are ids only if they are ids (`proto::ids`).
        let by_name: HashMap<String, UserId> = named
            .map_err(Error::Mattermost)?
            .into_iter()
            .filter_map(|u| Some((u.username.to_ascii_lowercase(), UserId::parse(u.id).ok()?)))
            .collect();
        let by_id: HashMap<UserId, String> = found
            .map_err(Error::Mattermost)?
            .into_iter()
            .filter_map(|u| Some((UserId::parse(u.id).ok()?, u.username.to_ascii_lowercase())))
            .collect();
        let (next, notes) = refresh(&self.entries, &current, &by_name, &by_id);
        if revision.is_some() && next == current {
            return Ok(Refreshed {
                notes,
                wrote: false,
            });
        }
        let value = next.encode().into();
        let written = match revision {
            Some(revision) => self
                .kv
                .update(DIRECTORY_KEY, value, revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => self
                .kv
                .create(DIRECTORY_KEY, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => Ok(Refreshed { notes, wrote: true }),
            // Another gateway wrote first (or NATS failed): the next tick reads theirs.
            Err(err) => {
                tracing::debug!(error = %err, "user directory not written this time");
                Ok(Refreshed {
                    notes,
                    wrote: false,
                })
            }
        }
    }
}

/// Logs a note at the level it deserves.
pub fn log(note: &Note) {
    match note {
        Note::Pinned { entry, id } => {
            tracing::info!(entry, user_id = %id, "configured user pinned to their user id")
        }
        Note::Renamed { entry, now } => tracing::warn!(
            entry,
            now,
            "a configured user was renamed; they keep their rights (by id); update the configuration to the new name"
        ),
        Note::NameTaken { entry, by } => tracing::warn!(
            entry,
            by = %by,
            "another user now has a configured username; they get none of its rights"
        ),
        Note::Unknown { entry } => tracing::warn!(
            entry,
            "no Mattermost user has this configured username; it authorizes nobody until one does"
        ),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(s: &str) -> UserId {
        UserId::new(s)
    }

    #[test]
    fn a_name_is_pinned_once_and_its_user_followed_through_renames() {
        let entries = vec![UserEntry::Name("carol".into())];
        let by_name = HashMap::from([("carol".to_owned(), id("u1"))]);
        let (pins, notes) = refresh(&entries, &Pins::default(), &by_name, &HashMap::new());
        assert_eq!(pins.user_of("carol"), Some(&id("u1")));
        assert_eq!(
            notes,
            vec![Note::Pinned {
                entry: "carol".into(),
                id: id("u1")
            }]
        );
        // carol is renamed carol2; mallory (u9) takes the name carol.
        let by_name = HashMap::from([("carol".to_owned(), id("u9"))]);
        let by_id = HashMap::from([(id("u1"), "carol2".to_owned())]);
        let (pins, notes) = refresh(&entries, &pins, &by_name, &by_id);
        assert_eq!(pins.user_of("carol"), Some(&id("u1")));
        assert_eq!(pins.pins["carol"].username, "carol2");
        assert_eq!(
            notes,
            vec![
                Note::Renamed {
                    entry: "carol".into(),
                    now: "carol2".into()
                },
                Note::NameTaken {
                    entry: "carol".into(),
                    by: id("u9")
                }
            ]
        );
        // Nothing new: nothing to tell.
        let (again, notes) = refresh(&entries, &pins, &by_name, &by_id);
        assert_eq!(again, pins);
        assert_eq!(
            notes,
            vec![Note::NameTaken {
                entry: "carol".into(),
                by: id("u9")
            }]
        );
    }

    #[test]
    fn unknown_names_stand_for_nobody_and_ids_for_themselves() {
        let entries = vec![
            UserEntry::Name("ghost".into()),
            UserEntry::Id("k7yq3nbgwjbsdgoqhfbnwz1n3r".into()),
        ];
        let (pins, notes) = refresh(&entries, &Pins::default(), &HashMap::new(), &HashMap::new());
        assert_eq!(pins.user_of("ghost"), None);
        assert_eq!(
            pins.user_of("id:k7yq3nbgwjbsdgoqhfbnwz1n3r"),
            Some(&id("k7yq3nbgwjbsdgoqhfbnwz1n3r"))
        );
        assert_eq!(
            notes,
            vec![Note::Unknown {
                entry: "ghost".into()
            }]
        );
    }

    proptest! {
        /// Over any sequence of renames and name grabs, an entry pinned once stays pinned
        /// to the same user.
        #[test]
        fn a_pin_never_moves_to_another_user(
            rounds in proptest::collection::vec(
                (proptest::option::of(0u8..4), proptest::option::of("[a-d]{1,2}")),
                1..12,
            ),
        ) {
            let entries = vec![UserEntry::Name("a".into())];
            let mut pins = Pins::default();
            let mut first: Option<UserId> = None;
            for (holder, rename) in rounds {
                // `holder`: which user has the name `a` now (if any); the pinned user's
                // current name is `rename` (if it can be read).
                let by_name: HashMap<String, UserId> = holder
                    .map(|h| ("a".to_owned(), id(&format!("u{h}"))))
                    .into_iter()
                    .collect();
                let by_id: HashMap<UserId, String> = first
                    .iter()
                    .filter_map(|u| rename.clone().map(|n| (u.clone(), n)))
                    .collect();
                let (next, _) = refresh(&entries, &pins, &by_name, &by_id);
                match &first {
                    Some(user) => prop_assert_eq!(next.user_of("a"), Some(user)),
                    None => {
                        prop_assert_eq!(next.user_of("a"), by_name.get("a"));
                        first = next.user_of("a").cloned();
                    }
                }
                pins = next;
            }
        }
    }
}
