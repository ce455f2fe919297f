//! The thread's answers to the agent: permission requests, questions and plans, by button
//! or reaction, stored before they are shown and decided once.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::{ChatEvent, LocalRef, SessionId};

use common::signing::ActionClaims;

use super::*;
use crate::agent::PermissionRequest;
use crate::approvals::{self, Choice, Decision, Kind};
use crate::records::{AnswerAttempt, ApprovalRow};
use crate::render::{self, Status, Verdict};

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

    /// Replaces a prompt post's text; without buttons unless `keep_buttons`.
    pub(super) async fn update_prompt(
        &mut self,
        post: &LocalRef,
        text: String,
        keep_buttons: bool,
    ) {
        let props = (!keep_buttons).then(|| render::no_buttons().to_string());
        if let Some(live) = self.live.as_mut() {
            let _ = live.replies.update(post, text, props, false).await;
        }
    }

    pub(super) fn approval_deadline_ms(&self) -> i64 {
        let timeout_ms = self
            .ctx
            .config
            .worker
            .approval_timeout_s
            .saturating_mul(1000);
        i64::try_from(common::now_ms().saturating_add(timeout_ms)).unwrap_or(i64::MAX)
    }

    /// When the earliest pending request times out.
    pub(super) fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let earliest = self.pending.values().map(|p| p.expires_at_ms).min()?;
        let now = i64::try_from(common::now_ms()).unwrap_or(i64::MAX);
        let wait = u64::try_from(earliest.saturating_sub(now)).unwrap_or(0);
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Denies, with a visible note, every pending request whose time is up.
    pub(super) async fn expire_due(&mut self) {
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
    pub(super) async fn deliver(&mut self, p: &Pending, decision: &Decision) {
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
    pub(super) async fn ask(&mut self, request: PermissionRequest) {
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

    pub(super) async fn rebind(&mut self, row: ApprovalRow, request: PermissionRequest) {
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
    pub(super) async fn withdraw_pending(&mut self, event_id: Option<&str>) {
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

    pub(super) async fn withdraw(&mut self, p: Pending) {
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
    pub(super) async fn approval_on_post(
        &self,
        post_id: &str,
    ) -> Result<Option<(String, usize)>, Error> {
        let posts = &self.ctx.fabric.posts;
        let is_post = |session: &str, seq: u32| {
            let key = proto::names::post_ref_key(
                &LocalRef {
                    session: SessionId::new(session),
                    seq,
                },
                0,
            );
            async move {
                let value = posts.get(&key).await.map_err(Error::Posts)?;
                Ok::<_, Error>(value.is_some_and(|v| v.as_ref() == post_id.as_bytes()))
            }
        };
        for p in self.pending.values() {
            if is_post(p.post.session.as_str(), p.post.seq).await? {
                return Ok(Some((p.approval.clone(), p.step)));
            }
        }
        let open = self
            .ctx
            .records
            .open_approvals(self.thread.as_str())
            .await?;
        for row in open {
            if is_post(&row.session_id, u32::try_from(row.post_ref).unwrap_or(0)).await? {
                let step = row
                    .progress
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(p).ok())
                    .map(|a| a.len())
                    .unwrap_or(0);
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
            if self.may_act(&event.user.username, event.user.id.as_str()) {
                self.interrupt(&event.user.username).await;
            }
            return Ok(());
        }
        let Some((approval, step)) = self.approval_on_post(post_id).await? else {
            return Ok(());
        };
        self.answer(event, &approval, Answer::Reaction(emoji), Some(step))
            .await?;
        Ok(())
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
        self.answer(event, approval, Answer::Button(&action.action), step)
            .await?;
        Ok(())
    }

    /// Someone answered approval `approval_id` by button or reaction.
    pub(super) async fn answer(
        &mut self,
        event: &ChatEvent,
        approval_id: &str,
        answer: Answer<'_>,
        step: Option<usize>,
    ) -> Result<(), Error> {
        let row = match self.ctx.records.approval(approval_id).await? {
            Some(row) if row.thread_id == self.thread.as_str() => row,
            _ => return Ok(()),
        };
        let Some(kind) = Kind::parse(&row.kind) else {
            return Ok(());
        };
        let (via, choice) = match answer {
            Answer::Button(action) => ("button", Choice::from_action(kind, action)),
            Answer::Reaction(emoji) => ("reaction", Choice::from_reaction(kind, emoji)),
        };
        // Reactions that mean nothing here are just reactions.
        let Some(choice) = choice else { return Ok(()) };
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
            None => return Ok(()),
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
            return Ok(());
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
            return Ok(());
        }
        if self.live.is_none() && self.attach(event).await.is_err() {
            return Ok(());
        }
        let input: serde_json::Value =
            serde_json::from_str(&row.input).unwrap_or(serde_json::Value::Null);
        let by = user.username.as_str();
        let (decision, verdict_answers, verdict) = match (kind, choice) {
            (Kind::Guest, _) => {
                return self.decide_guest(event, &row, &input, choice, via).await;
            }
            (Kind::Question, Choice::Option(n)) => {
                let questions = approvals::questions_from_input(&input);
                let Some(question) = questions.get(current_step) else {
                    return Ok(());
                };
                let Some(option) = question.options.get(n) else {
                    return Ok(());
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
                    return Ok(());
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
            _ => return Ok(()),
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
            .await?;
        let _ = self
            .ctx
            .records
            .record_answer_attempt(&AnswerAttempt {
                action: &label,
                ..attempt(if decided { "accepted" } else { "late" })
            })
            .await;
        if !decided {
            return Ok(());
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
        Ok(())
    }
}
