//! Egress: applies workers' reply operations to Mattermost.
//!
//! One gateway replica at a time is the *egress leader* (a lease in the leases bucket,
//! kept by [`common::lease::keep`]); the others stand by and take over when the lease
//! lapses. The leader pulls the shared durable consumer of the replies stream, orders each
//! session's operations by `seq` (a reorder buffer absorbs redeliveries after a failover),
//! feeds each thread's [`queue::ThreadQueue`] (coalescing, intervals), and applies them
//! within the fleet's [`budget::Budget`]. A message is acknowledged only after the
//! operation it carries took effect (or was superseded by one that did, or was
//! dead-lettered with a note in the thread).
//!
//! Idempotency across failovers: the KV bucket `<p>_posts` maps local post references to
//! Mattermost post ids and holds each session's last applied `seq`; creates carry a
//! `pending_post_id` so Mattermost itself collapses a retried create.

pub mod budget;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv};
use common::lease;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use proto::names::{self, Names};
use proto::v1::{Op, PostTarget, ReplyOp};
use proto::{LocalRef, Message, PostId, SessionId, ThreadId};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::mattermost;
use crate::metrics::Metrics;
use budget::Budget;
use queue::{Next, ThreadQueue};

/// Mattermost's limit on a post's message, in characters (runes).
pub const MAX_POST_CHARS: usize = 16_383;
/// How long JetStream waits for an ack before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long an out-of-order operation waits for its predecessor before going out anyway.
const GAP_WAIT: Duration = Duration::from_secs(25);
/// Attempts for a 5xx / network failure before dead-lettering.
const MAX_ATTEMPTS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not open the egress consumer")]
    Consumer(#[source] async_nats::jetstream::stream::ConsumerError),
    #[error("could not read from the egress consumer")]
    Messages(#[source] async_nats::jetstream::consumer::StreamError),
}

/// Why applying one operation failed for good.
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
}

impl ApplyError {
    fn is_retryable(&self) -> bool {
        match self {
            ApplyError::Mattermost(e) => e.is_retryable(),
            ApplyError::UnknownPost(_) => false,
            ApplyError::Object { source, .. } => {
                !matches!(source, object_store::Error::NotFound { .. })
            }
        }
    }
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
    pub interval: Duration,
    pub lease_ttl: Duration,
    pub replica: String,
    pub metrics: Arc<Metrics>,
}

