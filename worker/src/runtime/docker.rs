//! The `docker` runtime: one hardened container per session, its state in a per-session
//! volume mounted at [`SESSION_ROOT`].
//!
//! The container runs the runner image (`deploy/runner/`): ENTRYPOINT the CLI, user
//! 1000:1000, working directory `/session/workspace`, `CLAUDE_CONFIG_DIR=/session/claude`.
//! Hardening: all capabilities dropped, no-new-privileges, read-only root filesystem with
//! tmpfs `/tmp` and `$HOME`, memory (no swap), CPU and pids limits, and `ccfleet.*` labels
//! naming the worker and session.
//!
//! Network: the session network (`worker.network`), which the worker creates *internal*
//! (no route out of it). The only way out is the worker's egress gateway
//! ([`crate::egress`]), listening on that network; the container's environment points
//! `ANTHROPIC_BASE_URL` and `HTTP(S)_PROXY` at it with a per-session token. The model
//! credential never enters the container: this runtime does not even hold it, the
//! gateway adds it to model requests on their way out.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder,
    DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use common::config::{EgressConfig, ModelConfig, Secret, WorkerConfig};
use futures::{Stream, StreamExt, TryStreamExt};
use proto::ids::SessionId;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::warm::{Miss, PoolMetrics, WarmPool};
use super::{
    Error, Files, Lifecycle, ModelEnv, STOP_GRACE, Session, SessionFiles, SessionSpec, archive,
    blocking, cli_args, cli_env,
};
use crate::agent::{Agent, AgentIo, AgentOptions, PermissionMode};
use crate::egress::{Egress, EgressOptions};

/// Where the session volume is mounted in the container.
pub const SESSION_ROOT: &str = "/session";
/// Label: the worker that owns the container.
pub const LABEL_WORKER: &str = "ccfleet.worker";
/// Label: the session a container or volume belongs to.
pub const LABEL_SESSION: &str = "ccfleet.session";
const LABEL_MANAGED: &str = "ccfleet.managed";
/// Label: the fleet (its `nats.prefix`) whose worker started the container, so clean-up
/// judges only containers of workers it can see the heartbeats of.
pub const LABEL_FLEET: &str = "ccfleet.fleet";
/// Label: a warm-pool container or volume (its session label is the pool's own id).
pub const LABEL_POOL: &str = "ccfleet.pool";
/// Session ids of warm containers start with this.
const POOL_PREFIX: &str = "pool-";
/// The runner image's user.
pub(crate) const AGENT_UID: u64 = 1000;
/// The runner image's CLI.
const CLI: &str = "/usr/local/bin/claude";

/// Settings of the docker runtime. `Debug` hides the API key.
///
/// `model.api_key` is left empty: containers get only their session token, and the
/// egress gateway (`egress`) holds the credential.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    pub image: String,
    /// A named network (created internal when missing; an existing one must be
    /// internal), or a built-in one (`bridge`, for tests of the runtime alone: not
    /// isolated, but model requests still go through the gateway).
    pub network: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_limit: i64,
    /// Labels containers so [`DockerRuntime::cleanup_orphans`] finds this worker's own.
    pub worker_id: String,
    /// Labels containers with the fleet (`nats.prefix`); see [`LABEL_FLEET`].
    pub fleet: String,
    pub model: ModelEnv,
    pub agent: AgentOptions,
    /// Size of the `/tmp` tmpfs.
    pub tmp_size_mb: u64,
    /// Warm containers kept ready (see [`super::warm`]); 0: none.
    pub warm_pool: usize,
    /// The permission mode warm CLIs start with (new sessions' usual mode).
    pub pool_permission_mode: PermissionMode,
    /// `egress.listen`: empty: the session network's gateway address, any port.
    pub egress_listen: String,
    /// `egress.advertise`: empty: the bound address (or, bound to all addresses, this
    /// worker container's own address on the session network).
    pub egress_advertise: String,
    pub egress: EgressOptions,
}

