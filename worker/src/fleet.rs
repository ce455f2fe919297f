//! The worker process: routes events of unowned threads, claims queued threads while it
//! has free slots, runs one [`crate::session::ThreadActor`] per owned thread, re-queues
//! threads whose owner died, and drains on shutdown.
//!
//! Mechanism (see ARCHITECTURE.md, "Claiming"): session leases in a KV bucket
//! (create-if-absent, renewed every third of the TTL, expiring with the bucket's max age),
//! a shared FIFO queue of threads waiting for a slot (a work-queue stream) pulled only by
//! workers with free slots, and one durable consumer per thread that delivers the thread's
//! events in order to whichever worker holds its lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::{FutureExt, StreamExt};
use proto::names::{MSG_ID_HEADER, Names};
use proto::v1::EventBody;
use proto::{ChatEvent, Message, ThreadId, WorkerId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::claim::state::{Claimer, LeaseResult, OnLease, OnQueued, Route, queue_notice, route};
use crate::records::Records;
use crate::runtime::Runtime;
use crate::session::{ActorExit, ThreadActor};
use crate::{render, replies};
use common::config::Config;
use common::nats::{Fabric, Topology};

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
    #[error("could not serve metrics on {addr}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
}

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

pub struct Worker {
    ctx: Arc<Ctx>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The worker id from configuration, or `<hostname>-<pid>`.
pub fn worker_id(config: &Config) -> WorkerId {
    if !config.worker.id.is_empty() {
        return WorkerId::new(config.worker.id.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    WorkerId::new(format!("{host}-{}", std::process::id()))
}

impl Worker {
    pub async fn build(config: Config) -> Result<Self, Error> {
        let id = worker_id(&config);
        let nats = common::nats::connect(&config.nats, id.as_str()).await?;
        let lease_ttl = Duration::from_secs(config.worker.lease_ttl_s);
        let topology = Topology::from_config(&config.nats, lease_ttl);
        let fabric = common::nats::ensure_fabric(&nats, &topology).await?;
        let pool = common::pg::pool(&config.postgres)?;
        common::pg::migrate(&pool, crate::records::MIGRATIONS).await?;
        let store = common::store::Store::from_config(&config.object_store)?;
        let runtime = Runtime::from_config(&config.worker, &config.model, id.as_str()).await?;
        match runtime.cleanup_orphans().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed containers left by an earlier run"),
            Err(err) => tracing::warn!(error = %err, "could not clean up orphaned containers"),
        }
        let ctx = Ctx {
            signer: common::signing::Signer::new(config.gateway.signing_key.expose().as_bytes()),
            claimer: Mutex::new(Claimer::new(id.clone(), config.worker.max_sessions)),
            names: topology.names.clone(),
            records: Records::new(pool),
            slot_freed: Notify::new(),
            evict_idle: Notify::new(),
            config,
            id,
            fabric,
            store,
            runtime,
            lease_ttl,
        };
        // Registered before anything can be routed to it, so dispatchers count its slots.
        beat(&ctx).await;
        let metrics = Arc::new(crate::metrics::Metrics::new(&ctx.runtime));
        Ok(Self {
            ctx: Arc::new(ctx),
            metrics,
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
            let (metrics, shutdown) = (self.metrics.clone(), shutdown.clone());
            background.spawn(async move {
                if let Err(err) = crate::metrics::serve(listener, metrics, shutdown).await {
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
        background.spawn(dispatch_loop(ctx.clone(), stop_intake.clone()));
        background.spawn(claim_loop(ctx.clone(), stop_intake.clone(), spawn_tx));
        background.spawn(janitor_loop(ctx.clone(), stop_intake.clone()));
        background.spawn(heartbeat_loop(ctx.clone(), stop_intake.clone()));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
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
            while let Some(done) = actors.join_next().await {
                handle_actor_exit(&ctx, done);
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("grace period over; stopping the remaining sessions");
            actors.abort_all();
        }
        while background.join_next().await.is_some() {}
        let _ = ctx.fabric.workers.delete(ctx.id.as_str()).await;
        tracing::info!("drained");
        Ok(())
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

struct ThreadAssignment {
    thread: ThreadId,
    revision: u64,
}

/// Whether an event may start (or resume) a session.
fn starts_session(event: &ChatEvent) -> bool {
    match &event.body {
        EventBody::Message(m) => m.mentions_bot || m.channel_type == proto::v1::ChannelType::Direct,
        EventBody::SlashCommand(c) => !matches!(
            c.text.split_whitespace().next(),
            Some("status" | "stop" | "cancel" | "help") | None
        ),
        _ => false,
    }
}

/// Opens (creating if absent) a consumer shared by all workers, retrying until `stop`.
async fn shared_consumer(
    stream: &jetstream::stream::Stream,
    name: String,
    stop: &CancellationToken,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    loop {
        let config = pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            ..Default::default()
        };
        match stream.get_or_create_consumer(&name, config).await {
            Ok(consumer) => return Some(consumer),
            Err(err) => {
                tracing::warn!(error = %err, consumer = %name, "consumer unavailable; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

async fn dispatch_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let Some(consumer) =
        shared_consumer(&ctx.fabric.events, ctx.names.dispatch_consumer(), &stop).await
    else {
        return;
    };
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(err) => {
            tracing::error!(error = %err, "dispatch stream failed");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => { tracing::warn!(error = %err, "dispatch hiccup"); continue; }
                None => return,
            },
        };
        let event = match ChatEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(error = %err, "undecodable chat event dropped");
                let _ = message.ack_with(jetstream::AckKind::Term).await;
                continue;
            }
        };
        let span =
            tracing::info_span!("dispatch", thread_id = %event.thread, event_id = %event.event_id);
        common::telemetry::follow(&span, message.headers.as_ref());
        let result = tracing::Instrument::instrument(dispatch_one(&ctx, &event), span).await;
        match result {
            Ok(()) => {
                let _ = message.ack().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "dispatch failed; will retry");
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DispatchError {
    #[error("lease lookup failed")]
    Lease(#[source] async_nats::jetstream::kv::EntryError),
    #[error(transparent)]
    Records(#[from] crate::records::Error),
    #[error("could not queue the thread")]
    Queue(#[source] async_nats::jetstream::context::PublishError),
    #[error(transparent)]
    Replies(#[from] replies::Error),
}

async fn dispatch_one(ctx: &Ctx, event: &ChatEvent) -> Result<(), DispatchError> {
    let lease = ctx
        .fabric
        .leases
        .get(event.thread.as_str())
        .await
        .map_err(DispatchError::Lease)?
        .map(|v| WorkerId::new(String::from_utf8_lossy(&v).into_owned()));
    let starts = starts_session(event);
    let has_session = if lease.is_none() && !starts {
        ctx.records.has_session(event.thread.as_str()).await?
    } else {
        false
    };
    match route(lease.as_ref(), starts, has_session) {
        Route::Owned => Ok(()),
        Route::Ignore => {
            if let EventBody::SlashCommand(command) = &event.body {
                // `/claude status` or `stop` in a thread without a session.
                let verb = command.text.split_whitespace().next().unwrap_or("");
                replies::notice(
                    &ctx.fabric.js,
                    &ctx.names,
                    &event.thread,
                    &event.channel,
                    &event.event_id,
                    format!("There is no Claude Code session in this thread, so there is nothing to {verb}."),
                )
                .await?;
            }
            Ok(())
        }
        Route::Enqueue => {
            let ack = enqueue(ctx, &event.thread, &format!("queue:{}", event.event_id))
                .await
                .map_err(DispatchError::Queue)?;
            if ack.duplicate {
                return Ok(());
            }
            // Waiting = queued threads not yet delivered to a claimer (a delivered one has
            // its slot reserved, and the heartbeat already counts it).
            let waiting = match ctx
                .fabric
                .queue
                .get_consumer::<pull::Config>(&ctx.names.claim_consumer())
                .await
            {
                Ok(mut consumer) => consumer.info().await.map(|i| i.num_pending).unwrap_or(1),
                Err(_) => 1,
            };
            // This worker's own free slots are part of the fleet's (and fresher than its
            // heartbeat): when they cover the queue, no need to read everyone's.
            let own = ctx.claimer.lock().expect("claimer lock").free() as u64;
            let free = if own >= waiting {
                own
            } else {
                fleet_free_slots(ctx).await
            };
            tracing::debug!(waiting, free, "thread queued");
            if let Some(position) = queue_notice(waiting, free) {
                replies::notice(
                    &ctx.fabric.js,
                    &ctx.names,
                    &event.thread,
                    &event.channel,
                    &format!("queued-{}", event.event_id),
                    render::queued(position),
                )
                .await?;
            }
            Ok(())
        }
    }
}

/// Puts `thread` on the queue for a worker with a free slot; `dedupe` is its
/// `Nats-Msg-Id`, so concurrent dispatchers queue it once.
pub(crate) async fn enqueue(
    ctx: &Ctx,
    thread: &ThreadId,
    dedupe: &str,
) -> Result<jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, dedupe);
    common::telemetry::inject(&mut headers);
    ctx.fabric
        .js
        .publish_with_headers(
            ctx.names.queue_subject(thread),
            headers,
            bytes::Bytes::new(),
        )
        .await?
        .await
}

/// Events of `thread` not handled yet: undelivered, or delivered and unacknowledged.
pub(crate) async fn pending_events(ctx: &Ctx, thread: &ThreadId) -> u64 {
    let consumer: Result<jetstream::consumer::Consumer<pull::Config>, _> = ctx
        .fabric
        .events
        .get_consumer(&ctx.names.thread_consumer(thread))
        .await;
    match consumer {
        Ok(mut consumer) => consumer
            .info()
            .await
            .map(|i| i.num_pending + i.num_ack_pending as u64)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Free slots across live workers, from their heartbeats.
async fn fleet_free_slots(ctx: &Ctx) -> u64 {
    let mut free = 0;
    let Ok(mut keys) = ctx.fabric.workers.keys().await else {
        return 0;
    };
    while let Some(Ok(key)) = keys.next().await {
        if let Ok(Some(value)) = ctx.fabric.workers.get(&key).await
            && let Ok(beat) = serde_json::from_slice::<serde_json::Value>(&value)
        {
            free += beat["free"].as_u64().unwrap_or(0);
        }
    }
    free
}

/// Publishes this worker's free slots; dispatchers read them to decide queue notices.
async fn beat(ctx: &Ctx) {
    let (free, owned) = {
        let claimer = ctx.claimer.lock().expect("claimer lock");
        (claimer.free(), claimer.owned().count())
    };
    let beat =
        serde_json::json!({ "free": free, "owned": owned, "max": ctx.config.worker.max_sessions });
    if let Err(err) = ctx
        .fabric
        .workers
        .put(ctx.id.as_str(), beat.to_string().into())
        .await
    {
        tracing::warn!(error = %err, "heartbeat failed");
    }
}

async fn heartbeat_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = (ctx.lease_ttl / 3).max(Duration::from_millis(200));
    loop {
        beat(&ctx).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            () = ctx.slot_freed.notified() => {}
        }
    }
}

async fn claim_loop(
    ctx: Arc<Ctx>,
    stop: CancellationToken,
    spawn: tokio::sync::mpsc::UnboundedSender<ThreadAssignment>,
) {
    let Some(consumer) =
        shared_consumer(&ctx.fabric.queue, ctx.names.claim_consumer(), &stop).await
    else {
        return;
    };
    loop {
        if stop.is_cancelled() {
            return;
        }
        let wants = ctx.claimer.lock().expect("claimer lock").wants_work();
        if !wants {
            // Full: if threads are waiting, ask an idle session of ours to make room.
            let draining = ctx.claimer.lock().expect("claimer lock").is_draining();
            if !draining {
                let mut queue = ctx.fabric.queue.clone();
                if queue
                    .info()
                    .await
                    .map(|i| i.state.messages > 0)
                    .unwrap_or(false)
                {
                    ctx.evict_idle.notify_one();
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = ctx.slot_freed.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, "queue fetch failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let message = tokio::select! {
            () = stop.cancelled() => return,
            next = batch.next() => match next {
                Some(Ok(message)) => message,
                _ => continue,
            },
        };
        let Some(thread) = message.subject.rsplit('.').next().map(ThreadId::from) else {
            let _ = message.ack().await;
            continue;
        };
        let decision = ctx.claimer.lock().expect("claimer lock").on_queued(&thread);
        match decision {
            OnQueued::AlreadyOurs => {
                let _ = message.ack().await;
            }
            OnQueued::GiveBack => {
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(200))))
                    .await;
            }
            OnQueued::TryLease => {
                let (result, revision) = match ctx
                    .fabric
                    .leases
                    .create(thread.as_str(), ctx.id.to_string().into())
                    .await
                {
                    Ok(revision) => (LeaseResult::Acquired, revision),
                    Err(_) => {
                        let owner = ctx
                            .fabric
                            .leases
                            .get(thread.as_str())
                            .await
                            .ok()
                            .flatten()
                            .map(|v| WorkerId::new(String::from_utf8_lossy(&v).into_owned()))
                            .unwrap_or_else(|| WorkerId::new("unknown"));
                        (LeaseResult::HeldBy(owner), 0)
                    }
                };
                let outcome = ctx
                    .claimer
                    .lock()
                    .expect("claimer lock")
                    .on_lease(&thread, result);
                // Free slots are published before the queue item goes, so a dispatcher
                // never sees a slot that is already taken.
                beat(&ctx).await;
                if outcome == OnLease::Start && revision > 0 {
                    tracing::info!(%thread, "claimed thread");
                    if spawn
                        .send(ThreadAssignment {
                            thread: thread.clone(),
                            revision,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = message.ack().await;
            }
        }
    }
}

async fn janitor_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = (ctx.lease_ttl / 2).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(err) = janitor_pass(&ctx).await {
            tracing::warn!(error = %err, "janitor pass failed");
        }
    }
}

/// Threads recorded as owned whose lease lapsed: their owner died. Re-queue those with
/// undelivered or unacknowledged events (a turn was cut); mark the idle ones so the next
/// message resumes them with a notice.
async fn janitor_pass(ctx: &Ctx) -> Result<(), DispatchError> {
    for (thread, owner) in ctx.records.owned_sessions().await? {
        let thread = ThreadId::new(thread);
        if owner == ctx.id.as_str() && ctx.claimer.lock().expect("claimer lock").owns(&thread) {
            continue;
        }
        if ctx
            .fabric
            .leases
            .get(thread.as_str())
            .await
            .map_err(DispatchError::Lease)?
            .is_some()
        {
            continue;
        }
        if pending_events(ctx, &thread).await > 0 {
            tracing::info!(%thread, dead_owner = %owner, "re-queueing a thread whose worker died");
            enqueue(ctx, &thread, &format!("requeue:{thread}:{owner}"))
                .await
                .map_err(DispatchError::Queue)?;
        } else {
            ctx.records
                .set_owner(thread.as_str(), None, &format!("orphaned:{owner}"))
                .await?;
        }
    }
    Ok(())
}
