//! A code forge for tests: a real git server (Debian's `git http-backend` behind a CGI
//! runner with basic auth, [`cgi`]) and, on the same port as real forges do, a double of
//! the GitLab v4 ([`gitlab`], under `/api/v4`) or GitHub REST ([`github`], under
//! `/api/v3`, GitHub Enterprise's layout) endpoints the fleet calls.
//!
//! The repositories are bare repositories in a directory the forge owns; tests create
//! them ([`Forge::create_repo`]), protect branches ([`Forge::protect`]) and read what was
//! pushed ([`Forge::git`]). The APIs read commits and branches from the same repositories,
//! so a merge request can only name a branch that was really pushed.
//!
//! Fidelity of the API doubles is checked by the providers' own client libraries
//! (`python-gitlab`, `PyGithub`) in `loadtest`'s `forge` tests, never by our own client.
//!
//! Invariants:
//! * Every request needs the forge's token (git: as the basic-auth password, any user
//!   name; APIs: `PRIVATE-TOKEN`/`Authorization: Bearer` for GitLab, `Authorization:
//!   token|Bearer` for GitHub); anything else is answered as the forge answers it (401).
//! * State (merge requests) sits behind one `Mutex`, never held across an await.
//! * Every route served is recorded ([`Forge::routes_seen`]) with its template, so a test
//!   can check that a client exercised each of them.

pub mod cgi;
pub mod github;
pub mod gitlab;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which API the forge serves beside git.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GitLab REST v4 under `/api/v4`.
    GitLab,
    /// GitHub REST under `/api/v3` (GitHub Enterprise Server's layout).
    GitHub,
    /// Git only.
    Git,
}

/// How the forge is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    /// The one token that opens everything (git password and API token).
    pub token: String,
    /// Path of `git http-backend`; default [`cgi::DEFAULT_BACKEND`].
    pub backend: PathBuf,
}

impl Options {
    pub fn new(kind: Kind, token: impl Into<String>) -> Self {
        Options {
            kind,
            token: token.into(),
            backend: PathBuf::from(cgi::DEFAULT_BACKEND),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the forge's directory could not be prepared")]
    Dir(#[source] std::io::Error),
    #[error("`git http-backend` is missing at {path} (Debian's git package installs it)")]
    NoBackend { path: PathBuf },
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("`git` could not be run")]
    Spawn(#[source] std::io::Error),
    #[error("no repository {0}")]
    NoRepo(String),
}

/// One merge request (GitLab) or pull request (GitHub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// The project-wide number (`iid` on GitLab, `number` on GitHub).
    pub number: u64,
    /// The forge-wide id.
    pub id: u64,
    pub repo: String,
    pub source_branch: String,
    pub target_branch: String,
    pub title: String,
    pub description: String,
    /// `opened`/`open`, or `closed`.
    pub open: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Default)]
pub(crate) struct Data {
    /// repo path (`group/web`) → numeric project id.
    pub(crate) ids: BTreeMap<String, u64>,
    pub(crate) reviews: Vec<Review>,
    pub(crate) next_review_id: u64,
    /// (method, route template, status) of every request.
    pub(crate) seen: Vec<(String, String, u16)>,
}

pub(crate) struct Shared {
    pub(crate) options: Options,
    pub(crate) root: PathBuf,
    pub(crate) data: Mutex<Data>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bare repository of `repo` (`group/web`), if it exists.
    pub(crate) fn repo_dir(&self, repo: &str) -> Option<PathBuf> {
        if repo
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return None;
        }
        let dir = self.root.join(format!("{repo}.git"));
        dir.join("HEAD").is_file().then_some(dir)
    }

    /// The repository path of a numeric id or a path.
    pub(crate) fn resolve(&self, id_or_path: &str) -> Option<(u64, String)> {
        let data = self.lock();
        match id_or_path.parse::<u64>() {
            Ok(id) => data
                .ids
                .iter()
                .find(|(_, v)| **v == id)
                .map(|(k, v)| (*v, k.clone())),
            Err(_) => data
                .ids
                .get(id_or_path)
                .map(|v| (*v, id_or_path.to_owned())),
        }
    }

    pub(crate) fn default_branch(&self, repo: &str) -> String {
        self.repo_dir(repo)
            .and_then(|dir| git_in(&dir, &["symbolic-ref", "--short", "HEAD"]).ok())
            .unwrap_or_else(|| "main".to_owned())
    }

