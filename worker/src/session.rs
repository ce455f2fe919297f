//! One owned thread: its session actor.
//!
//! The actor holds the thread's lease (renewed every third of the TTL), reads the thread's
//! events in order from its durable consumer, runs turns on the agent, renders what the
//! thread shows, checkpoints after every turn, uploads artifacts, and keeps the record.
//! A prompt's message is acknowledged only when its turn ended, so a worker that dies
//! mid-turn leaves it for the next owner, which runs it again (with a notice).
//! If the lease is lost the actor stops at once and touches nothing of the thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;
use proto::v1::{EventBody, MessagePosted};
use proto::{ChatEvent, LocalRef, Message, SessionId, ThreadId};
use tokio_util::sync::CancellationToken;

use common::signing::ActionClaims;

use crate::access::{self, Command};
use crate::agent::{Event, PermissionAnswer, PermissionMode, PermissionRequest, TurnResult};
use crate::approvals::{self, Choice, Decision, Kind};
use crate::fleet::Ctx;
use crate::records::{AnswerAttempt, ApprovalRow, Inbound, SessionRow};
use crate::render::{self, Header, Status, Verdict};
use crate::replies::Replies;
use crate::runtime::{Session, SessionSpec, archive::ChangeKind};

/// Why an actor ended.
#[derive(Debug)]
pub enum ActorExit {
    /// Idle timeout or lifetime reached: the session sleeps, resumable.
    Idle,
    /// The worker is draining.
    Drained,
    /// Another worker may own the thread now.
    LeaseLost,
    /// The thread's consumer could not be opened.
    Failed(String),
}

/// What became of a thread's consumer when the thread was released.
enum Retired {
    /// Deleted, after recording that the events up to this stream sequence were read.
    After(u64),
    /// Kept for the next owner: it holds this many unread or unacknowledged events.
    Kept(u64),
    /// Absent or unreachable: counted again once the lease is gone.
    Unknown,
}

/// How long a thread whose events could not be read waits before it is queued again.
const RETRY_UNREADABLE: Duration = Duration::from_secs(5);

pub struct ThreadActor {
    ctx: Arc<Ctx>,
    thread: ThreadId,
    revision: u64,
}

struct Prompt {
    event: ChatEvent,
    /// `None` for a held message run later (an outsider's message the owner allowed).
    message: Option<jetstream::Message>,
    text: String,
    retry: bool,
}

struct Turn {
    number: i32,
    event: ChatEvent,
    message: Option<jetstream::Message>,
    answer: Option<LocalRef>,
    blocks: Vec<String>,
    partial: String,
    error: Option<String>,
    started: Instant,
    before: Option<crate::runtime::archive::Manifest>,
    interrupted_by: Option<String>,
}

/// A request of the running CLI waiting for the thread (permission, AskUserQuestion,
/// plan), bound to its durable approval row.
struct Pending {
    approval: String,
    kind: Kind,
    request: PermissionRequest,
    post: LocalRef,
    expires_at_ms: i64,
    /// The question shown (AskUserQuestion asks one at a time) and the answers so far.
    step: usize,
    answers: BTreeMap<String, String>,
}

