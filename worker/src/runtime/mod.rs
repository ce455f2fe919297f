//! Runtimes that start the agent for a session: `docker` (production), `process` (a
//! local child process, for development) and `sim` (an instant in-process agent, for
//! benchmarks only).
//!
//! [`Runtime::start`] gives a [`Session`]: an initialized [`Agent`] plus file access
//! (checkpoint, manifest, export) and lifecycle (stop keeping the data, remove).
//!
//! Layout, the same for every runtime: a session root holding `workspace/` (the CLI's
//! working directory) and `claude/` (its `CLAUDE_CONFIG_DIR`: transcripts, plans, local
//! settings). A checkpoint is a gzip tar of both (see [`archive`]), so a session
//! checkpointed on one worker resumes on another with `--resume`.
//!
//! Invariants: the model API key goes only into the CLI process's environment and is
//! never logged (the docker runtime hands it over on the container's stdin, so it is
//! neither in the container's configuration, `docker inspect`, nor the Docker client's
//! debug logs); the process runtime clears the worker's environment before starting the CLI;
//! the docker runtime's containers are hardened (non-root, no capabilities,
//! no-new-privileges, read-only root, limits) and labelled with the worker id, the fleet
//! and the session, and [`Runtime::cleanup_orphans`] removes dead workers' leftovers at
//! start. A new owner [`Runtime::fence`]s a session before starting it. The docker
//! runtime keeps a [`warm`] pool of started containers for new sessions.

pub mod archive;
mod docker;
mod process;
mod sim;
pub mod warm;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::sync::Arc;

use common::config::{EgressConfig, ModelConfig, RuntimeKind, Secret, WorkerConfig};
use proto::ids::SessionId;

use crate::agent::{self, Agent, AgentHandle, PermissionMode};
pub use archive::{Change, ChangeKind, FileEntry, Manifest};
pub use docker::{
    DockerOptions, DockerRuntime, LABEL_FLEET, LABEL_POOL, LABEL_SESSION, LABEL_WORKER,
};
pub use process::{ProcessOptions, ProcessRuntime};
pub use sim::SimRuntime;

/// This machine's hostname (`worker` when it cannot be read): the default worker id's
/// stem, and in a container its id (how the docker runtime finds its own container).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Errors of the runtimes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Docker daemon is not reachable")]
    DockerUnavailable(#[source] bollard::errors::Error),
    #[error("runner image {image} is missing: run deploy/runner/build")]
    ImageMissing { image: String },
    #[error(
        "session network {network} is not internal: sessions would have a route out past the egress gateway (remove it, and the worker recreates it internal)"
    )]
    NetworkNotInternal { network: String },
    #[error("the egress gateway's address on session network {network}: {reason}")]
    EgressAddress { network: String, reason: String },
    #[error("the egress gateway for session network {network} did not start")]
    Egress {
        network: String,
        #[source]
        source: crate::egress::Error,
    },
    #[error("Docker call `{op}` failed for session {session}")]
    Docker {
        op: &'static str,
        session: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("starting the CLI {bin:?} for session {session} failed")]
    Spawn {
        bin: String,
        session: String,
        #[source]
        source: std::io::Error,
    },
    #[error("session {session}: file operation failed")]
    Io {
        session: String,
        #[source]
        source: std::io::Error,
    },
    #[error("session {session}: archive rejected")]
    Archive {
        session: String,
        #[source]
        source: archive::Error,
    },
    #[error("session {session}: the checkpoint could not be restored")]
    Restore {
        session: String,
        #[source]
        source: archive::Error,
    },
    #[error("session {session}: the CLI did not initialize")]
    Initialize {
        session: String,
        #[source]
        source: agent::Error,
    },
    #[error("session id {session:?} may only hold letters, digits, `-`, `_` and `.`")]
    BadSessionId { session: String },
    #[error("a blocking task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// A file read out of a workspace, streamed from disk: `content` is positioned at the
/// file's first byte and holds `size` bytes from there.
#[derive(Debug)]
pub struct ExportedFile {
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    pub content: std::fs::File,
}

