//! The thin shell around the `git` CLI. It runs in the worker, never in a session's
//! container, with a repository directory the worker owns (`--git-dir`) and the session's
//! files as the work tree, so nothing the agent writes (hooks, config) is ever read by
//! git. The token reaches git only through an askpass program that echoes two variables
//! of git's own environment: it is in no URL, no file and no argument.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::config::Secret;
use tokio::io::AsyncWriteExt;

/// The askpass program: the user name or the token, from git's environment.
const ASKPASS: &str = "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$CCFLEET_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$CCFLEET_GIT_TOKEN\" ;;\nesac\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("git could not be started")]
    Spawn(#[source] std::io::Error),
    #[error("the askpass program could not be written in {dir}")]
    Askpass {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {command}` failed")]
    Failed { command: String, stderr: String },
}

impl Error {
    /// What git said, for [`super::plan::classify_git`].
    pub fn stderr(&self) -> &str {
        match self {
            Error::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// A user name and token for HTTPS.
#[derive(Debug, Clone)]
pub struct Credential {
    pub username: String,
    pub token: Secret,
}

/// Runs git for one repository checkout: `git_dir` (the worker's) and `work_tree`.
#[derive(Debug, Clone)]
pub struct Git {
    askpass: PathBuf,
    pub git_dir: PathBuf,
    pub work_tree: PathBuf,
}

/// Writes the askpass program into `dir` (the worker's private directory), once.
pub fn install_askpass(dir: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("ccfleet-git-askpass");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(&path, ASKPASS)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
    };
    write().map_err(|source| Error::Askpass {
        dir: dir.to_owned(),
        source,
    })?;
    Ok(path)
}

impl Git {
    pub fn new(askpass: PathBuf, git_dir: PathBuf, work_tree: PathBuf) -> Self {
        Git {
            askpass,
            git_dir,
            work_tree,
        }
    }

    /// Runs `git ARGS` (with `stdin` fed if given); its stdout.
    pub async fn run(
        &self,
        args: &[&str],
        credential: Option<&Credential>,
        stdin: Option<&[u8]>,
    ) -> Result<String, Error> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.git_dir)
            .arg("--work-tree")
            .arg(&self.work_tree)
            // Nothing of the user's or system's configuration, no hooks, no stored
            // credentials, no prompts.
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "credential.helper=",
                "-c",
                "core.fsmonitor=false",
                "-c",
                "protocol.allow=never",
                "-c",
                "protocol.https.allow=always",
                "-c",
                "protocol.http.allow=always",
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=60",
            ])
            .args(args)
            .current_dir(&self.work_tree)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.git_dir)
            .env("LANG", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &self.askpass)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
        ] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        if let Some(c) = credential {
            cmd.env("CCFLEET_GIT_USERNAME", &c.username)
                .env("CCFLEET_GIT_TOKEN", c.token.expose());
        }
        let mut child = cmd.spawn().map_err(Error::Spawn)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input).await.map_err(Error::Spawn)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(Error::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let stderr = match credential {
                Some(c) if !c.token.is_empty() => stderr.replace(c.token.expose(), "***"),
                _ => stderr,
            };
            return Err(Error::Failed {
                command: args.first().copied().unwrap_or("").to_owned(),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// The remote's default branch (`ls-remote --symref origin HEAD`).
    pub async fn remote_default_branch(
        &self,
        credential: Option<&Credential>,
    ) -> Result<String, Error> {
        let out = self
            .run(
                &["ls-remote", "--symref", "origin", "HEAD"],
                credential,
                None,
            )
            .await?;
        Ok(out
            .lines()
            .find_map(|l| l.strip_prefix("ref: refs/heads/"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("main")
            .to_owned())
    }

    /// Whether `branch` exists on the remote.
    pub async fn remote_has(
        &self,
        branch: &str,
        credential: Option<&Credential>,
    ) -> Result<bool, Error> {
        let out = self
            .run(
                &[
                    "ls-remote",
                    "--heads",
                    "origin",
                    &format!("refs/heads/{branch}"),
                ],
                credential,
                None,
            )
            .await?;
        Ok(!out.trim().is_empty())
    }

    /// Changed paths of the work tree against `HEAD`, `.gitignore` respected: (status,
    /// path) from `status --porcelain -z`, renames as their new path.
    pub async fn changes(&self) -> Result<Vec<(String, String)>, Error> {
        let out = self
            .run(
                &[
                    "status",
                    "--porcelain=v1",
                    "-z",
                    "--untracked-files=all",
                    "--no-renames",
                ],
                None,
                None,
            )
            .await?;
        Ok(out
            .split('\0')
            .filter(|e| e.len() > 3)
            .map(|e| (e[..2].trim().to_owned(), e[3..].to_owned()))
            .collect())
    }
}