/// How someone answered: the button's action id, or the reaction's emoji.
#[derive(Debug, Clone, Copy)]
enum Answer<'a> {
    Button(&'a str),
    Reaction(&'a str),
}

struct Live {
    row: SessionRow,
    session: Option<Session>,
    replies: Replies,
    header: LocalRef,
    todo: Option<LocalRef>,
    status: Status,
    participants: Vec<String>,
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
        let keeper = {
            let leases = self.ctx.fabric.leases.clone();
            let key = self.thread.to_string();
            let me = self.ctx.id.to_string();
            let every = (self.ctx.lease_ttl / 3).max(Duration::from_millis(100));
            let lost = lost.clone();
            let stop = stop_keeper.clone();
            let mut revision = self.revision;
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    match leases.update(&key, me.clone().into(), revision).await {
                        Ok(next) => revision = next,
                        Err(err) => {
                            tracing::warn!(thread = %key, error = %err, "lease lost");
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
        };
        let span = tracing::info_span!("thread", thread_id = %self.thread, worker = %self.ctx.id);
        let mut state = State {
            ctx: self.ctx.clone(),
            thread: self.thread.clone(),
            live: None,
            turn: None,
            prompts: VecDeque::new(),
            pending: HashMap::new(),
            turns_done: 0,
            started: Instant::now(),
            live_channel: None,
            incarnation: String::new(),
            done: false,
        };
        let serve = async {
            let exit = tracing::Instrument::instrument(state.serve(&drain, &lost), span).await;
            stop_keeper.cancel();
            exit
        };
        let (exit, ()) = tokio::join!(serve, keeper);
        if !matches!(exit, ActorExit::LeaseLost) {
            Box::pin(state.release(&exit)).await;
        } else if let Some(live) = state.live.take()
            && let Some(session) = live.session
        {
            let _ = session.kill().await;
        }
        exit
    }
}

struct State {
    ctx: Arc<Ctx>,
    thread: ThreadId,
    live: Option<Live>,
    turn: Option<Turn>,
    prompts: VecDeque<Prompt>,
    pending: HashMap<String, Pending>,
    turns_done: i32,
    started: Instant,
    live_channel: Option<String>,
    /// Identifies the running CLI process; approvals asked by another one are re-bound
    /// when it asks again.
    incarnation: String,
    /// Nothing more to do here (a refused request, a command without a session): give
    /// the slot back once idle.
    done: bool,
}

async fn next_agent_event(live: &mut Option<Live>) -> Option<Event> {
    match live.as_mut().and_then(|l| l.session.as_mut()) {
        Some(session) => session.agent().next_event().await,
        None => std::future::pending().await,
    }
}

fn is_stop_emoji(emoji: &str) -> bool {
    matches!(emoji, "x" | "octagonal_sign")
}

impl State {
    /// Opens this thread's event consumer (read only by the lease holder, so by us).
    async fn open_events(&self) -> Result<pull::Stream, String> {
        let names = &self.ctx.names;
        let consumer_name = names.thread_consumer(&self.thread);
        let config = |deliver_policy| pull::Config {
            durable_name: Some(consumer_name.clone()),
            filter_subject: names.event_subject(&self.thread),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 256,
            inactive_threshold: Duration::from_secs(7 * 24 * 3600),
            deliver_policy,
            ..Default::default()
        };
        let events = &self.ctx.fabric.events;
        let mut consumer = match events.get_consumer(&consumer_name).await {
            Ok(consumer) => Ok(consumer),
            Err(_) => {
                // No consumer: the thread's first owner, or it went idle and its consumer
                // was retired. Read on after where that one stopped; without a record, from
                // the start (events handled before are skipped by their inbound record).
                let deliver = match self.ctx.records.events_after(self.thread.as_str()).await {
                    Ok(Some(after)) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    _ => jetstream::consumer::DeliverPolicy::All,
                };
                events
                    .get_or_create_consumer(&consumer_name, config(deliver))
                    .await
            }
        };
        // Deliveries still pending from a previous owner (it died mid-turn) would only come
        // back after the ack wait. We hold the lease, so nobody else reads this consumer:
        // recreate it from the ack floor, and they come at once (handled ones are skipped
        // by the inbound record).
        if let Ok(existing) = consumer.as_mut()
            && let Ok(info) = existing.info().await
            && info.num_ack_pending > 0
        {
            let start = info.ack_floor.stream_sequence + 1;
            tracing::info!(
                pending = info.num_ack_pending,
                start,
                "taking over in-flight events"
            );
            let _ = events.delete_consumer(&consumer_name).await;
            consumer = events
                .create_consumer(config(
                    jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                ))
                .await;
        }
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(err) => return Err(err.to_string()),
        };
        consumer.messages().await.map_err(|err| err.to_string())
    }

    async fn serve(&mut self, drain: &CancellationToken, lost: &CancellationToken) -> ActorExit {
        // Boxed: an idle session's future should not carry the opening's state.
        let mut messages = match Box::pin(self.open_events()).await {
            Ok(messages) => messages,
            Err(err) => return ActorExit::Failed(err),
        };
        let idle_timeout = Duration::from_secs(self.ctx.config.worker.idle_timeout_s);
        let lifetime = Duration::from_secs(self.ctx.config.worker.max_session_lifetime_s);
        let mut idle_since = tokio::time::Instant::now();
        let mut progress = tokio::time::interval(Duration::from_secs(20));
        let mut draining = false;
        loop {
            if self.turn.is_none() {
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
            tokio::select! {
                () = lost.cancelled() => return ActorExit::LeaseLost,
                () = drain.cancelled(), if !draining => {
                    draining = true;
                    self.prompts.clear(); // left unacknowledged: the next owner runs them
                }
                () = self.ctx.evict_idle.notified(), if !busy && !draining && self.turns_done > 0 => {
                    // A queued thread needs this slot; this one sleeps, resumable.
                    if let Some(live) = self.live.as_mut() {
                        let _ = live.replies.create(render::evicted(), None).await;
                    }
                    return ActorExit::Idle;
                }
                () = tokio::time::sleep_until(idle_at), if !busy && !draining => {
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
                event = next_agent_event(&mut self.live), if self.turn.is_some() => {
                    idle_since = tokio::time::Instant::now();
                    match event {
                        Some(event) => Box::pin(self.on_agent_event(event)).await,
                        None => Box::pin(self.agent_died()).await,
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, message: jetstream::Message) {
        let event = match ChatEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(error = %err, "undecodable event dropped");
                let _ = message.ack_with(jetstream::AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!("event", event_id = %event.event_id);
        common::telemetry::follow(&span, message.headers.as_ref());
        let _enter = span.enter();
        let has_session = self.live.is_some() || self.row().await.is_some();
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
        self.live_channel
            .get_or_insert_with(|| event.channel.to_string());
        let inbound = match self.ctx.records.record_inbound(&event, kind, &body).await {
            Ok(inbound) => inbound,
            Err(err) => {
                tracing::warn!(error = %err, "could not record inbound event; will retry");
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };
        if inbound == Inbound::Handled {
            let _ = message.ack().await;
            return;
        }
        let done = match (&event.body, kind) {
            (_, "context") | (_, "side") => {
                if kind == "side" {
                    let _ = self.ctx.records.mark_handled(&event.event_id, None).await;
                }
                let _ = message.ack().await;
                return;
            }
            (EventBody::Message(m), _) => {
                if let Some(command) = access::parse_message(&m.text, m.mentions_bot) {
                    self.command(&event, command).await;
                    true
                } else if let Some(refusal) = access::refusal(
                    &self.ctx.config.worker,
                    &event.user.username,
                    event.channel.as_str(),
                ) {
                    self.say(&event, refusal).await;
                    if self.live.is_none() {
                        self.done = true;
                    }
                    true
                } else if has_session && !self.is_participant(&event).await {
                    self.hold_guest_message(&event, &body).await;
                    true
                } else {
                    self.prompts.push_back(Prompt {
                        text: body,
                        event,
                        message: Some(message),
                        retry: inbound == Inbound::Unfinished,
                    });
                    return;
                }
            }
            (EventBody::SlashCommand(command), _) => match access::parse_slash(&command.text) {
                Some(parsed) => {
                    self.command(&event, parsed).await;
                    true
                }
                None => {
                    self.prompts.push_back(Prompt {
                        text: command.text.clone(),
                        event: event.clone(),
                        message: Some(message),
                        retry: inbound == Inbound::Unfinished,
                    });
                    return;
                }
            },
            (EventBody::Reaction(reaction), _) => {
                if reaction.added {
                    // Mattermost's reaction events name the user by id only.
                    let mut event = event.clone();
                    if event.user.username.is_empty()
                        && let Ok(Some(name)) =
                            self.ctx.records.username_of(event.user.id.as_str()).await
                    {
                        event.user.username = name;
                    }
                    self.on_reaction(&event, reaction.post_id.as_str(), &reaction.emoji)
                        .await;
                }
                true
            }
            (EventBody::ButtonAction(action), _) => {
                self.on_button(&event, action).await;
                true
            }
            _ => true,
        };
        if done {
            let _ = self.ctx.records.mark_handled(&event.event_id, None).await;
            let _ = message.ack().await;
        }
    }

    async fn row(&self) -> Option<SessionRow> {
        self.ctx
            .records
            .session(self.thread.as_str())
            .await
            .ok()
            .flatten()
    }

    /// Whether the user may steer the session (stop it, tighten its permissions): its
    /// owner, a participant, or an approver.
    fn may_act(&self, username: &str, user_id: &str) -> bool {
        match &self.live {
            Some(live) => {
                live.row.started_by == user_id
                    || live.participants.iter().any(|p| p == username)
                    || self.is_approver(username)
            }
            None => false,
        }
    }

    fn is_approver(&self, username: &str) -> bool {
        self.ctx
            .config
            .worker
            .approvers
            .iter()
            .any(|a| a.trim_start_matches('@') == username)
    }

    async fn interrupt(&mut self, by: &str) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        turn.interrupted_by = Some(by.to_owned());
        if let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) {
            let handle = session.agent_handle();
            // Deny pending questions first so the CLI is not stuck waiting for them.
            let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
            for p in pending {
                let _ = handle
                    .respond(
                        &p.request.request_id,
                        PermissionAnswer::DenyAndInterrupt {
                            message: format!("Stopped by {by}."),
                        },
                    )
                    .await;
                let _ = self
                    .ctx
                    .records
                    .close_approval(&p.approval, "interrupted")
                    .await;
                let text = render::with_footer(
                    &approvals::body(p.kind, &p.request.tool_name, &p.request.input),
                    &render::verdict(&Verdict::Stopped { by }),
                );
                self.update_prompt(&p.post, text, false).await;
            }
            if let Err(err) = handle.interrupt().await {
                tracing::warn!(error = %err, "interrupt failed");
            }
        }
    }

    async fn status(&mut self, event: &ChatEvent) {
        let usage = self
            .ctx
            .records
            .usage(self.thread.as_str())
            .await
            .unwrap_or_default();
        let text = match &self.live {
            Some(live) => format!(
                "**Session** `{}` on worker `{}` — {}.\nTurns: {} · {} in / {} out tokens · ${:.4}",
                live.row.session_id,
                self.ctx.id,
                if self.turn.is_some() {
                    "working"
                } else {
                    "idle"
                },
                usage.0,
                usage.1,
                usage.2,
                usage.3
            ),
            None => format!("Session on worker `{}`, not started yet.", self.ctx.id),
        };
        if let Some(live) = self.live.as_mut() {
            let _ = live.replies.ephemeral(&event.user.id, text).await;
        } else {
            let _ = self.notice(event, text).await;
        }
    }

    /// Makes sure the session is live (record, header, agent), resuming from the last
    /// checkpoint when there is one.
    async fn ensure_live(&mut self, event: &ChatEvent) -> Result<(), String> {
        if self.live.as_ref().is_some_and(|l| l.session.is_some()) {
            return Ok(());
        }
        self.attach(event).await?;
        self.start_agent().await
    }

    /// Makes the session present on this worker without starting the agent: its record
    /// (created for a new thread), its reply sequence and its header.
    async fn attach(&mut self, event: &ChatEvent) -> Result<(), String> {
        if self.live.is_some() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let records = &ctx.records;
        let thread = self.thread.as_str();
        let existing = records.session(thread).await.map_err(|e| e.to_string())?;
        let previous = existing.as_ref().and_then(|row| {
            row.owner
                .clone()
                .filter(|owner| owner != ctx.id.as_str())
                .or_else(|| row.status.strip_prefix("orphaned:").map(str::to_owned))
        });
        let row = match existing {
            Some(row) => row,
            None => records
                .create_session(&SessionRow {
                    thread_id: thread.to_owned(),
                    session_id: uuid::Uuid::now_v7().to_string(),
                    channel_id: event.channel.to_string(),
                    started_by: event.user.id.to_string(),
                    started_by_name: event.user.username.clone(),
                    permission_mode: ctx.config.worker.permission_mode.clone(),
                    owner: Some(ctx.id.to_string()),
                    cli_session_id: None,
                    status: "starting".into(),
                    turns: 0,
                    header_ref: None,
                })
                .await
                .map_err(|e| e.to_string())?,
        };
        records
            .set_owner(thread, Some(ctx.id.as_str()), "starting")
            .await
            .map_err(|e| e.to_string())?;
        self.turns_done = row.turns;
        let session_id = SessionId::new(row.session_id.clone());
        let participants = records.participants(thread).await.unwrap_or_default();
        if self.live.is_none() {
            let mut replies = Replies::resume(
                ctx.fabric.js.clone(),
                &ctx.fabric.replies,
                &ctx.names,
                self.thread.clone(),
                proto::ChannelId::new(row.channel_id.clone()),
                session_id.clone(),
            )
            .await;
            if let Some(previous) = &previous {
                let _ = replies
                    .create(render::takeover(previous, ctx.id.as_str()), None)
                    .await;
            }
            let header = match row.header_ref {
                Some(seq) => LocalRef {
                    session: session_id.clone(),
                    seq: u32::try_from(seq).unwrap_or(0),
                },
                None => {
                    let text = render::header(&Header {
                        started_by: &row.started_by_name,
                        participants: &participants,
                        permission_mode: &row.permission_mode,
                        worker: ctx.id.as_str(),
                        status: Status::Starting,
                    });
                    let local = replies
                        .create(text, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = records.set_header_ref(thread, local.seq as i32).await;
                    local
                }
            };
            self.live = Some(Live {
                row: row.clone(),
                session: None,
                replies,
                header,
                todo: None,
                status: Status::Starting,
                participants,
            });
        }
        Ok(())
    }

    /// Starts the agent of an attached session.
    async fn start_agent(&mut self) -> Result<(), String> {
        let ctx = self.ctx.clone();
        let records = &ctx.records;
        let thread = self.thread.as_str();
        let Some(row) = self.live.as_ref().map(|l| l.row.clone()) else {
            return Err("the session is not attached".into());
        };
        let session_id = SessionId::new(row.session_id.clone());
        let restore = match records
            .latest_checkpoint(thread)
            .await
            .map_err(|e| e.to_string())?
        {
            Some((_, key)) => match ctx
                .store
                .objects()
                .get(&ObjectPath::from(key.as_str()))
                .await
            {
                Ok(object) => Some(object.bytes().await.map_err(|e| e.to_string())?),
                Err(err) => {
                    tracing::warn!(error = %err, "checkpoint unreadable; starting fresh");
                    None
                }
            },
            None => None,
        };
        let mut spec = SessionSpec::new(session_id);
        spec.permission_mode = PermissionMode::parse(&row.permission_mode).unwrap_or_default();
        spec.resume = if restore.is_some() {
            row.cli_session_id.clone()
        } else {
            None
        };
        spec.restore = restore;
        let session = ctx.runtime.start(spec).await.map_err(|e| e.to_string())?;
        self.incarnation = uuid::Uuid::new_v4().to_string();
        if let Some(live) = self.live.as_mut() {
            live.session = Some(session);
        }
        Ok(())
    }

    /// Why `event` may not start a new session here (access lists, per-user cap).
    async fn refuse_new_session(&self, event: &ChatEvent) -> Option<String> {
        if self.row().await.is_some() {
            return None;
        }
        let config = &self.ctx.config.worker;
        if let Some(refusal) = access::refusal(config, &event.user.username, event.channel.as_str())
        {
            return Some(refusal);
        }
        let max = config.max_sessions_per_user;
        if max > 0 {
            let live = self
                .ctx
                .records
                .live_sessions_of(event.user.id.as_str(), self.thread.as_str())
                .await
                .unwrap_or(0);
            if usize::try_from(live).unwrap_or(usize::MAX) >= max {
                return Some(render::too_many_sessions(&event.user.username, max));
            }
        }
        None
    }

    async fn set_status(&mut self, status: Status) {
        let worker = self.ctx.id.clone();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.status == status {
            return;
        }
        live.status = status;
        let text = render::header(&Header {
            started_by: &live.row.started_by_name,
            participants: &live.participants,
            permission_mode: &live.row.permission_mode,
            worker: worker.as_str(),
            status,
        });
        let header = live.header.clone();
        let db = match status {
            Status::Working | Status::WaitingForApproval => "working",
            Status::Idle => "idle",
            _ => "starting",
        };
        // The header edit and the record are independent: one wait for both.
        let _ = tokio::join!(
            live.replies.update(&header, text, None, false),
            self.ctx
                .records
                .set_status(self.thread.as_str(), worker.as_str(), db),
        );
    }

    async fn start_turn(&mut self, prompt: Prompt) {
        if self.live.is_none()
            && let Some(refusal) = self.refuse_new_session(&prompt.event).await
        {
            self.fail_prompt(&prompt, &refusal).await;
            self.done = true;
            return;
        }
        if let Err(err) = self.ensure_live(&prompt.event).await {
            tracing::error!(error = %err, "session could not start");
            self.fail_prompt(
                &prompt,
                &format!(":warning: The session could not start: {err}. Reply to try again."),
            )
            .await;
            return;
        }
        if prompt.retry
            && let Some(live) = self.live.as_mut()
        {
            let _ = live.replies.create(render::retrying_cut_turn(), None).await;
        }
        let number = self.turns_done + 1;
        let records = &self.ctx.records;
        let (_, context) = tokio::join!(
            records.start_turn(
                self.thread.as_str(),
                number,
                &prompt.event.event_id,
                self.ctx.id.as_str(),
            ),
            records.pending_context(self.thread.as_str()),
        );
        let context = context.unwrap_or_default();
        let mut text = String::new();
        if !context.is_empty() {
            text.push_str("Earlier messages in this thread:\n");
            for (_, author, body) in &context {
                text.push_str(&format!("@{author}: {body}\n"));
            }
            text.push_str("\nNow, from ");
            text.push_str(&format!("@{}: ", prompt.event.user.username));
        }
        text.push_str(&prompt.text);
        let attachments = self.attachments(&prompt.event).await;
        if !attachments.is_empty() {
            let names: Vec<&str> = attachments.iter().map(|(name, _)| name.as_str()).collect();
            text.push_str(&format!(
                "\n\n(Files attached to this message, now in the workspace: {})",
                names.join(", ")
            ));
            if let Some(files) = self
                .live
                .as_ref()
                .and_then(|l| l.session.as_ref())
                .map(|s| s.files())
                && let Err(err) = files.import(attachments).await
            {
                tracing::warn!(error = %err, "attached files could not be copied into the workspace");
            }
        }
        let live = self.live.as_mut().expect("ensure_live made it live");
        let session = live
            .session
            .as_ref()
            .expect("ensure_live started the session");
        let before = session.files().manifest().await.ok();
        let handle = session.agent_handle();
        if let Err(err) = handle.send_message(&text).await {
            self.fail_prompt(
                &prompt,
                &format!(":warning: Claude Code did not accept the message: {err}"),
            )
            .await;
            return;
        }
        for (event_id, _, _) in context {
            let _ = self.ctx.records.mark_handled(&event_id, Some(number)).await;
        }
        self.turn = Some(Turn {
            number,
            event: prompt.event,
            message: prompt.message,
            answer: None,
            blocks: Vec::new(),
            partial: String::new(),
            error: None,
            started: Instant::now(),
            before,
            interrupted_by: None,
        });
        self.set_status(Status::Working).await;
    }

    /// Files attached to the post, as the gateway staged them in the object store
    /// (`uploads/<thread>/<file id>/<name>`): (workspace path, content).
    async fn attachments(&self, event: &ChatEvent) -> Vec<(String, Vec<u8>)> {
        let EventBody::Message(message) = &event.body else {
            return Vec::new();
        };
        let mut files = Vec::new();
        for file_id in &message.file_ids {
            let prefix = ObjectPath::from(format!("uploads/{}/{}", self.thread, file_id));
            let listed: Vec<_> = match futures::TryStreamExt::try_collect(
                self.ctx.store.objects().list(Some(&prefix)),
            )
            .await
            {
                Ok(listed) => listed,
                Err(err) => {
                    tracing::warn!(error = %err, %file_id, "attached file not found");
                    continue;
                }
            };
            for meta in listed.into_iter().take(1) {
                let Some(name) = meta.location.filename().map(str::to_owned) else {
                    continue;
                };
                match self.ctx.store.objects().get(&meta.location).await {
                    Ok(object) => match object.bytes().await {
                        Ok(bytes) => files.push((name, bytes.to_vec())),
                        Err(err) => {
                            tracing::warn!(error = %err, %file_id, "attached file unreadable")
                        }
                    },
                    Err(err) => tracing::warn!(error = %err, %file_id, "attached file unreadable"),
                }
            }
        }
        files
    }

    async fn fail_prompt(&mut self, prompt: &Prompt, text: &str) {
        let posted = match self.live.as_mut() {
            Some(live) => live.replies.create(text.to_owned(), None).await.is_ok(),
            None => crate::replies::notice(
                &self.ctx.fabric.js,
                &self.ctx.names,
                &self.thread,
                &prompt.event.channel,
                &prompt.event.event_id,
                text.to_owned(),
            )
            .await
            .is_ok(),
        };
        if posted {
            let _ = self
                .ctx
                .records
                .mark_handled(&prompt.event.event_id, None)
                .await;
            if let Some(message) = &prompt.message {
                let _ = message.ack().await;
            }
        }
    }

    fn answer_text(turn: &Turn) -> String {
        let mut parts: Vec<&str> = turn.blocks.iter().map(String::as_str).collect();
        if !turn.partial.is_empty() {
            parts.push(&turn.partial);
        }
        if parts.is_empty() {
            ":hourglass_flowing_sand: Working…".to_owned()
        } else {
            parts.join("\n\n")
        }
    }

    async fn publish_answer(&mut self, streaming: bool, extra: Option<String>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let mut text = Self::answer_text(turn);
        if let Some(extra) = extra {
            text.push_str("\n\n");
            text.push_str(&extra);
        }
        match &turn.answer {
            Some(local) => {
                let _ = live.replies.update(local, text, None, streaming).await;
            }
            None => {
                if let Ok(local) = live.replies.create(text, None).await {
                    turn.answer = Some(local);
                }
            }
        }
    }

    async fn on_agent_event(&mut self, event: Event) {
        match event {
            Event::Init(init) => {
                if let Some(live) = self.live.as_mut()
                    && live.row.cli_session_id.as_deref() != Some(init.session_id.as_str())
                {
                    live.row.cli_session_id = Some(init.session_id.clone());
                    let _ = self
                        .ctx
                        .records
                        .set_cli_session(self.thread.as_str(), &init.session_id)
                        .await;
                }
            }
            Event::TextDelta { text } => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.partial.push_str(&text);
                }
                self.publish_answer(true, None).await;
            }
            Event::Text { text, .. } => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.partial.clear();
                    if !text.trim().is_empty() {
                        turn.blocks.push(text);
                    }
                }
                self.publish_answer(true, None).await;
            }
            Event::ToolUse { name, input, .. } => {
                let line = render::tool_use(&name, &input);
                if let Some(turn) = self.turn.as_mut()
                    && !line.is_empty()
                {
                    turn.partial.clear();
                    turn.blocks.push(line);
                }
                self.publish_answer(true, None).await;
            }
            Event::ToolResult {
                content,
                is_error: true,
                ..
            } => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.blocks.push(render::tool_error(&content));
                }
            }
            Event::PermissionRequest(request) => self.ask(request).await,
            Event::PermissionCancelled { request_id } => {
                if let Some(p) = self.pending.remove(&request_id) {
                    self.withdraw(p).await;
                }
            }
            Event::PermissionModeChanged { mode } => {
                let changed = self
                    .live
                    .as_ref()
                    .is_some_and(|l| l.row.permission_mode != mode);
                if changed {
                    // E.g. an approved plan leaves plan mode.
                    let _ = self
                        .ctx
                        .records
                        .set_permission_mode(self.thread.as_str(), &mode)
                        .await;
                    if let Some(live) = self.live.as_mut() {
                        live.row.permission_mode = mode;
                    }
                    self.refresh_header().await;
                }
            }
            Event::TodoUpdate { items } => {
                let text = render::todo_list(&items);
                if let Some(live) = self.live.as_mut() {
                    match &live.todo {
                        Some(local) => {
                            let local = local.clone();
                            let _ = live.replies.update(&local, text, None, false).await;
                        }
                        None => {
                            if let Ok(local) = live.replies.create(text, None).await {
                                live.todo = Some(local);
                            }
                        }
                    }
                }
            }
            Event::Error(error) => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.error = Some(render::agent_error(
                        &error.kind,
                        error.api_status,
                        &error.message,
                    ));
                }
            }
            Event::TurnResult(result) => self.finish_turn(result).await,
            _ => {}
        }
    }

    /// The props of a post with `buttons` answering approval `approval_id` at `step`.
    fn signed_buttons(&self, approval_id: &str, step: usize, buttons: &[render::Button]) -> String {
        let channel = self
            .live
            .as_ref()
            .map(|l| l.row.channel_id.clone())
            .or_else(|| self.live_channel.clone())
            .unwrap_or_default();
        // Buttons stay valid well past the approval's own timeout, so a click on a
        // request that moved to another worker still reaches the thread.
        let expires_at_s =
            common::now_ms() / 1000 + self.ctx.config.worker.approval_timeout_s + 7 * 24 * 3600;
        let data = serde_json::json!({"approval": approval_id, "step": step}).to_string();
        let signed: Vec<(render::Button, String)> = buttons
            .iter()
            .map(|b| {
                let token = self.ctx.signer.sign(&ActionClaims {
                    thread: self.thread.to_string(),
                    channel: channel.clone(),
                    action: b.id.clone(),
                    data: data.clone(),
                    expires_at_s,
                });
                (b.clone(), token)
            })
            .collect();
        let url = format!(
            "{}/hooks/action",
            self.ctx.config.gateway.public_url.trim_end_matches('/')
        );
        render::button_props(&signed, &url, "Answer in Mattermost").to_string()
    }

    /// Replaces a prompt post's text; without buttons unless `keep_buttons`.
    async fn update_prompt(&mut self, post: &LocalRef, text: String, keep_buttons: bool) {
        let props = (!keep_buttons).then(|| render::no_buttons().to_string());
        if let Some(live) = self.live.as_mut() {
            let _ = live.replies.update(post, text, props, false).await;
        }
    }

    fn approval_deadline_ms(&self) -> i64 {
        let timeout_ms = self
            .ctx
            .config
            .worker
            .approval_timeout_s
            .saturating_mul(1000);
        i64::try_from(common::now_ms().saturating_add(timeout_ms)).unwrap_or(i64::MAX)
    }

    /// When the earliest pending request times out.
    fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let earliest = self.pending.values().map(|p| p.expires_at_ms).min()?;
        let now = i64::try_from(common::now_ms()).unwrap_or(i64::MAX);
        let wait = u64::try_from(earliest.saturating_sub(now)).unwrap_or(0);
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Denies, with a visible note, every pending request whose time is up.
    async fn expire_due(&mut self) {
        let now = i64::try_from(common::now_ms()).unwrap_or(i64::MAX);
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires_at_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let minutes = (self.ctx.config.worker.approval_timeout_s / 60).max(1);
        for request_id in due {
            let Some(p) = self.pending.remove(&request_id) else {
                continue;
            };
            let decision = Decision::Deny {
                message: format!(
                    "Nobody in the chat answered within {minutes} minutes, so this was denied."
                ),
            };
            let decided = self
                .ctx
                .records
                .decide_approval(
                    &p.approval,
                    "timed_out",
                    &decision.to_json(),
                    "ccfleet",
                    "ccfleet",
                    "timeout",
                )
                .await
                .unwrap_or(false);
            let _ = self
                .ctx
                .records
                .record_answer_attempt(&AnswerAttempt {
                    approval_id: &p.approval,
                    thread_id: self.thread.as_str(),
                    user_id: "ccfleet",
                    username: "ccfleet",
                    action: "deny",
                    via: "timeout",
                    outcome: if decided { "accepted" } else { "late" },
                })
                .await;
            self.deliver(&p, &decision).await;
            let text = render::with_footer(
                &approvals::body(p.kind, &p.request.tool_name, &p.request.input),
                &render::verdict(&Verdict::TimedOut { minutes }),
            );
            self.update_prompt(&p.post, text, false).await;
        }
        if self.pending.is_empty() && self.turn.is_some() {
            self.set_status(Status::Working).await;
        }
    }

    /// Gives the decision to the CLI waiting on `p` and records the delivery.
    async fn deliver(&mut self, p: &Pending, decision: &Decision) {
        let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) else {
            return;
        };
        match session
            .agent_handle()
            .respond(&p.request.request_id, decision.to_answer())
            .await
        {
            Ok(()) => {
                let _ = self.ctx.records.mark_approval_delivered(&p.approval).await;
            }
            Err(err) => tracing::warn!(error = %err, "answer not delivered"),
        }
    }

    /// The CLI asks the thread: post the request with buttons, or — when a resumed CLI
    /// asks again what an earlier one asked — re-bind the stored approval (and deliver
    /// its decision if it was answered meanwhile).
    async fn ask(&mut self, request: PermissionRequest) {
        let kind = Kind::of(&request);
        let fingerprint = approvals::fingerprint(&request.tool_name, &request.input);
        let event_id = self
            .turn
            .as_ref()
            .map(|t| t.event.event_id.clone())
            .unwrap_or_default();
        match self
            .ctx
            .records
            .reasked_approval(
                self.thread.as_str(),
                &event_id,
                &fingerprint,
                &self.incarnation,
            )
            .await
        {
            Ok(Some(row)) => {
                self.rebind(row, request).await;
                return;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "could not look up earlier approvals"),
        }
        let Some(session_id) = self.live.as_ref().map(|l| l.row.session_id.clone()) else {
            return;
        };
        let approval_id = uuid::Uuid::now_v7().to_string();
        let (text, buttons) = approvals::prompt(kind, &request.tool_name, &request.input, 0);
        let props = self.signed_buttons(&approval_id, 0, &buttons);
        self.set_status(Status::WaitingForApproval).await;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let post = match live.replies.create(text, Some(props)).await {
            Ok(post) => post,
            Err(err) => {
                tracing::error!(error = %err, "could not post the request");
                return;
            }
        };
        let expires_at_ms = self.approval_deadline_ms();
        let row = ApprovalRow {
            approval_id: approval_id.clone(),
            thread_id: self.thread.to_string(),
            session_id,
            event_id,
            request_id: request.request_id.clone(),
            incarnation: self.incarnation.clone(),
            kind: kind.as_str().into(),
            tool_name: request.tool_name.clone(),
            input: request.input.to_string(),
            fingerprint,
            post_ref: i32::try_from(post.seq).unwrap_or(i32::MAX),
            status: "pending".into(),
            progress: None,
            answer: None,
            decided_by_name: None,
            delivered: false,
            expires_at_ms,
        };
        if let Err(err) = self.ctx.records.insert_approval(&row).await {
            // The buttons still work while this worker lives; only durability is lost.
            tracing::error!(error = %err, "could not record the approval");
        }
        self.pending.insert(
            request.request_id.clone(),
            Pending {
                approval: approval_id,
                kind,
                request,
                post,
                expires_at_ms,
                step: 0,
                answers: BTreeMap::new(),
            },
        );
    }

    async fn rebind(&mut self, row: ApprovalRow, request: PermissionRequest) {
        tracing::info!(approval = %row.approval_id, "request asked again after a restart; re-bound");
        let _ = self
            .ctx
            .records
            .rebind_approval(&row.approval_id, &request.request_id, &self.incarnation)
            .await;
        let kind = Kind::of(&request);
        let post = LocalRef {
            session: SessionId::new(row.session_id.clone()),
            seq: u32::try_from(row.post_ref).unwrap_or(0),
        };
        let answers: BTreeMap<String, String> = row
            .progress
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        let pending = Pending {
            approval: row.approval_id.clone(),
            kind,
            request,
            post,
            expires_at_ms: row.expires_at_ms,
            step: answers.len(),
            answers,
        };
        if row.status != "pending" {
            // Answered while no CLI was waiting: deliver the stored decision now.
            if let Some(decision) = row.answer.as_deref().and_then(Decision::from_json) {
                self.deliver(&pending, &decision).await;
            }
            return;
        }
        let (text, buttons) = approvals::prompt(
            kind,
            &pending.request.tool_name,
            &pending.request.input,
            pending.step,
        );
        let props = self.signed_buttons(&row.approval_id, pending.step, &buttons);
        let text = render::with_footer(&text, &render::reasked_note());
        let post = pending.post.clone();
        self.pending
            .insert(pending.request.request_id.clone(), pending);
        self.set_status(Status::WaitingForApproval).await;
        if let Some(live) = self.live.as_mut() {
            let _ = live.replies.update(&post, text, Some(props), false).await;
        }
    }

    /// Withdraws every pending request (the turn ended or the CLI withdrew them), and
    /// closes this turn's approvals a resumed CLI never asked again.
    async fn withdraw_pending(&mut self, event_id: Option<&str>) {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            self.withdraw(p).await;
        }
        let Some(event_id) = event_id else { return };
        let stale = self
            .ctx
            .records
            .open_approvals(self.thread.as_str())
            .await
            .unwrap_or_default();
        for row in stale {
            if row.event_id != event_id || row.kind == Kind::Guest.as_str() {
                continue;
            }
            let _ = self
                .ctx
                .records
                .close_approval(&row.approval_id, "cancelled")
                .await;
            let input: serde_json::Value =
                serde_json::from_str(&row.input).unwrap_or(serde_json::Value::Null);
            let kind = Kind::parse(&row.kind).unwrap_or(Kind::Tool);
            let text = render::with_footer(
                &approvals::body(kind, &row.tool_name, &input),
                &render::verdict(&Verdict::Withdrawn),
            );
            let post = LocalRef {
                session: SessionId::new(row.session_id.clone()),
                seq: u32::try_from(row.post_ref).unwrap_or(0),
            };
            self.update_prompt(&post, text, false).await;
        }
    }

    async fn withdraw(&mut self, p: Pending) {
        let _ = self
            .ctx
            .records
            .close_approval(&p.approval, "cancelled")
            .await;
        let text = render::with_footer(
            &approvals::body(p.kind, &p.request.tool_name, &p.request.input),
            &render::verdict(&Verdict::Withdrawn),
        );
        self.update_prompt(&p.post, text, false).await;
    }

    /// The approval whose prompt is Mattermost post `post_id`: a pending request of the
    /// running CLI, or an open row (asked by a CLI that is gone).
    async fn approval_on_post(&self, post_id: &str) -> Option<(String, usize)> {
        let posts = &self.ctx.fabric.posts;
        let is_post = |session: &str, seq: u32| {
            let key = format!("ref.{session}.{seq}.0");
            async move {
                matches!(posts.get(&key).await, Ok(Some(value)) if value.as_ref() == post_id.as_bytes())
            }
        };
        for p in self.pending.values() {
            if is_post(p.post.session.as_str(), p.post.seq).await {
                return Some((p.approval.clone(), p.step));
            }
        }
        let open = self
            .ctx
            .records
            .open_approvals(self.thread.as_str())
            .await
            .unwrap_or_default();
        for row in open {
            if is_post(&row.session_id, u32::try_from(row.post_ref).unwrap_or(0)).await {
                let step = row
                    .progress
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(p).ok())
                    .map(|a| a.len())
                    .unwrap_or(0);
                return Some((row.approval_id, step));
            }
        }
        None
    }

    async fn on_reaction(&mut self, event: &ChatEvent, post_id: &str, emoji: &str) {
        if is_stop_emoji(emoji) {
            if self.may_act(&event.user.username, event.user.id.as_str()) {
                self.interrupt(&event.user.username).await;
            }
            return;
        }
        let Some((approval, step)) = self.approval_on_post(post_id).await else {
            return;
        };
        self.answer(event, &approval, Answer::Reaction(emoji), Some(step))
            .await;
    }

    async fn on_button(&mut self, event: &ChatEvent, action: &proto::v1::ButtonAction) {
        let data: serde_json::Value =
            serde_json::from_str(&action.context_json).unwrap_or(serde_json::Value::Null);
        let Some(approval) = data.get("approval").and_then(|a| a.as_str()) else {
            return;
        };
        let step = data
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| usize::try_from(s).ok());
        self.answer(event, approval, Answer::Button(&action.action), step)
            .await;
    }

    /// Tells `event`'s author something only they see.
    async fn tell(&mut self, event: &ChatEvent, text: String) {
        if self.live.is_none() {
            let _ = self.attach(event).await;
        }
        match self.live.as_mut() {
            Some(live) => {
                let _ = live.replies.ephemeral(&event.user.id, text).await;
            }
            None => self.say(event, text).await,
        }
    }

    /// Posts a note in the thread.
    /// A one-off post about the thread, for when no session is live to post it.
    async fn notice(&self, event: &ChatEvent, text: String) -> Result<(), crate::replies::Error> {
        crate::replies::notice(
            &self.ctx.fabric.js,
            &self.ctx.names,
            &self.thread,
            &event.channel,
            &event.event_id,
            text,
        )
        .await
    }

    async fn say(&mut self, event: &ChatEvent, text: String) {
        match self.live.as_mut() {
            Some(live) => {
                let _ = live.replies.create(text, None).await;
            }
            None => {
                let _ = self.notice(event, text).await;
            }
        }
    }

    /// Someone answered approval `approval_id` by button or reaction.
    async fn answer(
        &mut self,
        event: &ChatEvent,
        approval_id: &str,
        answer: Answer<'_>,
        step: Option<usize>,
    ) {
        let row = match self.ctx.records.approval(approval_id).await {
            Ok(Some(row)) if row.thread_id == self.thread.as_str() => row,
            Ok(_) => return,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the approval");
                return;
            }
        };
        let Some(kind) = Kind::parse(&row.kind) else {
            return;
        };
        let (via, choice) = match answer {
            Answer::Button(action) => ("button", Choice::from_action(kind, action)),
            Answer::Reaction(emoji) => ("reaction", Choice::from_reaction(kind, emoji)),
        };
        // Reactions that mean nothing here are just reactions.
        let Some(choice) = choice else { return };
        let user = &event.user;
        let attempt = |outcome: &'static str| AnswerAttempt {
            approval_id,
            thread_id: row.thread_id.as_str(),
            user_id: user.id.as_str(),
            username: user.username.as_str(),
            action: "",
            via,
            outcome,
        };
        let label = choice.label();
        let (owner_id, owner_name) = match self.owner().await {
            Some(owner) => owner,
            None => return,
        };
        if !approvals::may_answer(
            &owner_id,
            &self.ctx.config.worker.approvers,
            user.id.as_str(),
            &user.username,
        ) {
            let _ = self
                .ctx
                .records
                .record_answer_attempt(&AnswerAttempt {
                    action: &label,
                    ..attempt("refused")
                })
                .await;
            self.tell(event, render::not_an_approver(&owner_name)).await;
            return;
        }
        let current_step = self
            .pending
            .values()
            .find(|p| p.approval == row.approval_id)
            .map(|p| p.step)
            .or_else(|| {
                row.progress
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(p).ok())
                    .map(|a| a.len())
            })
            .unwrap_or(0);
        if row.status != "pending" || step.is_some_and(|s| s != current_step) {
            let _ = self
                .ctx
                .records
                .record_answer_attempt(&AnswerAttempt {
                    action: &label,
                    ..attempt("late")
                })
                .await;
            if via == "button" {
                self.tell(
                    event,
                    render::already_answered(row.decided_by_name.as_deref()),
                )
                .await;
            }
            return;
        }
        if self.live.is_none() && self.attach(event).await.is_err() {
            return;
        }
        let input: serde_json::Value =
            serde_json::from_str(&row.input).unwrap_or(serde_json::Value::Null);
        let by = user.username.as_str();
        let (decision, verdict_answers, verdict) = match (kind, choice) {
            (Kind::Guest, _) => {
                self.decide_guest(event, &row, &input, choice, via).await;
                return;
            }
            (Kind::Question, Choice::Option(n)) => {
                let questions = approvals::questions_from_input(&input);
                let Some(question) = questions.get(current_step) else {
                    return;
                };
                let Some(option) = question.options.get(n) else {
                    return;
                };
                let mut answers = self
                    .pending
                    .values()
                    .find(|p| p.approval == row.approval_id)
                    .map(|p| p.answers.clone())
                    .or_else(|| {
                        row.progress
                            .as_deref()
                            .and_then(|p| serde_json::from_str(p).ok())
                    })
                    .unwrap_or_default();
                answers.insert(question.question.clone(), option.label.clone());
                if current_step + 1 < questions.len() {
                    // One question at a time: show the next one on the same post.
                    let progress = serde_json::to_string(&answers).unwrap_or_default();
                    let _ = self
                        .ctx
                        .records
                        .set_approval_progress(&row.approval_id, &progress)
                        .await;
                    let _ = self
                        .ctx
                        .records
                        .record_answer_attempt(&AnswerAttempt {
                            action: &label,
                            ..attempt("accepted")
                        })
                        .await;
                    let next = current_step + 1;
                    if let Some(p) = self
                        .pending
                        .values_mut()
                        .find(|p| p.approval == row.approval_id)
                    {
                        p.step = next;
                        p.answers = answers;
                    }
                    let (text, buttons) = approvals::prompt(kind, &row.tool_name, &input, next);
                    let props = self.signed_buttons(&row.approval_id, next, &buttons);
                    let post = LocalRef {
                        session: SessionId::new(row.session_id.clone()),
                        seq: u32::try_from(row.post_ref).unwrap_or(0),
                    };
                    if let Some(live) = self.live.as_mut() {
                        let _ = live.replies.update(&post, text, Some(props), false).await;
                    }
                    return;
                }
                let chosen: Vec<String> = answers.values().cloned().collect();
                (Decision::Answers { answers }, chosen, None)
            }
            (Kind::Tool, Choice::Allow) => {
                (Decision::Allow, Vec::new(), Some(Verdict::Allowed { by }))
            }
            (Kind::Tool, Choice::AllowAlways) => (
                Decision::AllowAlways,
                Vec::new(),
                Some(Verdict::AllowedForSession { by }),
            ),
            (Kind::Tool, Choice::Deny) => (
                Decision::Deny {
                    message: format!("@{by} denied this in the chat."),
                },
                Vec::new(),
                Some(Verdict::Denied { by }),
            ),
            (Kind::Plan, Choice::Allow) => (
                Decision::Allow,
                Vec::new(),
                Some(Verdict::PlanApproved { by }),
            ),
            (Kind::Plan, Choice::Deny) => (
                Decision::Deny {
                    message: format!(
                        "@{by} asked for changes to the plan. Stop here and wait for their instructions."
                    ),
                },
                Vec::new(),
                Some(Verdict::ChangesRequested { by }),
            ),
            _ => return,
        };
        let decided = self
            .ctx
            .records
            .decide_approval(
                &row.approval_id,
                decision.status(),
                &decision.to_json(),
                user.id.as_str(),
                by,
                via,
            )
            .await
            .unwrap_or(false);
        let _ = self
            .ctx
            .records
            .record_answer_attempt(&AnswerAttempt {
                action: &label,
                ..attempt(if decided { "accepted" } else { "late" })
            })
            .await;
        if !decided {
            return;
        }
        let bound = self
            .pending
            .iter()
            .find(|(_, p)| p.approval == row.approval_id)
            .map(|(id, _)| id.clone());
        // A request not bound to the running CLI (it was asked by one that is gone) is
        // delivered when the resumed CLI asks again.
        if let Some(request_id) = bound
            && let Some(p) = self.pending.remove(&request_id)
        {
            self.deliver(&p, &decision).await;
        }
        let verdict = render::verdict(&verdict.unwrap_or(Verdict::Answered {
            by,
            answers: &verdict_answers,
        }));
        let text = render::with_footer(&approvals::body(kind, &row.tool_name, &input), &verdict);
        let post = LocalRef {
            session: SessionId::new(row.session_id.clone()),
            seq: u32::try_from(row.post_ref).unwrap_or(0),
        };
        self.update_prompt(&post, text, false).await;
        if self.pending.is_empty() && self.turn.is_some() {
            self.set_status(Status::Working).await;
        }
    }

    /// The session owner's user id and name.
    async fn owner(&self) -> Option<(String, String)> {
        match &self.live {
            Some(live) => Some((
                live.row.started_by.clone(),
                live.row.started_by_name.clone(),
            )),
            None => self
                .row()
                .await
                .map(|row| (row.started_by, row.started_by_name)),
        }
    }

    async fn is_participant(&self, event: &ChatEvent) -> bool {
        let (owner, participants) = match &self.live {
            Some(live) => (live.row.started_by.clone(), live.participants.clone()),
            None => match self.row().await {
                Some(row) => (
                    row.started_by,
                    self.ctx
                        .records
                        .participants(self.thread.as_str())
                        .await
                        .unwrap_or_default(),
                ),
                // No session yet: whoever starts it owns it.
                None => return true,
            },
        };
        owner == event.user.id.as_str() || participants.iter().any(|p| p == &event.user.username)
    }

    /// A message from someone outside the session: ask the owner before running it.
    async fn hold_guest_message(&mut self, event: &ChatEvent, text: &str) {
        if self.attach(event).await.is_err() {
            return;
        }
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let owner = live.row.started_by_name.clone();
        let session_id = live.row.session_id.clone();
        let approval_id = uuid::Uuid::now_v7().to_string();
        let input = serde_json::json!({
            "owner": owner,
            "username": event.user.username,
            "user_id": event.user.id.as_str(),
            "text": text,
            "event": event,
        });
        let (body, buttons) = approvals::prompt(Kind::Guest, "", &input, 0);
        let props = self.signed_buttons(&approval_id, 0, &buttons);
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Ok(post) = live.replies.create(body, Some(props)).await else {
            return;
        };
        let row = ApprovalRow {
            approval_id,
            thread_id: self.thread.to_string(),
            session_id,
            event_id: event.event_id.clone(),
            request_id: String::new(),
            incarnation: String::new(),
            kind: Kind::Guest.as_str().into(),
            tool_name: String::new(),
            input: input.to_string(),
            fingerprint: String::new(),
            post_ref: i32::try_from(post.seq).unwrap_or(i32::MAX),
            status: "pending".into(),
            progress: None,
            answer: None,
            decided_by_name: None,
            delivered: false,
            // Held messages do not block a turn (no timeout); a date is still required.
            expires_at_ms: i64::try_from(common::now_ms()).unwrap_or(0) + 30 * 24 * 3600 * 1000,
        };
        if let Err(err) = self.ctx.records.insert_approval(&row).await {
            tracing::error!(error = %err, "could not record the held message");
        }
    }

    async fn decide_guest(
        &mut self,
        event: &ChatEvent,
        row: &ApprovalRow,
        input: &serde_json::Value,
        choice: Choice,
        via: &str,
    ) {
        let by = event.user.username.clone();
        let guest = input
            .get("username")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let (status, verdict) = match choice {
            Choice::GuestOnce => ("allowed", Verdict::GuestAllowed { by: &by }),
            Choice::GuestInvite => (
                "allowed",
                Verdict::GuestInvited {
                    by: &by,
                    guest: &guest,
                },
            ),
            Choice::GuestDeny => ("denied", Verdict::GuestDenied { by: &by }),
            _ => return,
        };
        let decided = self
            .ctx
            .records
            .decide_approval(
                &row.approval_id,
                status,
                "{}",
                event.user.id.as_str(),
                &by,
                via,
            )
            .await
            .unwrap_or(false);
        let _ = self
            .ctx
            .records
            .record_answer_attempt(&AnswerAttempt {
                approval_id: &row.approval_id,
                thread_id: self.thread.as_str(),
                user_id: event.user.id.as_str(),
                username: &by,
                action: &choice.label(),
                via,
                outcome: if decided { "accepted" } else { "late" },
            })
            .await;
        if !decided {
            return;
        }
        let _ = self
            .ctx
            .records
            .mark_approval_delivered(&row.approval_id)
            .await;
        let text = render::with_footer(
            &approvals::body(Kind::Guest, "", input),
            &render::verdict(&verdict),
        );
        let post = LocalRef {
            session: SessionId::new(row.session_id.clone()),
            seq: u32::try_from(row.post_ref).unwrap_or(0),
        };
        self.update_prompt(&post, text, false).await;
        if choice == Choice::GuestInvite {
            let user_id = input
                .get("user_id")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            let _ = self
                .ctx
                .records
                .add_participant(self.thread.as_str(), &user_id, &guest, "participant")
                .await;
            self.refresh_participants().await;
        }
        if choice != Choice::GuestDeny
            && let Some(held) = input
                .get("event")
                .cloned()
                .and_then(|e| serde_json::from_value::<ChatEvent>(e).ok())
        {
            let text = input
                .get("text")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            self.prompts.push_back(Prompt {
                event: held,
                message: None,
                text,
                retry: false,
            });
        }
    }

    async fn refresh_participants(&mut self) {
        let participants = self
            .ctx
            .records
            .participants(self.thread.as_str())
            .await
            .unwrap_or_default();
        if let Some(live) = self.live.as_mut() {
            live.participants = participants;
        }
        self.refresh_header().await;
    }

    async fn refresh_header(&mut self) {
        let worker = self.ctx.id.clone();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let text = render::header(&Header {
            started_by: &live.row.started_by_name,
            participants: &live.participants,
            permission_mode: &live.row.permission_mode,
            worker: worker.as_str(),
            status: live.status,
        });
        let header = live.header.clone();
        let _ = live.replies.update(&header, text, None, false).await;
    }

    /// `/claude invite|kick|permissions|stop|status`, or `/invite` / `/kick` in a message.
    async fn command(&mut self, event: &ChatEvent, command: Command) {
        match command {
            Command::Stop => {
                if self.may_act(&event.user.username, event.user.id.as_str()) {
                    self.interrupt(&event.user.username).await;
                }
            }
            Command::Status => self.status(event).await,
            Command::Invite(users) | Command::Kick(users) if users.is_empty() => {
                self.tell(
                    event,
                    "Name someone: `/claude invite @user` or `/claude kick @user`.".into(),
                )
                .await;
            }
            Command::Invite(users) => {
                if !self.owner_command(event, "invite people").await {
                    return;
                }
                for user in &users {
                    let _ = self
                        .ctx
                        .records
                        .add_participant(
                            self.thread.as_str(),
                            &format!("@{user}"),
                            user,
                            "participant",
                        )
                        .await;
                }
                self.refresh_participants().await;
                for user in users {
                    self.say(event, render::invited(&event.user.username, &user))
                        .await;
                }
            }
            Command::Kick(users) => {
                if !self.owner_command(event, "remove people").await {
                    return;
                }
                let mut removed = Vec::new();
                for user in users {
                    if self
                        .ctx
                        .records
                        .remove_participant(self.thread.as_str(), &user)
                        .await
                        .unwrap_or(false)
                    {
                        removed.push(user);
                    }
                }
                self.refresh_participants().await;
                if removed.is_empty() {
                    self.tell(event, "Nobody to remove: they are not participants.".into())
                        .await;
                }
                for user in removed {
                    self.say(event, render::kicked(&event.user.username, &user))
                        .await;
                }
            }
            Command::Permissions(wanted) => self.permissions(event, &wanted).await,
        }
    }

    /// Attaches the session for a command; false (with a note) when there is none or
    /// the author is not its owner.
    async fn owner_command(&mut self, event: &ChatEvent, what: &str) -> bool {
        if self.row().await.is_none() {
            self.say(
                event,
                "There is no Claude Code session in this thread yet.".into(),
            )
            .await;
            self.done = true;
            return false;
        }
        if self.attach(event).await.is_err() {
            return false;
        }
        match self.owner().await {
            Some((owner_id, _)) if owner_id == event.user.id.as_str() => true,
            Some((_, owner)) => {
                self.tell(event, render::owner_only(&owner, what)).await;
                false
            }
            None => false,
        }
    }

    /// `/claude permissions interactive`: from an auto mode down to `default`. Never up.
    async fn permissions(&mut self, event: &ChatEvent, wanted: &str) {
        if self.row().await.is_none() {
            self.say(
                event,
                "There is no Claude Code session in this thread yet.".into(),
            )
            .await;
            self.done = true;
            return;
        }
        if self.attach(event).await.is_err() {
            return;
        }
        if !self.may_act(&event.user.username, event.user.id.as_str()) {
            let owner = self.owner().await.map(|o| o.1).unwrap_or_default();
            self.tell(event, render::owner_only(&owner, "change its permissions"))
                .await;
            return;
        }
        let current = self
            .live
            .as_ref()
            .map(|l| l.row.permission_mode.clone())
            .unwrap_or_default();
        let interactive = matches!(wanted, "interactive" | "default" | "ask");
        if !interactive {
            self.tell(event, render::mode_refused(&current, wanted))
                .await;
            return;
        }
        if !matches!(current.as_str(), "acceptEdits" | "bypassPermissions") {
            self.tell(event, render::mode_unchanged(&current)).await;
            return;
        }
        if let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref())
            && let Err(err) = session
                .agent_handle()
                .set_permission_mode(PermissionMode::Default)
                .await
        {
            tracing::warn!(error = %err, "could not switch the CLI to default mode");
            self.tell(
                event,
                ":warning: Claude Code did not accept the change; try again in a moment.".into(),
            )
            .await;
            return;
        }
        let _ = self
            .ctx
            .records
            .set_permission_mode(self.thread.as_str(), PermissionMode::Default.as_str())
            .await;
        if let Some(live) = self.live.as_mut() {
            live.row.permission_mode = PermissionMode::Default.as_str().into();
        }
        self.refresh_header().await;
        self.say(
            event,
            render::mode_changed(&event.user.username, &current, "default"),
        )
        .await;
    }

    async fn agent_died(&mut self) {
        tracing::error!("the agent exited mid-turn");
        let event_id = self.turn.as_ref().map(|t| t.event.event_id.clone());
        self.withdraw_pending(event_id.as_deref()).await;
        if let Some(turn) = self.turn.as_mut() {
            turn.error = Some(":warning: Claude Code exited unexpectedly. The session restarts from its last checkpoint on your next message.".into());
        }
        self.publish_answer(false, None).await;
        if let Some(turn) = self.turn.take() {
            let _ = self
                .ctx
                .records
                .mark_handled(&turn.event.event_id, Some(turn.number))
                .await;
            if let Some(message) = &turn.message {
                let _ = message.ack().await;
            }
        }
        if let Some(live) = self.live.as_mut()
            && let Some(session) = live.session.take()
        {
            let _ = session.kill().await;
        }
        self.set_status(Status::Idle).await;
    }

    async fn finish_turn(&mut self, result: TurnResult) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        self.withdraw_pending(Some(&turn.event.event_id)).await;
        let mut tail = Vec::new();
        if let Some(by) = &turn.interrupted_by {
            tail.push(render::interrupted(by));
        } else if let Some(error) = turn.error.take() {
            tail.push(error);
        } else if result.is_error && turn.blocks.is_empty() {
            tail.push(render::agent_error(
                result.terminal_reason.as_deref().unwrap_or("error"),
                result.api_error_status,
                &result.errors.join("; "),
            ));
        }
        if turn.blocks.is_empty()
            && tail.is_empty()
            && let Some(text) = &result.result
        {
            turn.blocks.push(text.clone());
        }
        tail.push(render::footer(&result));
        let number = turn.number;
        let thread = self.thread.to_string();
        let artifacts = self.collect_artifacts(number, turn.before.take()).await;
        self.turn = Some(turn);
        self.publish_answer(false, Some(tail.join("\n\n"))).await;
        let turn = self.turn.take().expect("put back above");
        if let Some(block) = artifacts
            && let Some(live) = self.live.as_mut()
        {
            let _ = live.replies.create(block, None).await;
        }
        let usage = result.usage;
        // The checkpoint and the turn's record are independent; the event counts as handled
        // only once the checkpoint that holds its turn is stored.
        let _ = tokio::join!(
            self.checkpoint(number),
            self.ctx.records.finish_turn(
                &thread,
                number,
                result.duration_ms as i64,
                [
                    usage.input_tokens as i64,
                    usage.output_tokens as i64,
                    usage.cache_read_input_tokens as i64,
                    usage.cache_creation_input_tokens as i64,
                ],
                result.cost_usd,
                result.is_error,
            ),
        );
        let _ = self
            .ctx
            .records
            .mark_handled(&turn.event.event_id, Some(number))
            .await;
        if let Some(message) = &turn.message {
            let _ = message.ack().await;
        }
        self.turns_done = number;
        tracing::info!(
            turn = number,
            elapsed_ms = turn.started.elapsed().as_millis() as u64,
            "turn finished"
        );
        self.set_status(Status::Idle).await;
    }

    async fn checkpoint(&self, turn: i32) {
        let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) else {
            return;
        };
        match session.checkpoint().await {
            Ok(bytes) => {
                let key = format!("checkpoints/{}/turn-{turn:05}.tar.gz", self.thread);
                let size = bytes.len() as i64;
                match self
                    .ctx
                    .store
                    .objects()
                    .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes))
                    .await
                {
                    Ok(_) => {
                        let _ = self
                            .ctx
                            .records
                            .record_checkpoint(
                                self.thread.as_str(),
                                turn,
                                &key,
                                size,
                                self.ctx.id.as_str(),
                            )
                            .await;
                    }
                    Err(err) => tracing::error!(error = %err, "checkpoint upload failed"),
                }
            }
            Err(err) => tracing::error!(error = %err, "checkpoint failed"),
        }
    }

    /// Uploads the files the turn added or changed; returns the artifact block.
    async fn collect_artifacts(
        &mut self,
        turn: i32,
        before: Option<crate::runtime::archive::Manifest>,
    ) -> Option<String> {
        let session = self.live.as_ref()?.session.as_ref()?;
        let files = session.files();
        let after = files.manifest().await.ok()?;
        let before = before.unwrap_or_default();
        let changed: Vec<String> = after
            .changes_since(&before)
            .into_iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| c.path)
            .filter(|p| !p.split('/').any(|s| s.starts_with('.')))
            .take(200)
            .collect();
        if changed.is_empty() {
            return None;
        }
        let exported = files.export(&changed).await.ok()?;
        let prefix = format!("turn-{turn}/");
        let root = format!("artifacts/{}/{prefix}", self.thread);
        let mut links = Vec::new();
        let expires = common::now_ms() / 1000 + 30 * 24 * 3600;
        let token = self.ctx.signer.sign(&common::signing::LinkClaims {
            thread: self.thread.to_string(),
            prefix: prefix.clone(),
            expires_at_s: expires,
        });
        let base = self
            .ctx
            .config
            .gateway
            .public_url
            .trim_end_matches('/')
            .to_owned();
        for file in exported {
            let key = format!("{root}{}", file.path);
            let size = file.content.len() as u64;
            if let Err(err) = self
                .ctx
                .store
                .objects()
                .put(
                    &ObjectPath::from(key.as_str()),
                    PutPayload::from(file.content),
                )
                .await
            {
                tracing::error!(error = %err, path = %file.path, "artifact upload failed");
                continue;
            }
            let content_type = mime_guess::from_path(&file.path)
                .first_or_octet_stream()
                .to_string();
            let _ = self
                .ctx
                .records
                .record_artifact(
                    self.thread.as_str(),
                    turn,
                    &file.path,
                    &key,
                    size as i64,
                    &content_type,
                )
                .await;
            let encoded: Vec<String> = file
                .path
                .split('/')
                .map(|s| {
                    url::form_urlencoded::byte_serialize(s.as_bytes())
                        .collect::<String>()
                        .replace('+', "%20")
                })
                .collect();
            links.push(render::ArtifactLink {
                url: format!("{base}/a/{token}/{}", encoded.join("/")),
                path: file.path,
                size,
            });
        }
        if links.is_empty() {
            return None;
        }
        Some(render::artifacts(
            &links,
            &format!("{base}/a/{token}/"),
            &format!("{base}/z/{token}"),
        ))
    }

    /// Deletes the thread's consumer if it holds nothing unread or unacknowledged, after
    /// recording where it stopped: idle threads hold no consumer (nats-server bounds them
    /// per stream, and each costs the server).
    async fn retire_consumer(&self) -> Retired {
        let name = self.ctx.names.thread_consumer(&self.thread);
        let events = &self.ctx.fabric.events;
        let Ok(mut consumer) = events.get_consumer::<pull::Config>(&name).await else {
            return Retired::Unknown;
        };
        let Ok(info) = consumer.info().await else {
            return Retired::Unknown;
        };
        let pending = info.num_pending + info.num_ack_pending as u64;
        if pending > 0 {
            return Retired::Kept(pending); // the next owner reads on from it
        }
        let after = info.delivered.stream_sequence;
        if self
            .ctx
            .records
            .set_events_after(self.thread.as_str(), after)
            .await
            .is_err()
        {
            return Retired::Unknown;
        }
        match events.delete_consumer(&name).await {
            Ok(_) => Retired::After(after),
            Err(err) => {
                tracing::warn!(error = %err, "could not delete the thread's consumer");
                Retired::Unknown
            }
        }
    }

    /// The thread's newest event in the stream.
    async fn last_event(&self) -> Option<jetstream::message::StreamMessage> {
        let subject = self.ctx.names.event_subject(&self.thread);
        self.ctx
            .fabric
            .events
            .get_last_raw_message_by_subject(&subject)
            .await
            .ok()
    }

    /// The thread's events could not be read: say so in the thread (once per event, by its
    /// `Nats-Msg-Id`) and queue the thread again after [`RETRY_UNREADABLE`], if an event is
    /// still to be read.
    async fn retry_unreadable(&self, reason: &str) {
        tracing::error!(
            reason,
            "the thread's events could not be read; retrying later"
        );
        let Some(last) = self.last_event().await else {
            return;
        };
        let read_up_to = self
            .ctx
            .records
            .events_after(self.thread.as_str())
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        if last.sequence <= read_up_to {
            return;
        }
        if let Ok(event) = ChatEvent::decode(&last.payload) {
            let _ = crate::replies::notice(
                &self.ctx.fabric.js,
                &self.ctx.names,
                &self.thread,
                &event.channel,
                &format!("unreadable-{}", event.event_id),
                render::unreadable(RETRY_UNREADABLE.as_secs()),
            )
            .await;
        }
        let (ctx, thread) = (self.ctx.clone(), self.thread.clone());
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_UNREADABLE).await;
            let dedupe = format!("retry:{thread}:{}", common::now_ms());
            if let Err(err) = crate::fleet::enqueue(&ctx, &thread, &dedupe).await {
                tracing::error!(%thread, error = %err, "could not re-queue the thread");
            }
        });
    }

    /// Releases the thread: checkpointed session stopped, record updated, lease deleted.
    async fn release(&mut self, exit: &ActorExit) {
        if let Some(mut live) = self.live.take() {
            if let Some(session) = live.session.take()
                && let Err(err) = session.stop().await
            {
                tracing::warn!(error = %err, "session did not stop cleanly");
            }
            let status = match exit {
                ActorExit::Idle => Status::Idle,
                _ => Status::Stopped,
            };
            live.status = status;
            let text = render::header(&Header {
                started_by: &live.row.started_by_name,
                participants: &live.participants,
                permission_mode: &live.row.permission_mode,
                worker: self.ctx.id.as_str(),
                status,
            });
            let header = live.header.clone();
            let _ = live.replies.update(&header, text, None, false).await;
            let _ = self
                .ctx
                .records
                .set_owner(self.thread.as_str(), None, "idle")
                .await;
        }
        // Still under the lease, so nobody else reads the consumer.
        let retired = self.retire_consumer().await;
        let _ = self.ctx.fabric.leases.delete(self.thread.as_str()).await;
        // Events that arrived but were not handled (a drain, an eviction racing a new
        // message, one that came while the lease was still ours) must not be stranded:
        // queue the thread for whichever worker is free.
        if let ActorExit::Failed(reason) = exit {
            self.retry_unreadable(reason).await;
            return;
        }
        let pending = match retired {
            Retired::After(after) => self
                .last_event()
                .await
                .is_some_and(|last| last.sequence > after)
                .into(),
            Retired::Kept(pending) => pending,
            Retired::Unknown => crate::fleet::pending_events(&self.ctx, &self.thread).await,
        };
        if pending > 0 {
            let dedupe = format!("requeue:{}:{}", self.thread, common::now_ms());
            match crate::fleet::enqueue(&self.ctx, &self.thread, &dedupe).await {
                Ok(_) => {
                    tracing::info!(pending, "released with unhandled events; thread re-queued")
                }
                Err(err) => tracing::error!(error = %err, "could not re-queue the thread"),
            }
        }
    }
}

/// A message that starts by mentioning someone other than the bot is a side
/// conversation between people in the thread.
fn is_side_conversation(message: &MessagePosted) -> bool {
    let first = message.text.split_whitespace().next().unwrap_or("");
    first.starts_with('@') && !message.mentions_bot
}