impl Error {
    /// Whether trying again later can succeed (JetStream NAK with backoff) or the session
    /// cannot be run this way (TERM and tell the thread).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::DockerUnavailable(_)
            | Error::Docker { .. }
            | Error::Spawn { .. }
            | Error::Io { .. }
            | Error::Join(_)
            | Error::Egress { .. } => true,
            Error::Initialize { source, .. } => source.is_retryable(),
            Error::Restore { source, .. } => !source.is_unrestorable(),
            Error::ImageMissing { .. }
            | Error::Archive { .. }
            | Error::BadSessionId { .. }
            | Error::NetworkNotInternal { .. }
            | Error::EgressAddress { .. } => false,
        }
    }

    /// The checkpoint given to restore is at fault (unreadable or refused): starting from
    /// it again cannot succeed, an earlier checkpoint may.
    pub fn is_unrestorable(&self) -> bool {
        matches!(self, Error::Restore { source, .. } if source.is_unrestorable())
    }

    /// A checkpoint refused because the session's files exceed the limit: (size, limit).
    pub fn too_large(&self) -> Option<(u64, u64)> {
        match self {
            Error::Archive {
                source: archive::Error::TooLarge { size, limit },
                ..
            } => Some((*size, *limit)),
            _ => None,
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub session_id: SessionId,
    pub permission_mode: PermissionMode,
    /// The CLI's session id to continue (`--resume`), from an earlier [`agent::Init`].
    pub resume: Option<String>,
    /// A checkpoint ([`Session::checkpoint`]) restored into a fresh session root first:
    /// a temporary file (removed when the last clone is dropped), never held in memory.
    pub restore: Option<Arc<tempfile::NamedTempFile>>,
    /// `--model` for this session; `None`: the configured model.
    pub model: Option<String>,
}

impl SessionSpec {
    pub fn new(session_id: SessionId) -> Self {
        Self {
            session_id,
            permission_mode: PermissionMode::Default,
            resume: None,
            restore: None,
            model: None,
        }
    }
}

/// How the CLI reaches the model API. `Debug` hides the key.
#[derive(Debug, Clone, Default)]
pub struct ModelEnv {
    /// `ANTHROPIC_BASE_URL`; empty: Anthropic's API.
    pub base_url: String,
    pub api_key: Secret,
    /// `--model`; empty: the CLI's default.
    pub model: String,
    /// `CLAUDE_CODE_MAX_RETRIES`; 0: the CLI's default.
    pub max_retries: u32,
}

impl From<&ModelConfig> for ModelEnv {
    fn from(model: &ModelConfig) -> Self {
        Self {
            base_url: model.base_url.clone(),
            // The process runtime has no pool: the first credential.
            api_key: model
                .pool()
                .first()
                .map(|c| c.secret.clone())
                .unwrap_or_default(),
            model: model.model.clone(),
            max_retries: model.max_retries,
        }
    }
}

/// The CLI's arguments (after the binary), as the Agent SDK passes them.
pub fn cli_args(spec: &SessionSpec, model: &ModelEnv) -> Vec<String> {
    let mut args: Vec<String> = [
        "-p",
        "--output-format",
        "stream-json",
        "--input-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--permission-prompt-tool",
        "stdio",
        "--permission-mode",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(spec.permission_mode.as_str().to_owned());
    let model_name = spec.model.as_deref().unwrap_or(&model.model);
    if !model_name.is_empty() {
        args.push("--model".into());
        args.push(model_name.to_owned());
    }
    if let Some(resume) = &spec.resume {
        // The equals form, so an id starting with `-` is not read as a flag.
        args.push(format!("--resume={resume}"));
    }
    args
}

/// The CLI's environment besides `HOME`, `PATH` and the like, without the API key (see
/// [`api_key_env`]).
pub fn cli_env(model: &ModelEnv, config_dir: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if !model.base_url.is_empty() {
        env.insert("ANTHROPIC_BASE_URL".into(), model.base_url.clone());
    }
    env.insert("CLAUDE_CONFIG_DIR".into(), config_dir.to_owned());
    if model.max_retries > 0 {
        env.insert(
            "CLAUDE_CODE_MAX_RETRIES".into(),
            model.max_retries.to_string(),
        );
    }
    for (key, value) in [
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        // The live task list: TodoWrite (one whole list per call) instead of Task* tools.
        ("CLAUDE_CODE_ENABLE_TASKS", "0"),
        ("CLAUDE_CODE_ENABLE_TODO_TOOLS", "1"),
        // `session_state_changed` lines: running / requires_action / idle.
        ("CLAUDE_CODE_SDK_READS_SESSION_STATE", "1"),
        ("CLAUDE_CODE_ENTRYPOINT", "sdk-ccfleet"),
    ] {
        env.insert(key.into(), value.into());
    }
    env
}

/// `ANTHROPIC_API_KEY` for a child process's environment (never logged), if configured.
pub fn api_key_env(model: &ModelEnv) -> Option<(&'static str, &str)> {
    (!model.api_key.is_empty()).then(|| ("ANTHROPIC_API_KEY", model.api_key.expose()))
}

fn check_session_id(id: &SessionId) -> Result<(), Error> {
    let s = id.as_str();
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::BadSessionId {
            session: s.to_owned(),
        })
    }
}

