//! Sessions that start from a configured repository and push back as a merge request
//! (GitLab) or pull request (GitHub). `plan` decides (branch, what may be pushed, commit
//! message, failures in plain words) without I/O; `git` runs the `git` CLI in the worker
//! (never in the session's container) with the token given through an askpass program;
//! `provider` calls the forge's API.
//!
//! Invariants:
//! * The token is in no URL, no file the session can read, no argument and no message:
//!   only in the environment of the worker's own `git` process and in API headers, and it
//!   is removed from any git output kept.
//! * The repository (`git_dir`) is the worker's; the session's files are only its work
//!   tree, so hooks or configuration the agent writes are never run or read.
//! * A push is reported done only after the remote took it; the review is opened or
//!   updated after that, and its failure is reported as such (the branch is pushed).

pub mod git;
pub mod plan;
pub mod provider;

use std::path::{Path, PathBuf};

use common::config::RepositoryConfig;
use proto::ThreadId;

use git::{Credential, Git};
use plan::{Author, Candidate, Failure, Held};
use provider::{Provider, ReviewLink};

/// The configured repositories, and the worker's private directory its git works in
/// (removed when the worker stops).
#[derive(Debug)]
pub struct Repos {
    repos: Vec<Repo>,
    scratch: tempfile::TempDir,
}

impl Repos {
    /// Installs the askpass program in a new private directory (mode 0700).
    pub fn new(configs: &[RepositoryConfig]) -> Result<Self, git::Error> {
        let scratch = tempfile::Builder::new()
            .prefix("ccfleet-repos-")
            .tempdir()
            .map_err(|source| git::Error::Askpass {
                dir: std::env::temp_dir(),
                source,
            })?;
        let askpass = git::install_askpass(&scratch.path().join("bin"))?;
        Ok(Repos {
            repos: configs
                .iter()
                .map(|c| Repo::new(c.clone(), askpass.clone()))
                .collect(),
            scratch,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.config.name == name)
    }

    /// (name, default channels) of each repository, for [`plan::choose_repository`].
    pub fn choices(&self) -> Vec<(&str, &[String])> {
        self.repos
            .iter()
            .map(|r| (r.config.name.as_str(), r.config.channels.as_slice()))
            .collect()
    }

    /// The repository sessions without one push their generated files to.
    pub fn for_generated(&self) -> Option<&Repo> {
        self.repos.iter().find(|r| r.config.generated_files)
    }

    pub fn is_empty(&self) -> bool {
        self.repos.is_empty()
    }

    /// A new directory for one checkout or push, removed when dropped.
    pub fn scratch(&self) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(self.scratch.path())
    }
}

/// One configured repository.
#[derive(Debug, Clone)]
pub struct Repo {
    pub config: RepositoryConfig,
    provider: Option<Provider>,
    askpass: PathBuf,
}

/// A session's checkout: the worker's repository, the session's files, the branch.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub git: Git,
    /// The session's branch (`ccfleet/<thread>` or one named in the message).
    pub branch: String,
    /// The branch reviews target.
    pub base: String,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub commit: String,
    /// Paths committed (changed, added or deleted).
    pub files: Vec<String>,
    /// Changed files left out, and why.
    pub held: Vec<Held>,
    /// The commit's page, when the forge has an API.
    pub commit_url: Option<String>,
    /// The merge/pull request, unless the branch is the base itself or plain git. The
    /// branch is pushed either way: a review that failed is that failure, to tell.
    pub review: Option<Result<ReviewLink, Failure>>,
}

impl Pushed {
    /// What the thread is told: the commit (linked when the forge has pages), the review
    /// opened or updated (or why not), and the files left out.
    pub fn summary(&self, repo: &str, branch: &str, review_word: &str) -> String {
        let short = &self.commit[..self.commit.len().min(8)];
        let commit = match &self.commit_url {
            Some(url) if !url.is_empty() => format!("[{short}]({url})"),
            _ => format!("`{short}`"),
        };
        let n = self.files.len();
        let mut out = format!(
            "Pushed {n} file{} to `{branch}` of {repo}: commit {commit}.",
            if n == 1 { "" } else { "s" }
        );
        match &self.review {
            Some(Ok(link)) => out.push_str(&format!(
                "\n{} {review_word} {}: {}",
                if link.created { "Opened" } else { "Updated" },
                link.number,
                link.url
            )),
            Some(Err(failure)) => out.push_str(&format!(
                "\nThe {review_word} was not opened: {}",
                failure.plain_words(repo, branch)
            )),
            None => {}
        }
        for held in &self.held {
            out.push_str(&match held {
                Held::Secret { path, why } => format!(
                    "\nNot pushed: `{path}` ({why}); Push again with confirmation to include it."
                ),
                Held::TooLarge { path, size, limit } => {
                    format!("\nNot pushed: `{path}` ({size} bytes, over the {limit}-byte limit).")
                }
            });
        }
        out
    }
}

