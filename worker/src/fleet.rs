//! The worker process: routes events of unowned threads, claims queued threads while it
//! has free slots, runs one [`crate::session::ThreadActor`] per owned thread, re-queues
//! threads whose owner died, and drains on shutdown.
//!
//! Mechanism (see ARCHITECTURE.md, "Claiming"): session leases in a KV bucket
//! (create-if-absent, renewed every third of the TTL, expiring with the bucket's max age),
//! a shared FIFO queue of threads waiting for a slot (a work-queue stream) pulled only by
//! workers with free slots, and one durable consumer per thread that delivers the thread's
//! events in order to whichever worker holds its lease.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use proto::{ThreadId, WorkerId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::claim::dispatch::dispatch_loop;
use crate::claim::heartbeat::{beat, heartbeat_loop};
use crate::claim::janitor::janitor_loop;
use crate::claim::pull::{ThreadAssignment, claim_loop};
use crate::claim::state::Claimer;
use crate::ctx::Ctx;
use crate::records::Records;
use crate::runtime::Runtime;
use crate::session::{ActorExit, ThreadActor};
use common::config::Config;
use common::nats::Topology;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NATS is unavailable")]
    Nats(#[from] common::nats::Error),
    #[error("PostgreSQL is unavailable")]
    Pg(#[from] common::pg::Error),
    #[error("object store is unavailable")]
    Store(#[from] common::store::Error),
    #[error("the agent runtime could not start")]
    Runtime(#[from] crate::runtime::Error),
    #[error("worker.id is empty and no worker slot could be taken in {dir}")]
    WorkerId {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the repositories' git could not be set up")]
    Repos(#[from] crate::repo::git::Error),
    #[error("could not serve metrics on {addr}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "gateway.signing_key is not set: the worker signs the buttons it posts and the gateway verifies them with the same key"
    )]
    NoSigningKey,
    #[error("could not open consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
}

pub struct Worker {
    ctx: Arc<Ctx>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The worker slot behind a default id, locked while the worker lives.
    _slot: Option<std::fs::File>,
}

/// Where default worker ids' slots are locked, under `worker.sessions_dir`.
pub const SLOTS_DIR: &str = ".worker-slots";
/// Slots tried before giving up.
const MAX_SLOTS: usize = 1024;

/// A host name as an id token: anything an id may not hold becomes `-`.
fn host_token(host: &str) -> String {
    let token: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(proto::ids::MAX_ID_LEN - 8)
        .collect();
    if token.is_empty() {
        "worker".to_owned()
    } else {
        token
    }
}

/// The worker id: `worker.id` when set; else `<hostname>-<n>`, stable across restarts.
///
/// `n` is the lowest slot `<sessions_dir>/.worker-slots/<n>.lock` no other live process
/// holds an exclusive lock on; the returned file keeps the lock (released by the kernel
/// when the process ends, even by SIGKILL). So two workers on one host sharing the
/// sessions directory get different ids, and a restarted worker gets its id back (the
/// lowest free slot: with several workers restarting at once two may swap ids, which is
/// harmless — an id names a live process, and each restart cleans up after its id).
/// A host name's dots (a fully qualified name) and anything else an id may not hold
/// become `-`, so the id is a subject token (`proto::ids`).
pub fn worker_id(
    configured: &str,
    host: &str,
    sessions_dir: &std::path::Path,
) -> Result<(WorkerId, Option<std::fs::File>), Error> {
    if !configured.is_empty() {
        // Checked with the configuration (`worker.id`).
        return Ok((WorkerId::new(configured.to_owned()), None));
    }
    let dir = sessions_dir.join(SLOTS_DIR);
    let error = |source| Error::WorkerId {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(error)?;
    for n in 1..=MAX_SLOTS {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{n}.lock")))
            .map_err(error)?;
        match file.try_lock() {
            Ok(()) => {
                return Ok((
                    WorkerId::new(format!("{}-{n}", host_token(host))),
                    Some(file),
                ));
            }
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(err)) => return Err(error(err)),
        }
    }
    Err(error(std::io::Error::other(format!(
        "all {MAX_SLOTS} slots are taken"
    ))))
}

pub use crate::runtime::hostname;

impl Worker {
    pub async fn build(config: Config) -> Result<Self, Error> {
        // A weak key was refused with the configuration; an empty one only here, since
        // tools that sign nothing load the same configuration.
        if config.gateway.signing_key.is_empty() {
            return Err(Error::NoSigningKey);
        }
        let (id, slot) = worker_id(&config.worker.id, &hostname(), &config.worker.sessions_dir)?;
        let nats = common::nats::connect(&config.nats, id.as_str()).await?;
        let lease_ttl = Duration::from_secs(config.worker.lease_ttl_s);
        let topology = Topology::from_config(&config.nats, lease_ttl);
        let fabric = common::nats::ensure_fabric(&nats, &topology).await?;
        let pool = common::pg::pool(&config.postgres)?;
        common::pg::migrate(&pool, crate::records::MIGRATIONS).await?;
        let store = common::store::Store::from_config(&config.object_store)?;
        let runtime = Runtime::from_config(
            &config.worker,
            &config.model,
            &config.egress,
            &config.budgets,
            id.as_str(),
            &config.nats.prefix,
            Some(pool.clone()),
        )
        .await?;
        // The workers with a current heartbeat: containers of any other worker of this
        // fleet were left by a dead one (its heartbeat lapses with its leases). Unknown
        // (NATS failed): only this worker's own are removed.
        let alive = match fabric.workers.keys().await {
            Ok(keys) => keys.try_collect::<BTreeSet<String>>().await.ok(),
            Err(_) => None,
        };
        if alive.is_none() {
            tracing::warn!(
                "could not list live workers; cleaning up only this worker's containers"
            );
        }
        match runtime.cleanup_orphans(alive.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed containers left by an earlier run"),
            Err(err) => tracing::warn!(error = %err, "could not clean up orphaned containers"),
        }
        let ctx = Ctx {
            signer: common::signing::Signer::new(config.gateway.signing_key.expose().as_bytes()),
            directory: crate::directory::Directory::new(fabric.directory.clone()),
            claimer: Mutex::new(Claimer::new(id.clone(), config.worker.max_sessions)),
            names: topology.names.clone(),
            records: Records::new(pool),
            slot_freed: Notify::new(),
            evict_idle: Notify::new(),
            stats: crate::stats::Stats::with_model(&config.model.model),
            repos: crate::repo::Repos::new(&config.repositories)?,
            config,
            id,
            fabric,
            store,
            runtime,
            lease_ttl,
            health: std::sync::Arc::default(),
        };
        // Registered before anything can be routed to it, so dispatchers count its slots.
        beat(&ctx).await;
        let ctx = Arc::new(ctx);
        let metrics = Arc::new(crate::metrics::Metrics::new(ctx.clone()));
        Ok(Self {
            ctx,
            metrics,
            _slot: slot,
        })
    }

    /// The worker's metrics (also served on `worker.metrics_listen`).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// The session runtime, e.g. to look at the warm pool.
    pub fn runtime(&self) -> &Runtime {
        &self.ctx.runtime
    }

    pub fn id(&self) -> &WorkerId {
        &self.ctx.id
    }

    /// Runs until `shutdown`, then drains: no new claims, running turns finish (or are
    /// checkpointed) within the grace period, leases are released.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let ctx = self.ctx;
        let mut background = JoinSet::new();
        let addr = ctx.config.worker.metrics_listen.clone();
        if !addr.is_empty() {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| Error::Metrics {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(addr = %addr, "serving metrics");
            let (metrics, health, shutdown) =
                (self.metrics.clone(), ctx.health.clone(), shutdown.clone());
            background.spawn(async move {
                if let Err(err) = crate::metrics::serve(listener, metrics, health, shutdown).await {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "metrics server failed"
                    );
                }
            });
        }
        tracing::info!(worker = %ctx.id, max_sessions = ctx.config.worker.max_sessions, runtime = ?ctx.runtime.kind(), "worker running");
        let stop_intake = CancellationToken::new();
        let drain = CancellationToken::new();
        let mut actors: JoinSet<(ThreadId, ActorExit)> = JoinSet::new();
        let (spawn_tx, mut spawn_rx) = tokio::sync::mpsc::unbounded_channel::<ThreadAssignment>();
        {
            // The warm pool fills while the worker runs and is emptied when intake stops.
            let (ctx, stop) = (ctx.clone(), stop_intake.clone());
            background.spawn(async move { ctx.runtime.run_pool(stop).await });
        }
        // The egress gateway serves until every session's turn has ended (after the drain).
        let egress_stop = CancellationToken::new();
        {
            let (ctx, stop) = (ctx.clone(), egress_stop.clone());
            background.spawn(async move { ctx.runtime.run_egress(stop).await });
        }
        background.spawn(dispatch_loop(ctx.clone(), stop_intake.clone()));
        background.spawn(claim_loop(ctx.clone(), stop_intake.clone(), spawn_tx));
        background.spawn(janitor_loop(ctx.clone(), stop_intake.clone()));
        background.spawn(heartbeat_loop(ctx.clone(), stop_intake.clone()));
        // Operators' commands (admin API). Without it the worker still runs: it cannot be
        // drained remotely, which is logged.
        let mut control = match ctx
            .fabric
            .js
            .client()
            .subscribe(ctx.names.worker_control_subject(&ctx.id))
            .await
        {
            Ok(control) => Some(control),
            Err(err) => {
                tracing::warn!(error = %err, "cannot receive operators' commands");
                None
            }
        };
        let mut drained_by = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(command) = next_command(&mut control) => {
                    match proto::control::WorkerCommand::decode(&command.payload) {
                        Some(proto::control::WorkerCommand::Drain { by }) => {
                            tracing::info!(by = %by, "drain requested by an operator");
                            answer_command(&ctx, &command, true).await;
                            drained_by = Some(by);
                            break;
                        }
                        None => tracing::warn!("unknown operator command ignored"),
                    }
                }
                Some(assignment) = spawn_rx.recv() => {
                    let actor = ThreadActor::new(ctx.clone(), assignment.thread.clone(), assignment.revision);
                    let drain = drain.clone();
                    actors.spawn(async move {
                        let thread = actor.thread().clone();
                        // A panic is a bug, but it must not cost the worker the slot: the
                        // thread comes back either way (its lease lapses; the janitor
                        // re-queues what it left unhandled).
                        let exit = std::panic::AssertUnwindSafe(actor.run(drain))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| ActorExit::Failed("the session actor panicked".into()));
                        (thread, exit)
                    });
                }
                Some(done) = actors.join_next(), if !actors.is_empty() => {
                    handle_actor_exit(&ctx, done);
                }
            }
        }
        tracing::info!("draining");
        ctx.claimer.lock().expect("claimer lock").drain();
        stop_intake.cancel();
        drain.cancel();
        let grace = Duration::from_secs(ctx.config.worker.shutdown_grace_s);
        let finished = tokio::time::timeout(grace, async {
            loop {
                tokio::select! {
                    done = actors.join_next() => match done {
                        Some(done) => handle_actor_exit(&ctx, done),
                        None => break,
                    },
                    // A repeated drain while this one runs is answered, not left to time out.
                    Some(command) = next_command(&mut control) => {
                        answer_command(&ctx, &command, true).await;
                    }
                }
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("grace period over; stopping the remaining sessions");
            actors.abort_all();
        }
        egress_stop.cancel();
        while background.join_next().await.is_some() {}
        let _ = ctx.fabric.workers.delete(ctx.id.as_str()).await;
        tracing::info!("drained");
        if drained_by.is_some() {
            // Drained on request: the process stays (its metrics, its answers to a
            // repeated drain) until it is stopped; it claims nothing.
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(command) = next_command(&mut control) => {
                        answer_command(&ctx, &command, true).await;
                    }
                }
            }
        }
        Ok(())
    }
}