/// Starts sessions. Build one per worker with [`Runtime::from_config`].
#[derive(Debug, Clone)]
pub enum Runtime {
    Docker(DockerRuntime),
    Process(ProcessRuntime),
    Sim(SimRuntime),
}

impl Runtime {
    /// The runtime `worker.runtime` names. `worker_id` labels docker containers (see
    /// [`Runtime::cleanup_orphans`]); pass the resolved, stable worker id.
    /// `fleet` (the `nats.prefix`) labels them too. `usage_db`: where the docker runtime's
    /// egress gateway records model usage and reads it against `budgets`.
    pub async fn from_config(
        worker: &WorkerConfig,
        model: &ModelConfig,
        egress: &EgressConfig,
        budgets: &common::config::BudgetsConfig,
        worker_id: &str,
        fleet: &str,
        usage_db: Option<deadpool_postgres::Pool>,
    ) -> Result<Self, Error> {
        Ok(match worker.runtime {
            RuntimeKind::Docker => Runtime::Docker({
                let mut options =
                    DockerOptions::from_config(worker, model, egress, worker_id, fleet);
                options.egress.usage_db = usage_db;
                options.egress.budgets = crate::egress::budget::Amounts::from(budgets);
                DockerRuntime::connect(options).await?
            }),
            RuntimeKind::Process => Runtime::Process(ProcessRuntime::new(
                ProcessOptions::from_config(worker, model),
            )),
            RuntimeKind::Sim => Runtime::Sim(SimRuntime::new(worker.sessions_dir.clone())),
        })
    }

    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Docker(_) => RuntimeKind::Docker,
            Runtime::Process(_) => RuntimeKind::Process,
            Runtime::Sim(_) => RuntimeKind::Sim,
        }
    }

    /// Starts the CLI for a session (restoring `spec.restore` first) and initializes it.
    #[tracing::instrument(skip_all, fields(session_id = %spec.session_id))]
    pub async fn start(&self, spec: SessionSpec) -> Result<Session, Error> {
        check_session_id(&spec.session_id)?;
        match self {
            Runtime::Docker(rt) => rt.start(spec).await,
            Runtime::Process(rt) => rt.start(spec).await,
            Runtime::Sim(rt) => rt.start(spec).await,
        }
    }

    /// Serves the docker runtime's egress gateway until `shutdown`; returns at once for
    /// other runtimes (their sessions are not sandboxed).
    pub async fn run_egress(&self, shutdown: tokio_util::sync::CancellationToken) {
        if let Runtime::Docker(rt) = self
            && let Err(err) = rt.egress().run(shutdown).await
        {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "the egress gateway stopped"
            );
        }
    }

    /// Keeps the docker runtime's warm pool filled until `shutdown`, then removes its
    /// containers; returns at once for other runtimes or a pool of size 0.
    pub async fn run_pool(&self, shutdown: tokio_util::sync::CancellationToken) {
        if let Runtime::Docker(rt) = self {
            rt.run_pool(shutdown).await;
        }
    }

    /// Registers the runtime's metrics (the warm pool's, the egress gateway's) with the
    /// worker's registry. A runtime without them registers them at 0, so every worker has
    /// the same names.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        match self {
            Runtime::Docker(rt) => {
                rt.pool_metrics().register(registry);
                rt.egress().register_metrics(registry);
            }
            _ => {
                warm::PoolMetrics::default().register(registry);
                crate::egress::EgressMetrics::default().register(registry, &[]);
            }
        }
    }

    /// Fences a session before this worker starts it as its new owner: whatever an earlier
    /// owner left running for it — docker: its containers, by name and session label,
    /// whoever started them; process: the CLI's process group, found by the pid file in
    /// the session root — is killed and removed, and this returns once it is gone, so the
    /// old CLI cannot carry its turn's side effects on while the new owner runs the turn
    /// again. The data (volume, directory) is kept. Returns how many were removed.
    pub async fn fence(&self, session_id: &SessionId) -> Result<usize, Error> {
        check_session_id(session_id)?;
        match self {
            Runtime::Docker(rt) => rt.fence(session_id).await,
            Runtime::Process(rt) => rt.fence(session_id).await,
            Runtime::Sim(_) => Ok(0),
        }
    }

    /// Removes what dead workers left behind (docker: containers labelled with this
    /// worker's id, an earlier life of it, and this fleet's containers whose worker is not
    /// in `alive`, the workers with a current heartbeat — `None`: unknown, only this
    /// worker's; session volumes are kept for resuming). Returns how many were removed.
    pub async fn cleanup_orphans(&self, alive: Option<&BTreeSet<String>>) -> Result<usize, Error> {
        match self {
            Runtime::Docker(rt) => rt.cleanup_orphans(alive).await,
            Runtime::Process(_) | Runtime::Sim(_) => Ok(0),
        }
    }

    /// Deletes a stopped session's kept data (volume or directory).
    pub async fn remove_data(&self, session_id: &SessionId) -> Result<(), Error> {
        check_session_id(session_id)?;
        match self {
            Runtime::Docker(rt) => rt.remove_volume(session_id).await,
            Runtime::Process(rt) => process::remove_dir(&rt.session_root(session_id)).await,
            Runtime::Sim(rt) => process::remove_dir(&rt.session_root(session_id)).await,
        }
    }
}

