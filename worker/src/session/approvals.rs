//! The thread's answers to the agent — permission requests, questions, plans — and the
//! owner's answers about outsiders' messages: the I/O shell of [`crate::approvals::state`].
//!
//! The core decides; this file reads approval rows, hands the core what happened, and
//! carries out its effects in order: posts, rows, the audit, answers to the CLI. A
//! decision is stored (the conditional update in PostgreSQL: the first answer wins) before
//! anything follows from it, and a database error while storing it is an error to retry,
//! never a late answer.

use std::collections::VecDeque;
use std::time::Duration;

use proto::{ChatEvent, LocalRef};

use common::signing::ActionClaims;

use super::*;
use crate::agent::PermissionRequest;
use crate::approvals::{self, Answer, Asked, Effect, Held, Person, Via, Withdrawal};
use crate::records::AnswerAttempt;

/// The event id prefix of an outsider's message handed back to its thread once admitted.
const ADMITTED: &str = "admitted:";
use crate::render::{self, Status};

/// How long a timeout whose decision could not be stored waits before it is tried again.
const RETRY_EXPIRY: Duration = Duration::from_secs(1);

pub(super) fn core(thread: &ThreadId, ctx: &Ctx) -> approvals::Approvals {
    approvals::Approvals::new(
        thread.to_string(),
        approvals::Options {
            // Set from the directory before each answer (`set_approvers`).
            approvers: Default::default(),
            timeout_s: ctx.config.worker.approval_timeout_s,
        },
    )
}

pub(super) fn now_ms() -> i64 {
    i64::try_from(common::now_ms()).unwrap_or(i64::MAX)
}