async fn next_command(control: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match control {
        Some(control) => control.next().await,
        None => std::future::pending().await,
    }
}

async fn answer_command(ctx: &Ctx, command: &async_nats::Message, draining: bool) {
    let Some(reply) = &command.reply else {
        return;
    };
    let owned = ctx.claimer.lock().expect("claimer lock").owned().count() as u64;
    let answer = proto::control::WorkerReply {
        worker: ctx.id.to_string(),
        draining,
        owned,
    };
    if let Err(err) = ctx
        .fabric
        .js
        .client()
        .publish(reply.clone(), answer.encode().into())
        .await
    {
        tracing::warn!(error = %err, "could not answer an operator's command");
    }
}

fn handle_actor_exit(ctx: &Ctx, done: Result<(ThreadId, ActorExit), tokio::task::JoinError>) {
    match done {
        Ok((thread, exit)) => {
            tracing::debug!(%thread, ?exit, "session actor ended");
            ctx.claimer
                .lock()
                .expect("claimer lock")
                .on_released(&thread);
            ctx.slot_freed.notify_one();
        }
        Err(err) => tracing::error!(error = %err, "session actor panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_worker_id_is_stable_across_restarts_and_distinct_on_one_host() {
        let dir = tempfile::tempdir().unwrap();
        let (first, first_slot) = worker_id("", "host-a", dir.path()).unwrap();
        let (second, second_slot) = worker_id("", "host-a", dir.path()).unwrap();
        assert_eq!(first.as_str(), "host-a-1");
        assert_eq!(
            second.as_str(),
            "host-a-2",
            "two live workers on one host differ"
        );
        // The first worker dies (its lock goes with its process, here with the file) and
        // starts again while the second still runs: it gets its own id back.
        drop(first_slot);
        let (again, _again_slot) = worker_id("", "host-a", dir.path()).unwrap();
        assert_eq!(again, first);
        // And again after both are gone.
        drop(second_slot);
        drop(_again_slot);
        assert_eq!(worker_id("", "host-a", dir.path()).unwrap().0, first);
        // A configured id wins and takes no slot.
        let (configured, slot) = worker_id("w-7", "host-a", dir.path()).unwrap();
        assert_eq!(configured.as_str(), "w-7");
        assert!(slot.is_none());
        // A fully qualified host name still makes an id that is one subject token.
        let other = tempfile::tempdir().unwrap();
        let (fqdn, _fqdn_slot) = worker_id("", "node-1.example.com", other.path()).unwrap();
        assert_eq!(fqdn.as_str(), "node-1-example-com-1");
        assert_eq!(fqdn.check(), Ok(()));
    }

    #[test]
    fn a_default_id_needs_a_usable_sessions_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = worker_id("", "host-a", &file).unwrap_err();
        assert!(matches!(err, Error::WorkerId { .. }), "{err}");
    }
}
