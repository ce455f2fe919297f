//! People and commands: who may steer the session, guests' held messages, invite/kick,
//! permissions and status.

use proto::ChatEvent;

use super::*;
use crate::access::Command;
use crate::agent::PermissionMode;
use crate::render;

impl State {
    /// Whether the user may steer the session (stop it, tighten its permissions): its
    /// owner or an approver (by user id), or a participant.
    pub(super) async fn may_act(&self, user: &proto::v1::User) -> bool {
        match &self.live {
            Some(live) => {
                live.row.started_by == user.id.as_str()
                    || live.participants.contains(&user.username)
                    || self.is_approver(&user.id).await
            }
            None => false,
        }
    }

    /// Whether `user_id` is one of `worker.approvers` (pinned ids, `crate::directory`).
    pub(super) async fn is_approver(&self, user_id: &proto::UserId) -> bool {
        self.ctx
            .directory
            .approvers(&self.ctx.config.worker)
            .await
            .contains(user_id)
    }

    /// Spend against the configured budgets, for `/claude status` (none configured, or no
    /// live session: nothing).
    async fn budget_status(&self) -> Option<String> {
        use crate::egress::budget::{Amounts, Budget};
        let limits = Amounts::from(&self.ctx.config.budgets);
        let live = self.live.as_ref()?;
        if Budget::ALL.iter().all(|b| limits.get(*b) <= 0.0) {
            return None;
        }
        let (spent, top_ups) =
            crate::egress::meter::budget_state(self.ctx.records.pool(), &live.row.session_id)
                .await
                .ok()?;
        let parts: Vec<String> = Budget::ALL
            .into_iter()
            .filter(|b| limits.get(*b) > 0.0)
            .map(|b| {
                format!(
                    "{}: {} of {}",
                    b.describe(&live.row.started_by_name),
                    render::dollars(spent.get(b)),
                    render::dollars(limits.get(b) + top_ups.get(b))
                )
            })
            .collect();
        Some(format!("Budgets — {}", parts.join(" · ")))
    }

    pub(super) async fn status(&mut self, event: &ChatEvent) {
        /// How many turns `/claude status` links to their traces.
        const RECENT_TRACES: i64 = 5;
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
        let text = match self.budget_status().await {
            Some(budgets) => format!("{text}\n{budgets}"),
            None => text,
        };
        let trace_url = &self.ctx.config.telemetry.trace_url;
        let text = if trace_url.is_empty() {
            text
        } else {
            let turns = self
                .ctx
                .records
                .turn_traces(self.thread.as_str(), RECENT_TRACES)
                .await
                .unwrap_or_default();
            match render::turn_traces(&turns, trace_url) {
                Some(traces) => format!("{text}\n{traces}"),
                None => text,
            }
        };
        if let Some(live) = self.live.as_mut() {
            let _ = live.replies.ephemeral(&event.user.id, text).await;
        } else {
            let _ = self.notice(event, text).await;
        }
    }

    /// The session owner's user id and name.
    pub(super) async fn owner(&self) -> Option<(String, String)> {
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

    pub(super) async fn is_participant(&self, event: &ChatEvent) -> Result<bool, Error> {
        let (owner, participants) = match &self.live {
            Some(live) => (live.row.started_by.clone(), live.participants.clone()),
            None => match self.try_row().await? {
                Some(row) => (
                    row.started_by,
                    self.ctx.records.participants(self.thread.as_str()).await?,
                ),
                // No session yet: whoever starts it owns it.
                None => return Ok(true),
            },
        };
        Ok(owner == event.user.id.as_str()
            || participants.iter().any(|p| p == &event.user.username))
    }

    /// An operator's stop (admin API, see `proto::control`): ends the turn, drops the
    /// prompts waiting behind it and lets the session go (container stopped, resumable),
    /// saying so in the thread. A thread with no live session here has nothing to stop.
    pub(super) async fn admin_stop(&mut self, action: &proto::v1::ButtonAction) {
        let by = serde_json::from_str::<proto::control::AdminStop>(&action.context_json)
            .map(|stop| stop.by)
            .unwrap_or_else(|_| "admin".to_owned());
        if self.live.is_none() {
            self.done = true;
            return;
        }
        tracing::info!(by = %by, "stopped by an administrator");
        let turn = self.turn.is_some();
        self.interrupt_for_admin(&by).await;
        let dropped = self.prompts.len();
        for prompt in std::mem::take(&mut self.prompts) {
            let _ = self
                .ctx
                .records
                .mark_handled(&prompt.event.event_id, None)
                .await;
            if let Some(message) = prompt.message {
                let _ = message.ack().await;
            }
        }
        self.stop = Some((by, turn, dropped));
    }

    /// `/claude invite|kick|permissions|stop|status`, or `/invite` / `/kick` in a message.
    pub(super) async fn command(
        &mut self,
        event: &ChatEvent,
        command: Command,
    ) -> Result<(), Error> {
        match command {
            Command::Stop => {
                if self.may_act(&event.user).await {
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
                    return Ok(());
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
                    return Ok(());
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
            Command::Repo(args) => {
                if self.may_act(&event.user).await {
                    self.choose_repo(event, &args).await?;
                }
            }
        }
        Ok(())
    }

    /// Attaches the thread's session for a command; false (with a note) when there is none.
    async fn attach_existing(&mut self, event: &ChatEvent) -> bool {
        if self.row().await.is_none() {
            self.say(
                event,
                "There is no Claude Code session in this thread yet.".into(),
            )
            .await;
            self.done = true;
            return false;
        }
        self.attach(event).await.is_ok()
    }

    /// Attaches the session for a command; false (with a note) when there is none or
    /// the author is not its owner.
    pub(super) async fn owner_command(&mut self, event: &ChatEvent, what: &str) -> bool {
        if !self.attach_existing(event).await {
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
    pub(super) async fn permissions(&mut self, event: &ChatEvent, wanted: &str) {
        if !self.attach_existing(event).await {
            return;
        }
        if !self.may_act(&event.user).await {
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
}