/// Where a session's files live.
#[derive(Debug, Clone)]
pub(crate) enum Files {
    /// A directory holding `workspace/` and `claude/` (process and sim).
    Dir(std::path::PathBuf),
    /// A container whose volume is mounted at [`docker::SESSION_ROOT`].
    Container {
        docker: bollard::Docker,
        container: String,
    },
}

/// A session's files. Cheap to clone, usable while the agent runs.
#[derive(Debug, Clone)]
pub struct SessionFiles {
    session: SessionId,
    files: Files,
}

impl SessionFiles {
    fn archive_error(&self) -> impl Fn(archive::Error) -> Error + '_ {
        |source| Error::Archive {
            session: self.session.to_string(),
            source,
        }
    }

    fn io_error(&self) -> impl Fn(std::io::Error) -> Error + '_ {
        |source| Error::Io {
            session: self.session.to_string(),
            source,
        }
    }

    /// A gzip tar of the workspace and the CLI's state (see [`archive`]), written to a
    /// temporary file: nothing of it is held in memory. Refused (see [`Error::too_large`])
    /// when the session's files exceed `limit` bytes (0: no limit).
    pub async fn checkpoint(&self, limit: u64) -> Result<tempfile::NamedTempFile, Error> {
        let out = blocking(tempfile::NamedTempFile::new)
            .await?
            .map_err(self.io_error())?;
        let file = out.reopen().map_err(self.io_error())?;
        let writer = std::io::BufWriter::with_capacity(COPY_BUFFER, file);
        let written = match &self.files {
            Files::Dir(root) => {
                let root = root.clone();
                blocking(move || archive::write_checkpoint(&root, writer, limit)).await?
            }
            Files::Container { docker, container } => {
                let tar = docker::download_to_file(
                    docker,
                    container,
                    docker::SESSION_ROOT,
                    &self.session,
                    limit,
                )
                .await?;
                let tar = match tar {
                    docker::Download::File(tar) => tar,
                    docker::Download::Missing => {
                        return Err(self.io_error()(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the session root is missing in the container",
                        )));
                    }
                    docker::Download::TooLarge(size) => {
                        return Err(self.archive_error()(archive::Error::TooLarge {
                            size,
                            limit,
                        }));
                    }
                };
                blocking(move || {
                    let reader = std::io::BufReader::with_capacity(COPY_BUFFER, tar);
                    archive::session_tar_to_checkpoint(reader, "session", writer)
                })
                .await?
            }
        };
        let writer = written.map_err(self.archive_error())?;
        let file = writer
            .into_inner()
            .map_err(|err| self.io_error()(err.into_error()))?;
        blocking(move || file.sync_data())
            .await?
            .map_err(self.io_error())?;
        Ok(out)
    }

    /// The workspace's regular files with sizes and hashes; diff two with
    /// [`Manifest::changes_since`] to find what a turn changed. Files above `max_hashed`
    /// bytes (0: no limit) are fingerprinted instead of hashed (see [`archive::manifest_dir`]).
    pub async fn manifest(&self, max_hashed: u64) -> Result<Manifest, Error> {
        match &self.files {
            Files::Dir(root) => {
                let dir = root.join(archive::WORKSPACE);
                blocking(move || archive::manifest_dir(&dir, max_hashed))
                    .await?
                    .map_err(self.archive_error())
            }
            Files::Container { docker, container } => {
                let path = format!("{}/{}", docker::SESSION_ROOT, archive::WORKSPACE);
                let tar = match docker::download_to_file(docker, container, &path, &self.session, 0)
                    .await?
                {
                    docker::Download::File(tar) => tar,
                    docker::Download::Missing | docker::Download::TooLarge(_) => {
                        return Ok(Manifest::default());
                    }
                };
                blocking(move || {
                    let reader = std::io::BufReader::with_capacity(COPY_BUFFER, tar);
                    archive::manifest_tar(reader, archive::WORKSPACE, max_hashed)
                })
                .await?
                .map_err(self.archive_error())
            }
        }
    }

    /// Opens files of the workspace (relative paths) for streaming; missing ones are left
    /// out.
    pub async fn export(&self, paths: &[String]) -> Result<Vec<ExportedFile>, Error> {
        let mut out = Vec::new();
        for path in paths {
            let opened = match &self.files {
                Files::Dir(root) => {
                    let dir = root.join(archive::WORKSPACE);
                    let owned = path.clone();
                    blocking(move || archive::open_file(&dir, &owned))
                        .await?
                        .map_err(self.archive_error())?
                }
                Files::Container { docker, container } => {
                    let rel = archive::relative_path(path).map_err(self.archive_error())?;
                    let full = format!(
                        "{}/{}/{}",
                        docker::SESSION_ROOT,
                        archive::WORKSPACE,
                        rel.to_string_lossy()
                    );
                    match docker::download_to_file(docker, container, &full, &self.session, 0)
                        .await?
                    {
                        docker::Download::File(tar) => {
                            blocking(move || archive::single_file_in_tar(tar))
                                .await?
                                .map_err(self.archive_error())?
                        }
                        docker::Download::Missing | docker::Download::TooLarge(_) => None,
                    }
                }
            };
            if let Some((content, size)) = opened {
                out.push(ExportedFile {
                    path: path.clone(),
                    size,
                    content,
                });
            }
        }
        Ok(out)
    }

    /// Writes files (workspace-relative paths) into the workspace, e.g. files attached to a
    /// Mattermost post.
    pub async fn import(&self, files: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        match &self.files {
            Files::Dir(root) => {
                let root = root.clone();
                blocking(move || archive::import_dir(&root, &files))
                    .await?
                    .map_err(self.archive_error())
            }
            Files::Container { docker, container } => {
                let tar = blocking(move || {
                    archive::files_to_owned_tar(&files, docker::AGENT_UID, docker::AGENT_UID)
                })
                .await?
                .map_err(self.archive_error())?;
                docker::upload(docker, container, &tar, &self.session).await
            }
        }
    }

    /// The session root on the host, for the process and sim runtimes.
    pub fn host_root(&self) -> Option<&std::path::Path> {
        match &self.files {
            Files::Dir(root) => Some(root),
            Files::Container { .. } => None,
        }
    }

    /// The container, for the docker runtime.
    pub fn container(&self) -> Option<&str> {
        match &self.files {
            Files::Dir(_) => None,
            Files::Container { container, .. } => Some(container),
        }
    }
}