impl DockerOptions {
    pub fn from_config(
        worker: &WorkerConfig,
        model: &ModelConfig,
        egress: &EgressConfig,
        worker_id: &str,
        fleet: &str,
    ) -> Self {
        let mut model_env: ModelEnv = model.into();
        model_env.api_key = Secret::default();
        Self {
            egress_listen: egress.listen.clone(),
            egress_advertise: egress.advertise.clone(),
            egress: EgressOptions::from_config(egress, model),
            fleet: fleet.to_owned(),
            image: worker.image.clone(),
            network: worker.network.clone(),
            memory_mb: worker.memory_mb,
            cpus: worker.cpus,
            pids_limit: worker.pids_limit,
            worker_id: worker_id.to_owned(),
            model: model_env,
            agent: AgentOptions::default(),
            tmp_size_mb: 512,
            warm_pool: worker.warm_pool,
            pool_permission_mode: PermissionMode::parse(&worker.permission_mode)
                .unwrap_or_default(),
        }
    }
}

/// Starts sessions as containers.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    options: Arc<DockerOptions>,
    pool: Arc<WarmPool>,
    egress: Egress,
}

/// The names of a session's container and volume.
pub fn container_name(id: &SessionId) -> String {
    format!("ccfleet-{id}")
}

pub fn volume_name(id: &SessionId) -> String {
    format!("ccfleet-{id}")
}

fn docker_error(op: &'static str, session: &SessionId) -> impl Fn(bollard::errors::Error) -> Error {
    let session = session.to_string();
    move |source| Error::Docker {
        op,
        session: session.clone(),
        source,
    }
}

/// Networks Docker always has, and the forms that name no network of their own.
fn is_builtin_network(name: &str) -> bool {
    matches!(name, "" | "none" | "bridge" | "host" | "default") || name.starts_with("container:")
}

