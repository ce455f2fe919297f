//! What every part of the worker shares: configuration, clients, the claiming core and
//! the signals between the claim loop and the session actors.

use std::sync::Mutex;
use std::time::Duration;

use proto::WorkerId;
use proto::names::Names;
use tokio::sync::Notify;

use crate::claim::state::Claimer;
use crate::records::Records;
use crate::runtime::Runtime;
use common::config::Config;
use common::nats::Fabric;

/// What every part of the worker shares.
pub struct Ctx {
    pub config: Config,
    pub id: WorkerId,
    pub names: Names,
    pub fabric: Fabric,
    pub records: Records,
    pub store: common::store::Store,
    pub runtime: Runtime,
    pub signer: common::signing::Signer,
    /// Configured approvers and allowed users by user id (the gateway's pins).
    pub directory: crate::directory::Directory,
    pub claimer: Mutex<Claimer>,
    /// Signalled when a slot frees up.
    pub slot_freed: Notify,
    /// Asks one idle session to sleep so a queued thread gets its slot.
    pub evict_idle: Notify,
    pub lease_ttl: Duration,
    /// Which background loops are down now (served at `/readyz`).
    pub health: std::sync::Arc<Health>,
    /// What the worker counts (served at `/metrics`).
    pub stats: crate::stats::Stats,
    /// The repositories sessions start from and push to.
    pub repos: crate::repo::Repos,
}

/// The worker's background loops that are down (each restarts itself with backoff): the
/// worker is not ready while one is.
#[derive(Debug, Default)]
pub struct Health {
    down: Mutex<std::collections::BTreeSet<&'static str>>,
}

impl Health {
    pub fn set_down(&self, part: &'static str, down: bool) {
        let mut set = self.down.lock().expect("health lock");
        if down {
            set.insert(part);
        } else {
            set.remove(part);
        }
    }

    /// The parts that are down, sorted; empty when ready.
    pub fn down(&self) -> Vec<&'static str> {
        self.down
            .lock()
            .expect("health lock")
            .iter()
            .copied()
            .collect()
    }
}