/// The buffer size for streaming archives through files.
const COPY_BUFFER: usize = 256 * 1024;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)
}

/// How the CLI is ended.
pub(crate) enum Lifecycle {
    Docker(docker::ContainerLife),
    Process(process::ProcessLife),
    Sim(sim::SimLife),
}

/// A running session: its agent, its files, its lifecycle.
///
/// End it with [`Session::stop`], [`Session::kill`] or [`Session::remove`]: dropping it
/// only drops the pipes (the process runtime's child is killed, a docker container's CLI
/// exits on the closed stdin and the stopped container stays until
/// [`Runtime::cleanup_orphans`] or the session's next start).
pub struct Session {
    id: SessionId,
    agent: Agent,
    /// The docker runtime's way out for this session; `None`: the process and sim
    /// runtimes (unsandboxed).
    egress: Option<EgressLink>,
    files: SessionFiles,
    life: Lifecycle,
}

/// What a session has for its actor next.
#[derive(Debug)]
pub enum FromSession {
    /// An event of the agent; `None` once the CLI exited and every event was taken.
    Agent(Option<crate::agent::Event>),
    /// A notice of the session's egress gateway.
    Egress(crate::egress::Notice),
}

/// A docker session's egress gateway and the notices it sends about the session.
pub(crate) struct EgressLink {
    egress: crate::egress::Egress,
    notices: tokio::sync::mpsc::Receiver<crate::egress::Notice>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// How long the CLI gets to finish after stdin is closed before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

impl Session {
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The driver: events and, through [`Agent::handle`], prompts and answers.
    pub fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }

