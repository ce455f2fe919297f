//! Egress: applies workers' reply operations to Mattermost.
//!
//! One gateway replica at a time is the *egress leader* (a lease in the leases bucket,
//! kept by [`common::lease::keep`]); the others stand by and take over when the lease
//! lapses. The leader pulls the shared durable consumer of the replies stream, orders each
//! session's operations by `seq` (a reorder buffer absorbs redeliveries after a failover),
//! feeds each thread's [`queue::ThreadQueue`] (coalescing, intervals), and applies them
//! within the fleet's [`budget::Budget`], behind one [`breaker::Circuit`]. A message is
//! acknowledged only after the operation it carries took effect (or was superseded by one
//! that did, or was dead-lettered with a note in the thread).
//!
//! Failures: an operation Mattermost cannot take now (no answer, 5xx, 408, 429) waits and
//! is tried again, in its place, for as long as the replies stream keeps it; while
//! Mattermost does not answer, the circuit lets one probe out per cool-down for the whole
//! leader, and the messages held meanwhile get in-progress acks so JetStream does not
//! redeliver them. Only what Mattermost refuses for good (another 4xx) is dead-lettered,
//! with one note per post in the thread; that note waits out an outage like any other
//! operation.
//!
//! Idempotency across failovers: the KV bucket `<p>_posts` maps local post references to
//! Mattermost post ids and holds each session's last applied `seq`. A create whose outcome
//! is unknown (sent, then the answer or the leader was lost) must not post twice however
//! late it is tried again, and Mattermost's own `pending_post_id` collapses a retry only
//! for 30 s. So before a create is sent its intent is recorded (`intent.…` in the bucket)
//! and the post carries its reference in `props` ([`REF_PROP`]); a create that finds an
//! intent but no reference looks for a post with that reference in the thread and adopts
//! it instead of creating another.

pub mod breaker;
pub mod budget;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv};
use common::lease;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use prometheus_client::metrics::gauge::Gauge;
use proto::names::{self, MSG_ID_HEADER, Names};
use proto::v1::{Op, PostTarget, ReplyOp};
use proto::{LocalRef, Message, PostId, SessionId, ThreadId};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::mattermost;
use crate::metrics::Metrics;
use breaker::Circuit;
use budget::Budget;
use queue::{Next, ThreadQueue};

