//! One owned thread: its session actor.
//!
//! The actor holds the thread's lease (renewed every third of the TTL), reads the thread's
//! events in order from its durable consumer, runs turns on the agent, renders what the
//! thread shows, checkpoints after every turn, uploads artifacts, and keeps the record.
//! A prompt's message is acknowledged only when its turn ended, so a worker that dies
//! mid-turn leaves it for the next owner, which runs it again (with a notice).
//! If the lease is lost the actor stops at once and touches nothing of the thread.
//!
//! This file is the actor loop and the routing of each event; the rest is split by
//! concern: [`consumer`] (the thread consumer's lifecycle and release), [`live`] (making
//! the session live: record, header, agent), [`turn`] (prompt → streamed answer → end),
//! [`checkpoint`] (checkpoint and artifacts), [`approvals`] (answers to the agent) and
//! [`people`] (who may do what, guests, commands).

mod approvals;
mod checkpoint;
mod consumer;
mod error;
mod live;
mod people;
mod repo;
mod turn;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self};
use futures::StreamExt;
use proto::v1::{EventBody, MessagePosted};
use proto::{ChatEvent, LocalRef, Message, ThreadId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::access::{self};
use crate::ctx::Ctx;
use crate::records::{Inbound, SessionRow};
use crate::render::{self, Status};
use crate::replies::Replies;
use crate::runtime::{FromSession, Session};

/// Why an actor ended.
#[derive(Debug)]
pub enum ActorExit {
    /// Idle timeout or lifetime reached: the session sleeps, resumable.
    Idle,
    /// The worker is draining.
    Drained,
    /// An operator stopped the session (admin API): it sleeps, resumable.
    Stopped,
    /// Another worker may own the thread now.
    LeaseLost,
    /// The thread's consumer could not be opened.
    Failed(String),
}

pub use error::{Error, MAX_DELIVER, backoff};

pub struct ThreadActor {
    ctx: Arc<Ctx>,
    thread: ThreadId,
    revision: u64,
}

/// What routing did with an event.
enum Routed {
    /// Nothing to do (already handled, or context for a later prompt): acknowledge it.
    Skip,
    /// Handled: record that and acknowledge it.
    Done,
    /// A prompt for a turn; acknowledged when its turn ends.
    Prompt { text: String, retry: bool },
}

struct Prompt {
    event: ChatEvent,
    /// `None` for a held message run later (an outsider's message the owner allowed).
    message: Option<jetstream::Message>,
    text: String,
    retry: bool,
    /// The span that received the prompt's message (`process <p>.events`): open until the
    /// message is acknowledged, and the parent of its turn.
    span: tracing::Span,
}

struct Turn {
    number: i32,
    event: ChatEvent,
    message: Option<jetstream::Message>,
    answer: Option<LocalRef>,
    /// What the turn's answer post shows.
    transcript: crate::transcript::Transcript,
    started: Instant,
    before: Option<crate::runtime::archive::Manifest>,
    /// When the CLI last showed anything in this turn.
    last_output: tokio::time::Instant,
    /// When the worker told the CLI to stop this turn (over its time).
    stopping: Option<tokio::time::Instant>,
    /// The turn's span: a child of its prompt's `process` span, so the turn is in the
    /// trace of the message that started it. Agent events are handled inside it.
    span: tracing::Span,
    /// The prompt's `process` span, kept open until the prompt is acknowledged.
    _received: tracing::Span,
    /// Tool calls not answered yet, by tool use id (dropping a span ends it).
    tools: std::collections::HashMap<String, tracing::Span>,
    /// Approvals waited for, by the CLI's request id.
    waits: std::collections::HashMap<String, Wait>,
    /// The model answering, as the CLI reported it (the configured one until then).
    model: String,
    /// Whether the thread has shown any of the answer yet.
    shown: bool,
    /// Counts the session as active while the turn lives.
    _active: crate::stats::Active,
}

/// An approval the turn waits for.
struct Wait {
    /// Ended (dropped) when the answer goes to the CLI.
    _span: tracing::Span,
    since: Instant,
    tool: String,
}

struct Live {
    row: SessionRow,
    session: Option<Session>,
    replies: Replies,
    header: LocalRef,
    todo: Option<LocalRef>,
    status: Status,
    participants: Vec<String>,
    /// The repository the session works on, once checked out.
    repo: Option<crate::records::SessionRepo>,
}

impl ThreadActor {
    pub fn new(ctx: Arc<Ctx>, thread: ThreadId, revision: u64) -> Self {
        Self {
            ctx,
            thread,
            revision,
        }
    }

    pub fn thread(&self) -> &ThreadId {
        &self.thread
    }

    pub async fn run(self, drain: CancellationToken) -> ActorExit {
        let lost = CancellationToken::new();
        let stop_keeper = CancellationToken::new();
        // Renews the lease in this same task (not a spawned one), so whatever ends the
        // actor — even an abort — ends the renewals too.
        let key = self.thread.to_string();
        let keeper = async {
            match common::lease::keep(
                &self.ctx.fabric.leases,
                &key,
                self.ctx.id.to_string().into(),
                self.revision,
                common::lease::renew_every(self.ctx.lease_ttl),
                &stop_keeper,
                &lost,
            )
            .await
            {
                Ok(revision) => Some(revision),
                Err(err) => {
                    tracing::warn!(thread = %key, error = &err as &dyn std::error::Error, "lease lost");
                    None
                }
            }
        };
        // Context for the actor's log lines only: exported, it would make one trace of the
        // thread's whole life and pull every turn into it.
        let span = tracing::info_span!(target: common::telemetry::LOG_ONLY, "thread", thread_id = %self.thread, worker = %self.ctx.id);
        let mut state = State {
            ctx: self.ctx.clone(),
            thread: self.thread.clone(),
            live: None,
            turn: None,
            prompts: VecDeque::new(),
            approvals: approvals::core(&self.thread, &self.ctx),
            expiry_retry: None,
            turns_done: 0,
            started: Instant::now(),
            live_channel: None,
            incarnation: String::new(),
            done: false,
            lost: lost.clone(),
            unsaved: None,
            stop: None,
        };
        let serve = async {
            let exit = tracing::Instrument::instrument(state.serve(&drain, &lost), span).await;
            stop_keeper.cancel();
            exit
        };
        let (exit, held) = tokio::join!(serve, keeper);
        // The actor can end (its consumer deleted, its agent gone) before the keeper saw the
        // lease go: a worker frozen past the TTL wakes to both at once. Releasing writes
        // the thread's record, consumer and lease, which are then the successor's: renew
        // once more first, and release only what is still ours.
        let still_ours = match held {
            Some(revision) if !matches!(exit, ActorExit::LeaseLost) => self
                .ctx
                .fabric
                .leases
                .update(&key, self.ctx.id.to_string().into(), revision)
                .await
                .is_ok(),
            _ => false,
        };
        if !still_ours && !matches!(exit, ActorExit::LeaseLost) {
            tracing::warn!(thread = %key, "lease lost while the actor ended; not releasing");
            // Whoever holds the thread now keeps it; a thread nobody holds is claimed.
            let dedupe = format!("requeue:{key}:{}", common::now_ms());
            let _ = crate::claim::queue::enqueue(&self.ctx, &self.thread, &dedupe).await;
        }
        if still_ours {
            Box::pin(state.release(&exit)).await;
        } else if let Some(live) = state.live.take()
            && let Some(session) = live.session
        {
            let _ = session.kill().await;
        }
        exit
    }
}

/// How often a session whose last turn is not saved tries its checkpoint again.
const UNSAVED_RETRY: Duration = Duration::from_secs(15);

struct State {
    ctx: Arc<Ctx>,
    thread: ThreadId,
    live: Option<Live>,
    turn: Option<Turn>,
    prompts: VecDeque<Prompt>,
    /// What waits for the thread's answer, and what an answer does.
    approvals: crate::approvals::Approvals,
    /// When a timeout whose decision could not be stored is tried again.
    expiry_retry: Option<tokio::time::Instant>,
    turns_done: i32,
    started: Instant,
    live_channel: Option<String>,
    /// Identifies the running CLI process; approvals asked by another one are re-bound
    /// when it asks again.
    incarnation: String,
    /// Nothing more to do here (a refused request, a command without a session): give
    /// the slot back once idle.
    done: bool,
    /// Cancelled when the thread's lease is lost: stop acting for it at once.
    lost: CancellationToken,
    /// A finished turn whose checkpoint could not be stored: the session is not let go
    /// (idle, eviction) until a checkpoint holds it.
    unsaved: Option<i32>,
    /// An operator asked to stop the session: who, whether a turn was running, and how
    /// many waiting prompts were dropped. It ends once its turn has.
    stop: Option<(String, bool, usize)>,
}

/// What the live session has next: an event of its agent (only while a turn runs), or a
/// notice of its egress gateway (at any time).
async fn next_from_session(live: &mut Option<Live>, turn: bool) -> FromSession {
    match live.as_mut().and_then(|l| l.session.as_mut()) {
        Some(session) => session.next_input(turn).await,
        None => std::future::pending().await,
    }
}

impl State {
    async fn serve(&mut self, drain: &CancellationToken, lost: &CancellationToken) -> ActorExit {
        // Boxed: an idle session's future should not carry the opening's state.
        let mut messages = match Box::pin(self.open_events()).await {
            Ok(messages) => messages,
            Err(err) => return ActorExit::Failed(err.chain()),
        };
        let idle_timeout = Duration::from_secs(self.ctx.config.worker.idle_timeout_s);
        let lifetime = Duration::from_secs(self.ctx.config.worker.max_session_lifetime_s);
        let mut idle_since = tokio::time::Instant::now();
        let mut progress = tokio::time::interval(Duration::from_secs(20));
        let mut draining = false;
        loop {
            if self.turn.is_none() {
                if let Some((by, turn, dropped)) = self.stop.take() {
                    if let Some(live) = self.live.as_mut() {
                        let _ = live
                            .replies
                            .create(render::admin_stopped(&by, turn, dropped), None)
                            .await;
                    }
                    return ActorExit::Stopped;
                }
                if draining {
                    return ActorExit::Drained;
                }
                if let Some(prompt) = self.prompts.pop_front() {
                    if self.prompts.is_empty() {
                        // Idle sessions keep no queue capacity around.
                        self.prompts = VecDeque::new();
                    }
                    Box::pin(self.start_turn(prompt)).await;
                    continue;
                }
                if self.started.elapsed() > lifetime || (self.done && self.live.is_none()) {
                    return ActorExit::Idle;
                }
            }
            let busy = self.turn.is_some() || !self.prompts.is_empty();
            let idle_at = idle_since + idle_timeout;
            let expiry = self.next_expiry();
            let turn_deadline = self.turn_deadline();
            tokio::select! {
                () = tokio::time::sleep_until(turn_deadline.unwrap_or(idle_at)), if turn_deadline.is_some() => {
                    let span = self.turn_span();
                    Box::pin(self.turn_over_time()).instrument(span).await;
                }
                () = lost.cancelled() => return ActorExit::LeaseLost,
                () = drain.cancelled(), if !draining => {
                    draining = true;
                    self.prompts.clear(); // left unacknowledged: the next owner runs them
                }
                () = tokio::time::sleep(UNSAVED_RETRY), if self.unsaved.is_some() && !busy => {
                    Box::pin(self.save_unsaved()).await;
                }
                () = self.ctx.evict_idle.notified(), if !busy && !draining && self.turns_done > 0 && self.unsaved.is_none() => {
                    // The request may be old (a Notify keeps one): sleep only if a thread
                    // still waits for a slot.
                    if crate::claim::queue::threads_waiting(&self.ctx).await == 0 {
                        continue;
                    }
                    // A queued thread needs this slot; this one sleeps, resumable.
                    if let Some(live) = self.live.as_mut() {
                        let _ = live.replies.create(render::evicted(), None).await;
                    }
                    return ActorExit::Idle;
                }
                () = tokio::time::sleep_until(idle_at), if !busy && !draining => {
                    if self.unsaved.is_some() {
                        // Not let go before its last turn is saved.
                        idle_since = tokio::time::Instant::now();
                        continue;
                    }
                    if self.live.is_some() {
                        let minutes = idle_timeout.as_secs() / 60;
                        if let Some(live) = self.live.as_mut() {
                            let _ = live.replies.create(render::idle_stopped(minutes.max(1)), None).await;
                        }
                    }
                    return ActorExit::Idle;
                }
                () = tokio::time::sleep_until(expiry.unwrap_or(idle_at)), if expiry.is_some() => {
                    Box::pin(self.expire_due()).await;
                }
                _ = progress.tick() => {
                    if let Some(message) = self.turn.as_ref().and_then(|t| t.message.as_ref()) {
                        let _ = message.ack_with(jetstream::AckKind::Progress).await;
                    }
                    for prompt in &self.prompts {
                        if let Some(message) = &prompt.message {
                            let _ = message.ack_with(jetstream::AckKind::Progress).await;
                        }
                    }
                }
                next = messages.next(), if !draining => {
                    match next {
                        Some(Ok(message)) => {
                            idle_since = tokio::time::Instant::now();
                            Box::pin(self.on_message(message)).await;
                        }
                        Some(Err(err)) => tracing::warn!(error = %err, "thread consumer hiccup"),
                        None => return ActorExit::Failed("thread consumer ended".into()),
                    }
                }
                input = next_from_session(&mut self.live, self.turn.is_some()) => {
                    let event = match input {
                        FromSession::Egress(notice) => {
                            let span = self.turn_span();
                            Box::pin(self.on_egress_notice(notice)).instrument(span).await;
                            continue;
                        }
                        FromSession::Agent(event) => event,
                    };
                    idle_since = tokio::time::Instant::now();
                    if let Some(turn) = self.turn.as_mut() {
                        turn.last_output = idle_since;
                    }
                    let span = self.turn_span();
                    match event {
                        Some(event) => Box::pin(self.on_agent_event(event)).instrument(span).await,
                        None => Box::pin(self.agent_died()).instrument(span).await,
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, message: jetstream::Message) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let event = match ChatEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(proto::Error::UnsupportedVersion { version, .. }) if version > proto::CURRENT => {
                // Written by an upgraded gateway: this worker leaves the thread's events
                // where they are until an upgraded worker owns it (rolling upgrade).
                tracing::warn!(
                    version,
                    "event of a newer wire version; waiting for an upgraded worker"
                );
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
                return;
            }
            Err(err) => {
                // Permanent, and nobody to tell: without the event its channel is unknown.
                let err = Error::Undecodable(err);
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "undecodable event dropped"
                );
                let _ = message.ack_with(jetstream::AckKind::Term).await;
                return;
            }
        };
        // One message: the span follows its producer, so the gateway's publish, this
        // and the turn it starts share one trace.
        let span = common::telemetry::process_span(
            &self.ctx.names.events_destination(),
            &message.subject,
            common::telemetry::message_id(message.headers.as_ref()),
            &self.ctx.names.thread_consumer(&self.thread),
        );
        span.record("thread_id", tracing::field::display(&self.thread));
        common::telemetry::follow(&span, message.headers.as_ref());
        self.live_channel
            .get_or_insert_with(|| event.channel.to_string());
        let received = span.clone();
        async move {
            match self.route(&event).await {
                Ok(Routed::Skip) => {
                    let _ = message.ack().await;
                }
                Ok(Routed::Done) => {
                    let _ = self.ctx.records.mark_handled(&event.event_id, None).await;
                    let _ = message.ack().await;
                }
                Ok(Routed::Prompt { text, retry }) => self.prompts.push_back(Prompt {
                    text,
                    event,
                    message: Some(message),
                    retry,
                    span: received,
                }),
                Err(err) => self.failed(&event, &message, delivered, err).await,
            }
        }
        .instrument(span)
        .await;
    }

    /// The running turn's span (none between turns).
    fn turn_span(&self) -> tracing::Span {
        self.turn
            .as_ref()
            .map_or_else(tracing::Span::none, |turn| turn.span.clone())
    }

    /// Handles `event` as far as it can be handled now; a prompt is queued for a turn.
    async fn route(&mut self, event: &ChatEvent) -> Result<Routed, Error> {
        let has_session = self.live.is_some() || self.try_row().await?.is_some();
        let (kind, body) = match &event.body {
            EventBody::Message(m)
                if !(has_session
                    || m.mentions_bot
                    || m.channel_type == proto::v1::ChannelType::Direct) =>
            {
                ("context", m.text.clone())
            }
            EventBody::Message(m) if is_side_conversation(m) => ("side", m.text.clone()),
            EventBody::Message(m) => ("prompt", m.text.clone()),
            EventBody::SlashCommand(c) => ("command", c.text.clone()),
            EventBody::Reaction(r) => (
                "reaction",
                format!("{}{}", if r.added { "+" } else { "-" }, r.emoji),
            ),
            EventBody::ButtonAction(a) => ("action", a.action.clone()),
            EventBody::DialogSubmission(d) => ("dialog", d.submission_json.clone()),
        };
        let inbound = self.ctx.records.record_inbound(event, kind, &body).await?;
        if inbound == Inbound::Handled {
            return Ok(Routed::Skip);
        }
        let retry = inbound == Inbound::Unfinished;
        match (&event.body, kind) {
            (_, "context") => Ok(Routed::Skip),
            (_, "side") => Ok(Routed::Done),
            (EventBody::Message(m), _) => {
                if has_session && let Some(message) = crate::repo::plan::edited_message(&m.text) {
                    self.edit_push_message(event, message).await?;
                    return Ok(Routed::Done);
                }
                if let Some(command) = access::parse_message(&m.text, m.mentions_bot) {
                    self.command(event, command).await?;
                } else if let Some(refusal) = access::refusal(
                    &self.ctx.config.worker,
                    &event.user,
                    event.channel.as_str(),
                    self.ctx
                        .directory
                        .allowed_users(&self.ctx.config.worker)
                        .await
                        .as_ref(),
                ) {
                    self.say(event, refusal).await;
                    if self.live.is_none() {
                        self.done = true;
                    }
                } else if has_session
                    && !self.is_admitted(event).await?
                    && !self.is_participant(event).await?
                {
                    self.hold_guest_message(event, &body).await?;
                } else {
                    return Ok(Routed::Prompt { text: body, retry });
                }
                Ok(Routed::Done)
            }
            (EventBody::SlashCommand(command), _) => match access::parse_slash(&command.text) {
                Some(parsed) => {
                    self.command(event, parsed).await?;
                    Ok(Routed::Done)
                }
                None => Ok(Routed::Prompt {
                    text: command.text.clone(),
                    retry,
                }),
            },
            (EventBody::Reaction(reaction), _) => {
                if reaction.added {
                    // Mattermost's reaction events name the user by id only.
                    let mut event = event.clone();
                    if event.user.username.is_empty()
                        && let Some(name) =
                            self.ctx.records.username_of(event.user.id.as_str()).await?
                    {
                        event.user.username = name;
                    }
                    self.on_reaction(&event, reaction.post_id.as_str(), &reaction.emoji)
                        .await?;
                }
                Ok(Routed::Done)
            }
            (EventBody::ButtonAction(action), _)
                if action.action == proto::control::ADMIN_STOP_ACTION =>
            {
                self.admin_stop(action).await;
                Ok(Routed::Done)
            }
            (EventBody::ButtonAction(action), _) => {
                self.on_button(event, action).await?;
                Ok(Routed::Done)
            }
            _ => Ok(Routed::Done),
        }
    }

    /// Handling `event` failed: a retryable error leaves it for another delivery (after a
    /// backoff) until the last one; then, or for a permanent error, the thread is told
    /// and the event ends. Without a notice posted it is never ended: a message is not
    /// lost silently.
    async fn failed(
        &mut self,
        event: &ChatEvent,
        message: &jetstream::Message,
        delivered: i64,
        err: Error,
    ) {
        self.ctx.stats.error(err.kind(), err.is_retryable());
        let retry = err.is_retryable() && delivered < MAX_DELIVER;
        let nak = jetstream::AckKind::Nak(Some(error::backoff(delivered)));
        if retry {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                delivered,
                "event not handled; will retry"
            );
            let _ = message.ack_with(nak).await;
            return;
        }
        tracing::error!(
            error = &err as &dyn std::error::Error,
            delivered,
            "event failed; telling the thread"
        );
        let text = render::event_failed(&err.chain(), err.is_retryable());
        let told = crate::replies::notice(
            &self.ctx.fabric.js,
            &self.ctx.names,
            &self.thread,
            &event.channel,
            &format!("failed-{}", event.event_id),
            text,
        )
        .await;
        match told {
            Ok(()) => {
                let _ = self.ctx.records.mark_handled(&event.event_id, None).await;
                let _ = message.ack_with(jetstream::AckKind::Term).await;
            }
            Err(_) => {
                let _ = message.ack_with(nak).await;
            }
        }
    }

    async fn try_row(&self) -> Result<Option<SessionRow>, Error> {
        Ok(self.ctx.records.session(self.thread.as_str()).await?)
    }

    async fn row(&self) -> Option<SessionRow> {
        self.ctx
            .records
            .session(self.thread.as_str())
            .await
            .ok()
            .flatten()
    }
}

/// A message that starts by mentioning someone other than the bot is a side
/// conversation between people in the thread.
fn is_side_conversation(message: &MessagePosted) -> bool {
    let first = message.text.split_whitespace().next().unwrap_or("");
    first.starts_with('@') && !message.mentions_bot
}
