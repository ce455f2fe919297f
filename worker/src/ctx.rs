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
    pub claimer: Mutex<Claimer>,
    /// Signalled when a slot frees up.
    pub slot_freed: Notify,
    /// Asks one idle session to sleep so a queued thread gets its slot.
    pub evict_idle: Notify,
    pub lease_ttl: Duration,
}
