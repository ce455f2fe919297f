//! A session's repository, seen from its thread: checked out before the first turn (by
//! `repo:NAME`, `/claude repo NAME` or the channel's default), offered for a push after
//! each turn that changed files, pushed when the owner or an approver says so.
//!
//! The worker's own `git` does all of it (`crate::repo`): the token never enters the
//! session's container. The files travel as the runtime moves any files: a checkout is
//! imported into the workspace like attachments; a push works on the session's checkpoint
//! (its files now, or the last one stored when the session is not live), extracted into
//! a directory of the worker's, with a repository made for that push from the remote and
//! the commit the session started from. So any worker can push any session.

use proto::ChatEvent;

use super::*;
use crate::approvals::{self, Effect};
use crate::records::SessionRepo;
use crate::repo::plan::{self, Author, Chosen};

/// What a push is asked to do.
struct PushWhat {
    /// The request the commit message is made from.
    pub request: String,
    /// Files held back as possible secrets go too.
    pub confirm: bool,
    /// A session without a repository: these files of its workspace, copied onto its
    /// branch of the repository that takes generated files.
    pub generated: Option<Vec<String>>,
}

/// The commit of a session's generated files (the first seed's words).
fn generated_message(thread: &proto::ThreadId) -> String {
    format!(
        "{} (Thread: {thread})\n\nCcfleet-Thread: {thread}\nCo-authored-by: Claude <noreply@anthropic.com>\n",
        plan::GENERATED_TITLE
    )
}

impl State {
    /// Before a session's first turn: the repository its first message or its channel
    /// names, checked out into the workspace. `Err` is what the thread is told instead
    /// of running the turn (a name that is not configured, a checkout that failed).
    pub(super) async fn start_repo(&mut self, event: &ChatEvent, text: &str) -> Result<(), String> {
        if self.ctx.repos.is_empty() || self.turns_done > 0 {
            return Ok(());
        }
        if self.live.as_ref().is_none_or(|l| l.repo.is_some()) {
            return Ok(());
        }
        let choices = self.ctx.repos.choices();
        let chosen = plan::choose_repository(text, event.channel.as_str(), &choices)
            .map_err(|unusable| render::repo_unusable(&unusable.plain_words()))?;
        match chosen {
            Some(chosen) => self.check_out(chosen).await,
            None => Ok(()),
        }
    }

    /// `/claude repo NAME`: the session starts from (or adds) that repository, unless it
    /// has one.
    pub(super) async fn choose_repo(&mut self, event: &ChatEvent, args: &str) -> Result<(), Error> {
        let words = format!(
            "repo:{}",
            args.split_whitespace().collect::<Vec<_>>().join(" branch:")
        );
        let choices = self.ctx.repos.choices();
        let chosen = match plan::choose_repository(&words, "", &choices) {
            Ok(Some(chosen)) => chosen,
            Ok(None) => return Ok(()),
            Err(unusable) => {
                self.say(event, render::repo_unusable(&unusable.plain_words()))
                    .await;
                return Ok(());
            }
        };
        if let Some(current) = self.live.as_ref().and_then(|l| l.repo.as_ref()) {
            let text = render::repo_unusable(&format!(
                "This session already works on `{}` (branch `{}`); start a new thread for another repository.",
                current.repo, current.branch
            ));
            self.say(event, text).await;
            return Ok(());
        }
        self.ensure_live(event).await?;
        if let Err(text) = self.check_out(chosen).await {
            self.say(event, text).await;
        }
        Ok(())
    }