/// Creates the named session network (an internal bridge, labelled with the fleet) when
/// it does not exist, so a deployment only names it (`worker.network`); an operator may
/// make it first with other options, and it is then used as it is — if it is internal.
/// `hide_host`: the host gets no address on it (`inhibit_ipv4`), so containers on it reach
/// nothing of the host either; only for a worker that is itself a container on it (the
/// egress gateway then listens on the worker's own address there). Two workers starting at once
/// may both create it (the engine allows equal names): each creator then removes all but
/// the oldest (see [`created_key`]), so one remains, the one bound to first.
async fn ensure_network(
    docker: &Docker,
    name: &str,
    fleet: &str,
    hide_host: bool,
) -> Result<(), Error> {
    if is_builtin_network(name) {
        return Ok(());
    }
    let failed = |op: &'static str| {
        move |source| Error::Docker {
            op,
            session: format!("network {name}"),
            source,
        }
    };
    match docker.inspect_network(name, None).await {
        Ok(network) if network.internal == Some(true) => return Ok(()),
        Ok(_) => {
            return Err(Error::NetworkNotInternal {
                network: name.to_owned(),
            });
        }
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(failed("inspect_network")(err)),
    }
    let created = docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            // No route out: the egress gateway is the only way out.
            internal: Some(true),
            options: hide_host.then(|| {
                HashMap::from([(
                    "com.docker.network.bridge.inhibit_ipv4".to_owned(),
                    "true".to_owned(),
                )])
            }),
            labels: Some(HashMap::from([(LABEL_FLEET.to_owned(), fleet.to_owned())])),
            ..Default::default()
        })
        .await
        .map_err(failed("create_network"))?;
    tracing::info!(network = name, id = %created.id, "created the session network");
    // Workers starting together may each have made one (the engine allows equal names).
    // Each creator keeps only the oldest: the last creator sees all of them, so they
    // converge on the first one, which an earlier creator may already listen on. A network already in use is not
    // removed (the engine refuses), nor waited for.
    for _ in 0..10 {
        let filters = HashMap::from([("name".to_owned(), vec![name.to_owned()])]);
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut same: Vec<(String, String)> = docker
            .list_networks(Some(options))
            .await
            .map_err(failed("list_networks"))?
            .into_iter()
            // The filter matches parts of names.
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((created_key(n.created.as_deref()), n.id?)))
            .collect();
        if same.len() <= 1 {
            break;
        }
        same.sort();
        for (_, extra) in &same[1..] {
            let _ = docker.remove_network(extra).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A sort key for a network's creation time (RFC 3339 as Docker writes it, its fraction
/// of a second without trailing zeros): the fraction padded to nine digits, so earlier
/// sorts first. The oldest network of a name is the one kept: a worker that created one
/// and already listens on its gateway address never loses it to a later creator (keeping
/// the smallest id instead removed it under a worker that had bound to it).
fn created_key(created: Option<&str>) -> String {
    let Some(created) = created else {
        return "~".to_owned();
    };
    let (seconds, rest) = created
        .split_once('.')
        .unwrap_or((created.trim_end_matches('Z'), "Z"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let zone = &rest[digits.len()..];
    format!("{seconds}.{digits:0<9}{zone}")
}

/// Binds the egress gateway where the session network's containers reach it: on the
/// network's gateway address (the host's side of its bridge) unless `egress.listen` says
/// otherwise. Bound to all addresses without `egress.advertise` (a worker in a container on
/// the session network), containers are told this container's own address there.
async fn bind_egress(docker: &Docker, options: &DockerOptions) -> Result<Egress, Error> {
    let network = &options.network;
    let failed = |op: &'static str| {
        move |source| Error::Docker {
            op,
            session: format!("network {network}"),
            source,
        }
    };
    let listen: std::net::SocketAddr = if options.egress_listen.is_empty() {
        // Workers creating the network together may briefly see two of that name.
        let mut tries = 0;
        let info = loop {
            match docker.inspect_network(network, None).await {
                Ok(info) => break info,
                Err(_) if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(err) => return Err(failed("inspect_network")(err)),
            }
        };
        let gateway = info
            .ipam
            .and_then(|ipam| ipam.config)
            .and_then(|configs| {
                // Docker leaves the gateway out for its default `bridge`: it is then the
                // subnet's first address.
                configs.into_iter().find_map(|c| {
                    c.gateway
                        .and_then(|g| g.parse::<std::net::Ipv4Addr>().ok())
                        .or_else(|| {
                            let subnet = c.subnet?;
                            let base: std::net::Ipv4Addr =
                                subnet.split_once('/')?.0.parse().ok()?;
                            Some(std::net::Ipv4Addr::from(u32::from(base) + 1))
                        })
                })
            })
            .ok_or_else(|| Error::EgressAddress {
                network: network.clone(),
                reason: "the network has no IPv4 gateway address; set egress.listen".into(),
            })?;
        (gateway, 0).into()
    } else {
        options
            .egress_listen
            .parse()
            .map_err(|_| Error::EgressAddress {
                network: network.clone(),
                reason: format!("egress.listen {:?} is not ip:port", options.egress_listen),
            })?
    };
    let advertise = if !options.egress_advertise.is_empty() {
        Some(options.egress_advertise.clone())
    } else if listen.ip().is_unspecified() {
        let me = super::hostname();
        let info = docker
            .inspect_container(&me, None)
            .await
            .map_err(failed("inspect_container"))?;
        let ip = info
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|n| n.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| Error::EgressAddress {
                network: network.clone(),
                reason: format!(
                    "egress.listen is {listen} but this worker (container {me}) is not on the session network; attach it or set egress.advertise"
                ),
            })?;
        Some(format!("{ip}:{}", listen.port()))
    } else {
        None
    };
    Egress::bind(listen, advertise, options.egress.clone())
        .await
        .map_err(|source| Error::Egress {
            network: network.clone(),
            source,
        })
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the local daemon and checks that the runner image exists.
    pub async fn connect(options: DockerOptions) -> Result<Self, Error> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(Error::DockerUnavailable)?
            .negotiate_version()
            .await
            .map_err(Error::DockerUnavailable)?;
        match docker.inspect_image(&options.image).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {
                return Err(Error::ImageMissing {
                    image: options.image.clone(),
                });
            }
            Err(err) => return Err(Error::DockerUnavailable(err)),
        }
        ensure_network(
            &docker,
            &options.network,
            &options.fleet,
            !options.egress_listen.is_empty(),
        )
        .await?;
        let egress = bind_egress(&docker, &options).await?;
        Ok(Self {
            pool: Arc::new(WarmPool::new(options.warm_pool)),
            docker,
            options: Arc::new(options),
            egress,
        })
    }

    /// The egress gateway of this runtime's sessions.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// The warm pool's hits, misses and fill state.
    pub fn pool_metrics(&self) -> &PoolMetrics {
        &self.pool.metrics
    }

    /// Warm containers ready now.
    pub fn pool_ready(&self) -> usize {
        self.pool.len()
    }

    /// Keeps the warm pool filled until `shutdown`, then removes its containers. Returns at
    /// once when the pool is off.
    pub async fn run_pool(&self, shutdown: CancellationToken) {
        let fill = || async {
            let id = SessionId::new(format!(
                "{POOL_PREFIX}{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ));
            let mut spec = SessionSpec::new(id);
            spec.permission_mode = self.options.pool_permission_mode;
            self.start_cold(spec).await
        };
        let discard = |session: Session| async move {
            let id = session.id().clone();
            if let Err(err) = session.remove().await {
                tracing::warn!(error = &err as &dyn std::error::Error, session_id = %id, "removing a warm container");
            }
        };
        self.pool.keep_filled(shutdown, fill, discard).await;
    }

    /// The Docker client, e.g. for inspecting a session's container.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn labels(&self, id: &SessionId) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_WORKER.to_owned(), self.options.worker_id.clone()),
            (LABEL_SESSION.to_owned(), id.to_string()),
            (LABEL_FLEET.to_owned(), self.options.fleet.clone()),
        ]);
        if id.as_str().starts_with(POOL_PREFIX) {
            labels.insert(LABEL_POOL.to_owned(), "true".to_owned());
        }
        labels
    }

    /// `token`: the session's egress token, the only credential the container gets.
    fn container_body(&self, spec: &SessionSpec, volume: &str, token: &str) -> ContainerCreateBody {
        let o = &self.options;
        let config_dir = format!("{SESSION_ROOT}/{}", archive::CLAUDE_STATE);
        let mut env = cli_env(&o.model, &config_dir);
        env.extend(self.egress.container_env(token));
        let mut env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push("HOME=/home/agent".to_owned());
        let memory = (o.memory_mb * 1024 * 1024) as i64;
        ContainerCreateBody {
            image: Some(o.image.clone()),
            entrypoint: Some(vec![CLI.to_owned()]),
            cmd: Some(cli_args(spec, &o.model)),
            env: Some(env),
            user: Some(format!("{AGENT_UID}:{AGENT_UID}")),
            working_dir: Some(format!("{SESSION_ROOT}/{}", archive::WORKSPACE)),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            // Closing our attached stdin closes the CLI's: it then exits after its turn.
            stdin_once: Some(true),
            tty: Some(false),
            labels: Some(self.labels(&spec.session_id)),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some(volume.to_owned()),
                    target: Some(SESSION_ROOT.to_owned()),
                    ..Default::default()
                }]),
                tmpfs: Some(HashMap::from([
                    (
                        "/tmp".to_owned(),
                        format!("rw,nosuid,nodev,size={}m", o.tmp_size_mb),
                    ),
                    (
                        "/home/agent".to_owned(),
                        format!(
                            "rw,nosuid,nodev,size=64m,uid={AGENT_UID},gid={AGENT_UID},mode=0700"
                        ),
                    ),
                ])),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((o.cpus * 1e9) as i64),
                pids_limit: Some(o.pids_limit),
                network_mode: Some(o.network.clone()),
                // A minimal init as PID 1 reaps the shells the Bash tool leaves behind.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn ensure_volume(&self, id: &SessionId, fresh: bool) -> Result<String, Error> {
        let name = volume_name(id);
        if fresh {
            self.remove_volume(id).await?;
        }
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(self.labels(id)),
                ..Default::default()
            })
            .await
            .map_err(docker_error("create_volume", id))?;
        Ok(name)
    }

    async fn remove_container(&self, name: &str, id: &SessionId) -> Result<(), Error> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(docker_error("remove_container", id)(err)),
        }
    }

    pub(crate) async fn remove_volume(&self, id: &SessionId) -> Result<(), Error> {
        self.remove_container(&container_name(id), id).await?;
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_volume(&volume_name(id), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(docker_error("remove_volume", id)(err)),
        }
    }

    /// Starts a session: from the warm pool when it can, else cold.
    pub(crate) async fn start(&self, spec: SessionSpec) -> Result<Session, Error> {
        let mut session = self.start_container(spec).await?;
        // Subscribed once the session has its final id (a warm container is renamed).
        session.egress = Some(super::EgressLink {
            notices: self.egress.subscribe(&session.id),
            egress: self.egress.clone(),
        });
        Ok(session)
    }

    async fn start_container(&self, spec: SessionSpec) -> Result<Session, Error> {
        if self.pool.enabled() {
            let eligible = if spec.resume.is_some() || spec.restore.is_some() {
                Err(Miss::Resume)
            } else if spec
                .model
                .as_ref()
                .is_some_and(|m| *m != self.options.model.model)
            {
                Err(Miss::Model)
            } else {
                Ok(())
            };
            match eligible {
                Ok(()) => {
                    if let Some(session) = self.take_warm(&spec).await {
                        self.pool.metrics.hits.inc();
                        return Ok(session);
                    }
                    self.pool.metrics.miss(Miss::Empty);
                }
                Err(reason) => self.pool.metrics.miss(reason),
            }
        }
        self.start_cold(spec).await
    }

    /// A ready warm session, renamed and switched to `spec`; `None` when none is usable.
    async fn take_warm(&self, spec: &SessionSpec) -> Option<Session> {
        while let Some(session) = self.pool.take() {
            let pool_id = session.id().clone();
            match self.adopt(session, spec).await {
                Ok(session) => {
                    tracing::info!(session_id = %spec.session_id, warm = %pool_id, "session started from the warm pool");
                    return Some(session);
                }
                Err((err, session)) => {
                    tracing::warn!(error = &err as &dyn std::error::Error, warm = %pool_id, "a warm container was unusable; discarding it");
                    if let Some(session) = session
                        && let Err(err) = session.remove().await
                    {
                        tracing::warn!(
                            error = &err as &dyn std::error::Error,
                            "removing an unusable warm container"
                        );
                    }
                    let _ = self.remove_volume(&pool_id).await;
                }
            }
        }
        None
    }

    /// Makes a warm session `spec`'s: checks its container still runs, renames it, switches
    /// the permission mode. On failure the session is handed back for removal.
    async fn adopt(
        &self,
        mut session: Session,
        spec: &SessionSpec,
    ) -> Result<Session, (Error, Option<Session>)> {
        let id = &spec.session_id;
        let pool_id = session.id().clone();
        let pool_name = container_name(&pool_id);
        let (running, container) = match self.docker.inspect_container(&pool_name, None).await {
            Ok(info) => (
                info.state.and_then(|s| s.running).unwrap_or(false),
                info.id.unwrap_or_else(|| pool_name.clone()),
            ),
            Err(err) => {
                return Err((
                    docker_error("inspect_container", &pool_id)(err),
                    Some(session),
                ));
            }
        };
        if !running {
            return Err((
                Error::Io {
                    session: pool_id.to_string(),
                    source: std::io::Error::other("the warm container is not running"),
                },
                Some(session),
            ));
        }
        let name = container_name(id);
        // A container of an earlier run of this session (its volume is kept).
        if let Err(err) = self.remove_container(&name, id).await {
            return Err((err, Some(session)));
        }
        let rename = RenameContainerOptionsBuilder::default().name(&name).build();
        if let Err(err) = self.docker.rename_container(&pool_name, rename).await {
            return Err((docker_error("rename_container", id)(err), Some(session)));
        }
        self.egress.rename(&pool_id, id);
        session.id = id.clone();
        // By id, as a cold start (see `start_cold`).
        session.files = SessionFiles {
            session: id.clone(),
            files: Files::Container {
                docker: self.docker.clone(),
                container: container.clone(),
            },
        };
        session.life = Lifecycle::Docker(ContainerLife {
            docker: self.docker.clone(),
            container,
            runtime: self.clone(),
            pool_volume: Some(volume_name(&pool_id)),
        });
        if spec.permission_mode != self.options.pool_permission_mode
            && let Err(source) = session
                .agent_handle()
                .set_permission_mode(spec.permission_mode)
                .await
        {
            return Err((
                Error::Initialize {
                    session: id.to_string(),
                    source,
                },
                Some(session),
            ));
        }
        Ok(session)
    }

    async fn start_cold(&self, spec: SessionSpec) -> Result<Session, Error> {
        let id = spec.session_id.clone();
        let name = container_name(&id);
        // A container of an earlier run of this session (its volume is kept).
        self.remove_container(&name, &id).await?;
        let volume = self.ensure_volume(&id, spec.restore.is_some()).await?;
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let token = self.egress.issue(&id);
        let created = self
            .docker
            .create_container(Some(options), self.container_body(&spec, &volume, &token))
            .await
            .map_err(docker_error("create_container", &id));
        drop(token);
        // Addressed by its id from here on, never by its name: a successor that fenced this
        // session starts a container of the same name, which a stale handle must not touch.
        let started = match created {
            Ok(created) => self.attach_and_start(&spec, &created.id).await,
            Err(err) => Err(err),
        };
        match started {
            Ok(session) => Ok(session),
            Err(err) => {
                self.egress.revoke(&id);
                if let Err(cleanup) = self.remove_container(&name, &id).await {
                    tracing::warn!(
                        error = &cleanup as &dyn std::error::Error,
                        "removing a container that failed to start"
                    );
                }
                Err(err)
            }
        }
    }

    async fn attach_and_start(&self, spec: &SessionSpec, name: &str) -> Result<Session, Error> {
        let id = &spec.session_id;
        if let Some(checkpoint) = spec.restore.clone() {
            let io = |source| Error::Io {
                session: id.to_string(),
                source,
            };
            // Converted into a temporary file and streamed up: never in memory.
            let tar = blocking(tempfile::tempfile).await?.map_err(io)?;
            let writer = std::io::BufWriter::new(tar.try_clone().map_err(io)?);
            blocking(move || {
                archive::write_owned_tar(
                    checkpoint.path(),
                    AGENT_UID,
                    AGENT_UID,
                    std::path::Path::new(SESSION_ROOT),
                    writer,
                )
                .and_then(|writer| writer.into_inner().map_err(|err| err.into_error().into()))
            })
            .await?
            .map_err(|source| Error::Restore {
                session: id.to_string(),
                source,
            })?;
            upload_file(&self.docker, name, tar, id).await?;
        }
        // Attach before starting, so no output is lost.
        let attach = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = self
            .docker
            .attach_container(name, Some(attach))
            .await
            .map_err(docker_error("attach_container", id))?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(docker_error("start_container", id))?;
        let stdin = attached.input;
        let agent = Agent::new(
            AgentIo {
                stdin: Box::pin(AttachedStdin(stdin)),
                stdout: Box::pin(tokio_util::io::StreamReader::new(stdout_only(
                    attached.output,
                    id.to_string(),
                ))),
            },
            self.options.agent.clone(),
        );
        if let Err(source) = agent.handle().initialize().await {
            return Err(Error::Initialize {
                session: id.to_string(),
                source,
            });
        }
        Ok(Session {
            id: id.clone(),
            agent,
            egress: None,
            files: SessionFiles {
                session: id.clone(),
                files: Files::Container {
                    docker: self.docker.clone(),
                    container: name.to_owned(),
                },
            },
            life: Lifecycle::Docker(ContainerLife {
                docker: self.docker.clone(),
                container: name.to_owned(),
                runtime: self.clone(),
                pool_volume: None,
            }),
        })
    }

    /// Fences a session: removes (killing) every container of it, whoever started it —
    /// found by its name and by its session label — and returns once Docker lists none.
    /// Returns how many were removed. Call it before starting a session this worker does
    /// not run yet (a new owner), so an earlier owner's CLI cannot go on with its turn.
    pub async fn fence(&self, id: &SessionId) -> Result<usize, Error> {
        let mut removed = 0;
        for _ in 0..FENCE_ROUNDS {
            let mut found: Vec<String> = self
                .containers(&[format!("{LABEL_SESSION}={id}")])
                .await?
                .into_iter()
                .filter_map(|c| c.id)
                .collect();
            let name = container_name(id);
            match self.docker.inspect_container(&name, None).await {
                Ok(info) => found.extend(info.id),
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(docker_error("inspect_container", id)(err)),
            }
            found.sort();
            found.dedup();
            if found.is_empty() {
                return Ok(removed);
            }
            for container in found {
                tracing::info!(container = %container, session_id = %id, "fencing an earlier owner's container");
                // Force: SIGKILL, then removal; Docker answers once it is gone.
                self.remove_container(&container, id).await?;
                removed += 1;
            }
        }
        Err(Error::Io {
            session: id.to_string(),
            source: std::io::Error::other("a container of the session keeps coming back"),
        })
    }

    async fn containers(
        &self,
        labels: &[String],
    ) -> Result<Vec<bollard::models::ContainerSummary>, Error> {
        let filters = HashMap::from([("label".to_owned(), labels.to_vec())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error("list_containers", &SessionId::new("orphans")))
    }

    /// Removes what dead workers left (volumes are kept): every container labelled with
    /// this worker's id (an earlier life: the default id is stable across restarts), and
    /// every container of this fleet whose worker is not in `alive` (the workers whose
    /// heartbeat is current; a dead worker's lapses with its leases; `None`: unknown, so
    /// none of them).
    pub async fn cleanup_orphans(&self, alive: Option<&BTreeSet<String>>) -> Result<usize, Error> {
        let orphan = SessionId::new("orphans");
        let me = &self.options.worker_id;
        let mut containers = self.containers(&[format!("{LABEL_WORKER}={me}")]).await?;
        containers.extend(
            self.containers(&[format!("{LABEL_FLEET}={}", self.options.fleet)])
                .await?
                .into_iter()
                .filter(|c| {
                    c.labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_WORKER))
                        .is_some_and(|w| w != me && alive.is_some_and(|a| !a.contains(w)))
                }),
        );
        let mut removed = 0;
        for container in containers {
            let Some(container_id) = container.id else {
                continue;
            };
            let labels = container.labels.unwrap_or_default();
            let session = labels
                .get(LABEL_SESSION)
                .map(|s| SessionId::new(s.as_str()))
                .unwrap_or_else(|| orphan.clone());
            let worker = labels.get(LABEL_WORKER).cloned().unwrap_or_default();
            tracing::info!(container = %container_id, session_id = %session, %worker, "removing orphaned session container");
            self.remove_container(&container_id, &session).await?;
            removed += 1;
            // A dead worker's untaken warm container: no session's data is in its volume.
            if labels.contains_key(LABEL_POOL) && worker != *me {
                let options = RemoveVolumeOptionsBuilder::default().force(true).build();
                match self
                    .docker
                    .remove_volume(&volume_name(&session), Some(options))
                    .await
                {
                    Ok(()) => {}
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => return Err(docker_error("remove_volume", &session)(err)),
                }
            }
        }
        // Warm containers' volumes: no session's data lives in an untaken one, and a taken
        // one's container was removed above.
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_WORKER}={me}"), format!("{LABEL_POOL}=true")],
        )]);
        let options = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(docker_error("list_volumes", &orphan))?;
        for volume in volumes.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::default().force(true).build();
            match self.docker.remove_volume(&volume.name, Some(options)).await {
                Ok(()) => removed += 1,
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(docker_error("remove_volume", &orphan)(err)),
            }
        }
        Ok(removed)
    }
}