/// The post property naming the local reference (`ref.<session>.<seq>.<part>`) a post was
/// created for: how a create whose answer was lost finds its post.
pub const REF_PROP: &str = "ccfleet_ref";
/// Mattermost's limit on a post's message, in characters (runes).
pub const MAX_POST_CHARS: usize = 16_383;
/// How long JetStream waits for an ack before redelivering: how soon a new leader gets
/// what a lost one held.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often the leader looks for held messages that need an in-progress ack …
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// … and how long a message is held before it gets one (well inside `ACK_WAIT`).
const PROGRESS_AFTER: Duration = Duration::from_secs(4);
/// How long an out-of-order operation waits for its predecessor before going out anyway.
const GAP_WAIT: Duration = Duration::from_secs(25);
/// The first wait before an operation is tried again; it doubles up to the circuit's
/// longest cool-down.
const RETRY_BASE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not open the egress consumer")]
    Consumer(#[source] async_nats::jetstream::stream::ConsumerError),
    #[error("could not read from the egress consumer")]
    Messages(#[source] async_nats::jetstream::consumer::StreamError),
    #[error("the egress consumer stopped delivering")]
    Read(#[source] pull::MessagesError),
    #[error("the egress consumer's messages ended")]
    Ended,
}

/// Why applying one operation failed.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Mattermost(#[from] mattermost::Error),
    #[error("post {0} is not known (its creation failed earlier)")]
    UnknownPost(LocalRef),
    #[error("could not read {key} from the object store")]
    Object {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("Mattermost did not answer for as long as the replies stream keeps an operation")]
    Expired(#[source] Box<ApplyError>),
    #[error("could not read or write {key} in the posts bucket")]
    Record {
        key: String,
        #[source]
        source: async_nats::Error,
    },
}

impl ApplyError {
    /// Mattermost did not answer (what the circuit counts).
    fn is_unavailable(&self) -> bool {
        matches!(self, ApplyError::Mattermost(e) if e.is_unavailable())
    }

    /// Worth trying again later; anything else is refused for good.
    fn is_retryable(&self) -> bool {
        match self {
            ApplyError::Mattermost(e) => e.is_retryable(),
            ApplyError::UnknownPost(_) => false,
            ApplyError::Object { source, .. } => {
                !matches!(source, object_store::Error::NotFound { .. })
            }
            ApplyError::Expired(_) => false,
            ApplyError::Record { .. } => true,
        }
    }

    /// The post this failure is about, if the operation has one: the thread is told once
    /// per post.
    fn post<'a>(&'a self, op: &'a ReplyOp) -> Option<&'a LocalRef> {
        match self {
            ApplyError::UnknownPost(local) => Some(local),
            _ => match &op.op {
                Op::CreatePost { local, .. }
                | Op::UpdatePost { local, .. }
                | Op::AttachFiles { local, .. } => Some(local),
                Op::AddReaction { target, .. } | Op::RemoveReaction { target, .. } => {
                    match target {
                        PostTarget::Local(local) => Some(local),
                        PostTarget::Mattermost(_) => None,
                    }
                }
                Op::Ephemeral { .. } => None,
            },
        }
    }
}

/// What to do after an attempt failed.
enum Verdict {
    /// Try again (the wait is over).
    Retry,
    /// Refused for good, or kept waiting past the replies' retention: dead-letter it.
    GiveUp(ApplyError),
    /// Leadership ended: leave it unacknowledged for the next leader.
    Stopped,
}

/// Everything egress needs; cheap to clone.
#[derive(Clone)]
pub struct Egress {
    pub js: jetstream::Context,
    pub replies: jetstream::stream::Stream,
    pub leases: kv::Store,
    pub posts: kv::Store,
    pub names: Names,
    pub mattermost: mattermost::Client,
    pub bot_user_id: String,
    pub store: Option<common::store::Store>,
    pub budget: Arc<Budget>,
    /// The circuit in front of Mattermost, shared by every thread.
    pub circuit: Arc<Circuit>,
    pub interval: Duration,
    pub lease_ttl: Duration,
    pub replica: String,
    pub metrics: Arc<Metrics>,
    /// Where egress says it is up again after a failure (`/readyz`).
    pub health: Arc<common::health::Health>,
}

/// The name egress has in [`common::health::Health`] and logs.
pub const LOOP_NAME: &str = "egress";

impl Egress {
    /// Stands by, leads when the lease is free, until `shutdown`. Returns an error when
    /// leading failed (its lease then lapses, so another replica can lead): the caller
    /// starts it again.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let key = self.names.egress_leader_key();
        let retry = (self.lease_ttl / 3).max(Duration::from_millis(200));
        loop {
            match self.leases.create(key, self.replica.clone().into()).await {
                Ok(revision) => {
                    tracing::info!(replica = %self.replica, "egress leadership acquired");
                    self.metrics.egress_leader.set(1);
                    let result = self.lead(revision, shutdown.clone()).await;
                    self.metrics.egress_leader.set(0);
                    self.metrics.egress_queue_depth.set(0);
                    // Hand over at once on a clean stop; a crashed leader's lease lapses.
                    if shutdown.is_cancelled() {
                        let _ = self.leases.delete(key).await;
                        return result;
                    }
                    result?;
                }
                Err(_) => {
                    // Another replica leads: standing by is running as intended.
                    if let Ok(Some(holder)) = self.leases.get(key).await
                        && holder[..] != *self.replica.as_bytes()
                    {
                        self.health.set_up(LOOP_NAME);
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    async fn lead(&self, revision: u64, shutdown: CancellationToken) -> Result<(), Error> {
        let leading = shutdown.child_token();
        // Kept in this task, beside the work it guards: a refused renewal cancels
        // `leading`, which ends the consumer and every thread task; the end of leading
        // (shutdown, an error) stops the renewals.
        let keeper = async {
            let kept = lease::keep(
                &self.leases,
                self.names.egress_leader_key(),
                self.replica.clone().into(),
                revision,
                lease::renew_every(self.lease_ttl),
                &leading,
                &leading,
            )
            .await;
            if let Err(err) = kept {
                tracing::warn!(error = &err as &dyn std::error::Error, "egress lease lost");
            }
        };
        let work = async {
            let mut tasks = JoinSet::new();
            let result = self.consume(leading.clone(), &mut tasks).await;
            leading.cancel();
            while tasks.join_next().await.is_some() {}
            result
        };
        let ((), result) = tokio::join!(keeper, work);
        result
    }

    async fn consume(
        &self,
        leading: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), Error> {
        let consumer = self
            .replies
            .get_or_create_consumer(
                &self.names.egress_consumer(),
                pull::Config {
                    durable_name: Some(self.names.egress_consumer()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 50_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::Consumer)?;
        let mut messages = consumer.messages().await.map_err(Error::Messages)?;
        self.health.set_up(LOOP_NAME);
        let mut threads: HashMap<ThreadId, mpsc::UnboundedSender<Delivery>> = HashMap::new();
        let held = Held::new(self.metrics.egress_queue_depth.clone());
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let client = self.js.client();
        loop {
            let message = tokio::select! {
                () = leading.cancelled() => return Ok(()),
                _ = progress.tick() => {
                    // Whatever waits (an outage, its thread's earlier operations) stays
                    // with this leader instead of being redelivered after the ack wait.
                    for reply in held.due(std::time::Instant::now(), PROGRESS_AFTER) {
                        if let Err(err) = client.publish(reply, "+WPI".into()).await {
                            tracing::warn!(error = %err, "in-progress ack failed");
                        }
                    }
                    continue;
                }
                next = messages.next() => match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
                        // These end the message stream: leading cannot go on.
                        if matches!(
                            err.kind(),
                            Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded
                        ) {
                            return Err(Error::Read(err));
                        }
                        tracing::warn!(error = %err, "egress consumer hiccup");
                        continue;
                    }
                    None => return Err(Error::Ended),
                },
            };
            let op = match ReplyOp::decode(&message.payload) {
                Ok(op) => op,
                Err(err) => {
                    // Undecodable: never becomes decodable by redelivery.
                    tracing::error!(error = %err, subject = %message.subject, "dropping undecodable reply operation");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                    continue;
                }
            };
            let producer = common::telemetry::extract(message.headers.as_ref());
            let hold = held.hold(&message);
            let mut delivery = Delivery {
                op,
                message,
                producer,
                _hold: hold,
            };
            loop {
                let thread = delivery.op.thread.clone();
                let sender = threads.entry(thread.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.spawn(self.clone().thread_task(thread, rx, leading.clone()));
                    tx
                });
                match sender.send(delivery) {
                    Ok(()) => break,
                    // The thread's task ended (idle); start a new one.
                    Err(mpsc::error::SendError(back)) => {
                        threads.remove(&back.op.thread);
                        delivery = back;
                    }
                }
            }
            // Reap finished thread tasks so the map does not grow without bound.
            while let Some(Some(_)) = tasks.try_join_next().map(|r| r.ok()) {}
            threads.retain(|_, tx| !tx.is_closed());
        }
    }

    /// The CONSUMER span of one application: a child of the operation that is applied
    /// (the last of those coalesced into it), so a reply's trace reaches Mattermost; linked
    /// to every operation it serves, since an edit carries several streamed ones.
    fn apply_span(&self, op: &ReplyOp, done: &[Delivery]) -> tracing::Span {
        let Some(last) = done.last() else {
            return tracing::Span::none();
        };
        let span = common::telemetry::process_span(
            &self.names.replies_destination(),
            &last.message.subject,
            common::telemetry::message_id(last.message.headers.as_ref()),
            &self.names.egress_consumer(),
        );
        span.record("thread_id", tracing::field::display(&op.thread));
        let _ = span.set_parent(last.producer.clone());
        if done.len() > 1 {
            for delivery in done {
                common::telemetry::link_context(&span, &delivery.producer);
            }
        }
        span
    }

    async fn thread_task(
        self,
        thread: ThreadId,
        mut rx: mpsc::UnboundedReceiver<Delivery>,
        leading: CancellationToken,
    ) {
        let mut queue: ThreadQueue<Delivery> = ThreadQueue::new(self.interval);
        let mut known = Known::default();
        // Per session: the last applied seq not yet written to the bucket (written once the
        // queue has nothing due, not after every operation).
        let mut unrecorded: HashMap<SessionId, u64> = HashMap::new();
        // Per session: the next seq to feed, and operations that arrived early.
        let mut expected: HashMap<SessionId, u64> = HashMap::new();
        let mut early: HashMap<SessionId, BTreeMap<u64, (Delivery, tokio::time::Instant)>> =
            HashMap::new();
        let idle_after = Duration::from_secs(30);
        loop {
            // Apply whatever is due.
            let wait = loop {
                match queue.next(std::time::Instant::now()) {
                    Next::Apply { op, done } => {
                        let span = self.apply_span(&op, &done);
                        // Delivered once: no earlier leader can have applied it.
                        let fresh = done
                            .iter()
                            .all(|d| d.message.info().is_ok_and(|i| i.delivered == 1));
                        let until = self.kept_until(&done);
                        let applied = self
                            .apply_with_retries(&op, &mut known, fresh, until, &leading)
                            .instrument(span)
                            .await;
                        if !applied {
                            // Leadership lost mid-retry: leave everything unacked for the next leader.
                            return;
                        }
                        unrecorded.insert(op.session.clone(), op.seq);
                        for delivery in done {
                            let lag = common::now_ms().saturating_sub(delivery.op.created_at_ms);
                            self.metrics.egress_lag.observe(lag as f64 / 1000.0);
                            if let Err(err) = delivery.message.ack().await {
                                tracing::warn!(error = %err, "ack failed; the operation may be redelivered and will be skipped");
                            }
                        }
                    }
                    Next::WaitUntil(at) => break Some(tokio::time::Instant::from_std(at)),
                    Next::Idle => break None,
                }
            };
            self.record_applied(&mut unrecorded).await;
            let gap_deadline = early
                .values()
                .filter_map(|m| m.values().map(|(_, since)| *since + GAP_WAIT).min())
                .min();
            let deadline = match (wait, gap_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let incoming = tokio::select! {
                () = leading.cancelled() => return,
                () = sleep_until(deadline.unwrap_or_else(|| tokio::time::Instant::now() + idle_after)) => {
                    if deadline.is_none() && queue.is_empty() && early.values().all(BTreeMap::is_empty) {
                        return;
                    }
                    None
                }
                received = rx.recv() => match received {
                    Some(delivery) => Some(delivery),
                    None => return,
                },
            };
            if let Some(delivery) = incoming {
                let session = delivery.op.session.clone();
                let next = match expected.get(&session) {
                    Some(next) => *next,
                    None => {
                        let next = self.applied_seq(&session).await + 1;
                        expected.insert(session.clone(), next);
                        next
                    }
                };
                let seq = delivery.op.seq;
                if seq < next {
                    // Already applied or already queued: a redelivery. The original's ack
                    // covers it (or a later leader will see it again).
                    tracing::debug!(%thread, seq, "duplicate delivery ignored");
                    continue;
                }
                early
                    .entry(session)
                    .or_default()
                    .entry(seq)
                    .or_insert((delivery, tokio::time::Instant::now()));
            }
            // Feed in-order operations; after GAP_WAIT, give up on a missing one.
            let now = tokio::time::Instant::now();
            for (session, buffer) in early.iter_mut() {
                let next = expected.entry(session.clone()).or_insert(1);
                while let Some((&seq, (_, since))) = buffer.iter().next() {
                    if seq == *next || now >= *since + GAP_WAIT {
                        if seq != *next {
                            tracing::warn!(%thread, %session, missing = *next, got = seq, "reply operations missing; continuing without them");
                        }
                        let (delivery, _) = buffer.remove(&seq).expect("present");
                        *next = seq + 1;
                        let op = delivery.op.clone();
                        queue.push(op, delivery);
                    } else {
                        break;
                    }
                }
            }
            early.retain(|_, buffer| !buffer.is_empty());
        }
    }

    async fn applied_seq(&self, session: &SessionId) -> u64 {
        match self.posts.get(names::applied_seq_key(session)).await {
            Ok(Some(bytes)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// Writes each session's last applied seq. Only a hint for a later leader: what was
    /// acknowledged is never redelivered, and a redelivered create finds its reference.
    async fn record_applied(&self, unrecorded: &mut HashMap<SessionId, u64>) {
        let writes = unrecorded.drain().map(|(session, seq)| async move {
            let key = names::applied_seq_key(&session);
            if let Err(err) = self.posts.put(key, seq.to_string().into()).await {
                tracing::warn!(error = %err, "could not record the applied sequence");
            }
        });
        futures::future::join_all(writes).await;
    }

    /// Until when (Unix ms) the replies stream keeps what `done` carries, so a new leader
    /// could still get it: the bound of waiting for Mattermost. `None`: kept for ever.
    fn kept_until(&self, done: &[Delivery]) -> Option<u64> {
        let max_age = self.replies.cached_info().config.max_age;
        if max_age.is_zero() {
            return None;
        }
        let published = done
            .iter()
            .filter_map(|d| d.message.info().ok())
            .map(|i| u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
            .max()
            .unwrap_or_else(common::now_ms);
        Some(published.saturating_add(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Applies `op`, waiting out what Mattermost cannot take now and dead-lettering what
    /// it refuses for good. Returns `false` only when leadership was lost before it could
    /// finish (nothing is acknowledged then).
    async fn apply_with_retries(
        &self,
        op: &ReplyOp,
        known: &mut Known,
        fresh: bool,
        until: Option<u64>,
        leading: &CancellationToken,
    ) -> bool {
        let mut attempt = 0;
        loop {
            let version = self.circuit.version();
            // Leadership lost mid-request: stop at once, the next leader redoes it (creates
            // are collapsed by their reference and `pending_post_id`).
            let result = tokio::select! {
                () = leading.cancelled() => return false,
                result = self.apply(op, known, fresh && attempt == 0) => result,
            };
            let err = match result {
                Ok(()) => return true,
                Err(err) => err,
            };
            match self
                .after_failure(err, &mut attempt, version, until, leading)
                .await
            {
                Verdict::Retry => {}
                Verdict::GiveUp(err) => return self.dead_letter(op, &err, until, leading).await,
                Verdict::Stopped => return false,
            }
        }
    }

    /// Decides what follows a failed attempt and waits before a retry: the server's pause
    /// for a 429; the circuit's cool-down while it is open; else a doubling backoff
    /// (jittered, capped at the circuit's longest cool-down), cut short when the circuit
    /// closes after an outage. `version`: the circuit's, taken before the attempt.
    async fn after_failure(
        &self,
        err: ApplyError,
        attempt: &mut u32,
        version: u64,
        until: Option<u64>,
        leading: &CancellationToken,
    ) -> Verdict {
        if let ApplyError::Mattermost(mattermost::Error::RateLimited { retry_after }) = &err {
            self.metrics.rate_limited.inc();
            self.budget.pause(*retry_after);
            return Verdict::Retry;
        }
        if !err.is_retryable() {
            return Verdict::GiveUp(err);
        }
        if until.is_some_and(|until| common::now_ms() >= until) {
            return Verdict::GiveUp(ApplyError::Expired(Box::new(err)));
        }
        if err.is_unavailable() && self.circuit.state() != breaker::State::Closed {
            // The circuit paces retries while Mattermost is down: the next attempt waits in
            // `admit` for the cool-down, and one caller probes for every thread.
            tracing::warn!(error = %err, "reply operation failed; it waits for Mattermost");
            return Verdict::Retry;
        }
        // A failure the circuit did not stop at (yet): this operation's own backoff.
        *attempt += 1;
        let full = RETRY_BASE
            .saturating_mul(1 << (*attempt).min(16))
            .min(self.circuit.max_cooldown());
        let backoff = full.mul_f64(1.0 - rand::random::<f64>() / 2.0);
        tracing::warn!(error = %err, attempt = *attempt, ?backoff, "reply operation failed; it waits and is tried again");
        tokio::select! {
            () = leading.cancelled() => Verdict::Stopped,
            () = tokio::time::sleep(backoff) => Verdict::Retry,
            () = self.circuit.closed_since(version) => Verdict::Retry,
        }
    }

    /// Sends one request to Mattermost once the circuit and the budget let it go, and
    /// tells the circuit whether Mattermost answered.
    async fn call<T>(
        &self,
        name: &'static str,
        call: impl std::future::Future<Output = Result<(T, mattermost::RateInfo), mattermost::Error>>,
    ) -> Result<T, ApplyError> {
        let pass = self.circuit.admit().await;
        self.budget.acquire().await;
        match call.await {
            Ok((value, rate)) => {
                pass.answered();
                self.metrics.egress_call(name, "ok");
                self.metrics.mattermost_response("2xx");
                if rate.remaining == Some(0)
                    && let Some(reset) = rate.reset
                {
                    self.budget.pause(reset);
                }
                Ok(value)
            }
            Err(err) => {
                if err.is_unavailable() {
                    pass.failed();
                } else {
                    pass.answered();
                }
                let outcome = match &err {
                    mattermost::Error::RateLimited { .. } => "rate_limited",
                    e if e.is_retryable() => "retryable",
                    _ => "failed",
                };
                self.metrics.egress_call(name, outcome);
                self.metrics.mattermost_response(err.status_class());
                Err(err.into())
            }
        }
    }

    /// `fresh`: no earlier attempt (of this or another leader) can have created posts.
    async fn apply(&self, op: &ReplyOp, known: &mut Known, fresh: bool) -> Result<(), ApplyError> {
        let root = op.thread.as_str();
        let channel = op.channel.as_str();
        match &op.op {
            Op::CreatePost {
                local,
                message,
                props_json,
            } => {
                let props = parse_props(props_json.as_deref());
                self.write_post(op, known, fresh, local, message, props.as_ref(), &[], true)
                    .await
            }
            Op::UpdatePost {
                local,
                message,
                props_json,
                ..
            } => {
                let props = parse_props(props_json.as_deref());
                self.write_post(op, known, fresh, local, message, props.as_ref(), &[], false)
                    .await
            }
            Op::AddReaction { target, emoji } => {
                let post = self.resolve(known, target).await?;
                self.call("add_reaction", async {
                    self.mattermost
                        .add_reaction(&self.bot_user_id, &post, emoji)
                        .await
                        .map(|r| ((), r))
                })
                .await
            }
            Op::RemoveReaction { target, emoji } => {
                let post = self.resolve(known, target).await?;
                self.call("remove_reaction", async {
                    self.mattermost
                        .remove_reaction(&self.bot_user_id, &post, emoji)
                        .await
                        .map(|r| ((), r))
                })
                .await
            }
            Op::Ephemeral { user, message } => {
                self.call("ephemeral", async {
                    self.mattermost
                        .ephemeral(user.as_str(), channel, root, message)
                        .await
                        .map(|r| ((), r))
                })
                .await
            }
            Op::AttachFiles {
                local,
                message,
                files,
            } => {
                if !fresh
                    && self
                        .lookup(known, &names::post_ref_key(local, 0))
                        .await
                        .is_some()
                {
                    return Ok(());
                }
                let store = self.store.as_ref();
                let mut file_ids = Vec::new();
                for file in files {
                    let key = ObjectPath::from(file.object_key.as_str());
                    let bytes = match store {
                        Some(store) => store
                            .objects()
                            .get(&key)
                            .await
                            .map_err(|source| ApplyError::Object {
                                key: file.object_key.clone(),
                                source,
                            })?
                            .bytes()
                            .await
                            .map_err(|source| ApplyError::Object {
                                key: file.object_key.clone(),
                                source,
                            })?,
                        None => {
                            return Err(ApplyError::Object {
                                key: file.object_key.clone(),
                                source: object_store::Error::NotImplemented,
                            });
                        }
                    };
                    let id = self
                        .call(
                            "upload_file",
                            self.mattermost.upload_file(
                                channel,
                                &file.name,
                                &file.content_type,
                                bytes.to_vec(),
                            ),
                        )
                        .await?;
                    file_ids.push(id);
                }
                let _ = root;
                self.write_post(op, known, fresh, local, message, None, &file_ids, true)
                    .await
            }
        }
    }

    /// Creates or updates the post(s) behind `local`, splitting text over the size limit
    /// into continuation posts.
    #[allow(clippy::too_many_arguments)]
    async fn write_post(
        &self,
        op: &ReplyOp,
        known: &mut Known,
        fresh: bool,
        local: &LocalRef,
        message: &str,
        props: Option<&Value>,
        file_ids: &[String],
        create: bool,
    ) -> Result<(), ApplyError> {
        let chunks = split_message(message, MAX_POST_CHARS);
        for (part, chunk) in chunks.iter().enumerate() {
            let key = names::post_ref_key(local, part);
            // A fresh create has no post yet; anything else may (a redelivery, an update).
            let existing = if create && fresh {
                None
            } else {
                self.lookup(known, &key).await
            };
            let props = if part == 0 { props } else { None };
            match existing {
                Some(post_id) if !(create && part == 0) => {
                    // A patch replaces the props: keep the reference in them.
                    let props = props.map(|p| with_ref(Some(p), &key));
                    self.call("patch_post", async {
                        self.mattermost
                            .patch_post(&post_id, chunk, props.as_ref())
                            .await
                            .map(|r| ((), r))
                    })
                    .await?;
                }
                // A create that already happened (redelivery after a failover).
                Some(_) => {}
                None => {
                    if part == 0 && !create {
                        return Err(ApplyError::UnknownPost(local.clone()));
                    }
                    let intent = names::post_intent_key(local, part);
                    // An earlier attempt may have created it and lost the answer.
                    if !fresh && self.adopt(op, known, &key, &intent).await? {
                        continue;
                    }
                    self.posts
                        .put(&intent, common::now_ms().to_string().into())
                        .await
                        .map_err(|source| ApplyError::Record {
                            key: intent.clone(),
                            source: source.into(),
                        })?;
                    let pending = format!("ccfleet:{}:{}:{part}", local.session, local.seq);
                    let files = if part == 0 { file_ids } else { &[] };
                    let props = with_ref(props, &key);
                    let post = self
                        .call(
                            "create_post",
                            self.mattermost.create_post(
                                op.channel.as_str(),
                                op.thread.as_str(),
                                chunk,
                                Some(&props),
                                files,
                                &pending,
                            ),
                        )
                        .await?;
                    self.remember(known, key, &post.id, &op.thread).await;
                }
            }
        }
        Ok(())
    }

    /// For a create with no recorded post: when its intent shows an earlier attempt may
    /// have sent it, looks in the thread for the post carrying its reference and records
    /// it. `true`: the post exists (adopted); `false`: it was never created.
    async fn adopt(
        &self,
        op: &ReplyOp,
        known: &mut Known,
        key: &str,
        intent: &str,
    ) -> Result<bool, ApplyError> {
        match self.posts.get(intent).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(false),
            Err(source) => {
                return Err(ApplyError::Record {
                    key: intent.to_owned(),
                    source: source.into(),
                });
            }
        }
        let posts = self
            .call("get_thread", self.mattermost.thread(op.thread.as_str()))
            .await?;
        let found = posts.iter().find(|p| {
            p.user_id == self.bot_user_id
                && p.props.get(REF_PROP).and_then(Value::as_str) == Some(key)
        });
        match found {
            Some(post) => {
                tracing::info!(post_id = %post.id, key, "adopted a post created by an earlier attempt");
                self.metrics.egress_call("adopt_post", "ok");
                self.remember(known, key.to_owned(), &post.id, &op.thread)
                    .await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn lookup(&self, known: &mut Known, key: &str) -> Option<String> {
        if let Some(post_id) = known.get(key) {
            return Some(post_id.clone());
        }
        let post_id = match self.posts.get(key).await {
            Ok(Some(bytes)) => String::from_utf8(bytes.to_vec()).ok()?,
            _ => return None,
        };
        known.insert(key.to_owned(), post_id.clone());
        Some(post_id)
    }

    async fn remember(&self, known: &mut Known, key: String, post_id: &str, thread: &ThreadId) {
        // Both writes are retried by the next redelivery's lookup if they fail; log once.
        // The post id comes from Mattermost's answer: checked before it names a key.
        let by_post = async {
            match PostId::parse(post_id) {
                Ok(post) => self
                    .posts
                    .put(names::post_thread_key(&post), thread.to_string().into())
                    .await
                    .map(|_| ()),
                Err(err) => {
                    tracing::warn!(error = %err, "Mattermost answered a post id that is not one; reactions on it will not be routed");
                    Ok(())
                }
            }
        };
        let (by_ref, by_post) = tokio::join!(
            async {
                self.posts
                    .put(&key, post_id.to_owned().into())
                    .await
                    .map(|_| ())
            },
            by_post,
        );
        if let Err(err) = by_ref.and(by_post) {
            tracing::warn!(error = %err, key, "could not record post reference");
        }
        known.insert(key, post_id.to_owned());
    }

    async fn resolve(&self, known: &mut Known, target: &PostTarget) -> Result<String, ApplyError> {
        match target {
            PostTarget::Mattermost(id) => Ok(id.to_string()),
            PostTarget::Local(local) => self
                .lookup(known, &names::post_ref_key(local, 0))
                .await
                .ok_or_else(|| ApplyError::UnknownPost(local.clone())),
        }
    }

    /// Keeps `op` for the operators (`<P>_DEAD`) and tells the thread, once per post; the
    /// note waits out an outage like any operation. Returns `false` when leadership was
    /// lost before the thread was told: nothing is acknowledged and the next leader does
    /// it again (the dead letter is deduplicated by its message id).
    async fn dead_letter(
        &self,
        op: &ReplyOp,
        err: &ApplyError,
        until: Option<u64>,
        leading: &CancellationToken,
    ) -> bool {
        tracing::error!(error = err as &dyn std::error::Error, thread_id = %op.thread, seq = op.seq, "reply operation dead-lettered");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Ccfleet-Error", err.to_string().as_str());
        headers.insert(
            MSG_ID_HEADER,
            format!("dead:{}:{}", op.session, op.seq).as_str(),
        );
        let kept = match op.encode() {
            Ok(bytes) => match self
                .js
                .publish_with_headers(
                    self.names.dead_letter_subject(&op.thread),
                    headers,
                    bytes.into(),
                )
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(reason) = kept {
            tracing::error!(%reason, "could not keep the dead letter");
        }
        let post = err.post(op);
        let told = match post {
            Some(local) => matches!(
                self.posts.get(names::refused_post_key(local)).await,
                Ok(Some(_))
            ),
            None => false,
        };
        if !told {
            let note = format!(
                ":warning: Part of this reply could not be delivered to Mattermost ({}). It was kept for the operators as a dead letter.",
                plain_reason(err)
            );
            let pending = match post {
                Some(local) => format!("ccfleet:dead:{}:{}", local.session, local.seq),
                None => format!("ccfleet:dead:{}:{}", op.session, op.seq),
            };
            let mut attempt = 0;
            loop {
                let version = self.circuit.version();
                let posted = tokio::select! {
                    () = leading.cancelled() => return false,
                    posted = self.call(
                        "dead_letter_note",
                        self.mattermost.create_post(
                            op.channel.as_str(),
                            op.thread.as_str(),
                            &note,
                            None,
                            &[],
                            &pending,
                        ),
                    ) => posted,
                };
                let err = match posted {
                    Ok(_) => {
                        if let Some(local) = post
                            && let Err(err) = self
                                .posts
                                .put(names::refused_post_key(local), "1".into())
                                .await
                        {
                            tracing::warn!(error = %err, "could not record that the thread was told");
                        }
                        break;
                    }
                    Err(err) => err,
                };
                match self
                    .after_failure(err, &mut attempt, version, until, leading)
                    .await
                {
                    Verdict::Retry => {}
                    Verdict::Stopped => return false,
                    Verdict::GiveUp(err) => {
                        tracing::error!(
                            error = &err as &dyn std::error::Error,
                            "could not tell the thread about a dead letter"
                        );
                        break;
                    }
                }
            }
        }
        self.metrics.dead_letters.inc();
        true
    }
}

fn plain_reason(err: &ApplyError) -> String {
    match err {
        ApplyError::Mattermost(mattermost::Error::Status { status, .. }) => {
            format!("Mattermost answered {status}")
        }
        ApplyError::Mattermost(_) => "Mattermost could not be reached".to_owned(),
        ApplyError::UnknownPost(_) => "the post it updates was never created".to_owned(),
        ApplyError::Object { .. } => "a generated file could not be read".to_owned(),
        ApplyError::Expired(_) => {
            "Mattermost did not take it for as long as replies are kept".to_owned()
        }
        ApplyError::Record { .. } => "its delivery could not be recorded".to_owned(),
    }
}

/// A thread task's memory of post references (reference key → Mattermost post id). Only
/// the leader writes references, so what this leader wrote or read stays true while it
/// leads; each leadership term starts empty and reads the bucket.
#[derive(Default)]
struct Known(HashMap<String, String>);

impl Known {
    /// More references than any thread task needs; past this the memory starts over.
    const MAX: usize = 4096;

    fn get(&self, key: &str) -> Option<&String> {
        self.0.get(key)
    }

    fn insert(&mut self, key: String, post_id: String) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(key, post_id);
    }
}

struct Delivery {
    op: ReplyOp,
    message: jetstream::Message,
    /// The trace context of the span that published the operation.
    producer: opentelemetry::Context,
    /// Keeps the message in [`Held`] (and so from redelivery) until this is dropped.
    _hold: Option<Hold>,
}

/// The replies messages this leader holds unacknowledged, by stream sequence. One that
/// waits longer than [`PROGRESS_AFTER`] (behind an outage, behind its thread's earlier
/// operations) gets an in-progress ack every [`PROGRESS_EVERY`], so JetStream's ack wait
/// bounds how soon a new leader gets a lost leader's messages, never how long an operation
/// may wait, and a long wait brings no redeliveries.
/// Its size is the egress queue depth (`egress_queue_depth`).
#[derive(Clone)]
struct Held(Arc<Mutex<HashMap<u64, Holding>>>, Gauge);

struct Holding {
    reply: async_nats::Subject,
    /// Deliveries of this message alive here (a redelivery may meet the original).
    count: usize,
    /// Delivered or last told "in progress".
    touched: std::time::Instant,
}

impl Held {
    fn new(depth: Gauge) -> Self {
        depth.set(0);
        Self(Arc::default(), depth)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Holding>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hold(&self, message: &jetstream::Message) -> Option<Hold> {
        let sequence = message.info().ok()?.stream_sequence;
        let reply = message.reply.clone()?;
        let now = std::time::Instant::now();
        let mut held = self.lock();
        held.entry(sequence)
            .and_modify(|h| {
                h.count += 1;
                h.reply = reply.clone();
                h.touched = now;
            })
            .or_insert(Holding {
                reply,
                count: 1,
                touched: now,
            });
        self.1.set(held.len() as i64);
        drop(held);
        Some(Hold {
            held: self.clone(),
            sequence,
        })
    }

    /// The ack subjects of messages untouched for `after`, now marked touched.
    fn due(&self, now: std::time::Instant, after: Duration) -> Vec<async_nats::Subject> {
        self.lock()
            .values_mut()
            .filter(|h| now.saturating_duration_since(h.touched) >= after)
            .map(|h| {
                h.touched = now;
                h.reply.clone()
            })
            .collect()
    }
}

struct Hold {
    held: Held,
    sequence: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(holding) = held.get_mut(&self.sequence) {
            holding.count -= 1;
            if holding.count == 0 {
                held.remove(&self.sequence);
            }
        }
        self.held.1.set(held.len() as i64);
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("seq", &self.op.seq)
            .finish_non_exhaustive()
    }
}

/// `props` (an object, or none) with the post's reference added under [`REF_PROP`].
fn with_ref(props: Option<&Value>, key: &str) -> Value {
    let mut props = match props {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    props.insert(REF_PROP.to_owned(), Value::String(key.to_owned()));
    Value::Object(props)
}

fn parse_props(json: Option<&str>) -> Option<Value> {
    json.and_then(|j| serde_json::from_str(j).ok())
}

async fn sleep_until(at: tokio::time::Instant) {
    tokio::time::sleep_until(at).await;
}

/// Splits `text` into pieces of at most `max` characters, preferring line breaks.
pub fn split_message(text: &str, max: usize) -> Vec<String> {
    if text.chars().count() <= max {
        return vec![text.to_owned()];
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let cut = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let split = rest[..cut]
            .rfind('\n')
            .filter(|&i| i > cut / 2)
            .map(|i| i + 1)
            .unwrap_or(cut);
        parts.push(rest[..split].to_owned());
        rest = &rest[split..];
    }
    if !rest.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::split_message;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_parts_fit_and_join_to_the_original(text in "(\\PC{0,40}\n?){0,60}", max in 5usize..50) {
            let parts = split_message(&text, max);
            prop_assert!(parts.iter().all(|p| p.chars().count() <= max));
            prop_assert_eq!(parts.concat(), text);
        }
    }
}
