//! A complete fleet in one process: the Mattermost simulator (seeded like a first-time
//! admin would), the fake model API, a gateway and N workers, wired to the real NATS,
//! PostgreSQL and S3 named in the configuration. The end-to-end tests' and the benchmarks'
//! harness; the local main job (`deploy/local/fleet`) runs the product's binaries instead.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::config::{Config, RuntimeKind, Secret};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fake_model::FakeModel;
use crate::mmsim::client::{Bootstrap, SimControl, User, bootstrap};
use crate::mmsim::{Options as SimOptions, Sim, SimHandle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not bind {what}")]
    Bind {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("simulator failed")]
    Sim(#[from] crate::mmsim::Error),
    #[error("simulator bootstrap failed")]
    Bootstrap(#[from] crate::mmsim::client::Error),
    #[error("gateway failed to start")]
    Gateway(#[from] gateway::Error),
    #[error("worker failed to start")]
    Worker(#[from] worker::fleet::Error),
    #[error("Docker is not reachable")]
    Docker(#[source] bollard::errors::Error),
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub workers: usize,
    pub runtime: RuntimeKind,
    pub max_sessions: usize,
    /// Check the simulator's exchanges against the official spec.
    pub contract: bool,
    /// Where the process runtime keeps session directories.
    pub sessions_dir: PathBuf,
    /// Bind the gateway here (`127.0.0.1:0` for tests).
    pub gateway_listen: String,
    /// Bind the simulator here (`127.0.0.1:0` for tests).
    pub sim_listen: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            runtime: RuntimeKind::Process,
            max_sessions: 4,
            contract: false,
            sessions_dir: std::env::temp_dir()
                .join(format!("ccfleet-sessions-{}", std::process::id())),
            gateway_listen: "127.0.0.1:0".into(),
            sim_listen: "127.0.0.1:0".into(),
        }
    }
}

pub struct RunningWorker {
    pub id: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    /// The worker's session runtime (e.g. its warm pool).
    pub runtime: worker::runtime::Runtime,
    /// What the worker serves at `/metrics`.
    pub metrics: std::sync::Arc<worker::metrics::Metrics>,
}

impl RunningWorker {
    /// A crash: the worker's task is dropped where it stands; nothing is released.
    pub fn kill(self) {
        self.task.abort();
    }

    /// A graceful stop (SIGTERM): drain and wait.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

pub struct LocalFleet {
    pub config: Config,
    pub sim: SimHandle,
    pub control: SimControl,
    pub boot: Bootstrap,
    pub model: FakeModel,
    pub gateway_url: String,
    pub workers: Vec<RunningWorker>,
    gateway: Option<(CancellationToken, JoinHandle<()>)>,
    shutdown: CancellationToken,
    options: FleetOptions,
}

/// The Claude Code CLI for the process runtime: `$CCFLEET_CLAUDE_BIN`, `claude` on
/// `PATH`, or the binary bundled in the `claude-agent-sdk` wheel.
pub fn find_claude_bin() -> Option<String> {
    if let Ok(bin) = std::env::var("CCFLEET_CLAUDE_BIN") {
        return Some(bin);
    }
    let on_path = std::process::Command::new("sh")
        .args(["-c", "command -v claude"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if on_path.is_some() {
        return on_path;
    }
    let script = "import os, claude_agent_sdk; print(os.path.join(os.path.dirname(claude_agent_sdk.__file__), '_bundled', 'claude'))";
    std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|path| std::path::Path::new(path).exists())
}

/// The session network of local fleets with the docker runtime.
pub const SESSION_NETWORK: &str = "ccfleet-local-sessions";

/// The address containers reach the host on (the docker bridge's gateway).
pub async fn docker_host_ip() -> Result<IpAddr, Error> {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(Error::Docker)?;
    let network = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(Error::Docker)?;
    let ip = network
        .ipam
        .and_then(|ipam| ipam.config)
        .and_then(|configs| configs.into_iter().find_map(|c| c.gateway))
        .and_then(|gw| gw.parse().ok())
        .unwrap_or(IpAddr::from([172, 17, 0, 1]));
    Ok(ip)
}

impl LocalFleet {
    /// Starts everything. `config` supplies NATS, PostgreSQL, the object store and the
    /// signing key; the Mattermost and model sections are filled in here.
    pub async fn start(mut config: Config, options: FleetOptions) -> Result<Self, Error> {
        let shutdown = CancellationToken::new();
        let sim_listener = TcpListener::bind(&options.sim_listen)
            .await
            .map_err(|source| Error::Bind {
                what: "the simulator",
                source,
            })?;
        let sim_options = SimOptions {
            contract_spec: options
                .contract
                .then(crate::mmsim::spec_path)
                .filter(|p| p.exists()),
            ..Default::default()
        };
        let sim = Sim::start(sim_listener, sim_options, shutdown.child_token()).await?;
        let boot = bootstrap(sim.base_url()).await?;
        let control = SimControl::new(sim.base_url());

        let model_ip: IpAddr = if options.runtime == RuntimeKind::Docker {
            docker_host_ip().await?
        } else {
            IpAddr::from([127, 0, 0, 1])
        };
        let model_listener =
            TcpListener::bind((model_ip, 0))
                .await
                .map_err(|source| Error::Bind {
                    what: "the fake model",
                    source,
                })?;
        let model = FakeModel::start(model_listener, shutdown.child_token()).map_err(|source| {
            Error::Bind {
                what: "the fake model",
                source,
            }
        })?;

        let gateway_listener =
            TcpListener::bind(&options.gateway_listen)
                .await
                .map_err(|source| Error::Bind {
                    what: "the gateway",
                    source,
                })?;
        let gateway_addr = gateway_listener
            .local_addr()
            .map_err(|source| Error::Bind {
                what: "the gateway",
                source,
            })?;
        let gateway_url = format!("http://{gateway_addr}");

        // Register the integrations as an admin does.
        let (hook, command) = boot.register_integrations(&gateway_url).await?;

        config.mattermost.url = sim.base_url().to_owned();
        config.mattermost.bot_token = Secret::new(boot.bot_token.clone());
        config.mattermost.webhook_token = Secret::new(hook.token.clone());
        config.mattermost.slash_token = Secret::new(command.token.clone());
        config.gateway.public_url = gateway_url.clone();
        if config.gateway.signing_key.is_empty() {
            config.gateway.signing_key = Secret::new(uuid::Uuid::new_v4().to_string());
        }
        config.model.base_url = model.base_url();
        if config.model.credentials.is_empty() {
            config.model.api_key = Secret::new("sk-ant-test-fake");
        }
        config.model.model = "claude-fake-1".into();
        config.worker.runtime = options.runtime;
        config.worker.max_sessions = options.max_sessions;
        config.worker.sessions_dir = options.sessions_dir.clone();
        if config.worker.runtime == RuntimeKind::Process
            && config.worker.claude_bin == "claude"
            && let Some(bin) = find_claude_bin()
        {
            config.worker.claude_bin = bin;
        }
        if config.worker.runtime == RuntimeKind::Docker {
            // Internal (the worker creates it so): sessions reach out only through their
            // worker's egress gateway, which listens on this network's gateway address.
            config.worker.network = SESSION_NETWORK.into();
        }

        let gateway = gateway::Gateway::build(config.clone(), gateway::Options::default()).await?;
        let gateway_token = shutdown.child_token();
        let token = gateway_token.clone();
        let gateway_task = tokio::spawn(async move {
            if let Err(err) = gateway.run(gateway_listener, token).await {
                tracing::error!(error = %err, "gateway stopped");
            }
        });

        let mut fleet = Self {
            config,
            sim,
            control,
            boot,
            model,
            gateway_url,
            workers: Vec::new(),
            gateway: Some((gateway_token, gateway_task)),
            shutdown,
            options,
        };
        for _ in 0..fleet.options.workers {
            fleet.add_worker().await?;
        }
        // The gateway listens on the WebSocket before anyone posts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if fleet
                .control
                .stats()
                .await
                .map(|s| s.websocket_connections)
                .unwrap_or(0)
                >= 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(fleet)
    }

    /// Starts one more worker.
    pub async fn add_worker(&mut self) -> Result<(), Error> {
        let n = self.workers.len() + 1;
        let mut config = self.config.clone();
        let id = format!(
            "worker-{n}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        config.worker.id = id.clone();
        let worker = worker::Worker::build(config).await?;
        let runtime = worker.runtime().clone();
        let metrics = worker.metrics();
        let shutdown = self.shutdown.child_token();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(err) = worker.run(token).await {
                tracing::error!(error = %err, "worker stopped");
            }
        });
        self.workers.push(RunningWorker {
            id,
            shutdown,
            task,
            runtime,
            metrics,
        });
        Ok(())
    }

    /// The demo user, as a scripted client.
    pub fn demo(&self) -> &User {
        &self.boot.demo
    }

    pub fn channel_id(&self) -> &str {
        &self.boot.channel.id
    }

    /// Stops workers (drain), the gateway, the simulator and the fake model.
    pub async fn stop(mut self) {
        for worker in self.workers.drain(..) {
            worker.stop().await;
        }
        if let Some((token, task)) = self.gateway.take() {
            token.cancel();
            let _ = task.await;
        }
        self.shutdown.cancel();
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
