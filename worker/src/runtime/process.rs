//! The `process` runtime: the CLI as a local child process in a per-session directory
//! (`<sessions_dir>/<session_id>/{workspace,claude,home}`). For development and machines
//! without Docker: it isolates nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::config::{ModelConfig, WorkerConfig};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use proto::ids::SessionId;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{
    Error, Files, Lifecycle, ModelEnv, STOP_GRACE, Session, SessionFiles, SessionSpec, api_key_env,
    archive, blocking, cli_args, cli_env,
};
use crate::agent::{Agent, AgentIo, AgentOptions};

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// The CLI binary (a path, or a name looked up in `PATH`).
    pub claude_bin: String,
    /// Parent of the per-session directories.
    pub sessions_dir: PathBuf,
    pub model: ModelEnv,
    pub agent: AgentOptions,
}

impl ProcessOptions {
    pub fn from_config(worker: &WorkerConfig, model: &ModelConfig) -> Self {
        Self {
            claude_bin: worker.claude_bin.clone(),
            sessions_dir: worker.sessions_dir.clone(),
            model: model.into(),
            agent: AgentOptions::default(),
        }
    }
}

/// Starts the CLI as a child process.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    options: Arc<ProcessOptions>,
}

impl ProcessRuntime {
    pub fn new(options: ProcessOptions) -> Self {
        Self {
            options: Arc::new(options),
        }
    }

    pub(crate) fn session_root(&self, id: &SessionId) -> PathBuf {
        self.options.sessions_dir.join(id.as_str())
    }

    pub(crate) async fn start(&self, spec: SessionSpec) -> Result<Session, Error> {
        let session = spec.session_id.to_string();
        let root = self.session_root(&spec.session_id);
        prepare_root(&root, spec.restore.clone(), &session).await?;
        let config_dir = root.join(archive::CLAUDE_STATE);
        let mut command = Command::new(&self.options.claude_bin);
        command
            .args(cli_args(&spec, &self.options.model))
            .current_dir(root.join(archive::WORKSPACE))
            // The worker's own environment (database URLs, tokens) stays out.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", root.join("home"))
            .env("LANG", "C.UTF-8")
            .env("SHELL", "/bin/bash")
            .envs(cli_env(&self.options.model, &config_dir.to_string_lossy()))
            .envs(api_key_env(&self.options.model))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so stopping it also stops the shells it started.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            bin: self.options.claude_bin.clone(),
            session: session.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::Spawn {
                bin: self.options.claude_bin.clone(),
                session,
                source: std::io::Error::other("the child's pipes are missing"),
            });
        };
        let stderr = tokio::spawn(log_stderr(stderr, session.clone()));
        let life = ProcessLife {
            child,
            stderr: Some(stderr),
        };
        let agent = Agent::new(
            AgentIo {
                stdin: Box::pin(stdin),
                stdout: Box::pin(stdout),
            },
            self.options.agent.clone(),
        );
        if let Err(source) = agent.handle().initialize().await {
            drop(agent);
            // Already failing: the kill's own error adds nothing.
            let _ = life.kill().await;
            return Err(Error::Initialize { session, source });
        }
        Ok(Session {
            id: spec.session_id.clone(),
            agent,
            files: SessionFiles {
                session: spec.session_id,
                files: Files::Dir(root),
            },
            life: Lifecycle::Process(life),
        })
    }
}

/// Creates the session root; with a checkpoint, replaces it by the checkpoint's content.
pub(crate) async fn prepare_root(
    root: &Path,
    restore: Option<bytes::Bytes>,
    session: &str,
) -> Result<(), Error> {
    let root = root.to_path_buf();
    let session_owned = session.to_owned();
    blocking(move || -> Result<(), Error> {
        let io = |source| Error::Io {
            session: session_owned.clone(),
            source,
        };
        if let Some(checkpoint) = restore {
            match std::fs::remove_dir_all(&root) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io(err)),
            }
            archive::restore_dir(&checkpoint, &root).map_err(|source| Error::Restore {
                session: session_owned.clone(),
                source,
            })?;
        }
        for dir in [archive::WORKSPACE, archive::CLAUDE_STATE, "home"] {
            std::fs::create_dir_all(root.join(dir)).map_err(io)?;
        }
        Ok(())
    })
    .await?
}

pub(crate) async fn remove_dir(root: &Path) -> Result<(), Error> {
    let root = root.to_path_buf();
    blocking(move || match std::fs::remove_dir_all(&root) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            session: root.display().to_string(),
            source,
        }),
    })
    .await?
}

async fn log_stderr(stderr: tokio::process::ChildStderr, session: String) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(session_id = %session, line = %line, "CLI stderr");
    }
}

/// The child process and its stderr logger.
pub(crate) struct ProcessLife {
    child: Child,
    stderr: Option<JoinHandle<()>>,
}

impl ProcessLife {
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // ESRCH: already gone, which is what we want.
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    async fn wait_for(&mut self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.child.wait()).await.is_ok()
    }

    async fn finish(mut self) -> Result<(), Error> {
        if let Some(stderr) = self.stderr.take()
            && let Err(err) = stderr.await
        {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "stderr logger failed"
            );
        }
        Ok(())
    }

    /// stdin is already closed: wait, then SIGTERM, then SIGKILL (as the SDK does).
    pub(crate) async fn stop(mut self) -> Result<(), Error> {
        if !self.wait_for(STOP_GRACE).await {
            self.signal(Signal::SIGTERM);
            if !self.wait_for(STOP_GRACE).await {
                self.signal(Signal::SIGKILL);
                let _ = self.child.wait().await;
            }
        }
        // Shells the CLI left behind in its group.
        self.signal(Signal::SIGKILL);
        self.finish().await
    }

    pub(crate) async fn kill(mut self) -> Result<(), Error> {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait().await;
        self.finish().await
    }
}