impl State {
    /// The props of a post with `buttons` answering approval `approval_id` at `step`.
    pub(super) fn signed_buttons(
        &self,
        approval_id: &str,
        step: usize,
        buttons: &[render::Button],
    ) -> String {
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

    /// Carries out the core's effects in order; `event` is the chat event being handled,
    /// whose author is told what concerns only them. Only a decision that could not be
    /// stored is an error: everything else is done as well as it can be, as before.
    pub(super) async fn execute(
        &mut self,
        effects: Vec<Effect>,
        event: Option<&ChatEvent>,
    ) -> Result<(), Error> {
        let mut queue: VecDeque<Effect> = effects.into();
        // The reference reserved for the prompt of the approval just stored.
        let mut reserved: Option<LocalRef> = None;
        // A held message that could not be stored: its event is tried again.
        let mut failed: Option<Error> = None;
        while let Some(effect) = queue.pop_front() {
            let follow = match effect {
                Effect::Status(status) => {
                    // Working again only if a turn still runs.
                    if status != Status::Working || self.turn.is_some() {
                        self.set_status(status).await;
                    }
                    Vec::new()
                }
                Effect::Post { text, buttons } => {
                    let props =
                        self.signed_buttons(&buttons.approval, buttons.step, &buttons.buttons);
                    let posted = match self.live.as_mut() {
                        Some(live) => live.replies.create(text, Some(props)).await.map(Some),
                        None => Ok(None),
                    };
                    match posted {
                        Ok(Some(post)) if Some(&post) == reserved.as_ref() => Vec::new(),
                        Ok(other) => {
                            tracing::error!(?other, ?reserved, approval = %buttons.approval, "the request's prompt did not get its reserved reference");
                            self.approvals.unposted(&buttons.approval)
                        }
                        Err(err) => {
                            tracing::error!(error = %common::error_chain(&err), approval = %buttons.approval, "could not post the request");
                            self.approvals.unposted(&buttons.approval)
                        }
                    }
                }
                Effect::Update {
                    post,
                    text,
                    buttons,
                } => {
                    let props = match buttons {
                        Some(b) => self.signed_buttons(&b.approval, b.step, &b.buttons),
                        None => render::no_buttons().to_string(),
                    };
                    if let Some(live) = self.live.as_mut() {
                        let _ = live.replies.update(&post, text, Some(props), false).await;
                    }
                    Vec::new()
                }
                Effect::Insert(mut row) => {
                    // The row names the post its prompt will be; it is posted right after.
                    reserved = self.live.as_ref().map(|live| live.replies.next_ref());
                    let stored = match &reserved {
                        Some(post) => {
                            row.post_ref = i32::try_from(post.seq).unwrap_or(i32::MAX);
                            self.ctx.records.insert_approval(&row).await
                        }
                        None => Ok(()),
                    };
                    match stored {
                        Ok(()) => self.approvals.recorded(&row.approval_id, reserved.clone()),
                        Err(err) => {
                            tracing::error!(error = %common::error_chain(&err), approval = %row.approval_id, "could not record the approval");
                            let follow = self.approvals.recorded(&row.approval_id, None);
                            failed = Some(Error::Records(err));
                            follow
                        }
                    }
                }
                Effect::Rebind {
                    approval,
                    request_id,
                    incarnation,
                } => {
                    tracing::info!(%approval, "request asked again after a restart; re-bound");
                    let _ = self
                        .ctx
                        .records
                        .rebind_approval(&approval, &request_id, &incarnation)
                        .await;
                    Vec::new()
                }
                Effect::Progress { approval, answers } => {
                    let _ = self
                        .ctx
                        .records
                        .set_approval_progress(&approval, &answers)
                        .await;
                    Vec::new()
                }
                Effect::Decide {
                    approval,
                    status,
                    answer,
                    user_id,
                    username,
                    via,
                } => {
                    let won = self
                        .ctx
                        .records
                        .decide_approval(&approval, status, &answer, &user_id, &username, via)
                        .await?;
                    self.approvals.decided(&approval, won)
                }
                Effect::Close { approval, status } => {
                    let _ = self.ctx.records.close_approval(&approval, status).await;
                    Vec::new()
                }
                Effect::Audit(attempt) => {
                    let _ = self
                        .ctx
                        .records
                        .record_answer_attempt(&AnswerAttempt {
                            approval_id: &attempt.approval,
                            thread_id: self.thread.as_str(),
                            user_id: &attempt.user_id,
                            username: &attempt.username,
                            action: &attempt.action,
                            via: attempt.via,
                            outcome: attempt.outcome.as_str(),
                        })
                        .await;
                    Vec::new()
                }
                Effect::Deliver {
                    approval,
                    request_id,
                    answer,
                } => {
                    // The wait is over once the answer goes to the CLI.
                    if let Some(wait) = self
                        .turn
                        .as_mut()
                        .and_then(|turn| turn.waits.remove(&request_id))
                    {
                        self.ctx
                            .stats
                            .approval_answered(&wait.tool, wait.since.elapsed());
                    }
                    if let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) {
                        match session.agent_handle().respond(&request_id, answer).await {
                            Ok(()) => {
                                let _ = self.ctx.records.mark_approval_delivered(&approval).await;
                            }
                            Err(err) => tracing::warn!(error = %err, "answer not delivered"),
                        }
                    }
                    Vec::new()
                }
                Effect::MarkDelivered { approval } => {
                    let _ = self.ctx.records.mark_approval_delivered(&approval).await;
                    Vec::new()
                }
                Effect::Tell { text, .. } => {
                    if let Some(event) = event {
                        self.tell(event, text).await;
                    }
                    Vec::new()
                }
                Effect::Admit { approval, event } => {
                    if let Err(err) = self.admit(&approval, event).await {
                        tracing::error!(error = %err.chain(), %approval, "could not hand the admitted message back to the thread");
                        failed = Some(err);
                    }
                    Vec::new()
                }
                Effect::Grant {
                    approval,
                    host,
                    session_wide,
                } => {
                    let scope = if session_wide {
                        crate::egress::Scope::Session
                    } else {
                        crate::egress::Scope::Once
                    };
                    // Without a live session, "once" waits in the record for the next start.
                    if let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref())
                        && let Some(egress) = session.egress()
                    {
                        egress.grant(session.id(), &host, scope);
                        if !session_wide {
                            let _ = self.ctx.records.mark_approval_delivered(&approval).await;
                        }
                    }
                    Vec::new()
                }
                Effect::Push {
                    approval,
                    user_id: _,
                    username,
                    request,
                    confirm,
                    generated,
                    files,
                } => {
                    let generated = generated.then_some(files);
                    Box::pin(self.push(&approval, &username, request, confirm, generated)).await
                }
                Effect::Release {
                    budget,
                    top_up,
                    go_on,
                    by,
                } => {
                    self.release_budget(&budget, top_up, go_on, &by).await?;
                    Vec::new()
                }
                Effect::Invite { user_id, username } => {
                    let _ = self
                        .ctx
                        .records
                        .add_participant(self.thread.as_str(), &user_id, &username, "participant")
                        .await;
                    self.refresh_participants().await;
                    Vec::new()
                }
            };
            // What follows a report comes before the rest.
            for effect in follow.into_iter().rev() {
                queue.push_front(effect);
            }
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The session was started: its egress gateway learns its channel's hosts and what
    /// the thread allowed earlier (on this worker or another).
    pub(super) async fn open_egress(&mut self) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let Some(session) = live.session.as_ref() else {
            return;
        };
        let Some(egress) = session.egress() else {
            return;
        };
        egress.set_channel(session.id(), &live.row.channel_id);
        let rows = match self
            .ctx
            .records
            .domain_approvals(self.thread.as_str())
            .await
        {
            Ok(rows) => rows,
            Err(err) => {
                // Asked again when refused; nothing is opened that was not allowed.
                tracing::warn!(error = %common::error_chain(&err), "could not read the session's host answers");
                return;
            }
        };
        let effects = self.approvals.restore_domains(&rows);
        if let Err(err) = self.execute(effects, None).await {
            tracing::warn!(error = %err.chain(), "could not restore the session's host answers");
        }
    }