/// Rounds of "list, remove" a fence makes before it gives up.
const FENCE_ROUNDS: usize = 5;

/// Keeps the CLI's stdout; logs its stderr.
fn stdout_only(
    output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    session: String,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    output
        .map_err(std::io::Error::other)
        .try_filter_map(move |chunk| {
            let out = match chunk {
                LogOutput::StdOut { message } | LogOutput::Console { message } => Some(message),
                LogOutput::StdErr { message } => {
                    tracing::debug!(session_id = %session, line = %String::from_utf8_lossy(&message).trim_end(), "CLI stderr");
                    None
                }
                LogOutput::StdIn { .. } => None,
            };
            futures::future::ready(Ok(out))
        })
}

/// The attached stdin as a plain `AsyncWrite`.
struct AttachedStdin(Pin<Box<dyn AsyncWrite + Send>>);

impl AsyncWrite for AttachedStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

/// Uploads the tar in `tar` (read from its start) into the session root of a container,
/// streamed.
pub(crate) async fn upload_file(
    docker: &Docker,
    container: &str,
    mut tar: std::fs::File,
    session: &SessionId,
) -> Result<(), Error> {
    use std::io::{Seek, SeekFrom};
    tar.seek(SeekFrom::Start(0)).map_err(|source| Error::Io {
        session: session.to_string(),
        source,
    })?;
    let body =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(tar), 256 * 1024);
    let options = UploadToContainerOptionsBuilder::default()
        .path(SESSION_ROOT)
        .build();
    docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(body))
        .await
        .map_err(docker_error("upload_to_container", session))
}