impl Egress {
    /// Stands by, leads when the lease is free, until `shutdown`.
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
                    // Hand over at once on a clean stop; a crashed leader's lease lapses.
                    if shutdown.is_cancelled() {
                        let _ = self.leases.delete(key).await;
                        return result;
                    }
                    if let Err(err) = result {
                        tracing::error!(error = %err, "egress leader stopped; standing by");
                    }
                }
                Err(_) => {
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
        let mut threads: HashMap<ThreadId, mpsc::UnboundedSender<Delivery>> = HashMap::new();
        loop {
            let message = tokio::select! {
                () = leading.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "egress consumer hiccup");
                        continue;
                    }
                    None => return Ok(()),
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
            let span = tracing::info_span!("egress", thread_id = %op.thread, session_id = %op.session, seq = op.seq);
            common::telemetry::follow(&span, message.headers.as_ref());
            let mut delivery = Delivery { op, message, span };
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
                        let span = done
                            .last()
                            .map(|d| d.span.clone())
                            .unwrap_or_else(tracing::Span::none);
                        // Delivered once: no earlier leader can have applied it.
                        let fresh = done
                            .iter()
                            .all(|d| d.message.info().is_ok_and(|i| i.delivered == 1));
                        let applied = self
                            .apply_with_retries(&op, &mut known, fresh, &leading)
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

    /// Applies `op`, retrying what is retryable. Returns `false` only when leadership was
    /// lost before it could finish (nothing is acknowledged then).
    async fn apply_with_retries(
        &self,
        op: &ReplyOp,
        known: &mut Known,
        fresh: bool,
        leading: &CancellationToken,
    ) -> bool {
        let mut attempt = 0;
        loop {
            if leading.is_cancelled() {
                return false;
            }
            let result = self.apply(op, known, fresh && attempt == 0).await;
            let err = match result {
                Ok(()) => return true,
                Err(err) => err,
            };
            if let ApplyError::Mattermost(mattermost::Error::RateLimited { retry_after }) = &err {
                self.metrics.rate_limited.inc();
                self.budget.pause(*retry_after);
                continue;
            }
            attempt += 1;
            if !err.is_retryable() || attempt >= MAX_ATTEMPTS {
                self.dead_letter(op, &err).await;
                return true;
            }
            let backoff = Duration::from_millis(200 * (1 << attempt.min(5)));
            tracing::warn!(error = %err, attempt, ?backoff, "reply operation failed; retrying");
            tokio::select! {
                () = leading.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    async fn call<T>(
        &self,
        name: &'static str,
        call: impl std::future::Future<Output = Result<(T, mattermost::RateInfo), mattermost::Error>>,
    ) -> Result<T, ApplyError> {
        match call.await {
            Ok((value, rate)) => {
                self.metrics.egress_call(name, "ok");
                if rate.remaining == Some(0)
                    && let Some(reset) = rate.reset
                {
                    self.budget.pause(reset);
                }
                Ok(value)
            }
            Err(err) => {
                let outcome = match &err {
                    mattermost::Error::RateLimited { .. } => "rate_limited",
                    e if e.is_retryable() => "retryable",
                    _ => "failed",
                };
                self.metrics.egress_call(name, outcome);
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
                self.budget.acquire().await;
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
                self.budget.acquire().await;
                self.call("remove_reaction", async {
                    self.mattermost
                        .remove_reaction(&self.bot_user_id, &post, emoji)
                        .await
                        .map(|r| ((), r))
                })
                .await
            }
            Op::Ephemeral { user, message } => {
                self.budget.acquire().await;
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
                    self.budget.acquire().await;
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
                    self.budget.acquire().await;
                    self.call("patch_post", async {
                        self.mattermost
                            .patch_post(&post_id, chunk, props)
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
                    let pending = format!("ccfleet:{}:{}:{part}", local.session, local.seq);
                    let files = if part == 0 { file_ids } else { &[] };
                    self.budget.acquire().await;
                    let post = self
                        .call(
                            "create_post",
                            self.mattermost.create_post(
                                op.channel.as_str(),
                                op.thread.as_str(),
                                chunk,
                                props,
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
        let (by_ref, by_post) = tokio::join!(
            self.posts.put(&key, post_id.to_owned().into()),
            self.posts.put(
                names::post_thread_key(&PostId::from(post_id)),
                thread.to_string().into()
            ),
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

    async fn dead_letter(&self, op: &ReplyOp, err: &ApplyError) {
        self.metrics.dead_letters.inc();
        tracing::error!(error = %err, thread_id = %op.thread, seq = op.seq, "reply operation dead-lettered");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Ccfleet-Error", err.to_string().as_str());
        if let Ok(bytes) = op.encode() {
            let publish = self
                .js
                .publish_with_headers(
                    self.names.dead_letter_subject(&op.thread),
                    headers,
                    bytes.into(),
                )
                .await;
            if let Ok(ack) = publish {
                let _ = ack.await;
            }
        }
        let note = format!(
            ":warning: Part of this reply could not be delivered to Mattermost ({}). It was kept for the operators as a dead letter.",
            plain_reason(err)
        );
        self.budget.acquire().await;
        let pending = format!("ccfleet:dead:{}:{}", op.session, op.seq);
        if let Err(e) = self
            .mattermost
            .create_post(
                op.channel.as_str(),
                op.thread.as_str(),
                &note,
                None,
                &[],
                &pending,
            )
            .await
        {
            tracing::error!(error = %e, "could not post the dead-letter note either");
        }
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
    span: tracing::Span,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("seq", &self.op.seq)
            .finish_non_exhaustive()
    }
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