    /// The session's egress gateway has something for the thread.
    pub(super) async fn on_egress_notice(&mut self, notice: crate::egress::Notice) {
        let Some((session_id, owner)) = self
            .live
            .as_ref()
            .map(|l| (l.row.session_id.clone(), l.row.started_by_name.clone()))
        else {
            return;
        };
        let event_id = self
            .turn
            .as_ref()
            .map(|t| t.event.event_id.clone())
            .unwrap_or_default();
        let (host, port) = match notice {
            crate::egress::Notice::HostRefused { host, port } => (host, port),
            crate::egress::Notice::CredentialsCooling { resume_at_ms } => {
                let now = common::now_ms();
                tracing::info!(
                    resume_in_ms = resume_at_ms.saturating_sub(now),
                    "every model credential is rate-limited; telling the thread"
                );
                if let Some(live) = self.live.as_mut() {
                    let text = crate::render::credentials_cooling(resume_at_ms, now);
                    if let Err(err) = live.replies.create(text, None).await {
                        tracing::warn!(error = %common::error_chain(&err), "could not tell the thread that the model credentials are cooling");
                    }
                }
                return;
            }
            crate::egress::Notice::BudgetReached {
                budget,
                spent,
                limit,
            } => {
                tracing::info!(
                    budget = budget.as_str(),
                    spent,
                    limit,
                    "a budget is used up; asking the thread"
                );
                let top_up =
                    crate::egress::budget::Amounts::from(&self.ctx.config.budgets).get(budget);
                let effects = self.approvals.budget(approvals::BudgetAsked {
                    approval: uuid::Uuid::now_v7().to_string(),
                    session_id,
                    budget: budget.as_str().to_owned(),
                    what: budget.describe(&owner),
                    spent,
                    limit,
                    top_up,
                    event_id,
                    now_ms: now_ms(),
                });
                if let Err(err) = self.execute(effects, None).await {
                    tracing::warn!(error = %err.chain(), "could not ask the thread about a budget");
                }
                return;
            }
        };
        tracing::info!(%host, port, "the egress gateway refused a host; asking the thread");
        let effects = self.approvals.domain(approvals::DomainAsked {
            approval: uuid::Uuid::now_v7().to_string(),
            session_id,
            host: crate::egress::policy::normal_host(&host),
            port,
            event_id,
            now_ms: now_ms(),
        });
        if let Err(err) = self.execute(effects, None).await {
            tracing::warn!(error = %err.chain(), "could not ask the thread about a host");
        }
    }