    /// Clones `chosen` on its branch, copies its files into the workspace, records it and
    /// shows it in the header.
    async fn check_out(&mut self, chosen: Chosen) -> Result<(), String> {
        let ctx = self.ctx.clone();
        let Some(repo) = ctx.repos.get(&chosen.name) else {
            return Err(render::repo_unusable(&format!(
                "There is no repository `{}`.",
                chosen.name
            )));
        };
        let Some(files) = self
            .live
            .as_ref()
            .and_then(|l| l.session.as_ref())
            .map(|s| s.files())
        else {
            return Err(render::repo_unusable("The session is not running."));
        };
        let branch = crate::repo::session_branch(&self.thread, chosen.branch.as_deref());
        let name = chosen.name.clone();
        let failed = |words: String| render::repo_unusable(&words);
        let dir =
            self.ctx.repos.scratch().map_err(|e| {
                failed(format!("The worker could not make room for `{name}`: {e}."))
            })?;
        let tree = dir.path().join("tree");
        let started = std::time::Instant::now();
        let co = clone_into(repo, dir.path(), &branch)
            .await
            .map_err(|f| failed(f.plain_words(&name, &branch)))?;
        let start = co
            .git
            .run(&["rev-parse", "HEAD"], None, None)
            .await
            .map_err(|e| failed(format!("git could not read the checkout of `{name}`: {e}.")))?;
        let limit = self.ctx.config.worker.max_workspace_bytes;
        let read = tokio::task::spawn_blocking(move || read_tree(&tree, limit))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(format!("The checkout of `{name}` could not be read: {e}.")))?;
        let count = read.len();
        files.import(read).await.map_err(|e| {
            failed(format!(
                "The files of `{name}` could not be copied into the workspace: {}.",
                common::error_chain(&e)
            ))
        })?;
        let record = SessionRepo {
            repo: name.clone(),
            branch: branch.clone(),
            base: co.base.clone(),
            start_commit: start,
            review_url: None,
        };
        self.ctx
            .records
            .set_session_repo(self.thread.as_str(), &record)
            .await
            .map_err(|e| {
                failed(format!(
                    "The session's repository could not be recorded: {}.",
                    common::error_chain(&e)
                ))
            })?;
        tracing::info!(repo = %name, %branch, files = count, elapsed_ms = started.elapsed().as_millis() as u64, "repository checked out");
        if let Some(live) = self.live.as_mut() {
            live.repo = Some(record);
            let _ = live
                .replies
                .create(render::repo_started(&name, &branch, &co.base, count), None)
                .await;
        }
        self.refresh_header().await;
        Ok(())
    }

    /// After a turn that changed files (`changed`, workspace paths) of a repository
    /// session: offer to push them.
    pub(super) async fn offer_push(&mut self, event: &ChatEvent, changed: Vec<String>) {
        if changed.is_empty() {
            return;
        }
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let session_id = live.row.session_id.clone();
        let (repo, branch, generated, files) = match (&live.repo, self.ctx.repos.for_generated()) {
            (Some(repo), _) => (repo.repo.clone(), repo.branch.clone(), false, changed),
            // Without a repository: the files the turn changed that are not hidden, as its
            // artifacts are (a deleted one is not copied).
            (None, Some(target)) => {
                let made: Vec<String> = changed
                    .into_iter()
                    .filter(|p| !p.split('/').any(|s| s.starts_with('.')))
                    .collect();
                if made.is_empty() {
                    return;
                }
                (
                    target.config.name.clone(),
                    plan::branch_for(&self.thread),
                    true,
                    made,
                )
            }
            (None, None) => return,
        };
        let request = match &event.body {
            proto::v1::EventBody::Message(m) => m.text.clone(),
            proto::v1::EventBody::SlashCommand(c) => c.text.clone(),
            _ => String::new(),
        };
        let effects = self.approvals.push(approvals::PushAsked {
            approval: uuid::Uuid::now_v7().to_string(),
            session_id,
            repo,
            branch,
            files,
            request,
            confirm: false,
            generated,
            event_id: event.event_id.clone(),
            now_ms: super::approvals::now_ms(),
        });
        if let Err(err) = self.execute(effects, None).await {
            tracing::warn!(error = %err.chain(), "could not offer a push");
        }
    }

    /// `commit message: …` while a push offer waits: it becomes the offer's request (the
    /// commit's title and body), and the offer shows it. Only those who may push may.
    pub(super) async fn edit_push_message(
        &mut self,
        event: &ChatEvent,
        message: String,
    ) -> Result<(), Error> {
        let Some(row) = self.ctx.records.pending_push(self.thread.as_str()).await? else {
            self.tell(
                event,
                render::repo_unusable("No push is waiting for a commit message here."),
            )
            .await;
            return Ok(());
        };
        let owner = self
            .live
            .as_ref()
            .map(|l| l.row.started_by.clone())
            .or(self.row().await.map(|r| r.started_by))
            .unwrap_or_default();
        let approvers = self
            .ctx
            .directory
            .approvers(&self.ctx.config.worker)
            .await
            .iter()
            .map(|id| id.to_string())
            .collect();
        if !approvals::may_answer(&owner, &approvers, event.user.id.as_str()) {
            let name = self
                .live
                .as_ref()
                .map(|l| l.row.started_by_name.clone())
                .unwrap_or_default();
            self.tell(event, render::not_an_approver(&name)).await;
            return Ok(());
        }
        let mut input: serde_json::Value =
            serde_json::from_str(&row.input).unwrap_or(serde_json::Value::Null);
        input["request"] = serde_json::Value::String(message);
        if !self
            .ctx
            .records
            .set_approval_input(&row.approval_id, &input.to_string())
            .await?
        {
            self.tell(
                event,
                render::already_answered(row.decided_by_name.as_deref()),
            )
            .await;
            return Ok(());
        }
        let (text, buttons) = approvals::prompt(approvals::Kind::Push, "", &input, 0);
        let effects = vec![Effect::Update {
            post: approvals::state::post_of(&row),
            text,
            buttons: Some(approvals::Buttons {
                approval: row.approval_id.clone(),
                step: 0,
                buttons,
            }),
        }];
        if self.live.is_none() {
            self.attach(event).await?;
        }
        self.execute(effects, Some(event)).await
    }

    /// Pushes someone asked for whose worker stopped before it told the thread how it
    /// went: done now, by this worker.
    pub(super) async fn finish_pushes(&mut self) {
        if self.ctx.repos.is_empty() {
            return;
        }
        let rows = match self
            .ctx
            .records
            .unfinished_pushes(self.thread.as_str())
            .await
        {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %common::error_chain(&err), "could not look for unfinished pushes");
                return;
            }
        };
        for row in rows {
            let input: serde_json::Value =
                serde_json::from_str(&row.input).unwrap_or(serde_json::Value::Null);
            let field = |k: &str| {
                input
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let by = row.decided_by_name.clone().unwrap_or_default();
            tracing::info!(approval = %row.approval_id, "finishing a push an earlier owner did not");
            let flag = |k: &str| input.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let files: Vec<String> = input
                .get("files")
                .cloned()
                .and_then(|f| serde_json::from_value(f).ok())
                .unwrap_or_default();
            let follow = Box::pin(self.push(
                &row.approval_id,
                &by,
                field("request"),
                flag("confirm"),
                flag("generated").then_some(files),
            ))
            .await;
            if let Err(err) = Box::pin(self.execute(follow, None)).await {
                tracing::warn!(error = %err.chain(), "could not offer the held files");
            }
        }
    }

    /// Someone said push: commit the session's changes as them, push its branch, open or
    /// update its review, and tell the thread what happened. What follows (files held as
    /// possible secrets offered with a confirmation) is returned.
    /// `generated`: a session without a repository, and the workspace files to copy onto
    /// its branch of the repository that takes generated files.
    pub(super) async fn push(
        &mut self,
        approval: &str,
        username: &str,
        request: String,
        confirm: bool,
        generated: Option<Vec<String>>,
    ) -> Vec<Effect> {
        let what = PushWhat {
            request,
            confirm,
            generated,
        };
        let outcome = self.push_now(username, &what).await;
        let mut follow = Vec::new();
        let text = match outcome {
            Ok((text, held_secrets, record)) => {
                if !held_secrets.is_empty()
                    && let Some(live) = self.live.as_ref()
                {
                    follow = self.approvals.push(approvals::PushAsked {
                        approval: uuid::Uuid::now_v7().to_string(),
                        session_id: live.row.session_id.clone(),
                        repo: record.repo,
                        branch: record.branch,
                        files: held_secrets,
                        request: what.request.clone(),
                        confirm: true,
                        generated: what.generated.is_some(),
                        event_id: String::new(),
                        now_ms: super::approvals::now_ms(),
                    });
                }
                text
            }
            Err(text) => text,
        };
        let posted = match self.live.as_mut() {
            Some(live) => live.replies.create(text, None).await.is_ok(),
            None => false,
        };
        if posted {
            let _ = self.ctx.records.mark_approval_delivered(approval).await;
        }
        follow
    }

    /// The push itself: (what to tell the thread, files held back as possible secrets,
    /// the session's repository), or what to tell it instead.
    async fn push_now(
        &mut self,
        username: &str,
        what: &PushWhat,
    ) -> Result<(String, Vec<String>, SessionRepo), String> {
        let thread = self.thread.to_string();
        let failed = |words: String| render::push_failed(&words);
        let record = match (
            &what.generated,
            self.live.as_ref().and_then(|l| l.repo.clone()),
        ) {
            (Some(_), _) => {
                let Some(target) = self.ctx.repos.for_generated() else {
                    return Err(failed(
                        "No repository takes generated files on this fleet any more; ask an operator.".into(),
                    ));
                };
                SessionRepo {
                    repo: target.config.name.clone(),
                    branch: plan::branch_for(&self.thread),
                    base: String::new(),
                    start_commit: String::new(),
                    review_url: None,
                }
            }
            (None, Some(record)) => record,
            (None, None) => self
                .ctx
                .records
                .session_repo(&thread)
                .await
                .map_err(|e| {
                    failed(format!(
                        "The session's repository could not be read: {}. Push again later.",
                        common::error_chain(&e)
                    ))
                })?
                .ok_or_else(|| failed("This session has no repository.".into()))?,
        };
        let (name, branch) = (record.repo.clone(), record.branch.clone());
        let ctx = self.ctx.clone();
        let Some(repo) = ctx.repos.get(&name) else {
            return Err(failed(format!(
                "`{name}` is no longer configured on this fleet; ask an operator."
            )));
        };
        let dir =
            self.ctx.repos.scratch().map_err(|e| {
                failed(format!("The worker could not make room for the push: {e}."))
            })?;
        let root = dir.path().join("root");
        self.extract_files(&root).await.map_err(failed)?;
        let workspace = root.join(crate::runtime::archive::WORKSPACE);
        let co = match &what.generated {
            // The branch as the repository has it (its files written out), with the
            // session's files copied over it.
            Some(files) => {
                let tree = dir.path().join("tree");
                let co = clone_into(repo, dir.path(), &branch)
                    .await
                    .map_err(|f| failed(f.plain_words(&name, &branch)))?;
                let files = files.clone();
                tokio::task::spawn_blocking(move || copy_files(&workspace, &tree, &files))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| {
                        failed(format!("The session's files could not be copied: {e}."))
                    })?;
                co
            }
            None => repo
                .checkout(
                    dir.path().join("git"),
                    workspace,
                    &branch,
                    Some(record.base.as_str()),
                    Some(record.start_commit.as_str()),
                    false,
                )
                .await
                .map_err(|f| failed(f.plain_words(&name, &branch)))?,
        };
        let host = self
            .ctx
            .config
            .mattermost
            .url
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or("")
            .to_owned();
        let author = Author::for_user(username, "", "", &host);
        let message = match &what.generated {
            Some(_) => generated_message(&self.thread),
            None => plan::commit_message(&what.request, &self.thread),
        };
        let link = format!(
            "{}/_redirect/pl/{}",
            self.ctx.config.mattermost.url.trim_end_matches('/'),
            self.thread
        );
        let pushed = repo
            .push(&co, &author, &message, &link, what.confirm)
            .await
            .map_err(|f| match (&f, &record.review_url) {
                // E.g. a push carried out again after its worker stopped before telling
                // the thread: the review it made is still the news.
                (plan::Failure::NothingToPush, Some(url)) => failed(format!(
                    "{} It is up to date: {url}",
                    f.plain_words(&name, &branch)
                )),
                _ => failed(f.plain_words(&name, &branch)),
            })?;
        let review_url = match &pushed.review {
            Some(Ok(review)) => Some(review.url.clone()),
            _ => None,
        };
        if what.generated.is_none()
            && let Err(err) = self
                .ctx
                .records
                .set_pushed(&thread, &pushed.commit, review_url.as_deref())
                .await
        {
            tracing::warn!(error = %common::error_chain(&err), "the push could not be recorded");
        }
        if what.generated.is_none()
            && review_url.is_some()
            && let Some(repo) = self.live.as_mut().and_then(|l| l.repo.as_mut())
        {
            repo.review_url.clone_from(&review_url);
        }
        let word = match repo.config.provider {
            common::config::RepoProvider::Gitlab => "merge request",
            common::config::RepoProvider::Github => "pull request",
            common::config::RepoProvider::Git => "review",
        };
        let held: Vec<String> = pushed
            .held
            .iter()
            .filter(|h| matches!(h, plan::Held::Secret { .. }))
            .map(|h| h.path().to_owned())
            .collect();
        tracing::info!(repo = %name, %branch, commit = %pushed.commit, files = pushed.files.len(), "pushed");
        Ok((
            format!(
                ":white_check_mark: {}",
                pushed.summary(&name, &branch, word)
            ),
            held,
            record,
        ))
    }

    /// The session's files as a session root (`workspace/`, `claude/`) under `root`: from
    /// the live session, else from its last stored checkpoint.
    async fn extract_files(&mut self, root: &std::path::Path) -> Result<(), String> {
        let limit = self.ctx.config.worker.max_workspace_bytes;
        let file = match self.live.as_ref().and_then(|l| l.session.as_ref()) {
            Some(session) => session.files().checkpoint(limit).await.map_err(|e| {
                format!(
                    "The session's files could not be read: {}.",
                    common::error_chain(&e)
                )
            })?,
            None => {
                let checkpoints = self
                    .ctx
                    .records
                    .restorable_checkpoints(self.thread.as_str())
                    .await
                    .map_err(|e| {
                        format!(
                            "The session's checkpoints could not be read: {}. Push again later.",
                            common::error_chain(&e)
                        )
                    })?;
                let Some((_, key)) = checkpoints.into_iter().next() else {
                    return Err("The session has no saved files yet.".into());
                };
                let object = self
                    .ctx
                    .store
                    .objects()
                    .get(&object_store::path::Path::from(key.as_str()))
                    .await
                    .map_err(|e| {
                        format!("The session's files could not be fetched: {e}. Push again later.")
                    })?;
                super::live::download(object).await.map_err(|e| {
                    format!("The session's files could not be fetched: {}.", e.chain())
                })?
            }
        };
        let root = root.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::runtime::archive::restore_dir(file.path(), &root)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("The session's files could not be unpacked: {e}."))
    }
}

