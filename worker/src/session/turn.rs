//! A turn: the prompt sent to the agent, its streamed output, its end, and a stop.

use std::time::{Duration, Instant};

/// How long a CLI told to stop a turn has before it is ended.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How many times a prompt's turn is started before a prompt whose turns keep being cut
/// off (their worker stopped mid-turn each time: killed, out of memory) is given up.
pub const MAX_TURN_STARTS: i32 = 3;

/// Whether the `started`-th start of a prompt's turn is one too many.
pub fn gives_up(started: i32) -> bool {
    started > MAX_TURN_STARTS
}

use object_store::path::Path as ObjectPath;
use proto::ChatEvent;
use proto::v1::EventBody;
use tracing::Instrument as _;

use super::*;
use crate::agent::{Event, TurnResult};
use crate::render::{self, Status};
use crate::stats::TurnOutcome;
use crate::transcript::{Change, Transcript};

impl State {
    pub(super) async fn interrupt(&mut self, by: &str) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        turn.transcript.interrupted(by);
        self.interrupt_agent(by).await;
    }

    /// Stops the current turn on an operator's request (the admin API).
    pub(super) async fn interrupt_for_admin(&mut self, by: &str) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        turn.transcript.stopped(render::admin_interrupted(by));
        self.interrupt_agent(by).await;
    }

    async fn interrupt_agent(&mut self, by: &str) {
        let Some(handle) = self
            .live
            .as_ref()
            .and_then(|l| l.session.as_ref())
            .map(|session| session.agent_handle())
        else {
            return;
        };
        // Deny pending questions first so the CLI is not stuck waiting for them.
        self.deny_pending(by).await;
        if let Err(err) = handle.interrupt().await {
            tracing::warn!(error = %err, "interrupt failed");
        }
    }

    /// When the running turn is over its time: its limit, or its CLI's silence (not while
    /// it waits for the thread), or the grace after it was told to stop.
    pub(super) fn turn_deadline(&self) -> Option<tokio::time::Instant> {
        let turn = self.turn.as_ref()?;
        if let Some(since) = turn.stopping {
            return Some(since + STOP_GRACE);
        }
        let config = &self.ctx.config.worker;
        let limit = (config.turn_timeout_s > 0).then(|| {
            tokio::time::Instant::from_std(turn.started)
                + Duration::from_secs(config.turn_timeout_s)
        });
        let stall = (config.stall_timeout_s > 0 && !self.approvals.is_waiting())
            .then(|| turn.last_output + Duration::from_secs(config.stall_timeout_s));
        match (limit, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The running turn is over its time: stop it with a note saying why; if its CLI does
    /// not stop within [`STOP_GRACE`], end the CLI (the session resumes on the next message).
    pub(super) async fn turn_over_time(&mut self) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.stopping.is_some() {
            tracing::error!("the CLI did not stop in time; ending it");
            self.agent_died().await;
            return;
        }
        let config = &self.ctx.config.worker;
        let over_limit = config.turn_timeout_s > 0
            && turn.started.elapsed() >= Duration::from_secs(config.turn_timeout_s);
        let note = if over_limit {
            render::turn_timed_out(config.turn_timeout_s)
        } else {
            render::turn_stalled(config.stall_timeout_s)
        };
        tracing::warn!(over_limit, "stopping a turn over its time");
        turn.transcript.stopped(note);
        turn.stopping = Some(tokio::time::Instant::now());
        let Some(handle) = self
            .live
            .as_ref()
            .and_then(|l| l.session.as_ref())
            .map(|session| session.agent_handle())
        else {
            return;
        };
        self.deny_pending("ccfleet").await;
        if let Err(err) = handle.interrupt().await {
            tracing::warn!(error = %err, "interrupt failed");
        }
    }

    pub(super) async fn start_turn(&mut self, prompt: Prompt) {
        let number = self.turns_done + 1;
        let model = &self.ctx.config.model.model;
        let span = tracing::info_span!(
            parent: &prompt.span,
            "turn",
            thread_id = %self.thread,
            session_id = tracing::field::Empty,
            turn = number,
            user.id = %prompt.event.user.id,
            user.name = %prompt.event.user.username,
            gen_ai.request.model = %model,
            gen_ai.response.model = tracing::field::Empty,
        );
        Box::pin(self.start_turn_in(prompt, span.clone()))
            .instrument(span)
            .await;
    }

    async fn start_turn_in(&mut self, prompt: Prompt, span: tracing::Span) {
        // Counted before anything else, restoring the session included: what cut the
        // earlier attempts may be this start itself.
        match self
            .ctx
            .records
            .count_turn_start(&prompt.event.event_id)
            .await
        {
            Ok(started) if gives_up(started) => {
                tracing::error!(
                    started,
                    "a prompt whose turns keep being cut off is given up"
                );
                self.fail_prompt(&prompt, &render::cut_turn_given_up(started - 1))
                    .await;
                return;
            }
            Ok(_) => {}
            // The bound is checked again at the next delivery; the turn's own records fail
            // visibly if the database is gone.
            Err(err) => {
                tracing::warn!(error = %common::error_chain(&err), "turn start not counted")
            }
        }
        if self.live.is_none()
            && let Some(refusal) = self.refuse_new_session(&prompt.event).await
        {
            self.fail_prompt(&prompt, &refusal).await;
            self.done = true;
            return;
        }
        if let Err(err) = self.ensure_live(&prompt.event).await {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "session could not start"
            );
            self.fail_prompt(
                &prompt,
                &format!(
                    ":warning: The session could not start: {}. Reply to try again.",
                    err.chain()
                ),
            )
            .await;
            return;
        }
        // A new session's repository is checked out before its first turn runs.
        if let Err(text) = self.start_repo(&prompt.event, &prompt.text).await {
            self.fail_prompt(&prompt, &text).await;
            return;
        }
        if prompt.retry
            && let Some(live) = self.live.as_mut()
        {
            let _ = live.replies.create(render::retrying_cut_turn(), None).await;
        }
        let number = self.turns_done + 1;
        if let Some(live) = &self.live {
            span.record("session_id", live.row.session_id.as_str());
        }
        let trace_id = common::telemetry::trace_id(&span);
        let records = &self.ctx.records;
        let (_, context) = tokio::join!(
            records.start_turn(
                self.thread.as_str(),
                number,
                &prompt.event.event_id,
                self.ctx.id.as_str(),
                trace_id.as_deref(),
            ),
            records.pending_context(self.thread.as_str()),
        );
        let context = context.unwrap_or_default();
        // Framed so that no message's text can pass for another author's line.
        let earlier: Vec<(&str, &str)> = context
            .iter()
            .map(|(_, author, body)| (author.as_str(), body.as_str()))
            .collect();
        let mut text = crate::prompt::frame(&earlier, &prompt.event.user.username, &prompt.text);
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
        let before = session
            .files()
            .manifest(self.ctx.config.worker.max_artifact_bytes)
            .await
            .ok();
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
            transcript: Transcript::new(),
            started: Instant::now(),
            before,
            last_output: tokio::time::Instant::now(),
            stopping: None,
            span,
            _received: prompt.span,
            tools: std::collections::HashMap::new(),
            waits: std::collections::HashMap::new(),
            model: self.ctx.config.model.model.clone(),
            shown: false,
            _active: crate::stats::Active::new(&self.ctx.stats.active),
        });
        self.set_status(Status::Working).await;
    }

    /// Files attached to the post, as the gateway staged them in the object store
    /// (`uploads/<thread>/<file id>/<name>`): (workspace path, content).
    pub(super) async fn attachments(&self, event: &ChatEvent) -> Vec<(String, Vec<u8>)> {
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

    pub(super) async fn fail_prompt(&mut self, prompt: &Prompt, text: &str) {
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

    /// Publishes the turn's answer post: `text`, or what the transcript shows so far.
    pub(super) async fn publish_answer(
        &mut self,
        streaming: bool,
        text: Option<String>,
    ) -> Result<(), crate::replies::Error> {
        let Some(turn) = self.turn.as_mut() else {
            return Ok(());
        };
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let text = text.unwrap_or_else(|| turn.transcript.text());
        match &turn.answer {
            Some(local) => live.replies.update(local, text, None, streaming).await,
            None => {
                turn.answer = Some(live.replies.create(text, None).await?);
                if !turn.shown {
                    turn.shown = true;
                    self.ctx
                        .stats
                        .first_output
                        .observe(turn.started.elapsed().as_secs_f64());
                }
                Ok(())
            }
        }
    }

    pub(super) async fn on_agent_event(&mut self, event: Event) {
        if let Some(turn) = self.turn.as_mut() {
            turn.trace_tool(&event);
            if let Event::ToolUse { name, .. } = &event {
                self.ctx.stats.tool_called(name);
            }
        }
        match event {
            Event::Init(init) => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.span
                        .record("gen_ai.response.model", init.model.as_str());
                    if !init.model.is_empty() {
                        turn.model = init.model.clone();
                    }
                }
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
            Event::TextDelta { .. }
            | Event::Text { .. }
            | Event::ToolUse { .. }
            | Event::ToolResult { .. }
            | Event::TodoUpdate { .. }
            | Event::Retry(_)
            | Event::Error(_) => {
                let change = match self.turn.as_mut() {
                    Some(turn) => turn.transcript.apply(&event),
                    None => return,
                };
                match change {
                    Change::Answer => {
                        // A lost streaming edit is made good by the next one or the final.
                        let _ = self.publish_answer(true, None).await;
                    }
                    Change::Todo(text) => self.show_todo(text).await,
                    Change::None => {}
                }
            }
            Event::PermissionRequest(request) => self.ask(request).await,
            Event::PermissionCancelled { request_id } => {
                self.withdraw(request_id).await;
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
            Event::TurnResult(result) => self.finish_turn(result).await,
            _ => {}
        }
    }

    /// The live task list: one post per session, updated in place.
    async fn show_todo(&mut self, text: String) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
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

    pub(super) async fn agent_died(&mut self) {
        tracing::error!("the agent exited mid-turn");
        let event_id = self.turn.as_ref().map(|t| t.event.event_id.clone());
        self.withdraw_pending(event_id.as_deref()).await;
        let died = self.turn.as_ref().map(|t| t.transcript.died_text());
        let _ = self.publish_answer(false, died).await;
        if let Some(turn) = self.turn.take() {
            self.ctx
                .stats
                .turn_ended(TurnOutcome::Failed, turn.started.elapsed());
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

    pub(super) async fn finish_turn(&mut self, result: TurnResult) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        self.withdraw_pending(Some(&turn.event.event_id)).await;
        let text = turn.transcript.final_text(&result);
        let number = turn.number;
        let thread = self.thread.to_string();
        let (artifacts, changed) = self.collect_artifacts(number, turn.before.take()).await;
        let message = turn.message.take();
        self.turn = Some(turn);
        // The answer is what the turn was for: until it is published the prompt is not
        // acknowledged. A worker that loses the thread meanwhile leaves the prompt to the
        // next owner, which runs it again with a notice.
        let mut tries = 0;
        while let Err(err) = self.publish_answer(false, Some(text.clone())).await {
            tries += 1;
            tracing::warn!(error = %common::error_chain(&err), tries, "the turn's answer could not be published; trying again");
            if let Some(message) = &message {
                let _ = message.ack_with(jetstream::AckKind::Progress).await;
            }
            tokio::select! {
                () = self.lost.cancelled() => {
                    self.turn = None;
                    return;
                }
                () = tokio::time::sleep(super::error::backoff(tries)) => {}
            }
        }
        let turn = self.turn.take().expect("put back above");
        if let Some(block) = artifacts
            && let Some(live) = self.live.as_mut()
        {
            let _ = live.replies.create(block, None).await;
        }
        let usage = result.usage;
        self.ctx.stats.usage(
            &turn.model,
            [
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_input_tokens,
                usage.cache_creation_input_tokens,
            ],
            result.cost_usd,
        );
        self.ctx.stats.turn_ended(
            TurnOutcome::of(
                result.is_error,
                result.terminal_reason.as_deref(),
                turn.stopping.is_some(),
            ),
            turn.started.elapsed(),
        );
        // The checkpoint and the turn's record are independent; the event counts as handled
        // only once the checkpoint that holds its turn is stored, or the thread was told it
        // could not be.
        let ctx = self.ctx.clone();
        let (stored, recorded) = tokio::join!(
            self.checkpoint_with_retries(number, message.as_ref()),
            ctx.records.finish_turn(
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
        if let Err(err) = recorded {
            tracing::warn!(error = %common::error_chain(&err), turn = number, "the turn's usage could not be recorded");
        }
        if let Err(err) = stored {
            if self.lost.is_cancelled() {
                return;
            }
            let saved = self
                .ctx
                .records
                .restorable_checkpoints(&thread)
                .await
                .ok()
                .and_then(|all| all.first().map(|(turn, _)| *turn));
            let text = match err.too_large() {
                Some((size, limit)) => render::workspace_over_limit(number, size, limit, saved),
                None => render::checkpoint_not_saved(number, saved, &err.chain()),
            };
            if let Some(live) = self.live.as_mut() {
                let _ = live.replies.create(text, None).await;
            }
        }
        let _ = self
            .ctx
            .records
            .mark_handled(&turn.event.event_id, Some(number))
            .await;
        if let Some(message) = &message {
            let _ = message.ack().await;
        }
        self.turns_done = number;
        tracing::info!(
            turn = number,
            elapsed_ms = turn.started.elapsed().as_millis() as u64,
            "turn finished"
        );
        self.set_status(Status::Idle).await;
        self.offer_push(&turn.event, changed).await;
    }
}

impl Turn {
    /// Opens a span when the model calls a tool and ends it with the tool's result: one
    /// span per call, none per streamed delta.
    fn trace_tool(&mut self, event: &Event) {
        match event {
            Event::ToolUse { id, name, .. } => {
                let span = tracing::info_span!(
                    parent: &self.span,
                    "tool",
                    otel.name = %format_args!("execute_tool {name}"),
                    gen_ai.operation.name = "execute_tool",
                    gen_ai.tool.name = %name,
                    gen_ai.tool.call.id = %id,
                    error.type = tracing::field::Empty,
                );
                self.tools.insert(id.clone(), span);
            }
            Event::ToolResult {
                tool_use_id,
                is_error,
                ..
            } => {
                if let Some(span) = self.tools.remove(tool_use_id)
                    && *is_error
                {
                    span.record("error.type", "tool_error");
                }
            }
            _ => {}
        }
    }

    /// Opens the span of the wait for the thread's answer to `request`: a child of its
    /// tool call's span (of the turn's when the call is not known).
    pub(super) fn wait_for_answer(&mut self, request: &crate::agent::PermissionRequest) {
        let parent = self.tools.get(&request.tool_use_id).unwrap_or(&self.span);
        let span = tracing::info_span!(
            parent: parent,
            "approval",
            otel.name = "approval wait",
            gen_ai.tool.name = %request.tool_name,
            ccfleet.approval.request_id = %request.request_id,
        );
        self.waits.insert(
            request.request_id.clone(),
            super::Wait {
                _span: span,
                since: Instant::now(),
                tool: request.tool_name.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_given_up_after_its_allowed_starts() {
        assert!((1..=MAX_TURN_STARTS).all(|started| !gives_up(started)));
        assert!(gives_up(MAX_TURN_STARTS + 1));
        assert!(gives_up(i32::MAX));
    }
}
