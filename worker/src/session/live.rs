//! Making the session live on this worker: record, reply sequence, header, agent (restored
//! from the last checkpoint), and the posts that keep the thread informed.

use object_store::path::Path as ObjectPath;
use proto::{ChatEvent, LocalRef, SessionId};

use super::*;
use crate::access::{self};
use crate::agent::PermissionMode;
use crate::records::SessionRow;
use crate::render::{self, Header, LostCheckpoint, Status};
use crate::replies::Replies;
use crate::runtime::SessionSpec;

impl State {
    /// Makes sure the session is live (record, header, agent), resuming from the last
    /// checkpoint when there is one.
    pub(super) async fn ensure_live(&mut self, event: &ChatEvent) -> Result<(), Error> {
        if self.live.as_ref().is_some_and(|l| l.session.is_some()) {
            return Ok(());
        }
        self.attach(event).await?;
        self.start_agent().await
    }

    /// Makes the session present on this worker without starting the agent: its record
    /// (created for a new thread), its reply sequence and its header.
    pub(super) async fn attach(&mut self, event: &ChatEvent) -> Result<(), Error> {
        if self.live.is_some() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let records = &ctx.records;
        let thread = self.thread.as_str();
        let existing = records.session(thread).await?;
        // A recorded owner was not released: it died (our own id too: an earlier life of
        // this worker, whose default id is stable across restarts; or an actor of ours
        // that lost the lease).
        let previous = existing.as_ref().and_then(|row| {
            row.owner
                .clone()
                .or_else(|| row.status.strip_prefix("orphaned:").map(str::to_owned))
        });
        ctx.stats.claimed(match (&existing, &previous) {
            (None, _) => crate::stats::Claim::New,
            (Some(_), None) => crate::stats::Claim::Resume,
            (Some(_), Some(_)) => crate::stats::Claim::Takeover,
        });
        let row = match existing {
            Some(row) => row,
            None => {
                records
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
                    .await?
            }
        };
        records
            .set_owner(thread, Some(ctx.id.as_str()), "starting")
            .await?;
        self.turns_done = row.turns;
        let session_id = SessionId::new(row.session_id.clone());
        let participants = records.participants(thread).await.unwrap_or_default();
        // A fleet without repositories has no session with one: no query for it.
        let repo = match ctx.repos.is_empty() {
            true => None,
            false => records.session_repo(thread).await?,
        };
        if self.live.is_none() {
            let mut replies = Replies::resume(
                &ctx.fabric,
                &ctx.names,
                self.thread.clone(),
                proto::ChannelId::new(row.channel_id.clone()),
                session_id.clone(),
            )
            .await?;
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
                        repo: repo.as_ref().map(|r| (r.repo.as_str(), r.branch.as_str())),
                    });
                    let local = replies.create(text, None).await?;
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
                repo,
            });
            // Messages let in while no worker could hand them back.
            self.admit_undelivered().await;
            // Pushes asked for while no worker could carry them out.
            Box::pin(self.finish_pushes()).await;
        }
        Ok(())
    }

    /// Starts the agent of an attached session from its latest checkpoint that can be
    /// restored. One that cannot (unreadable, refused, missing from the store) is passed
    /// over for the one before; the thread is told which were lost and where the session
    /// continues, and they are marked so later starts skip them. If none can be restored,
    /// the session starts over in an empty workspace, and says so.
    pub(super) async fn start_agent(&mut self) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let records = &ctx.records;
        let thread = self.thread.clone();
        let thread = thread.as_str();
        let Some(row) = self.live.as_ref().map(|l| l.row.clone()) else {
            return Err(Error::NotAttached);
        };
        let session_id = SessionId::new(row.session_id.clone());
        // No agent of ours runs for this session now, so whatever runs for it is an earlier
        // owner's (a dead worker's container, a CLI whose worker was killed): it is stopped,
        // and gone, before this worker restores and runs the turn again, so the old CLI
        // cannot finish the turn's side effects a second time.
        let fenced = ctx.runtime.fence(&session_id).await?;
        if fenced > 0 {
            tracing::info!(%session_id, fenced, "stopped an earlier owner's agent");
        }
        let mut fresh = SessionSpec::new(session_id.clone());
        fresh.permission_mode = PermissionMode::parse(&row.permission_mode).unwrap_or_default();
        let mut lost = Vec::new();
        let mut started = None;
        for (turn, key) in records.restorable_checkpoints(thread).await? {
            let file = match ctx
                .store
                .objects()
                .get(&ObjectPath::from(key.as_str()))
                .await
            {
                Ok(object) => download(object).await?,
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::warn!(turn, key = %key, "checkpoint missing from the store");
                    lost.push(LostCheckpoint {
                        turn,
                        reason: "its file is missing from the object store".into(),
                    });
                    continue;
                }
                Err(err) => return Err(Error::Checkpoint(err)),
            };
            let mut spec = fresh.clone();
            spec.resume = row.cli_session_id.clone();
            spec.restore = Some(std::sync::Arc::new(file));
            match ctx.runtime.start(spec).await {
                Ok(session) => {
                    started = Some((session, Some(turn)));
                    break;
                }
                Err(err) if err.is_unrestorable() => {
                    tracing::warn!(
                        turn,
                        error = &err as &dyn std::error::Error,
                        "checkpoint cannot be restored; trying the one before"
                    );
                    lost.push(LostCheckpoint {
                        turn,
                        reason: causes(&err),
                    });
                }
                Err(err) => return Err(err.into()),
            }
        }
        let (session, restored) = match started {
            Some(started) => started,
            None => {
                if !lost.is_empty() {
                    // What a refused restore left behind is no workspace to continue in.
                    ctx.runtime.remove_data(&session_id).await?;
                }
                (ctx.runtime.start(fresh).await?, None)
            }
        };
        self.incarnation = uuid::Uuid::new_v4().to_string();
        let Some(live) = self.live.as_mut() else {
            return Err(Error::NotAttached);
        };
        live.session = Some(session);
        self.open_egress().await;
        let Some(live) = self.live.as_mut() else {
            return Err(Error::NotAttached);
        };
        if lost.is_empty() {
            return Ok(());
        }
        let notice = render::checkpoints_lost(&lost, restored);
        // Marked only once the thread was told: a start that fails before tells it again.
        if let Err(err) = live.replies.create(notice, None).await {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "the lost-checkpoint notice could not be posted"
            );
            return Ok(());
        }
        for one in &lost {
            if let Err(err) = records
                .mark_unrestorable(thread, one.turn, &one.reason)
                .await
            {
                tracing::warn!(
                    turn = one.turn,
                    error = &err as &dyn std::error::Error,
                    "an unrestorable checkpoint could not be marked"
                );
            }
        }
        Ok(())
    }

    /// Why `event` may not start a new session here (access lists, per-user cap).
    pub(super) async fn refuse_new_session(&self, event: &ChatEvent) -> Option<String> {
        if self.row().await.is_some() {
            return None;
        }
        let config = &self.ctx.config.worker;
        let allowed = self.ctx.directory.allowed_users(config).await;
        if let Some(refusal) = access::refusal(
            config,
            &event.user,
            event.channel.as_str(),
            allowed.as_ref(),
        ) {
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

    pub(super) async fn set_status(&mut self, status: Status) {
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
            repo: live
                .repo
                .as_ref()
                .map(|r| (r.repo.as_str(), r.branch.as_str())),
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

    /// Tells `event`'s author something only they see.
    pub(super) async fn tell(&mut self, event: &ChatEvent, text: String) {
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
    pub(super) async fn notice(
        &self,
        event: &ChatEvent,
        text: String,
    ) -> Result<(), crate::replies::Error> {
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

    pub(super) async fn say(&mut self, event: &ChatEvent, text: String) {
        match self.live.as_mut() {
            Some(live) => {
                let _ = live.replies.create(text, None).await;
            }
            None => {
                let _ = self.notice(event, text).await;
            }
        }
    }

    pub(super) async fn refresh_participants(&mut self) {
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

    pub(super) async fn refresh_header(&mut self) {
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
            repo: live
                .repo
                .as_ref()
                .map(|r| (r.repo.as_str(), r.branch.as_str())),
        });
        let header = live.header.clone();
        let _ = live.replies.update(&header, text, None, false).await;
    }
}

/// Why `err` happened, without its own message: "cause: cause".
fn causes(err: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

/// Streams a checkpoint from the store into a temporary file: never all of it in memory.
pub(super) async fn download(
    object: object_store::GetResult,
) -> Result<tempfile::NamedTempFile, Error> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let file = tokio::task::spawn_blocking(tempfile::NamedTempFile::new)
        .await
        .map_err(|err| Error::CheckpointFile(std::io::Error::other(err)))?
        .map_err(Error::CheckpointFile)?;
    let mut out = tokio::io::BufWriter::with_capacity(
        256 * 1024,
        tokio::fs::File::from_std(file.reopen().map_err(Error::CheckpointFile)?),
    );
    let mut stream = object.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::Checkpoint)?;
        out.write_all(&chunk).await.map_err(Error::CheckpointFile)?;
    }
    out.flush().await.map_err(Error::CheckpointFile)?;
    Ok(file)
}