    pub(crate) fn protected(&self, repo: &str) -> BTreeSet<String> {
        self.repo_dir(repo)
            .and_then(|dir| std::fs::read_to_string(dir.join(PROTECTED_FILE)).ok())
            .map(|t| {
                t.lines()
                    .map(|l| l.trim_start_matches("refs/heads/").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The file in a bare repository listing its protected refs, read by its pre-receive hook.
const PROTECTED_FILE: &str = "ccfleet-protected";

/// Refuses pushes to the refs listed in `ccfleet-protected` with GitLab's own words.
const PRE_RECEIVE: &str = r#"#!/bin/sh
while read old new ref; do
  if [ -f ccfleet-protected ] && grep -qx "$ref" ccfleet-protected; then
    echo "GitLab: You are not allowed to push code to protected branches on this project." >&2
    exit 1
  fi
done
exit 0
"#;

/// A running forge.
pub struct Forge {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Forge {
    /// Serves on `listener` until `cancel` fires or [`Forge::shutdown`].
    pub fn start(
        listener: TcpListener,
        options: Options,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        if !options.backend.is_file() {
            return Err(Error::NoBackend {
                path: options.backend.clone(),
            });
        }
        let addr = listener.local_addr().map_err(Error::Dir)?;
        let dir = tempfile::tempdir().map_err(Error::Dir)?;
        let shared = Arc::new(Shared {
            options,
            root: dir.path().to_owned(),
            data: Mutex::new(Data::default()),
        });
        let app = router(shared.clone());
        let cancel = cancel.child_token();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
            if let Err(err) = served {
                tracing::error!(error = &err as &dyn std::error::Error, "forge stopped");
            }
        });
        Ok(Forge {
            addr,
            shared,
            _dir: dir,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API base URL a client is configured with: `/api/v4` (GitLab), `/api/v3`
    /// (GitHub Enterprise), or the base URL (git only).
    pub fn api_url(&self) -> String {
        match self.shared.options.kind {
            Kind::GitLab => format!("{}/api/v4", self.base_url()),
            Kind::GitHub => format!("{}/api/v3", self.base_url()),
            Kind::Git => self.base_url(),
        }
    }

    /// The clone URL of `repo` (`group/web`), without credentials.
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.base_url())
    }

    pub fn token(&self) -> &str {
        &self.shared.options.token
    }

    /// Where the bare repositories live.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Creates the bare repository `repo` (`group/web`) whose `default_branch` holds one
    /// commit with `files` (path, contents), authored by "Forge Seed".
    pub fn create_repo(
        &self,
        repo: &str,
        default_branch: &str,
        files: &[(&str, &[u8])],
    ) -> Result<PathBuf, Error> {
        let bare = self.shared.root.join(format!("{repo}.git"));
        std::fs::create_dir_all(&bare).map_err(Error::Dir)?;
        git_in(
            &bare,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch",
                default_branch,
            ],
        )?;
        let hook = bare.join("hooks/pre-receive");
        std::fs::write(&hook, PRE_RECEIVE).map_err(Error::Dir)?;
        set_executable(&hook).map_err(Error::Dir)?;
        let work = tempfile::tempdir().map_err(Error::Dir)?;
        let w = work.path();
        git_in(w, &["init", "--quiet", "--initial-branch", default_branch])?;
        for (path, contents) in files {
            let file = w.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(Error::Dir)?;
            }
            std::fs::write(&file, contents).map_err(Error::Dir)?;
        }
        git_in(w, &["add", "--all"])?;
        git_in(
            w,
            &[
                "-c",
                "user.name=Forge Seed",
                "-c",
                "user.email=seed@forge.test",
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                "Initial commit",
            ],
        )?;
        let target = bare.to_string_lossy().into_owned();
        git_in(w, &["push", "--quiet", &target, default_branch])?;
        let mut data = self.shared.lock();
        let next = data.ids.len() as u64 + 1;
        data.ids.entry(repo.to_owned()).or_insert(next);
        Ok(bare)
    }

    /// Refuses every later push to `branch` of `repo`, as a protected branch is.
    pub fn protect(&self, repo: &str, branch: &str) -> Result<(), Error> {
        let dir = self
            .shared
            .repo_dir(repo)
            .ok_or_else(|| Error::NoRepo(repo.to_owned()))?;
        let file = dir.join(PROTECTED_FILE);
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        text.push_str(&format!("refs/heads/{branch}\n"));
        std::fs::write(file, text).map_err(Error::Dir)
    }

    /// Runs `git ARGS` in `repo`'s bare repository; its trimmed stdout.
    pub fn git(&self, repo: &str, args: &[&str]) -> Result<String, Error> {
        let dir = self
            .shared
            .repo_dir(repo)
            .ok_or_else(|| Error::NoRepo(repo.to_owned()))?;
        git_in(&dir, args)
    }

    /// Every merge/pull request, oldest first.
    pub fn reviews(&self) -> Vec<Review> {
        self.shared.lock().reviews.clone()
    }

    /// (method, route template, status) of every request so far, oldest first.
    pub fn routes_seen(&self) -> Vec<(String, String, u16)> {
        self.shared.lock().seen.clone()
    }

    /// The API routes this forge serves: (method, template).
    pub fn api_routes(&self) -> &'static [(&'static str, &'static str)] {
        match self.shared.options.kind {
            Kind::GitLab => gitlab::ROUTES,
            Kind::GitHub => github::ROUTES,
            Kind::Git => &[],
        }
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(err) = task.await
        {
            tracing::error!(error = &err as &dyn std::error::Error, "forge task failed");
        }
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = match shared.options.kind {
        Kind::GitLab => gitlab::router(),
        Kind::GitHub => github::router(),
        Kind::Git => Router::new(),
    };
    api.fallback(cgi::serve)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "git".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(req).await;
    shared
        .lock()
        .seen
        .push((method, route, response.status().as_u16()));
    response
}

/// Runs `git ARGS` in `dir` with no user or system configuration; its trimmed stdout.
pub(crate) fn git_in(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(Error::Spawn)?;
    if !out.status.success() {
        return Err(Error::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// The token a request carries: `PRIVATE-TOKEN`, `Authorization: Bearer|token X`, or a
/// basic-auth password.
pub(crate) fn presented_token(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine;
    if let Some(t) = headers.get("private-token").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = auth.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(rest.trim().to_owned()),
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            text.split_once(':').map(|(_, p)| p.to_owned())
        }
        _ => None,
    }
}

/// Now, as the forges write it (`2026-01-01T12:00:00.000Z`).
pub(crate) fn now_iso() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    iso_from_unix(now.as_secs() as i64, now.subsec_millis())
}

/// A Unix time as ISO 8601 UTC (civil-from-days, Howard Hinnant's algorithm).
pub(crate) fn iso_from_unix(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// A commit of `repo` as the forges describe it.
#[derive(Debug, Clone)]
pub(crate) struct CommitInfo {
    pub(crate) sha: String,
    pub(crate) parents: Vec<String>,
    pub(crate) author_name: String,
    pub(crate) author_email: String,
    pub(crate) author_time: i64,
    pub(crate) committer_name: String,
    pub(crate) committer_email: String,
    pub(crate) committer_time: i64,
    pub(crate) title: String,
    pub(crate) message: String,
}

impl Shared {
    /// The commit `rev` names in `repo` (a sha or a branch).
    pub(crate) fn commit(&self, repo: &str, rev: &str) -> Option<CommitInfo> {
        if rev.starts_with('-') {
            return None;
        }
        let dir = self.repo_dir(repo)?;
        let out = git_in(
            &dir,
            &[
                "show",
                "-s",
                "--format=%H%x00%P%x00%an%x00%ae%x00%at%x00%cn%x00%ce%x00%ct%x00%s%x00%B",
                &format!("{rev}^{{commit}}"),
                "--",
            ],
        )
        .ok()?;
        let f: Vec<&str> = out.splitn(10, '\0').collect();
        if f.len() < 10 {
            return None;
        }
        Some(CommitInfo {
            sha: f[0].to_owned(),
            parents: f[1].split_whitespace().map(str::to_owned).collect(),
            author_name: f[2].to_owned(),
            author_email: f[3].to_owned(),
            author_time: f[4].parse().unwrap_or(0),
            committer_name: f[5].to_owned(),
            committer_email: f[6].to_owned(),
            committer_time: f[7].parse().unwrap_or(0),
            title: f[8].to_owned(),
            message: f[9].trim_end().to_owned(),
        })
    }

    /// The head commit of `branch` in `repo`, if the branch exists.
    pub(crate) fn branch_head(&self, repo: &str, branch: &str) -> Option<String> {
        let dir = self.repo_dir(repo)?;
        git_in(
            &dir,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ],
        )
        .ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso_from_unix(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::iso_from_unix(1_700_000_000, 5),
            "2023-11-14T22:13:20.005Z"
        );
        assert_eq!(
            super::iso_from_unix(951_782_400, 0),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