    /// The next event of the agent (only if `agent`: `None` once the CLI exited), or the
    /// next notice of the session's egress gateway (never, for a session without one).
    pub async fn next_input(&mut self, agent: bool) -> FromSession {
        let notices = self.egress.as_mut().map(|link| &mut link.notices);
        let notice = async move {
            match notices {
                Some(notices) => match notices.recv().await {
                    Some(notice) => notice,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            notice = notice => FromSession::Egress(notice),
            event = self.agent.next_event(), if agent => FromSession::Agent(event),
        }
    }

    /// The session's egress gateway (docker runtime only).
    pub fn egress(&self) -> Option<&crate::egress::Egress> {
        self.egress.as_ref().map(|link| &link.egress)
    }

    /// A handle for writing to the CLI from other tasks.
    pub fn agent_handle(&self) -> AgentHandle {
        self.agent.handle()
    }

    /// File access usable from other tasks.
    pub fn files(&self) -> SessionFiles {
        self.files.clone()
    }

    /// See [`SessionFiles::checkpoint`].
    pub async fn checkpoint(&self, limit: u64) -> Result<tempfile::NamedTempFile, Error> {
        self.files.checkpoint(limit).await
    }

    /// Ends the CLI (stdin closed, then killed after [`STOP_GRACE`]) and keeps the session's
    /// data (volume or directory) for a later start with `restore` or `resume`.
    pub async fn stop(self) -> Result<(), Error> {
        let Session {
            id, agent, life, ..
        } = self;
        agent.shutdown(STOP_GRACE).await;
        match life {
            Lifecycle::Docker(life) => life.stop(&id).await,
            Lifecycle::Process(life) => life.stop().await,
            Lifecycle::Sim(life) => life.stop().await,
        }
    }

    /// Kills the CLI at once, keeping the data.
    pub async fn kill(self) -> Result<(), Error> {
        let Session {
            id, agent, life, ..
        } = self;
        drop(agent);
        match life {
            Lifecycle::Docker(life) => life.kill(&id).await,
            Lifecycle::Process(life) => life.kill().await,
            Lifecycle::Sim(life) => life.stop().await,
        }
    }

    /// Stops the session and deletes its data.
    pub async fn remove(self) -> Result<(), Error> {
        let files = self.files.clone();
        let id = self.id.clone();
        let volume = match &self.life {
            Lifecycle::Docker(life) => Some(life.clone_for_removal()),
            _ => None,
        };
        self.kill().await?;
        match (volume, &files.files) {
            (Some(life), _) => life.remove_volume(&id).await,
            (None, Files::Dir(root)) => process::remove_dir(root).await,
            (None, Files::Container { .. }) => Ok(()),
        }
    }
}