/// What [`download_to_file`] got.
pub(crate) enum Download {
    /// The plain tar, in an unnamed temporary file positioned at its start.
    File(std::fs::File),
    Missing,
    /// Over the limit: the size of the whole tar.
    TooLarge(u64),
}

/// Downloads `path` from the container as a plain tar into a temporary file, streamed.
/// With a `limit` (bytes, 0: none), a tar growing past it is not kept: the rest is only
/// counted, for the size.
pub(crate) async fn download_to_file(
    docker: &Docker,
    container: &str,
    path: &str,
    session: &SessionId,
    limit: u64,
) -> Result<Download, Error> {
    use std::io::{Seek, SeekFrom};
    use tokio::io::AsyncWriteExt;
    let io = |source| Error::Io {
        session: session.to_string(),
        source,
    };
    let file = blocking(tempfile::tempfile).await?.map_err(io)?;
    let mut out = tokio::io::BufWriter::with_capacity(
        256 * 1024,
        tokio::fs::File::from_std(file.try_clone().map_err(io)?),
    );
    let options = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len() as u64;
                if limit == 0 || size <= limit {
                    out.write_all(&chunk).await.map_err(io)?;
                }
            }
            Err(err) if is_not_found(&err) => return Ok(Download::Missing),
            Err(err) => return Err(docker_error("download_from_container", session)(err)),
        }
    }
    if limit > 0 && size > limit {
        return Ok(Download::TooLarge(size));
    }
    out.flush().await.map_err(io)?;
    let mut file = file;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(Download::File(file))
}