/// `branch` of `repo` (else its base) with its files written out: the repository in
/// `dir/git`, the files in `dir/tree`.
async fn clone_into(
    repo: &crate::repo::Repo,
    dir: &std::path::Path,
    branch: &str,
) -> Result<crate::repo::Checkout, plan::Failure> {
    repo.checkout(dir.join("git"), dir.join("tree"), branch, None, None, true)
        .await
}

/// Copies `files` (workspace paths) from `workspace` into `tree`, never through a link:
/// what is not a regular file in the workspace is left out.
fn copy_files(
    workspace: &std::path::Path,
    tree: &std::path::Path,
    files: &[String],
) -> std::io::Result<()> {
    for path in files {
        let Ok(rel) = crate::runtime::archive::relative_path(path) else {
            continue;
        };
        let from = workspace.join(&rel);
        if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let content = std::fs::read(&from)?;
        crate::runtime::archive::write_files(tree, &[(path.clone(), content)])
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Every regular file under `dir` (relative paths), for the workspace. Links are left
/// out: the workspace gets no link into the worker's disk. More than `limit` bytes in all
/// (0: no limit) is refused before anything is read: it could not be checkpointed.
fn read_tree(dir: &std::path::Path, limit: u64) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut size = 0u64;
    let mut todo = vec![dir.to_owned()];
    while let Some(current) = todo.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                size += entry.metadata()?.len();
                files.push(entry.path());
            }
        }
    }
    if limit > 0 && size > limit {
        return Err(std::io::Error::other(format!(
            "its files take {size} bytes, over this fleet's workspace limit of {limit} bytes"
        )));
    }
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let rel = path
            .strip_prefix(dir)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .into_owned();
        let content = std::fs::read(&path)?;
        out.push((rel, content));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_read_with_relative_paths_and_no_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/a")).unwrap();
        std::fs::write(dir.path().join("src/a/x.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("README"), b"r").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let read = read_tree(dir.path(), 0).unwrap();
        assert_eq!(
            read,
            vec![
                ("README".to_owned(), b"r".to_vec()),
                ("src/a/x.txt".to_owned(), b"x".to_vec()),
            ]
        );
        let refused = read_tree(dir.path(), 1).unwrap_err().to_string();
        assert!(
            refused.contains("over this fleet's workspace limit of 1 bytes"),
            "{refused}"
        );
    }
}
