//! The `process` runtime: the CLI as a local child process in a per-session directory
//! (`<sessions_dir>/<session_id>/{workspace,claude,home}`). For development and machines
//! without Docker: it isolates nothing.
//!
//! Fencing: a start writes the CLI's pid (its process group) to `<session root>/cli.pid`.
//! When that file exists, [`ProcessRuntime::fence`] kills every process on this host whose
//! environment names the session's `CLAUDE_CONFIG_DIR` — the CLI and the shells it started,
//! which outlive it when only the CLI is killed (a dropped child) or the worker is
//! SIGKILLed — and waits until none is left; the environment, not the pid, identifies them,
//! so a reused pid is never hit. That reaches an earlier owner's CLI only when it ran on
//! this host with the same `worker.sessions_dir`, as the workers of `deploy/local/fleet`
//! do; the process runtime is for development.

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

    /// Kills what is left of the session's CLI (see the module's doc) and waits until it
    /// is gone. Returns how many processes were killed.
    pub(crate) async fn fence(&self, id: &SessionId) -> Result<usize, Error> {
        let root = self.session_root(id);
        let session = id.to_string();
        blocking(move || fence_dir(&root))
            .await?
            .map_err(|source| Error::Io { session, source })
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
        if let Some(pid) = child.id() {
            // Its group id (`process_group(0)`), for a later owner's fence.
            let pid_file = root.join(PID_FILE);
            let written = blocking(move || std::fs::write(pid_file, format!("{pid}\n"))).await?;
            if let Err(source) = written {
                let _ = ProcessLife {
                    child,
                    stderr: None,
                }
                .kill()
                .await;
                return Err(Error::Io { session, source });
            }
        }
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
            egress: None,
            files: SessionFiles {
                session: spec.session_id,
                files: Files::Dir(root),
            },
            life: Lifecycle::Process(life),
        })
    }
}

/// The file in a session root naming the CLI's process group.
pub(crate) const PID_FILE: &str = "cli.pid";

/// How long a fence waits for killed processes to disappear.
const FENCE_WAIT: Duration = Duration::from_secs(10);

fn fence_dir(root: &Path) -> std::io::Result<usize> {
    let pid_file = root.join(PID_FILE);
    // Written at every start: without it, no CLI ever ran here.
    match std::fs::metadata(&pid_file) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    }
    let marker = format!(
        "CLAUDE_CONFIG_DIR={}",
        root.join(archive::CLAUDE_STATE).display()
    );
    let deadline = std::time::Instant::now() + FENCE_WAIT;
    let mut killed = 0;
    loop {
        let members = session_processes(marker.as_bytes());
        if members.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "processes {members:?} of an earlier CLI did not end"
            )));
        }
        for pid in members {
            if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if killed > 0 {
        tracing::info!(root = %root.display(), killed, "fenced an earlier owner's CLI");
    }
    match std::fs::remove_file(&pid_file) {
        Ok(()) => Ok(killed),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(killed),
        Err(err) => Err(err),
    }
}

/// Live processes whose environment holds `marker`: the CLI and whatever it started, in
/// its process group or not (zombies have no environment, so they do not count).
fn session_processes(marker: &[u8]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker))
        })
        .collect()
}

/// Creates the session root; with a checkpoint, replaces it by the checkpoint's content.
pub(crate) async fn prepare_root(
    root: &Path,
    restore: Option<Arc<tempfile::NamedTempFile>>,
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
            archive::restore_dir(checkpoint.path(), &root).map_err(|source| Error::Restore {
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