/// Uploads a tar into the session root of a (running) container.
pub(crate) async fn upload(
    docker: &Docker,
    container: &str,
    tar: &[u8],
    session: &SessionId,
) -> Result<(), Error> {
    let options = UploadToContainerOptionsBuilder::default()
        .path(SESSION_ROOT)
        .build();
    docker
        .upload_to_container(
            container,
            Some(options),
            bollard::body_full(tar.to_vec().into()),
        )
        .await
        .map_err(docker_error("upload_to_container", session))
}

/// Ends a session's container.
pub(crate) struct ContainerLife {
    docker: Docker,
    container: String,
    runtime: DockerRuntime,
    /// A session taken from the warm pool: its volume, removed with the container.
    pool_volume: Option<String>,
}

impl ContainerLife {
    /// stdin is closed: give the CLI time to exit, stop the container, remove it (the
    /// volume stays).
    pub(crate) async fn stop(self, id: &SessionId) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE.as_secs() as i32)
            .build();
        match self
            .docker
            .stop_container(&self.container, Some(options))
            .await
        {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {}
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(err) => return Err(docker_error("stop_container", id)(err)),
        }
        self.runtime.egress.revoke(id);
        self.runtime.remove_container(&self.container, id).await?;
        self.remove_pool_volume(id).await
    }

    async fn remove_pool_volume(&self, id: &SessionId) -> Result<(), Error> {
        let Some(volume) = &self.pool_volume else {
            return Ok(());
        };
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self.docker.remove_volume(volume, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(docker_error("remove_volume", id)(err)),
        }
    }

    pub(crate) async fn kill(self, id: &SessionId) -> Result<(), Error> {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match self
            .docker
            .kill_container(&self.container, Some(options))
            .await
        {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(err) => return Err(docker_error("kill_container", id)(err)),
        }
        self.runtime.egress.revoke(id);
        self.runtime.remove_container(&self.container, id).await?;
        self.remove_pool_volume(id).await
    }

    pub(crate) fn clone_for_removal(&self) -> DockerRuntime {
        self.runtime.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::created_key;

    #[test]
    fn the_older_network_sorts_first_whatever_digits_docker_trims() {
        // Go's RFC 3339 drops trailing zeros: .6 is .600000000, later than .59999.
        let a = created_key(Some("2026-12-03T14:49:00.59999Z"));
        let b = created_key(Some("2026-12-03T14:49:00.6Z"));
        let c = created_key(Some("2026-12-03T14:49:00.600000001Z"));
        let d = created_key(Some("2026-12-03T14:49:01Z"));
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert!(d < created_key(None), "an unknown time is kept last");
    }
}