impl Repo {
    /// `askpass`: the program [`git::install_askpass`] wrote.
    pub fn new(config: RepositoryConfig, askpass: PathBuf) -> Self {
        Repo {
            provider: Provider::new(&config),
            config,
            askpass,
        }
    }

    fn credential(&self) -> Option<Credential> {
        (!self.config.token.is_empty()).then(|| Credential {
            username: self.config.git_username().to_owned(),
            token: self.config.token.clone(),
        })
    }

    fn git_failure(&self, err: &git::Error) -> Failure {
        match err {
            git::Error::Failed { stderr, .. } => {
                plan::classify_git(stderr, self.config.token.expose())
            }
            other => Failure::Other(other.to_string()),
        }
    }

    /// Sets up `git_dir` (created) for the session's files in `work_tree` on `branch`.
    /// When the remote has `branch` (a resumed session, or an existing branch named in
    /// the message) it continues from it; else the branch starts from `start` (else the
    /// configured default branch, else the remote's) — at commit `at` when given (the
    /// commit the session started from: the base may have moved on since). With
    /// `materialize`, the branch's files are written into the work tree (files already
    /// there are kept, and show as changes); a resumed session's files come from its
    /// checkpoint instead.
    pub async fn checkout(
        &self,
        git_dir: PathBuf,
        work_tree: PathBuf,
        branch: &str,
        start: Option<&str>,
        at: Option<&str>,
        materialize: bool,
    ) -> Result<Checkout, Failure> {
        let commit_id = |c: &str| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit());
        if !plan::valid_branch(branch)
            || start.is_some_and(|s| !plan::valid_branch(s))
            || at.is_some_and(|c| !commit_id(c))
        {
            return Err(Failure::Other(format!(
                "`{branch}` is not a branch name git accepts"
            )));
        }
        std::fs::create_dir_all(&git_dir).map_err(|e| Failure::Other(e.to_string()))?;
        std::fs::create_dir_all(&work_tree).map_err(|e| Failure::Other(e.to_string()))?;
        let git = Git::new(self.askpass.clone(), git_dir, work_tree);
        let cred = self.credential();
        let cred = cred.as_ref();
        let fail = |e: git::Error| self.git_failure(&e);
        git.run(&["init", "--quiet"], None, None)
            .await
            .map_err(fail)?;
        // A second checkout into the same directory (a retry) finds the remote there.
        if git
            .run(&["remote", "get-url", "origin"], None, None)
            .await
            .is_err()
        {
            git.run(&["remote", "add", "origin", &self.config.url], None, None)
                .await
                .map_err(fail)?;
        }
        let base = match (start, self.config.default_branch.as_str()) {
            (Some(s), _) => s.to_owned(),
            (None, "") => git.remote_default_branch(cred).await.map_err(fail)?,
            (None, configured) => configured.to_owned(),
        };
        let existing = git.remote_has(branch, cred).await.map_err(fail)?;
        let from = if existing { branch } else { base.as_str() };
        let depth = self.config.clone_depth.to_string();
        let refspec = match at {
            // By id: git's protocol v2 serves any commit the remote can reach.
            Some(commit) if !existing => commit.to_owned(),
            _ => format!("+refs/heads/{from}:refs/remotes/origin/{from}"),
        };
        let mut fetch = vec!["fetch", "--quiet", "--no-tags"];
        if self.config.clone_depth > 0 {
            fetch.extend(["--depth", depth.as_str()]);
        }
        fetch.extend(["origin", refspec.as_str()]);
        git.run(&fetch, cred, None).await.map_err(fail)?;
        let head = format!("refs/heads/{branch}");
        let tracking = match at {
            Some(commit) if !existing => commit.to_owned(),
            _ => format!("refs/remotes/origin/{from}"),
        };
        git.run(&["update-ref", &head, &tracking], None, None)
            .await
            .map_err(fail)?;
        git.run(&["symbolic-ref", "HEAD", &head], None, None)
            .await
            .map_err(fail)?;
        git.run(&["reset", "--quiet", "--mixed", &head], None, None)
            .await
            .map_err(fail)?;
        if materialize {
            // Files already in the work tree (attachments) are kept: git says "already
            // exists" for each, and fails only for that.
            if let Err(err) = git.run(&["checkout-index", "--all"], None, None).await {
                let only_existing = err
                    .stderr()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .all(|l| l.contains("already exists"));
                if !only_existing || err.stderr().trim().is_empty() {
                    return Err(fail(err));
                }
            }
        }
        Ok(Checkout {
            git,
            branch: branch.to_owned(),
            base,
        })
    }

    /// Commits the work tree's changes (those the screen lets through) as `author`,
    /// pushes the branch, and opens or updates its review.
    pub async fn push(
        &self,
        co: &Checkout,
        author: &Author,
        message: &str,
        thread_link: &str,
        secrets_confirmed: bool,
    ) -> Result<Pushed, Failure> {
        let fail = |e: git::Error| self.git_failure(&e);
        let changes = co.git.changes().await.map_err(fail)?;
        let mut candidates = Vec::new();
        let mut deleted = Vec::new();
        for (status, path) in changes {
            match read_head(&co.git.work_tree, &path) {
                Some((size, head)) if status != "D" => {
                    candidates.push(Candidate { path, size, head })
                }
                _ => deleted.push(path),
            }
        }
        let screened = plan::screen(
            &candidates,
            self.config.max_push_file_bytes,
            secrets_confirmed,
        );
        let mut files = screened.push.clone();
        files.extend(deleted);
        let tracking = format!("refs/remotes/origin/{}", co.branch);
        let pushed_before = co
            .git
            .run(&["rev-parse", "--verify", "--quiet", &tracking], None, None)
            .await
            .ok();
        let head_now = co
            .git
            .run(&["rev-parse", "HEAD"], None, None)
            .await
            .map_err(fail)?;
        if files.is_empty() && pushed_before.as_deref() == Some(head_now.as_str()) {
            return Err(Failure::NothingToPush);
        }
        if !files.is_empty() {
            let mut list = Vec::new();
            for f in &files {
                list.extend_from_slice(f.as_bytes());
                list.push(0);
            }
            co.git
                .run(
                    &[
                        "add",
                        "--all",
                        "--pathspec-from-file=-",
                        "--pathspec-file-nul",
                    ],
                    None,
                    Some(&list),
                )
                .await
                .map_err(fail)?;
            let name = format!("user.name={}", author.name);
            let email = format!("user.email={}", author.email);
            co.git
                .run(
                    &[
                        "-c",
                        &name,
                        "-c",
                        &email,
                        "commit",
                        "--quiet",
                        "--no-verify",
                        "-F",
                        "-",
                    ],
                    None,
                    Some(message.as_bytes()),
                )
                .await
                .map_err(fail)?;
        }
        let commit = co
            .git
            .run(&["rev-parse", "HEAD"], None, None)
            .await
            .map_err(fail)?;
        let refspec = format!("HEAD:refs/heads/{}", co.branch);
        let cred = self.credential();
        co.git
            .run(
                &["push", "--quiet", "origin", &refspec],
                cred.as_ref(),
                None,
            )
            .await
            .map_err(fail)?;
        co.git
            .run(&["update-ref", &tracking, &commit], None, None)
            .await
            .map_err(fail)?;
        let (mut commit_url, mut review) = (None, None);
        if let Some(provider) = &self.provider {
            commit_url = provider.commit_url(&commit).await.ok();
            if co.branch != co.base {
                let (title, description) = plan::review_text(message, thread_link);
                review = Some(
                    provider
                        .open_or_update(&co.branch, &co.base, &title, &description)
                        .await,
                );
            }
        }
        Ok(Pushed {
            commit,
            files,
            held: screened.held,
            commit_url,
            review,
        })
    }

    /// Checks the token and the project through the API (plain git: `ls-remote`).
    pub async fn probe(&self, scratch: &Path) -> Result<String, Failure> {
        match &self.provider {
            Some(p) => p.default_branch().await,
            None => {
                let git = Git::new(
                    self.askpass.clone(),
                    scratch.join("probe.git"),
                    scratch.to_owned(),
                );
                git.run(&["init", "--quiet"], None, None)
                    .await
                    .map_err(|e| self.git_failure(&e))?;
                let _ignored = git
                    .run(&["remote", "add", "origin", &self.config.url], None, None)
                    .await;
                git.remote_default_branch(self.credential().as_ref())
                    .await
                    .map_err(|e| self.git_failure(&e))
            }
        }
    }
}

/// Size and first bytes of a work-tree file, without following a symbolic link (a link
/// is read as its target's name, as git stores it).
fn read_head(work_tree: &Path, path: &str) -> Option<(u64, Vec<u8>)> {
    use std::io::Read;
    let full = work_tree.join(path);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&full).ok()?;
        let bytes = target.to_string_lossy().into_owned().into_bytes();
        return Some((bytes.len() as u64, bytes));
    }
    let mut head = Vec::with_capacity(plan::HEAD_BYTES);
    std::fs::File::open(&full)
        .ok()?
        .take(plan::HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .ok()?;
    Some((meta.len(), head))
}

/// The thread's branch: the one the message names, else `ccfleet/<short thread id>`.
pub fn session_branch(thread: &ThreadId, named: Option<&str>) -> String {
    named.map_or_else(|| plan::branch_for(thread), str::to_owned)
}