    /// Records a top-up (continue) and lets the session's held model requests go on, or
    /// stops the turn (the CLI is interrupted first, so it does not try the refused request
    /// again) and refuses what is held. The top-up is stored before anything goes on: an
    /// error is retried with the answer's event.
    async fn release_budget(
        &mut self,
        budget: &str,
        top_up: f64,
        go_on: bool,
        by: &str,
    ) -> Result<(), Error> {
        if !go_on {
            // Boxed: interrupting denies what waits, which runs effects again.
            Box::pin(self.interrupt(by)).await;
        }
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        if go_on && top_up > 0.0 {
            self.ctx
                .records
                .add_top_up(&crate::records::TopUp {
                    budget,
                    session_id: &live.row.session_id,
                    user_id: &live.row.started_by,
                    channel_id: &live.row.channel_id,
                    amount_usd: top_up,
                    by,
                })
                .await?;
        }
        if let Some(session) = live.session.as_ref()
            && let Some(egress) = session.egress()
        {
            let release = if go_on {
                crate::egress::Release::Continue
            } else {
                crate::egress::Release::Stop { by: by.to_owned() }
            };
            egress.release(session.id(), release);
        }
        Ok(())
    }

    /// When the earliest pending request times out (or a timeout is tried again).
    pub(super) fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let earliest = self.approvals.next_deadline()?;
        let wait = u64::try_from(earliest.saturating_sub(now_ms())).unwrap_or(0);
        let at = tokio::time::Instant::now() + Duration::from_millis(wait);
        Some(self.expiry_retry.map_or(at, |retry| retry.max(at)))
    }

    /// Denies, with a visible note, every pending request whose time is up.
    pub(super) async fn expire_due(&mut self) {
        self.expiry_retry = None;
        let effects = self.approvals.expired(now_ms());
        if let Err(err) = self.execute(effects, None).await {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "could not store a timeout; will retry"
            );
            self.expiry_retry = Some(tokio::time::Instant::now() + RETRY_EXPIRY);
        }
    }

    /// The CLI asks the thread: post the request with buttons, or — when a resumed CLI
    /// asks again what an earlier one asked — re-bind the stored approval (and deliver
    /// its decision if it was answered meanwhile).
    pub(super) async fn ask(&mut self, request: PermissionRequest) {
        if let Some(turn) = self.turn.as_mut() {
            turn.wait_for_answer(&request);
        }
        let fingerprint = approvals::fingerprint(&request.tool_name, &request.input);
        let event_id = self
            .turn
            .as_ref()
            .map(|t| t.event.event_id.clone())
            .unwrap_or_default();
        let stored = match self
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
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %err, "could not look up earlier approvals");
                None
            }
        };
        let effects = self.approvals.asked(Asked {
            request,
            stored,
            approval: uuid::Uuid::now_v7().to_string(),
            session_id: self.live.as_ref().map(|l| l.row.session_id.clone()),
            event_id,
            incarnation: self.incarnation.clone(),
            now_ms: now_ms(),
        });
        // Nothing is decided here, so nothing can fail.
        let _ = self.execute(effects, None).await;
    }

    /// Withdraws every pending request (the turn ended or the agent died), and closes
    /// this turn's approvals a resumed CLI never asked again.
    pub(super) async fn withdraw_pending(&mut self, event_id: Option<&str>) {
        let open = match event_id {
            Some(_) => self
                .ctx
                .records
                .open_approvals(self.thread.as_str())
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let effects = self.approvals.withdrawn(Withdrawal::TurnEnded {
            event_id: event_id.map(str::to_owned),
            open,
        });
        let _ = self.execute(effects, None).await;
    }

    /// The CLI no longer needs an answer to `request_id`.
    pub(super) async fn withdraw(&mut self, request_id: String) {
        if let Some(turn) = self.turn.as_mut() {
            turn.waits.remove(&request_id);
        }
        let effects = self
            .approvals
            .withdrawn(Withdrawal::Cancelled { request_id });
        let _ = self.execute(effects, None).await;
    }

    /// Someone stopped the turn: what waits for the thread is denied, so the CLI stops.
    pub(super) async fn deny_pending(&mut self, by: &str) {
        let effects = self
            .approvals
            .withdrawn(Withdrawal::Interrupted { by: by.to_owned() });
        let _ = self.execute(effects, None).await;
    }

    /// Hands the outsider's message of `approval` back to the thread as an event of its own
    /// (`admitted:<approval>`, deduplicated by that id), so it is run as a prompt through
    /// the thread's durable consumer whoever owns the thread then; then records it
    /// delivered.
    pub(super) async fn admit(&self, approval: &str, mut event: ChatEvent) -> Result<(), Error> {
        event.event_id = format!("{ADMITTED}{approval}");
        event.thread = self.thread.clone();
        let payload = event
            .encode()
            .map_err(|err| Error::Replies(crate::replies::Error::Encode(err)))?;
        let subject = self.ctx.names.event_subject(&self.thread);
        // The admitted message's turn joins the trace of the answer that admitted it.
        let span = common::telemetry::publish_span(
            &self.ctx.names.events_destination(),
            &subject,
            &event.event_id,
        );
        span.record("thread_id", tracing::field::display(&self.thread));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(proto::names::MSG_ID_HEADER, event.event_id.as_str());
        common::telemetry::inject_span(&span, &mut headers);
        let js = &self.ctx.fabric.js;
        tracing::Instrument::instrument(
            async {
                js.publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(Error::consumer)?
                    .await
                    .map_err(Error::consumer)
            },
            span,
        )
        .await?;
        self.ctx.records.mark_approval_delivered(approval).await?;
        Ok(())
    }

    /// Admitted messages a worker decided but did not hand back (it died in between).
    pub(super) async fn admit_undelivered(&self) {
        let rows = match self
            .ctx
            .records
            .undelivered_admissions(self.thread.as_str())
            .await
        {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %common::error_chain(&err), "could not read admitted messages");
                return;
            }
        };
        for row in rows {
            let event = serde_json::from_str::<serde_json::Value>(&row.input)
                .ok()
                .and_then(|input| input.get("event").cloned())
                .and_then(|e| serde_json::from_value::<ChatEvent>(e).ok());
            let Some(event) = event else { continue };
            if let Err(err) = self.admit(&row.approval_id, event).await {
                tracing::warn!(error = %err.chain(), approval = %row.approval_id, "could not hand an admitted message back");
            }
        }
    }

    /// Whether `event` is an outsider's message the owner let in (see [`State::admit`]).
    pub(super) async fn is_admitted(&self, event: &ChatEvent) -> Result<bool, Error> {
        let Some(approval) = event.event_id.strip_prefix(ADMITTED) else {
            return Ok(false);
        };
        Ok(self
            .ctx
            .records
            .approval(approval)
            .await?
            .is_some_and(|row| {
                row.thread_id == self.thread.as_str()
                    && row.kind == "guest"
                    && row.status == "allowed"
            }))
    }

    /// A message from someone outside the session: ask the owner before running it.
    pub(super) async fn hold_guest_message(
        &mut self,
        event: &ChatEvent,
        text: &str,
    ) -> Result<(), Error> {
        if self.attach(event).await.is_err() {
            return Ok(());
        }
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let effects = self.approvals.held(Held {
            approval: uuid::Uuid::now_v7().to_string(),
            session_id: live.row.session_id.clone(),
            owner_name: live.row.started_by_name.clone(),
            event: event.clone(),
            text: text.to_owned(),
            now_ms: now_ms(),
        });
        self.execute(effects, Some(event)).await
    }

    /// The approval whose prompt is Mattermost post `post_id`: a pending request of the
    /// running CLI, or an open row (asked by a CLI that is gone).
    async fn approval_on_post(&self, post_id: &str) -> Result<Option<(String, usize)>, Error> {
        let posts = &self.ctx.fabric.posts;
        let is_post = |post: LocalRef| {
            let key = proto::names::post_ref_key(&post, 0);
            async move {
                let value = posts.get(&key).await.map_err(Error::Posts)?;
                Ok::<_, Error>(value.is_some_and(|v| v.as_ref() == post_id.as_bytes()))
            }
        };
        for (approval, post, step) in self.approvals.prompts() {
            if is_post(post.clone()).await? {
                return Ok(Some((approval.to_owned(), step)));
            }
        }
        let open = self
            .ctx
            .records
            .open_approvals(self.thread.as_str())
            .await?;
        for row in open {
            if is_post(approvals::state::post_of(&row)).await? {
                let step = approvals::state::step_of(&row);
                return Ok(Some((row.approval_id, step)));
            }
        }
        Ok(None)
    }

    pub(super) async fn on_reaction(
        &mut self,
        event: &ChatEvent,
        post_id: &str,
        emoji: &str,
    ) -> Result<(), Error> {
        if proto::commands::stops_turn(emoji) {
            if self.may_act(&event.user).await {
                self.interrupt(&event.user.username).await;
            }
            return Ok(());
        }
        let Some((approval, step)) = self.approval_on_post(post_id).await? else {
            return Ok(());
        };
        self.answer(
            event,
            &approval,
            Via::Reaction(emoji.to_owned()),
            Some(step),
        )
        .await
    }

    pub(super) async fn on_button(
        &mut self,
        event: &ChatEvent,
        action: &proto::v1::ButtonAction,
    ) -> Result<(), Error> {
        let data: serde_json::Value =
            serde_json::from_str(&action.context_json).unwrap_or(serde_json::Value::Null);
        let Some(approval) = data.get("approval").and_then(|a| a.as_str()) else {
            return Ok(());
        };
        let step = data
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| usize::try_from(s).ok());
        self.answer(event, approval, Via::Button(action.action.clone()), step)
            .await
    }

    /// Someone answered approval `approval_id` by button or reaction.
    async fn answer(
        &mut self,
        event: &ChatEvent,
        approval_id: &str,
        via: Via,
        step: Option<usize>,
    ) -> Result<(), Error> {
        let row = match self.ctx.records.approval(approval_id).await? {
            Some(row) if row.thread_id == self.thread.as_str() => row,
            _ => {
                // A prompt whose record is gone (or never was): say so, not nothing.
                self.tell(event, render::unknown_request()).await;
                return Ok(());
            }
        };
        if row.kind == "guest" && row.status == "allowed" && !row.delivered {
            // Decided by a worker that died before handing the message back.
            self.admit_undelivered().await;
        }
        let (owner_id, owner_name) = match &self.live {
            Some(live) => (
                live.row.started_by.clone(),
                live.row.started_by_name.clone(),
            ),
            None => match self.try_row().await? {
                Some(row) => (row.started_by, row.started_by_name),
                None => return Ok(()),
            },
        };
        // An answer that may decide shows its outcome in the session: make it present
        // first, so that the core's state never runs ahead of what could be shown.
        if self.live.is_none() && row.status == "pending" {
            self.attach(event).await?;
        }
        let approvers = self
            .ctx
            .directory
            .approvers(&self.ctx.config.worker)
            .await
            .into_iter()
            .map(|id| id.0)
            .collect();
        self.approvals.set_approvers(approvers);
        let effects = self.approvals.answered(Answer {
            event_id: event.event_id.clone(),
            user: Person {
                id: event.user.id.to_string(),
                name: event.user.username.clone(),
            },
            via,
            step,
            row,
            owner: Person {
                id: owner_id,
                name: owner_name,
            },
        });
        self.execute(effects, Some(event)).await
    }
}
